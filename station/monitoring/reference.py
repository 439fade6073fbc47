"""The drift reference card's statistics (`monitoring.drift.reference`; pure but for the camera
model handed in).

The card lies beside the sheet and is shot from its own pose (`recipe.card_pose`). Its grey
patch (the half at lower x) and its printed checker (the other half) are found in the image by
mapping pixels to the table with the station's camera model: each half's area, shrunk by
`inset_mm`, gives one region of interest (a pixel box). Then, per card shot:
- `mean card`: the patch's mean grey level (the lamp, nothing else: blur leaves a flat patch's
  mean alone, and the sheet does not enter it);
- `contrast card`: the print's standard deviation (the lamp, and a little the blur);
- `sharpness card`: the print's Laplacian variance over its grey-level variance (the focus; the
  ratio does not change with the light level).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from station.monitoring.imagestats import gray, image_stats

Box = tuple[int, int, int, int]  # x, y, width, height (pixels)
MIN_SIDE_PX = 8


class CardNotInView(ValueError):
    pass


def card_boxes(
    centre_mm: tuple[float, float],
    size_mm: tuple[float, float],
    inset_mm: float,
    width: int,
    height: int,
    to_table: Callable[[np.ndarray], np.ndarray],
) -> tuple[Box, Box]:
    """(patch box, print box) in the card shot's pixels. `to_table` maps pixels (N, 2) to table
    points (N, 2+) in the robot base frame (mm). CardNotInView when a half is not seen whole."""
    step = 2
    us, vs = np.meshgrid(np.arange(0, width, step), np.arange(0, height, step))
    uv = np.column_stack([us.ravel(), vs.ravel()]).astype(np.float64)
    xy = np.asarray(to_table(uv))[:, :2]
    dx, dy = xy[:, 0] - centre_mm[0], xy[:, 1] - centre_mm[1]
    hw, hh = size_mm[0] / 2, size_mm[1] / 2
    inside_y = np.abs(dy) <= hh - inset_mm
    halves = ((dx >= -hw + inset_mm) & (dx <= -inset_mm), (dx >= inset_mm) & (dx <= hw - inset_mm))
    boxes = []
    for name, sel in zip(("grey patch", "print"), halves, strict=True):
        pts = uv[sel & inside_y]
        if len(pts) == 0:
            raise CardNotInView(f"the card's {name} is not in the card shot")
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0) + 1
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
        if (
            min(box[2], box[3]) < MIN_SIDE_PX
            or x0 <= 0
            or y0 <= 0
            or x1 >= width - 1
            or (y1 >= height - 1)
        ):
            raise CardNotInView(
                f"the card's {name} is cut by the image edge or under {MIN_SIDE_PX} px ({box})"
            )
        boxes.append(box)
    return boxes[0], boxes[1]


def _crop(image: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return gray(image)[y : y + h, x : x + w]


def card_stats(image: np.ndarray, patch: Box, printed: Box) -> dict[str, float]:
    """`mean`, `contrast`, `sharpness` of one card shot (see the module's docstring)."""
    p = _crop(image, printed)
    st = image_stats(p)
    return {
        "mean": float(_crop(image, patch).mean(dtype=np.float64)),
        "contrast": st["contrast"],
        "sharpness": st["sharpness"],
    }


def describe(boxes: Any) -> str:
    (a, b) = boxes
    return f"card regions: grey patch {list(a)}, print {list(b)} (x, y, w, h px)"
