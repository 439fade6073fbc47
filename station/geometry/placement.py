"""Where the sheet lies: its four edges found in the shots, against the recipe's place.

The inspected region is the sheet's place grown by its placement tolerance
(`coverage.edge_margin_mm`); a sheet lying farther off is not inspected whole. `EdgeMosaic`
samples the shots' grey levels onto a grid of the table (base-frame mm, the region grown by what
the views see past it). `find_sheet` tells the sheet from the table by their grey levels (the
median inside the sheet's place against the median outside the region), walks scan lines out
across each nominal edge to the first run of table, fits a line to each edge (outliers left
out: a hole or an object at the edge moves a few scan lines, not the line) and intersects them:
the sheet's corners, centre offset, angle and size. `Placement.problem` says why the sheet is
not where (or not the size) it must be, or why its edges could not be found. Pure (numpy,
OpenCV).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from station.geometry.coverage import placement_tolerance_mm, region_rect, sheet_rect
from station.geometry.sheet_map import Grid, ShotView, on_table, project, view_box

if TYPE_CHECKING:
    from station.recipe import Recipe

REACH_MM = 8.0  # the mosaic reaches this far past what the planned views see (hand-set poses)
MOSAIC_MM = 1.0  # grid cell of the grey mosaic (0.5 gave the same edges at 3x the time)
SMOOTH_MM = 2.0  # box over the weave before the threshold
INSIDE_MM = 15.0  # a scan line starts this far inside the nominal edge (a quarter of a small sheet)
CORNER_MM = 15.0  # ... and none runs within this of a nominal corner (a fifth of a short side)
SCAN_STEP_MM = 2.0  # between scan lines
TABLE_RUN_MM = 2.0  # the edge: the first run of table this long (a smaller hole is skipped)
MIN_CONTRAST = 3.0  # grey levels between the sheet's median and the table's, at least
MAX_LIKE_TABLE = 0.05  # share of the sheet's place on the table's side of the threshold, at most
MIN_FOUND = 0.5  # share of a side's scan lines that must agree on its line
MAX_BEYOND = 0.2  # share of scan lines reaching the views' end on sheet: the edge is past view
OUTLIER_MM = 1.0  # a scan line this far off the fitted edge (or 3 robust sigmas) is left out
SIDES = ("left", "right", "bottom", "top")  # x0, x1, y0, y1 of the base frame


@dataclass(frozen=True)
class Placement:
    """The sheet as found. `problem` (one line) when it lies past the region, is of another
    size or was not found; the other fields are None when the edges were not all found."""

    problem: str | None
    offset_mm: tuple[float, float] | None = None  # centre minus the recipe's sheet.center_mm
    angle_deg: float | None = None  # about the table normal, counter-clockwise
    size_mm: tuple[float, float] | None = None  # width (base x), height (base y)
    corners_mm: tuple[tuple[float, float], ...] | None = None  # x0y0, x1y0, x1y1, x0y1 corner
    past_region_mm: float | None = None  # how far the outline reaches past the region

    @property
    def found(self) -> bool:
        return self.corners_mm is not None

    def as_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}

    def summary(self) -> str:
        """One line: offset, angle, size (or the problem when not found)."""
        if not self.found:
            return f"sheet not found: {self.problem}"
        assert self.offset_mm and self.size_mm and self.angle_deg is not None
        return (
            f"sheet {_signed(self.offset_mm[0])} / {_signed(self.offset_mm[1])} mm off its "
            f"place, {_signed(self.angle_deg, 2)} deg, {self.size_mm[0]:.1f} x "
            f"{self.size_mm[1]:.1f} mm"
        )


def _signed(v: float, digits: int = 1) -> str:
    """`v` with its sign, never "-0.0"."""
    return f"{round(v, digits) + 0.0:+.{digits}f}"


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, float):
        return round(v, 3) if math.isfinite(v) else None  # JSON has no NaN
    return v


class EdgeMosaic:
    """The shots' grey levels on a grid of the table, the mean where views overlap."""

    def __init__(self, grid: Grid, table_to_base: np.ndarray | None = None) -> None:
        self.grid = grid
        self.table_to_base = table_to_base
        self._sum = np.zeros(grid.shape)
        self._count = np.zeros(grid.shape, np.int32)

    def add(self, view: ShotView, image: np.ndarray) -> None:
        """Sample the whole shot (not only the window its map covers) at the cell centres."""
        grey = np.asarray(image)
        if grey.ndim == 3:
            grey = grey.mean(axis=2)
        if grey.shape != (view.size[1], view.size[0]):
            raise ValueError(f"shot {view.name} is {grey.shape[::-1]} px, its camera {view.size}")
        whole = dataclasses.replace(view, crop=None)
        box = view_box(self.grid, whole, self.table_to_base)
        if box is None:
            return
        rs, cs = box
        pts = on_table(self.grid.centres(rs, cs), self.table_to_base)
        uv = project(whole, pts.reshape(-1, 3)).reshape(*pts.shape[:2], 2)
        w, h = view.size
        with np.errstate(invalid="ignore"):
            inside = (uv[..., 0] >= 0) & (uv[..., 0] <= w - 1) & (uv[..., 1] >= 0)
            inside &= uv[..., 1] <= h - 1
        mx = np.where(inside, uv[..., 0], 0).astype(np.float32)
        my = np.where(inside, uv[..., 1], 0).astype(np.float32)
        vals = cv2.remap(grey.astype(np.float32), mx, my, cv2.INTER_LINEAR)
        self._sum[rs, cs] += np.where(inside, vals, 0.0)
        self._count[rs, cs] += inside

    def result(self) -> np.ndarray:
        """Grey level per cell, NaN where no shot sees it."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._count > 0, self._sum / np.maximum(self._count, 1), np.nan)


def mosaic_grid(region_mm: tuple[float, float, float, float], reach_mm: float) -> Grid:
    """The mosaic's grid: the region grown by `reach_mm` (how far past it the views see)."""
    x0, y0, x1, y1 = region_mm
    return Grid.over((x0 - reach_mm, y0 - reach_mm, x1 + reach_mm, y1 + reach_mm), MOSAIC_MM)


