"""A global Gaussian baseline (Rippel et al., ICPR 2020) on the development materials.

    .venv/bin/python tools/global_gaussian.py --recipe glassfiber \
        --dataset ../shared/datasets/aitex --out /tmp/ev/gauss-aitex

Per category: every training image (preprocessed by the recipe, as `station evaluate` does)
through all seven stages of the recipe's first detector's backbone; each stage's map pooled to
one vector per image (`--pool mean`: the channel means, as in the paper; `meanstd`: the
channel means and standard deviations); a Gaussian per stage fitted with Ledoit-Wolf shrinkage
on the training images less a held-out 10 % (`split_validation`, seed 0, as the detectors hold
out); the image score is the sum over stages of the Mahalanobis distances.

The output is laid out like a `station evaluate` run (results.json with the image figures and
the held-out good scores, <category>/gaussian/scores.csv), so `tools/ensemble_scores.py --runs
gaussian=DIR,...` combines it with the detectors' runs. It has no anomaly map and is not a
station detector: measured in docs/materials.md (not adopted).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from station.calibration.evaluation import write_scores_csv  # noqa: E402
from station.calibration.operating_point import operating_points  # noqa: E402
from station.calibration.policies import Policy  # noqa: E402
from station.calibration.recipes import load_recipe  # noqa: E402
from station.datasets import MVTecFolder, category_dirs  # noqa: E402
from station.detectors.backbones import Backbone, create_backbone  # noqa: E402
from station.detectors.common import split_validation, to_batch  # noqa: E402
from station.detectors.engine import load_images  # noqa: E402
from station.metrics import image_auroc  # noqa: E402
from station.recipe import Recipe  # noqa: E402

STAGES = tuple(f"blocks.{i}" for i in range(7))


@torch.no_grad()
def pooled(net: Backbone, images: list[np.ndarray], pool: str) -> list[np.ndarray]:
    """One (N, D) array per stage: each image's map pooled over all positions."""
    per_stage: list[list[np.ndarray]] = [[] for _ in STAGES]
    for s in range(0, len(images), 16):
        for k, f in enumerate(net(to_batch(images[s : s + 16], None, "global_gaussian"))):
            parts = [f.mean((2, 3))] + ([f.std((2, 3))] if pool == "meanstd" else [])
            per_stage[k].append(torch.cat(parts, 1).numpy())
    return [np.concatenate(p) for p in per_stage]


def score_category(net: Backbone, cat: Path, recipe: Recipe, pool: str, out: Path) -> dict:
    """Fit on train/good less the held-out share; score the held-out and test images."""
    folder = MVTecFolder(cat)
    train = pooled(net, load_images(folder.train_good(), recipe.preprocess), pool)
    items = folder.test_items()
    test = pooled(net, load_images([it.path for it in items], recipe.preprocess), pool)
    labels = np.array([it.label for it in items], dtype=np.int64)
    fit_idx, val_idx = split_validation(len(train[0]), 0.1, 0)
    val_scores = np.zeros(len(val_idx))
    scores = np.zeros(len(items))
    for tr, te in zip(train, test, strict=True):
        gauss = LedoitWolf().fit(tr[fit_idx])
        val_scores += gauss.mahalanobis(tr[val_idx])
        scores += gauss.mahalanobis(te)
    return result_row(out / cat.name / "gaussian", items, labels, scores, held_out(val_scores))


def held_out(val_scores: np.ndarray) -> dict:
    """The held-out good scores' summary that `ensemble_scores` standardises by."""
    return {"mean": float(val_scores.mean()), "std": float(val_scores.std()), "n": len(val_scores)}


def result_row(
    out: Path, items: list, labels: np.ndarray, scores: np.ndarray, good: dict
) -> dict:
    """Write out/scores.csv and return the category's row as `station evaluate` lays it out
    (image figures; no pixel figure) with `good`, the held-out good scores' summary."""
    write_scores_csv(out / "scores.csv", [it.stem for it in items], labels, scores,
                     [it.defect_type for it in items])
    point = operating_points(scores, labels, Policy("zero_miss"))["recall_100"]
    return {
        "image_auroc": image_auroc(scores, labels),
        "pixel_auroc": float("nan"),
        "fr_recall_100": point.false_reject_rate,
        "model": {"good_scores": good},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--pool", choices=("mean", "meanstd"), default="meanstd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    det = recipe.detectors[0]
    net = create_backbone(det.backbone, det.weights, STAGES).eval()
    header = {"backbone": det.backbone, "pool": args.pool}
    run_categories(args.dataset, args.out, "gaussian", header,
                   lambda cat: score_category(net, cat, recipe, args.pool, args.out))  # fmt: skip
    return 0


def run_categories(
    dataset: Path, out: Path, label: str, header: dict, score: Callable[[Path], dict]
) -> None:
    """Score every category of the dataset, print its figures and write out/results.json with
    each category's row under `label`, as `station evaluate` nests a detector's."""
    cats = {}
    for cat in category_dirs(dataset):
        r = cats.setdefault(cat.name, {})[label] = score(cat)
        print(f"{cat.name}: image AUROC {r['image_auroc']:.3f}, FR@R100 {r['fr_recall_100']:.3f}")
    (out / "results.json").write_text(json.dumps({**header, "categories": cats}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
