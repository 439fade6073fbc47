"""Benchmark: cycle time per part with pipelining off and on, on the same twin parts.

Runs the live inspection cycle on the digital twin (robot and camera timing at `--time-scale`
of real time) twice over the same sequence of sheets (same twin seed): first with every step
in turn (`pipelined=False`), then with inference overlapping the robot's moves
(`pipelined=True`). Prints the mean per-part breakdown (motion, exposure, inference, logging,
line, wait, cycle), throughput, and the ratio of the mean cycle times.

Detector: by default the shipped recipe's PatchCore (its backbone and settings) trained here
on a few good twin sheets. Its threshold is the highest score of those training images: a
stand-in so that the decision path runs, NOT a calibration, and verdicts are not what this
benchmark measures. `--home DIR` instead uses the trained artifacts and calibration
of an existing station home.

    .venv/bin/python tools/bench_cycle.py --parts 8 --time-scale 1.0 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
KEYS = ("motion", "exposure", "inference", "starved", "logging", "line", "wait", "cycle")


def _recipe(home: Path, args: argparse.Namespace) -> Any:
    from station.recipe import parse_recipe

    data = yaml.safe_load((REPO / "recipes" / "glassfiber.yaml").read_text())
    data["twin"]["time_scale"] = args.time_scale
    data["storage"] = {"database_url": f"sqlite:///{home}/data/station.db", "data_dir": "data"}
    for det in data["detectors"]:
        det["device"] = args.device
    text = yaml.safe_dump(data)
    (home / "recipes").mkdir(parents=True, exist_ok=True)
    poses = data["robot"].get("poses_file")
    if poses:  # the planned poses travel with the recipe
        shutil.copy(REPO / "recipes" / poses, home / "recipes" / poses)
    path = home / "recipes" / "glassfiber.yaml"
    path.write_text(text)
    return parse_recipe(text, str(path))


def _bench_detectors(recipe: Any, args: argparse.Namespace) -> Any:
    """A PatchCore trained on good twin sheets, threshold = max training score (see above)."""
    from station.detectors.engine import training_tiles
    from station.detectors.registry import create_detector
    from station.imaging import preprocess
    from station.inspection.models import DetectorSet, LoadedDetector
    from station.twin import render_part_shots

    cfg = recipe.detectors[0]
    images = [
        preprocess(img, recipe.preprocess)
        for seed in range(1000, 1000 + args.train_parts)
        for _, img, _ in render_part_shots(recipe, seed, defective=False)
    ]
    if recipe.preprocess.tiling.enabled:  # cut as `station train` does
        images = list(training_tiles(images, recipe.preprocess, seed=0))
    t0 = time.perf_counter()
    det = create_detector(
        cfg.name, backbone=cfg.backbone, weights=cfg.weights, device=cfg.device, **cfg.params
    )
    det.fit(images)
    fit_s = time.perf_counter() - t0
    scores = np.concatenate(
        [det.predict(np.stack(images[s : s + 16])).scores for s in range(0, len(images), 16)]
    )
    threshold = float(np.max(scores))
    print(
        f"trained {cfg.name} on {len(images)} good twin inputs in {fit_s:.1f} s; "
        f"bench threshold {threshold:.4g} (max training score, not a calibration)"
    )
    return DetectorSet(
        detectors=[LoadedDetector(cfg.name, det, f"{cfg.name}-bench", threshold)],
        preprocess_cfg=recipe.preprocess,
        calibration_label="bench threshold",
    )


def _run(recipe: Any, detectors: Any, db: Any, pipelined: bool, args: argparse.Namespace) -> Any:
    from station.devices.factory import open_devices
    from station.inspection.cycle import Inspector
    from station.inspection.recorder import Recorder
    from station.twin.world import TwinWorld

    world = TwinWorld(recipe, seed=args.seed)
    with (
        open_devices(recipe, world=world) as dev,
        Inspector(recipe, detectors, Recorder(db, recipe), dev, pipelined=pipelined) as insp,
    ):
        return insp.run_live(count=args.parts)


def _tiled(recipe: Any) -> bool:
    return bool(recipe.preprocess.tiling.enabled)


def _inputs_per_part(recipe: Any) -> int:
    """Detector inputs per part: tiles per shot (or 1) times shots."""
    if not _tiled(recipe):
        return len(recipe.robot.poses)
    from station.detectors.engine import tiles_of

    pre = recipe.preprocess
    w, h = (pre.crop[2], pre.crop[3]) if pre.crop else (recipe.camera.width, recipe.camera.height)
    return len(tiles_of((h, w), pre, "the shot")) * len(recipe.robot.poses)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=6, help="parts per mode")
    ap.add_argument("--time-scale", type=float, default=1.0, help="twin timing (1 = real)")
    ap.add_argument("--device", default="auto", help="detector device: auto | cpu | cuda")
    ap.add_argument("--train-parts", type=int, default=4, help="good twin parts to train on")
    ap.add_argument("--seed", type=int, default=7, help="twin seed: the sheet sequence")
    ap.add_argument(
        "--home", type=Path, help="use this station home's trained models (and their device)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from station.inspection.models import load_detector_set
    from station.storage.db import open_database

    tmp = Path(tempfile.mkdtemp(prefix="bench_cycle_"))
    try:
        if args.home:
            os.environ["STATION_HOME"] = str(args.home.resolve())
            from station.recipe import load_recipe

            recipe = load_recipe("glassfiber")
            # the home's models and calibration; parts go to a scratch database and folder
            scratch = f"sqlite:///{tmp}/bench.db"
            detectors = load_detector_set(recipe, open_database(scratch))
            recipe = recipe.model_copy(
                update={
                    "twin": recipe.twin.model_copy(update={"time_scale": args.time_scale}),
                    "storage": recipe.storage.model_copy(
                        update={"database_url": scratch, "data_dir": str(tmp)}
                    ),
                }
            )
        else:
            os.environ["STATION_HOME"] = str(tmp)
            recipe = _recipe(tmp, args)
            detectors = _bench_detectors(recipe, args)
        db = open_database(recipe.storage.resolved_database_url())
        # warm-up: first-call costs (allocations, kernels) out of the measurement
        from station.twin import render_part_shots

        for _, img, _ in render_part_shots(recipe, 1)[:2]:
            detectors.score(img)

        results: dict[str, Any] = {}
        verdicts: dict[str, list[str]] = {}
        scores: dict[str, list[float | None]] = {}
        for name, pipelined in (("sequential", False), ("pipelined", True)):
            summary = _run(recipe, detectors, db, pipelined, args)
            if summary.counts.get("fault"):
                faults = [r.reason for r in summary.results if r.fault]
                print(f"{name}: faults during the benchmark: {faults}", file=sys.stderr)
                return 1
            mean = summary.mean_timings()
            results[name] = {
                **{k: round(mean.get(k, 0.0), 1) for k in KEYS},
                "parts": summary.parts,
                "parts_per_hour": round(summary.throughput_per_hour, 1),
            }
            verdicts[name] = [r.verdict.value for r in summary.results]
            scores[name] = [r.part_score for r in summary.results]
        db.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    import torch

    dev = detectors.detectors[0].detector
    device = str(getattr(dev, "device", "?"))
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else ""
    print(
        f"\n{args.parts} parts per mode, {len(recipe.robot.poses)} poses, twin time scale "
        f"{args.time_scale}, camera {recipe.camera.width}x{recipe.camera.height}, detector "
        f"input {recipe.preprocess.size[0]}x{recipe.preprocess.size[1]}, device {device} {gpu}"
    )
    print(f"{'mean ms per part':<18}" + "".join(f"{k:>11}" for k in KEYS) + f"{'parts/h':>10}")
    for name, row in results.items():
        print(
            f"{name:<18}"
            + "".join(f"{row[k]:>11.1f}" for k in KEYS)
            + f"{row['parts_per_hour']:>10.1f}"
        )
    ratio = results["sequential"]["cycle"] / results["pipelined"]["cycle"]
    print(f"cycle time ratio sequential / pipelined: {ratio:.2f}")
    inputs = _inputs_per_part(recipe)
    for name, row in results.items():
        rate = inputs / (row["inference"] / 1000.0) if row["inference"] else float("nan")
        row["detector_inputs_per_part"] = inputs
        row["inputs_per_s"] = round(rate, 2)
        print(
            f"{name}: {inputs} detector inputs per part ({'tiles' if _tiled(recipe) else 'shots'}"
            f"), {rate:.1f} per second of inference; inference starved (waiting for motion "
            f"and exposure) {row['starved'] / 1000:.2f} s per part"
        )
    # the same parts, so the same scores to float precision; verdicts alone would hold
    # trivially when every part passes or every part fails
    a, b = (np.array(scores[k], dtype=float) for k in ("sequential", "pipelined"))
    same = verdicts["sequential"] == verdicts["pipelined"] and bool(
        np.allclose(a, b, rtol=1e-5, equal_nan=True)
    )
    mix = dict(Counter(verdicts["sequential"]))
    print(f"same scores and verdicts on the same parts: {'yes' if same else 'NO'} ({mix})")
    if len(mix) < 2:
        print("note: every part got one verdict: the verdicts say little; the scores still count")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": results,
                    "ratio": round(ratio, 3),
                    "same_verdicts": same,
                    "verdicts": verdicts,
                    "part_scores": scores,
                    "device": device,
                    "gpu": gpu,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=2,
            )
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
