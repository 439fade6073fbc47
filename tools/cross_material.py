"""Does a detector trained on one material flag another? A wrong-material check.

    .venv/bin/python tools/cross_material.py --dataset ../shared/datasets/aitex \
        --train fabric01 --detector patchcore --param patchcore.center_features=false

Fits the detector on the training category's train/good, then scores that category's good test
images and the train/good images of every other category (at most `--limit` each). Prints the
image AUROC of each other material against the training material's good test images: 1.0 means
every sheet of the other material scores above every good sheet, 0.5 means they are not told
apart. An inspection recipe relies on this when the wrong material can reach the cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_detectors import parse_params

from station.datasets import MVTecFolder, category_dirs
from station.detectors.engine import load_images
from station.detectors.registry import create_detector
from station.metrics import image_auroc
from station.recipe import PreprocessConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True, help="folder of MVTec categories")
    ap.add_argument("--train", required=True, help="category to train on")
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--param", action="append", default=[], help="detector.key=value")
    ap.add_argument("--size", type=int, default=256, help="square input size")
    ap.add_argument("--limit", type=int, default=60, help="images per other category")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    by_detector = parse_params(args.param)
    if set(by_detector) - {args.detector}:
        raise SystemExit(f"--param names another detector than {args.detector!r}")
    params = by_detector.get(args.detector, {})
    cfg = PreprocessConfig(size=(args.size, args.size))
    folders = {d.name: MVTecFolder(d) for d in category_dirs(args.dataset)}
    if args.train not in folders:
        raise SystemExit(f"no category {args.train!r} in {args.dataset}; have {sorted(folders)}")
    det = create_detector(args.detector, device="cpu", **params)
    home = folders.pop(args.train)
    det.fit(load_images(home.train_good(), cfg))
    good = [it.path for it in home.test_items() if it.label == 0]
    own = det.predict(np.stack(load_images(good, cfg))).scores
    print(f"{args.detector} {params} trained on {args.train}")
    print(f"  {args.train} good test images: median {np.median(own):.2f}, max {own.max():.2f}")
    for name, folder in folders.items():
        other = det.predict(np.stack(load_images(folder.train_good()[: args.limit], cfg))).scores
        labels = np.r_[np.zeros(len(own)), np.ones(len(other))]
        auc = image_auroc(np.concatenate([own, other]), labels)
        print(
            f"  {name}: median {np.median(other):.2f}, min {other.min():.2f}, "
            f"AUROC against {args.train}'s good {auc:.3f} (n={len(other)})"
        )


if __name__ == "__main__":
    main()
