"""Design of the drift charts' limits: the chance that one chart pair (EWMA and CUSUM on one
signal) raises a false alarm within `--parts` in-control parts, when its centre and sigma are
estimated from `--baseline` parts (as station.monitoring.baseline and the warm-up do).

In control the points are N(0, 1); each run draws its own baseline estimate (mean of n
points, and their sample standard deviation), so the estimation error of small baselines is
in the figure (it raises false alarms well above the known-parameter rate). Points are
standardised with the estimate and clipped, as in station.monitoring.charts. A ramp run adds
`--slope` sigma per part and reports the median and 90th percentile delay.

`--pool FILE:SIGNAL` draws the points (baseline and run) from a measured distribution instead,
with replacement: the values of SIGNAL in a tools/bench_drift.py cache file (its "rows"),
standardised. Skewed statistics (a sheet's contrast) need longer baselines than normal ones.

    .venv/bin/python tools/design_drift_limits.py --baseline 30 --ewma 0.1:4.5 --cusum 0.5:12
    .venv/bin/python tools/design_drift_limits.py --baseline 30 60 --ewma 0.3:7 --cusum 1:14 \
        --pool data/bench_drift/stable-p2-1000.json:"contrast r1c1"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def run_pair(
    lam: float,
    big_l: float,
    k: float,
    h: float,
    n_base: int,
    parts: int,
    runs: int,
    slope: float,
    clip: float,
    seed: int,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Per run: the first part (1-based) at which either chart signals; 0: none. Points are
    N(0, 1), or drawn from `pool` (standardised values) when given."""
    rng = np.random.default_rng(seed)

    def draw(shape: int | tuple[int, int]) -> np.ndarray:
        return rng.standard_normal(shape) if pool is None else rng.choice(pool, shape)

    if pool is not None and n_base:
        base = draw((runs, n_base))
        centre, sd = base.mean(axis=1), base.std(axis=1, ddof=1)
    else:
        centre = rng.standard_normal(runs) / np.sqrt(n_base) if n_base else np.zeros(runs)
        sd = np.sqrt(rng.chisquare(n_base - 1, runs) / (n_base - 1)) if n_base else np.ones(runs)
    z = np.zeros(runs)
    hi = np.zeros(runs)
    lo = np.zeros(runs)
    first = np.zeros(runs, int)
    for i in range(1, parts + 1):
        x = draw(runs) + slope * i
        u = np.clip((x - centre) / sd, -clip, clip)
        z = lam * u + (1 - lam) * z
        lim = big_l * np.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)))
        hi = np.maximum(0, u - k + hi)
        lo = np.maximum(0, -u - k + lo)
        out = (np.abs(z) > lim) | (hi > h) | (lo > h)
        first[(first == 0) & out] = i
    return first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=int, nargs="+", default=[30])
    ap.add_argument("--ewma", nargs="+", default=["0.1:4.5"], help="lambda:L")
    ap.add_argument("--cusum", nargs="+", default=["0.5:12"], help="k:h (paired with --ewma)")
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=4000)
    ap.add_argument("--slope", type=float, nargs="*", default=[])
    ap.add_argument("--clip", type=float, default=4.0)
    ap.add_argument("--pool", default=None, metavar="FILE:SIGNAL",
                    help="draw points from SIGNAL's values in a bench_drift cache file")
    a = ap.parse_args()
    pool = None
    if a.pool:
        path, _, signal = a.pool.partition(":")
        values = np.array([row[signal] for row in json.loads(Path(path).read_text())["rows"]])
        pool = (values - values.mean()) / values.std(ddof=1)
        print(f"points from {signal!r} in {path}: {len(values)} values")
    for ew, cu in zip(a.ewma, a.cusum, strict=True):
        lam, big_l = (float(v) for v in ew.split(":"))
        k, h = (float(v) for v in cu.split(":"))
        for n in a.baseline:
            fa = run_pair(lam, big_l, k, h, n, a.parts, a.runs, 0.0, a.clip, 1, pool)
            line = (
                f"EWMA {lam:g}/{big_l:g}, CUSUM {k:g}/{h:g}, baseline {n}: "
                f"P(false alarm in {a.parts}) = {np.mean(fa > 0):.4f}"
            )
            for s in a.slope:
                d = run_pair(lam, big_l, k, h, n, 200, 2000, s, a.clip, 2, pool)
                d = np.where(d == 0, 10**6, d)
                line += (
                    f"; ramp {s:g} sigma/part: median delay {np.median(d):.0f}, "
                    f"90 % {np.percentile(d, 90):.0f}"
                )
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
