"""Optics and coverage of a recipe: what each shot sees of the sheet, how finely, and whether
the shots together see the whole inspected region.

The camera is the recipe's nominal pinhole: fx = focal length / pixel size, the principal point
at the image centre, no distortion. As in the twin (station.twin.optics) the TCP is the optical
centre and the tool frame is the camera frame: x to the image right, y to the image bottom, z
along the optical axis; the rotation vector [pi, 0, 0] looks straight down at the table z = 0,
image u growing with base x and image v with base -y. Pixel centres sit at integer coordinates,
so the image spans -0.5 .. width - 0.5. All lengths are mm in the robot base frame.

A calibrated camera (`TableCamera`: the cell calibration's model, which the CLI passes when
calibration/cell-<recipe>.yaml exists) replaces that pinhole: footprints are then the window's
border (BORDER_POINTS per side, as distortion bends the edges) seen on the calibrated table
plane through the calibrated mounting, and mm/px and view distances come from the same rays.

Pure: numpy and the recipe only; `check(recipe)` is what `station recipe check` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from station.geometry.ur_poses import rotvec_to_matrix
from station.recipe import LensConfig, Pose, Recipe, RobotConfig

RASTER_MM = 0.5  # the coverage raster's cell
TABLE_BAND_MM = 4.0  # table the poses must see around the region (sheet.check_placement)
MAX_RASTER_CELLS = 4_000_000  # a larger region is rastered coarser (cells stay square)
COC_PX = 2.0  # circle of confusion for the depth of field: two pixels
COC_PER_SIGMA = 2.4  # a defocus disc's diameter over the sigma of the Gaussian drawn for it
MIN_DOWN = 1e-6  # an optical axis must point at least this much down to see the table
BORDER_POINTS = 16  # points per side of a calibrated footprint (distortion bends the edges)
NOMINAL = "nominal (recipe lens, no distortion, camera at the TCP: tcp_offset_mm, table at z = 0)"


@dataclass(frozen=True)
class NominalCamera:
    """The nominal pinhole camera, and the window of its image that the detectors inspect."""

    f_px: float
    cx: float
    cy: float
    pixel_mm: float  # the sensor's pixel pitch
    window: tuple[float, float, float, float]  # inspected pixels' outer edges: u0, v0, u1, v1

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> NominalCamera:
        cam, crop = recipe.camera, recipe.preprocess.crop
        pixel_mm = cam.lens.pixel_size_um / 1000.0
        x, y, w, h = crop if crop is not None else (0, 0, cam.width, cam.height)
        return cls(
            f_px=focal_px(cam.lens),
            cx=(cam.width - 1) / 2.0,
            cy=(cam.height - 1) / 2.0,
            pixel_mm=pixel_mm,
            window=(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5),
        )


def view_distance(pose: Pose) -> float:
    """Distance along the optical axis from the camera to the table; inf when it looks up."""
    axis = rotvec_to_matrix(pose.rotvec_rad)[:, 2]
    if axis[2] > -MIN_DOWN or pose.position_mm[2] <= 0:
        return math.inf
    return float(pose.position_mm[2] / -axis[2])


def footprint(cam: NominalCamera, pose: Pose) -> np.ndarray | None:
    """The 4 table points (mm, base frame) seen at the inspected window's corners, in order
    around it; None when a corner's ray misses the table (camera tilted past the horizon)."""
    u0, v0, u1, v1 = cam.window
    return _pinhole_on_table(cam, pose, np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]))


def _pinhole_on_table(cam: NominalCamera, pose: Pose, uv: np.ndarray) -> np.ndarray | None:
    """Table points (N, 2) the nominal pinhole sees at pixels `uv`; None when a ray misses."""
    rays = (
        np.column_stack(
            [(uv[:, 0] - cam.cx) / cam.f_px, (uv[:, 1] - cam.cy) / cam.f_px, np.ones(len(uv))]
        )
        @ rotvec_to_matrix(pose.rotvec_rad).T
    )
    centre = np.asarray(pose.position_mm, np.float64)
    if np.any(rays[:, 2] > -MIN_DOWN) or centre[2] <= 0:
        return None
    s = -centre[2] / rays[:, 2]
    return centre[:2] + rays[:, :2] * s[:, None]


