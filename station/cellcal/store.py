"""`calibration/cell-<name>.yaml`: the cell's camera calibration, and the camera model from it.

Written by `station calibrate-camera` (section `camera`: intrinsics, distortion, per-view errors)
and `station calibrate-hand-eye` (section `hand_eye`: camera -> flange, board -> base, residuals),
atomically, with a copy under `calibration/history/`. A sha256 digest of the content sits inside:
a file changed by hand is refused, so a calibration is always what a command computed.
`camera_model(recipe)` is what the rest of the station uses: the calibrated model when the file
is there, else the recipe's nominal one (lens focal length, centred principal point, no
distortion, `tcp_offset_mm`), and it says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from station.cellcal import geometry as geo
from station.cellcal.views import nominal_mount
from station.devices.camera_truth import twin_camera
from station.errors import CellCalibrationError
from station.files import atomic_write_all, writing
from station.geometry.coverage import focal_px
from station.paths import resolve, station_home
from station.recipe import Recipe

FORMAT_VERSION = 1
HEADER = ("# Cell calibration written by `station calibrate-camera` and "
          "`station calibrate-hand-eye`.\n# Never edit it by hand: the digest below would no "
          "longer match and the file is refused.\n")


def cell_path(recipe: Recipe) -> Path:
    return resolve(f"calibration/cell-{recipe.name}.yaml")


def display(path: Path) -> str:
    try:
        return path.resolve().relative_to(station_home()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _digest(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def read(path: Path) -> dict[str, Any] | None:
    """The file's content (None when absent); CellCalibrationError when unreadable or edited."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CellCalibrationError(f"cannot read {display(path)}: {str(exc).splitlines()[0]}",
                                   hint="run station calibrate-camera again") from None
    if not isinstance(data, dict) or data.get("digest") != _digest(data):
        raise CellCalibrationError(
            f"{display(path)} was changed by hand (its digest does not match its content)",
            hint="run station calibrate-camera and calibrate-hand-eye again; never edit the file")
    if data.get("format") != FORMAT_VERSION:
        raise CellCalibrationError(f"{display(path)} has format {data.get('format')!r}, this "
                                   f"station reads {FORMAT_VERSION}",
                                   hint="run station calibrate-camera again")
    return data


