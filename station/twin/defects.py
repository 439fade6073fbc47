"""Defects drawn into a sheet's material layers, each with an exact ground-truth footprint.

Kinds: foreign objects (hex_nut, washer, screw, tool, metal_part: metallic, with height and a
cast shadow), fabric faults (fold, crease, cut, frayed_edge, missing_roving, broken_roving) and
contamination spots. Every defect is described by a `DefectSpec` (kind, centre and angle in
sheet-local mm, size, seed) and draws the same way whatever raster region asks for it; its id
goes into the id layer wherever it changes the sheet, which becomes the ground-truth mask after
the camera projection.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from station.twin.sheet import GAP_ALBEDO, ROVING_HEIGHT_MM, Canvas, DefectSpec, SheetTexture

KINDS = (
    "hex_nut", "washer", "screw", "tool", "metal_part", "fold", "crease", "contamination",
    "cut", "frayed_edge", "missing_roving", "broken_roving",
)
FOREIGN_OBJECTS = ("hex_nut", "washer", "screw", "tool", "metal_part")
SURFACE = ROVING_HEIGHT_MM  # objects lie on top of the rovings
SHIFT = 4  # cv2 drawing: 4 fractional bits
SCALE = 1 << SHIFT


def _rot(pts: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = np.asarray(pts, np.float64)
    return np.column_stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c]) + centre


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


class Patch:
    """A square of raster around a defect, possibly reaching past the canvas edges."""

    def __init__(self, canvas: Canvas, cx: float, cy: float, r: float) -> None:
        reg = canvas.region
        self.canvas = canvas
        c0 = int(math.floor((cx - r - reg.x0) * reg.ppm))
        r0 = int(math.floor((cy - r - reg.y0) * reg.ppm))
        c1 = int(math.ceil((cx + r - reg.x0) * reg.ppm)) + 1
        r1 = int(math.ceil((cy + r - reg.y0) * reg.ppm)) + 1
        self.ox, self.oy, self.w, self.h = c0, r0, c1 - c0, r1 - r0
        dc0, dr0 = max(c0, 0), max(r0, 0)
        dc1, dr1 = min(c1, reg.width), min(r1, reg.height)
        self.empty = dc1 <= dc0 or dr1 <= dr0
        self.dst = (slice(dr0, dr1), slice(dc0, dc1))
        self.src = (slice(dr0 - r0, dr1 - r0), slice(dc0 - c0, dc1 - c0))
        self.ppm = reg.ppm

    def px(self, pts_mm: np.ndarray) -> np.ndarray:
        reg = self.canvas.region
        return (np.asarray(pts_mm, np.float64) - [reg.x0, reg.y0]) * reg.ppm - [self.ox, self.oy]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        reg = self.canvas.region
        xs = reg.x0 + (self.ox + np.arange(self.w, dtype=np.float32)) / reg.ppm
        ys = reg.y0 + (self.oy + np.arange(self.h, dtype=np.float32)) / reg.ppm
        return np.meshgrid(xs, ys)

    def blank(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def fill_poly(self, mask: np.ndarray, pts_mm: np.ndarray) -> np.ndarray:
        p = np.round(self.px(pts_mm) * SCALE).astype(np.int32)
        cv2.fillPoly(mask, [p], 255, cv2.LINE_8, SHIFT)
        return mask

    def circle(self, mask: np.ndarray, c_mm: tuple[float, float], r_mm: float, value: int = 255):
        p = np.round(self.px(np.array([c_mm])) * SCALE).astype(np.int32)[0]
        cv2.circle(mask, (int(p[0]), int(p[1])), int(round(r_mm * self.ppm * SCALE)), value, -1,
                   cv2.LINE_8, SHIFT)
        return mask

    def stroke(self, mask: np.ndarray, pts_mm: np.ndarray, r_mm: float) -> np.ndarray:
        """Thick polyline with round joints and caps."""
        p = self.px(pts_mm)
        for a, b in zip(p[:-1], p[1:], strict=True):
            n = max(2, int(np.hypot(*(b - a)) / max(r_mm * self.ppm * 0.5, 0.5)) + 1)
            for t in np.linspace(0, 1, n):
                q = a + (b - a) * t
                cv2.circle(mask, (int(round(q[0] * SCALE)), int(round(q[1] * SCALE))),
                           int(round(r_mm * self.ppm * SCALE)), 255, -1, cv2.LINE_8, SHIFT)
        return mask

    def fibre(self, layer: np.ndarray, pts_mm: np.ndarray, value: float, width_px: int = 1):
        p = np.round(self.px(pts_mm) * SCALE).astype(np.int32)
        cv2.polylines(layer, [p], False, value, width_px, cv2.LINE_AA, SHIFT)

    # -- writing into the canvas ------------------------------------------------------------
    def view(self, layer: np.ndarray) -> np.ndarray:
        return layer[self.dst]

    def crop(self, local: np.ndarray) -> np.ndarray:
        return local[self.src]


def _waves(rng: np.random.Generator, n: int = 4) -> list[tuple[float, float, float, float]]:
    """Random sinusoids (kx, ky, phase, amplitude): a smooth field defined everywhere."""
    out = []
    for k in range(n):
        f = rng.uniform(0.15, 0.6) * (1.6**k)
        a = rng.uniform(0, 2 * math.pi)
        out.append((f * math.cos(a), f * math.sin(a), rng.uniform(0, 2 * math.pi), 1.0 / (k + 1)))
    return out


def _eval_waves(waves, X: np.ndarray, Y: np.ndarray) -> np.ndarray:  # noqa: ANN001
    v = np.zeros_like(X)
    total = 0.0
    for kx, ky, ph, amp in waves:
        v += amp * np.sin(kx * X + ky * Y + ph)
        total += amp
    return v / total


class Defect:
    layer = 1  # drawing order: fabric faults first, objects last

    def __init__(self, spec: DefectSpec, did: int, tex: SheetTexture) -> None:
        self.spec = spec
        self.did = did
        self.tex = tex
        self.rng = np.random.default_rng([spec.seed, 2])
        self.cx, self.cy = spec.centre_mm
        self.s = spec.size_mm
        self.a = spec.angle_rad
        self.setup()

    def setup(self) -> None:
        """Draw the random shape parameters (from the defect's own seed)."""

    def warp(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return X, Y

    def removals(self) -> list[tuple[str, int, float, float, int]]:
        return []

    def draw(self, canvas: Canvas) -> None:
        pass


# -- foreign objects ---------------------------------------------------------------------------
class _Object(Defect):
    """A solid object lying on the sheet: parts with profiles, metallic or plastic shading."""

    layer = 3

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        """Each part: mask (uint8), profile ('bevel' or 'cyl'), size (bevel width or radius
        in mm), height (mm), albedo, metal; optional 'hmod' (height modulation array)."""
        raise NotImplementedError

    def extent(self) -> float:
        return self.s

    def draw(self, canvas: Canvas) -> None:
        h_max_guess = self.extent() * 0.6
        lx, ly = canvas.light_xy_per_z
        r = self.extent() / 2 + h_max_guess * math.hypot(lx, ly) + 2.0
        patch = Patch(canvas, self.cx, self.cy, r)
        if patch.empty:
            return
        height = np.zeros((patch.h, patch.w), np.float32)
        albedo = np.zeros_like(height)
        metal = np.zeros_like(height)
        union = patch.blank()
        X, Y = patch.grid()
        grain = _eval_waves(_waves(self.rng, 3), X * 6, Y * 6)  # brushed / moulded texture
        for part in self.parts(patch):
            m = part["mask"]
            if not m.any():
                continue
            d = cv2.distanceTransform(m, cv2.DIST_L2, 5) / patch.ppm
            size = part["size"]
            if part["profile"] == "cyl":
                q = np.clip(size - d, 0, size)
                h = size + np.sqrt(np.clip(size * size - q * q, 0, None))
                h *= part["height"] / (2 * size)
            else:
                h = part["height"] * _smoothstep(d / size)
            if "hmod" in part:
                h = h + part["hmod"]
            inside = m > 0
            take = inside & (h >= height)
            height[take] = h[take]
            albedo[take] = (part["albedo"] * (1 + 0.05 * grain))[take]
            metal[take] = part["metal"]
            union |= m
        inside = union > 0
        if not inside.any():
            return
        # cast shadow of the side light: the object's footprint at several heights, shifted
        shadow = np.zeros_like(height)
        hmax = float(height.max())
        for q in (0.25, 0.5, 0.75, 1.0):
            lvl = (height >= q * hmax * 0.999).astype(np.float32)
            dx, dy = -lx * q * hmax * patch.ppm, -ly * q * hmax * patch.ppm
            mat = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
            shadow = np.maximum(shadow, cv2.warpAffine(lvl, mat, (patch.w, patch.h)))
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.3 * hmax * patch.ppm * 0.15, 0.8))
        lit = 1.0 - 0.8 * shadow
        # ambient occlusion right around the object
        near = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), max(0.6 * patch.ppm, 1.0))
        ao = 1.0 - 0.35 * near
        sl_in = patch.crop(inside)
        A, H, M, S, D, ID = (patch.view(x) for x in
                             (canvas.A, canvas.H, canvas.M, canvas.S, canvas.D, canvas.ID))
        S[:] = np.minimum(S, patch.crop(lit))
        A[:] = A * np.where(sl_in, 1.0, patch.crop(ao))
        A[sl_in] = patch.crop(albedo)[sl_in]
        H[sl_in] = SURFACE + patch.crop(height)[sl_in]
        M[sl_in] = patch.crop(metal)[sl_in]
        S[sl_in] = 1.0
        D[sl_in] = 0.5
        ID[sl_in] = self.did


