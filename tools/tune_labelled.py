"""Does `station tune --defects DIR --choose-on real` choose better with a few labelled defects?
(issue #20: "optionally a few labelled defects")

    .venv/bin/python tools/tune_labelled.py --tune /tmp/tune_f00 --check /tmp/tune_f00/check.json

Reads a finished tune's journal (each candidate's scores of the held-out good images) and
`tools/tune_check.py --json`'s output (each candidate's scores of the category's test images).
Each draw plays a user who labelled K of the test split's defective images and passed them as
`--defects`: every candidate's real AUROC is computed as the tune does (those K scores against
its held-out good scores) and the tune's own rule picks on it (`report.rank(..., "real")`).
Both that pick and the synthetic-defect pick are then judged on the rest of the test split
(the good test images against the defective ones not drawn), each against the best candidate
on that same rest. Prints per K: the mean gap to the best for both picks, the share of draws
within 0.03, and how often the real-defect pick is better or worse than the synthetic one.

`--goods G` (G > 0) asks what the tune would give if the real AUROC were measured against G
good images from the same production as the defects instead of the held-out training images:
G good test images are drawn too, as that reference, and left out of the judging.

What a simulation leaves out: the tune builds its ensemble slot from the two best candidates
on the criterion it chooses on, so with `--choose-on real` that slot can hold another pair
than the one the journal scored; here it keeps the synthetic pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_check import finished  # noqa: E402

from station.calibration.roc import auroc  # noqa: E402
from station.tuning.report import rank  # noqa: E402

WITHIN = 0.03  # issue #20's acceptance gap


def rest_aurocs(scores: dict[str, np.ndarray], labels: np.ndarray, drawn: np.ndarray) -> dict:
    """Each candidate's image AUROC on the test split less the drawn images."""
    keep = np.ones(len(labels), bool)
    keep[drawn] = False
    good, bad = (labels == 0) & keep, (labels == 1) & keep
    return {cid: auroc(s[good], s[bad]) for cid, s in scores.items()}


def play(
    records: dict[str, dict[str, Any]],
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    k: int,
    goods: int,
    draws: int,
    seed: int,
) -> dict[str, float]:
    """`draws` users who each labelled `k` defective test images (and `goods` good ones as
    their reference; 0: the tune's held-out training images): the gaps of both picks."""
    rng = np.random.default_rng(seed)
    defects, good = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    syn_pick = rank(list(records.values()), "synthetic")[0]["id"]
    judged = []  # per draw: the rest's AUROC of the real pick, the synthetic pick, the best
    for _ in range(draws):
        drawn = rng.choice(defects, size=k, replace=False)
        ref = rng.choice(good, size=goods, replace=False)
        played = []
        for cid, r in records.items():
            reference = scores[cid][ref] if goods else r["scores"]["good"]
            played.append({**r, "real_auroc": auroc(reference, scores[cid][drawn])})
        real_pick = rank(played, "real")[0]["id"]
        rest = rest_aurocs(scores, labels, np.r_[drawn, ref])
        judged.append((rest[real_pick], rest[syn_pick], max(rest.values())))
    real_at, syn_at, best = np.asarray(judged, np.float64).T
    gr, gs = best - real_at, best - syn_at
    return {
        "k": k,
        "goods": goods,
        "gap_real": float(gr.mean()),
        "gap_synthetic": float(gs.mean()),
        "within_real": float((gr <= WITHIN).mean()),
        "within_synthetic": float((gs <= WITHIN).mean()),
        "real_better": float((real_at > syn_at + 1e-12).mean()),
        "real_worse": float((real_at < syn_at - 1e-12).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tune", type=Path, required=True, help="the tune's --out folder")
    ap.add_argument("--check", type=Path, required=True, help="tools/tune_check.py --json output")
    ap.add_argument("--k", default="1,3,5,10", help="labelled defects per draw (comma-separated)")
    ap.add_argument("--goods", type=int, default=0, help="good test images as the reference")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    _, records = finished(args.tune)
    check = json.loads(args.check.read_text())
    if "labels" not in check:
        raise SystemExit(f"{args.check} has no test scores: run tools/tune_check.py --json again")
    labels = np.asarray(check["labels"], np.int64)
    scores = {r["id"]: np.asarray(r["scores"], np.float64) for r in check["rows"]}
    if missing := [cid for cid in records if cid not in scores]:
        raise SystemExit(f"{args.check} lacks the test scores of {', '.join(missing)}")
    n_bad, n_good = int(labels.sum()), int((labels == 0).sum())
    if args.goods > n_good - 2:
        raise SystemExit(f"--goods {args.goods}: the test split has {n_good} good images")
    rows = []
    for k in (int(v) for v in args.k.split(",") if v.strip()):
        if k > n_bad - 2:
            print(f"K={k}: skipped, {n_bad} defective test images leave fewer than 2 to judge on")
            continue
        row = play(records, scores, labels, k, args.goods, args.draws, args.seed)
        rows.append(row)
        print(
            f"K={k:3d}  mean gap: real pick {row['gap_real']:.3f}, synthetic pick "
            f"{row['gap_synthetic']:.3f}  within {WITHIN}: {row['within_real']:.0%} / "
            f"{row['within_synthetic']:.0%}  real pick better {row['real_better']:.0%}, "
            f"worse {row['real_worse']:.0%}"
        )
    if args.json:
        args.json.write_text(json.dumps({"n_defects": n_bad, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
