"""Benchmark: native-resolution tiles against whole-shot resize, and PatchCore training time
by `train_tiles_per_image`, with the shipped glassfiber recipe's detector (PatchCore on
efficientnet_lite0, the recipe's params) on the CPU.

Shots are twin shots (640 x 512, the shipped recipe's camera) of good sheets, or a synthetic
weave with `--synthetic`. Everything runs in one process, so the printed ratios compare runs
on the same machine at the same time.

1. Inference, batch 16 through the one scoring engine: whole shots resized to 256 x 256
   (one detector input per shot) against native 256 x 256 tiles (overlap 32: 6 per shot),
   as detector inputs/s and shots/s, and the stitching overhead (maps kept vs not).
2. Training: fit time and coreset size on `--train-shots` shots with all tiles and with
   2/3/4 tiles drawn per shot (PatchCore's greedy coreset is O(N x M)).

    .venv/bin/python tools/bench_tiles.py [--train-shots 60] [--score-shots 32] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _recipe(tiling: bool, per_image: int | None = None) -> Any:
    from station.recipe import parse_recipe

    data = yaml.safe_load((REPO / "recipes" / "glassfiber.yaml").read_text())
    pre = data.setdefault("preprocess", {})
    pre["size"] = [256, 256]
    pre["tiling"] = {"enabled": tiling, "overlap_px": 32, "train_tiles_per_image": per_image}
    for det in data["detectors"]:
        det["device"] = "cpu"
    return parse_recipe(yaml.safe_dump(data), "bench.yaml")


def _shots(n: int, synthetic: bool, first_seed: int) -> list[np.ndarray]:
    """`n` raw 640 x 512 good shots: twin sheets (all their poses) or a synthetic weave."""
    if synthetic:
        out = []
        for i in range(n):
            rng = np.random.default_rng(first_seed + i)
            y, x = np.mgrid[0:512, 0:640].astype(np.float32)
            px, py = rng.uniform(0, 2 * np.pi, 2)
            img = 128 + 40 * np.sin(2 * np.pi * x / 9 + px) * np.sin(2 * np.pi * y / 9 + py)
            out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
        return out
    from station.twin import render_part_shots

    recipe, out, seed = _recipe(False), [], first_seed
    while len(out) < n:
        out += [img for _, img, _ in render_part_shots(recipe, seed, defective=False)]
        seed += 1
    return out[:n]


def _detector(recipe: Any) -> Any:
    from station.detectors.registry import create_detector, detector_kwargs

    return create_detector(recipe.detectors[0].name, **detector_kwargs(recipe.detectors[0], "cpu"))


def _fit(recipe: Any, shots: list[np.ndarray]) -> tuple[Any, float, int, dict[str, Any]]:
    """A detector fitted as `train_and_save` fits it: (detector, seconds, inputs, fit extra)."""
    from station.detectors.engine import training_tiles
    from station.imaging import preprocess

    images = [preprocess(s, recipe.preprocess) for s in shots]
    det = _detector(recipe)
    if recipe.preprocess.tiling.enabled:
        images = training_tiles(images, recipe.preprocess, int(det.config().get("seed", 0)))
    t0 = time.perf_counter()
    report = det.fit(images)
    return det, time.perf_counter() - t0, len(images), dict(report.extra)


def _score(recipe: Any, det: Any, shots: list[np.ndarray], keep_maps: bool) -> float:
    """Seconds to prepare and score `shots` through the engine, batch 16 (best of 2)."""
    from station.detectors.engine import ScoringEngine

    engine = ScoringEngine({"patchcore": det}, recipe.preprocess, batch_size=16)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        engine.score([engine.prepare(s) for s in shots], keep_maps=keep_maps)
        best = min(best, time.perf_counter() - t0)
    return best


def inference(args: argparse.Namespace, train: list[np.ndarray], test: list[np.ndarray]) -> dict:
    from station.geometry.tiling import cut, stitch, tile_grid

    out: dict[str, Any] = {}
    for mode, tiled in (("resize", False), ("tiles", True)):
        recipe = _recipe(tiled)
        det, fit_s, n_in, _ = _fit(recipe, train[: args.fit_shots])
        per_shot = len(tile_grid(512, 640, (256, 256), 32)) if tiled else 1
        secs = _score(recipe, det, test, keep_maps=True)
        secs_nomap = _score(recipe, det, test, keep_maps=False)
        out[mode] = {
            "inputs_per_shot": per_shot,
            "inputs_per_s": round(len(test) * per_shot / secs, 2),
            "shots_per_s": round(len(test) / secs, 3),
            "ms_per_shot": round(1000 * secs / len(test), 1),
            "ms_per_shot_no_maps": round(1000 * secs_nomap / len(test), 1),
        }
        print(f"{mode:7s} {out[mode]}  (fitted on {n_in} inputs in {fit_s:.1f} s)", flush=True)
    grid = tile_grid(512, 640, (256, 256), 32)
    maps = cut(np.random.default_rng(0).random((512, 640), np.float32), grid)
    t0 = time.perf_counter()
    for _ in range(50):
        stitch(maps, grid)
    out["stitch_ms_per_shot"] = round(1000 * (time.perf_counter() - t0) / 50, 2)
    r, t = out["resize"], out["tiles"]
    out["ratio_tiles_inputs_per_s_vs_resize"] = round(t["inputs_per_s"] / r["inputs_per_s"], 3)
    out["ratio_tiles_shot_time_vs_resize"] = round(t["ms_per_shot"] / r["ms_per_shot"], 3)
    out["stitch_share_of_tiled_shot"] = round(out["stitch_ms_per_shot"] / t["ms_per_shot"], 4)
    return out


def training(args: argparse.Namespace, train: list[np.ndarray]) -> dict:
    out: dict[str, Any] = {}
    for per_image in (None, 2, 3, 4):
        _, secs, n_in, extra = _fit(_recipe(True, per_image), train)
        key = "all" if per_image is None else str(per_image)
        bank = {
            k: v
            for k, v in extra.items()
            if k in ("bank_size", "patches_pooled", "coreset_seconds")
        }
        out[key] = {"tiles": n_in, "fit_s": round(secs, 1), **bank}
        print(f"train tiles/shot {key:3s}: {out[key]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-shots", type=int, default=60, help="10 sheets x 6 shots")
    ap.add_argument("--fit-shots", type=int, default=12, help="shots fitted for part 1")
    ap.add_argument("--score-shots", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true", help="a synthetic weave, not the twin")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train = _shots(args.train_shots, args.synthetic, 1000)
    test = _shots(args.score_shots, args.synthetic, 5000)
    print(f"{len(train)} + {len(test)} shots 640 x 512 in {time.perf_counter() - t0:.1f} s")
    res: dict[str, Any] = {"threads": args.threads, "synthetic": args.synthetic}
    res["inference"] = inference(args, train, test)
    if not args.skip_training:
        res["training"] = training(args, train)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