class HexNut(_Object):
    def setup(self) -> None:
        self.R = float(np.clip(self.s / 2, 2.0, 15.0))
        self.alb = self.rng.uniform(0.45, 0.62)

    def extent(self) -> float:
        return 2 * self.R

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        ang = self.a + np.arange(6) * math.pi / 3
        hexa = np.column_stack([np.cos(ang), np.sin(ang)]) * self.R + [self.cx, self.cy]
        m = patch.fill_poly(patch.blank(), hexa)
        patch.circle(m, (self.cx, self.cy), 0.47 * self.R, 0)
        hole = patch.circle(patch.blank(), (self.cx, self.cy), 0.47 * self.R)
        X, Y = patch.grid()
        rr = np.hypot(X - self.cx, Y - self.cy)
        # the top face is chamfered towards the corners (the circle seen on real nuts)
        chamfer = -np.clip(rr - 0.95 * self.R * 0.866, 0, None) * 0.6
        return [
            dict(mask=m, profile="bevel", size=0.12 * self.R, height=0.85 * self.R,
                 albedo=self.alb, metal=1.0, hmod=chamfer),
            # the threaded hole: dark, low
            dict(mask=hole, profile="bevel", size=0.3 * self.R, height=0.15 * self.R,
                 albedo=0.3, metal=0.6),
        ]