def recipe_mosaic(recipe: Recipe, table_to_base: np.ndarray | None = None) -> EdgeMosaic:
    """A part's mosaic for `recipe`: its region grown by coverage.view_margin_mm + REACH_MM."""
    reach = recipe.coverage.view_margin_mm + REACH_MM
    return EdgeMosaic(mosaic_grid(region_rect(recipe), reach), table_to_base)


def find_recipe_sheet(values: np.ndarray, grid: Grid, recipe: Recipe) -> Placement:
    """`find_sheet` against the recipe's sheet, region and placement tolerance."""
    return find_sheet(values, grid, sheet_rect(recipe), region_rect(recipe),
                      placement_tolerance_mm(recipe))


def _smooth(values: np.ndarray, cells: int) -> np.ndarray:
    """A box mean over about `cells` (odd, so centred) that ignores unseen cells (NaN stays
    NaN)."""
    seen = np.isfinite(values)
    n = 2 * (max(1, cells) // 2) + 1
    k = (n, n)
    total = cv2.blur(np.where(seen, values, 0.0), k, borderType=cv2.BORDER_CONSTANT)
    share = cv2.blur(seen.astype(np.float64), k, borderType=cv2.BORDER_CONSTANT)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen & (share > 0), total / share, np.nan)


def _mask(grid: Grid, rect: tuple[float, float, float, float], inside: bool) -> np.ndarray:
    c = grid.centres()
    x0, y0, x1, y1 = rect
    within = (c[..., 0] >= x0) & (c[..., 0] <= x1) & (c[..., 1] >= y0) & (c[..., 1] <= y1)
    return within if inside else ~within


@dataclass(frozen=True)
class _Side:
    line: tuple[float, float] | None  # (a, b): x = a + b*y (left, right) or y = a + b*x
    lines: int
    beyond: int  # scan lines that reach unseen cells or the mosaic's end on sheet
    inward: int  # scan lines that start on table


