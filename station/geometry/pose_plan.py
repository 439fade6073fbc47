"""Pose planning (`station plan-poses`): a serpentine raster of straight-down shots that covers
the recipe's region at the resolution it asks for, within the robot's reach and the lens's focus.

The camera height (view distance) is the largest one whose detector mm/px still resolves the
smallest defect (or coverage.camera_height_mm), lowered in HEIGHT_STEP_MM steps until every
pose is reachable. The shots are spread evenly so that the raster spans the region, grown by
coverage.view_margin_mm, exactly with at least the asked overlap between neighbours. With a
calibrated camera (`TableCamera`, passed by the CLI when the cell calibration exists) the
height, the footprint and its offset from the TCP come from that model, so the raster stays
flush with the grown region although the camera is not where tcp_offset_mm says. Pure: numpy,
the recipe and station.geometry.coverage; `station.cli.plan_files` writes the plan and its
picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from station.errors import RecipeError
from station.geometry.coverage import (
    CoverageReport,
    NominalCamera,
    TableCamera,
    check,
    depth_of_field,
    detector_factor,
    footprint,
    footprint_of,
    in_polygon,
    mm_per_px_of,
    needed_mm_per_px,
    reach_distance,
    region_rect,
)
from station.geometry.ur_poses import rotvec_to_matrix
from station.recipe import Pose, Recipe, RobotConfig, card_pose, poses_path

HEIGHT_STEP_MM = 5.0  # how far the camera is lowered per try when a pose is out of reach
RESOLUTION_TRIES = 3  # rasters tried, each lower, until every pose resolves the smallest defect
MAX_POSES = 400  # robot.poses' limit
MAX_TILT_DEG = 1.0  # the home pose must look down within this


@dataclass(frozen=True)
class Motion:
    """Estimated robot time per sheet: home -> every pose -> home, trapezoidal moves."""

    moves_s: float
    settle_s: float
    path_mm: float

    @property
    def total_s(self) -> float:
        return self.moves_s + self.settle_s


@dataclass
class Plan:
    height_mm: float  # the camera's view distance (TCP above the table)
    height_from: str  # what chose it
    poses: list[Pose]
    grid: tuple[int, int]  # shots along x, along y
    footprint_mm: tuple[float, float]  # what one shot covers, along x and y
    overlap: tuple[float, float]  # share of a footprint seen by the next shot along x, y
    motion: Motion
    report: CoverageReport  # the planned poses checked as `station recipe check` does
    card_s: float = 0.0  # robot time the drift reference card adds per part (averaged)


def move_s(distance_mm: float, speed: float, accel: float) -> float:
    """Time of one straight move with a trapezoidal (or triangular) speed profile."""
    if distance_mm <= 0:
        return 0.0
    if distance_mm >= speed * speed / accel:
        return distance_mm / speed + speed / accel
    return 2.0 * math.sqrt(distance_mm / accel)


def motion(robot: RobotConfig, poses: list[Pose]) -> Motion:
    """Robot time per sheet from the recipe's speed, acceleration and settle time."""
    stops = [robot.home, *poses, robot.home]
    lengths = [
        float(np.linalg.norm(np.subtract(b.position_mm, a.position_mm)))
        for a, b in zip(stops, stops[1:], strict=False)
    ]
    moves = sum(move_s(d, robot.speed_mm_s, robot.acceleration_mm_s2) for d in lengths)
    return Motion(moves_s=moves, settle_s=robot.settle_s * len(poses), path_mm=sum(lengths))


def card_extra_s(recipe: Recipe) -> float:
    """Robot time per part that the drift reference card adds (the detour from the last pose,
    its settling), averaged over `every_parts`; 0 when it is off."""
    drift = recipe.monitoring.drift
    poses = recipe.robot.poses
    if not (drift.enabled and drift.reference.enabled and poses):
        return 0.0
    with_card = motion(recipe.robot, [*poses, card_pose(recipe)]).total_s
    return (with_card - motion(recipe.robot, poses).total_s) / drift.reference.every_parts


def _probe(recipe: Recipe, height: float, xy: tuple[float, float] = (0.0, 0.0)) -> Pose:
    """A shot at TCP (x, y, height) with the home pose's orientation."""
    return Pose(name="probe", position_mm=(*xy, height), rotvec_rad=recipe.robot.home.rotvec_rad)