class Washer(_Object):
    def setup(self) -> None:
        self.R = float(np.clip(self.s / 2, 2.0, 15.0))
        self.r = max(0.45 * self.R, 0.8)
        self.alb = self.rng.uniform(0.5, 0.7)

    def extent(self) -> float:
        return 2 * self.R

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        m = patch.circle(patch.blank(), (self.cx, self.cy), self.R)
        patch.circle(m, (self.cx, self.cy), self.r, 0)
        t = float(np.clip(0.16 * self.R, 0.5, 2.5))
        return [dict(mask=m, profile="bevel", size=0.35 * (self.R - self.r), height=t,
                     albedo=self.alb, metal=1.0)]


class Screw(_Object):
    def setup(self) -> None:
        self.L = float(np.clip(self.s, 4.0, 40.0))
        self.rs = max(0.09 * self.L, 0.6)
        self.rh = 1.9 * self.rs
        self.alb = self.rng.uniform(0.6, 0.8)

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        L, rs, rh = self.L, self.rs, self.rh
        c = (self.cx, self.cy)
        head = _rot(np.array([[-L / 2, -rh], [-L / 2 + 1.2 * rh, -rh], [-L / 2 + 1.2 * rh, rh],
                              [-L / 2, rh]]), self.a, c)
        shaft = _rot(np.array([[-L / 2 + 1.2 * rh, -rs], [L / 2 - 2 * rs, -rs], [L / 2, 0],
                               [L / 2 - 2 * rs, rs], [-L / 2 + 1.2 * rh, rs]]), self.a, c)
        X, Y = patch.grid()
        s_ax = (X - self.cx) * math.cos(self.a) + (Y - self.cy) * math.sin(self.a)
        thread = 0.18 * rs * np.sin(2 * math.pi * s_ax / (0.7 * rs))
        return [
            dict(mask=patch.fill_poly(patch.blank(), head), profile="cyl", size=rh,
                 height=2 * rh, albedo=self.alb, metal=1.0),
            dict(mask=patch.fill_poly(patch.blank(), shaft), profile="cyl", size=rs,
                 height=2 * rs, albedo=self.alb * 0.9, metal=1.0, hmod=thread),
        ]


