"""A sheet's material layers over a raster region: the weave, warped and cut by the sheet's
defects, then the defects drawn on top, with slopes for the camera's shading.
"""

from __future__ import annotations

import cv2
import numpy as np

from station.twin.defects import build as build_defect
from station.twin.sheet import Canvas, Layers, Region, SheetSpec, SheetTexture, weave


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
    for d in sorted(active, key=lambda d: d.layer):
        d.draw(canvas)
    # slopes in sheet-local mm (central differences), for the camera's shading
    hx = cv2.Sobel(canvas.H, cv2.CV_32F, 1, 0, ksize=1, scale=0.5 * region.ppm)
    hy = cv2.Sobel(canvas.H, cv2.CV_32F, 0, 1, ksize=1, scale=0.5 * region.ppm)
    stack = np.dstack([canvas.A, hx, hy, canvas.D, canvas.M, canvas.S]).astype(np.float32)
    return Layers(region, stack, canvas.ID)