def camera_mm_per_px(cam: NominalCamera, pose: Pose) -> float:
    """Table mm per image pixel at the image centre (inf when the camera misses the table)."""
    return view_distance(pose) / cam.f_px


class TableCamera(Protocol):
    """A calibrated camera as coverage reads it (station.cellcal.store.CameraModel fits)."""

    @property
    def source(self) -> str: ...  # which model, in words
    @property
    def matrix(self) -> np.ndarray: ...  # 3x3 intrinsics
    def camera_pose(self, tcp: Any) -> np.ndarray: ...  # 4x4 camera -> base at TCP `tcp`
    def pixels_to_table(self, tcp: Any, uv: np.ndarray) -> np.ndarray: ...  # (N, 3) base mm


def tcp_of(pose: Pose) -> list[float]:
    """The pose as the robot reports its TCP: x, y, z (mm), rotation vector (rad)."""
    return [*pose.position_mm, *pose.rotvec_rad]


def window_border(cam: NominalCamera, per_edge: int = BORDER_POINTS) -> np.ndarray:
    """(4 * per_edge, 2) pixels along the inspected window's edge, corners first in order
    (top-left, top-right, bottom-right, bottom-left), as station.geometry.sheet_map.footprint."""
    u0, v0, u1, v1 = cam.window
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    return np.concatenate(
        [
            np.c_[u0 + (u1 - u0) * t, np.full_like(t, v0)],
            np.c_[np.full_like(t, u1), v0 + (v1 - v0) * t],
            np.c_[u1 - (u1 - u0) * t, np.full_like(t, v1)],
            np.c_[np.full_like(t, u0), v1 - (v1 - v0) * t],
        ]
    )


def _seen_on_table(model: TableCamera, pose: Pose, uv: np.ndarray) -> np.ndarray | None:
    """Base points (N, 3) on the table seen at pixels `uv`; None when a ray misses it."""
    tcp = tcp_of(pose)
    with np.errstate(divide="ignore", invalid="ignore"):  # a ray along the table: inf, NaN
        pts = np.asarray(model.pixels_to_table(tcp, uv), np.float64)
        cam = np.asarray(model.camera_pose(tcp), np.float64)
        ahead = (pts - cam[:3, 3]) @ cam[:3, 2]
    if not (np.isfinite(pts).all() and np.all(ahead > MIN_DOWN)):
        return None
    return pts


def footprint_of(
    cam: NominalCamera, pose: Pose, model: TableCamera | None = None
) -> np.ndarray | None:
    """The inspected window's outline on the table: `footprint` (4 corners) for the nominal
    pinhole, the window's border through `model` when calibrated; None when it misses."""
    if model is None:
        return footprint(cam, pose)
    pts = _seen_on_table(model, pose, window_border(cam))
    return None if pts is None else pts[:, :2]


def view_distance_of(pose: Pose, model: TableCamera | None = None) -> float:
    """`view_distance`, or through `model`: camera centre to where its optical axis (the
    principal point's ray) meets the table; inf when it misses."""
    if model is None:
        return view_distance(pose)
    k = np.asarray(model.matrix, np.float64)
    pts = _seen_on_table(model, pose, np.array([[k[0, 2], k[1, 2]]]))
    if pts is None:
        return math.inf
    return float(np.linalg.norm(pts[0] - model.camera_pose(tcp_of(pose))[:3, 3]))


