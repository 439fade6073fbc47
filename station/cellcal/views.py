"""The robot poses calibration shoots the board from.

Generated views look at points around the board's centre from a spread of tilts (0-40 degrees,
in every direction), rolls about the optical axis and distances within the lens's depth of
field: enough to pin the focal length, the principal point and the distortion, and to rotate the
flange about three axes for hand-eye. Each view is checked with the NOMINAL camera model: the
flange within the UR5's reach, the camera above the table, the board centre in the image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from station.cellcal import geometry as geo
from station.errors import CellCalibrationError
from station.geometry.charuco import BoardDef
from station.geometry.coverage import COC_PER_SIGMA, blur_px, focal_px
from station.recipe import Pose, Recipe

REACH_MM = 850.0  # UR5, base axis to flange
MIN_HEIGHT_MM = 60.0  # camera above the table
MIN_VIEWS = 8
MAX_BLUR_PX = 1.6  # focus blur (Gaussian sigma) allowed at the board centre
BOARD_FILL = 0.9  # the board should span this share of the image (width or height) ...
VIEW_BLUR_PX = 1.0  # ... but the views come no closer than this focus blur allows


def nominal_mount(recipe: Recipe) -> np.ndarray:
    """Flange -> camera as the recipe says (`tcp_offset_mm`, `tcp_offset_rotvec_rad`)."""
    return geo.from_pose(recipe.robot.tcp_offset_mm, recipe.robot.tcp_offset_rotvec_rad)


def board_centre_guess(recipe: Recipe) -> tuple[float, float]:
    """Where the board is put: on the table under the recipe's shot poses."""
    xy = np.mean([p.position_mm[:2] for p in recipe.robot.poses], axis=0)
    return float(xy[0]), float(xy[1])


def look_at(target: np.ndarray, tilt_deg: float, azimuth_deg: float, roll_deg: float,
            distance_mm: float) -> np.ndarray:
    """4x4 camera pose (base frame) looking at `target` (x, y, 0) from above."""
    t, a = math.radians(tilt_deg), math.radians(azimuth_deg)
    c = target + distance_mm * np.array([math.sin(t) * math.cos(a), math.sin(t) * math.sin(a),
                                         math.cos(t)])
    z = (target - c) / distance_mm
    x = np.array([1.0, 0, 0]) - z[0] * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = math.radians(roll_deg)
    x, y = math.cos(r) * x + math.sin(r) * y, -math.sin(r) * x + math.cos(r) * y
    out = np.eye(4)
    out[:3, :3] = np.column_stack([x, y, z])
    out[:3, 3] = c
    return out


def view_distance(recipe: Recipe, board: BoardDef) -> float:
    """The views' mean distance to the board, in mm: the lens's focus distance (calibrate as
    the camera works: the focus stays), or closer where the board would fill less than
    BOARD_FILL of the image there, but never closer than where its focus blur reaches
    VIEW_BLUR_PX (the views spread +-7 % around it; `problem` still checks each one)."""
    lens, cam = recipe.camera.lens, recipe.camera
    f, n, s = lens.focal_length_mm, lens.f_number, lens.focus_distance_mm
    f_px = focal_px(lens)
    w, h = board.size_mm
    fill = f_px * max(w / (BOARD_FILL * cam.width), h / (BOARD_FILL * cam.height))
    # blur_px(d) = VIEW_BLUR_PX for d < s: coc(d) = a * (s - d) / d
    a = f * f / (n * (s - f))
    coc = VIEW_BLUR_PX * COC_PER_SIGMA * lens.pixel_size_um / 1000.0
    sharp = s / (1.0 + coc / a)
    return float(min(s, max(fill, sharp)))