def find_sheet(
    values: np.ndarray,
    grid: Grid,
    sheet_mm: tuple[float, float, float, float],
    region_mm: tuple[float, float, float, float],
    tolerance_mm: float,
) -> Placement:
    """The sheet in the grey mosaic `values` (`EdgeMosaic.result`), against its place
    `sheet_mm` and the inspected region (both [x0, y0, x1, y1] base mm). A problem when an
    edge is not found or the outline reaches past the region by more than `tolerance_mm`."""
    s = grid.mm_per_px
    sm = _smooth(values, round(SMOOTH_MM / s))
    inside = _inside_mm(sheet_mm)
    inner = _mask(grid, _grow(sheet_mm, -inside), True) & np.isfinite(sm)
    outer = _mask(grid, _grow(region_mm, 1.0), False) & np.isfinite(sm)
    if inner.sum() < 100:
        return Placement("the shots see almost nothing of the sheet's place")
    if outer.sum() < 100:
        return Placement("the shots see no table beside the sheet (coverage.view_margin_mm)")
    sheet_level, table_level = float(np.median(sm[inner])), float(np.median(sm[outer]))
    sign = 1.0 if sheet_level > table_level else -1.0
    threshold = (sheet_level + table_level) / 2.0
    like_table = float(np.mean(sign * (sm[inner] - threshold) < 0))
    if abs(sheet_level - table_level) < MIN_CONTRAST:
        return Placement(
            f"sheet and table look alike (grey {sheet_level:.0f} against {table_level:.0f}): "
            "no sheet on the table, or its edges cannot be told from the table (then set "
            "sheet.check_placement: false)"
        )
    if like_table > MAX_LIKE_TABLE:
        return Placement(
            f"{100 * like_table:.0f} % of the sheet's place looks like the table (grey "
            f"{sheet_level:.0f} against {table_level:.0f}): a sheet far off its place, a large "
            "hole or dark area, or a table whose edges cannot be told from the sheet"
        )
    level = np.where(np.isfinite(sm), sign * (sm - threshold), np.nan)
    sides = {name: _side(level, grid, sheet_mm, inside, name) for name in SIDES}
    for name, side in sides.items():
        if side.beyond > MAX_BEYOND * side.lines:
            return Placement(
                f"the sheet's {name} edge lies past what the shots see ({side.beyond} of "
                f"{side.lines} scan lines end on sheet): the sheet is far off its place"
            )
    for name, side in sides.items():
        if side.inward > MAX_BEYOND * side.lines:
            return Placement(
                f"the sheet's {name} edge lies more than {inside:g} mm inside its place "
                f"({side.inward} of {side.lines} scan lines start on table): the sheet is far "
                "off its place, or smaller than the recipe's"
            )
        if side.line is None:
            return Placement(f"the sheet's {name} edge was not found")
    return _placed(sides, sheet_mm, region_mm, tolerance_mm)


def _inside_mm(sheet_mm: tuple[float, float, float, float]) -> float:
    x0, y0, x1, y1 = sheet_mm
    return min(INSIDE_MM, min(x1 - x0, y1 - y0) / 4.0)


def _grow(rect: tuple[float, float, float, float], mm: float) -> tuple[float, ...]:
    x0, y0, x1, y1 = rect
    return x0 - mm, y0 - mm, x1 + mm, y1 + mm


def _side(
    level: np.ndarray,
    grid: Grid,
    sheet_mm: tuple[float, float, float, float],
    inside_mm: float,
    name: str,
) -> _Side:
    """Scan lines across one nominal edge, from INSIDE_MM inside it outwards; the edge fitted
    to where each first meets TABLE_RUN_MM of table."""
    s = grid.mm_per_px
    x0, y0, x1, y1 = sheet_mm
    vertical = name in ("left", "right")  # the edge runs along y: scan lines are rows
    plane = level if vertical else level.T  # scan lines along axis 1
    lo, hi = (y0, y1) if vertical else (x0, x1)
    corner = min(CORNER_MM, (hi - lo) / 5.0)
    along = np.arange(lo + corner, hi - corner + 1e-9, min(SCAN_STEP_MM, (hi - lo) / 20.0))
    edge = {"left": x0, "right": x1, "bottom": y0, "top": y1}[name]
    out = -1 if name in ("left", "bottom") else 1
    origin, line_origin = (grid.x0, grid.y0) if vertical else (grid.y0, grid.x0)
    start = int(round((edge - out * inside_mm - origin) / s - 0.5))
    run = max(1, round(TABLE_RUN_MM / s))
    pts, beyond, inward = [], 0, 0
    for t in along:
        idx = math.floor((t - line_origin) / s)
        if not (0 <= idx < plane.shape[0] and 0 <= start < plane.shape[1]):
            continue
        prof = plane[idx, start::out]
        hit = _first_table(prof, run)
        if hit == -1:
            beyond += 1
        elif hit == 0:
            inward += 1
        else:
            a, b = prof[hit - 1], prof[hit]
            frac = a / (a - b) if a != b else 0.5
            pos = start + out * (hit - 1 + frac)
            pts.append((t, origin + (pos + 0.5) * s))
    return _Side(_fit(np.array(pts), len(along)), len(along), beyond, inward)


