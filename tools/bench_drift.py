"""Benchmark: drift alarms on the twin: a dimming lamp, a lens losing focus, a stable line.

What is real and what is not:
- Image statistics are measured on real twin renders (the shipped recipe's camera and
  lighting, `--poses` of its planned poses, each part a new sheet from the twin's line with
  the recipe's defect rate), through the same `image_stats` and `DriftMonitor` as
  `station inspect`, with the recipe's `monitoring.drift` settings.
- The baseline is the image statistics of `--baseline` good sheets (as a calibration's passed
  good parts give it), rendered apart from the runs.
- Scenarios: `stable` (`--stable` parts, nothing changes), `lamp` (twin.params.lamp_dim: 15 %
  dimmer over 200 parts, from part `--start`), `defocus` (twin.params.defocus: blur sigma
  growing to `--defocus-px` over 200 parts). Each changing scenario is run on `--reps` line
  seeds, `--after` parts past the start at most.
- No detector runs here: the score charts are not exercised (see docs/monitoring.md).

Renders are cached in `--cache` (one .npz per scenario and seed), so changing the chart
settings re-evaluates without rendering again.

    .venv/bin/python tools/bench_drift.py [--stable 1000] [--reps 4] [--poses 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _recipe(params: dict[str, Any], poses: int) -> Any:
    from station.recipe import load_recipe

    r = load_recipe(str(REPO / "recipes" / "glassfiber.yaml"))
    idx = np.linspace(0, len(r.robot.poses) - 1, poses).round().astype(int)
    robot = r.robot.model_copy(update={"poses": [r.robot.poses[i] for i in idx]})
    twin = r.twin.model_copy(update={"params": {**r.twin.params, **params}, "time_scale": 0.0})
    return r.model_copy(update={"robot": robot, "twin": twin})


def render_stats(recipe: Any, seed: int, parts: int, defective: bool | None) -> dict[str, Any]:
    """Per part: each pose's image statistics, and whether the sheet had a defect."""
    from station.monitoring.imagestats import image_stats
    from station.twin.world import TwinWorld, pose_tcp

    world = TwinWorld(recipe, seed=seed)
    names = [p.name for p in recipe.robot.poses]
    rows, defect = [], []
    t0 = time.perf_counter()
    for i in range(parts):
        if defective is not None:
            world.queue_sheet(world.part_seed(i + 1), defective)
        spec, _ = world.next_sheet()
        vals = {}
        for k, pose in enumerate(recipe.robot.poses):
            shot = world.render(pose_tcp(pose), noise_seed=[spec.seed, 7, k])
            for stat, v in image_stats(shot.image).items():
                vals[f"{stat} {names[k]}"] = v
        rows.append(vals)
        defect.append(bool(spec.defects))
    return {"rows": rows, "defect": defect, "s_per_part": (time.perf_counter() - t0) / parts}


def _cached(cache: Path, key: str, make: Any) -> dict[str, Any]:
    path = cache / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = make()
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def run_charts(recipe: Any, baseline: dict[str, Any], run: dict[str, Any]) -> list[Any]:
    """Feed a run through a fresh DriftMonitor; the alarms with the part number raising them."""
    from station.monitoring.drift import Baseline, DriftMonitor
    from station.storage.alarms import PartPoint

    vals: dict[str, list[float]] = {}
    for row in baseline["rows"]:
        for k, v in row.items():
            vals.setdefault(k, []).append(v)
    base = {k: Baseline(float(np.mean(v)), float(np.std(v, ddof=1)), len(v), "bench")
            for k, v in vals.items()}
    mon = DriftMonitor(recipe.name, recipe.monitoring.drift, base)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    alarms = []
    for i, row in enumerate(run["rows"], start=1):
        verdict = "fail" if run["defect"][i - 1] else "pass"
        for a in mon.add(PartPoint(i, i, t0, verdict, row)):
            alarms.append((i, a))
    return alarms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stable", type=int, default=1000)
    ap.add_argument("--baseline", type=int, default=30)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--poses", type=int, default=4)
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--after", type=int, default=120)
    ap.add_argument("--defocus-px", type=float, default=1.5)
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "bench_drift")
    ap.add_argument("--only", choices=["stable", "lamp", "defocus"], default=None)
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    plain = _recipe({}, args.poses)
    cfg = plain.monitoring.drift
    print(f"settings: EWMA lambda {cfg.ewma_lambda}, L {cfg.ewma_l}; CUSUM k {cfg.cusum_k}, "
          f"h {cfg.cusum_h}; clip {cfg.clip}; {args.poses} poses x 3 statistics")
    tag = f"p{args.poses}"
    base = _cached(args.cache, f"baseline-{tag}-{args.baseline}",
                   lambda: render_stats(plain, 1001, args.baseline, False))
    print(f"baseline: {args.baseline} good sheets, {base['s_per_part']:.2f} s per part to render")
    ramp = {"start_part": args.start, "parts": 200}
    scen = {
        "lamp": {"lamp_dim": {**ramp, "to": 0.85}},
        "defocus": {"defocus": {**ramp, "to_px": args.defocus_px}},
    }
    if args.only in (None, "stable"):
        run = _cached(args.cache, f"stable-{tag}-{args.stable}",
                      lambda: render_stats(plain, 2001, args.stable, None))
        alarms = run_charts(plain, base, run)
        print(f"stable: {args.stable} parts ({sum(run['defect'])} with a defect), "
              f"{len(alarms)} alarm(s)")
        for i, a in alarms:
            print(f"  part {i}: {a.message}")
    for name, params in scen.items():
        if args.only not in (None, name):
            continue
        r = _recipe(params, args.poses)
        delays = []
        for rep in range(args.reps):
            run = _cached(args.cache, f"{name}-{tag}-{args.start}-{args.after}-{rep}"
                          + (f"-{args.defocus_px}" if name == "defocus" else ""),
                          lambda r=r, rep=rep: render_stats(r, 3001 + rep,
                                                            args.start + args.after, None))
            alarms = run_charts(r, base, run)
            first = alarms[0] if alarms else None
            delay = first[0] - args.start if first else None
            delays.append(delay)
            print(f"{name} seed {3001 + rep}: " + (
                f"first alarm at part {first[0]} (delay {delay}): {first[1].message}"
                if first else f"no alarm within {args.after} parts of the start"))
        found = [d for d in delays if d is not None]
        print(f"{name}: delays {delays}; median {np.median(found) if found else 'n/a'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
