"""The two calibrations end to end: capture (or read back), detect, solve, write the file."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from station.cellcal import capture as cap_mod
from station.cellcal import geometry as geo
from station.cellcal import store
from station.cellcal.detect import BoardDetector, Detection, other_dictionary
from station.cellcal.solve import (
    HandEyeResult,
    IntrinsicsResult,
    board_poses,
    motion_problem,
    refine,
    solve_hand_eye,
    solve_intrinsics,
    spread,
    table_plane,
)
from station.cellcal.views import MIN_VIEWS, board_centre_guess
from station.errors import CellCalibrationError, StationError
from station.files import atomic_write, replacing_folder, writing
from station.geometry.charuco import BoardDef
from station.geometry.coverage import focal_px
from station.paths import resolve
from station.recipe import Pose, Recipe

DIST_NAMES = ("k1", "k2", "p1", "p2", "k3")
SPREAD_WARN_MM = 0.25  # board poses that disagree more: a wrong square size or robot TCP
JOINT_WARN_PX = 1.0
# Past these a calibration is refused and nothing is written: a model this far off would put
# the sheet map, the placement check and every mm/px figure off by as much.
SPREAD_REFUSE_MM = 1.0  # a ruler 1 % off gives about 0.5 mm on the shipped cell; 4 % gives 2.3
SPREAD_REFUSE_DEG = 0.5
RMS_REFUSE_PX = 1.5  # reprojection, intrinsics alone or refined with the mounting
FOCAL_REFUSE_PCT = 10.0  # solved focal length against the recipe's lens: another lens
MOUNT_REFUSE_MM = 25.0  # solved camera-to-flange against robot.tcp_offset_mm: a wrong board
MOUNT_REFUSE_DEG = 5.0  # definition or TCP, not a bracket's tolerance


@dataclass
class CameraRun:
    result: IntrinsicsResult
    capture: cap_mod.Capture
    no_board: list[str]
    corners: dict[str, int]
    path: Path
    history: Path
    data: dict[str, Any] = field(default_factory=dict)
    dropped_hand_eye: bool = False  # the file's earlier hand-eye no longer fits


@dataclass
class HandEyeRun:
    result: HandEyeResult
    path: Path
    history: Path
    data: dict[str, Any] = field(default_factory=dict)


def detect_all(board: BoardDef, cap: cap_mod.Capture, names: list[str] | None = None
               ) -> tuple[dict[str, Detection], list[str]]:
    """Detections per view, and the views where the board was not found."""
    det = BoardDetector(board)
    found, missing = {}, []
    for name in names or cap.names:
        d = det.detect(cap.images[name], name)
        if d is None:
            missing.append(name)
        else:
            found[name] = d
    if not found:
        for name in cap.names:
            other = other_dictionary(cap.images[name], board)
            if other:
                raise CellCalibrationError(
                    f"the views show {other} markers, the board definition says "
                    f"{board.dictionary}", hint=f"give --dictionary {other}")
        raise CellCalibrationError(
            f"the board was not found in any of the {len(cap.names)} views",
            hint="lay the printed board (--print-board) flat under the recipe's poses or give "
            "--board-at X,Y; check light and focus")
    return found, missing


def calibrate_camera(recipe: Recipe, board: BoardDef, poses: list[Pose],
                     on_view: Callable[[str], None] | None = None) -> CameraRun:
    problems = board.problems()
    if problems:
        raise CellCalibrationError("board definition: " + "; ".join(problems),
                                   hint="fix --squares, --square-mm, --marker-mm, --dictionary")
    if len(poses) < MIN_VIEWS:
        raise CellCalibrationError(f"{len(poses)} views are too few (need {MIN_VIEWS})",
                                   hint="give more views")
    why = motion_problem([geo.from_pose(p.position_mm, p.rotvec_rad) for p in poses])
    if why:  # checked before anything moves
        raise CellCalibrationError(
            f"the views cannot calibrate the camera and its mounting: {why}",
            hint="tilt the views in different directions and roll them about the optical axis "
            "(the generated views do)")
    cap = cap_mod.capture(recipe, poses, on_view)
    found, missing = detect_all(board, cap)
    res = solve_intrinsics(board, found, (recipe.camera.width, recipe.camera.height))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cap_mod.save(cap, recipe.data_dir / "cell-calibration" / stamp)
    assert cap.folder is not None
    k = res.matrix
    nominal_f = focal_px(recipe.camera.lens)
    focal_pct = float(100 * ((k[0, 0] + k[1, 1]) / 2 / nominal_f - 1))
    _refuse_intrinsics(recipe, res.rms_px, focal_pct, cap.folder)
    data: dict[str, Any] = {
        "cell": recipe.name,
        "recipe": recipe.name,
        "camera_serial": cap.camera_serial,
        "camera_model": cap.camera_model,
        "board": board.as_dict(),
        "camera": {
            "date": store.now(),
            "image_size": [recipe.camera.width, recipe.camera.height],
            "lens": {"focal_length_mm": recipe.camera.lens.focal_length_mm,
                     "pixel_size_um": recipe.camera.lens.pixel_size_um},
            "matrix": [[float(v) for v in row] for row in k],
            "distortion": {n: float(v) for n, v in zip(DIST_NAMES, res.dist, strict=True)},
            "focal_vs_nominal_pct": round(focal_pct, 4),
            "rms_px": round(res.rms_px, 5),
            "per_view_rms_px": {n: round(v, 5) for n, v in res.per_view_px.items()},
            "views_used": res.used,
            "views_dropped": res.dropped,
            "views_without_board": missing,
            "capture": store.display(cap.folder),
        },
    }
    path = store.cell_path(recipe)
    try:
        had_hand_eye = "hand_eye" in (store.read(path) or {})
    except CellCalibrationError:
        had_hand_eye = False  # an unusable old file is simply replaced
    history = store.write(path, data)  # a new camera calibration voids the old hand-eye
    return CameraRun(res, cap, missing, {n: len(d.ids) for n, d in found.items()}, path,
                     history, data, had_hand_eye)


def calibrate_hand_eye(recipe: Recipe) -> HandEyeRun:
    path = store.cell_path(recipe)
    data = store.read(path)
    if data is None or "camera" not in data:
        raise CellCalibrationError(
            f"no camera calibration {store.display(path)} yet",
            hint=f"run station calibrate-camera --recipe {recipe.name} first")
    cam = data["camera"]
    cap = cap_mod.load(resolve(cam["capture"]))
    board = BoardDef.from_dict(data["board"])
    found, _ = detect_all(board, cap, cam["views_used"])
    k = np.array(cam["matrix"], np.float64)
    dist = np.array([cam["distortion"][n] for n in DIST_NAMES], np.float64)
    poses = board_poses(board, found, k, dist)
    flanges = cap.flanges()
    res = solve_hand_eye(board, flanges, poses)
    initial = {"camera_to_flange": geo.as_dict(res.camera_to_flange),
               "residual_mm": round(res.residual_mm, 5), "residual_deg": round(res.residual_deg, 5)}
    ref = refine(board, {n: found[n] for n in res.used}, flanges, k, dist, res.camera_to_flange,
                 res.board_to_base)
    refined = bool(np.all(np.isfinite(ref.matrix)) and np.all(np.isfinite(ref.camera_to_flange))
                   and abs(ref.matrix[0, 0] / k[0, 0] - 1) < 0.05)
    if refined:
        poses = board_poses(board, {n: found[n] for n in res.used}, ref.matrix, ref.dist)
        res.camera_to_flange = ref.camera_to_flange
    _, res.residual_mm, res.residual_deg, view_mm, view_deg = spread(
        board, [flanges[n] for n in res.used], [poses[n] for n in res.used],
        res.camera_to_flange)
    if refined:
        res.board_to_base = ref.board_to_base
    mount_mm, mount_deg = geo.magnitude(geo.inv(cap.nominal_mount) @ res.camera_to_flange)
    tilt, height = table_plane(res.board_to_base)
    data["hand_eye"] = {
        "date": store.now(),
        "method": res.method,
        "methods": {n: {"residual_mm": round(mm, 5), "residual_deg": round(deg, 5)}
                    for n, (mm, deg) in res.methods.items()},
        "initial": initial,
        "refined": refined,
        "camera_to_flange": geo.as_dict(res.camera_to_flange),
        "nominal_mount": geo.as_dict(cap.nominal_mount),
        "change_from_nominal": {"mm": round(mount_mm, 4), "deg": round(mount_deg, 4)},
        "board_to_base": geo.as_dict(res.board_to_base),
        "table_tilt_deg": round(tilt, 4),
        "table_height_mm": round(height, 4),
        "residual_mm": round(res.residual_mm, 5),
        "residual_deg": round(res.residual_deg, 5),
        "views_used": res.used,
        "per_view": {n: {"mm": round(a, 4), "deg": round(b, 4)}
                     for n, a, b in zip(res.used, view_mm, view_deg, strict=True)},
    }
    if refined:
        data["hand_eye"] |= {
            "matrix": [[float(v) for v in row] for row in ref.matrix],
            "distortion": {n: float(v) for n, v in zip(DIST_NAMES, ref.dist, strict=True)},
            "rms_px": round(ref.rms_px, 5),
        }
    _refuse_hand_eye(res, ref if refined else None, mount_mm, mount_deg)
    warnings = []
    if res.residual_mm > SPREAD_WARN_MM or (refined and ref.rms_px > JOINT_WARN_PX):
        warnings.append(
            f"the board poses disagree by {res.residual_mm:.2f} mm"
            + (f" (joint reprojection RMS {ref.rms_px:.2f} px)" if refined else "")
            + ": measure the printed squares with a ruler (--square-mm) and check the robot's "
            "TCP and payload settings")
    data["hand_eye"]["warnings"] = warnings
    history = store.write(path, data)
    return HandEyeRun(res, path, history, data)


def _refuse_intrinsics(recipe: Recipe, rms_px: float, focal_pct: float, views: Path) -> None:
    where = f"(views kept in {store.display(views)})"
    if rms_px > RMS_REFUSE_PX:
        raise CellCalibrationError(
            f"the board's corners reproject {rms_px:.2f} px off (limit {RMS_REFUSE_PX:g}) "
            f"{where}; nothing written",
            hint="check the board definition (--squares, --square-mm, --marker-mm), that it lies "
            "flat, and the focus; then calibrate again")
    if abs(focal_pct) > FOCAL_REFUSE_PCT:
        lens = recipe.camera.lens
        raise CellCalibrationError(
            f"the solved focal length is {focal_pct:+.1f} % from camera.lens "
            f"({lens.focal_length_mm:g} mm, {lens.pixel_size_um:g} um pixels; limit "
            f"{FOCAL_REFUSE_PCT:g} %) {where}; nothing written",
            hint="put the recipe's lens and pixel size right (or mount the lens it names)")


def _refuse_hand_eye(res: HandEyeResult, refined: Any, mount_mm: float, mount_deg: float
                     ) -> None:
    """Refuse a hand-eye solve whose board poses disagree or whose mounting (`mount_mm`,
    `mount_deg` from the recipe's) is far off: one line naming the likely cause; nothing is
    written."""
    why = None
    if res.residual_mm > SPREAD_REFUSE_MM or res.residual_deg > SPREAD_REFUSE_DEG:
        why = (f"the board poses disagree by {res.residual_mm:.2f} mm and "
               f"{res.residual_deg:.2f} deg (limits {SPREAD_REFUSE_MM:g} mm, "
               f"{SPREAD_REFUSE_DEG:g} deg)")
    elif refined is not None and refined.rms_px > RMS_REFUSE_PX:
        why = f"the joint reprojection RMS is {refined.rms_px:.2f} px (limit {RMS_REFUSE_PX:g})"
    elif mount_mm > MOUNT_REFUSE_MM or mount_deg > MOUNT_REFUSE_DEG:
        why = (f"the camera sits {mount_mm:.0f} mm and {mount_deg:.1f} deg from "
               f"robot.tcp_offset_mm (limits {MOUNT_REFUSE_MM:g} mm, {MOUNT_REFUSE_DEG:g} deg)")
    if why:
        raise CellCalibrationError(
            f"hand-eye refused: {why}; nothing written",
            hint="measure the printed squares with a ruler (--square-mm, then calibrate-camera "
            "again), check the robot's TCP and payload settings and robot.tcp_offset_mm")


_PLAYED = re.compile(r"^(view\d{2,}|p\d{6}_\d{2}_.+)\.png$")


def prepare_emulator(recipe: Recipe, poses: list[Pose], folder: str | Path | None = None
                     ) -> Path:
    """Render the twin's board from each view (its true camera) into the folder the pylon
    emulator plays, in view order, replacing the earlier twin shots there all or none: the new
    set is written to a folder beside it that then takes its place."""
    target = folder if folder is not None else getattr(recipe.camera, "emulator_images", None)
    if target is None:
        raise StationError(f"recipe {recipe.name} sets no camera.emulator_images",
                           hint="set it to the folder the pylon emulator plays")
    out = resolve(target)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    foreign = [p.name for p in out.iterdir()
               if not p.name.startswith(".") and not _PLAYED.match(p.name)]
    if foreign:
        raise StationError(f"emulator image folder {out} holds other files "
                           f"({', '.join(sorted(foreign)[:5])})", hint="empty it first")
    try:
        with replacing_folder(out) as new:
            _keep_hidden(out, new)
            _render_views(recipe, poses, new)
    except OSError as exc:
        raise StationError(
            f"cannot write the emulator images to {out}: {exc.strerror or exc}; "
            "the previous set is kept", hint="check free disk space and write permission",
        ) from None
    return out


def _keep_hidden(old: Path, new: Path) -> None:
    """Copy the hidden files the emulator does not play (not our temporary files)."""
    for p in old.iterdir():
        if p.name.startswith(".") and not p.name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.copytree(p, new / p.name, symlinks=True)
            else:
                shutil.copy2(p, new / p.name, follow_symlinks=False)


def _render_views(recipe: Recipe, poses: list[Pose], out: Path) -> None:
    from station.twin.world import TwinWorld, pose_tcp

    world = TwinWorld(recipe)
    world.show_board()
    for i, p in enumerate(poses):
        image = world.render(pose_tcp(p), noise_seed=[world.seed, 11, i]).image
        atomic_write(out / f"{p.name}.png", cap_mod._png(image))


def default_centre(recipe: Recipe, at: str | None) -> tuple[float, float]:
    if not at:
        return board_centre_guess(recipe)
    try:
        x, y = (float(v) for v in at.split(","))
    except ValueError:
        raise CellCalibrationError(f"--board-at {at!r} is not X,Y in mm",
                                   hint="give e.g. --board-at 400,0") from None
    return x, y
