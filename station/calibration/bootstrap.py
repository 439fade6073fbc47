"""Confidence intervals for error rates and AUROC.

- Percentile bootstrap with stratified resampling (good and defective parts resampled
  separately, so each resample keeps the set's class counts), fixed seed, vectorised.
- Clopper-Pearson exact binomial intervals, and the exact one-sided upper bound. With zero
  observed errors the bootstrap interval collapses to [0, 0]; the exact upper bound
  (1 - alpha ** (1 / n), about 3 / n at 95 %) is the honest statement then.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 20261124
_CHUNK = 256  # resamples per vectorised block (bounds memory on large sets)


def clopper_pearson(k: int, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k / n."""
    if n <= 0:
        return (0.0, 1.0)
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def upper_bound(k: int, n: int, level: float = DEFAULT_LEVEL) -> float:
    """Exact one-sided upper confidence bound for k / n (k = 0: 1 - (1 - level) ** (1 / n))."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(level, k + 1, n - k))


def parts_needed(max_rate: float, level: float = DEFAULT_LEVEL) -> int | None:
    """Parts needed, all without error, to bound a rate at `max_rate` (None: impossible)."""
    if max_rate <= 0.0:
        return None
    if max_rate >= 1.0:
        return 1
    return math.ceil(math.log(1.0 - level) / math.log(1.0 - max_rate))


@dataclass(frozen=True)
class RateEstimate:
    """An error rate on the calibration set with its uncertainty."""

    count: int
    n: int
    rate: float | None
    ci_low: float | None  # percentile bootstrap
    ci_high: float | None
    exact_low: float | None  # Clopper-Pearson
    exact_high: float | None
    upper: float | None  # exact one-sided upper bound at `level`
    level: float

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bootstrap_rate(
    flags: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    rng: np.random.Generator | None = None,
) -> RateEstimate:
    """Rate of True in `flags` (one per part), with bootstrap and exact intervals."""
    f = np.asarray(flags, dtype=bool).reshape(-1)
    n, k = len(f), int(f.sum())
    if n == 0:
        return RateEstimate(0, 0, None, None, None, None, None, None, level)
    rng = rng or np.random.default_rng(DEFAULT_SEED)
    rates = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        rates[start : start + b] = f[idx].mean(axis=1)
    alpha = 1.0 - level
    lo, hi = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
    elo, ehi = clopper_pearson(k, n, level)
    return RateEstimate(
        k, n, k / n, float(lo), float(hi), elo, ehi, upper_bound(k, n, level), level
    )


def _auroc_rows(good: np.ndarray, defect: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC for each row of (B x n_good) and (B x n_defect) score matrices."""
    both = np.concatenate([good, defect], axis=1)
    ranks = stats.rankdata(both, axis=1)  # average ranks: ties count one half
    n_g, n_d = good.shape[1], defect.shape[1]
    u = ranks[:, n_g:].sum(axis=1) - n_d * (n_d + 1) / 2.0
    return u / (n_g * n_d)


def bootstrap_auroc(
    good: np.ndarray,
    defect: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    rng: np.random.Generator | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of AUROC (stratified); None without both classes."""
    g = np.asarray(good, dtype=np.float64)
    d = np.asarray(defect, dtype=np.float64)
    if len(g) == 0 or len(d) == 0:
        return None
    rng = rng or np.random.default_rng(DEFAULT_SEED)
    values = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        gi = g[rng.integers(0, len(g), size=(b, len(g)))]
        di = d[rng.integers(0, len(d), size=(b, len(d)))]
        values[start : start + b] = _auroc_rows(gi, di)
    alpha = 1.0 - level
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))
