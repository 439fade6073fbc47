"""How `station tune`'s choice ranks by real defects (issue #20, `station tune` acceptance).

    .venv/bin/station tune --recipe glassfiber --data ../shared/datasets/aitex/fabric00 \
        --budget-min 15 --threads 1 --out /tmp/tune_f00           # never reads test/
    .venv/bin/python tools/tune_check.py --tune /tmp/tune_f00 \
        --category ../shared/datasets/aitex/fabric00 --threads 1

Only after the tune has chosen, this reads the category's test split: every finished
candidate's saved model (an ensemble: its members' models, standardised by their held-out
good scores as the tune built it) scores the test images through the station's scoring
engine with the tune's recipe preprocessing. It prints each candidate's synthetic-defect AUROC
(the tune's) next to its real-defect image AUROC, the Spearman rank correlation between the
two over all candidates, and the real AUROC of the tune's pick against the best candidate's
(the acceptance: within 0.03). `--json F` writes the same, with every candidate's test-image
scores and the test labels (`tools/tune_labelled.py` reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr  # noqa: E402

from station.calibration.evaluation import read_test_set  # noqa: E402
from station.detectors.engine import ScoringEngine  # noqa: E402
from station.detectors.registry import load_recipe  # noqa: E402
from station.metrics import image_auroc  # noqa: E402
from station.tuning.candidates import with_size  # noqa: E402
from station.tuning.evaluate import load_candidate  # noqa: E402
from station.tuning.journal import read_journal  # noqa: E402
from station.tuning.report import rank  # noqa: E402
from station.tuning.run import candidate_of  # noqa: E402


def finished(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the run header, finished candidates by id) of a tune folder's journal."""
    journal = read_journal(folder)
    if journal is None:
        raise SystemExit(f"{folder} holds no tune journal (tune.jsonl)")
    header, records = journal
    return header, {r["id"]: r for r in records if r.get("status") == "done"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tune", type=Path, required=True, help="the tune's --out folder")
    ap.add_argument("--category", type=Path, required=True, help="MVTec category with test/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    run, done = finished(args.tune)
    recipe = load_recipe(run["recipe_source"])
    tests: dict[Any, Any] = {}  # the test split read once per input size
    rows = []
    for cid, rec in done.items():
        det = load_candidate(rec, done, {}, "cpu")
        pre = with_size(recipe, candidate_of(rec).size).preprocess
        if pre.size not in tests:
            tests[pre.size] = read_test_set(args.category, pre, lambda *_: None)
        test = tests[pre.size]
        engine = ScoringEngine({cid: det}, pre, batch_size=8)
        scores = engine.score(test.images, keep_maps=False)[cid].scores
        real = float(image_auroc(scores, test.labels))
        test_scores = [float(v) for v in scores]
        rows.append({"id": cid, "synthetic": rec["auroc"], "real": real, "scores": test_scores})
        print(f"{cid:45s} synthetic {rec['auroc']:.3f}  real {real:.3f}", flush=True)
    pick = rank(list(done.values()), "synthetic")[0]["id"]
    best = max(rows, key=lambda r: r["real"])
    pick_real = next(r["real"] for r in rows if r["id"] == pick)
    rho = float(spearmanr([r["synthetic"] for r in rows], [r["real"] for r in rows])[0])
    summary = {
        "category": str(args.category),
        "pick": pick,
        "pick_real": pick_real,
        "best": best["id"],
        "best_real": best["real"],
        "within_0.03": best["real"] - pick_real <= 0.03,
        "spearman": rho,
        "n_candidates": len(rows),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        labels = [int(v) for v in next(iter(tests.values())).labels] if tests else []
        out = {"rows": rows, **summary, "labels": labels}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
