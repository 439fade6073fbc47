"""The drift reference card on the twin's table (`monitoring.drift.reference`), as the true
camera sees it.

The card is mounted beside the sheet: its half at lower x is a flat matte grey patch (albedo
0.45), the other half a printed checker (5 mm squares, black 0.06 / white 0.80) turned 5
degrees so that its edges are slanted against the pixel grid (the sharpness of a slanted edge
does not depend on where the edge falls within a pixel). Around it is the table (0.35).

A shot of it goes through the same cell as a sheet's: the same lamp (the twin's ageing scales
the exposure, its defocus widens the blur), the ring and side lights on a flat matte surface,
vignetting, the lens blur at the view distance, and the sensor (shot and read noise, 8 bits).
On top the lamp's output varies from shot to shot: `twin.params.lamp_jitter` (relative
standard deviation, default 0.005; see docs/monitoring.md for the choice).
Each pixel is the mean of 2 x 2 samples (the print's edges are anti-aliased).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from station.recipe import CameraConfig, Recipe
from station.twin import optics
from station.twin.render import Lighting, Shot, blur_sigma_px, expose, ray_directions
from station.twin.truth import TrueCamera

GREY, BLACK, WHITE, TABLE = 0.45, 0.06, 0.80, 0.35
SQUARE_MM = 5.0
SLANT_RAD = math.radians(5.0)
SUPERSAMPLE = 2
DEFAULT_JITTER = 0.005


def lamp_jitter(params: dict[str, Any]) -> float:
    """twin.params.lamp_jitter (ValueError names it)."""
    v = params.get("lamp_jitter", DEFAULT_JITTER)
    if not isinstance(v, int | float) or not 0.0 <= float(v) <= 0.2:
        raise ValueError(f"lamp_jitter must be a number from 0 to 0.2, not {v!r}")
    return float(v)


@dataclass(frozen=True)
class ReferenceCard:
    centre_mm: tuple[float, float]
    size_mm: tuple[float, float]

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> ReferenceCard | None:
        ref = recipe.monitoring.drift.reference
        return cls(ref.centre_mm, ref.size_mm) if ref.enabled else None

    def albedo(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Albedo at table points (mm, base frame)."""
        cx, cy = self.centre_mm
        hw, hh = self.size_mm[0] / 2, self.size_mm[1] / 2
        dx, dy = x - cx, y - cy
        on = (np.abs(dx) <= hw) & (np.abs(dy) <= hh)
        c, s = math.cos(SLANT_RAD), math.sin(SLANT_RAD)
        px, py = c * dx + s * dy, -s * dx + c * dy  # the print's own axes
        checker = (np.floor(px / SQUARE_MM) + np.floor(py / SQUARE_MM)) % 2 == 0
        out = np.full(x.shape, TABLE, np.float32)
        out[on & (dx < 0)] = GREY
        out[on & (dx >= 0) & checker] = WHITE
        out[on & (dx >= 0) & ~checker] = BLACK
        return out

    def in_view(self, truth: TrueCamera, tcp: np.ndarray) -> bool:
        """Whether the card's centre is in the image seen from `tcp`."""
        k, pose = truth.intrinsics, truth.pose(tcp)
        p = optics.plane_homography(k, pose) @ [self.centre_mm[0], self.centre_mm[1], 1.0]
        if p[2] <= 0:
            return False
        u, v = p[0] / p[2], p[1] / p[2]
        return 0 <= u < k.width and 0 <= v < k.height

    def render(
        self,
        truth: TrueCamera,
        cam: CameraConfig,
        tcp: np.ndarray,
        light: Lighting,
        noise_seed: Any,
        exposure_us: float | None = None,
        gain_db: float | None = None,
    ) -> Shot:
        k, pose = truth.intrinsics, truth.pose(tcp)
        s = SUPERSAMPLE
        ideal = truth.ideal_map(s)
        hi = np.linalg.inv(optics.plane_homography(k, pose))
        u, v = ideal[..., 0].astype(np.float64), ideal[..., 1].astype(np.float64)
        w = hi[2, 0] * u + hi[2, 1] * v + hi[2, 2]
        x = (hi[0, 0] * u + hi[0, 1] * v + hi[0, 2]) / w
        y = (hi[1, 0] * u + hi[1, 1] * v + hi[1, 2]) / w
        alb = self.albedo(x, y).reshape(k.height, s, k.width, s).mean(axis=(1, 3))
        # a flat matte surface (normal straight up): n.v and n.l are the vectors' z parts
        dirs = ray_directions(k, pose, light)
        vz, lz = dirs[..., 2], dirs[..., 5]
        rad = alb * (
            light.ambient + light.ring * np.clip(vz, 0, 1) + light.side * np.clip(lz, 0, 1)
        )
        uu = np.arange(k.width, dtype=np.float32)[None, :]
        vv = np.arange(k.height, dtype=np.float32)[:, None]
        r2 = ((uu - k.cx) ** 2 + (vv - k.cy) ** 2) / np.float32(k.fx * k.fx)
        rc2 = ((k.cx**2 + k.cy**2) / (k.fx * k.fx)) or 1.0
        vig = (1.0 / (1.0 + r2) ** 2) * (1.0 - light.vignetting * r2 / rc2)
        rad = (rad * vig).astype(np.float32)
        sigma = blur_sigma_px(cam, pose, light.base_blur_px)
        rad = cv2.GaussianBlur(rad, (0, 0), sigma)
        image = expose(rad, cam, light, noise_seed, exposure_us, gain_db)
        return Shot(image, np.zeros((k.height, k.width), np.uint8), [], sigma)
