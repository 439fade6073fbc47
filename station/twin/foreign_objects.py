"""Foreign objects lying on a sheet (hex_nut, washer, screw, tool, metal_part): solid parts with
height profiles, metallic or plastic shading and a cast shadow.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from station.twin.defect_base import (
    SURFACE,
    Defect,
    Patch,
    eval_waves,
    random_waves,
    rotate_points,
)
from station.twin.sheet import Canvas, smoothstep


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
        grain = eval_waves(random_waves(self.rng, 3), X * 6, Y * 6)  # brushed / moulded texture
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
                h = part["height"] * smoothstep(d / size)
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
        head = rotate_points(np.array([[-L / 2, -rh], [-L / 2 + 1.2 * rh, -rh],
                                       [-L / 2 + 1.2 * rh, rh], [-L / 2, rh]]), self.a, c)
        shaft = rotate_points(np.array([[-L / 2 + 1.2 * rh, -rs], [L / 2 - 2 * rs, -rs],
                                        [L / 2, 0], [L / 2 - 2 * rs, rs],
                                        [-L / 2 + 1.2 * rh, rs]]), self.a, c)
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
            pts = rotate_points(np.array([[-L / 2, 0], [L / 4, 0], [L / 4, 0.35 * L]]), self.a, c)
            return [dict(mask=patch.stroke(patch.blank(), pts, r), profile="cyl", size=r,
                         height=2 * r, albedo=0.25, metal=1.0)]
        rh, rs = 0.07 * L, max(0.018 * L, 0.7)
        handle = rotate_points(np.array([[-L / 2 + rh, 0], [-L / 2 + 0.42 * L, 0]]), self.a, c)
        shaft = rotate_points(np.array([[-L / 2 + 0.42 * L, 0], [L / 2 - rs, 0]]), self.a, c)
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
            m = patch.fill_poly(patch.blank(), rotate_points(self.chip, self.a, c))
            return [dict(mask=m, profile="bevel", size=0.3, height=0.6, albedo=self.alb,
                         metal=1.0)]
        if self.variant == "wire":
            r = float(np.clip(0.04 * self.ext, 0.25, 0.8))
            m = patch.stroke(patch.blank(), rotate_points(self.wire, self.a, c), r)
            return [dict(mask=m, profile="cyl", size=r, height=2 * r, albedo=self.alb,
                         metal=1.0)]
        r = float(np.clip(0.12 * self.ext, 0.4, 2.0))
        pts = rotate_points(np.array([[-self.ext / 2 + r, 0], [self.ext / 2 - r, 0]]), self.a, c)
        m = patch.stroke(patch.blank(), pts, r)
        return [dict(mask=m, profile="cyl", size=r, height=2 * r, albedo=self.alb, metal=1.0)]
