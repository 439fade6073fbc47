"""Small synthetic fabric textures shared by the detector tests."""

from __future__ import annotations

import numpy as np


def weave(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Grey plain-weave-like texture: a product of sinusoids with random phase, plus noise."""
    y, x = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        px, py = rng.uniform(0, 2 * np.pi, 2)
        img = 128 + 45 * np.sin(2 * np.pi * x / 8 + px) * np.sin(2 * np.pi * y / 8 + py)
        img = img + rng.normal(0, 5, (size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def plain_weave(seed: int, size: int) -> np.ndarray:
    """One size x size grey plain-weave-like image with a random phase and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 40 * np.sin(2 * np.pi * x / 8 + px) * np.sin(2 * np.pi * y / 8 + py)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
