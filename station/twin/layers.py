"""A sheet's material layers over a raster region: the weave, warped and cut by the sheet's
defects, then the defects drawn on top, with slopes for the camera's shading.

Faults of the fabric (folds, cuts, spots, rovings) end at the sheet's edge; foreign objects lie
on top and may hang over it. `defect_bounds` gives each defect's extent in sheet-local mm from
its own drawn footprint (the id layer), for the twin's ground truth.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from station.twin.defects import FOREIGN_OBJECTS
from station.twin.defects import build as build_defect
from station.twin.sheet import Canvas, Layers, Region, SheetSpec, SheetTexture, weave

BOUNDS_TEXELS = 400_000  # raster size for one defect's bounds
BOUNDS_MAX_PPM = 8.0


def render_layers(spec: SheetSpec, region: Region, tex: SheetTexture | None = None,
                  light_xy_per_z: tuple[float, float] = (0.5, -0.25)) -> Layers:
    """All material layers of `spec` over `region` (defects included)."""
    tex = tex or SheetTexture(spec)
    xs = region.x0 + np.arange(region.width, dtype=np.float32) / region.ppm
    ys = region.y0 + np.arange(region.height, dtype=np.float32) / region.ppm
    X, Y = np.meshgrid(xs, ys)
    shape = X.shape
    canvas = Canvas(
        region, X, Y,
        A=np.zeros(shape, np.float32), H=np.zeros(shape, np.float32),
        D=np.full(shape, 0.5, np.float32), M=np.zeros(shape, np.float32),
        S=np.ones(shape, np.float32), ID=np.zeros(shape, np.uint8),
        light_xy_per_z=light_xy_per_z,
    )
    active = [build_defect(d, i + 1, tex) for i, d in enumerate(spec.defects)]
    for d in active:
        canvas.X, canvas.Y = d.warp(canvas.X, canvas.Y)
    removals = [r for d in active for r in d.removals()]
    weave(canvas, tex, removals)
    canvas.X, canvas.Y = X, Y  # defects draw in true sheet coordinates
    half_w, half_h = spec.size_mm[0] / 2, spec.size_mm[1] / 2
    off = (np.abs(X) > half_w) | (np.abs(Y) > half_h)
    layers = ("A", "H", "D", "M", "S")
    kept = {n: getattr(canvas, n)[off] for n in layers} if off.any() else None
    ordered = sorted(active, key=lambda d: d.layer)
    for d in ordered:
        if d.spec.kind not in FOREIGN_OBJECTS:
            d.draw(canvas)
    if kept is not None:  # fabric faults end at the sheet's edge
        for n in layers:
            getattr(canvas, n)[off] = kept[n]
        canvas.ID[off] = 0
    for d in ordered:
        if d.spec.kind in FOREIGN_OBJECTS:
            d.draw(canvas)
    # slopes in sheet-local mm (central differences), for the camera's shading
    hx = cv2.Sobel(canvas.H, cv2.CV_32F, 1, 0, ksize=1, scale=0.5 * region.ppm)
    hy = cv2.Sobel(canvas.H, cv2.CV_32F, 0, 1, ksize=1, scale=0.5 * region.ppm)
    stack = np.dstack([canvas.A, hx, hy, canvas.D, canvas.M, canvas.S]).astype(np.float32)
    return Layers(region, stack, canvas.ID)


def defect_bounds(spec: SheetSpec, tex: SheetTexture | None = None,
                  ) -> list[tuple[float, float, float, float] | None]:
    """Per defect of `spec`: (x0, y0, x1, y1) in sheet-local mm around its drawn footprint
    (the id layer, clipped by the sheet as rendered; each defect on its own, so another one
    drawn over it does not shrink it), or None if nothing of it shows."""
    tex = tex or SheetTexture(spec)
    out: list[tuple[float, float, float, float] | None] = []
    for d in spec.defects:
        half = 1.6 * d.size_mm + 20.0  # reaches past every kind's drawing (defects.py)
        alone = dataclasses.replace(spec, defects=(d,))
        found = None
        for _ in range(4):  # grow the raster while the footprint touches its border
            ppm = min(BOUNDS_MAX_PPM, math.sqrt(BOUNDS_TEXELS) / (2 * half))
            cx, cy = d.centre_mm
            region = Region.covering(cx - half, cy - half, cx + half, cy + half, ppm)
            ids = render_layers(alone, region, tex).ids == 1
            if not ids.any():
                break
            rows, cols = np.nonzero(ids)
            r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
            inside = r0 > 0 and c0 > 0 and r1 < region.height - 1 and c1 < region.width - 1
            x0, y0, _, _ = region.bounds
            p = 0.5 / ppm  # a texel reaches half a texel beyond its centre
            found = (x0 + c0 / ppm - p, y0 + r0 / ppm - p, x0 + c1 / ppm + p, y0 + r1 / ppm + p)
            if inside:
                break
            half *= 2
        out.append(found)
    return out