def mm_per_px_of(cam: NominalCamera, pose: Pose, model: TableCamera | None = None) -> float:
    """The table length one pixel spans (the longer of u and v), the coarsest over the
    inspected window: its centre, corners and edge midpoints, through `model` when given (else
    the nominal pinhole). A tilted view and lens distortion make the window's edges coarser than
    its centre; inf when a ray misses the table."""
    u0, v0, u1, v1 = cam.window
    at = [(u, v) for u in (u0 + 0.5, (u0 + u1) / 2, u1 - 0.5) for v in (v0 + 0.5, (v0 + v1) / 2,
                                                                      v1 - 0.5)]
    step = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    uv = (np.array(at)[:, None, :] + step[None]).reshape(-1, 2)
    if model is None:
        pts = _pinhole_on_table(cam, pose, uv)
    else:
        seen = _seen_on_table(model, pose, uv)
        pts = None if seen is None else seen[:, :2]
    if pts is None:
        return math.inf
    pts = pts.reshape(len(at), 4, 2)
    du = np.linalg.norm(pts[:, 1] - pts[:, 0], axis=1)
    dv = np.linalg.norm(pts[:, 3] - pts[:, 2], axis=1)
    return float(max(du.max(), dv.max()))


def detector_factor(recipe: Recipe) -> float:
    """Detector-input pixels per camera pixel, inverted: how many camera pixels one detector
    pixel spans. Tiles keep the camera's pixels (1); a whole-shot resize to preprocess.size
    takes the coarser axis. An enlarged shot resolves no finer than the camera (at least 1)."""
    pre = recipe.preprocess
    if pre.tiling.enabled:
        return 1.0
    w, h = recipe.shot_wh
    return max(1.0, w / pre.size[0], h / pre.size[1])


def needed_mm_per_px(recipe: Recipe) -> float:
    """The coarsest detector mm/px that still puts defect_px pixels across the smallest defect."""
    return recipe.coverage.smallest_defect_mm / recipe.coverage.defect_px


def sheet_rect(recipe: Recipe, grow_mm: float = 0.0) -> tuple[float, float, float, float]:
    """The sheet's [x0, y0, x1, y1] in base-frame mm, grown by `grow_mm` on every side."""
    s = recipe.sheet
    cx, cy = s.center_mm
    hw, hh = s.width_mm / 2 + grow_mm, s.height_mm / 2 + grow_mm
    return cx - hw, cy - hh, cx + hw, cy + hh


def checks_placement(recipe: Recipe) -> bool:
    """Whether each part's sheet is found in its shots (station.geometry.placement):
    `sheet.check_placement`, and a region that is the whole sheet (a partial region does not
    show the sheet's edges)."""
    return recipe.sheet.check_placement and not recipe.coverage.partial


def placement_tolerance_mm(recipe: Recipe) -> float:
    """How far a sheet may reach past the inspected region: half the smallest defect (one
    lying across the region's border keeps at least half of itself inside)."""
    return recipe.coverage.smallest_defect_mm / 2.0


def region_rect(recipe: Recipe) -> tuple[float, float, float, float]:
    """The inspected region in base-frame mm: sheet.center_mm + coverage.region_mm, or the
    whole sheet grown by coverage.edge_margin_mm."""
    cov = recipe.coverage
    if cov.region_mm is None:
        return sheet_rect(recipe, cov.edge_margin_mm)
    cx, cy = recipe.sheet.center_mm
    x0, y0, x1, y1 = cov.region_mm
    return cx + min(x0, x1), cy + min(y0, y1), cx + max(x0, x1), cy + max(y0, y1)


def focal_px(lens: LensConfig) -> float:
    """The lens's focal length in pixels of its sensor."""
    return lens.focal_length_mm * 1000.0 / lens.pixel_size_um


def blur_px(lens: LensConfig, distance_mm: float) -> float:
    """Gaussian sigma (pixels) of the focus blur at `distance_mm` from the camera: the
    thin-lens circle of confusion over COC_PER_SIGMA."""
    f, n, s = lens.focal_length_mm, lens.f_number, lens.focus_distance_mm
    coc_mm = (f * f / (n * (s - f))) * abs(distance_mm - s) / distance_mm
    return coc_mm * 1000.0 / lens.pixel_size_um / COC_PER_SIGMA