def problem(recipe: Recipe, cam: np.ndarray, board_centre: np.ndarray) -> str | None:
    """Why a camera pose (nominal model) cannot be used, or None."""
    flange = cam @ geo.inv(nominal_mount(recipe))
    if np.linalg.norm(flange[:3, 3]) > REACH_MM:
        return f"flange {np.linalg.norm(flange[:3, 3]):.0f} mm from the base, beyond reach"
    if cam[2, 3] < MIN_HEIGHT_MM:
        return f"camera {cam[2, 3]:.0f} mm above the table"
    pc = geo.inv(cam) @ np.append(board_centre, 1.0)
    if pc[2] <= 0:
        return "the board is behind the camera"
    lens = recipe.camera.lens
    f_px = focal_px(lens)
    u = f_px * pc[0] / pc[2] + (recipe.camera.width - 1) / 2
    v = f_px * pc[1] / pc[2] + (recipe.camera.height - 1) / 2
    w, h = recipe.camera.width, recipe.camera.height
    if not (0.2 * w < u < 0.8 * w and 0.2 * h < v < 0.8 * h):
        return "the board centre is outside the middle of the image"
    if blur_px(lens, float(pc[2])) > MAX_BLUR_PX:
        return f"the board is {pc[2]:.0f} mm away, out of focus"
    return None


def plan_views(recipe: Recipe, board: BoardDef, count: int = 20,
               centre: tuple[float, float] | None = None) -> list[Pose]:
    """`count` TCP poses (the nominal camera poses) spread to constrain the calibration."""
    if count < MIN_VIEWS:
        raise CellCalibrationError(
            f"{count} views are too few: the calibration needs at least {MIN_VIEWS}",
            hint=f"give --count {MIN_VIEWS} or more (20 is a good number)")
    bc = np.array([*(centre or board_centre_guess(recipe)), 0.0])
    w, h = board.size_mm
    s = view_distance(recipe, board)
    out: list[Pose] = []
    tilts = (0.0, 20.0, 30.0, 40.0)
    for i in range(count * 6):
        tilt = tilts[i % len(tilts)]
        azimuth = (i * 137.508) % 360.0
        roll = 35.0 * math.sin(i * 2.39996)
        dist = s * (1.0 + 0.07 * math.sin(i * 1.7))
        target = bc + np.array([0.18 * w * math.cos(i * 0.9), 0.18 * h * math.sin(i * 1.3), 0])
        cam = look_at(target, tilt, azimuth, roll, dist)
        if problem(recipe, cam, bc) is None:
            out.append(Pose(name=f"view{len(out):02d}", position_mm=tuple(cam[:3, 3]),
                            rotvec_rad=tuple(geo.rotvec(cam))))
            if len(out) == count:
                return out
    raise CellCalibrationError(
        f"only {len(out)} of {count} views are reachable and in focus around the board at "
        f"({bc[0]:.0f}, {bc[1]:.0f}) mm", hint="move the board (--board-at X,Y) or ask fewer views")


def read_views(path: Path, recipe: Recipe) -> list[Pose]:
    """Views from a YAML list of poses ({name, position_mm, rotvec_rad}), each checked."""
    fix = "give a YAML list of {name, position_mm, rotvec_rad} poses"
    try:
        raw = list(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise CellCalibrationError(
            f"cannot read views from {path}: {str(exc).splitlines()[0]}", hint=fix) from None
    poses = []
    for i, item in enumerate(raw):
        try:
            poses.append(Pose.model_validate(item))
        except ValidationError as exc:  # the view and its field, as a recipe's errors name them
            first = exc.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "(the view)"
            raise CellCalibrationError(
                f"cannot read views from {path}: view {i} {field}: {first['msg']}", hint=fix
            ) from None
    if len(poses) < MIN_VIEWS:
        raise CellCalibrationError(
            f"{path} holds {len(poses)} views, too few: the calibration needs at least "
            f"{MIN_VIEWS}", hint="add views, tilted in several directions")
    for p in poses:
        cam = geo.from_pose(p.position_mm, p.rotvec_rad)
        flange = cam @ geo.inv(nominal_mount(recipe))
        if np.linalg.norm(flange[:3, 3]) > REACH_MM or cam[2, 3] < MIN_HEIGHT_MM:
            raise CellCalibrationError(f"view {p.name!r} in {path} is out of reach or too low",
                                       hint="fix the pose in the views file")
    return poses
