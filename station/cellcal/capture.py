"""Driving the cell through the calibration views, and the stored captures.

A capture is kept in memory until the calibration from it has been solved; only then is it
written to `<data>/<recipe>/cell-calibration/<UTC time>/` (one PNG per view and `views.json`
with each view's reported TCP pose and the nominal mounting it was taken with), so a failed
calibration leaves nothing behind. `calibrate-hand-eye` reads it back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from station.cellcal import geometry as geo
from station.cellcal.views import nominal_mount
from station.errors import CellCalibrationError
from station.files import atomic_write, writing
from station.recipe import Pose, Recipe


@dataclass
class Capture:
    recipe: str
    camera_serial: str
    camera_model: str
    nominal_mount: np.ndarray  # flange -> nominal camera (TCP) at capture time
    names: list[str]
    tcps: dict[str, list[float]]  # reported TCP pose per view (mm, rotvec rad)
    images: dict[str, np.ndarray]
    folder: Path | None = None

    def flanges(self) -> dict[str, np.ndarray]:
        """Flange -> base per view, from the reported TCP and the nominal mount."""
        return {n: geo.from_tcp(t) @ geo.inv(self.nominal_mount) for n, t in self.tcps.items()}


def capture(recipe: Recipe, poses: list[Pose], on_view: Any = None) -> Capture:
    """Move to each pose, grab, and go home. The twin camera shows its calibration board."""
    from station.devices.factory import open_devices

    tcps: dict[str, list[float]] = {}
    images: dict[str, np.ndarray] = {}
    with open_devices(recipe) as dev:
        if dev.world is not None and recipe.camera_driver == "sim":
            dev.world.show_board()
        settings = dev.camera.settings()
        for pose in poses:
            state = dev.robot.move_to(pose)
            frame = dev.camera.grab()
            tcps[pose.name] = [float(v) for v in state.tcp_mm_rotvec]
            images[pose.name] = frame.image
            if on_view is not None:
                on_view(pose.name)
        dev.robot.move_to(recipe.robot.home)
    return Capture(recipe.name, str(settings.get("serial") or "unknown"),
                   str(settings.get("model") or "unknown"), nominal_mount(recipe),
                   [p.name for p in poses], tcps, images)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def save(cap: Capture, folder: Path) -> None:
    """Write the views' images, then `views.json` (last: a folder without it is incomplete)."""
    with writing(folder):
        for name in cap.names:
            atomic_write(folder / f"{name}.png", _png(cap.images[name]))
        meta = {"recipe": cap.recipe, "camera_serial": cap.camera_serial,
                "camera_model": cap.camera_model,
                "nominal_mount": geo.as_dict(cap.nominal_mount),
                "views": [{"name": n, "tcp": cap.tcps[n], "image": f"{n}.png"}
                          for n in cap.names]}
        atomic_write(folder / "views.json", json.dumps(meta, indent=1).encode("utf-8"),
                     durable=True)
    cap.folder = folder


def load(folder: Path) -> Capture:
    from PIL import Image

    meta_path = folder / "views.json"
    if not meta_path.is_file():
        raise CellCalibrationError(f"the calibration views {folder} are gone or incomplete",
                                   hint="run station calibrate-camera again")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    images, tcps, names = {}, {}, []
    for v in meta["views"]:
        try:
            images[v["name"]] = np.asarray(Image.open(folder / v["image"]))
        except OSError:
            raise CellCalibrationError(f"view image {folder / v['image']} cannot be read",
                                       hint="run station calibrate-camera again") from None
        tcps[v["name"]] = v["tcp"]
        names.append(v["name"])
    return Capture(meta["recipe"], meta["camera_serial"], meta["camera_model"],
                   geo.from_dict(meta["nominal_mount"]), names, tcps, images, folder)