def depth_of_field(lens: LensConfig, focus_mm: float | None = None) -> tuple[float, float]:
    """Near and far limits (mm from the camera) of acceptable sharpness around the focus
    distance, thin-lens formulas with a circle of confusion of COC_PX pixels."""
    f = lens.focal_length_mm
    s = lens.focus_distance_mm if focus_mm is None else focus_mm
    coc = COC_PX * lens.pixel_size_um / 1000.0
    hyper = f * f / (lens.f_number * coc) + f
    near = s * (hyper - f) / (hyper + s - 2 * f)
    far = s * (hyper - f) / (hyper - s) if s < hyper else math.inf
    return near, far


def flange_position(pose: Pose, robot: RobotConfig) -> np.ndarray:
    """Where the tool flange is when the TCP is at `pose`: the pose composed with the inverse
    TCP offset (base_T_flange = base_T_tcp @ inv(flange_T_tcp))."""
    r_tcp = rotvec_to_matrix(pose.rotvec_rad)
    r_off = rotvec_to_matrix(robot.tcp_offset_rotvec_rad)
    r_flange = r_tcp @ r_off.T
    return np.asarray(pose.position_mm, np.float64) - r_flange @ np.asarray(robot.tcp_offset_mm)


def reach_distance(pose: Pose, robot: RobotConfig) -> float:
    """The flange's distance from the shoulder point (0, 0, shoulder_height_mm)."""
    shoulder = np.array([0.0, 0.0, robot.shoulder_height_mm])
    return float(np.linalg.norm(flange_position(pose, robot) - shoulder))


@dataclass
class Raster:
    """How often each cell of a region is seen, and what that adds up to."""

    percent: float  # share of the region seen by at least one view
    overlap_percent: float  # share seen by two or more views
    gaps: list[tuple[float, float, float, float]]  # unseen areas' boxes (mm), largest first
    cell_mm: float
    counts: np.ndarray = field(repr=False)  # views per cell, row 0 at y0


def convex(poly: np.ndarray) -> bool:
    """Whether a polygon (M, 2) turns the same way at every vertex."""
    d = np.roll(poly, -1, axis=0) - poly
    turn = d[:, 0] * np.roll(d, -1, axis=0)[:, 1] - d[:, 1] * np.roll(d, -1, axis=0)[:, 0]
    tol = 1e-9 * float(np.ptp(poly)) ** 2  # collinear border points turn by rounding only
    return bool(np.all(turn >= -tol) or np.all(turn <= tol))


def in_polygon(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Points (xs, ys arrays) inside any simple polygon (M, 2): the even-odd crossing rule."""
    inside = np.zeros(np.shape(xs), bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


def _inside(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Cells (xs, ys grids) inside a polygon, either winding: edges count for a convex one
    (the nominal 4 corners), the crossing rule for a bent one (a distorted border)."""
    if not convex(poly):
        return in_polygon(poly, xs, ys)
    signs = []
    for i in range(len(poly)):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % len(poly)]
        signs.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
    s = np.stack(signs)
    return np.all(s >= 0, axis=0) | np.all(s <= 0, axis=0)