def resolution_height(recipe: Recipe, model: TableCamera | None = None) -> float:
    """The largest view distance (whole mm) whose detector mm/px resolves the smallest defect;
    through `model`: the largest TCP height whose calibrated mm/px (at the region's centre)
    does, mm/px growing linearly with the height."""
    cam = NominalCamera.from_recipe(recipe)
    target = needed_mm_per_px(recipe) / detector_factor(recipe)
    nominal = math.floor(target * cam.f_px + 1e-9)
    if model is None:
        return nominal
    x0, y0, x1, y1 = region_rect(recipe)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    h0, h1 = float(max(nominal, 1)), float(max(nominal, 1)) + 100.0
    m0, m1 = (mm_per_px_of(cam, _probe(recipe, h, centre), model) for h in (h0, h1))
    if not (math.isfinite(m0) and math.isfinite(m1) and m1 > m0):
        raise _refuse(
            recipe,
            [
                f"robot.home.rotvec_rad: the calibrated camera ({model.source}) does not see the "
                "table from the home orientation above the region; check the home pose or run "
                "station calibrate-hand-eye again"
            ],
        )
    return math.floor(h0 + (target - m0) * (h1 - h0) / (m1 - m0) + 1e-9)


def _inside(poly: np.ndarray, pts: np.ndarray) -> bool:
    cross = [
        (poly[(i + 1) % 4, 0] - poly[i, 0]) * (pts[:, 1] - poly[i, 1])
        - (poly[(i + 1) % 4, 1] - poly[i, 1]) * (pts[:, 0] - poly[i, 0])
        for i in range(4)
    ]
    c = np.stack(cross)
    return bool(np.all(c >= -1e-9) or np.all(c <= 1e-9))


def _rect_border(per_edge: int = 32) -> np.ndarray:
    """Points along the square [-1, 1]^2's edge, corners included."""
    t = np.linspace(-1.0, 1.0, per_edge, endpoint=False)
    one = np.ones_like(t)
    return np.concatenate([np.c_[t, -one], np.c_[one, t], np.c_[-t, one], np.c_[-one, -t]])


def inner_footprint(
    cam: NominalCamera,
    rotvec: tuple[float, float, float],
    height: float,
    model: TableCamera | None = None,
    at: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, float, float]:
    """The largest axis-aligned rectangle, with the footprint's bounding-box proportions,
    inside what a camera at TCP (x, y, height), (x, y) = `at`, sees: its centre's offset from
    the TCP (mm) and its size. Through `model` the outline may bend (distortion): the
    rectangle's whole edge must then lie inside it, not only its corners."""
    pose = Pose(name="probe", position_mm=(*at, height), rotvec_rad=rotvec)
    poly = footprint(cam, pose) if model is None else footprint_of(cam, pose, model)
    if poly is None:
        raise ValueError("the camera does not see the table")
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    edge = _rect_border()

    def fits(scale: float) -> bool:
        if model is None:
            return _inside(poly, centre + corners * half * scale)
        pts = centre + edge * half * scale
        return bool(in_polygon(poly, pts[:, 0], pts[:, 1]).all())

    low, high = 0.0, 1.0
    for _ in range(40):  # bisect the scale of the bounding box that still fits
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return centre - np.asarray(at), 2 * half[0] * low, 2 * half[1] * low


def _axis(lo: float, hi: float, size: float, overlap: float) -> list[float]:
    """Shot centres along one axis: evenly spread, the first and last footprint flush with
    the region's edges, neighbours sharing at least `overlap` of a footprint."""
    span = hi - lo
    if span <= size:
        return [(lo + hi) / 2]
    n = math.ceil((span - size) / (size * (1 - overlap)) - 1e-9) + 1
    step = (span - size) / (n - 1)
    return [lo + size / 2 + i * step for i in range(n)]


def raster_poses(
    recipe: Recipe, height: float, overlap: float, model: TableCamera | None = None
) -> tuple[list[Pose], dict]:
    """The serpentine raster at `height`: rows along base x, every other row reversed."""
    rotvec = recipe.robot.home.rotvec_rad
    m = recipe.coverage.view_margin_mm
    x0, y0, x1, y1 = region_rect(recipe)
    x0, y0, x1, y1 = x0 - m, y0 - m, x1 + m, y1 + m
    at = (0.0, 0.0) if model is None else ((x0 + x1) / 2, (y0 + y1) / 2)
    offset, fw, fh = inner_footprint(NominalCamera.from_recipe(recipe), rotvec, height, model, at)
    xs, ys = _axis(x0, x1, fw, overlap), _axis(y0, y1, fh, overlap)
    poses = []
    for j, y in enumerate(ys):
        cols = list(enumerate(xs))
        for i, x in cols if j % 2 == 0 else cols[::-1]:
            pos = (round(x - offset[0], 2), round(y - offset[1], 2), round(height, 2))
            poses.append(Pose(name=f"r{j + 1}c{i + 1}", position_mm=pos, rotvec_rad=rotvec))
    shared = tuple(
        float((size - (c[1] - c[0])) / size) if len(c) > 1 else 1.0
        for size, c in ((fw, xs), (fh, ys))
    )
    return poses, {
        "grid": (len(xs), len(ys)),
        "footprint": (float(fw), float(fh)),
        "overlap": shared,
    }


