"""Threshold policies: which operating point on the ROC curve a recipe runs at.

- zero_miss: catch every labelled defect with the fewest false rejects (the seed report's
  choice); the threshold is the lowest defect score.
- false_reject_budget: the fewest misses while at most `false_reject_budget` of good parts are
  rejected.
- miss_budget: the fewest false rejects while at most `miss_budget` of defects are missed.
- youden: maximise Youden's J = true-positive rate - false-reject rate.
- f1: maximise F1 of the defect class.
- good_quantile: only good parts are needed; the threshold is the `quantile` of good scores, so
  about 1 - quantile of good parts are rejected. It says nothing about misses, and says so.

Ties between candidate thresholds go to fewer misses, then fewer false rejects, then the
higher threshold. Every choice is an observed score (or the float just above the largest), so
re-applying it reproduces the stated counts exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from station.calibration.roc import as_scores, candidate_thresholds, count_at
from station.errors import CalibrationError

POLICIES = ("zero_miss", "false_reject_budget", "miss_budget", "youden", "f1", "good_quantile")
_EPS = 1e-9  # budgets are fractions; counts compare against budget * n with this slack


@dataclass(frozen=True)
class Policy:
    name: str
    false_reject_budget: float | None = None
    miss_budget: float | None = None
    quantile: float | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise CalibrationError(
                f"unknown threshold policy {self.name!r}",
                hint=f"choose one of: {', '.join(POLICIES)}",
            )
        needs = {
            "false_reject_budget": ("false_reject_budget", self.false_reject_budget),
            "miss_budget": ("miss_budget", self.miss_budget),
            "good_quantile": ("quantile", self.quantile),
        }.get(self.name)
        if needs is not None:
            field, value = needs
            if value is None:
                flag = "--" + field.replace("_", "-")
                example = "0.99" if field == "quantile" else "0.05"
                raise CalibrationError(
                    f"policy {self.name} needs a value for {field}",
                    hint=f"give it with {flag}, e.g. {flag} {example}",
                )
            if not 0.0 <= value <= 1.0:
                raise CalibrationError(
                    f"{field} must be between 0 and 1, got {value}",
                    hint="give a fraction, e.g. 0.05 for 5 %",
                )

    @property
    def needs_defects(self) -> bool:
        return self.name != "good_quantile"

    def describe(self) -> str:
        if self.name == "zero_miss":
            return "no missed defect, fewest false rejects"
        if self.name == "false_reject_budget":
            return f"fewest misses with false rejects <= {self.false_reject_budget:.2%}"
        if self.name == "miss_budget":
            return f"fewest false rejects with misses <= {self.miss_budget:.2%}"
        if self.name == "youden":
            return "maximum Youden's J (true-positive rate - false-reject rate)"
        if self.name == "f1":
            return "maximum F1 of the defect class"
        return (
            f"{self.quantile:g} quantile of good scores only (about {1 - self.quantile:.2%} "
            "of good parts rejected; misses not controlled)"
        )

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"name": self.name}
        for key in ("false_reject_budget", "miss_budget", "quantile"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        return out


@dataclass(frozen=True)
class Choice:
    """The chosen threshold and its exact counts on the calibration set."""

    threshold: float
    false_rejects: int
    misses: int
    n_good: int
    n_defect: int

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.n_good if self.n_good else None

    @property
    def miss_rate(self) -> float | None:
        return self.misses / self.n_defect if self.n_defect else None


def check_data(policy: Policy, n_good: int, n_defect: int, what: str = "") -> None:
    """Refuse, with the reason and the way out, when a policy cannot work on these counts."""
    where = f" for {what}" if what else ""
    if n_good == 0 and n_defect == 0:
        raise CalibrationError(
            f"no labelled parts{where}",
            hint="capture labelled parts (station capture) or give --dataset DIR",
        )
    if policy.needs_defects and n_defect == 0:
        raise CalibrationError(
            f"policy {policy.name} needs defective parts, but the set has only {n_good} good "
            f"parts{where}",
            hint="add labelled defective parts, or use --policy good_quantile --quantile Q "
            "(a threshold from good parts only: it bounds false rejects, not misses)",
        )
    if n_good == 0 and policy.name in ("false_reject_budget", "youden", "f1", "good_quantile"):
        raise CalibrationError(
            f"policy {policy.name} needs good parts to count false rejects, but the set has "
            f"only {n_defect} defective parts{where}",
            hint="add labelled good parts, or use --policy zero_miss / miss_budget "
            "(their false-reject rate stays unknown)",
        )


def select(
    policy: Policy,
    thresholds: np.ndarray,
    false_rejects: np.ndarray,
    misses: np.ndarray,
    n_good: int,
    n_defect: int,
) -> int:
    """Index of the candidate the policy picks, from exact counts at each candidate."""
    check_data(policy, n_good, n_defect)
    fr = np.asarray(false_rejects, dtype=np.int64)
    miss = np.asarray(misses, dtype=np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    feasible = np.ones(len(t), dtype=bool)
    # primary objective, minimised; ties: fewer misses, fewer false rejects, higher threshold
    if policy.name == "zero_miss":
        feasible = miss == 0
        objective = fr.astype(np.float64)
    elif policy.name == "false_reject_budget":
        feasible = fr <= policy.false_reject_budget * n_good + _EPS
        objective = miss.astype(np.float64)
    elif policy.name == "miss_budget":
        feasible = miss <= policy.miss_budget * n_defect + _EPS
        objective = fr.astype(np.float64)
    elif policy.name == "youden":
        objective = -((1.0 - miss / n_defect) - fr / n_good)
    elif policy.name == "f1":
        tp = n_defect - miss
        denom = 2 * tp + fr + miss
        objective = -np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    else:  # good_quantile: handled on good scores alone by choose_threshold
        raise ValueError("good_quantile is chosen from good scores, not from ROC counts")
    idx = np.flatnonzero(feasible)
    if len(idx) == 0:  # cannot happen: t = lowest score meets any miss budget
        raise CalibrationError(f"no threshold satisfies policy {policy.name}")
    # np.lexsort: last key is primary
    order = np.lexsort((-t[idx], fr[idx], miss[idx], np.round(objective[idx], 12)))
    return int(idx[order[0]])


def quantile_threshold(good: np.ndarray, quantile: float) -> float:
    """The lowest good score (or the float above the highest) rejecting <= (1 - q) of good."""
    cand = candidate_thresholds(good)
    fr, _ = count_at(good, np.empty(0), cand)
    allowed = math.floor((1.0 - quantile) * len(good) + _EPS)
    ok = np.flatnonzero(fr <= allowed)
    return float(cand[ok[0]])


def choose_threshold(good: object, defect: object, policy: Policy, what: str = "") -> Choice:
    """Apply `policy` to labelled scores; the returned counts are exact for this threshold."""
    g = as_scores(good, "good scores")
    d = as_scores(defect, "defect scores")
    check_data(policy, len(g), len(d), what)
    if policy.name == "good_quantile":
        threshold = quantile_threshold(g, float(policy.quantile))
    else:
        cand = candidate_thresholds(g, d)
        fr, miss = count_at(g, d, cand)
        threshold = float(cand[select(policy, cand, fr, miss, len(g), len(d))])
    fr_n = int(np.count_nonzero(g >= threshold))
    miss_n = int(np.count_nonzero(d < threshold))
    return Choice(threshold, fr_n, miss_n, len(g), len(d))
