"""A candidate's thresholds: the recipe's policy on the labelled captures, then lowered when
needed so that every confirmed defect the live model rejects stays rejected.

The promotion rule asks a candidate not to pass a confirmed defect the live model rejected.
A candidate that has learnt a new texture scores defects on that texture lower (on the twin
some were rejected by the live model only because it rejected the texture itself). The policy
alone, chosen on the labelled captures, may then put its threshold above them. Here all
thresholds are scaled by one factor (<= 1) so that the lowest of those defects sits at the
threshold: the decision rule (max, min or mean of score / threshold) scales with it, so every
one of them is rejected. Its cost, more false rejects, is measured on the labelled captures
and reported.

Those defects then choose the threshold: the candidate's misses on them are in-sample (zero
by construction). `leave_one_out` is the out-of-sample check: each defect is judged by the
threshold the others would have set.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from station.calibration.core import GUARD, rates_at

if TYPE_CHECKING:
    from station.calibration.core import CalibrationResult, PartScores


def needed_scale(part_scores: list[float]) -> float:
    """The factor (<= 1) on every threshold that makes each part score >= 1 (a reject): the
    part scores are combined score / threshold at the unscaled thresholds."""
    low = min(part_scores, default=1.0)
    return 1.0 if low >= 1.0 else low * (1.0 - GUARD)


def leave_one_out(part_scores: list[float]) -> list[bool]:
    """Per confirmed defect: missed when the threshold is set by the others only."""
    out = []
    for i, ps in enumerate(part_scores):
        scale = needed_scale(part_scores[:i] + part_scores[i + 1 :])
        out.append(ps < scale)  # rejected exactly when part score / scale >= 1
    return out


def rescaled(result: CalibrationResult, data: PartScores, scale: float) -> CalibrationResult:
    """`result` with every threshold times `scale` and its rates on the labelled set redone."""
    names = data.detectors
    thresholds = np.array([result.thresholds[n] * scale for n in names])
    t0 = np.array([result.detectors[n].policy_threshold or result.thresholds[n] for n in names])
    boot = (result.resamples, result.level, result.seed)
    warnings = list(result.warnings)
    points, part_values, combined = rates_at(
        data,
        data.shot_tensor(),
        thresholds,
        t0,
        result.combine_poses,
        result.combine_detectors,
        boot,
        warnings,
    )
    before, after = result.combined.choice, combined.choice
    notes = [
        *result.notes,
        f"thresholds lowered to {scale:.4f} x the {result.policy.name} thresholds so that every "
        f"confirmed defect the live model rejects stays rejected (station retrain); on this set "
        f"false rejects {before.false_rejects} -> {after.false_rejects} of {after.n_good}, "
        f"misses {before.misses} -> {after.misses} of {after.n_defect}",
    ]
    budget = result.policy.value if result.policy.name == "false_reject_budget" else None
    if budget is not None and after.n_good and after.false_rejects / after.n_good > budget:
        warnings.append(
            f"keeping the confirmed defects rejected costs false rejects: "
            f"{after.false_rejects}/{after.n_good} on this set, above the {budget:.1%} budget"
        )
    return replace(
        result,
        thresholds={n: float(t) for n, t in zip(names, thresholds, strict=True)},
        detectors=points,
        combined=combined,
        scale=result.scale * scale,
        part_values=part_values,
        warnings=warnings,
        notes=notes,
    )


def constraint_record(
    sequences: list[int], part_scores: list[float], scale: float, before: Any, after: Any
) -> dict[str, Any]:
    """What the candidate calibration stores about the confirmed-defect constraint."""
    loo = leave_one_out(part_scores)
    return {
        "rule": "every confirmed defect the live model rejects stays rejected",
        "confirmed_defects": list(sequences),
        "part_scores_at_policy_thresholds": [round(float(p), 6) for p in part_scores],
        "scale": float(scale),
        "labelled_false_rejects": [before.false_rejects, after.false_rejects, after.n_good],
        "labelled_misses": [before.misses, after.misses, after.n_defect],
        "leave_one_out_missed": [s for s, m in zip(sequences, loo, strict=True) if m],
    }
