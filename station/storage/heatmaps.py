"""Heatmap images and atomic file writes for inspected parts.

`encode_heatmap` turns a detector's float anomaly map into a colour PNG with the pixel size of
the shot it belongs to, so the review page can lay it over the shot. The colour scale is fixed
by the detector's threshold: 0 at the bottom, the threshold exactly at mid-scale (value 128 of
255), twice the threshold and above at the top. When the recipe crops before the detectors, the
map is resized into the crop rectangle and the rest of the heatmap is black.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

import cv2
import numpy as np

from station.errors import StorageError
from station.files import atomic_write

COLORMAP = cv2.COLORMAP_TURBO


def heat_levels(amap: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 levels of a map on the threshold scale: threshold -> 128, 2 x threshold -> 255."""
    if not (threshold > 0 and np.isfinite(threshold)):
        raise ValueError(f"heatmap threshold must be a positive number, not {threshold!r}")
    m = np.nan_to_num(np.asarray(amap, dtype=np.float32), nan=0.0, posinf=np.inf, neginf=0.0)
    scaled = np.clip(m / (2.0 * threshold), 0.0, 1.0) * 255.0
    # 128 exactly at the threshold: round half up so 0.5 * 255 = 127.5 lands on 128
    return np.floor(scaled + 0.5).astype(np.uint8)


def encode_heatmap(
    amap: np.ndarray,
    threshold: float,
    size: tuple[int, int],
    crop: tuple[int, int, int, int] | None = None,
) -> bytes:
    """Colour PNG (bytes) of `amap` at `size` = (width, height) of the shot image.

    `crop` = (x, y, width, height) in shot pixels: the region the detector saw (None: all).
    """
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"anomaly map must be a non-empty 2-D array, got shape {amap.shape}")
    width, height = int(size[0]), int(size[1])
    levels = heat_levels(amap, threshold)
    if crop is None:
        x, y, w, h = 0, 0, width, height
    else:
        x, y, w, h = (int(v) for v in crop)
        # clip the crop to the image, as preprocessing does
        x2, y2 = min(x + w, width), min(y + h, height)
        x, y = max(x, 0), max(y, 0)
        w, h = x2 - x, y2 - y
        if w <= 0 or h <= 0:
            raise ValueError(f"crop {crop} lies outside the {width}x{height} image")
    resized = cv2.resize(levels, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(resized, COLORMAP)  # BGR
    if (x, y, w, h) == (0, 0, width, height):
        canvas = colour
    else:
        canvas = np.zeros((height, width, 3), np.uint8)
        canvas[y : y + h, x : x + w] = colour
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("PNG encoding of the heatmap failed")
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: H x W (grey) or H x W x 3 (RGB)."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"images are stored as uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim != 2:
        raise ValueError(f"cannot store an image of shape {img.shape} as PNG")
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_raw_map(amap: np.ndarray) -> bytes:
    """float32 .npy bytes of a raw anomaly map."""
    out = io.BytesIO()
    np.save(out, np.asarray(amap, dtype=np.float32), allow_pickle=False)
    return out.getvalue()


def write_atomic(path: Path, data: bytes) -> str:
    """Write `data` to `path` via a synced temporary file and a rename; returns its sha256.

    A crash leaves either the old file or the complete new one, never a partial file. OS errors
    (full disk, read-only or missing folder) become StorageError naming the file.
    """
    try:
        return atomic_write(path, data, durable=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"disk full writing {path}", hint="free space on the data disk"
            ) from None
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
