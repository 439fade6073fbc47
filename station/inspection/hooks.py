"""Cycle hooks: what watches the inspection beside the detectors (monitoring, shadow models).

A hook sees every shot on the inference thread, before the detectors, and every finished part
on the cycle's thread, after its record and line output. Hooks never change a verdict, with one
exception: a `StationError` raised from `shot` faults the part (the reject output is raised),
e.g. a `MaterialError` when the shot is not the trained material.

- `shot(part, pose_name, image)`: the raw shot (as grabbed). What it returns is stored with the
  shot (`Shot.stats[hook.name]`, plain JSON values).
- `reference(part, image)`: the drift reference card's shot, taken after the part's shots
  (monitoring.drift.reference), on the cycle's thread. It is never a shot of the part: no
  detector, no shot row, no coverage; an exception is a warning.
- `part(result)`: the part's result (verdict, scores, the stored part id); the events it returns
  go to the live view like the cycle's own (alarms, shadow disagreements, ...).
- `start()`: the run begins; the events it returns go to the live view (e.g. free disk space).
- `close()`: the run is over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

    from station.inspection.recorder import PartRecord
    from station.inspection.results import Event, PartResult


HOOK_DB_WAIT_S = 2.0  # the hooks' database work per part, lock waits included, at most


class CycleHook:
    """Base hook: does nothing. Subclasses override what they need."""

    name: ClassVar[str] = "hook"

    def start(self) -> list[Event]:
        return []

    def shot(self, part: PartRecord, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        return {}

    def reference(self, part: PartRecord, image: np.ndarray) -> None:
        return None

    def part(self, result: PartResult) -> list[Event]:
        return []

    def close(self) -> None:
        return None
