"""What every twin defect shares: the raster patch it draws in, smooth random waves, and the
`Defect` base class (setup from its own seed, optional warp of the weave, rovings removed, then
drawing into the canvas layers). The kinds themselves: `station.twin.defects`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from station.twin.sheet import ROVING_HEIGHT_MM, Canvas, DefectSpec, SheetTexture

SURFACE = ROVING_HEIGHT_MM  # objects lie on top of the rovings
SHIFT = 4  # cv2 drawing: 4 fractional bits
SCALE = 1 << SHIFT


def rotate_points(pts: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = np.asarray(pts, np.float64)
    return np.column_stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c]) + centre


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


def random_waves(rng: np.random.Generator, n: int = 4) -> list[tuple[float, float, float, float]]:
    """Random sinusoids (kx, ky, phase, amplitude): a smooth field defined everywhere."""
    out = []
    for k in range(n):
        f = rng.uniform(0.15, 0.6) * (1.6**k)
        a = rng.uniform(0, 2 * math.pi)
        out.append((f * math.cos(a), f * math.sin(a), rng.uniform(0, 2 * math.pi), 1.0 / (k + 1)))
    return out


def eval_waves(waves, X: np.ndarray, Y: np.ndarray) -> np.ndarray:  # noqa: ANN001
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
