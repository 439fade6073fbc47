"""Is one tune candidate better than another, or within the noise of the images it was scored
on? A paired bootstrap of the synthetic-defect AUROC difference: the held-out good images and
the synthetic defects are resampled, the same draws for both candidates (they were scored on
the same images), so what the two share cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from station.calibration.roc import auroc

DRAWS = 2000
LEVEL = 0.90  # two-sided: its lower bound above 0 is a gain with one-sided 95 % confidence


def draw_counts(n_good: int, n_bad: int, times: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`times` seeded bootstrap draws of n_good good and n_bad defect scores, as how often each
    score is drawn (times x n_good, times x n_bad)."""
    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:
        picks = rng.integers(0, n, (times, n))
        return np.stack([np.bincount(p, minlength=n) for p in picks]).astype(np.float64)

    return counts(n_good), counts(n_bad)


def bootstrap_aurocs(
    good: np.ndarray, bad: np.ndarray, counts: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The AUROC of `bad` against `good` under each draw of `counts` (from `draw_counts`)."""
    good, bad = np.asarray(good, np.float64), np.asarray(bad, np.float64)
    wins = (bad[:, None] > good[None, :]) + 0.5 * (bad[:, None] == good[None, :])
    w_good, w_bad = counts
    return np.einsum("bj,ji,bi->b", w_bad, wins, w_good) / (len(good) * len(bad))


@dataclass(frozen=True)
class Gain:
    """Candidate A's synthetic AUROC minus B's, with its paired bootstrap interval."""

    diff: float
    low: float
    high: float
    level: float = LEVEL

    @property
    def clear(self) -> bool:
        return self.low > 0.0

    def describe(self) -> str:
        """One line for the report, worded for B being the recipe's own detector."""
        verdict = (
            "a clear gain"
            if self.clear
            else "within the noise of these images: keeping the recipe's own is as well supported"
        )
        return (
            f"{self.diff:+.3f} synthetic AUROC [{self.level * 100:.0f} % paired bootstrap interval "
            f"{self.low:+.3f}, {self.high:+.3f}], {verdict}"
        )


def paired_gain(
    a: dict[str, Any], b: dict[str, Any], times: int = DRAWS, seed: int = 0, level: float = LEVEL
) -> Gain | None:
    """A's gain over B from two tune records' stored scores; None when either lacks them or
    they were not scored on the same number of good and synthetic images."""
    sa, sb = a.get("scores") or {}, b.get("scores") or {}
    try:
        ga, ya = np.asarray(sa["good"], float), np.asarray(sa["synthetic"], float)
        gb, yb = np.asarray(sb["good"], float), np.asarray(sb["synthetic"], float)
    except KeyError:
        return None
    if not len(ga) or not len(ya) or ga.shape != gb.shape or ya.shape != yb.shape:
        return None
    counts = draw_counts(len(ga), len(ya), times, seed)
    boot = bootstrap_aurocs(ga, ya, counts) - bootstrap_aurocs(gb, yb, counts)
    diff = float(auroc(ga, ya) - auroc(gb, yb))  # type: ignore[operator]  # both non-empty
    tail = (1.0 - level) / 2
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return Gain(diff, float(low), float(high), level)