def raster(region: tuple[float, float, float, float], footprints: list[np.ndarray]) -> Raster:
    """Coverage of `region` by the footprints, on a RASTER_MM grid of cell centres."""
    x0, y0, x1, y1 = region
    cell = max(RASTER_MM, math.sqrt((x1 - x0) * (y1 - y0) / MAX_RASTER_CELLS))
    nx, ny = max(1, math.ceil((x1 - x0) / cell - 1e-9)), max(1, math.ceil((y1 - y0) / cell - 1e-9))
    xs = np.minimum(x0 + (np.arange(nx) + 0.5) * cell, x1)
    ys = np.minimum(y0 + (np.arange(ny) + 0.5) * cell, y1)
    gx, gy = np.meshgrid(xs, ys)
    counts = np.zeros((ny, nx), np.int32)
    for poly in footprints:
        px0, py0 = poly.min(axis=0)
        px1, py1 = poly.max(axis=0)
        cols = slice(int(np.searchsorted(xs, px0)), int(np.searchsorted(xs, px1, "right")))
        rows = slice(int(np.searchsorted(ys, py0)), int(np.searchsorted(ys, py1, "right")))
        counts[rows, cols] += _inside(poly, gx[rows, cols], gy[rows, cols])
    total = counts.size
    unseen = (counts == 0).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(unseen, connectivity=8)
    boxes = sorted((stats[i] for i in range(1, n)), key=lambda s: -int(s[cv2.CC_STAT_AREA]))
    gaps = [
        (
            x0 + b[cv2.CC_STAT_LEFT] * cell,
            y0 + b[cv2.CC_STAT_TOP] * cell,
            min(x1, x0 + (b[cv2.CC_STAT_LEFT] + b[cv2.CC_STAT_WIDTH]) * cell),
            min(y1, y0 + (b[cv2.CC_STAT_TOP] + b[cv2.CC_STAT_HEIGHT]) * cell),
        )
        for b in boxes
    ]
    return Raster(
        percent=100.0 * float(np.count_nonzero(counts)) / total,
        overlap_percent=100.0 * float(np.count_nonzero(counts >= 2)) / total,
        gaps=gaps,
        cell_mm=cell,
        counts=counts,
    )


@dataclass
class CoverageReport:
    """What a recipe's poses see of its region, how finely, and what is wrong with that."""

    region: tuple[float, float, float, float]  # base-frame mm
    shots: int
    footprints: list[np.ndarray | None]  # per pose; None: it misses the table
    raster: Raster
    camera_mm_px: tuple[float, float]  # finest and coarsest over the poses
    detector_mm_px: float  # the coarsest pose, at the detector input
    needed_mm_px: float
    tiling: bool
    view_mm: tuple[float, float]  # nearest and farthest view distance
    dof_mm: tuple[float, float]  # around camera.lens.focus_distance_mm
    farthest_reach_mm: float  # the farthest flange from the shoulder
    problems: list[str]
    camera_model: str = NOMINAL  # which camera model made the footprints, in words

    def lines(self) -> list[str]:
        """The block `station recipe check` prints."""
        r, how = self.region, "tiles" if self.tiling else "whole shot resized"
        return [
            f"coverage {floor1(self.raster.percent):.1f} % of the region "
            f"x {r[0]:.1f}..{r[2]:.1f}, y {r[1]:.1f}..{r[3]:.1f} mm "
            f"({_count(len(self.raster.gaps), 'gap')}), {self.shots} shots per sheet",
            f"overlap {self.raster.overlap_percent:.1f} % of the region seen by 2+ shots",
            f"mm/px {self.camera_mm_px[1]:.3f} at the camera, {self.detector_mm_px:.3f} at the "
            f"detector ({how}); needed <= {self.needed_mm_px:.3f}",
            f"view {self.view_mm[0]:.0f}-{self.view_mm[1]:.0f} mm, in focus "
            f"{self.dof_mm[0]:.0f}-{self.dof_mm[1]:.0f} mm; flange up to "
            f"{self.farthest_reach_mm:.0f} mm from the shoulder",
        ]


def floor1(percent: float) -> float:
    """A percentage floored to one decimal: 99.97 % must not print as 100.0 %."""
    return math.floor(percent * 10 + 1e-9) / 10


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(poses: list[Pose]) -> str:
    shown = ", ".join(p.name for p in poses[:4])
    return shown + (f" (+{len(poses) - 4} more)" if len(poses) > 4 else "")


