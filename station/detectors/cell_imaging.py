"""The cell's imaging a model was trained under, and what changed since.

A model learns shots of one exposure, gain, pixel format and scale (table mm per detector
pixel). Trained, it records them (`meta["imaging"]`); a live run compares them with the
recipe's: a changed exposure or gain is said at the start, a changed scale is refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from station.geometry.coverage import NominalCamera, camera_mm_per_px, detector_factor

if TYPE_CHECKING:
    from station.recipe import Recipe

# A scale that moved by more than this shows the model faults at another size than it learnt
SCALE_TOLERANCE = 0.10


def imaging_meta(recipe: Recipe) -> dict[str, Any]:
    """Exposure, gain, pixel format and the median scale over the recipe's poses."""
    cam = recipe.camera
    model = NominalCamera.from_recipe(recipe)
    scales = sorted(
        s for s in (camera_mm_per_px(model, p) for p in recipe.robot.poses) if math.isfinite(s)
    )
    mid = scales[len(scales) // 2] * detector_factor(recipe) if scales else None
    return {
        "exposure_us": float(cam.exposure_us),
        "gain_db": float(cam.gain_db),
        "pixel_format": cam.pixel_format,
        "mm_per_px": None if mid is None else round(mid, 4),
    }


def imaging_changes(trained: dict[str, Any] | None, recipe: Recipe) -> tuple[list[str], bool]:
    """What differs between `trained` (a model's meta["imaging"]; None: not recorded) and the
    recipe now, in words, and whether the scale moved past SCALE_TOLERANCE."""
    if not trained:
        return [], False
    now = imaging_meta(recipe)
    said = {"exposure_us": "camera.exposure_us", "gain_db": "camera.gain_db",
            "pixel_format": "camera.pixel_format", "mm_per_px": "mm per detector pixel"}
    changes = [
        f"{said[k]} {trained[k]!r} -> {now[k]!r}"
        for k in said
        if k in trained and trained[k] != now[k]
    ]
    was, scale = trained.get("mm_per_px"), now["mm_per_px"]
    moved = bool(was and scale and abs(scale / was - 1.0) > SCALE_TOLERANCE)
    return changes, moved
