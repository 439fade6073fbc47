"""The drift reference card's shot (monitoring.drift.reference): when it is due, taking it,
and handing it to the cycle hooks. It is never a shot of the part: no shot row, no detector,
no coverage, no verdict; a camera failure on it is a warning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from station.errors import CameraError
from station.inspection.hooks import CycleHook
from station.inspection.recorder import PartRecord
from station.inspection.results import Acquired, Timings
from station.recipe import Recipe, card_pose

Warn = Callable[[str], None]


class ReferenceCard:
    """Counts parts and shoots the card on the first part of a run, then every `every_parts`."""

    def __init__(self, recipe: Recipe, devices: Any) -> None:
        self.recipe = recipe
        self.devices = devices
        self._parts_to_go = 1

    def due(self) -> bool:
        """Whether this part shoots the card (counts the part)."""
        drift = self.recipe.monitoring.drift
        if not (drift.reference.enabled and drift.enabled):
            return False
        self._parts_to_go -= 1
        if self._parts_to_go > 0:
            return False
        self._parts_to_go = drift.reference.every_parts
        return True

    def shoot(self, timings: Timings) -> Acquired:
        """Move to the card's pose and grab it (timed as `reference`). A camera failure is
        returned as the shot's `error`; a robot failure is the cell's and raised, as for any
        move."""
        pose = card_pose(self.recipe)
        robot, camera = self.devices.robot, self.devices.camera
        with timings.measure("reference"):
            state = robot.move_to(pose)
            try:
                frame = camera.grab()
            except CameraError as exc:
                empty = np.zeros((0, 0), np.uint8)
                return Acquired(-1, pose.name, empty, reference=True, error=str(exc))
        return Acquired(-1, pose.name, frame.image, dict(frame.camera_settings),
                        [float(v) for v in state.tcp_mm_rotvec], reference=True)  # fmt: skip


def hand_over(part: PartRecord, acq: Acquired, hooks: Sequence[CycleHook], warn: Warn) -> None:
    """The card shot to the hooks; failures are warnings."""
    if acq.error is not None:
        warn(f"reference card not shot for part {part.sequence} ({acq.error}): lamp and focus "
             "are not charted for it; the part's verdict is not affected")  # fmt: skip
        return
    for hook in hooks:
        try:
            hook.reference(part, acq.image)
        except Exception as exc:  # noqa: BLE001
            warn(f"{hook.name}: reference card: {exc}")