def _first_table(prof: np.ndarray, run: int) -> int:
    """Index of the first run of `run` table cells (level < 0) in a profile starting on sheet;
    -1 when the profile reaches unseen cells or its end first; 0 when it does not start on
    sheet."""
    if not prof.size or not prof[0] > 0:
        return 0
    table = prof < 0
    unseen = ~np.isfinite(prof)
    for i in range(1, len(prof) - run + 1):
        if unseen[i]:
            return -1
        if table[i : i + run].all():
            return i
    return -1


def _fit(pts: np.ndarray, lines: int) -> tuple[float, float] | None:
    """A line through the (along, across) points, outliers left out; None when fewer than
    MIN_FOUND of the scan lines agree."""
    if len(pts) < max(3, MIN_FOUND * lines):
        return None
    keep = np.ones(len(pts), bool)
    for _ in range(3):
        b, a = np.polyfit(pts[keep, 0], pts[keep, 1], 1)
        res = pts[:, 1] - (a + b * pts[:, 0])
        sigma = 1.4826 * float(np.median(np.abs(res[keep])))
        keep = np.abs(res) <= max(OUTLIER_MM, 3.0 * sigma)
        if keep.sum() < max(3, MIN_FOUND * lines):
            return None
    b, a = np.polyfit(pts[keep, 0], pts[keep, 1], 1)
    return float(a), float(b)


def _placed(
    sides: dict[str, _Side],
    sheet_mm: tuple[float, float, float, float],
    region_mm: tuple[float, float, float, float],
    tolerance_mm: float,
) -> Placement:
    """Corners, offset, angle and size from the four fitted edges; the problem when the
    outline reaches past the region by more than the tolerance, or the sheet's width or height
    is off the recipe's by more than the region's margin (at least twice the tolerance)."""
    lines = {k: v.line for k, v in sides.items()}
    corners = tuple(
        _meet(lines[v], lines[h])  # type: ignore[arg-type]
        for v, h in (("left", "bottom"), ("right", "bottom"), ("right", "top"), ("left", "top"))
    )
    c = np.array(corners)
    centre = c.mean(axis=0)
    x0, y0, x1, y1 = sheet_mm
    offset = (float(centre[0] - (x0 + x1) / 2), float(centre[1] - (y0 + y1) / 2))
    turns = [
        math.atan(lines["bottom"][1]), math.atan(lines["top"][1]),  # type: ignore[index]
        -math.atan(lines["left"][1]), -math.atan(lines["right"][1]),  # type: ignore[index]
    ]
    width = (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / 2
    height = (np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2
    past = max(side_reach(corners, region_mm).values())
    angle = math.degrees(float(np.mean(turns)))
    problem = None
    if past > tolerance_mm:
        problem = (
            f"the sheet lies {_signed(offset[0])} / {_signed(offset[1])} mm off its place, "
            f"{_signed(angle, 2)} deg: it reaches {past:.1f} mm past the inspected region "
            f"(tolerance {tolerance_mm:.1f} mm), not inspected whole"
        )
    # a sheet of another size than the region was drawn for: another product, or torn
    rx0, ry0, rx1, ry1 = region_mm
    size_tol = max(min(x0 - rx0, y0 - ry0, rx1 - x1, ry1 - y1), 2.0 * tolerance_mm)
    if problem is None and max(abs(width - (x1 - x0)), abs(height - (y1 - y0))) > size_tol:
        problem = (
            f"the sheet measures {width:.1f} x {height:.1f} mm, the recipe's "
            f"{x1 - x0:g} x {y1 - y0:g} mm (tolerance {size_tol:.1f} mm): another product, "
            "or a torn or folded sheet"
        )
    return Placement(
        problem,
        offset,
        angle,
        (float(width), float(height)),
        tuple((float(x), float(y)) for x, y in corners),
        past,
    )


def side_reach(corners_mm: Any, region_mm: Any) -> dict[str, float]:
    """How far the sheet reaches past each side of the region (mm; negative: the margin left
    inside), from its corners: left and right in base x, bottom and top in base y."""
    c = np.asarray(corners_mm, np.float64).reshape(-1, 2)
    rx0, ry0, rx1, ry1 = (float(v) for v in region_mm)
    reach = (rx0 - c[:, 0].min(), c[:, 0].max() - rx1, ry0 - c[:, 1].min(), c[:, 1].max() - ry1)
    return {side: float(r) for side, r in zip(SIDES, reach, strict=True)}


def _meet(vertical: tuple[float, float], horizontal: tuple[float, float]) -> tuple[float, float]:
    """Where x = a + b*y meets y = c + d*x."""
    a, b = vertical
    c, d = horizontal
    y = (c + d * a) / (1.0 - d * b)
    return a + b * y, y
