"""Design of the placement watch (station.monitoring.placement): its false alarms on a stable
line and its warning ahead of the first misplaced sheet on a creeping one.

Sheets are placed as the twin's line places them (TwinWorld.make_sheet: centre and angle, no
rendering); each side's reach past the recipe's region comes from the true corners plus the
edge fit's scatter (`--edge-sd-mm`, normal). The watch itself (PlacementWatch, with the
recipe's `monitoring.drift.placement`, or `--window` / `--min-cpk`) judges the parts in order.

- stable: `--runs` runs of `--parts` sheets each; the share of runs with any alarm, and the
  sheets truly past the tolerance (those the station faults as misplaced).
- creep: the line's stops move the sheets by `--creep-mm` per 100 sheets in +x from the first;
  per run the sheet at which the watch alarms, and the first sheet truly past the tolerance.
- capture (`--capture N ...`): what `station capture` would say of N captured sheets, `--runs`
  times: the margin holds, likely holds, or a warning.

    .venv/bin/python tools/design_placement_watch.py --recipe glassfiber
    .venv/bin/python tools/design_placement_watch.py --recipe glassfiber --margin-mm 3
    .venv/bin/python tools/design_placement_watch.py --runs 2000 --parts 10 --creep-mm \
        --capture 12 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from station.calibration.recipes import load_recipe  # noqa: E402
from station.geometry.coverage import placement_tolerance_mm, region_rect  # noqa: E402
from station.geometry.placement import SIDES, side_reach  # noqa: E402
from station.monitoring.placement import (  # noqa: E402
    PlacementWatch,
    capability,
    margin_verdict,
)
from station.storage.alarms import PLACEMENT_PREFIX, PartPoint  # noqa: E402
from station.twin.world import TwinWorld  # noqa: E402


def sheets(recipe, n: int, seed: int) -> list:  # noqa: ANN001
    """n sheets of the twin's line (their specs: centre, angle, size; nothing rendered)."""
    world = TwinWorld(recipe, seed=seed)
    return [world.make_sheet(world.part_seed(i)) for i in range(n)]


def reach(spec, recipe, dx: float = 0.0) -> dict[str, float]:  # noqa: ANN001
    """How far the sheet, moved by dx in x, reaches past each side of the region (mm)."""
    if dx:
        spec = dataclasses.replace(spec, centre_mm=(spec.centre_mm[0] + dx, spec.centre_mm[1]))
    return side_reach(spec.corners_mm(), region_rect(recipe))


def run(recipe, watch_cfg, specs, creep, edge_sd, rng) -> tuple[int | None, int | None]:  # noqa: ANN001
    """(first sheet the watch alarms on, first sheet truly past the tolerance); 1-based.
    `creep`: mm per 100 sheets in +x."""
    tol = placement_tolerance_mm(recipe)
    watch = PlacementWatch(recipe.name, tol, watch_cfg)
    alarm = past = None
    at = datetime.now(UTC)
    for i, spec in enumerate(specs):
        true = reach(spec, recipe, creep * i / 100.0)
        if past is None and max(true.values()) > tol:
            past = i + 1
        seen = {PLACEMENT_PREFIX + k: v + rng.normal(0, edge_sd) for k, v in true.items()}
        if watch.add(PartPoint(i + 1, i + 1, at, "pass", seen)) and alarm is None:
            alarm = i + 1
        if alarm is not None and past is not None:
            break
    return alarm, past


