"""Native-resolution tiles: cut a shot into overlapping detector-size tiles, stitch maps back.

Along each axis the tile origins start at 0, end flush with the far edge and are spread evenly,
so neighbours overlap by at least the asked overlap (one tile when the side equals the tile).
`cut` gives the tiles of an H x W (x C) image in row-major order; `stitch` blends N tile maps
into one H x W map with a separable Hann window that has a floor (it falls toward the tile
edges but never to zero, so every pixel is defined), normalised by the summed weights: a
value all tiles agree on comes back exactly.

Pure numpy; recipe-free (sizes are plain ints) so any layer can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

# The blend weight at a tile's outermost pixels, relative to 1 at its centre.
WEIGHT_FLOOR = 0.05


def tile_origins(side: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of length `side`: first 0, last `side - tile`,
    evenly spread with neighbours overlapping by at least `overlap` pixels."""
    if tile < 1 or side < tile:
        raise ValueError(f"a tile of {tile} px does not fit a side of {side} px")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} px must be >= 0 and smaller than the tile ({tile})")
    if side == tile:
        return [0]
    span = side - tile
    n = math.ceil(span / (tile - overlap)) + 1
    return [round(i * span / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one H x W image lie."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(y, x) of each tile, row-major: the order of `cut` and `stitch`."""
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)


def tile_grid(height: int, width: int, tile_hw: tuple[int, int], overlap: int) -> TileGrid:
    """The grid of `tile_hw` (height, width) tiles over an H x W image; ValueError when a
    tile does not fit or the overlap is not smaller than the tile."""
    th, tw = tile_hw
    if height < th or width < tw:
        raise ValueError(f"a {tw} x {th} tile does not fit a {width} x {height} image")
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap {overlap} px must be smaller than the tile ({tw} x {th})")
    ys, xs = tile_origins(height, th, overlap), tile_origins(width, tw, overlap)
    return TileGrid(height, width, th, tw, tuple(ys), tuple(xs))


def cut(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The tiles of `image` (H x W or H x W x C) as N x th x tw (x C), row-major (a copy)."""
    if image.shape[:2] != (grid.height, grid.width):
        raise ValueError(
            f"image is {image.shape[1]} x {image.shape[0]}, the grid is for "
            f"{grid.width} x {grid.height}"
        )
    return np.stack([image[y : y + grid.tile_h, x : x + grid.tile_w] for y, x in grid.origins])


@cache
def _window(n: int) -> np.ndarray:
    """1-D Hann window over `n` pixel centres, lifted to [WEIGHT_FLOOR, 1]."""
    if n == 1:
        return np.ones(1, np.float64)
    hann = np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    hann = (hann - hann.min()) / (hann.max() - hann.min())
    return WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * hann


def tile_weight(tile_h: int, tile_w: int) -> np.ndarray:
    """The th x tw blend weight: 1 at the centre, WEIGHT_FLOOR at the corners' edges."""
    return np.outer(_window(tile_h), _window(tile_w)).astype(np.float32)


def stitch(maps: np.ndarray, grid: TileGrid) -> np.ndarray:
    """One H x W float32 map from N tile maps (N x th x tw, in `grid.origins` order), blended
    across the overlaps by `tile_weight` and normalised."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (len(grid), grid.tile_h, grid.tile_w):
        raise ValueError(
            f"{maps.shape} tile maps do not fit a grid of {len(grid)} tiles of "
            f"{grid.tile_w} x {grid.tile_h}"
        )
    if len(grid) == 1:
        return maps[0].copy()
    weight = tile_weight(grid.tile_h, grid.tile_w)
    acc = np.zeros((grid.height, grid.width), np.float32)
    total = np.zeros((grid.height, grid.width), np.float32)
    for m, (y, x) in zip(maps, grid.origins, strict=True):
        acc[y : y + grid.tile_h, x : x + grid.tile_w] += weight * m
        total[y : y + grid.tile_h, x : x + grid.tile_w] += weight
    return acc / total


def pick_tiles(n_tiles: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of `k` tiles drawn without replacement (sorted), or all when k is None or
    not smaller than `n_tiles`."""
    if k is None or k >= n_tiles:
        return np.arange(n_tiles)
    return np.sort(rng.choice(n_tiles, size=k, replace=False))
