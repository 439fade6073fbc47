"""DFDA-AD ablation on MVTec-layout data (e.g. the AITEX tiles): which parts earn their place.

Fits one DFDA detector per variant on a category's train/good and scores its test set with
station.metrics (image AUROC, pixel AUROC, AUPRO, pixel AP, pixel F1-max). Variants: the full
model, without the CBAM-style attention, without the query-key attention, without both, with
untrained (seeded random) attention, with the neutral initialisation (every gate 0.5) instead
of the random one, and a k sweep. Frozen backbone features (of the good images, of their synthetic
faults and of the test images) are computed once per image and shared between variants (they
do not depend on the variant), so only the first variant's fit time includes them. Each row
also reports the label-free synthetic-fault validation (`syn_*`, held-out good images with
synthetic faults) that the detector itself uses to choose k.

    .venv/bin/python tools/ablate_dfda.py --dataset ../shared/datasets/aitex/fabric01 \
        --threads 1 --recluster full --out data/ablate_dfda.json
    .venv/bin/python tools/ablate_dfda.py --dataset ../shared/datasets/aitex --variants full
    .venv/bin/python tools/ablate_dfda.py --dataset ../shared/datasets/aitex/fabric04 \
        --variants full no_cbam --seeds 0 1 2

With several `--seeds`, every variant is fitted once per seed (the seed moves the validation
split, the synthetic faults, the attention's initialisation and K-means) and a last table gives
each variant's mean and spread over the seeds, and each variant's paired difference from `full`
(same seed) with its standard error, so a difference can be set against the noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_cbam": {"use_cbam": False},
    "no_query_key": {"use_query_key": False},
    "no_attention": {"use_cbam": False, "use_query_key": False},
    "untrained_attention": {"attention_epochs": 0},
    "neutral_init": {"attention_init": "neutral"},
    "cbam_standardized": {"cbam_standardize": True},
}
K_SWEEP = (16, 32, 64, 128, 256, 512)
COLS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max")


def _variants(names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "ksweep":
            out.update({f"k={k}": {"k": k} for k in K_SWEEP})
        elif name in VARIANTS:
            out[name] = VARIANTS[name]
        elif name.startswith("k="):
            out[name] = {"k": int(name[2:])}
        else:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}, ksweep, k=N")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True, help="category or folder of them")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS) + ["ksweep"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="detector seeds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=256, help="square input size")
    ap.add_argument("--out", type=Path, default=None, help="write results JSON here")
    ap.add_argument(
        "--recluster",
        default=None,
        help="k sweep without refitting: after fitting this variant (added when not listed), "
        "re-run only K-means for each k of the sweep on its fused good features (same pool "
        "size as fit; the attention stays the one trained with the k the fit chose; "
        "one seed only)",
    )
    args = ap.parse_args()
    if args.recluster and len(args.seeds) > 1:
        raise SystemExit("--recluster works with one seed; drop --seeds or give one")

    import torch

    from station.datasets import MVTecFolder, category_dirs
    from station.detectors.engine import load_images, load_masks
    from station.detectors.registry import create_detector
    from station.metrics import evaluate_all
    from station.recipe import PreprocessConfig

    torch.set_num_threads(args.threads)
    cfg = PreprocessConfig(size=(args.size, args.size), grey_to_rgb=True)
    variants = _variants(args.variants)
    if args.recluster and args.recluster not in variants:
        variants.update(_variants([args.recluster]))
    cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for cat in category_dirs(args.dataset):
        folder = MVTecFolder(cat)
        train = load_images(folder.train_good(), cfg)
        items = folder.test_items()
        test = np.stack(load_images([it.path for it in items], cfg))
        labels = np.array([it.label for it in items])
        masks = load_masks(items, cfg, test.shape[1:3])
        cache.clear()
        results[cat.name] = {}
        for vname, over in _seeded(variants, args.seeds).items():
            det = create_detector("dfda", device=args.device, **over)
            inner = det.branch_maps

            def memo(
                x: torch.Tensor, inner: Any = inner, dev: Any = det.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
                key = hashlib.sha1(x.numpy().tobytes()).digest()
                if key not in cache:
                    a, b = inner(x)
                    cache[key] = (a.cpu(), b.cpu())
                a, b = cache[key]
                return a.to(dev), b.to(dev)

            det.branch_maps = memo  # type: ignore[method-assign]
            t0 = time.perf_counter()
            rep = det.fit(train)
            t1 = time.perf_counter()
            pred = det.predict(test)
            t2 = time.perf_counter()
            m = evaluate_all(pred.scores, labels, pred.maps, masks)
            row = {c: m.get(c, math.nan) for c in COLS}
            row.update(
                k=rep.extra["k"],
                kmeans_iterations=rep.extra["kmeans_iterations"],
                kmeans_converged=rep.extra["kmeans_converged"],
                k_from=rep.extra["k_from"],
                k_separation=rep.extra["k_separation"],
                attention_losses=rep.extra["attention_losses"],
                attention_margins=rep.extra["attention_margins"],
                syn_before=rep.extra["synthetic_val_before"].get("mean", math.nan),
                syn_patch=rep.extra["synthetic_val"].get("patch_auroc", math.nan),
                syn_image=rep.extra["synthetic_val"].get("image_auroc", math.nan),
                syn_mean=rep.extra["synthetic_val"].get("mean", math.nan),
                seconds={key[:-8]: rep.extra[key] for key in rep.extra if key.endswith("_seconds")},
                fit_s=round(t1 - t0, 1),
                predict_s=round(t2 - t1, 1),
            )
            results[cat.name][vname] = row
            _print(cat.name, vname, row)
            if args.out:  # after every variant, so a cut-off run keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
            if vname == args.recluster:
                results[cat.name].update(
                    _recluster(det, train, test, labels, masks, vname, cat.name)
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if len(args.seeds) > 1:
        _print_spread(results, list(variants), args.seeds)


def _seeded(variants: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """One entry per variant and seed; names get '@seed=N' when there is more than one seed."""
    if len(seeds) == 1:
        return {v: {**over, "seed": seeds[0]} for v, over in variants.items()}
    return {f"{v}@seed={s}": {**over, "seed": s} for s in seeds for v, over in variants.items()}


def _print_spread(
    results: dict[str, dict[str, dict[str, Any]]], names: list[str], seeds: list[int]
) -> None:
    print("\nmean +- standard deviation over seeds " + ", ".join(map(str, seeds)))
    for cat, rows in results.items():
        for v in names:
            got = [rows[f"{v}@seed={s}"] for s in seeds if f"{v}@seed={s}" in rows]
            if not got:
                continue
            cells = []
            for c in COLS[:3]:
                vals = np.array([r[c] for r in got], dtype=float)
                sd = vals.std(ddof=1) if len(vals) > 1 else 0.0
                cells.append(f"{c}={vals.mean():.3f}+-{sd:.3f}")
            print(f"{cat:10s} {v:20s} " + " ".join(cells) + f" n={len(got)}", flush=True)
    if "full" not in names:
        return
    print("\nfull minus variant, paired by seed: mean +- standard error (seeds where full wins)")
    for cat, rows in results.items():
        for v in names:
            if v == "full":
                continue
            pairs = [
                (rows[f"full@seed={s}"], rows[f"{v}@seed={s}"])
                for s in seeds
                if f"full@seed={s}" in rows and f"{v}@seed={s}" in rows
            ]
            if len(pairs) < 2:
                continue
            cells = []
            for c in COLS[:3]:
                d = np.array([a[c] - b[c] for a, b in pairs], dtype=float)
                se = d.std(ddof=1) / math.sqrt(len(d))
                cells.append(f"{c}={d.mean():+.4f}+-{se:.4f} ({int((d > 0).sum())}/{len(d)})")
            print(f"{cat:10s} {v:20s} " + " ".join(cells), flush=True)


def _print(cat: str, vname: str, row: dict[str, Any]) -> None:
    print(
        f"{cat:10s} {vname:20s} "
        + " ".join(f"{c}={row[c]:.3f}" for c in COLS)
        + f" syn={row.get('syn_mean', math.nan):.3f} k={row['k']} fit={row['fit_s']}s",
        flush=True,
    )


def _recluster(
    det: Any,
    train: list[np.ndarray],
    test: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    base: str,
    cat: str,
) -> dict[str, dict[str, Any]]:
    """Re-run K-means for each k of the sweep on the fitted detector's good features."""
    import torch

    from station.detectors.common import split_validation, to_batch
    from station.detectors.kmeans import kmeans
    from station.metrics import evaluate_all

    cfg = det.config()
    train_idx, _ = split_validation(len(train), cfg["val_fraction"], cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    parts = []
    for s in range(0, len(train_idx), cfg["batch_size"]):
        chunk = [train[i] for i in train_idx[s : s + cfg["batch_size"]]]
        feats, (h, w) = det.patch_features(to_batch(chunk))
        feats = feats.view(len(chunk), h * w, -1)
        cap = max(1, min(h * w, cfg["max_train_patches"] // len(train_idx)))
        for f in feats:
            parts.append(f[torch.from_numpy(rng.choice(h * w, cap, replace=False))])
    pool = torch.cat(parts)
    out: dict[str, dict[str, Any]] = {}
    for k in K_SWEEP:
        t0 = time.perf_counter()
        res = kmeans(pool, k, cfg["kmeans_iters"], cfg["seed"])
        det.centres = res.centres
        pred = det.predict(test)
        m = evaluate_all(pred.scores, labels, pred.maps, masks)
        row: dict[str, Any] = {c: m.get(c, math.nan) for c in COLS}
        row.update(
            k=k,
            kmeans_iterations=res.n_iter,
            kmeans_converged=res.converged,
            fit_s=round(time.perf_counter() - t0, 1),
        )
        name = f"{base}+k={k}"
        out[name] = row
        _print(cat, name, row)
    return out


if __name__ == "__main__":
    main()
