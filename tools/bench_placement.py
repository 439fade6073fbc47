"""Benchmark: the placement check (sheet.check_placement) on twin sheets.

Each sheet comes from the twin's line with the recipe's defect rate (`--defect-rate` to change
it) and its own placement jitter (about 1 mm and 0.3 deg); every `--shift-every`-th sheet is
also moved by a random offset of up to `--shift-mm` (uniform in x and y), to see the check
where it matters. Each sheet's shots are rendered at the recipe's poses (the twin's exact
camera, as `station inspect` uses it there) and measured by `station.geometry.placement` as
inspection measures them.

Reported:
- the measurement's error against the twin's own placement: centre offset (x, y), angle, and
  the size (the twin's sheets are exactly the recipe's size);
- how many sheets truly reach past the inspected region by more than the tolerance (from the
  twin's corners) and how many the check faults: both ways of disagreeing are counted;
- the time per part of the mosaic and the fit, against the sheet map's fusion of one
  detector's maps of the same shots in the same run (the baseline);
- the placement watch (monitoring.drift.placement) fed with the sheets found: the sheet it
  alarms at, against the first sheet truly past the tolerance and the first faulted
  (`--creep-mm`: the line's stops creep in +x, sheet after sheet).

    .venv/bin/python tools/bench_placement.py [--sheets 200] [--seed 0] [--json out.json]
    .venv/bin/python tools/bench_placement.py --sheets 160 --shift-every 0 --creep-mm 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _true_past(spec: Any, region: tuple[float, float, float, float]) -> float:
    """How far the twin's sheet reaches past the region (mm; <= 0 inside)."""
    from station.geometry.placement import side_reach

    return max(side_reach(spec.corners_mm(), region).values())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from station.cellcal.store import inspection_camera
    from station.geometry.coverage import placement_tolerance_mm, region_rect
    from station.geometry.placement import find_recipe_sheet, recipe_mosaic, side_reach
    from station.geometry.sheet_map import recipe_mapper, shot_view
    from station.monitoring.placement import PlacementWatch
    from station.recipe import load_recipe
    from station.storage.alarms import PLACEMENT_PREFIX, PartPoint
    from station.twin.world import TwinWorld, pose_tcp

    recipe = load_recipe(args.recipe)
    camera = inspection_camera(recipe)
    world = TwinWorld(recipe, seed=args.seed, defect_rate=args.defect_rate)
    region, tol = region_rect(recipe), placement_tolerance_mm(recipe)
    rng = np.random.default_rng([args.seed, 5])
    watch = PlacementWatch(recipe.name, tol, recipe.monitoring.drift.placement)
    watch_alarm = None
    rows, t_place, t_map = [], 0.0, 0.0
    for i in range(args.sheets):
        spec, _ = world.next_sheet()
        dx, dy = args.creep_mm * i / 100.0, 0.0  # the line's stops creeping in +x
        if args.shift_every and i % args.shift_every == args.shift_every - 1:
            dx, dy = np.array([dx, dy]) + rng.uniform(-args.shift_mm, args.shift_mm, 2)
        if dx or dy:
            spec = dataclasses.replace(spec, centre_mm=(spec.centre_mm[0] + dx,
                                                        spec.centre_mm[1] + dy))
            world.present(spec)
        shots = []
        for pose in recipe.robot.poses:
            tcp = pose_tcp(pose)
            shots.append((shot_view(camera, pose.name, tcp, recipe.preprocess.crop),
                          world.render(tcp).image))
        t0 = time.perf_counter()
        mosaic = recipe_mosaic(recipe, camera.table_to_base)
        for view, image in shots:
            mosaic.add(view, image)
        found = find_recipe_sheet(mosaic.result(), mosaic.grid, recipe)
        t1 = time.perf_counter()
        mapper = recipe_mapper(recipe, camera.table_to_base)
        for view, image in shots:  # one detector's map of the whole shot (tiles stitched)
            mapper.add(view, {"map": np.zeros(image.shape[:2], np.float32)}, None)
        mapper.result()
        t2 = time.perf_counter()
        t_place += t1 - t0
        t_map += t2 - t1
        true_off = (spec.centre_mm[0] - recipe.sheet.center_mm[0],
                    spec.centre_mm[1] - recipe.sheet.center_mm[1])
        rows.append({
            "sheet": i, "defects": [d.kind for d in spec.defects],
            "true_offset_mm": [round(v, 3) for v in true_off],
            "true_angle_deg": round(math.degrees(spec.angle_rad), 4),
            "true_past_mm": round(_true_past(spec, region), 3),
            **found.as_dict(),
        })
        if found.found:  # the placement watch, as the drift hook feeds it
            reach = side_reach(found.corners_mm, region)
            point = PartPoint(i + 1, i + 1, datetime.now(UTC), "fault" if found.problem
                              else "pass", {PLACEMENT_PREFIX + k: v for k, v in reach.items()})
            if watch.add(point) and watch_alarm is None:
                watch_alarm = i + 1
        if args.verbose:
            print(i, rows[-1]["true_past_mm"], found.summary(), found.problem or "")
    out = _summary(rows, tol, t_place, t_map, args)
    out["watch_alarm_sheet"] = watch_alarm  # 1-based, as the others below
    out["first_truly_past_sheet"] = next((r["sheet"] + 1 for r in rows
                                          if r["true_past_mm"] > tol), None)
    out["first_faulted_sheet"] = next((r["sheet"] + 1 for r in rows if r["problem"]), None)
    return out


