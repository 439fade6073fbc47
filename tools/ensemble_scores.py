"""Image-level figures of detector ensembles from finished `station evaluate --train` runs.

    .venv/bin/python tools/ensemble_scores.py --runs patchcore=/tmp/ev/pc-aitex,/tmp/ev/pc-mt \
        --runs dfda=/tmp/ev/dfda-aitex,/tmp/ev/dfda-mt

Each `--runs [LABEL@]DET=DIR[,DIR...]` names evaluate output folders holding detector DET
(results.json, and <category>/<DET>/scores.csv); LABEL (default DET) tells two runs of one
detector with other settings apart. For every category all runs share, and every combination of two
or more detectors, the ensemble's image score is computed exactly as the `ensemble` detector
computes it (station/detectors/ensemble.py): the mean over members of (score - mean) / std,
with each member's mean and std from its own held-out good images (results.json ->
model.good_scores, the validation split of `station train`). This equals the ensemble
detector's image score when the members were trained with the same val_fraction and seed (the
defaults: 0.1 and 0): the ensemble passes those to its members. Pixel metrics need the maps:
evaluate the ensemble recipe itself for those.

Prints, per detector and ensemble, each category's image AUROC and false-reject rate at 100 %
recall (Clopper-Pearson 95 %), then the mean and the worst category; `--out F.md` also writes
the tables. `--spread` adds each detector's standardised scores on the good test images
(median / 95th percentile per category): a member whose good images spread far beyond its
held-out ones outweighs the others in the average. `--rule max` or `--rule logsumexp`
combines the members' standardised scores by their maximum or a soft maximum instead of the
mean, for comparison (the detector itself averages).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from station.calibration.operating_point import operating_points  # noqa: E402
from station.calibration.policies import Policy  # noqa: E402
from station.metrics import image_auroc  # noqa: E402


def read_runs(spec: list[str]) -> dict[str, dict[str, tuple[dict[str, float], dict[str, tuple]]]]:
    """det -> category -> ((mean, std of held-out good scores), {stem: (label, score)})."""
    out: dict[str, dict[str, tuple[dict[str, float], dict[str, tuple]]]] = {}
    for item in spec:
        label, _, dirs = item.partition("=")
        if not dirs:
            raise SystemExit(f"--runs must look like [LABEL@]DET=DIR[,DIR...], not {item!r}")
        label, _, det = label.rpartition("@")
        label = label or det
        for d in dirs.split(","):
            doc = json.loads((Path(d) / "results.json").read_text())
            for cat, per_det in doc["categories"].items():
                if det not in per_det:
                    continue
                good = per_det[det]["model"]["good_scores"]
                rows: dict[str, tuple] = {}
                with (Path(d) / cat / det / "scores.csv").open() as f:
                    for r in csv.DictReader(f):  # files before 2026-12-07 have no kind
                        key = f"{r.get('kind', r['label'])}/{r['image']}"
                        if key in rows:
                            raise SystemExit(f"{d}/{cat}/{det}/scores.csv names {key} twice: "
                                             "rerun station evaluate (its files name the kind)")
                        rows[key] = (int(r["label"] != "good"), float(r["score"]))
                out.setdefault(label, {})[cat] = ({"mean": good["mean"], "std": good["std"]}, rows)
    return out


def figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    pts = operating_points(scores, labels, Policy("zero_miss"))
    p = pts["recall_100"]
    return {
        "auroc": image_auroc(scores, labels),
        "fr100": p.false_reject_rate,
        "fr100_text": f"{p.false_reject_rate:.3f} [{p.ci_low:.3f}, {p.ci_high:.3f}]",
    }


RULES = ("mean", "max", "logsumexp")


def combine(z: np.ndarray, rule: str) -> np.ndarray:
    """Members' standardised scores (members x images) to one score per image. `mean` is the
    ensemble detector's rule; `max` and `logsumexp` (a soft max) are for comparison."""
    if rule == "mean":
        return z.mean(0)
    if rule == "max":
        return z.max(0)
    if rule == "logsumexp":
        top = z.max(0)
        return top + np.log(np.exp(z - top).sum(0))
    raise SystemExit(f"--rule must be one of {', '.join(RULES)}, not {rule!r}")


def table(
    runs: dict, combos: list[tuple[str, ...]], cats: list[str], rule: str = "mean"
) -> list[str]:
    lines = [
        "| detectors | " + " | ".join(cats) + " | mean I-AUROC | worst | mean FR@R100 |",
        "|---" * (len(cats) + 4) + "|",
    ]
    for combo in combos:
        cells, aucs, frs = [], [], []
        for cat in cats:
            stems = sorted(set.intersection(*(set(runs[d][cat][1]) for d in combo)))
            if any(len(runs[d][cat][1]) != len(stems) for d in combo):
                raise SystemExit(f"{cat}: the runs of {', '.join(combo)} scored other images "
                                 "(or older runs name no kind): rerun station evaluate")
            labels = np.array([runs[combo[0]][cat][1][s][0] for s in stems])
            z = np.array(
                [
                    (np.array([rows[s][1] for s in stems]) - stats["mean"]) / stats["std"]
                    for stats, rows in (runs[d][cat] for d in combo)
                ]
            )
            f = figures(combine(z, rule), labels)
            aucs.append(float(f["auroc"]))
            frs.append(float(f["fr100"]))
            cells.append(f"{f['auroc']:.3f} / {f['fr100']:.2f}")
        name = " + ".join(combo)
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {np.mean(aucs):.3f} | {min(aucs):.3f} | {np.mean(frs):.3f} |"
        )  # fmt: skip
    return lines


def good_spread(runs: dict, cats: list[str]) -> list[str]:
    """Per detector and category: median / 95th percentile of (score - mean) / std over the
    good test images, with each detector's held-out mean and std."""
    lines = ["| detector | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for det in sorted(runs):
        cells = []
        for cat in cats:
            stats, rows = runs[det][cat]
            good = np.array([score for label, score in rows.values() if label == 0])
            z = (good - stats["mean"]) / stats["std"]
            cells.append(f"{np.median(z):.1f} / {np.percentile(z, 95):.1f}")
        lines.append(f"| {det} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", action="append", required=True, help="[LABEL@]DET=DIR[,DIR...]")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (.md)")
    ap.add_argument("--spread", action="store_true", help="also the good images' z-scores")
    ap.add_argument("--rule", choices=RULES, default="mean", help="how members' z-scores combine")
    args = ap.parse_args(argv)
    runs = read_runs(args.runs)
    dets = sorted(runs)
    cats = sorted(set.intersection(*(set(runs[d]) for d in dets)))
    if not cats:
        raise SystemExit("no category is in every detector's runs")
    combos = [(d,) for d in dets] + [
        c for k in range(2, len(dets) + 1) for c in itertools.combinations(dets, k)
    ]
    lines = [
        f"cells: image AUROC / false-reject rate at 100 % recall; categories {cats}; "
        f"members combined by {args.rule}",
        "",
    ]
    lines += table(runs, combos, cats, args.rule)
    if args.spread:
        lines += ["", "standardised scores of the good test images: median / 95th percentile", ""]
        lines += good_spread(runs, cats)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
