"""Image statistics of one shot, for the drift charts: what a dimming lamp or a lens losing
focus changes before the detectors' scores move.

- mean: mean grey level (DN); falls with the lamp.
- contrast: standard deviation of the grey levels (DN); falls with the lamp and with blur.
- sharpness: variance of the 4-neighbour Laplacian divided by the grey-level variance. The
  ratio of fine detail to overall contrast is independent of the light level (a sheet of a
  brighter lot or a dimmer lamp scale both alike), so it moves with focus, not with the lamp.
"""

from __future__ import annotations

import numpy as np


def gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:  # RGB8: the mean of the channels
        img = img.mean(axis=2)
    return img.astype(np.float32, copy=False)


def laplacian_variance(img: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels."""
    if img.shape[0] < 3 or img.shape[1] < 3:
        return 0.0
    lap = (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
           - 4.0 * img[1:-1, 1:-1])
    return float(lap.var(dtype=np.float64))


def image_stats(image: np.ndarray) -> dict[str, float]:
    """mean, contrast and sharpness of one shot (see the module's docstring)."""
    img = gray(image)
    var = float(img.var(dtype=np.float64))
    return {
        "mean": float(img.mean(dtype=np.float64)),
        "contrast": float(np.sqrt(var)),
        "sharpness": laplacian_variance(img) / var if var > 0 else 0.0,
    }