def write(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` (digest added) to `path` and a history copy; returns the copy's path."""
    data = {"format": FORMAT_VERSION, **{k: v for k, v in data.items() if k != "format"}}
    data["digest"] = _digest(data)
    text = HEADER + yaml.safe_dump(data, sort_keys=False, width=100)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    history = path.parent / "history" / f"{path.stem}-{stamp}.yaml"
    with writing(path):  # both or neither
        atomic_write_all({history: text.encode("utf-8"), path: text.encode("utf-8")}, durable=True)
    return history


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def age(iso: str) -> str:
    """'3 days' / '5 hours' / '12 minutes' since an ISO time."""
    s = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            v = int(s // n)
            return f"{v} {unit}{'s' if v != 1 else ''}"
    return "less than a minute"


@dataclass(frozen=True)
class CameraModel:
    matrix: np.ndarray  # 3x3
    dist: np.ndarray  # k1 k2 p1 p2 k3
    camera_to_flange: np.ndarray  # 4x4 camera frame -> flange frame
    tcp_to_flange: np.ndarray  # 4x4: inverse of the recipe's nominal mount (the reported TCP)
    table_to_base: np.ndarray  # 4x4: a frame whose z = 0 plane is the table
    width: int
    height: int
    source: str  # "calibrated (...)" or "nominal (...)"
    calibrated: bool
    hand_eye: bool = False  # the mounting and table plane solved too, not only the lens
    camera_serial: str | None = None  # the camera it was made with (calibrated models)

    def refuse_other_camera(self, opened: Any) -> None:
        """CellCalibrationError when the camera opened (its serial, None when it has none)
        is not the one this calibration was made with: a swapped camera has its own lens
        and mounting."""
        if self.calibrated and self.camera_serial and opened and opened != self.camera_serial:
            raise CellCalibrationError(
                f"the cell calibration was made with camera {self.camera_serial}, the camera "
                f"opened is {opened}",
                hint="set camera.serial to the calibrated camera, or run station "
                "calibrate-camera and calibrate-hand-eye with this one")

    def camera_pose(self, tcp: Any) -> np.ndarray:
        """4x4 camera -> base when the robot reports TCP pose `tcp` (mm, rotvec rad)."""
        return geo.from_tcp(tcp) @ self.tcp_to_flange @ self.camera_to_flange

    def pixels_to_table(self, tcp: Any, uv: np.ndarray) -> np.ndarray:
        """Base-frame points (N, 3) on the table plane seen at pixels `uv` (N, 2)."""
        pts = np.asarray(uv, np.float64).reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
        norm = cv2.undistortPointsIter(pts, self.matrix, self.dist, None, None, crit)
        rays = np.c_[norm.reshape(-1, 2), np.ones(len(pts))]
        cam = self.camera_pose(tcp)
        d = rays @ cam[:3, :3].T
        n, p0 = self.table_to_base[:3, 2], self.table_to_base[:3, 3]
        s = ((p0 - cam[:3, 3]) @ n) / (d @ n)
        return cam[:3, 3] + d * s[:, None]


def nominal_model(recipe: Recipe) -> CameraModel:
    cam = recipe.camera
    f = focal_px(cam.lens)
    k = np.array([[f, 0, (cam.width - 1) / 2], [0, f, (cam.height - 1) / 2], [0, 0, 1.0]])
    mount = nominal_mount(recipe)  # the camera is where tcp_offset_mm says: at the TCP
    return CameraModel(k, np.zeros(5), mount, geo.inv(mount), np.eye(4), cam.width, cam.height,
                       "nominal (recipe lens, no distortion, tcp_offset_mm, table at z = 0)",
                       False)


def camera_model(recipe: Recipe) -> CameraModel:
    """The cell's camera model: from `calibration/cell-<recipe>.yaml` when present (refused
    when edited by hand or made for another image size), else the nominal one."""
    path = cell_path(recipe)
    data = read(path)
    nominal = nominal_model(recipe)
    if data is None or "camera" not in data:
        return nominal
    c = data["camera"]
    if [recipe.camera.width, recipe.camera.height] != c["image_size"]:
        raise CellCalibrationError(
            f"{display(path)} was made for {c['image_size'][0]} x {c['image_size'][1]} px, the "
            f"recipe's camera takes {recipe.camera.width} x {recipe.camera.height}",
            hint="run station calibrate-camera again")
    serial = getattr(recipe.camera, "serial", None)  # a pylon setting; None on the twin
    if serial and serial != data.get("camera_serial"):
        raise CellCalibrationError(
            f"{display(path)} was made with camera {data.get('camera_serial')}, the recipe uses "
            f"camera {serial}", hint="run station calibrate-camera with this camera")
    _refuse_stale(recipe, data, path)
    serial_made = data.get("camera_serial")
    k = np.array(c["matrix"], np.float64)
    dist = np.array([c["distortion"][n] for n in ("k1", "k2", "p1", "p2", "k3")], np.float64)
    he = data.get("hand_eye")
    if he is None:
        return CameraModel(k, dist, nominal.camera_to_flange, nominal.tcp_to_flange,
                           nominal.table_to_base, nominal.width, nominal.height,
                           f"calibrated intrinsics ({display(path)}, {c['date']}); nominal "
                           "mounting (no hand-eye yet)", True, camera_serial=serial_made)
    mount = geo.from_dict(he["camera_to_flange"])
    if "matrix" in he:  # refined jointly with the mounting
        k = np.array(he["matrix"], np.float64)
        dist = np.array([he["distortion"][n] for n in ("k1", "k2", "p1", "p2", "k3")])
    return CameraModel(k, dist, mount, geo.inv(geo.from_dict(he["nominal_mount"])),
                       geo.from_dict(he["board_to_base"]), nominal.width, nominal.height,
                       f"calibrated ({display(path)}: camera {c['date']}, hand-eye "
                       f"{he['date']})", True, True, serial_made)


STALE_MOUNT_MM = 0.5  # robot.tcp_offset_mm moved since the hand-eye by more: stale
STALE_MOUNT_DEG = 0.1


def _refuse_stale(recipe: Recipe, data: dict[str, Any], path: Path) -> None:
    """Refuse a calibration made for another lens (files since 2026-12-07 record it) or another
    robot.tcp_offset_mm: the robot reports its TCP through that offset, so the solved mounting
    no longer holds."""
    lens, made = recipe.camera.lens, data["camera"].get("lens")
    now = {"focal_length_mm": lens.focal_length_mm, "pixel_size_um": lens.pixel_size_um}
    if made is not None and any(abs(made[k] - v) > 1e-9 for k, v in now.items()):
        raise CellCalibrationError(
            f"{display(path)} was made with a {made['focal_length_mm']:g} mm lens and "
            f"{made['pixel_size_um']:g} um pixels, the recipe's camera.lens has "
            f"{lens.focal_length_mm:g} mm and {lens.pixel_size_um:g} um",
            hint="run station calibrate-camera and calibrate-hand-eye again for this lens")
    he = data.get("hand_eye")
    if he is None:
        return
    mm, deg = geo.magnitude(geo.inv(geo.from_dict(he["nominal_mount"])) @ nominal_mount(recipe))
    if mm > STALE_MOUNT_MM or deg > STALE_MOUNT_DEG:
        raise CellCalibrationError(
            f"{display(path)} was solved with another robot.tcp_offset_mm ({mm:.1f} mm, "
            f"{deg:.2f} deg from the recipe's now)",
            hint="put tcp_offset_mm back, or run station calibrate-hand-eye again")


def inspection_camera(recipe: Recipe) -> CameraModel:
    """The camera model the sheet map uses: exact on the twin (its true camera), else
    `camera_model(recipe)` (calibrated when the cell calibration exists, else nominal)."""
    exact = twin_camera(recipe)
    if exact is None:
        return camera_model(recipe)
    return CameraModel(exact.matrix, exact.dist, exact.tcp_to_camera, np.eye(4), np.eye(4),
                       exact.width, exact.height,
                       "exact (the twin's true camera: twin.params.camera_truth, else nominal)",
                       False)


def summary(recipe: Recipe) -> str:
    """One line for `station recipe check`: which cell calibration the recipe uses, how old."""
    path = cell_path(recipe)
    try:
        data = read(path)
    except CellCalibrationError as exc:
        return f"refused: {exc.message}; run station calibrate-camera again"
    if data is None or "camera" not in data:
        return (f"none ({display(path)} absent): nominal lens and tcp_offset_mm; run station "
                "calibrate-camera")
    out = f"{display(path)}: camera {age(data['camera']['date'])} old"
    he = data.get("hand_eye")
    out += (f", hand-eye {age(he['date'])} old" if he
            else ", no hand-eye yet (nominal mounting)")
    return out + f", camera {data.get('camera_serial')}"
