"""Would a noise-aware rule have chosen better than `station tune`'s own? (issue #20)

    .venv/bin/python tools/tune_rules.py --tune /tmp/tune_f00 --check /tmp/tune_f00/check.json

Reads a finished tune's journal (the held-out good and synthetic-defect scores it stored for
every candidate) and `tools/tune_check.py --json`'s output (each candidate's real-defect image
AUROC on the test split). For each rule it prints the pick and how far its real AUROC is
below the best candidate's:
- `margin`: the tune's rule (the fastest within `report.AUROC_MARGIN` of the best synthetic
  AUROC);
- `keep-own`: the recipe's own candidate (`candidates.recipe_own`) unless other candidates beat
  it with one-sided 95 % confidence in a paired bootstrap of the synthetic AUROC difference
  (held-out good images and synthetic defects resampled, the same draws for both); then the
  tune's rule among those.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_check import finished  # noqa: E402

from station.recipe import load_recipe  # noqa: E402
from station.tuning.candidates import recipe_own  # noqa: E402
from station.tuning.compare import paired_gain  # noqa: E402
from station.tuning.report import rank  # noqa: E402


def keep_own(
    done: list[dict[str, Any]], own: str | None, times: int = 2000, seed: int = 0
) -> tuple[str, list[str]]:
    """(the pick, the candidates that beat the recipe's own) under the keep-own rule; the
    tune's rule when the recipe's own candidate did not run."""
    by_id = {r["id"]: r for r in done}
    if own not in by_id:
        return rank(done, "synthetic")[0]["id"], []
    beat = []
    for r in done:
        gain = paired_gain(r, by_id[own], times, seed) if r["id"] != own else None
        if gain is not None and gain.clear:
            beat.append(r)
    if not beat:
        return own, []
    return rank(beat, "synthetic")[0]["id"], [r["id"] for r in beat]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tune", type=Path, required=True, help="the tune's --out folder")
    ap.add_argument("--check", type=Path, required=True, help="tools/tune_check.py --json output")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    header, by_id = finished(args.tune)
    done = list(by_id.values())
    real = {r["id"]: r["real"] for r in json.loads(args.check.read_text())["rows"]}
    if missing := [r["id"] for r in done if r["id"] not in real]:
        raise SystemExit(f"{args.check} lacks the real AUROC of {', '.join(missing)}")
    own = recipe_own(load_recipe(header["recipe_source"]))
    best = max(real.values())
    pick_own, beat = keep_own(done, own)
    out: dict[str, Any] = {"own": own, "best_real": best, "beat_own": beat, "rules": {}}
    for rule, pick in (("margin", rank(done, "synthetic")[0]["id"]), ("keep-own", pick_own)):
        gap = best - real[pick]
        out["rules"][rule] = {"pick": pick, "real": real[pick], "gap": gap}
        print(f"{rule:9s} {pick:55s} real {real[pick]:.3f}  below the best by {gap:.3f}")
    print(f"recipe's own: {own}; beaten with 95 % confidence by: {', '.join(beat) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