def _coverage_problems(recipe: Recipe, region: tuple[float, ...], ras: Raster) -> list[str]:
    cov, out = recipe.coverage, []
    if cov.region_mm is not None and not cov.partial:
        sx0, sy0, sx1, sy1 = sheet_rect(recipe)
        x0, y0, x1, y1 = region
        if x0 > sx0 + 1e-6 or y0 > sy0 + 1e-6 or x1 < sx1 - 1e-6 or y1 < sy1 - 1e-6:
            out.append(
                f"coverage.region_mm: {list(cov.region_mm)} leaves part of the "
                f"{recipe.sheet.width_mm:g} x {recipe.sheet.height_mm:g} mm sheet out; set "
                "coverage.partial: true if that is intended, or region_mm: null (whole sheet)"
            )
    if ras.gaps:
        g = ras.gaps[0]
        out.append(
            f"coverage.region_mm: the poses see {floor1(ras.percent):.1f} % of the region; "
            f"largest gap x {g[0]:.1f}..{g[2]:.1f}, y {g[1]:.1f}..{g[3]:.1f} mm "
            f"({_count(len(ras.gaps), 'gap')}); write full-coverage poses with `station plan-poses "
            f"--recipe {recipe.name}`"
            + ("" if cov.partial else " or set coverage.partial: true with a smaller region")
        )
    return out


def _placement_problems(
    recipe: Recipe, region: tuple[float, float, float, float], prints: list[np.ndarray]
) -> list[str]:
    """The placement check finds the sheet's edges against the table beside the region: the
    poses must see a band of TABLE_BAND_MM around it."""
    if not checks_placement(recipe):
        return []
    x0, y0, x1, y1 = region
    b = TABLE_BAND_MM
    ras = raster((x0 - b, y0 - b, x1 + b, y1 + b), prints)
    ny, nx = ras.counts.shape
    ys = y0 - b + (np.arange(ny) + 0.5) * ras.cell_mm
    xs = x0 - b + (np.arange(nx) + 0.5) * ras.cell_mm
    gx, gy = np.meshgrid(xs, ys)
    band = (gx < x0) | (gx > x1) | (gy < y0) | (gy > y1)
    seen = 100.0 * float(np.count_nonzero(ras.counts[band])) / max(1, int(band.sum()))
    if seen >= 99.0:
        return []
    return [
        f"sheet.check_placement: the poses see {floor1(seen):.1f} % of the table {b:g} mm around "
        "the region, where the sheet's edges are found; raise coverage.view_margin_mm and run "
        f"`station plan-poses --recipe {recipe.name}`, or set sheet.check_placement: false"
    ]


def _resolution_problems(recipe: Recipe, poses: list[Pose], mm_px: list[float]) -> list[str]:
    need, factor = needed_mm_per_px(recipe), detector_factor(recipe)
    at = dict(zip((id(p) for p in poses), mm_px, strict=True))
    coarse = [p for p in poses if at[id(p)] * factor > need * (1 + 1e-9)]
    if not coarse:
        return []
    worst = max(at[id(p)] for p in coarse)
    how = (
        ""
        if factor == 1
        else (
            f" (the shot is resized {factor:.2f}x smaller: preprocess.size; preprocess.tiling "
            "keeps the camera's pixels)"
        )
    )
    return [
        f"coverage.smallest_defect_mm: {recipe.coverage.smallest_defect_mm:g} mm at "
        f"{recipe.coverage.defect_px:g} px needs <= {need:.3f} mm/px at the detector, poses "
        f"{_names(coarse)} give {worst * factor:.3f}{how}; lower the camera (station "
        "plan-poses) or use a longer camera.lens.focal_length_mm"
    ]


