"""Glare: the ring light's specular highlight on a woven glass-fibre sheet, per view.

The ring light sits around the lens, so light and view directions almost coincide and a mirror
reflection reaches the camera where the sheet's surface normal points back at the camera (the
normal bisects the light and view directions). A sheet is never perfectly flat: it lies with a
gentle bow and tilt of a few mrad (low-frequency, drawn from the sheet seed), so where the
highlight sits on the sheet depends on the camera pose: it follows the point below the camera,
shifted by the local tilt. The same sheet point glares in one view and not in its neighbour's.

Per sheet (`SheetGloss.from_spec`): the bow field (tilt, curvature and two long waves, in
sheet-local mm) and a glossiness: most sheets mild, about one in four strong. Per pixel
(`highlight`): a Blinn-Phong lobe (n . h)^k whose half width at half maximum is
`lobe_deg` degrees, from the view ray, the ring light at the camera centre and the bow normal.
The renderer scales it by the roving cover (no gloss in the gaps, on metal or off the sheet).

Settings under `twin.params`: `glare` (scale of every sheet's glossiness, 0 = off, default 1),
`glare_lobe_deg` (default 3), `sheet_bow_mrad` (typical slope of the bow field, default 3).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from station.twin.sheet import SheetSpec

DEFAULTS = {"glare": 1.0, "glare_lobe_deg": 3.0, "sheet_bow_mrad": 3.0}
STRONG_SHARE = 0.25  # share of sheets with a strong gloss
MILD = (0.05, 0.15)  # peak highlight radiance (diffuse white is about 0.7)
STRONG = (0.35, 0.8)


def params_from(params: dict[str, Any]) -> dict[str, float]:
    """The glare settings from `twin.params`; ValueError names a bad key."""
    out = {}
    for key, default in DEFAULTS.items():
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        out[key] = float(value)
    if out["glare"] < 0:
        raise ValueError("glare: must be 0 (off) or positive (scale of the glossiness)")
    if not 0.2 <= out["glare_lobe_deg"] <= 30:
        raise ValueError("glare_lobe_deg: give a lobe half width between 0.2 and 30 degrees")
    if not 0 <= out["sheet_bow_mrad"] <= 50:
        raise ValueError("sheet_bow_mrad: give a bow slope between 0 and 50 mrad")
    return out


@dataclass(frozen=True)
class SheetGloss:
    """One sheet's bow field (slopes in sheet-local axes) and glossiness."""

    strength: float  # peak added radiance at glare scale 1
    tilt: tuple[float, float]  # rad: plane slopes dz/dx, dz/dy
    curvature: tuple[float, float, float]  # 1/mm: z = (cxx x^2 + 2 cxy x y + cyy y^2) / 2
    waves: tuple[tuple[float, float, float, float], ...]  # (kx, ky rad/mm, phase, slope amp)

    @classmethod
    def from_spec(cls, spec: SheetSpec, bow_mrad: float) -> SheetGloss:
        return _gloss(spec.seed, spec.size_mm, bow_mrad)

    def slopes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dz/dx, dz/dy of the bow at sheet-local points (mm)."""
        cxx, cyy, cxy = self.curvature
        gx = self.tilt[0] + cxx * x + cxy * y
        gy = self.tilt[1] + cxy * x + cyy * y
        for kx, ky, ph, amp in self.waves:
            c = amp * np.cos(kx * x + ky * y + ph) / math.hypot(kx, ky)
            gx = gx + kx * c
            gy = gy + ky * c
        return gx, gy


@functools.lru_cache(maxsize=64)
def _gloss(seed: int, size_mm: tuple[float, float], bow_mrad: float) -> SheetGloss:
    rng = np.random.default_rng([int(seed), 31])
    lo, hi = STRONG if rng.uniform() < STRONG_SHARE else MILD
    strength = float(rng.uniform(lo, hi))
    b = bow_mrad * 1e-3
    half = max(size_mm) / 2
    tilt = tuple(float(v) for v in rng.normal(0, 0.6 * b, 2))
    # curvature: a slope of about `b` at the sheet edge
    cxx, cyy, cxy = (float(v) / half for v in rng.normal(0, [0.8 * b, 0.8 * b, 0.3 * b]))
    waves = []
    for _ in range(2):
        lam = rng.uniform(120.0, 350.0)
        a = rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / lam
        waves.append(
            (
                k * math.cos(a),
                k * math.sin(a),
                float(rng.uniform(0, 2 * math.pi)),
                float(rng.normal(0, 0.4 * b)),
            )
        )
    return SheetGloss(strength, (tilt[0], tilt[1]), (cxx, cyy, cxy), tuple(waves))


def shininess(lobe_deg: float) -> float:
    """Blinn-Phong exponent whose lobe falls to half at `lobe_deg` from the mirror direction."""
    return math.log(0.5) / math.log(math.cos(math.radians(lobe_deg)))


def highlight(
    spec: SheetSpec,
    gloss: SheetGloss,
    px: np.ndarray,
    py: np.ndarray,
    camera_mm: np.ndarray,
    lobe_deg: float,
) -> np.ndarray:
    """Specular radiance (before the roving cover) at base-frame table points `px`, `py` (mm)
    seen from the camera centre `camera_mm`, lit by the ring light around the lens."""
    c, s = math.cos(spec.angle_rad), math.sin(spec.angle_rad)
    dx, dy = px - spec.centre_mm[0], py - spec.centre_mm[1]
    gxl, gyl = gloss.slopes(c * dx + s * dy, -s * dx + c * dy)  # sheet-local slopes
    gx, gy = c * gxl - s * gyl, s * gxl + c * gyl  # into base axes
    norm = np.sqrt(gx * gx + gy * gy + 1)
    nx, ny, nz = -gx / norm, -gy / norm, 1 / norm
    vx, vy, vz = camera_mm[0] - px, camera_mm[1] - py, np.full_like(px, camera_mm[2])
    vlen = np.sqrt(vx * vx + vy * vy + vz * vz)
    # the ring light is at the camera: the light direction is the view direction, and so is
    # the half vector
    n_h = np.clip((nx * vx + ny * vy + nz * vz) / vlen, 0, 1)
    return (gloss.strength * np.power(n_h, shininess(lobe_deg))).astype(np.float32)