def _summary(rows: list[dict[str, Any]], tol: float, t_place: float, t_map: float,
             args: argparse.Namespace) -> dict[str, Any]:
    found = [r for r in rows if r["offset_mm"] is not None]
    err = np.array([[r["offset_mm"][0] - r["true_offset_mm"][0],
                     r["offset_mm"][1] - r["true_offset_mm"][1],
                     r["angle_deg"] - r["true_angle_deg"],
                     r["size_mm"][0] - 300.0, r["size_mm"][1] - 300.0] for r in found])
    truly = [r["true_past_mm"] > tol for r in rows]
    faulted = [r["problem"] is not None for r in rows]
    n = len(rows)
    out = {
        "recipe": args.recipe, "sheets": n, "seed": args.seed, "tolerance_mm": tol,
        "found": len(found),
        "error_mean": dict(zip(("dx", "dy", "angle_deg", "width", "height"),
                               np.round(err.mean(axis=0), 3).tolist(), strict=True)),
        "error_abs_max": dict(zip(("dx", "dy", "angle_deg", "width", "height"),
                                  np.round(np.abs(err).max(axis=0), 3).tolist(), strict=True)),
        "truly_past": int(sum(truly)), "faulted": int(sum(faulted)),
        "faulted_in_tolerance": [r["sheet"] for r, t, f in zip(rows, truly, faulted, strict=True)
                                 if f and not t],
        "passed_past_tolerance": [r["sheet"] for r, t, f in zip(rows, truly, faulted, strict=True)
                                  if t and not f],
        "ms_per_part": round(1000 * t_place / n, 1),
        "ratio_to_sheet_map": round(t_place / max(t_map, 1e-9), 2),
        "rows": rows,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "glassfiber.yaml"))
    ap.add_argument("--sheets", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defect-rate", type=float, default=None)
    ap.add_argument("--shift-every", type=int, default=4, help="0: no extra shifts")
    ap.add_argument("--shift-mm", type=float, default=6.0)
    ap.add_argument("--creep-mm", type=float, default=0.0,
                    help="the line's stops creep by this per 100 sheets in +x (with "
                         "--shift-every 0: when the placement watch alarms)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    out = run(args)
    brief = {k: v for k, v in out.items() if k != "rows"}
    print(json.dumps(brief, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