class Tool(_Object):
    """A screwdriver (plastic handle, steel shaft) or an L-shaped hex key."""

    def setup(self) -> None:
        self.variant = "hex_key" if self.rng.uniform() < 0.35 else "screwdriver"
        self.L = float(np.clip(3.0 * self.s, 30.0, 160.0))
        self.handle_alb = self.rng.choice([0.18, 0.3, 0.55])

    def extent(self) -> float:
        return self.L

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        L, c = self.L, (self.cx, self.cy)
        if self.variant == "hex_key":
            r = max(0.025 * L, 0.8)
            pts = _rot(np.array([[-L / 2, 0], [L / 4, 0], [L / 4, 0.35 * L]]), self.a, c)
            return [dict(mask=patch.stroke(patch.blank(), pts, r), profile="cyl", size=r,
                         height=2 * r, albedo=0.25, metal=1.0)]
        rh, rs = 0.07 * L, max(0.018 * L, 0.7)
        handle = _rot(np.array([[-L / 2 + rh, 0], [-L / 2 + 0.42 * L, 0]]), self.a, c)
        shaft = _rot(np.array([[-L / 2 + 0.42 * L, 0], [L / 2 - rs, 0]]), self.a, c)
        X, Y = patch.grid()
        q = -(X - self.cx) * math.sin(self.a) + (Y - self.cy) * math.cos(self.a)
        flutes = 0.08 * rh * np.cos(2 * math.pi * q / (0.45 * rh))
        return [
            dict(mask=patch.stroke(patch.blank(), handle, rh), profile="cyl", size=rh,
                 height=2 * rh, albedo=self.handle_alb, metal=0.15, hmod=flutes),
            dict(mask=patch.stroke(patch.blank(), shaft, rs), profile="cyl", size=rs,
                 height=2 * rs, albedo=0.5, metal=1.0),
        ]


