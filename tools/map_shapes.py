"""How much of the pixel AUROC is the shape of PatchCore's map? (issue #20, the pixel target)

    .venv/bin/python tools/map_shapes.py --recipe glassfiber \
        --dataset ../shared/datasets/aitex --out /tmp/ev/shapes --threads 2

Per category: the recipe's first detector (a PatchCore) trained on `train/good` through the
station's training path, then each test image's patch distances to the memory bank drawn into
maps of other shapes, all from the same distances:
- `shipped`: the detector's own map (smoothed at its sigma, peak scaled to the image score);
- `sigma N`: the distances upsampled and smoothed at sigma N px, not scaled;
- `sigma 4+16`: the mean of the sigma 4 and sigma 16 maps (a local and a broad scale);
- `image mean`: every pixel of an image given the image's mean patch distance (no location).
Prints the pixel AUROC of each and the mean over the categories. Measured in
docs/materials.md ("Where the magnetic tiles' pixel AUROC goes").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from station.calibration.evaluation import fit_on_category, read_test_set  # noqa: E402
from station.calibration.recipes import load_recipe  # noqa: E402
from station.datasets import MVTecFolder  # noqa: E402
from station.detectors.common import to_batch, upsample_smooth  # noqa: E402
from station.metrics import pixel_auroc  # noqa: E402

SIGMAS = (4.0, 8.0, 16.0, 32.0)


def _quiet(task: str, done: int, total: int) -> None:
    pass


@torch.no_grad()
def shapes(det: object, images: list[np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """The maps of every shape for `images` (N x H x W each), from one PatchCore's distances."""
    model = det.model  # type: ignore[attr-defined]
    grids, shipped = [], []
    for start in range(0, len(images), 16):
        batch = to_batch(images[start : start + 16], det.image_hw, "patchcore")  # type: ignore[attr-defined]
        n = batch.shape[0]
        feats, grid = model.patch_features(batch.to(det.device))  # type: ignore[attr-defined]
        dist, _ = model.knn_index().search(feats, 1)
        grids.append(dist[:, 0].view(n, 1, *grid).float().cpu())
        shipped.append(model.score(feats, n, grid, hw)[0].float().cpu().numpy())  # one pass
    return {"shipped": np.concatenate(shipped), **draw(torch.cat(grids), hw)}


def draw(d: torch.Tensor, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Patch distances (N x 1 x grid) drawn into every shape but the shipped one."""
    out = {f"sigma {s:g}": upsample_smooth(d, hw, s).numpy() for s in SIGMAS}
    out["sigma 4+16"] = (out["sigma 4"] + out["sigma 16"]) / 2
    level = d.flatten(1).mean(1).numpy()[:, None, None]
    out["image mean"] = np.broadcast_to(level, (len(d), *hw)).copy()
    return out


def mean_rows(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each shape's pixel AUROC averaged over the categories."""
    names = list(next(iter(rows.values())))
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--dataset", type=Path, required=True, help="a category or a folder of them")
    ap.add_argument("--out", type=Path, required=True, help="where the trained models go")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    det_cfg = recipe.detectors[0]
    if det_cfg.name != "patchcore":
        raise SystemExit(f"{args.recipe}: its first detector is {det_cfg.name}, not a PatchCore")
    root = args.dataset
    cats = [root] if MVTecFolder(root).train_good() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir()
    )
    rows: dict[str, dict[str, float]] = {}
    for cat in cats:
        test = read_test_set(cat, recipe.preprocess, _quiet)
        det, _ = fit_on_category(recipe, det_cfg, cat, args.out, None, _quiet)
        hw = test.images[0].shape[:2]
        if tuple(hw) != tuple(det.image_hw):
            raise SystemExit(
                f"{cat.name}: test images of {hw[1]} x {hw[0]} px are cut into tiles; "
                "this tool reads whole images: use a recipe without tiling"
            )
        maps = shapes(det, test.images, (int(hw[0]), int(hw[1])))
        rows[cat.name] = {k: pixel_auroc(m, test.masks) for k, m in maps.items()}
        print(cat.name, "  ".join(f"{k} {v:.3f}" for k, v in rows[cat.name].items()), flush=True)
    mean = mean_rows(rows)
    print("mean", "  ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "mean": mean}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
