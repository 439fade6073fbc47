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
from station.twin.foreign_objects import HexNut, MetalPart, Screw, Tool, Washer
from station.twin.sheet import GAP_ALBEDO, Canvas, DefectSpec, SheetTexture, smoothstep

KINDS = (
    "hex_nut", "washer", "screw", "tool", "metal_part", "fold", "crease", "contamination",
    "cut", "frayed_edge", "missing_roving", "broken_roving",
)
FOREIGN_OBJECTS = ("hex_nut", "washer", "screw", "tool", "metal_part")


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
        g = smoothstep((self.L / 2 - np.abs(along)) / (0.2 * self.L))
        return along, d, g

    def warp(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The cloth taken up by the fold is pulled in from the side it lies on, within about
        # half the fold's length; beyond that the weave lies where it was.
        _, d, g = self._coords(X, Y)
        pulled = np.exp(-np.maximum(d, 0.0) / (0.5 * self.L))
        shift = self.F * g * 0.5 * (1 + np.tanh(d / self.w)) * pulled
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
        self.waves = random_waves(self.rng, 4)
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
        f *= 1 + 0.3 * eval_waves(self.waves, X / self.r * 3, Y / self.r * 3)
        soft = 0.25 if self.variant == "oil" else 0.08
        alpha = patch.crop(smoothstep((f - 0.45) / soft))
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
        self.waves = random_waves(self.rng, 3)
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
        half = (self.gw * (1 + 0.35 * eval_waves(self.waves, X * 4, Y * 4))) * end
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
        self.waves = random_waves(self.rng, 3)
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
        r = np.hypot(u / self.rx, v / self.ry) * (1 + 0.25 * eval_waves(self.waves, X, Y))
        alpha = patch.crop(smoothstep((1.0 - r) / 0.35))
        A, H, ID = (patch.view(x) for x in (canvas.A, canvas.H, canvas.ID))
        mean_a = float(A.mean()) if A.size else 0.6
        A[:] = A * (1 - 0.45 * alpha) + 0.45 * alpha * mean_a * 0.85
        H[:] = H * (1 - 0.7 * alpha) + 0.7 * alpha * 0.12
        fib = np.zeros((patch.h, patch.w), np.float32)
        for p, ang, length, curl, bright in self.fibres:
            q = rotate_points(p[None, :], self.a, (self.cx, self.cy))[0]
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