def capture_states(recipe, n: int, runs: int, edge_sd: float, rng) -> dict[str, float]:  # noqa: ANN001
    """Shares of `runs` captures of n sheets that `station capture` reports as: the margin
    holds (every side's 95 % bound at min Cpk), likely holds (each Cpk at it), or a warning."""
    min_cpk = recipe.monitoring.drift.placement.min_cpk
    tol = placement_tolerance_mm(recipe)
    states = {"holds": 0, "likely": 0, "warning": 0}
    for k in range(runs):
        each = [reach(s, recipe) for s in sheets(recipe, n, 7_000_000 + k)]
        caps = [capability(side, [e[side] + rng.normal(0, edge_sd) for e in each], tol)
                for side in SIDES]
        states[margin_verdict(caps, min_cpk)] += 1
    return {k: v / runs for k, v in states.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--margin-mm", type=float, help="coverage.edge_margin_mm (default: recipe's)")
    ap.add_argument("--window", type=int, help="monitoring.drift.placement.window_parts")
    ap.add_argument("--min-cpk", type=float, help="monitoring.drift.placement.min_cpk")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--parts", type=int, default=1000, help="sheets per stable run")
    ap.add_argument("--creep-mm", type=float, nargs="*", default=[0.5, 1.0, 2.0],
                    help="creep runs: mm per 100 sheets")
    ap.add_argument("--edge-sd-mm", type=float, default=0.15)
    ap.add_argument("--capture", type=int, nargs="*", default=[],
                    help="also: what `station capture` says of N captured sheets (per N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    if args.margin_mm is not None:
        recipe = recipe.model_copy(update={"coverage": recipe.coverage.model_copy(
            update={"edge_margin_mm": args.margin_mm})})
    cfg = recipe.monitoring.drift.placement
    cfg = cfg.model_copy(update={k: v for k, v in (("window_parts", args.window),
                                                    ("min_cpk", args.min_cpk)) if v is not None})
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    out: dict = {"recipe": recipe.name, "margin_mm": recipe.coverage.edge_margin_mm,
                 "tolerance_mm": placement_tolerance_mm(recipe), "window": cfg.window_parts,
                 "min_cpk": cfg.min_cpk, "edge_sd_mm": args.edge_sd_mm}
    alarmed, past_sheets, total = 0, 0, 0
    tol = placement_tolerance_mm(recipe)
    for r in range(args.runs):
        specs = sheets(recipe, args.parts, args.seed * 100_003 + r)
        alarm, _ = run(recipe, cfg, specs, 0.0, args.edge_sd_mm, rng)
        alarmed += alarm is not None
        past_sheets += sum(max(reach(s, recipe).values()) > tol for s in specs)
        total += args.parts
    out["stable"] = {"runs": args.runs, "parts": args.parts, "runs_with_alarm": alarmed,
                     "sheets_past_tolerance": past_sheets, "sheets": total}
    print(f"{recipe.name}: margin {recipe.coverage.edge_margin_mm:g} mm, tolerance {tol:g} mm, "
          f"window {cfg.window_parts}, min Cpk {cfg.min_cpk:g}, edge sd {args.edge_sd_mm:g} mm")
    print(f"stable line: {alarmed} of {args.runs} runs of {args.parts} sheets alarmed; "
          f"{past_sheets} of {total} sheets truly past the tolerance")
    out["creep"] = []
    for creep in args.creep_mm:
        rows = []
        for r in range(args.runs):
            specs = sheets(recipe, args.parts, args.seed * 100_003 + 50_000 + r)
            rows.append(run(recipe, cfg, specs, creep, args.edge_sd_mm, rng))
        lead = [p - a for a, p in rows if a is not None and p is not None]
        late = sum(1 for a, p in rows if p is not None and (a is None or a > p))
        alarms = [a for a, _ in rows if a is not None]
        out["creep"].append({"mm_per_100": creep, "runs": rows, "lead": lead, "late": late})
        if alarms and lead:
            print(f"creep {creep:g} mm per 100 sheets: alarm at sheet {int(np.median(alarms))} "
                  f"(median; {min(alarms)}-{max(alarms)}), {int(np.median(lead))} sheets before "
                  f"the first misplaced one (median; least {min(lead)}); after it in {late} of "
                  f"{args.runs} runs")
        else:
            print(f"creep {creep:g} mm per 100 sheets: {len(alarms)} alarms, {late} late")
    out["capture"] = {}
    for n in args.capture:
        got = capture_states(recipe, n, args.runs, args.edge_sd_mm, rng)
        out["capture"][n] = got
        print(f"capture of {n} sheets, {args.runs} times: " + ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in got.items()))
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
