"""Benchmark: drift alarms on the twin: a dimming lamp, a lens losing focus, a stable line.

What is real and what is not:
- Image statistics are measured on real twin renders (the shipped recipe's camera and
  lighting, `--poses` of its planned poses, each part a new sheet from the twin's line with
  the recipe's defect rate), through the same `image_stats`, `card_stats` and `DriftMonitor`
  as `station inspect`, with the recipe's `monitoring.drift` settings.
- The reference card (monitoring.drift.reference, switched on here at the shipped recipe's
  position) is rendered by the twin from its own pose for every part, with the lamp's
  shot-to-shot jitter (`--jitter`, twin.params.lamp_jitter). Its limits come from a warm-up,
  as live: its first `reference.warmup_parts` card shots (card only: the sheet charts start
  after them), then the run.
- The sheet signals' baseline is the image statistics of `--baseline` good sheets (default:
  the recipe's `min_baseline_parts`, as a calibration's passed good parts give it), rendered
  apart from the runs.
- Scenarios: `stable` (`--stable` parts, nothing changes), `lamp` (twin.params.lamp_dim: 15 %
  dimmer over 200 parts, from part `--start` after the warm-up), `defocus` (twin.params.defocus:
  blur sigma growing to `--defocus-px` over 200 parts). Each changing scenario is run on
  `--reps` line seeds with sheets and card, `--after` parts past the start at most; `lamp` also
  on `--card-reps` further seeds with the card alone (every chart but the card's is far too
  wide to signal first, see docs/monitoring.md).
- No detector runs here: the score charts are not exercised (see docs/monitoring.md).

Renders are cached in `--cache` (one .json per scenario and seed), so changing the chart
settings re-evaluates without rendering again.

    .venv/bin/python tools/bench_drift.py [--stable 1000] [--reps 4] [--poses 2]
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
    drift = r.monitoring.drift
    drift = drift.model_copy(update={"reference": drift.reference.model_copy(
        update={"enabled": True})})
    mon = r.monitoring.model_copy(update={"drift": drift})
    return r.model_copy(update={"robot": robot, "twin": twin, "monitoring": mon})


def _shifted(params: dict[str, Any], by: int) -> dict[str, Any]:
    """Ageing params with their start moved `by` parts later (the card's warm-up first)."""
    return {k: {**v, "start_part": v["start_part"] + by} if isinstance(v, dict) else v
            for k, v in params.items()}


def render_card(recipe: Any, seed: int, parts: int) -> dict[str, Any]:
    """Per part 1..parts: the reference card's statistics (the twin's card shot)."""
    from station.inspection.drift_hook import reference_boxes
    from station.monitoring.reference import card_stats
    from station.recipe import card_pose
    from station.twin.robot import REPEATABILITY_MM
    from station.twin.world import TwinWorld, pose_tcp

    world = TwinWorld(recipe, seed=seed)
    boxes = reference_boxes(recipe)
    tcp = pose_tcp(card_pose(recipe))
    rng = np.random.default_rng([seed, 5])
    rows = []
    t0 = time.perf_counter()
    for i in range(1, parts + 1):
        world.sheets_presented = i  # the line's part count: what the lamp's ageing follows
        at = tcp.copy()
        at[:3] += rng.normal(0, REPEATABILITY_MM / 3, 3)  # where the robot really stops
        stats = card_stats(world.render(at).image, *boxes)
        rows.append({f"{k} card": v for k, v in stats.items()})
    return {"rows": rows, "s_per_part": (time.perf_counter() - t0) / max(parts, 1)}


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


def run_charts(recipe: Any, baseline: dict[str, Any], run: dict[str, Any] | None,
               card: dict[str, Any]) -> list[Any]:
    """Feed a run through a fresh DriftMonitor: first the card's warm-up parts (card values
    only), then each part's sheet and card values. The alarms with the run's part number
    raising them (1 = the first part after the warm-up)."""
    from station.monitoring.drift import Baseline, DriftMonitor
    from station.storage.alarms import PartPoint

    vals: dict[str, list[float]] = {}
    for row in baseline["rows"]:
        for k, v in row.items():
            vals.setdefault(k, []).append(v)
    base = {k: Baseline(float(np.mean(v)), float(np.std(v, ddof=1)), len(v), "bench")
            for k, v in vals.items()}
    cfg = recipe.monitoring.drift
    mon = DriftMonitor(recipe.name, cfg, base)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    warm = cfg.reference.warmup_parts
    alarms = []
    for i, crow in enumerate(card["rows"], start=1):
        n = i - warm  # the run's part number
        row = dict(crow)
        verdict = "pass"
        if n >= 1 and run is not None:
            row.update(run["rows"][n - 1])
            verdict = "fail" if run["defect"][n - 1] else "pass"
        for a in mon.add(PartPoint(i, i, t0, verdict, row)):
            alarms.append((n, a))
    return alarms


def _first(alarms: list[Any], after: int) -> tuple[int, Any] | None:
    late = [(n, a) for n, a in alarms if n > after]
    return late[0] if late else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stable", type=int, default=1000)
    ap.add_argument("--baseline", type=int, default=None,
                    help="good sheets of the sheet baseline (default: min_baseline_parts)")
    ap.add_argument("--stable-baselines", type=int, default=1,
                    help="evaluate the stable run with this many baselines and card seeds")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--card-reps", type=int, default=12)
    ap.add_argument("--poses", type=int, default=2)
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--after", type=int, default=60)
    ap.add_argument("--defocus-px", type=float, default=1.5)
    ap.add_argument("--jitter", type=float, default=0.005, help="twin.params.lamp_jitter")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "bench_drift")
    ap.add_argument("--only", choices=["stable", "lamp", "defocus"], default=None)
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    jit = {"lamp_jitter": args.jitter}
    plain = _recipe(jit, args.poses)
    cfg = plain.monitoring.drift
    ref = cfg.reference
    warm = ref.warmup_parts
    args.baseline = args.baseline or cfg.min_baseline_parts
    print(f"sheet and score charts: EWMA lambda {cfg.ewma_lambda}, L {cfg.ewma_l}; CUSUM k "
          f"{cfg.cusum_k}, h {cfg.cusum_h}; card charts: EWMA {ref.ewma_lambda}, "
          f"L {ref.ewma_l}; CUSUM k {ref.cusum_k}, h {ref.cusum_h}; clip {cfg.clip}")
    print(f"signals: {args.poses} sheet poses x 3 statistics + 3 card statistics; card "
          f"warm-up {warm} parts; lamp jitter {args.jitter:g}")
    tag = f"p{args.poses}"
    base = _cached(args.cache, f"baseline-{tag}-{args.baseline}",
                   lambda: render_stats(plain, 1001, args.baseline, False))
    print(f"sheet baseline: {args.baseline} good sheets")

    def card(r: Any, name: str, seed: int, parts: int) -> dict[str, Any]:
        return _cached(args.cache, f"card-{name}-{seed}-{parts}-j{args.jitter:g}",
                       lambda: render_card(r, seed, parts))

    if args.only in (None, "stable"):
        run = _cached(args.cache, f"stable-{tag}-{args.stable}",
                      lambda: render_stats(plain, 2001, args.stable, None))
        for b in range(args.stable_baselines):
            # another calibration (other good sheets) and another card warm-up and run
            base_b = base if b == 0 else _cached(
                args.cache, f"baseline-{tag}-{args.baseline}-s{1001 + b}",
                lambda b=b: render_stats(plain, 1001 + b, args.baseline, False))
            c = card(plain, "stable", 2001 + b, warm + args.stable)
            alarms = run_charts(plain, base_b, run, c)
            print(f"stable: {args.stable} parts ({sum(run['defect'])} with a defect) after the "
                  f"card's warm-up, sheet baseline seed {1001 + b}, card seed {2001 + b}: "
                  f"{len(alarms)} alarm(s)")
            for n, a in alarms:
                print(f"  part {n}: {a.message}")
    ramp = {"start_part": args.start, "parts": 200}
    scen = {
        "lamp": {"lamp_dim": {**ramp, "to": 0.85}},
        "defocus": {"defocus": {**ramp, "to_px": args.defocus_px}},
    }
    for name, params in scen.items():
        if args.only not in (None, name):
            continue
        r_sheet = _recipe({**jit, **params}, args.poses)
        r_card = _recipe({**jit, **_shifted(params, warm)}, args.poses)
        reps = args.reps + (args.card_reps if name == "lamp" else 0)
        delays, early = [], 0
        print(f"| {name} seed | sheets rendered | first alarm (delay) | by signal |")
        print("|---|---|---|---|")
        for rep in range(reps):
            seed = 3001 + rep
            run = None
            if rep < args.reps:
                run = _cached(args.cache, f"{name}-{tag}-{args.start}-{args.after}-{rep}"
                              + (f"-{args.defocus_px}" if name == "defocus" else ""),
                              lambda rep=rep, r=r_sheet: render_stats(r, 3001 + rep,
                                                           args.start + args.after, None))
            c = card(r_card, f"{name}-{args.start}" + (
                f"-{args.defocus_px}" if name == "defocus" else ""), seed,
                warm + args.start + args.after)
            alarms = run_charts(r_card, base, run, c)
            early += sum(1 for n, _ in alarms if n <= args.start)
            first = _first(alarms, args.start)
            delay = first[0] - args.start if first else None
            delays.append(delay)
            per: dict[str, int] = {}
            for n, a in alarms:
                if n > args.start:
                    per.setdefault(a.signal, n - args.start)
            print(f"| {seed} | {'yes' if run else 'no (card only)'} | " + (
                f"{delay} ({first[1].signal}, {first[1].chart})" if first
                else f"none in {args.after}") + " | "
                + ", ".join(f"{k} {v}" for k, v in sorted(per.items(), key=lambda x: x[1]))
                + " |")
        found = sorted(d for d in delays if d is not None)
        print(f"{name}: delays {delays}; median {np.median(found) if found else 'n/a'}, "
              f"max {max(found) if found else 'n/a'}; {len(found)}/{len(delays)} flagged; "
              f"alarms before the start: {early}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
