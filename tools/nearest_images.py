"""Patch distances restricted to each image's nearest training images (after SPADE, Cohen and
Hoshen 2020), on the development materials.

    .venv/bin/python tools/nearest_images.py --recipe glassfiber \
        --dataset ../shared/datasets/aitex --out /tmp/ev/nearest-aitex

Per category, with the recipe's PatchCore (its backbone, layers, mirrored context, patch
neighbourhood and centring): every patch feature of the training images less a held-out 10 %
(`split_validation`, seed 0) is kept, with no coreset. Each image is described by the mean of
its uncentred patch features; a test image's patches are compared only with the patches of its
`--k` nearest training images by that descriptor, and its score is the largest of its patches'
nearest-neighbour distances. The held-out images are scored the same way, for the statistics
`ensemble_scores` standardises by.

The output is laid out like a `station evaluate` run (results.json, <category>/nearest/
scores.csv), as tools/global_gaussian.py's is. With `--maps`, each test image's patch distances
are also drawn into a map as PatchCore draws its own (upsampled, smoothed at the recipe
PatchCore's sigma) and the pixel AUROC is reported. It is not a station detector: measured in
docs/materials.md (not adopted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from global_gaussian import held_out, result_row, run_categories  # noqa: E402

from station.calibration.evaluation import read_test_set  # noqa: E402
from station.calibration.recipes import load_recipe  # noqa: E402
from station.datasets import MVTecFolder  # noqa: E402
from station.detectors.common import split_validation, to_batch, upsample_smooth  # noqa: E402
from station.detectors.engine import load_images  # noqa: E402
from station.detectors.registry import create_detector, detector_kwargs  # noqa: E402
from station.metrics import pixel_auroc  # noqa: E402
from station.recipe import Recipe  # noqa: E402


class Described(NamedTuple):
    """Images as the tool compares them: centred patch features (as PatchCore scores them),
    one uncentred mean feature per image, and the patch grid's (h, w)."""

    patches: torch.Tensor  # (N, h * w, D)
    means: torch.Tensor  # (N, D)
    grid: tuple[int, int]

    def take(self, idx: torch.Tensor) -> Described:
        return Described(self.patches[idx], self.means[idx], self.grid)


class Features:
    """Describes images with the recipe PatchCore's backbone and settings."""

    def __init__(self, recipe: Recipe) -> None:
        entry = next((d for d in recipe.detectors if d.name == "patchcore"), None)
        if entry is None:
            raise SystemExit(f"recipe {recipe.name!r}: no patchcore detector to take settings from")
        kwargs = detector_kwargs(entry, "cpu")
        self.centred = create_detector("patchcore", **kwargs)
        self.plain = create_detector("patchcore", **{**kwargs, "center_features": False})
        self.sigma = self.centred.model.sigma  # the map's smoothing, as the detector's

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> Described:
        patches, means, grid = [], [], (0, 0)
        for s in range(0, len(images), 16):
            x = to_batch(images[s : s + 16], None, "nearest_images")
            f, grid = self.centred.patch_features(x)
            patches.append(f.view(len(x), grid[0] * grid[1], -1))
            g, _ = self.plain.patch_features(x)
            means.append(g.view(len(x), grid[0] * grid[1], -1).mean(1))
        return Described(torch.cat(patches), torch.cat(means), grid)


def distances(gallery: Described, query: Described, k: int) -> torch.Tensor:
    """(N, patches): each query patch's distance to the patches of its image's k nearest
    gallery images."""
    nearest = torch.cdist(query.means, gallery.means)
    nearest = nearest.topk(min(k, len(gallery.means)), largest=False).indices
    out = torch.zeros(query.patches.shape[:2])
    for i, idx in enumerate(nearest):
        pool = gallery.patches[idx].reshape(-1, gallery.patches.shape[-1])
        out[i] = torch.cdist(query.patches[i], pool).min(1).values
    return out


def score_category(
    feats: Features, cat: Path, recipe: Recipe, k: int, out: Path, maps: bool
) -> dict:
    folder = MVTecFolder(cat)
    train = feats(load_images(folder.train_good(), recipe.preprocess))
    split = split_validation(len(train.means), 0.1, 0)
    fit_idx, val_idx = (torch.as_tensor(np.asarray(i)) for i in split)
    gallery = train.take(fit_idx)
    val_scores = distances(gallery, train.take(val_idx), k).amax(1).numpy()
    items = folder.test_items()
    labels = np.array([it.label for it in items], dtype=np.int64)
    if maps:
        test_set = read_test_set(cat, recipe.preprocess, lambda *_: None)
        if not test_set.has_masks:
            raise SystemExit(f"{cat}: --maps needs a mask for every defective test image")
        images, masks = test_set.images, test_set.masks
    else:
        images, masks = load_images([it.path for it in items], recipe.preprocess), None
    query = feats(images)
    dist = distances(gallery, query, k)
    row = result_row(
        out / cat.name / "nearest", items, labels, dist.amax(1).numpy(), held_out(val_scores)
    )
    if masks is not None:
        grids = dist.view(len(dist), 1, *query.grid)
        drawn = upsample_smooth(grids, masks.shape[1:], feats.sigma)
        row["pixel_auroc"] = pixel_auroc(drawn, masks)
        print(f"{cat.name}: pixel AUROC {row['pixel_auroc']:.3f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--k", type=int, default=50, help="nearest training images per test image")
    ap.add_argument("--maps", action="store_true", help="also the pixel AUROC of the maps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.k < 1:
        raise SystemExit("--k must be at least 1")
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    feats = Features(recipe)
    header = {"recipe": recipe.name, "k": args.k}
    run_categories(
        args.dataset,
        args.out,
        "nearest",
        header,
        lambda cat: score_category(feats, cat, recipe, args.k, args.out, args.maps),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
