"""Errors the station expects and reports as one clear line (no traceback).

Raise `StationError` (or a subclass) for anything a user can fix: bad recipe, missing file,
dropped link, full disk. The CLI prints `error: <message>` (and the hint) and exits non-zero.
"""

from __future__ import annotations


class StationError(Exception):
    """A failure with a message for the operator: what went wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class RecipeError(StationError):
    """A recipe file is missing or invalid. `problems` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"recipe {path}: " + "; ".join(problems))


class HardwareError(StationError):
    """Robot, camera or line I/O failed (link lost, timeout, protective stop, ...)."""


class RobotError(HardwareError):
    pass


class ProtectiveStop(RobotError):
    """The robot is in protective or emergency stop; an operator must clear it."""


class CameraError(HardwareError):
    pass


class LineIOError(HardwareError):
    pass


class DetectorError(StationError):
    """A detector could not be built, trained, loaded or run."""


class WeightsNotFound(DetectorError):
    pass


class StorageError(StationError):
    """The database or the image store failed (locked, full disk, bad URL)."""


class NowhereToStore(StorageError):
    """A decided part could be written neither to the database nor to the journal."""


class MaterialError(StationError):
    """A shot does not look like the material the models were trained on."""


class Misplaced(StationError):
    """The sheet reaches past the inspected region, or its edges were not found in the shots
    (sheet.check_placement): not inspected whole, no verdict."""


class NotInspected(StationError):
    """Part of the sheet's region was seen by no shot (`glare` False: a coverage gap) or only on
    saturated pixels (`glare` True): no verdict."""

    def __init__(self, message: str, *, glare: bool) -> None:
        super().__init__(message)
        self.glare = glare


class InUse(StationError):
    """Another process holds the lock this run needs (e.g. a live run on the same recipe)."""


class CalibrationError(StationError):
    """No usable threshold calibration (missing, stale, or too little data)."""


class CellCalibrationError(StationError):
    """Cell calibration (camera, hand-eye) cannot run or its file is unusable."""


def cause(exc: BaseException) -> str:
    """A library's exception in one line: its first line that says what went wrong (OpenVINO
    opens with the source file that raised, e.g. 'Exception from src/.../core.cpp:84:')."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    said = [s for s in lines if not s.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(exc).__name__])[0][:300]