def _looks_down(recipe: Recipe) -> None:
    axis = rotvec_to_matrix(recipe.robot.home.rotvec_rad)[:, 2]
    if axis[2] > -math.cos(math.radians(MAX_TILT_DEG)):
        raise _refuse(
            recipe,
            [
                "robot.home.rotvec_rad: the planned shots take the home pose's orientation, which "
                f"must look straight down (within {MAX_TILT_DEG:g} degree): use [3.14159, 0, 0]"
            ],
        )


def _refuse(recipe: Recipe, problems: list[str]) -> RecipeError:
    return RecipeError(recipe.source or recipe.name, problems)


def _start_height(recipe: Recipe, model: TableCamera | None = None) -> tuple[float, str]:
    """The highest height the resolution allows, or coverage.camera_height_mm; refused when
    the lens cannot focus there."""
    cov, lens = recipe.coverage, recipe.camera.lens
    best = resolution_height(recipe, model)
    need = f"{cov.smallest_defect_mm:g} mm at {cov.defect_px:g} px"
    if cov.camera_height_mm is not None:
        if cov.camera_height_mm > best:
            raise _refuse(
                recipe,
                [
                    f"coverage.camera_height_mm: {cov.camera_height_mm:g} mm is too high to "
                    f"resolve {need} (at most {best:g} mm); lower it or set it to null"
                ],
            )
        if cov.camera_height_mm < lens.min_focus_distance_mm:
            raise _refuse(
                recipe,
                [
                    f"camera.lens.min_focus_distance_mm: the lens focuses no closer than "
                    f"{lens.min_focus_distance_mm:g} mm, not at coverage.camera_height_mm "
                    f"{cov.camera_height_mm:g}; raise the camera or use a lens that focuses closer"
                ],
            )
        return cov.camera_height_mm, "from coverage.camera_height_mm"
    if best < lens.min_focus_distance_mm:
        raise _refuse(
            recipe,
            [
                f"coverage.smallest_defect_mm: {need} needs the camera within {max(best, 0):g} mm "
                f"of the sheet, closer than the lens focuses (camera.lens.min_focus_distance_mm "
                f"{lens.min_focus_distance_mm:g}); use a longer camera.lens.focal_length_mm, a "
                "smaller coverage.defect_px"
                + (
                    ""
                    if recipe.preprocess.tiling.enabled
                    else " or preprocess.tiling.enabled: true"
                )
            ],
        )
    how = "" if model is None else " through the calibrated camera"
    return float(best), f"from the resolution, {needed_mm_per_px(recipe):.3f} mm/px{how}"


def _reach_refusal(recipe: Recipe, start: float, floor: float, far: float) -> RecipeError:
    x0, y0, x1, y1 = region_rect(recipe)
    cx, cy = recipe.sheet.center_mm
    return _refuse(
        recipe,
        [
            f"robot.reach_mm: the region x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} mm puts the "
            f"flange {far:.0f} mm from the shoulder even with the camera lowered from {start:g} "
            f"to {floor:g} mm, beyond robot.reach_mm {recipe.robot.reach_mm:g}; move "
            f"sheet.center_mm ({cx:g}, {cy:g}) closer to the robot, shrink coverage.region_mm, "
            "or use a longer reach"
        ],
    )