class MetalPart(_Object):
    """A small stamped chip, a bent wire or a pin."""

    def setup(self) -> None:
        self.variant = self.rng.choice(["chip", "wire", "pin"])
        self.ext = float(np.clip(self.s, 2.5, 30.0))
        n = int(self.rng.integers(5, 9))
        ang = np.sort(self.rng.uniform(0, 2 * math.pi, n))
        rad = self.ext / 2 * self.rng.uniform(0.45, 1.0, n)
        self.chip = np.column_stack([np.cos(ang) * rad, np.sin(ang) * rad])
        k = int(self.rng.integers(3, 6))
        steps = self.rng.normal(0, 1, (k, 2))
        steps[:, 0] += 1.5
        path = np.cumsum(steps, axis=0)
        path -= path.mean(axis=0)
        self.wire = path * (self.ext / max(np.ptp(path[:, 0]), 1e-3))
        self.alb = self.rng.uniform(0.35, 0.65)

    def extent(self) -> float:
        return self.ext

    def parts(self, patch: Patch) -> list[dict[str, Any]]:
        c = (self.cx, self.cy)
        if self.variant == "chip":
            m = patch.fill_poly(patch.blank(), _rot(self.chip, self.a, c))
            return [dict(mask=m, profile="bevel", size=0.3, height=0.6, albedo=self.alb,
                         metal=1.0)]
        if self.variant == "wire":
            r = float(np.clip(0.04 * self.ext, 0.25, 0.8))
            m = patch.stroke(patch.blank(), _rot(self.wire, self.a, c), r)
            return [dict(mask=m, profile="cyl", size=r, height=2 * r, albedo=self.alb,
                         metal=1.0)]
        r = float(np.clip(0.12 * self.ext, 0.4, 2.0))
        pts = _rot(np.array([[-self.ext / 2 + r, 0], [self.ext / 2 - r, 0]]), self.a, c)
        m = patch.stroke(patch.blank(), pts, r)
        return [dict(mask=m, profile="cyl", size=r, height=2 * r, albedo=self.alb, metal=1.0)]


