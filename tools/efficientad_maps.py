"""EfficientAD diagnosis: how the student-teacher and autoencoder maps score on their own.

    .venv/bin/python tools/efficientad_maps.py --models OUT --dataset ../shared/datasets/aitex

OUT is a `station evaluate --train --detector efficientad --out OUT` folder; each category's
model (OUT/<category>/efficientad.pt) scores that category's test images three ways: the
student-teacher map alone, the autoencoder map alone (raw maps on the PDN grid, padded and
upsampled like the combined map) and the combined, quantile-normalised map that `predict`
returns. Prints image AUROC, pixel AUROC and AUPRO per map, plus the model's normalisation
quantiles (q_a == q_b means the validation map has a plateau at its top: the spread floor
decides the weight of that map).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from station.datasets import MVTecFolder, category_dirs
from station.detectors.artifact import load_artifact
from station.detectors.common import to_batch
from station.detectors.efficientad import EfficientAD
from station.detectors.efficientad_net import MAP_PAD
from station.detectors.engine import load_images, load_masks
from station.metrics import aupro, image_auroc, pixel_auroc
from station.recipe import PreprocessConfig


def upsample(grid_maps: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    m = F.pad(grid_maps[:, None], (MAP_PAD,) * 4, mode="replicate")
    return F.interpolate(m, size=hw, mode="bilinear", align_corners=False)[:, 0].numpy()


def score_category(det: EfficientAD, folder: MVTecFolder, batch: int) -> dict[str, Any]:
    assert det.image_size is not None
    h, w = det.image_size
    pp = PreprocessConfig(size=(w, h))
    items = folder.test_items()
    images = np.stack(load_images([it.path for it in items], pp))
    labels = np.array([it.label for it in items])
    masks = load_masks(items, pp, (h, w))
    maps: dict[str, list[np.ndarray]] = {"student-teacher": [], "autoencoder": [], "combined": []}
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        st, ae = det.raw_maps(to_batch(chunk, det.image_size, "efficientad"))
        maps["student-teacher"].append(upsample(st.cpu(), (h, w)))
        maps["autoencoder"].append(upsample(ae.cpu(), (h, w)))
        maps["combined"].append(det.predict(chunk).maps)
    out: dict[str, Any] = {"quantiles": {k: round(v, 6) for k, v in det.quantiles.items()}}
    for name, parts in maps.items():
        m = np.concatenate(parts)
        out[name] = {
            "image_auroc": round(image_auroc(m.reshape(len(m), -1).max(1), labels), 3),
            "pixel_auroc": round(pixel_auroc(m, masks), 3),
            "aupro": round(aupro(m, masks), 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", required=True, help="station evaluate --train --out folder")
    ap.add_argument("--dataset", required=True, help="one category or a folder of categories")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for cat in category_dirs(args.dataset):
        path = Path(args.models) / cat.name / "efficientad.pt"
        if not path.is_file():
            print(f"{cat.name}: no model at {path}, skipped")
            continue
        det = load_artifact(path).detector
        assert isinstance(det, EfficientAD)
        res = score_category(det, MVTecFolder(cat), args.batch)
        results[cat.name] = res
        print(cat.name, "quantiles", res["quantiles"])
        for name in ("student-teacher", "autoencoder", "combined"):
            r = res[name]
            print(f"  {name:16s} I-AUROC {r['image_auroc']:.3f}  P-AUROC {r['pixel_auroc']:.3f}"
                  f"  AUPRO {r['aupro']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
