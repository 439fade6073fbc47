"""Benchmark: `station capture` on the twin (time_scale 0) in a scratch station home.

Usage: python tools/bench_capture.py [--parts 34] [--label labelled]
Prints shots per second for the whole capture (render, PNG encoding, files, database).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=34)
    ap.add_argument("--label", default="labelled")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(REPO / "recipes", home / "recipes")
        path = home / "recipes/glassfiber.yaml"
        data = yaml.safe_load(path.read_text())
        data["twin"]["time_scale"] = 0
        path.write_text(yaml.safe_dump(data))
        os.environ["STATION_HOME"] = str(home)
        from station.inspection.capture import run_capture
        from station.recipe import load_recipe

        recipe = load_recipe("glassfiber")
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_capture(recipe, args.parts, label=args.label)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{res.shots} shots ({len(res.sequences)} parts, {res.defect_shots} defect shots) "
              f"in {dt:.1f} s: {res.shots / dt:.1f} shots/s, {1000 * dt / res.shots:.0f} ms/shot "
              f"on {os.cpu_count()} CPUs; CPU time {1000 * cpu / res.shots:.0f} ms/shot "
              f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