# -- fabric faults -----------------------------------------------------------------------------
class Fold(Defect):
    """The fabric folded over itself: a raised ridge, the weave bunched and shifted across it."""

    layer = 0
    sharp = False

    def setup(self) -> None:
        s = self.s
        self.L = float(np.clip(3 * s, 20, 150))
        self.w = float(np.clip(0.1 * s, 0.8, 3.0))
        self.F = float(np.clip(0.15 * s, 0.8, 4.0))
        self.Hf = float(np.clip(0.1 * s, 0.5, 2.5))
        self.kappa = 0.0

    def _coords(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, s = math.cos(self.a), math.sin(self.a)
        along = (X - self.cx) * c + (Y - self.cy) * s
        d = -(X - self.cx) * s + (Y - self.cy) * c - self.kappa * along * along
        g = _smoothstep((self.L / 2 - np.abs(along)) / (0.2 * self.L))
        return along, d, g

    def warp(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, d, g = self._coords(X, Y)
        shift = self.F * g * 0.5 * (1 + np.tanh(d / self.w))
        return X - math.sin(self.a) * shift, Y + math.cos(self.a) * shift

    def ridge(self, d: np.ndarray) -> np.ndarray:
        return np.exp(-((d / self.w) ** 2))

    def draw(self, canvas: Canvas) -> None:
        patch = Patch(canvas, self.cx, self.cy, self.L / 2 + 4 * self.w + self.F)
        if patch.empty:
            return
        X, Y = patch.grid()
        _, d, g = self._coords(X, Y)
        rid = patch.crop(g * self.ridge(d))
        A, H, ID = patch.view(canvas.A), patch.view(canvas.H), patch.view(canvas.ID)
        H += self.Hf * rid
        A *= 1 + self.bright * rid
        m = patch.crop((g > 0.05) & (np.abs(d) < self.band))
        ID[m] = self.did

    bright = 0.12

    @property
    def band(self) -> float:
        return 1.3 * self.w + 0.2 * self.F


class Crease(Fold):
    """A sharp crease line: a thin kinked ridge with broken, whitened fibres along it."""

    def setup(self) -> None:
        s = self.s
        self.L = float(np.clip(2 * s, 8, 120))
        self.w = float(self.rng.uniform(0.25, 0.45))
        self.F = 0.3
        self.Hf = float(self.rng.uniform(0.2, 0.4))
        self.kappa = float(self.rng.uniform(-1, 1) * 0.25 / self.L)  # gently curved
        self.bright = 0.25

    def ridge(self, d: np.ndarray) -> np.ndarray:
        return np.exp(-np.abs(d) / self.w)

    @property
    def band(self) -> float:
        return 3 * self.w + 0.4


class Contamination(Defect):
    """Oil or resin spots (dark, glossy blobs) or a cluster of dirt specks."""

    layer = 1

    def setup(self) -> None:
        self.variant = self.rng.choice(["oil", "resin", "dirt"])
        self.r = float(np.clip(self.s / 2, 1.0, 20.0))
        k = int(self.rng.integers(2, 6))
        self.blobs = [
            (self.rng.normal(0, 0.35 * self.r, 2), self.rng.uniform(0.3, 0.6) * self.r,
             self.rng.uniform(0.4, 1.0) * self.r, self.rng.uniform(0, math.pi))
            for _ in range(k)
        ]
        self.waves = _waves(self.rng, 4)
        n = int(self.rng.integers(15, 50))
        self.specks = [
            (self.rng.normal(0, 0.4 * self.r, 2), self.rng.uniform(0.15, 0.5)) for _ in range(n)
        ]
        self.strength = self.rng.uniform(0.35, 0.65)

    def draw(self, canvas: Canvas) -> None:
        patch = Patch(canvas, self.cx, self.cy, 1.8 * self.r + 1)
        if patch.empty:
            return
        A, H, M, ID = (patch.view(x) for x in (canvas.A, canvas.H, canvas.M, canvas.ID))
        if self.variant == "dirt":
            m = patch.blank()
            for off, rad in self.specks:
                patch.circle(m, (self.cx + off[0], self.cy + off[1]), rad)
            alpha = cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), 0.6)
            A *= 1 - 0.7 * patch.crop(alpha)
            ID[patch.crop(m) > 0] = self.did
            return
        X, Y = patch.grid()
        f = np.zeros_like(X)
        for off, a, b, ang in self.blobs:
            dx, dy = X - self.cx - off[0], Y - self.cy - off[1]
            u = dx * math.cos(ang) + dy * math.sin(ang)
            v = -dx * math.sin(ang) + dy * math.cos(ang)
            f += np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
        f *= 1 + 0.3 * _eval_waves(self.waves, X / self.r * 3, Y / self.r * 3)
        soft = 0.25 if self.variant == "oil" else 0.08
        alpha = patch.crop(_smoothstep((f - 0.45) / soft))
        A *= 1 - self.strength * alpha
        if self.variant == "oil":
            M[:] = np.maximum(M, 0.3 * alpha)
        else:  # resin fills the weave: flatter, glossy
            H[:] = H * (1 - 0.6 * alpha) + 0.6 * alpha * SURFACE * 0.7
            M[:] = np.maximum(M, 0.45 * alpha)
        ID[alpha > 0.2] = self.did


