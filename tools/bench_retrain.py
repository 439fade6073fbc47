"""Acceptance bench for retraining from reviews (issue 22, point 3 and 4) on the twin.

Story: a cell trained and calibrated on one cloth; a new lot arrives with another roving pitch
(twin.params.variant: a "new but good" texture, good in the ground truth) and the live model
rejects it. Operators review: two agreeing "false reject" reviews on 20 variant parts, "defect
confirmed" on the defects it caught (through station.review.store.add_review, as the web app
stores them). `station retrain` builds (the live bank extended; `--full`: from scratch) and
calibrates a candidate (kept rejecting the confirmed defects); `station inspect --shadow`
runs it beside the live model on new, held-out parts (half of them the variant); the bench
counts false rejects and misses of both on the same parts against the twin's ground truth,
with exact (Clopper-Pearson) 95 % intervals; `station models promote` makes it live; the
database is then reopened to check that every part, shadow verdict and promotion is there.

The material check (monitoring.material_check) and the drift charts are disabled in the bench
recipe: the variant is another material for the material check, which would fault its parts.

The held-out table also shows the candidate at its policy threshold (before the confirmed-
defect constraint) and a paired exact sign test on the parts where live and candidate differ.

    .venv/bin/python tools/bench_retrain.py [--home DIR] [--threads 2] [--full]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NAME = "bench-retrain"
# defects this small model sees at 0.1 mm/px (folds and creases at this scale it mostly does not)
KINDS = {k: 1.0 for k in ("contamination", "cut", "missing_roving", "broken_roving", "hex_nut")}


def recipe_text(seed: int, share: float, variant: dict[str, Any], defect_rate: float) -> str:
    data = yaml.safe_load((REPO / "recipes" / "glassfiber.yaml").read_text())
    data["name"] = NAME
    data["description"] = "retraining bench: a small view of a small sheet, one pose"
    data["camera"].update(width=128, height=96)
    data["camera"]["lens"].update(focal_length_mm=12.0, focus_distance_mm=350.0)
    data["sheet"].update(width_mm=18.0, height_mm=15.0)
    data["robot"].pop("poses_file", None)
    data["robot"]["poses"] = [
        {"name": "centre", "position_mm": [400.0, 0.0, 350.0], "rotvec_rad": [math.pi, 0, 0]}
    ]
    data["coverage"] = {"region_mm": [-6.0, -4.5, 6.0, 4.5], "partial": True}
    data["preprocess"].update(size=[128, 128], tiling={"enabled": False})
    data["detectors"] = [
        {
            "name": "patchcore",
            "backbone": "efficientnet_lite0",
            "weights": "package",
            "device": "cpu",
            "params": {"max_bank": 16000, "batch_size": 8, "mirror_pad": 16},
        }
    ]
    data["decision"].update(policy="false_reject_budget", false_reject_budget=0.05)
    data["storage"] = {"database_url": "sqlite:///data/station.db", "data_dir": "data"}
    data["twin"].update(
        seed=seed, time_scale=0.0, defect_rate=defect_rate, defect_size_mm=[3.0, 8.0],
        defect_kinds=KINDS,
        params={"variant": {"share": share, **variant}},
    )  # fmt: skip
    data["monitoring"] = {"drift": {"enabled": False}, "material_check": {"enabled": False}}
    return yaml.safe_dump(data, sort_keys=False)


def station(*args: str) -> None:
    from station.cli.app import app

    code = app(args=list(args), standalone_mode=False)
    if isinstance(code, int) and code:
        raise SystemExit(f"station {' '.join(args)} exited {code}")


def live_parts(db: Any, after: int) -> list[Any]:
    from sqlalchemy import select

    from station.storage.models import Part

    with db.session() as s:
        rows = s.scalars(
            select(Part)
            .where(Part.recipe == NAME, Part.mode == "live", Part.sequence > after)
            .order_by(Part.sequence)
        ).all()
        return list(rows)


def variant_flags(seed: int, parts: list[Any], params: dict[str, Any]) -> list[bool]:
    """Whether each live part's sheet is the variant: the twin's line brings sheet k from
    (seed, k), k as its part id says (TWIN-<seed>-<k>; the line goes on between runs)."""
    from station.twin.variant import Variant
    from station.twin.world import derive_seed

    v = Variant.from_params(params)
    return [v.applies(derive_seed(seed, int(p.line_part_id.rsplit("-", 1)[1]))) for p in parts]


def cp(k: int, n: int) -> str:
    from station.calibration.bootstrap import clopper_pearson

    if n == 0:
        return "n/a"
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}]"


def sign_test(a: int, b: int) -> float:
    """Exact two-sided p of a and b discordant pairs under 'either is equally likely'
    (McNemar's exact test)."""
    from scipy.stats import binomtest

    return float(binomtest(a, a + b, 0.5).pvalue) if a + b else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="scratch station home (kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--good", type=int, default=60, help="good sheets captured for training")
    ap.add_argument("--labelled", type=int, default=120, help="labelled sheets, calibration")
    ap.add_argument("--history", type=int, default=110, help="live parts before the retrain")
    ap.add_argument("--held-out", type=int, default=100, help="live parts judged by both")
    ap.add_argument("--reviewed", type=int, default=20, help="variant parts reviewed")
    ap.add_argument("--pitch-scale", type=float, default=1.4, help="variant's roving pitch")
    ap.add_argument("--weave", default="twill", help="variant's weave (plain, twill)")
    ap.add_argument("--defect-rate", type=float, default=0.5, help="labelled captures")
    ap.add_argument("--line-defect-rate", type=float, default=0.25, help="live parts")
    ap.add_argument("--share", type=float, default=0.5, help="variant share of the new lot")
    ap.add_argument("--full", action="store_true", help="station retrain --full (from scratch)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    home = a.home or Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    shutil.rmtree(home / "data", ignore_errors=True)
    shutil.rmtree(home / "calibration", ignore_errors=True)
    (home / "recipes").mkdir(parents=True, exist_ok=True)
    (home / "calibration").mkdir(parents=True, exist_ok=True)
    os.environ["STATION_HOME"] = str(home)
    path = home / "recipes" / f"{NAME}.yaml"
    t0 = time.monotonic()
    times: dict[str, float] = {}

    def lap(what: str) -> None:
        times[what] = time.monotonic() - t0 - sum(times.values())

    # 1. the old cloth only: capture, train, calibrate
    variant: dict[str, Any] = {"pitch_scale": a.pitch_scale}
    if a.weave:
        variant["weave"] = a.weave
    path.write_text(recipe_text(7, 0.0, variant, a.defect_rate))
    # the sheets of twin seed 7, as measured in docs/retraining.md (the live parts below draw
    # from other seeds, so none is a training sheet)
    station("capture", "--recipe", NAME, "--count", str(a.good), "--label", "good", "--seed", "7")
    station("train", "--recipe", NAME)
    station("capture", "--recipe", NAME, "--count", str(a.labelled), "--label", "labelled",
            "--seed", "10007")  # fmt: skip
    station("calibrate-threshold", "--recipe", NAME, "--resamples", "200", "--oob-resamples", "0")
    lap("capture, train, calibrate")

    # 2. the new lot arrives: the live model judges it; operators review the rejects
    hist_seed = 20007
    path.write_text(recipe_text(hist_seed, a.share, variant, a.line_defect_rate))
    station("inspect", "--live", "--recipe", NAME, "--count", str(a.history), "--no-view")
    lap("history: inspect")
    from station.review.store import add_review
    from station.storage.db import open_database
    from station.storage.models import ReviewLabel, Verdict

    rcp_params = {"variant": {"share": a.share, **variant}}
    db = open_database(f"sqlite:///{home}/data/station.db")
    parts = live_parts(db, 0)
    flags = variant_flags(hist_seed, parts, rcp_params)
    rejected = [p for p in parts if p.verdict in (Verdict.FAIL, Verdict.FAULT)]
    var_good = [p for p, f in zip(parts, flags, strict=True) if f and p.ground_truth == "good"]
    fr_variant = [p for p in var_good if p in rejected]
    to_review = [p for p in fr_variant if p.verdict == Verdict.FAIL][: a.reviewed]
    confirmed = [p for p in rejected if p.ground_truth == "defect"]
    with db.session() as s:
        for p in to_review:
            add_review(s, p.id, ReviewLabel.FALSE_REJECT, "ann", "new cloth lot, looks fine")
            add_review(s, p.id, ReviewLabel.FALSE_REJECT, "bob", "agree: good")
        for p in confirmed:
            add_review(s, p.id, ReviewLabel.DEFECT_CONFIRMED, "ann")
    print(
        f"history: {len(parts)} parts, {len(var_good)} good variant parts, of which the live "
        f"model rejected {len(fr_variant)}; reviewed {len(to_review)} as false rejects "
        f"(2 agreeing reviews each), {len(confirmed)} confirmed defects"
    )
    if len(to_review) < a.reviewed:
        print(f"WARNING: only {len(to_review)} variant false rejects to review")
    lap("reviews")

    # 3. retrain: a candidate, its calibration, its shadow evaluation on the reviewed parts
    station("retrain", "--recipe", NAME, "--resamples", "200", *(["--full"] if a.full else []))
    lap("retrain")
    from station.recipe import load_recipe
    from station.storage.promotions import model_versions

    rcp = load_recipe(str(path))
    cand = [m for m in model_versions(db, NAME) if (m.metrics or {}).get("role") == "candidate"]
    version = cand[-1].version
    ev = cand[-1].metrics["retrain"]["shadow_evaluation"]
    print(f"candidate: {ev.get('method')}, bank {cand[-1].metrics['fit'].get('bank_size')} rows")

    # 4. held-out parts (new seed), live and candidate on the same parts (shadow mode)
    held_seed = 30007
    path.write_text(recipe_text(held_seed, a.share, variant, a.line_defect_rate))
    before = max(p.sequence for p in parts)
    station("inspect", "--live", "--recipe", NAME, "--count", str(a.held_out), "--no-view",
            "--shadow", version)  # fmt: skip
    lap("held-out: inspect with shadow")
    from station.storage.shadow import REJECTING, shadow_rows

    held = live_parts(db, before)
    hflags = variant_flags(held_seed, held, rcp_params)
    with db.session() as s:
        sv = {r.part_id: r for r in shadow_rows(s, NAME, limit=100_000)}
    # (live, candidate, candidate at its policy thresholds) reject, per held-out part; the
    # policy-only verdict is the stored shadow part score times the constraint's scale
    scale = ev["confirmed_defects_constraint"]["scale"]
    rows: dict[str, list[tuple[bool, bool, bool]]] = {
        "variant good": [], "old good": [], "defect": []
    }  # fmt: skip
    for p, f in zip(held, hflags, strict=True):
        if p.id not in sv:
            continue
        key = "defect" if p.ground_truth == "defect" else ("variant good" if f else "old good")
        r = sv[p.id]
        policy_only = r.shadow_score is not None and r.shadow_score * scale >= 1.0
        rows[key].append((p.verdict in REJECTING, r.shadow in REJECTING, policy_only))

    # 5. promote, then "restart": reopen the database and count what it holds
    from station.errors import StationError

    try:
        station("models", "promote", "--recipe", NAME, "--detector", "patchcore", "--version",
                version, "--by", "bench supervisor", "--note", "bench_retrain")  # fmt: skip
        promoted = "promoted"
    except StationError as exc:  # the gate refused: that is a result too
        promoted = f"promotion refused: {exc}"
    db.dispose()
    from sqlalchemy import func, select

    from station.storage.models import ModelPromotion, Part, Review, ShadowVerdict

    db = open_database(f"sqlite:///{home}/data/station.db")
    with db.session() as s:
        n_parts = s.scalar(select(func.count(Part.id)).where(Part.mode == "live"))
        n_reviews = s.scalar(select(func.count(Review.id)))
        n_shadow = s.scalar(select(func.count(ShadowVerdict.id)))
        n_prom = s.scalar(select(func.count(ModelPromotion.id)))
    db.dispose()
    from station.detectors.artifact import latest_artifact

    live_now = latest_artifact(rcp, "patchcore").stem
    lap("promote, restart")

    print(f"\nheld-out parts ({len(held)}), the same parts judged by both (95 % Clopper-Pearson):")
    print(
        "| parts | n | live model (before) | candidate (after) | candidate at the policy "
        "threshold (not promotable) | paired: live only / candidate only, sign test |"
    )
    print("|---|---|---|---|---|---|")
    for key, what in (("variant good", "FR"), ("old good", "FR"), ("defect", "miss")):
        r = rows[key]
        k = [sum((x if what == "FR" else not x) for x in col) for col in zip(*r, strict=True)]
        k = k or [0, 0, 0]
        # the same parts judged by both: parts only the live / only the candidate counts
        lo = sum(1 for x, y, _ in r if (x and not y) == (what == "FR") and x != y)
        co = sum(1 for x, y, _ in r if x != y) - lo
        print(f"| {key} ({'false rejects' if what == 'FR' else 'misses'}) | {len(r)} | "
              f"{cp(k[0], len(r))} | {cp(k[1], len(r))} | {cp(k[2], len(r))} | "
              f"{lo} / {co}, p = {sign_test(lo, co):.3g} |")  # fmt: skip
    rc = ev["confirmed_defects_constraint"]
    n_c = len(rc["confirmed_defects"])
    allm = ev["splits"]["all"]
    print(f"\nreviewed history ({ev['parts']} parts; the candidate trained on the false rejects):")
    for which in ("live", "candidate"):
        m, f = allm[which]["misses"], allm[which]["false_rejects"]
        print(f"  {which}: confirmed defects missed {cp(m['count'], m['n'])}, reviewed false "
              f"rejects rejected {cp(f['count'], f['n'])}")  # fmt: skip
    fr0, fr1, n_good = rc["labelled_false_rejects"]
    print(f"  candidate thresholds x{rc['scale']:.4f} of the policy's to keep the {n_c} confirmed "
          f"defects the live model rejects rejected (in-sample); labelled old-cloth false "
          f"rejects {cp(fr0, n_good)} -> {cp(fr1, n_good)}")  # fmt: skip
    loo = rc["leave_one_out_missed"]
    print(f"  leave one out (out of sample): {cp(len(loo), n_c)} confirmed defects missed {loo}")
    print(
        f"\nafter a restart the database holds {n_parts} live parts, {n_reviews} reviews, "
        f"{n_shadow} shadow verdicts, {n_prom} promotion(s); live model now {live_now} "
        f"(candidate {version}: {promoted})"
    )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"home: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
