"""A tiled recipe on a dataset whose images differ in size (the magnetic tiles): every image
kept at its own pixels and cut into the recipe's tiles, as the cell cuts its shots.

    .venv/bin/python tools/native_tiles.py --recipe glassfiber \
        --dataset ../shared/datasets/magnetic_tile --out /tmp/ev/native-mt [--scale 0.6]

`station evaluate` needs one image size per category (its pixel figures stack the maps), and a
tile must fit inside each image. Here, per category: a copy of the dataset under OUT/padded,
where an image narrower or lower than a tile is mirrored about its edges up to the tile (its
mask padded with zeros); the recipe's first detector trained on that copy's `train/good` through
the station's training path; the test images scored through the scoring engine (tiles, stitched
maps, image score the largest tile's). Each map is cropped back to its image before the pixel
AUROC, which pools every pixel of every test image at its own size. `--scale` first resizes
every image and mask by one factor (aspect kept): one pixel scale for all, unlike resizing each
image whole to the recipe's size.

The output is laid out like a `station evaluate` run (results.json, <category>/<detector>/
scores.csv), for tools/ensemble_scores.py. Measured in docs/materials.md ("The magnetic tiles'
input size").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from global_gaussian import result_row, run_categories  # noqa: E402

from station.calibration.evaluation import fit_on_category  # noqa: E402
from station.calibration.recipes import load_recipe  # noqa: E402
from station.datasets import MVTecFolder  # noqa: E402
from station.detectors.engine import ScoringEngine, load_images  # noqa: E402
from station.imaging import read_image, resize, resize_mask, write_png  # noqa: E402
from station.metrics import pixel_auroc  # noqa: E402
from station.recipe import Recipe  # noqa: E402


def pad_to(image: np.ndarray, hw: tuple[int, int], mirror: bool) -> np.ndarray:
    """`image` grown to at least `hw` (height, width), centred: mirrored about its edges, or
    with zeros (`mirror` False, for masks)."""
    ph, pw = (max(0, t - s) for t, s in zip(hw, image.shape[:2], strict=True))
    pads = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pads, mode="symmetric" if mirror else "constant")


def crop_back(padded: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The centred `hw` window of a map of a `pad_to` image: the image's own pixels."""
    y0, x0 = ((p - s) // 2 for p, s in zip(padded.shape[:2], hw, strict=True))
    return padded[y0 : y0 + hw[0], x0 : x0 + hw[1]]


def scaled(image: np.ndarray, factor: float, is_mask: bool) -> np.ndarray:
    """`image` resized by `factor` on both axes (masks nearest, so they stay binary)."""
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return resize_mask(image, size) * 255 if is_mask else resize(image, size)


def padded_copy(
    cat: Path, dest: Path, tile_hw: tuple[int, int], scale: float = 1.0
) -> dict[Path, tuple[int, int]]:
    """Every PNG of the category under `dest`, resized by `scale`, then padded to `tile_hw`
    where smaller (masks under ground_truth/ with zeros); returns each image's own (height,
    width) after scaling by its `dest` path (a mask has its image's)."""
    sizes = {}
    for src in sorted(cat.rglob("*.png")):
        rel = src.relative_to(cat)
        is_image = rel.parts[0] != "ground_truth"
        image = scaled(read_image(src), scale, not is_image)
        write_png(dest / rel, pad_to(image, tile_hw, mirror=is_image))
        if is_image:
            sizes[dest / rel] = (int(image.shape[0]), int(image.shape[1]))
    return sizes


def _quiet(task: str, done: int, total: int) -> None:
    """No progress display: the tool prints one line per category."""


def score_category(recipe: Recipe, cat: Path, out: Path, scale: float = 1.0) -> dict:
    w, h = recipe.preprocess.size
    det = recipe.detectors[0]
    padded = out / "padded" / cat.name
    sizes = padded_copy(cat, padded, (h, w), scale)
    grown = sum(ih < h or iw < w for ih, iw in sizes.values())
    fitted, info = fit_on_category(recipe, det, padded, out, None, _quiet)
    items = MVTecFolder(padded).test_items()
    labels = np.array([it.label for it in items], dtype=np.int64)
    engine = ScoringEngine({det.name: fitted}, recipe.preprocess, 16)
    result = engine.score(load_images([it.path for it in items], recipe.preprocess))[det.name]
    maps, masks = [], []
    for i, it in enumerate(items):
        own = sizes[it.path]
        maps.append(crop_back(result.map(i), own).ravel())
        mask = np.zeros(own, bool)
        if it.mask_path is not None:
            mask = crop_back(read_image(it.mask_path), own) > 0
            mask = mask if mask.ndim == 2 else mask.any(-1)
        masks.append(mask.ravel())
    row = result_row(out / cat.name / det.name, items, labels, result.scores, info["good_scores"])
    row["pixel_auroc"] = pixel_auroc(np.concatenate(maps)[None], np.concatenate(masks)[None])
    row["padded_images"] = grown
    row["pixels"] = int(sum(m.size for m in masks))  # the test images' own pixels, scored
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", type=float, default=1.0, help="resize every image by this first")
    args = ap.parse_args(argv)
    if not 0.05 <= args.scale <= 4.0:
        raise SystemExit(f"--scale {args.scale}: give a factor between 0.05 and 4")
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    if not recipe.preprocess.tiling.enabled:
        raise SystemExit(f"recipe {recipe.name!r} resizes whole shots: give a tiled recipe")
    header = {"recipe": recipe.name, "tile": list(recipe.preprocess.size), "scale": args.scale}
    run_categories(args.dataset, args.out, recipe.detectors[0].name, header,
                   lambda cat: score_category(recipe, cat, args.out, args.scale))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
