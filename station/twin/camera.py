"""Simulated Basler camera: renders the twin's sheet from the current TCP, with faults.

Each grab waits the exposure time (simulated clock), retries after a timeout or a failed buffer
as the recipe says, and returns a `Frame` carrying the ground-truth mask and defect list.
"""

from __future__ import annotations

import time
from typing import Any

from station.errors import CameraError
from station.interfaces import Frame
from station.twin.world import TwinWorld


class SimCamera:
    """The twin's camera; implements `station.interfaces.Camera`."""

    serial = "TWIN-0001"
    model = "twin (simulated acA1300)"

    def __init__(self, world: TwinWorld) -> None:
        self.world = world
        self.cfg = world.recipe.camera
        self.exposure_us = float(self.cfg.exposure_us)
        self.gain_db = float(self.cfg.gain_db)
        self.is_open = False
        self.frames = 0

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def settings(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "serial": self.serial,
            "model": self.model,
            "pixel_format": c.pixel_format,
            "width": c.width,
            "height": c.height,
            "exposure_us": self.exposure_us,
            "gain_db": self.gain_db,
            "trigger": c.trigger,
            "focal_length_mm": c.lens.focal_length_mm,
            "f_number": c.lens.f_number,
            "focus_distance_mm": c.lens.focus_distance_mm,
        }

    def grab(self) -> Frame:
        if not self.is_open:
            raise CameraError(
                f"camera {self.serial} is not open", hint="check the camera, then resume"
            )
        tries = self.cfg.retries + 1
        last = ""
        for _ in range(tries):
            self.world.wait(self.exposure_us / 1e6)
            if self.world.trip("camera_timeout"):
                self.world.wait(self.cfg.timeout_ms / 1000.0)
                last = f"no frame within {self.cfg.timeout_ms} ms"
                continue
            if self.world.trip("failed_buffer"):
                last = "failed buffer (incomplete frame)"
                continue
            shot = self.world.render(exposure_us=self.exposure_us, gain_db=self.gain_db)
            self.world.grabs_on_sheet += 1
            self.frames += 1
            return Frame(
                image=shot.image,
                timestamp_s=time.time(),
                camera_settings={**self.settings(), "blur_sigma_px": round(shot.blur_sigma_px, 3)},
                mask=shot.mask,
                defects=shot.defects,
                sheet_defects=self.world.sheet_truth() if self.world.sheet else None,
            )
        raise CameraError(
            f"camera {self.serial} (simulated): {last}, {tries} tries",
            hint="check the camera cable, trigger and exposure; raise camera.retries or timeout_ms",
        )
