"""The sheet map: shot anomaly maps projected onto the sheet (mm, robot base axes) and fused.

Pure (numpy, OpenCV). A `Grid` of cells at `decision.sheet_map_mm_per_px` covers the inspected
region; for each shot (`ShotView`: 3x3 intrinsics, distortion, camera -> base pose, the window
its map covers) every cell centre on the table plane is projected into the image (distortion
included) and the map sampled bilinearly where it lies inside; `SheetMapper` fuses the views
that see a cell by max, mean or min (`decision.sheet_fusion`), one map per detector. A cell no
view sees is NaN (`SheetMap.unseen_cells`: a coverage gap). A view may come with the shot's
saturated pixels: where a cell lies on them it is fused from the views that see it unsaturated,
and a cell every view sees saturated is blind (`SheetMap.blind_regions`: glare, not inspected).
`SheetMap.defects` lists the 8-connected regions of the combined map (max over detectors of
fused / threshold) at or over 1.0. `SheetDefect` is shared with storage (which records it)
and review. `shot_view` makes a shot's `ShotView` from a camera model (`CameraLike`: the
cell's `CameraModel`) and the TCP: inspection and threshold calibration both build their views
with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import cv2
import numpy as np

from station.geometry.coverage import region_rect

if TYPE_CHECKING:
    from station.recipe import Recipe


class Region(NamedTuple):
    """An 8-connected region of grid cells: its area, centre (base mm) and extent: the
    diagonal of its bounding box counted in whole cells, never less than the longest line a
    defect lying wholly inside it can have."""

    area_mm2: float
    centre_mm: tuple[float, float]
    extent_mm: float


@dataclass(frozen=True)
class SheetDefect:
    """One defect region on the sheet map."""

    centre_mm: tuple[float, float]  # robot base frame, on the table plane
    area_mm2: float
    peak: float  # the region's highest fused score, divided by the detector's threshold
    detector: str
    shots: tuple[str, ...]  # names of the poses whose shots see the region
    box_mm: tuple[float, float, float, float] | None = None  # its cells' extent: x0, y0, x1, y1


# -- building the map -------------------------------------------------------------------------
#
# Conventions: the map is a grid over a rectangle of the table in base-frame mm. Row r, column c
# is the cell whose centre is (x0 + (c + 0.5) * s, y0 + (r + 0.5) * s), s = mm per cell: row 0
# holds the lowest y (the PNG's top-left pixel corner is (x0, y0)). A cell's value is the anomaly
# map sampled (bilinear) where the cell centre, on the table plane, appears in a shot; views
# that see a cell are fused by max, mean or min; a cell no view sees is NaN.

FUSIONS = ("max", "mean", "min")
_ABOVE = 1.0  # a defect region: fused value >= this (maps divided by the threshold)


def within_box(
    box_mm: Sequence[float], centres: Iterable[tuple[float, float]], tol_mm: float
) -> bool:
    """Whether a region centre lies in the box [x0, y0, x1, y1] (mm) grown by `tol_mm`: a
    region found at a known defect (the twin's truth)."""
    return any(boxes_meet(box_mm, (x, y, x, y), tol_mm) for x, y in centres)


def boxes_meet(a_mm: Sequence[float], b_mm: Sequence[float], tol_mm: float) -> bool:
    """Whether two boxes [x0, y0, x1, y1] (mm) overlap or lie within `tol_mm` of each other."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a_mm)
    bx0, by0, bx1, by1 = (float(v) for v in b_mm)
    return (bx0 <= ax1 + tol_mm and ax0 <= bx1 + tol_mm
            and by0 <= ay1 + tol_mm and ay0 <= by1 + tol_mm)  # fmt: skip


@dataclass(frozen=True)
class ShotView:
    """One shot's camera as arrays, and where its anomaly map lies in the image."""

    name: str  # the pose name
    matrix: np.ndarray  # 3x3 intrinsics
    dist: np.ndarray  # k1 k2 p1 p2 k3 (OpenCV's model)
    camera_to_base: np.ndarray  # 4x4
    size: tuple[int, int]  # the shot's width, height in pixels
    crop: tuple[int, int, int, int] | None = None  # x, y, w, h the map covers (None: all)

    def window(self) -> tuple[int, int, int, int]:
        """The crop clipped to the image (as preprocessing clips it)."""
        w, h = self.size
        if self.crop is None:
            return 0, 0, w, h
        x, y, cw, ch = self.crop
        x2, y2 = min(x + cw, w), min(y + ch, h)
        x, y = max(x, 0), max(y, 0)
        if x2 <= x or y2 <= y:
            raise ValueError(f"crop {self.crop} lies outside the {w} x {h} image")
        return x, y, x2 - x, y2 - y


class CameraLike(Protocol):
    """A camera model as the sheet map reads it (station.cellcal.store.CameraModel)."""

    @property
    def matrix(self) -> np.ndarray: ...  # 3x3
    @property
    def dist(self) -> np.ndarray: ...  # k1 k2 p1 p2 k3
    @property
    def table_to_base(self) -> np.ndarray: ...  # 4x4: z = 0 is the table
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def source(self) -> str: ...  # which model it is, in words (exact, calibrated, nominal)
    def camera_pose(self, tcp: Any) -> np.ndarray: ...  # 4x4 camera -> base at TCP `tcp`


def shot_view(
    camera: CameraLike,
    name: str,
    tcp: Sequence[float],
    crop: tuple[int, int, int, int] | None = None,
) -> ShotView:
    """The shot's camera as arrays: where it was when the robot reported `tcp` (mm, rotvec
    rad); its map covers `crop` (preprocess.crop) of the image."""
    return ShotView(
        name,
        camera.matrix,
        camera.dist,
        camera.camera_pose(list(tcp)),
        (camera.width, camera.height),
        crop,
    )


@dataclass(frozen=True)
class Grid:
    """The map's cells: `shape` rows x cols of `mm_per_px` from corner (x0, y0)."""

    x0: float
    y0: float
    mm_per_px: float
    shape: tuple[int, int]

    @classmethod
    def over(cls, region_mm: tuple[float, float, float, float], mm_per_px: float) -> Grid:
        """Cells covering `region_mm` = (x0, y0, x1, y1) in base mm (grown to whole cells)."""
        x0, y0, x1, y1 = (float(v) for v in region_mm)
        if not (mm_per_px > 0 and x1 > x0 and y1 > y0):
            raise ValueError(f"sheet map region {region_mm} at {mm_per_px} mm/px is empty")
        cols = max(1, math.ceil((x1 - x0) / mm_per_px - 1e-9))
        rows = max(1, math.ceil((y1 - y0) / mm_per_px - 1e-9))
        return cls(x0, y0, float(mm_per_px), (rows, cols))

    @property
    def extent_mm(self) -> tuple[float, float, float, float]:
        rows, cols = self.shape
        s = self.mm_per_px
        return (self.x0, self.y0, self.x0 + cols * s, self.y0 + rows * s)

    def centres(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(n_rows, n_cols, 2) cell centres in base mm."""
        r = np.arange(self.shape[0])[rows]
        c = np.arange(self.shape[1])[cols]
        xs = self.x0 + (c + 0.5) * self.mm_per_px
        ys = self.y0 + (r + 0.5) * self.mm_per_px
        xx, yy = np.meshgrid(xs, ys)
        return np.stack([xx, yy], axis=-1)

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) float (row, col) coordinates of base points (cell centres at integers)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        s = self.mm_per_px
        return np.column_stack([(xy[:, 1] - self.y0) / s - 0.5, (xy[:, 0] - self.x0) / s - 0.5])


def on_table(xy: np.ndarray, table_to_base: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) base points on the table plane (z = 0 of `table_to_base`) straight below or
    above the base (x, y) points `xy` (..., 2)."""
    xy = np.asarray(xy, np.float64)
    t = np.eye(4) if table_to_base is None else np.asarray(table_to_base, np.float64)
    n, p0 = t[:3, 2], t[:3, 3]
    if abs(n[2]) < 1e-6:
        raise ValueError("the table plane is vertical in the base frame")
    z = p0[2] - (n[0] * (xy[..., 0] - p0[0]) + n[1] * (xy[..., 1] - p0[1])) / n[2]
    return np.concatenate([xy, z[..., None]], axis=-1)


def project(view: ShotView, pts: np.ndarray) -> np.ndarray:
    """Shot pixels (N, 2) of base points (N, 3); NaN for points behind the camera or so far
    outside the image that the distortion model no longer holds."""
    pts = np.asarray(pts, np.float64).reshape(-1, 3)
    base_to_cam = np.linalg.inv(np.asarray(view.camera_to_base, np.float64))
    pc = pts @ base_to_cam[:3, :3].T + base_to_cam[:3, 3]
    out = np.full((len(pts), 2), np.nan)
    z = pc[:, 2]
    front = z > 1e-9
    if not front.any():
        return out
    k = np.asarray(view.matrix, np.float64)
    xn = pc[front, :2] / z[front, None]
    # keep points whose pinhole pixel lies within half an image of the frame: far outside,
    # the distortion polynomial folds back and would put them inside the image
    w, h = view.size
    ideal = xn @ k[:2, :2].T + k[:2, 2]
    near = (
        (ideal[:, 0] > -0.5 * w)
        & (ideal[:, 0] < 1.5 * w)
        & (ideal[:, 1] > -0.5 * h)
        & (ideal[:, 1] < 1.5 * h)
    )
    idx = np.flatnonzero(front)[near]
    if len(idx):
        obj = np.c_[xn[near], np.ones(len(idx))].reshape(-1, 1, 3)
        uv, _ = cv2.projectPoints(
            obj, np.zeros(3), np.zeros(3), k, np.asarray(view.dist, np.float64).ravel()
        )
        out[idx] = uv.reshape(-1, 2)
    return out


def back_project(
    view: ShotView, uv: np.ndarray, table_to_base: np.ndarray | None = None
) -> np.ndarray:
    """Base (x, y) points (N, 2) on the table plane seen at shot pixels `uv` (N, 2)."""
    pts = np.asarray(uv, np.float64).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
    k = np.asarray(view.matrix, np.float64)
    norm = cv2.undistortPointsIter(
        pts, k, np.asarray(view.dist, np.float64).ravel(), None, None, crit
    )
    cam = np.asarray(view.camera_to_base, np.float64)
    d = np.c_[norm.reshape(-1, 2), np.ones(len(norm))] @ cam[:3, :3].T
    t = np.eye(4) if table_to_base is None else np.asarray(table_to_base, np.float64)
    n, p0 = t[:3, 2], t[:3, 3]
    denom = d @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        s = ((p0 - cam[:3, 3]) @ n) / denom
    s = np.where(s > 0, s, np.nan)  # a ray that never meets the table in front of the camera
    return (cam[:3, 3] + d * s[:, None])[:, :2]


def footprint(
    view: ShotView, table_to_base: np.ndarray | None = None, per_edge: int = 1
) -> np.ndarray:
    """The table outline (M, 2 base mm) of what the map covers: its window's border, corners
    first in order (top-left, top-right, bottom-right, bottom-left), `per_edge` points per
    side (more follow a distorted edge)."""
    x, y, w, h = view.window()
    a, b = x - 0.5, y - 0.5
    c, d = x + w - 0.5, y + h - 0.5
    t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    edges = [
        np.c_[a + (c - a) * t, np.full_like(t, b)],
        np.c_[np.full_like(t, c), b + (d - b) * t],
        np.c_[c - (c - a) * t, np.full_like(t, d)],
        np.c_[np.full_like(t, a), d - (d - b) * t],
    ]
    return back_project(view, np.concatenate(edges), table_to_base)


def view_box(
    grid: Grid, view: ShotView, table_to_base: np.ndarray | None = None
) -> tuple[slice, slice] | None:
    """The grid cells around the footprint of what the view's map covers (None: it misses
    the grid)."""
    outline = footprint(view, table_to_base, per_edge=16)
    rows, cols = grid.shape
    if np.isnan(outline).any():  # the view sees the horizon: try every cell
        return slice(0, rows), slice(0, cols)
    rc = grid.cell_of(outline)
    r0, c0 = np.floor(rc.min(axis=0)).astype(int) - 1
    r1, c1 = np.ceil(rc.max(axis=0)).astype(int) + 2
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, rows), min(c1, cols)
    if r1 <= r0 or c1 <= c0:
        return None
    return slice(r0, r1), slice(c0, c1)


@dataclass
class _Seen:
    """Where one view's map lies on the grid: a bounding box of cells and a mask in it."""

    rows: slice
    cols: slice
    mask: np.ndarray  # bool, the box's shape
    clear: np.ndarray  # bool, the box's shape: seen on unsaturated pixels


class SheetMapper:
    """Fuses shot maps onto a grid, view by view, detector by detector (bounded memory: one
    accumulator per detector, whatever the number of shots)."""

    def __init__(
        self,
        grid: Grid,
        fusion: str = "max",
        table_to_base: np.ndarray | None = None,
        region_mm: tuple[float, float, float, float] | None = None,
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown sheet fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
        self.grid = grid
        self.fusion = fusion
        self.table_to_base = None if table_to_base is None else np.asarray(table_to_base)
        self.region_mm = tuple(region_mm) if region_mm is not None else grid.extent_mm
        self.seen: dict[str, _Seen] = {}
        self.footprints: dict[str, np.ndarray] = {}
        # per (detector, "clear" | "all"): the views' samples on unsaturated pixels, and all
        self._acc: dict[tuple[str, str], np.ndarray] = {}  # max/min: fused value; mean: sum
        self._count: dict[tuple[str, str], np.ndarray] = {}  # mean only

    def add(
        self,
        view: ShotView,
        maps: Mapping[str, np.ndarray],
        saturated: np.ndarray | None = None,
    ) -> None:
        """Project the grid into `view` and fuse each detector's map of that shot.
        `saturated`: the shot's H x W bool mask of saturated pixels (None: none)."""
        if view.name in self.seen:
            raise ValueError(f"shot {view.name} was added twice")
        if saturated is not None and saturated.shape != (view.size[1], view.size[0]):
            raise ValueError(
                f"saturation mask of shot {view.name} is {saturated.shape[::-1]} px, "
                f"the shot {view.size}"
            )
        self.footprints[view.name] = footprint(view, self.table_to_base)
        box = view_box(self.grid, view, self.table_to_base)
        if box is None:
            empty = np.zeros((0, 0), bool)
            self.seen[view.name] = _Seen(slice(0, 0), slice(0, 0), empty, empty)
            return
        rs, cs = box
        pts = on_table(self.grid.centres(rs, cs), self.table_to_base)
        uv = project(view, pts.reshape(-1, 3)).reshape(*pts.shape[:2], 2)
        x, y, w, h = view.window()
        with np.errstate(invalid="ignore"):
            inside = (
                (uv[..., 0] >= x - 0.5)
                & (uv[..., 0] <= x + w - 0.5)
                & (uv[..., 1] >= y - 0.5)
                & (uv[..., 1] <= y + h - 0.5)
            )
        clear = inside
        if saturated is not None and saturated.any():
            w_img, h_img = view.size
            ui = np.clip(np.rint(np.where(inside, uv[..., 0], 0)), 0, w_img - 1).astype(int)
            vi = np.clip(np.rint(np.where(inside, uv[..., 1], 0)), 0, h_img - 1).astype(int)
            clear = inside & ~saturated[vi, ui]
        self.seen[view.name] = _Seen(rs, cs, inside, clear)
        for name, amap in maps.items():
            m = np.asarray(amap, np.float32)
            if m.ndim != 2 or m.size == 0:
                raise ValueError(f"{name} map of shot {view.name} is not a 2-D map: {m.shape}")
            # shot pixel -> map pixel (a resize of the window to the map, centres aligned)
            mx = (uv[..., 0] - x + 0.5) * (m.shape[1] / w) - 0.5
            my = (uv[..., 1] - y + 0.5) * (m.shape[0] / h) - 0.5
            m = _pool(m, mx, my, inside)
            mx = np.where(inside, mx, 0).astype(np.float32)
            my = np.where(inside, my, 0).astype(np.float32)
            vals = cv2.remap(m, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            vals = vals.astype(np.float64)
            self._fuse((name, "all"), rs, cs, np.where(inside, vals, np.nan))
            self._fuse((name, "clear"), rs, cs, np.where(clear, vals, np.nan))

    def _fuse(self, key: tuple[str, str], rs: slice, cs: slice, vals: np.ndarray) -> None:
        if key not in self._acc:
            fill = 0.0 if self.fusion == "mean" else np.nan
            self._acc[key] = np.full(self.grid.shape, fill)
            if self.fusion == "mean":
                self._count[key] = np.zeros(self.grid.shape, np.int32)
        acc = self._acc[key]
        if self.fusion == "max":
            acc[rs, cs] = np.fmax(acc[rs, cs], vals)
        elif self.fusion == "min":
            acc[rs, cs] = np.fmin(acc[rs, cs], vals)
        else:
            present = ~np.isnan(vals)
            acc[rs, cs] += np.where(present, vals, 0.0)
            self._count[key][rs, cs] += present

    def _fused(self, key: tuple[str, str]) -> np.ndarray:
        acc = self._acc[key]
        if self.fusion != "mean":
            return acc.copy()
        count = self._count[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, acc / np.maximum(count, 1), np.nan)

    def result(self) -> SheetMap:
        """Per detector: the fusion of the unsaturated views where a cell has one, else of
        every view that sees it (a blind cell keeps its saturated values: a bright foreign
        object must not vanish from the map)."""
        fused = {}
        for name, kind in self._acc:
            if kind == "all":
                clear, every = self._fused((name, "clear")), self._fused((name, "all"))
                fused[name] = np.where(np.isnan(clear), every, clear)
        return SheetMap(
            self.grid, self.fusion, fused, dict(self.seen), dict(self.footprints), self.region_mm
        )


def recipe_mapper(
    recipe: Recipe, table_to_base: np.ndarray | None, fusion: str | None = None
) -> SheetMapper:
    """A mapper over the recipe's inspected region on its `decision.sheet_map_mm_per_px` grid,
    fused by `decision.sheet_fusion` (or `fusion`): what inspection and calibration build."""
    region = region_rect(recipe)
    dec = recipe.decision
    grid = Grid.over(region, dec.sheet_map_mm_per_px)
    return SheetMapper(grid, fusion or dec.sheet_fusion, table_to_base, region)


@dataclass
class SheetMap:
    """Fused maps per detector (in the units given: raw scores, or divided by thresholds)."""

    grid: Grid
    fusion: str
    fused: dict[str, np.ndarray]  # detector -> rows x cols, NaN where no view sees the cell
    seen: dict[str, _Seen]  # pose name -> the cells its map covers
    footprints: dict[str, np.ndarray]  # pose name -> 4 x 2 table corners (base mm)
    region_mm: tuple[float, float, float, float]

    def sees_whole(self, box_mm: Sequence[float]) -> bool:
        """Whether some view sees every cell of the box [x0, y0, x1, y1] (base mm)."""
        x0, y0, x1, y1 = box_mm
        gx0, gy0, gx1, gy1 = self.grid.extent_mm
        if x0 < gx0 or y0 < gy0 or x1 > gx1 or y1 > gy1:
            return False
        c = self.grid.centres()
        inside = (c[..., 0] >= x0) & (c[..., 0] <= x1) & (c[..., 1] >= y0) & (c[..., 1] <= y1)
        return bool(np.isfinite(next(iter(self.fused.values()))[inside]).all())

    def peaks(self) -> dict[str, float]:
        """Each detector's highest fused value (NaN when no cell is seen)."""
        out = {}
        for name, m in self.fused.items():
            out[name] = float(np.nanmax(m)) if np.isfinite(m).any() else float("nan")
        return out

    def combined(self, thresholds: Mapping[str, float] | None = None) -> np.ndarray:
        """The part's map: per cell the max over detectors of fused / threshold ("any")."""
        if not self.fused:
            return np.full(self.grid.shape, np.nan)
        th = thresholds or {}
        return np.fmax.reduce([m / float(th.get(n, 1.0)) for n, m in self.fused.items()])

    def _within(self) -> np.ndarray:
        """Cells whose centre lies in the region."""
        c = self.grid.centres()
        x0, y0, x1, y1 = self.region_mm
        return (c[..., 0] >= x0) & (c[..., 0] <= x1) & (c[..., 1] >= y0) & (c[..., 1] <= y1)

    def _coverage(self, field: str) -> np.ndarray:
        out = np.zeros(self.grid.shape, bool)
        for s in self.seen.values():
            out[s.rows, s.cols] |= getattr(s, field)
        return out

    def unseen_cells(self) -> int:
        """Cells whose centre lies in the region and that no shot sees (a coverage gap)."""
        return int(self._unseen().sum())

    def blind_cells(self) -> np.ndarray:
        """Bool grid: cells in the region that some shot sees, every one of them clipped."""
        return self._within() & self._coverage("mask") & ~self._coverage("clear")

    def blind_regions(self) -> list[Region]:
        """Each 8-connected region of cells in the region that some shot sees but every such
        shot sees saturated (not inspected), longest first."""
        return self._regions(self.blind_cells())

    def unseen_regions(self) -> list[Region]:
        """Each 8-connected region of cells in the region that no shot sees (a coverage gap),
        longest first."""
        return self._regions(self._unseen())

    def _unseen(self) -> np.ndarray:
        return self._within() & ~self._coverage("mask")

    def _regions(self, cells: np.ndarray) -> list[Region]:
        if not cells.any():
            return []
        count, labels = cv2.connectedComponents(cells.astype(np.uint8), connectivity=8)
        s = self.grid.mm_per_px
        centres = self.grid.centres()
        out = []
        for k in range(1, count):
            rr, cc = np.nonzero(labels == k)
            xy = centres[rr, cc].mean(axis=0)
            rows, cols = int(rr.max() - rr.min() + 1), int(cc.max() - cc.min() + 1)
            out.append(Region(float(len(rr) * s * s), (float(xy[0]), float(xy[1])),
                              math.hypot(rows * s, cols * s)))
        return sorted(out, key=lambda r: (-r.extent_mm, -r.area_mm2))

    def defects(self, thresholds: Mapping[str, float] | None = None) -> list[SheetDefect]:
        """Regions of the combined map at or over 1.0 (8-connected), largest peak first.

        Centre: the score-weighted centroid of the region's cells. Detector: the one with the
        highest normalised value at the region's peak. Shots: the poses whose maps cover at
        least one of its cells."""
        th = thresholds or {}
        names = list(self.fused)
        if not names:
            return []
        norm = np.stack([self.fused[n] / float(th.get(n, 1.0)) for n in names])
        comb = np.fmax.reduce(norm)
        with np.errstate(invalid="ignore"):
            hot = (comb >= _ABOVE).astype(np.uint8)
        count, labels = cv2.connectedComponents(hot, connectivity=8)
        s = self.grid.mm_per_px
        out = []
        for k in range(1, count):
            rr, cc = np.nonzero(labels == k)
            v = comb[rr, cc]
            top = int(np.argmax(v))
            xy = self.grid.centres()[rr, cc]
            centre = (v[:, None] * xy).sum(axis=0) / v.sum()
            lo, hi = xy.min(axis=0) - s / 2, xy.max(axis=0) + s / 2
            det = names[int(np.nanargmax(norm[:, rr[top], cc[top]]))]
            shots = tuple(name for name, sn in self.seen.items() if _covers(sn, rr, cc))
            out.append(
                SheetDefect(
                    (float(centre[0]), float(centre[1])),
                    float(len(rr) * s * s),
                    float(v[top]),
                    det,
                    shots,
                    (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                )
            )
        return sorted(out, key=lambda d: -d.peak)


def _pool(m: np.ndarray, mx: np.ndarray, my: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The map max-filtered over one cell's size (in map pixels, from the cell centres' spacing
    in the map): sampled at cell centres, a spot smaller than a cell keeps its peak."""
    if inside.sum() < 4:
        return m
    with np.errstate(invalid="ignore"):
        steps = [np.hypot(np.diff(mx, axis=a), np.diff(my, axis=a)) for a in (0, 1)]
        ok = [inside[1:, :] & inside[:-1, :], inside[:, 1:] & inside[:, :-1]]
    spacing = [float(np.median(st[k])) for st, k in zip(steps, ok, strict=True) if k.any()]
    if not spacing:
        return m
    k = 2 * math.ceil(max(spacing) / 2.0) + 1  # odd, at least one cell across, centred
    if k <= 1:
        return m
    return cv2.dilate(m, np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE)


def _covers(seen: _Seen, rr: np.ndarray, cc: np.ndarray) -> bool:
    r = rr - (seen.rows.start or 0)
    c = cc - (seen.cols.start or 0)
    ok = (r >= 0) & (r < seen.mask.shape[0]) & (c >= 0) & (c < seen.mask.shape[1])
    return bool(ok.any() and seen.mask[r[ok], c[ok]].any())


def colour_levels(values: np.ndarray) -> np.ndarray:
    """uint8 levels of a normalised map on the heatmaps' scale (1.0 -> 128, 2.0 and over ->
    255); NaN (unseen) -> 0."""
    m = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=2.0, neginf=0.0)
    return np.floor(np.clip(m / 2.0, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


BLIND_BGR = (160, 160, 160)  # cells seen only clipped (not inspected), in the sheet map PNG


def render(values: np.ndarray, blind: np.ndarray | None = None) -> np.ndarray:
    """BGR picture of a normalised sheet map (TURBO, as the shot heatmaps); unseen cells
    black, `blind` cells (seen only clipped) grey. Row 0 is the lowest y, as in the map."""
    colour = cv2.applyColorMap(colour_levels(values), cv2.COLORMAP_TURBO)
    colour[np.isnan(values)] = 0
    if blind is not None:
        colour[blind] = BLIND_BGR
    return colour
