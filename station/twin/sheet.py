"""Woven glass-fibre sheets in millimetres: the sheet description and its material layers.

A `SheetSpec` (seed, weave, pitch, placement on the table, defects) fully describes one sheet; the
same seed gives the same sheet. `station.twin.layers.render_layers` evaluates the sheet over a
rectangle of sheet-local millimetres at a given raster resolution and returns the material layers
the camera model shades: albedo, height (-> slopes), roving direction, metal share, shadow and
defect ids.

Sheet-local frame: origin at the sheet centre, x along the weft (across the warp rovings), y along
the warp. The weave is procedural: each roving has its own width, brightness and fibre streaks,
the rovings wave slightly, and the crimp (over/under) follows the plain or 2/2 twill pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

NOISE_STEP_MM = 1.0  # lattice of the smooth noise fields
NOISE_EXTENT_MM = 420.0  # square the noise fields cover, centred on the sheet
N_FIBRES = 24  # fibre streak samples across one roving
ROVING_HEIGHT_MM = 0.28
GAP_ALBEDO = 0.16  # looking through the gaps between rovings: dark belt below
BELT_ALBEDO = 0.09


def param_mapping(
    params: dict[str, Any], name: str, keys: tuple[str, ...]
) -> dict[str, Any] | None:
    """`twin.params[name]` as a mapping of known `keys` (None when absent); a ValueError names
    the setting when it is not a mapping or has another key."""
    raw = params.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{name} must be a mapping ({', '.join(keys)}), not {raw!r}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ValueError(f"{name}: unknown key {', '.join(unknown)}")
    return raw


@dataclass(frozen=True)
class DefectSpec:
    kind: str
    centre_mm: tuple[float, float]  # sheet-local
    size_mm: float
    angle_rad: float
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centre_mm": [round(self.centre_mm[0], 3), round(self.centre_mm[1], 3)],
            "size_mm": round(self.size_mm, 3),
            "angle_rad": round(self.angle_rad, 4),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class SheetSpec:
    """One sheet: everything needed to render it again."""

    seed: int
    weave: str  # plain | twill
    pitch_mm: tuple[float, float]  # warp spacing (along x), weft spacing (along y)
    size_mm: tuple[float, float]
    centre_mm: tuple[float, float]  # on the table, base frame
    angle_rad: float  # sheet rotation on the table
    brightness: float
    waviness_mm: float
    defects: tuple[DefectSpec, ...] = ()

    @property
    def defective(self) -> bool:
        return bool(self.defects)

    def local_to_table(self) -> np.ndarray:
        """3x3 affine: sheet-local mm -> base-frame table mm."""
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        return np.array(
            [[c, -s, self.centre_mm[0]], [s, c, self.centre_mm[1]], [0, 0, 1]], np.float64
        )

    def corners_mm(self) -> np.ndarray:
        """(4, 2) base-frame corners, in station.geometry.placement's order (x0y0, x1y0, x1y1,
        x0y1)."""
        hw, hh = self.size_mm[0] / 2, self.size_mm[1] / 2
        local = np.array([[-hw, -hh, 1.0], [hw, -hh, 1.0], [hw, hh, 1.0], [-hw, hh, 1.0]])
        return (local @ self.local_to_table().T)[:, :2]

    def table_to_local(self, pts: np.ndarray) -> np.ndarray:
        m = np.linalg.inv(self.local_to_table())
        p = np.asarray(pts, np.float64)
        return p @ m[:2, :2].T + m[:2, 2]


@dataclass(frozen=True)
class Region:
    """A raster over sheet-local mm: pixel (col, row) has its centre at (x0 + col/ppm, ...)."""

    x0: float
    y0: float
    ppm: float
    width: int
    height: int

    @classmethod
    def covering(cls, xmin: float, ymin: float, xmax: float, ymax: float, ppm: float) -> Region:
        w = int(np.ceil((xmax - xmin) * ppm)) + 1
        h = int(np.ceil((ymax - ymin) * ppm)) + 1
        return cls(float(xmin), float(ymin), float(ppm), w, h)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (
            self.x0,
            self.y0,
            self.x0 + (self.width - 1) / self.ppm,
            self.y0 + (self.height - 1) / self.ppm,
        )

    def contains(self, xmin: float, ymin: float, xmax: float, ymax: float) -> bool:
        bx0, by0, bx1, by1 = self.bounds
        return bx0 <= xmin and by0 <= ymin and xmax <= bx1 and ymax <= by1

    def px_to_local(self) -> np.ndarray:
        k = 1.0 / self.ppm
        return np.array([[k, 0, self.x0], [0, k, self.y0], [0, 0, 1]], np.float64)

    def to_px(self, pts_mm: np.ndarray) -> np.ndarray:
        p = np.asarray(pts_mm, np.float64)
        return (p - [self.x0, self.y0]) * self.ppm


@dataclass
class Canvas:
    """Material layers of one region while they are being built."""

    region: Region
    X: np.ndarray  # sheet-local mm of each texel
    Y: np.ndarray
    A: np.ndarray  # albedo 0..1
    H: np.ndarray  # height above the table, mm
    D: np.ndarray  # roving direction: 0 warp, 1 weft, 0.5 neither
    M: np.ndarray  # metal share 0..1 (specular, mirror-like)
    S: np.ndarray  # lit share of the side light 0..1 (shadows)
    ID: np.ndarray  # uint8 defect id (0 = none); index into the sheet's defect list + 1
    light_xy_per_z: tuple[float, float] = (0.5, -0.25)  # shadow offset per mm of height


@dataclass
class Layers:
    """Finished layers (float32 stack for warping + ids) over a region."""

    region: Region
    stack: np.ndarray  # H x W x 6: albedo, dh/dx, dh/dy, direction, metal, lit
    ids: np.ndarray  # H x W uint8


def hash_noise(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform 0..1 value per integer lattice point, the same whatever region asks for it."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return ((h & 0xFFFF).astype(np.float32)) / 65535.0


class SheetTexture:
    """Random tables of one sheet (per-roving parameters and smooth noise fields)."""

    def __init__(self, spec: SheetSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 1])
        n = int(NOISE_EXTENT_MM / min(spec.pitch_mm)) + 16
        self.n = n
        self.offset = n // 2
        self.rovings = {}
        for axis in ("warp", "weft"):
            width = np.clip(rng.normal(0.87, 0.028, n), 0.76, 0.95)
            bright = np.clip(rng.normal(1.0, 0.045, n), 0.85, 1.15)
            fib = rng.normal(1.0, 0.09, (n, N_FIBRES))
            fib = cv2.GaussianBlur(fib.astype(np.float32), (0, 0), sigmaX=0.8, sigmaY=0.01)
            fib = np.concatenate([fib, fib[:, -1:]], axis=1)
            self.rovings[axis] = (width.astype(np.float32), bright.astype(np.float32), fib)
        def field(sigma_mm: float, amp: float) -> tuple[np.ndarray, float]:
            step = max(NOISE_STEP_MM, sigma_mm / 4)  # smooth fields need only a coarse lattice
            g = int(NOISE_EXTENT_MM / step) + 1
            f = rng.normal(0, 1, (g, g)).astype(np.float32)
            f = cv2.GaussianBlur(f, (0, 0), sigma_mm / step)
            return f * (amp / max(float(f.std()), 1e-6)), step

        self.fields = {
            "wave_x": field(18.0, spec.waviness_mm),
            "wave_y": field(18.0, spec.waviness_mm),
            "width": field(6.0, 0.035),
            "bright": field(25.0, 0.035),
            "mottle": field(2.0, 0.03),
            "belt": field(4.0, 0.25),
        }
        self.phase = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))

    def sample(self, name: str, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        grid, step = self.fields[name]
        half = NOISE_EXTENT_MM / 2.0
        mx = ((X + half) / step).astype(np.float32)
        my = ((Y + half) / step).astype(np.float32)
        return cv2.remap(grid, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def roving_index(self, axis: str, x: float, y: float) -> int:
        """Index of the roving (warp: along y, weft: along x) under sheet-local point (x, y)."""
        px, py = self.spec.pitch_mm
        X, Y = np.array([[x]], np.float32), np.array([[y]], np.float32)
        if axis == "warp":
            u = (X - self.sample("wave_x", X, Y)) / px + self.phase[0]
        else:
            u = (Y - self.sample("wave_y", X, Y)) / py + self.phase[1]
        return int(np.floor(u[0, 0]))


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


WEAVES = {"plain": (1, 0), "twill": (1, 1, 0, 0)}  # warp on top at (i + j) mod period
LUT_STEPS = 512  # crimp samples per crossing


def _crimp_lut(pattern: tuple[int, ...]) -> np.ndarray:
    """Warp height (-1 under .. +1 over) along its length, over one pattern period.

    At crossing q the warp is over (+1) or under (-1); between crossing centres it blends
    smoothly. A warp's position c = (i + v) mod period picks the crossing and the fraction.
    """
    n = len(pattern)
    c = (np.arange(n * LUT_STEPS) + 0.5) / LUT_STEPS
    q = np.floor(c).astype(np.int64)
    f = c - q
    sgn = np.where(np.array(pattern) > 0, 1.0, -1.0)
    upper = f >= 0.5
    a = np.where(upper, sgn[q % n], sgn[(q - 1) % n])
    b = np.where(upper, sgn[(q + 1) % n], sgn[q % n])
    t = smoothstep(np.where(upper, f - 0.5, f + 0.5))
    return (a + (b - a) * t).astype(np.float32)


def _lookup(lut: np.ndarray, c: np.ndarray, period: int) -> np.ndarray:
    k = (np.mod(c, period) * LUT_STEPS).astype(np.int32)
    return lut[np.clip(k, 0, len(lut) - 1)]


def weave(canvas: Canvas, tex: SheetTexture, removals: list[tuple[str, int, float, float, int]]):
    """Fill albedo, height and direction with the woven rovings (and the belt off the sheet).

    `removals`: (axis, roving index, start mm, end mm along the roving, defect id) for missing or
    broken rovings; their former footprint is marked in the id layer.
    """
    spec = tex.spec
    X, Y = canvas.X, canvas.Y
    px, py = spec.pitch_mm
    wave_x, wave_y = tex.sample("wave_x", X, Y), tex.sample("wave_y", X, Y)
    wmod = 1.0 + tex.sample("width", X, Y)
    u = (X - wave_x) / px + tex.phase[0]
    v = (Y - wave_y) / py + tex.phase[1]
    i = np.floor(u).astype(np.int64)
    j = np.floor(v).astype(np.int64)
    fu = (u - i).astype(np.float32)
    fv = (v - j).astype(np.float32)
    ii = np.clip(i + tex.offset, 0, tex.n - 1)
    jj = np.clip(j + tex.offset, 0, tex.n - 1)
    ww, wb, wf = tex.rovings["warp"]
    fw, fb, ff = tex.rovings["weft"]
    t_w = (fu - 0.5) / (ww[ii] * wmod / 2)
    t_f = (fv - 0.5) / (fw[jj] * wmod / 2)
    in_w = np.abs(t_w) < 1
    in_f = np.abs(t_f) < 1
    for axis, idx, s0, s1, did in removals:
        if axis == "warp":
            hit = (i == idx) & (s0 <= Y) & (s1 >= Y)
            canvas.ID[hit & in_w] = did
            in_w &= ~hit
        else:
            hit = (j == idx) & (s0 <= X) & (s1 >= X)
            canvas.ID[hit & in_f] = did
            in_f &= ~hit

    pattern = WEAVES.get(spec.weave, WEAVES["plain"])
    period = len(pattern)
    warp_top = np.array(pattern, bool)[(i + j) & (period - 1)]
    top_w = in_w & (~in_f | warp_top)
    top_f = in_f & ~top_w
    # crimp: a warp rises over the wefts it crosses on top and dives under the others; the
    # wefts do the opposite
    lut = _crimp_lut(pattern)
    crimp_w = _lookup(lut, (i & (period - 1)) + v.astype(np.float64), period)
    crimp_f = -_lookup(lut, (j & (period - 1)) + u.astype(np.float64), period)
    prof_w = np.power(np.clip(1 - t_w * t_w, 0, 1), 0.45)
    prof_f = np.power(np.clip(1 - t_f * t_f, 0, 1), 0.45)
    lift_w = 0.5 + 0.5 * crimp_w
    lift_f = 0.5 + 0.5 * crimp_f

    def fibres(fib: np.ndarray, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        k = (np.clip(t, -1, 1) + 1) * 0.5 * (N_FIBRES - 1)
        k0 = np.floor(k).astype(np.int64)
        a = (k - k0).astype(np.float32)
        return fib[idx, k0] * (1 - a) + fib[idx, k0 + 1] * a

    # fine fuzz on a 0.1 mm lattice, stable across regions
    fuzz = hash_noise(np.floor(X * 10), np.floor(Y * 10), spec.seed) - 0.5
    base = 0.8 * spec.brightness * (1 + tex.sample("bright", X, Y) + tex.sample("mottle", X, Y))
    alb_w = base * wb[ii] * fibres(wf, ii, t_w) * (0.62 + 0.38 * np.sqrt(prof_w) * lift_w)
    alb_f = base * fb[jj] * fibres(ff, jj, t_f) * (0.62 + 0.38 * np.sqrt(prof_f) * lift_f)
    gap_alb = GAP_ALBEDO * (1 + 0.3 * fuzz)
    A = np.where(top_w, alb_w, np.where(top_f, alb_f, gap_alb)) * (1 + 0.06 * fuzz)
    H = np.where(
        top_w,
        ROVING_HEIGHT_MM * prof_w * (0.35 + 0.65 * lift_w),
        np.where(top_f, ROVING_HEIGHT_MM * prof_f * (0.35 + 0.65 * lift_f), 0.0),
    )
    D = np.where(top_w, 0.0, np.where(top_f, 1.0, 0.5))
    half_w, half_h = spec.size_mm[0] / 2, spec.size_mm[1] / 2
    off = (np.abs(X) > half_w) | (np.abs(Y) > half_h)
    if off.any():
        belt = BELT_ALBEDO * (1 + tex.sample("belt", X, Y) + 0.2 * fuzz)
        A = np.where(off, belt, A)
        H = np.where(off, -0.5, H)
        D = np.where(off, 0.5, D)
    canvas.A = A.astype(np.float32)
    canvas.H = H.astype(np.float32)
    canvas.D = D.astype(np.float32)
