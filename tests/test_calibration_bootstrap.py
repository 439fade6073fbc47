"""Confidence intervals: exact bounds, and coverage of the bootstrap on simulated scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from station.calibration.bootstrap import (
    bootstrap_auroc,
    bootstrap_rate,
    clopper_pearson,
    parts_needed,
    upper_bound,
)


def test_exact_bounds() -> None:
    # zero errors: 1 - alpha ** (1 / n), the "rule of three" for large n
    assert math.isclose(upper_bound(0, 10), 1 - 0.05 ** (1 / 10), rel_tol=1e-9)
    assert abs(upper_bound(0, 300) - 3 / 300) < 0.0005
    assert upper_bound(5, 5) == 1.0 and upper_bound(0, 0) == 1.0
    # k > 0: the bound p is where seeing k or fewer errors in n becomes a 5 % event
    for k, n in ((1, 10), (3, 20), (12, 300)):
        p = upper_bound(k, n)
        assert stats.binom.cdf(k, n, p) == pytest.approx(0.05, abs=1e-9)
    assert upper_bound(3, 20) == pytest.approx(0.3437, abs=1e-4)
    lo, hi = clopper_pearson(0, 20)
    assert lo == 0.0 and math.isclose(hi, 1 - 0.025 ** (1 / 20), rel_tol=1e-9)
    lo, hi = clopper_pearson(7, 20)
    assert lo < 7 / 20 < hi
    assert parts_needed(0.01) == 299 and parts_needed(0.05) == 59 and parts_needed(0.0) is None


def test_zero_errors_collapse_the_bootstrap_but_not_the_exact_bound() -> None:
    est = bootstrap_rate(np.zeros(9, dtype=bool))
    assert (est.rate, est.ci_low, est.ci_high) == (0.0, 0.0, 0.0)
    assert math.isclose(est.upper, 1 - 0.05 ** (1 / 9), rel_tol=1e-9)  # 28.3 %
    empty = bootstrap_rate(np.zeros(0, dtype=bool))
    assert empty.rate is None and empty.n == 0


def test_fixed_seed_is_reproducible() -> None:
    flags = np.random.default_rng(0).random(100) < 0.2
    a = bootstrap_rate(flags, rng=np.random.default_rng(5))
    b = bootstrap_rate(flags, rng=np.random.default_rng(5))
    assert a == b


@pytest.mark.slow
def test_rate_interval_coverage_on_simulated_scores() -> None:
    """good ~ N(0, 1), defect ~ N(2, 1), threshold 1: true rates 1 - Phi(1) and Phi(-1)."""
    rng = np.random.default_rng(12345)
    true_fr = 1 - stats.norm.cdf(1.0)
    true_miss = stats.norm.cdf(-1.0)
    reps, covered_fr, covered_miss, covered_exact = 300, 0, 0, 0
    for _ in range(reps):
        good = rng.normal(0.0, 1.0, 200)
        defect = rng.normal(2.0, 1.0, 60)
        fr = bootstrap_rate(good >= 1.0, resamples=1000, rng=rng)
        miss = bootstrap_rate(defect < 1.0, resamples=1000, rng=rng)
        covered_fr += fr.ci_low <= true_fr <= fr.ci_high
        covered_miss += miss.ci_low <= true_miss <= miss.ci_high
        covered_exact += miss.exact_low <= true_miss <= miss.exact_high
    assert 0.90 <= covered_fr / reps <= 0.99
    assert 0.90 <= covered_miss / reps <= 0.99
    assert covered_exact / reps >= 0.93  # Clopper-Pearson is conservative


@pytest.mark.slow
def test_auroc_interval_coverage_on_simulated_scores() -> None:
    rng = np.random.default_rng(777)
    true_auc = stats.norm.cdf(1.5 / math.sqrt(2))  # N(0,1) vs N(1.5,1)
    reps, covered = 150, 0
    for _ in range(reps):
        good = rng.normal(0.0, 1.0, 120)
        defect = rng.normal(1.5, 1.0, 40)
        lo, hi = bootstrap_auroc(good, defect, resamples=500, rng=rng)
        covered += lo <= true_auc <= hi
    assert 0.88 <= covered / reps <= 0.99
    assert bootstrap_auroc(np.ones(3), np.empty(0)) is None
