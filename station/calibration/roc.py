"""ROC curves from labelled scores, with exact counts at every candidate threshold.

Convention (everywhere in the station): a part is defective when `score >= threshold`.
Candidate thresholds are the distinct observed scores plus one value just above the largest
("reject nothing"), so any threshold chosen from them reproduces its counts exactly when it is
applied again to the same scores, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def as_scores(values: object, what: str = "scores") -> np.ndarray:
    """A 1-D float64 array of finite scores (float32 scores convert exactly)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


def candidate_thresholds(*score_sets: np.ndarray) -> np.ndarray:
    """Distinct scores, ascending, followed by the next float above the largest."""
    parts = [np.asarray(s, dtype=np.float64) for s in score_sets if len(s)]
    if not parts:
        return np.empty(0)
    values = np.unique(np.concatenate(parts))
    return np.append(values, np.nextafter(values[-1], np.inf))


def count_at(
    good: np.ndarray, defect: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(false rejects, misses) at each threshold: good >= t, and defect < t."""
    g = np.sort(good)
    d = np.sort(defect)
    t = np.asarray(thresholds, dtype=np.float64)
    false_rejects = len(g) - np.searchsorted(g, t, side="left")
    misses = np.searchsorted(d, t, side="left")
    return false_rejects.astype(np.int64), misses.astype(np.int64)


def auroc(good: Sequence[float] | np.ndarray, defect: Sequence[float] | np.ndarray) -> float | None:
    """P(defect score > good score) + 0.5 P(equal) (station.metrics `image_auroc` of the two
    sets); None without both."""
    from station.metrics import image_auroc  # on use: metrics loads scipy (slow to import)

    g = np.asarray(good, dtype=np.float64).reshape(-1)
    d = np.asarray(defect, dtype=np.float64).reshape(-1)
    if len(g) == 0 or len(d) == 0:
        return None
    return float(image_auroc(np.r_[g, d], np.r_[np.zeros(len(g)), np.ones(len(d))]))


@dataclass(frozen=True)
class RocCurve:
    """Counts and rates at every candidate threshold (ascending thresholds)."""

    thresholds: np.ndarray
    false_rejects: np.ndarray  # good parts with score >= threshold
    misses: np.ndarray  # defective parts with score < threshold
    n_good: int
    n_defect: int
    auroc: float | None

    @property
    def false_reject_rate(self) -> np.ndarray:
        return self.false_rejects / max(self.n_good, 1)

    @property
    def miss_rate(self) -> np.ndarray:
        return self.misses / max(self.n_defect, 1)

    @property
    def true_positive_rate(self) -> np.ndarray:
        return 1.0 - self.miss_rate


def roc_curve(good: np.ndarray, defect: np.ndarray) -> RocCurve:
    good = as_scores(good, "good scores")
    defect = as_scores(defect, "defect scores")
    thresholds = candidate_thresholds(good, defect)
    fr, miss = count_at(good, defect, thresholds)
    return RocCurve(thresholds, fr, miss, len(good), len(defect), auroc(good, defect))