class Cut(Defect):
    """A knife cut through the rovings: a dark slit with frayed fibre ends at both lips."""

    layer = 2

    def setup(self) -> None:
        self.L = float(np.clip(self.s, 2.0, 60.0))
        self.gw = float(self.rng.uniform(0.15, 0.35))
        self.waves = _waves(self.rng, 3)
        n = int(self.L * 4)
        self.fibres = [
            (self.rng.uniform(-0.5, 0.5) * self.L, self.rng.choice([-1, 1]),
             self.rng.uniform(0.3, 1.4), self.rng.choice([0, 1]), self.rng.uniform(0.6, 1.0),
             self.rng.normal(0, 0.35))
            for _ in range(n)
        ]

    def draw(self, canvas: Canvas) -> None:
        patch = Patch(canvas, self.cx, self.cy, self.L / 2 + 2.5)
        if patch.empty:
            return
        X, Y = patch.grid()
        c, s = math.cos(self.a), math.sin(self.a)
        along = (X - self.cx) * c + (Y - self.cy) * s
        d = -(X - self.cx) * s + (Y - self.cy) * c
        end = np.clip(1 - (2 * along / self.L) ** 8, 0, 1) ** 0.5
        half = (self.gw * (1 + 0.35 * _eval_waves(self.waves, X * 4, Y * 4))) * end
        slit = patch.crop((np.abs(d) < half) & (np.abs(along) < self.L / 2))
        A, H, D, ID = (patch.view(x) for x in (canvas.A, canvas.H, canvas.D, canvas.ID))
        A[slit] = GAP_ALBEDO * 0.8
        H[slit] = 0.0
        D[slit] = 0.5
        fib_a = np.zeros((patch.h, patch.w), np.float32)
        fib_m = patch.blank()
        for pos, side, length, axis, bright, curl in self.fibres:
            p0 = np.array([self.cx + c * pos - s * side * self.gw,
                           self.cy + s * pos + c * side * self.gw])
            dirv = np.array([0.0, 1.0]) if axis == 0 else np.array([1.0, 0.0])
            if np.dot(dirv, [-s * side, c * side]) > 0:
                dirv = -dirv  # point into the slit
            perp = np.array([-dirv[1], dirv[0]])
            t = np.linspace(0, 1, 5)[:, None]
            pts = p0 + dirv * length * t + perp * curl * length * t * t
            patch.fibre(fib_a, pts, bright)
            patch.fibre(fib_m, pts, 255)
        fa = patch.crop(fib_a)
        on = fa > 0.05
        A[on] = np.maximum(A[on], fa[on] * 0.9)
        H[on] = np.maximum(H[on], 0.12)
        band = patch.crop((np.abs(d) < self.gw + 0.5) & (np.abs(along) < self.L / 2 + 0.3))
        ID[band | (patch.crop(fib_m) > 0)] = self.did


class FrayedEdge(Defect):
    """A patch where the weave has come apart: flattened rovings and loose curly fibres."""

    layer = 2

    def setup(self) -> None:
        self.rx = float(np.clip(self.s / 2, 1.5, 20))
        self.ry = self.rx * self.rng.uniform(0.35, 0.7)
        self.waves = _waves(self.rng, 3)
        n = int(np.clip(self.rx * self.ry * 4, 20, 900))
        self.fibres = []
        for _ in range(n):
            p = self.rng.normal(0, 0.45, 2) * [self.rx, self.ry]
            ang = self.rng.normal(0, 0.5) + (0 if self.rng.uniform() < 0.5 else math.pi / 2)
            self.fibres.append((p, ang, self.rng.uniform(0.8, 3.5), self.rng.normal(0, 0.6),
                                self.rng.uniform(0.55, 1.0)))

    def draw(self, canvas: Canvas) -> None:
        patch = Patch(canvas, self.cx, self.cy, self.rx + 4)
        if patch.empty:
            return
        X, Y = patch.grid()
        c, s = math.cos(self.a), math.sin(self.a)
        u = (X - self.cx) * c + (Y - self.cy) * s
        v = -(X - self.cx) * s + (Y - self.cy) * c
        r = np.hypot(u / self.rx, v / self.ry) * (1 + 0.25 * _eval_waves(self.waves, X, Y))
        alpha = patch.crop(_smoothstep((1.0 - r) / 0.35))
        A, H, ID = (patch.view(x) for x in (canvas.A, canvas.H, canvas.ID))
        mean_a = float(A.mean()) if A.size else 0.6
        A[:] = A * (1 - 0.45 * alpha) + 0.45 * alpha * mean_a * 0.85
        H[:] = H * (1 - 0.7 * alpha) + 0.7 * alpha * 0.12
        fib = np.zeros((patch.h, patch.w), np.float32)
        for p, ang, length, curl, bright in self.fibres:
            q = _rot(p[None, :], self.a, (self.cx, self.cy))[0]
            dirv = np.array([math.cos(ang + self.a), math.sin(ang + self.a)])
            perp = np.array([-dirv[1], dirv[0]])
            t = np.linspace(-0.5, 0.5, 6)[:, None]
            pts = q + dirv * length * t + perp * curl * length * (t * t - 0.25)
            patch.fibre(fib, pts, bright)
        fa = patch.crop(fib)
        on = fa > 0.05
        A[on] = np.maximum(A[on] * 0.7, fa[on] * 0.95)
        H[on] = np.maximum(H[on], 0.2)
        ID[(alpha > 0.3) | (on & (alpha > 0.05))] = self.did


