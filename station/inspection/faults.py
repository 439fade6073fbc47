"""What a fault during a part means for the station: its kind, message and policy.

Every fault ends the part in progress as `fault` (treated as a reject: the reject output is
raised and the sheet released to the reject path). What happens next depends on the kind:

| fault                                  | kind             | then                           |
|----------------------------------------|------------------|--------------------------------|
| robot protective or emergency stop     | protective_stop  | wait for the operator          |
| robot link lost, robot timeout         | robot            | wait for the operator          |
| camera timeout, failed buffers         | camera           | next part                      |
| detector error (incl. bad preprocess)  | detector         | next part                      |
| disk full, database locked or gone     | storage          | next part (record held, retried)|
| ... and the journal cannot take it     | storage          | wait for the operator          |
| reject output not confirmed, line I/O  | line_io          | hold the sheet, wait for the   |
|                                        |                  | operator, then reject it       |
| shot unlike the training material      | material         | next part                      |
| region unseen (gap) or only saturated  | not_inspected    | next part                      |
| sheet off its place, edges not found   | misplaced        | next part                      |
| unreadable stored image (offline)      | input            | next part                      |
| anything unexpected (a bug)            | internal         | stop                           |

`MAX_CONSECUTIVE_FAULTS` "next part" faults in a row also wait for the operator: a camera or
disk that fails every part needs a person, not an endless stream of rejects.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from station.errors import (
    CameraError,
    DetectorError,
    LineIOError,
    MaterialError,
    Misplaced,
    NotInspected,
    NowhereToStore,
    ProtectiveStop,
    RobotError,
    StationError,
    StorageError,
)

MAX_CONSECUTIVE_FAULTS = 3


class Policy(enum.StrEnum):
    CONTINUE = "continue"  # go on with the next part
    OPERATOR = "operator"  # wait until the operator has fixed the cause and resumes
    STOP = "stop"  # stop the station; the line must be handled by hand


@dataclass(frozen=True)
class Fault:
    kind: str
    message: str  # one line for the operator: what happened
    action: str  # one line: what to do about it (an OPERATOR fault's ends with the resume)
    policy: Policy
    stop_action: str = ""  # what to do once the run has ended instead (no resume); see below
    check: str = ""  # a "next part" fault's remedy, said as an order once it repeats (in_a_row)

    def __str__(self) -> str:
        return f"{self.message} ({self.action})"

    def after_stop(self) -> str:
        """What to do when the run has stopped on this fault (no operator resumed it, e.g.
        `--no-view` without a terminal): the action without its resume step (nor the
        "part rejected" that said what the station did)."""
        if self.stop_action:
            return self.stop_action
        todo = self.action.removeprefix("part rejected; ").removeprefix("sheet rejected; ")
        return todo.removesuffix(", then resume").removesuffix(" then resume")


def in_a_row(fault: Fault, count: int) -> Fault:
    """`count` "next part" faults in a row, the last one `fault`: now one for the operator."""
    message = f"{count} faults in a row, last: {fault.message}"
    action = f"{fault.check}, then resume" if fault.check else fault.action  # it has repeated
    return dataclasses.replace(fault, message=message, action=action, policy=Policy.OPERATOR)


def classify(exc: BaseException) -> Fault:
    """The fault an exception raised during a part stands for."""
    text = exc.message if isinstance(exc, StationError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ProtectiveStop):
        return Fault(
            "protective_stop",
            f"robot protective/emergency stop: {text}",
            "clear the stop on the teach pendant and check the cell, then resume",
            Policy.OPERATOR,
        )
    if isinstance(exc, RobotError):
        return Fault(
            "robot",
            f"robot: {text}",
            "check the robot controller, its network link and remote control mode, then resume",
            Policy.OPERATOR,
        )
    next_part = _next_part(exc, text)
    if next_part is not None:
        return next_part
    if isinstance(exc, NowhereToStore):
        return Fault(
            "storage",
            f"storage: {text}",
            "sheet rejected; free disk space (or give storage.journal_dir on another disk), "
            "then resume",
            Policy.OPERATOR,
        )
    if isinstance(exc, StorageError):
        return Fault(
            "storage",
            f"storage: {text}",
            "part rejected; free disk space / release the database lock",
            Policy.CONTINUE,
        )
    if isinstance(exc, LineIOError):
        return Fault(
            "line_io",
            f"line I/O: {text}",
            "the sheet is held: restore the controller link / line I/O, then resume "
            "(the station raises the reject output and releases it), or divert it by hand",
            Policy.OPERATOR,
            # a sheet still held at the stop is named on a line of its own (still_held)
            stop_action="restore the controller link / line I/O",
        )
    if isinstance(exc, StationError):
        return Fault("input", text, "part rejected", Policy.CONTINUE)
    return Fault(
        "internal",
        f"internal error: {text}",
        "the station stopped; report this with the log",  # never guess after a bug
        Policy.STOP,
    )


def _next_part(exc: BaseException, text: str) -> Fault | None:
    """The faults of the part alone (the station goes on with the next): camera, detector,
    material, not inspected, misplaced; None for any other."""
    if isinstance(exc, CameraError):
        kind, text = "camera", f"camera: {text}"
        check = "check the camera's cable and power"
        todo = f"part rejected; {check} if this repeats"
    elif isinstance(exc, DetectorError):
        kind, text = "detector", f"detector: {text}"
        check = "check the model files and the GPU"
        todo = f"part rejected; {check} if this repeats"
    elif isinstance(exc, MaterialError):
        kind = "material"
        check = "check that the sheet is the recipe's product and lot, else retrain"
        todo = f"part rejected; {check}"
    elif isinstance(exc, NotInspected):
        kind = "not_inspected"
        check = (
            "lower camera.exposure_us or diffuse the light"
            if exc.glare
            else "check the poses against the cell's camera model with station recipe check"
        )
        todo = f"part rejected; if this repeats, {check}"
    elif isinstance(exc, Misplaced):
        kind = "misplaced"
        check = ("check the line's stops and guides against sheet.center_mm, or widen "
                 "coverage.edge_margin_mm and plan the poses again")  # fmt: skip
        todo = f"part rejected; if this repeats, {check}"
    else:
        return None
    return Fault(kind, text, todo, Policy.CONTINUE, check=check)