def _reachable_raster(
    recipe: Recipe, start: float, overlap: float, model: TableCamera | None = None
) -> tuple[float, list[Pose], dict]:
    """The highest raster from `start` down (HEIGHT_STEP_MM steps, not below the lens's
    closest focus) whose poses the robot reaches."""
    robot = recipe.robot
    if reach_distance(robot.home, robot) > robot.reach_mm:
        raise _refuse(
            recipe,
            [
                f"robot.home: the flange is {reach_distance(robot.home, robot):.0f} mm from the "
                f"shoulder, beyond robot.reach_mm {robot.reach_mm:g}; move the home pose closer"
            ],
        )
    floor = max(recipe.camera.lens.min_focus_distance_mm, 1.0)
    height, far = start, math.inf
    while height >= floor:
        poses, info = raster_poses(recipe, height, overlap, model)
        if len(poses) > MAX_POSES:
            raise _refuse(
                recipe,
                [
                    f"coverage.region_mm: covering it takes {len(poses)} shots at {height:g} mm, "
                    f"more than {MAX_POSES}; shrink the region, lower coverage.overlap or use a "
                    "shorter camera.lens.focal_length_mm with a finer sensor"
                ],
            )
        far = max(reach_distance(p, robot) for p in poses)
        if far <= robot.reach_mm:
            return height, poses, info
        height = (math.ceil(height / HEIGHT_STEP_MM - 1e-9) - 1) * HEIGHT_STEP_MM
    raise _reach_refusal(recipe, start, floor, far)


def _resolving_height(recipe: Recipe, height: float, report: CoverageReport) -> float | None:
    """A lower height when some pose of the raster at `height` is coarser than the smallest
    defect needs (the height was found at the region's centre; a tilted table or the mount's
    tilt make other poses coarser), else None. A height the recipe fixes is never moved."""
    worst, need = report.detector_mm_px, report.needed_mm_px
    if recipe.coverage.camera_height_mm is not None or worst <= need * (1 + 1e-9):
        return None
    return float(math.floor(height * need / worst - 1e-9))


def plan(recipe: Recipe, overlap: float | None = None, model: TableCamera | None = None) -> Plan:
    """The poses that cover the recipe's region, seen through the calibrated camera `model`
    when given (else the nominal pinhole); RecipeError (one line) when none can."""
    overlap = recipe.coverage.overlap if overlap is None else overlap
    if not (math.isfinite(overlap) and 0 <= overlap < 1):
        raise _refuse(
            recipe,
            [
                f"coverage.overlap (--overlap): {overlap:g} must be at least 0 and below 1, the "
                "share of a footprint its neighbour also sees (e.g. 0.15)"
            ],
        )
    _looks_down(recipe)
    start, source = _start_height(recipe, model)
    for _ in range(RESOLUTION_TRIES):
        height, poses, info = _reachable_raster(recipe, start, overlap, model)
        planned = recipe.model_copy(
            update={"robot": recipe.robot.model_copy(update={"poses": poses, "poses_file": None})}
        )
        report = check(planned, model)
        lower = _resolving_height(recipe, height, report)
        if lower is None:
            break
        start, source = lower, source + f", lowered to {lower:g} mm to resolve at every pose"
    if height < start:
        source += f", lowered from {start:g} mm to reach every pose"
    lens = recipe.camera.lens
    near, far = depth_of_field(lens)
    if not near <= height <= far:
        raise _refuse(
            recipe,
            [
                f"camera.lens.focus_distance_mm: {lens.focus_distance_mm:g} mm keeps {near:.0f}-"
                f"{far:.0f} mm sharp, not the planned view distance {height:g} mm; set "
                f"focus_distance_mm: {height:g} (or coverage.camera_height_mm within that range)"
            ],
        )
    return Plan(
        height_mm=height,
        height_from=source,
        poses=poses,
        grid=info["grid"],
        footprint_mm=info["footprint"],
        overlap=info["overlap"],
        motion=motion(recipe.robot, poses),
        report=report,
        card_s=card_extra_s(planned),
    )


def poses_file(recipe: Recipe) -> Path:
    """Where the plan goes: robot.poses_file, relative to the recipe; refused for a recipe
    whose poses are inline."""
    name = recipe.robot.poses_file
    if name is None:
        raise _refuse(
            recipe,
            [
                f"robot.poses_file: the poses are inline; add `robot.poses_file: {recipe.name}"
                ".poses.yaml` and remove robot.poses, then run station plan-poses again"
            ],
        )
    if recipe.poses_source and recipe.poses_source != recipe.source:
        raise _refuse(
            recipe,
            [
                f"robot.poses_file: {name} belongs to the base recipe {recipe.poses_source}; "
                f"planning here would overwrite its poses. Add `robot: {{poses_file: "
                f"{recipe.name}.poses.yaml}}` to this recipe to plan its own"
            ],
        )
    return poses_path(name, recipe.poses_source or recipe.source)
