"""False-reject rates at the operating points of `station evaluate`, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from station.calibration.evaluation import mean_metrics
from station.calibration.operating_point import (
    at_threshold,
    cell,
    operating_points,
    threshold_at_recall,
)
from station.calibration.policies import Policy, choose_threshold


def test_threshold_at_recall_by_hand() -> None:
    defect = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert threshold_at_recall(defect, 1.0) == 1.0
    # 95 % of 5 is 4.75: all five must stay at or above it
    assert threshold_at_recall(defect, 0.95) == 1.0
    assert threshold_at_recall(defect, 0.8) == 2.0  # 4 of 5 exactly
    twenty = np.arange(1.0, 21.0)
    assert threshold_at_recall(twenty, 0.95) == 2.0  # 19 of 20
    assert threshold_at_recall(np.arange(1.0, 22.0), 0.95) == 2.0  # ceil(19.95) = 20 of 21
    # 0.07 * 100 is 7.000000000000001 in floats: still the 7th highest, not the 8th
    assert threshold_at_recall(np.arange(1.0, 101.0), 0.07) == 94.0
    assert threshold_at_recall([], 0.95) is None


def test_rates_with_ties_at_the_threshold() -> None:
    good = [0.1, 0.2, 0.5, 0.5, 0.7]
    defect = [0.5, 0.9, 1.2]
    p = operating_points(np.array(good + defect), np.array([0] * 5 + [1] * 3), Policy("zero_miss"))
    r100 = p["recall_100"]
    # threshold 0.5 = the lowest defect; the two goods tied at 0.5 count as rejected, with 0.7
    assert r100.threshold == 0.5 and r100.false_rejects == 3 and r100.n_good == 5
    assert r100.false_reject_rate == pytest.approx(0.6) and r100.recall == 1.0
    # exact Clopper-Pearson for 3/5 at 95 %
    assert r100.ci_low == pytest.approx(stats.beta.ppf(0.025, 3, 3))
    assert r100.ci_high == pytest.approx(stats.beta.ppf(0.975, 4, 2))
    assert r100.ci_low == pytest.approx(0.1466, abs=1e-4)
    assert r100.ci_high == pytest.approx(0.9473, abs=1e-4)
    # 95 % of 3 defects is 2.85: still all three, same point
    assert p["recall_95"].threshold == 0.5 and p["recall_95"].false_rejects == 3
    # zero_miss on the same set is the same threshold, through the calibration code
    assert p["policy"].threshold == 0.5 and p["policy"].false_rejects == 3
    assert "zero_miss on the test set (optimistic" in p["policy"].label
    assert cell(r100.as_dict()) == "0.600 (3/5) [0.147, 0.947]"
    assert cell(r100.as_dict(), compact=True) == "0.600 (3/5)\n[0.147,0.947]"


def test_ninety_five_percent_drops_one_weak_defect() -> None:
    defect = list(np.linspace(1.0, 2.0, 20))
    defect[0] = 0.05  # one weak defect below every good image
    good = [0.1, 0.3, 0.6, 0.8]
    scores = np.array(good + defect)
    labels = np.array([0] * 4 + [1] * 20)
    p = operating_points(scores, labels, Policy("zero_miss"))
    assert p["recall_100"].threshold == 0.05 and p["recall_100"].false_rejects == 4
    assert p["recall_100"].false_reject_rate == 1.0 and p["recall_100"].ci_high == 1.0
    r95 = p["recall_95"]
    assert r95.threshold == pytest.approx(defect[1]) and r95.false_rejects == 0
    assert r95.caught == 19 and r95.recall == pytest.approx(0.95)
    assert r95.false_reject_rate == 0.0 and r95.ci_low == 0.0
    assert r95.ci_high == pytest.approx(1 - 0.025 ** (1 / 4))  # k = 0: 1 - (alpha/2)^(1/n)


def test_recall_95_is_the_miss_budget_policy_choice() -> None:
    rng = np.random.default_rng(3)
    for n_defect in (1, 7, 19, 20, 21, 40):
        good = rng.normal(0, 1, 30).round(1)  # rounded: ties between and within classes
        defect = rng.normal(1.5, 1, n_defect).round(1)
        labels = np.array([0] * len(good) + [1] * n_defect)
        p = operating_points(np.concatenate([good, defect]), labels, Policy("zero_miss"))
        mb = choose_threshold(good, defect, Policy("miss_budget", miss_budget=0.05))
        zm = choose_threshold(good, defect, Policy("zero_miss"))
        assert p["recall_95"].threshold == mb.threshold
        assert p["recall_95"].false_rejects == mb.false_rejects
        assert p["recall_100"].threshold == zm.threshold
        assert p["recall_100"].false_rejects == zm.false_rejects


def test_other_policy_on_the_test_set() -> None:
    good = np.arange(100) / 100.0  # 0.00 .. 0.99
    labels = np.array([0] * 100 + [1] * 2)
    p = operating_points(np.append(good, [0.5, 2.0]), labels, Policy("good_quantile", quantile=0.9))
    pol = p["policy"]
    assert "good_quantile" in pol.label and pol.threshold is not None
    assert pol.false_rejects == int(np.count_nonzero(good >= pol.threshold))
    assert pol.caught == 1 and pol.recall == 0.5  # the 0.5 defect is below the threshold


def test_all_good_gives_na_and_says_why() -> None:
    p = operating_points(np.array([0.1, 0.2, 0.3]), np.zeros(3, int), Policy("zero_miss"))
    for key in ("recall_100", "recall_95"):
        assert p[key].threshold is None and p[key].false_reject_rate is None
        assert p[key].note == "no defective test images"
        assert p[key].n_good == 3 and cell(p[key].as_dict()) == "n/a"
    pol = p["policy"]
    assert pol.false_reject_rate is None and "needs defective parts" in (pol.note or "")


def test_all_defect_gives_na() -> None:
    p = operating_points(np.array([0.4, 0.9]), np.ones(2, int), Policy("zero_miss"))
    r100 = p["recall_100"]
    assert r100.threshold == 0.4 and r100.recall == 1.0 and r100.n_good == 0
    assert r100.false_reject_rate is None and r100.ci_low is None
    assert r100.note == "no good test images" and cell(r100.as_dict()) == "n/a"
    assert p["policy"].false_reject_rate is None  # zero_miss runs, but no rate to give


def test_at_threshold_without_threshold() -> None:
    pt = at_threshold([0.1], [], None, "x", note="why")
    assert pt.false_reject_rate is None and pt.note == "why" and cell(None) == "n/a"


def test_mean_over_categories_by_hand() -> None:
    """The mean row: each metric averaged over the categories that define it (NaN and None
    are left out, not counted as 0)."""
    results = {
        "a": {"d": {"image_auroc": 0.8, "pixel_auroc": 0.9, "fr_recall_100": 0.25}},
        "b": {"d": {"image_auroc": 0.6, "pixel_auroc": float("nan"), "fr_recall_100": 0.5}},
        "c": {"d": {"image_auroc": 0.7, "pixel_auroc": None, "fr_recall_100": 0.0}},
    }
    mean = mean_metrics(results, ["d"])["d"]
    assert mean["image_auroc"] == pytest.approx(0.7)
    assert mean["pixel_auroc"] == pytest.approx(0.9)
    assert mean["fr_recall_100"] == pytest.approx(0.25)
    assert np.isnan(mean["aupro"])  # no category has it
