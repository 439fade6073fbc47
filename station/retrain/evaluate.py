"""Shadow evaluation: the live and the candidate models on the same reviewed parts.

Each reviewed part (every pose shot, every file on disk) is scored from its stored shots by
both model sets and decided by the recipe's rule with each set's own thresholds. The newest
review is the label: "false reject" = good, "defect confirmed" = defective. A false reject is
a good part rejected (fail or fault), a miss a defective part passed. Rates carry exact
Clopper-Pearson intervals; parts whose shots trained the candidate are reported apart
(in-sample for the candidate), as well as the held-out rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from station.calibration.bootstrap import DEFAULT_LEVEL, clopper_pearson
from station.decision import Decision, Verdict, decide
from station.detectors.engine import ScoringEngine
from station.storage.models import ReviewLabel

if TYPE_CHECKING:
    from station.detectors.artifact import LoadedModel
    from station.recipe import Recipe
    from station.retrain.reviews import ReviewedPart


@dataclass
class Judged:
    part_id: int
    sequence: int
    defective: bool
    trained_on: bool  # its shots are in the candidate's training data
    live: Decision
    candidate: Decision


def score_parts(
    recipe: Recipe, parts: list[ReviewedPart], models: dict[str, LoadedModel], batch: int = 8
) -> list[dict[str, list[float]]]:
    """Per part, detector -> its shot scores in the part's pose order."""
    files = [f for p in parts for _, f in p.shots]
    if not files:
        return []
    engine = ScoringEngine.from_models(models, recipe.preprocess, batch)
    results = engine.score_files(files)
    out: list[dict[str, list[float]]] = []
    at = 0
    for p in parts:
        n = len(p.shots)
        out.append({name: [float(s) for s in r.scores[at : at + n]] for name, r in results.items()})
        at += n
    return out


def judge(
    recipe: Recipe,
    parts: list[ReviewedPart],
    live: tuple[dict[str, LoadedModel], dict[str, float]],
    candidate: tuple[dict[str, LoadedModel], dict[str, float]],
    trained_on: set[int],
) -> list[Judged]:
    """Both model sets' verdicts on every part (models, thresholds per set)."""
    live_scores = score_parts(recipe, parts, live[0])
    cand_scores = score_parts(recipe, parts, candidate[0])
    return judge_scores(
        recipe, parts, (live_scores, live[1]), (cand_scores, candidate[1]), trained_on
    )


Scored = tuple[list[dict[str, list[float]]], dict[str, float]]  # per part scores, thresholds


def judge_scores(
    recipe: Recipe, parts: list[ReviewedPart], live: Scored, candidate: Scored, trained_on: set[int]
) -> list[Judged]:
    """`judge` on shot scores already computed (score_parts), thresholds per set."""
    live_scores, cand_scores = live[0], candidate[0]
    out = []
    for p, ls, cs in zip(parts, live_scores, cand_scores, strict=True):
        poses = [n for n, _ in p.shots]
        out.append(
            Judged(
                part_id=p.part_id,
                sequence=p.sequence,
                defective=p.label == ReviewLabel.DEFECT_CONFIRMED,
                trained_on=p.part_id in trained_on,
                live=decide(ls, live[1], recipe.decision, poses),
                candidate=decide(cs, candidate[1], recipe.decision, poses),
            )
        )
    return out


def rate(k: int, n: int, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """k of n with its exact interval (None when n is 0)."""
    lo, hi = clopper_pearson(k, n, level)
    return {
        "count": k,
        "n": n,
        "rate": (k / n) if n else None,
        "ci": [round(lo, 6), round(hi, 6)] if n else None,
    }


def _rejected(d: Decision) -> bool:
    return d.verdict != Verdict.PASS


def rates(judged: list[Judged], which: str, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """False rejects among good parts and misses among defective ones, for `which` set."""
    good = [j for j in judged if not j.defective]
    bad = [j for j in judged if j.defective]
    fr = sum(_rejected(getattr(j, which)) for j in good)
    miss = sum(not _rejected(getattr(j, which)) for j in bad)
    return {"false_rejects": rate(fr, len(good), level), "misses": rate(miss, len(bad), level)}


def evidence(
    judged: list[Judged],
    live_versions: dict[str, str],
    cand_versions: dict[str, str],
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """The shadow evaluation as plain JSON: rates per split and set, paired defect counts."""
    held_out = [j for j in judged if not j.trained_on]
    bad = [j for j in judged if j.defective]
    splits = {
        "all": judged,
        "held_out": held_out,
        "trained_on": [j for j in judged if j.trained_on],
    }
    return {
        "level": level,
        "live": dict(live_versions),
        "candidate": dict(cand_versions),
        "parts": len(judged),
        "splits": {
            name: {"live": rates(js, "live", level), "candidate": rates(js, "candidate", level)}
            for name, js in splits.items()
        },
        # on the same confirmed defects: missed by the candidate and not by the live models
        "defects_missed_by_candidate_only": sorted(
            j.sequence for j in bad if not _rejected(j.candidate) and _rejected(j.live)
        ),
        "defects_missed_by_live_only": sorted(
            j.sequence for j in bad if not _rejected(j.live) and _rejected(j.candidate)
        ),
        "per_part": [
            [
                j.sequence,
                int(j.defective),
                int(j.trained_on),
                j.live.verdict.value,
                j.candidate.verdict.value,
            ]
            for j in judged
        ],  # fmt: skip
    }


def not_worse_on_defects(ev: dict[str, Any]) -> tuple[bool, str]:
    """The promotion rule: the candidate misses no more confirmed defects than the live
    models on the same parts (counted on all reviewed defects)."""
    split = ev["splits"]["all"]
    lm, cm = split["live"]["misses"], split["candidate"]["misses"]
    if cm["n"] == 0:
        return False, "no confirmed defect among the reviewed parts: nothing shows it catches them"
    if cm["count"] > lm["count"]:
        only = ", ".join(f"p{s}" for s in ev["defects_missed_by_candidate_only"])
        return False, (
            f"the candidate misses {cm['count']} of {cm['n']} confirmed defects, the live models "
            f"{lm['count']} (missed by the candidate only: {only})"
        )
    why = f"misses {cm['count']} of {cm['n']} confirmed defects (live: {lm['count']})"
    c = ev.get("confirmed_defects_constraint")
    if c and c["scale"] < 1.0:  # station.retrain.calibrate set its thresholds on them
        loo = len(c["leave_one_out_missed"])
        why += (
            f"; in-sample: its thresholds were set to reject them (leave one out: {loo} of "
            f"{len(c['confirmed_defects'])} missed)"
        )
    return True, why


def false_reject_cost(ev: dict[str, Any], budget: float) -> str | None:
    """What keeping the confirmed defects rejected costs in good labelled parts, when the
    candidate's false-reject rate there rises past the policy's budget; None otherwise."""
    c = ev.get("confirmed_defects_constraint")
    if not c:
        return None
    before, after, n_good = c["labelled_false_rejects"]
    if not n_good or after <= before or after / n_good <= budget:
        return None
    return (
        f"its thresholds (x{c['scale']:.4f} of the policy's, to keep the confirmed defects "
        f"rejected) reject {after} of {n_good} good labelled parts against {before}, past the "
        f"{budget:.0%} false-reject budget"
    )
