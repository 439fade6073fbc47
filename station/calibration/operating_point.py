"""False-reject rates at fixed operating points of a labelled test set (`station evaluate`).

Three thresholds per category and detector, all under the station's rule (defective when
score >= threshold):
- recall_100: the lowest defect score, so every defective test image is caught;
- recall_95: the highest threshold that keeps at least 95 % of defective test images at or
  above it (the ceil(0.95 n)-th highest defect score);
- policy: the threshold the recipe's calibration policy (`decision.policy`) chooses on these
  same test images, through `policies.choose_threshold`. Chosen and measured on the same
  images, so it is optimistic, and labelled so.

At each: the false-reject rate (good test images at or above the threshold) with its exact
Clopper-Pearson interval, and the recall actually reached (ties at the threshold count as
caught, so it can exceed the target). A point that cannot be computed (no defective images, no
good images, a policy that refuses the set) has rate None and a `note` saying why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from station.calibration.bootstrap import DEFAULT_LEVEL, clopper_pearson
from station.calibration.policies import Policy, choose_threshold
from station.calibration.roc import as_scores
from station.errors import CalibrationError

RECALLS = {"recall_100": 1.0, "recall_95": 0.95}
POINTS = (*RECALLS, "policy")  # keys of `operating_points`, in table order
_SLACK = 1e-9  # float products overshoot: 0.07 * 100 is 7.000000000000001


def policy_label(policy: Policy) -> str:
    return f"policy {policy.name} on the test set (optimistic: chosen on the same images)"


def point_notes(policy: Policy) -> dict[str, str]:
    """What each of POINTS is, for results.json."""
    return {
        "recall_100": "threshold = the lowest defect score (every defective test image caught)",
        "recall_95": "threshold = the highest that keeps >= 95 % of defective test images "
        "at or above it",
        "policy": policy_label(policy),
    }


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold on a labelled set and what it does there."""

    label: str
    threshold: float | None
    false_rejects: int | None  # good images with score >= threshold
    n_good: int
    caught: int | None  # defective images with score >= threshold
    n_defect: int
    false_reject_rate: float | None
    ci_low: float | None  # Clopper-Pearson, `level`
    ci_high: float | None
    recall: float | None
    level: float
    note: str | None = None  # why the rate is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_at_recall(defect: object, recall: float) -> float | None:
    """The highest threshold keeping at least `recall` of `defect` scores at or above it."""
    d = np.sort(as_scores(defect, "defect scores"))[::-1]
    if len(d) == 0:
        return None
    keep = max(1, math.ceil(recall * len(d) - _SLACK))
    return float(d[keep - 1])


def at_threshold(
    good: object,
    defect: object,
    threshold: float | None,
    label: str,
    level: float = DEFAULT_LEVEL,
    note: str | None = None,
) -> OperatingPoint:
    """Counts and the false-reject rate (with its interval) at `threshold` (None: n/a)."""
    g = as_scores(good, "good scores")
    d = as_scores(defect, "defect scores")
    if threshold is None:
        return OperatingPoint(
            label, None, None, len(g), None, len(d), None, None, None, None, level,
            note or "no threshold",
        )  # fmt: skip
    fr = int(np.count_nonzero(g >= threshold))
    caught = int(np.count_nonzero(d >= threshold))
    recall = caught / len(d) if len(d) else None
    if len(g) == 0:
        return OperatingPoint(
            label, threshold, fr, 0, caught, len(d), None, None, None, recall, level,
            note or "no good test images",
        )  # fmt: skip
    lo, hi = clopper_pearson(fr, len(g), level)
    return OperatingPoint(
        label, threshold, fr, len(g), caught, len(d), fr / len(g), lo, hi, recall, level, note
    )


def operating_points(
    scores: np.ndarray, labels: np.ndarray, policy: Policy, level: float = DEFAULT_LEVEL
) -> dict[str, OperatingPoint]:
    """The POINTS of one detector's image scores on a labelled set (labels: 1 = defect)."""
    s = as_scores(scores, "image scores")
    lab = np.asarray(labels).reshape(-1)
    good, defect = s[lab == 0], s[lab == 1]
    out: dict[str, OperatingPoint] = {}
    for key, recall in RECALLS.items():
        label = f"{recall:.0%} recall"
        t = threshold_at_recall(defect, recall)
        why = "no defective test images" if t is None else None
        out[key] = at_threshold(good, defect, t, label, level, why)
    label = policy_label(policy)
    try:
        choice = choose_threshold(good, defect, policy)
    except CalibrationError as exc:
        out["policy"] = at_threshold(good, defect, None, label, level, exc.message)
    else:
        out["policy"] = at_threshold(good, defect, choice.threshold, label, level)
    return out


def cell(point: dict[str, Any] | None, compact: bool = False) -> str:
    """A table cell: `rate (rejected/good) [low, high]`, or n/a (`compact`: on two lines)."""
    if not point or point.get("false_reject_rate") is None:
        return "n/a"
    sep, comma = ("\n", ",") if compact else (" ", ", ")
    return (
        f"{point['false_reject_rate']:.3f} ({point['false_rejects']}/{point['n_good']}){sep}"
        f"[{point['ci_low']:.3f}{comma}{point['ci_high']:.3f}]"
    )