def _reach_problems(recipe: Recipe, poses: list[Pose]) -> list[str]:
    robot = recipe.robot
    far = [p for p in [robot.home, *poses] if reach_distance(p, robot) > robot.reach_mm]
    if not far:
        return []
    worst = max(reach_distance(p, robot) for p in far)
    return [
        f"robot.poses: {_names(far)} put the flange up to {worst:.0f} mm from the shoulder, "
        f"beyond robot.reach_mm {robot.reach_mm:g}; move them closer (sheet.center_mm, "
        "coverage.region_mm) or lower the camera, e.g. with station plan-poses"
    ]


def _focus_problems(recipe: Recipe, poses: list[Pose], views: list[float]) -> list[str]:
    lens, out = recipe.camera.lens, []
    at = dict(zip((id(p) for p in poses), views, strict=True))
    seen = [p for p in poses if math.isfinite(at[id(p)])]
    close = [p for p in seen if at[id(p)] < lens.min_focus_distance_mm]
    if lens.focus_distance_mm < lens.min_focus_distance_mm:
        out.append(
            f"camera.lens.focus_distance_mm: {lens.focus_distance_mm:g} is closer than the "
            f"lens focuses (camera.lens.min_focus_distance_mm {lens.min_focus_distance_mm:g}); "
            "raise the camera and focus farther"
        )
    if close:
        out.append(
            f"camera.lens.min_focus_distance_mm: poses {_names(close)} view the sheet from "
            f"{min(at[id(p)] for p in close):.0f} mm, closer than the lens focuses "
            f"({lens.min_focus_distance_mm:g} mm); raise the camera or use a lens that focuses "
            "closer"
        )
    near, far = depth_of_field(lens)
    blurred = [p for p in seen if not near <= at[id(p)] <= far and p not in close]
    if blurred:
        views = [at[id(p)] for p in blurred]
        out.append(
            f"camera.lens.focus_distance_mm: poses {_names(blurred)} view the sheet from "
            f"{min(views):.0f}-{max(views):.0f} mm, outside the depth of field {near:.0f}-"
            f"{far:.0f} mm around {lens.focus_distance_mm:g} mm; set focus_distance_mm to the "
            f"view distance ({views[0]:.0f}) or a larger camera.lens.f_number"
        )
    return out


def check(recipe: Recipe, model: TableCamera | None = None) -> CoverageReport:
    """The recipe's coverage, resolution, focus and reach, with one line per problem; through
    the calibrated camera `model` when given, else the nominal pinhole."""
    cam, poses = NominalCamera.from_recipe(recipe), list(recipe.robot.poses)
    prints = [footprint_of(cam, p, model) for p in poses]
    region = region_rect(recipe)
    ras = raster(region, [f for f in prints if f is not None])
    problems = [
        f"robot.poses.{p.name}.rotvec_rad: the camera does not see the table from this pose "
        "(it must look down; [pi, 0, 0] looks straight down)"
        for p, f in zip(poses, prints, strict=True)
        if f is None
    ]
    problems += _coverage_problems(recipe, region, ras)
    if not ras.gaps:  # with a gap in the region, planning the poses again comes first
        problems += _placement_problems(recipe, region, [f for f in prints if f is not None])
    mm_px = [mm_per_px_of(cam, p, model) for p in poses]
    views = [view_distance_of(p, model) for p in poses]
    problems += _resolution_problems(recipe, poses, mm_px)
    problems += _focus_problems(recipe, poses, views)
    problems += _reach_problems(recipe, poses)
    return CoverageReport(
        region=region,
        shots=len(poses),
        footprints=prints,
        raster=ras,
        camera_mm_px=(min(mm_px), max(mm_px)),
        detector_mm_px=max(mm_px) * detector_factor(recipe),
        needed_mm_px=needed_mm_per_px(recipe),
        tiling=recipe.preprocess.tiling.enabled,
        view_mm=(min(views), max(views)),
        dof_mm=depth_of_field(recipe.camera.lens),
        farthest_reach_mm=max(reach_distance(p, recipe.robot) for p in [recipe.robot.home, *poses]),
        problems=problems,
        camera_model=NOMINAL if model is None else model.source,
    )