class MissingRoving(Defect):
    """A roving absent over a length: the gap shows the crossing rovings and the belt below."""

    layer = 1
    tufts = False

    def setup(self) -> None:
        self.axis = "warp" if self.rng.uniform() < 0.5 else "weft"
        self.L = float(np.clip(2 * self.s, 6.0, 80.0))
        self.index = self.tex.roving_index(self.axis, self.cx, self.cy)

    def _range(self) -> tuple[float, float]:
        along = self.cy if self.axis == "warp" else self.cx
        return along - self.L / 2, along + self.L / 2

    def removals(self) -> list[tuple[str, int, float, float, int]]:
        s0, s1 = self._range()
        return [(self.axis, self.index, s0, s1, self.did)]

    def draw(self, canvas: Canvas) -> None:
        if not self.tufts:
            return
        s0, s1 = self._range()
        pitch = self.tex.spec.pitch_mm[0 if self.axis == "warp" else 1]
        patch = Patch(canvas, self.cx, self.cy, self.L / 2 + pitch + 2)
        if patch.empty:
            return
        A, H, ID = (patch.view(x) for x in (canvas.A, canvas.H, canvas.ID))
        fib = np.zeros((patch.h, patch.w), np.float32)
        mask = patch.blank()
        rng = np.random.default_rng([self.spec.seed, 3])
        across = self.cx if self.axis == "warp" else self.cy
        for end, sign in ((s0, 1.0), (s1, -1.0)):
            for _ in range(14):
                o = rng.uniform(-0.4, 0.4) * pitch
                length = rng.uniform(0.3, 0.45) * self.L
                curl = rng.normal(0, 0.3)
                t = np.linspace(0, 1, 6)
                a_ = end + sign * length * t
                b_ = across + o + curl * length * t * t
                pts = np.column_stack([b_, a_] if self.axis == "warp" else [a_, b_])
                patch.fibre(fib, pts, rng.uniform(0.6, 1.0))
                patch.fibre(mask, pts, 255)
        fa = patch.crop(fib)
        on = fa > 0.05
        A[on] = np.maximum(A[on], fa[on] * 0.95)
        H[on] = np.maximum(H[on], 0.2)
        ID[patch.crop(mask) > 0] = self.did


class BrokenRoving(MissingRoving):
    """A roving snapped: a short gap with fluffy fibre tufts reaching in from both ends."""

    tufts = True

    def setup(self) -> None:
        super().setup()
        self.L = float(np.clip(0.25 * self.s + 1.0, 1.5, 7.0))


_CLASSES: dict[str, type[Defect]] = {
    "hex_nut": HexNut, "washer": Washer, "screw": Screw, "tool": Tool, "metal_part": MetalPart,
    "fold": Fold, "crease": Crease, "contamination": Contamination, "cut": Cut,
    "frayed_edge": FrayedEdge, "missing_roving": MissingRoving, "broken_roving": BrokenRoving,
}


def build(spec: DefectSpec, did: int, tex: SheetTexture) -> Defect:
    return _CLASSES[spec.kind](spec, did, tex)
