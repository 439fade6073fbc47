"""PatchCore's nearest-neighbour search: torch vs faiss exact vs faiss IVF, on one CPU.

    .venv/bin/python tools/bench_knn.py                       # AITEX fabric00, 2 threads
    .venv/bin/python tools/bench_knn.py --data DIR --threads 1 --json out.json

PatchCore is fitted with the shipped recipe's settings (recipes/glassfiber.yaml:
max_train_patches 150000, coreset_ratio 0.03, num_neighbors 9, mirror_pad 32, centred
features; Lite0 backbone; ~4 500 bank rows of 224 dims) on the good 256 x 256 tiles in --data
(AITEX fabric00 train/good by default). Query features come from --queries images of the
matching test/ folder (half defect, half good). Then, for each search (knn param), in the same
run and interleaved so machine load hits all alike:
- index build time (once per bank);
- the score step (`PatchCoreModel.score`: k-NN of every patch, re-weighting, map) on the patch
  features of 1 and 8 tiles (1024 and 8192 queries), best-of-reps ms and ratio to torch;
- `predict` images/s at batch 1 and 8 (backbone included), ratio to torch;
- against torch's exact search: recall@1 (same nearest bank row), largest distance difference,
  and the largest relative image-score difference over the query images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DATA = Path("/work/shared/datasets/aitex/fabric00/train/good")
RECIPE_PARAMS: dict[str, Any] = {  # recipes/glassfiber.yaml, patchcore params
    "max_train_patches": 150000,
    "coreset_ratio": 0.03,
    "num_neighbors": 9,
    "mirror_pad": 32,
    "center_features": True,
}
METHODS = ("torch", "faiss", "faiss_ivf")


def load_images(folder: Path, limit: int) -> list[np.ndarray]:
    from station.imaging import read_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    return [read_image(p) for p in files[:limit]]


def query_images(train_dir: Path, n: int) -> list[np.ndarray]:
    """Half defect, half good tiles from the test/ folder beside train/good."""
    test = train_dir.parent.parent / "test"
    defect = load_images(test / "defect", n // 2) if (test / "defect").is_dir() else []
    return defect + load_images(test / "good", n - len(defect))


def interleaved(fns: dict[str, Any], reps: int) -> dict[str, float]:
    """Best-of-`reps` seconds per call of each function, timed in turn after one warm-up
    each: the least disturbed call, on a machine other processes share."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of good tiles")
    ap.add_argument("--train-images", type=int, default=224)
    ap.add_argument("--queries", type=int, default=16, help="test tiles for queries and recall")
    ap.add_argument("--threads", type=int, default=2, help="torch (and faiss) CPU threads")
    ap.add_argument("--reps", type=int, default=7, help="timed calls per method and size")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--cache", type=Path, default=None, help="fitted model file: reused if there")
    args = ap.parse_args(argv)

    import torch

    from station.detectors.common import to_batch
    from station.detectors.patchcore import PatchCore

    torch.set_num_threads(args.threads)
    queries = query_images(args.data, args.queries)
    det = PatchCore(device="cpu", knn="torch", **RECIPE_PARAMS)
    if args.cache and args.cache.is_file():
        det.load_state(torch.load(args.cache, weights_only=False))
        print(f"bank from {args.cache}")
        fit_extra: dict[str, Any] = {"from": str(args.cache)}
    else:
        t0 = time.perf_counter()
        fit_extra = det.fit(load_images(args.data, args.train_images)).extra
        print(f"fitted on {args.data} in {time.perf_counter() - t0:.0f} s")
        if args.cache:
            torch.save(det.state(), args.cache)
    model = det.model
    bank = model.memory_bank
    out: dict[str, Any] = {"bank": list(bank.shape), "fit": fit_extra, "threads": args.threads}
    # Index build, once per bank.
    build: dict[str, float] = {}
    for m in METHODS:
        model.knn = m
        t0 = time.perf_counter()
        model.knn_index()
        build[m] = time.perf_counter() - t0
    out["build_s"] = build
    # Quality against torch's exact search, over all query tiles.
    batch = to_batch(queries)
    n = batch.shape[0]
    hw = (int(batch.shape[-2]), int(batch.shape[-1]))
    with torch.no_grad():
        feats, grid = model.patch_features(batch)
        found: dict[str, tuple[Any, Any, Any]] = {}
        for m in METHODS:
            model.knn = m
            d, i = model.knn_index().search(feats, 1)
            _, scores = model.score(feats, n, grid, hw)
            found[m] = (d[:, 0], i[:, 0], scores)
    ref_d, ref_i, ref_s = found["torch"]
    quality = {
        m: {
            "recall_at_1": float((i == ref_i).float().mean()),
            "max_abs_distance_diff": float((d - ref_d).abs().max()),
            "max_rel_score_diff": float(((s - ref_s).abs() / ref_s.abs()).max()),
        }
        for m, (d, i, s) in found.items()
        if m != "torch"
    }
    out["quality"] = quality
    out["ivf_sweep"] = ivf_sweep(model, feats, grid, hw, ref_i, ref_s, grid[0] * grid[1] * 8)
    out["queries"] = {"images": n, "patches": int(feats.shape[0]), "grid": list(grid)}
    # The score step on 1 and 8 tiles' patch features, then predict end to end.
    per = grid[0] * grid[1]
    score_ms: dict[int, dict[str, float]] = {}
    predict_ips: dict[int, dict[str, float]] = {}
    for b in (1, 8):
        f = feats[: b * per]

        def score(m: str, f: Any = f, b: int = b) -> None:
            model.knn = m
            with torch.no_grad():
                model.score(f, b, grid, hw)

        def predict(m: str, b: int = b) -> None:
            model.knn = m
            det.predict(np.stack(queries[:b]))

        med = interleaved({m: (lambda m=m: score(m)) for m in METHODS}, args.reps)
        score_ms[b] = {m: v * 1000 for m, v in med.items()}
        med = interleaved({m: (lambda m=m: predict(m)) for m in METHODS}, max(3, args.reps // 2))
        predict_ips[b] = {m: b / v for m, v in med.items()}
    out["score_ms"], out["predict_images_per_s"] = score_ms, predict_ips
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def ivf_sweep(
    model: Any, feats: Any, grid: Any, hw: Any, ref_i: Any, ref_s: Any, n8: int
) -> list[dict[str, float]]:
    """The IVF index at several nprobe: recall@1 and image-score change against exact search
    over all query tiles, and ms to search 8 tiles' patches beside faiss's exact index."""
    import torch

    model.knn = "faiss"
    flat = model.knn_index()
    model.knn = "faiss_ivf"
    ivf = model.knn_index()
    default = ivf.index.nprobe
    rows = []
    for nprobe in (4, 8, 16, 32):
        ivf.index.nprobe = nprobe
        with torch.no_grad():
            _, i = ivf.search(feats, 1)
            _, s = model.score(feats, len(ref_s), grid, hw)
        med = interleaved(
            {"flat": lambda: flat.search(feats[:n8], 1), "ivf": lambda: ivf.search(feats[:n8], 1)},
            3,
        )
        rows.append(
            {
                "nprobe": nprobe,
                "nlist": ivf.nlist,
                "recall_at_1": float((i[:, 0] == ref_i).float().mean()),
                "max_rel_score_diff": float(((s - ref_s).abs() / ref_s.abs()).max()),
                "search8_ms": med["ivf"] * 1000,
                "flat_search8_ms": med["flat"] * 1000,
            }
        )
    ivf.index.nprobe = default
    return rows


def report(out: dict[str, Any]) -> None:
    print(f"bank {out['bank']}, {out['threads']} threads; queries {out['queries']}")
    print(
        "index build (once per bank): "
        + ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in out["build_s"].items())
    )
    for m, q in out["quality"].items():
        print(
            f"{m} vs torch: recall@1 {q['recall_at_1']:.4f}, max |distance diff| "
            f"{q['max_abs_distance_diff']:.2e}, max relative image-score diff "
            f"{q['max_rel_score_diff']:.2e}"
        )
    for r in out["ivf_sweep"]:
        print(
            f"faiss_ivf nprobe {r['nprobe']}/{r['nlist']}: recall@1 {r['recall_at_1']:.4f}, "
            f"max rel score diff {r['max_rel_score_diff']:.1e}, 8-tile search "
            f"{r['search8_ms']:.0f} ms vs exact faiss {r['flat_search8_ms']:.0f} ms"
        )
    print(
        f"{'tiles':>5} {'method':>10} {'score ms':>9} {'x torch':>8} {'predict img/s':>14} "
        f"{'x torch':>8}"
    )
    for b, ms in out["score_ms"].items():
        ips = out["predict_images_per_s"][b]
        for m in METHODS:
            print(
                f"{b:>5} {m:>10} {ms[m]:>9.1f} {ms['torch'] / ms[m]:>8.2f} {ips[m]:>14.2f} "
                f"{ips[m] / ips['torch']:>8.2f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
