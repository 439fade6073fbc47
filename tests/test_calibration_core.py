"""Calibration of several detectors and the combined decision: stated rates reproduce exactly."""

from __future__ import annotations

import numpy as np
import pytest

from station.calibration.core import GUARD, PartScores, calibrate
from station.calibration.policies import Policy
from station.calibration.scores import group_parts, part_key
from station.decision import Verdict, decide
from station.errors import CalibrationError
from station.recipe import DecisionConfig

POLICIES = [
    Policy("zero_miss"),
    Policy("false_reject_budget", false_reject_budget=0.1),
    Policy("miss_budget", miss_budget=0.2),
    Policy("youden"),
    Policy("f1"),
    Policy("good_quantile", quantile=0.95),
]


def _data(seed: int, n_good: int = 120, n_defect: int = 25, dets: int = 2) -> PartScores:
    """Three shots per part (a few parts lost one), scores rounded to force ties."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_good, int), np.ones(n_defect, int)]
    n = len(labels)
    shots, scores = {}, {}
    for j in range(dets):
        base = rng.gamma(4.0, 0.1 * (j + 1), size=(n, 3))
        bump = labels * rng.uniform(0, 0.6 * (j + 1), n)
        base[np.arange(n), rng.integers(0, 3, n)] += bump  # the defect shows in one shot
        base = np.round(base, 3)
        base[rng.random(n) < 0.05, 2] = np.nan
        shots[f"det{j}"] = base
        scores[f"det{j}"] = np.nanmax(base, axis=1)
    return PartScores(
        [f"p{i:06d}" for i in range(n)],
        labels,
        scores,
        model_versions={k: f"{k}-v1" for k in scores},
        shots=shots,
    )


def _inspect_rule(
    data: PartScores, thresholds: dict[str, float], poses: str, combine: str
) -> tuple[int, int]:
    """The inspection's decision in plain Python: (false rejects, misses)."""
    fr = miss = 0
    for i, label in enumerate(data.labels):
        values = []
        for name in data.detectors:
            raw = [float(v) for v in data.shots[name][i] if not np.isnan(v)]
            part_score = max(raw) if poses == "max" else sum(raw) / len(raw)
            values.append(part_score / thresholds[name])  # combined over poses, then divided
        if combine == "any":
            part = max(values)
        elif combine == "all":
            part = min(values)
        else:
            part = sum(values) / len(values)
        fr += int(label == 0 and part >= 1.0)
        miss += int(label == 1 and part < 1.0)
    return fr, miss


@pytest.mark.parametrize("poses", ["max", "mean"])
@pytest.mark.parametrize("combine", ["any", "all", "mean"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_combined_rates_reproduce_exactly(policy: Policy, combine: str, poses: str) -> None:
    for seed in (len(poses) + len(combine),):  # one data set per combination
        data = _data(seed)
        res = calibrate(
            data,
            policy,
            recipe="t",
            combine_poses=poses,
            combine_detectors=combine,
            resamples=200,
            oob_resamples=10,
        )
        c = res.combined.choice
        assert _inspect_rule(data, res.thresholds, poses, combine) == (c.false_rejects, c.misses)
        assert res.combined.false_reject.count == c.false_rejects
        for name in data.detectors:
            point = res.detectors[name]
            one = PartScores(
                data.part_ids,
                data.labels,
                {name: data.scores[name]},
                shots={name: data.shots[name]},
            )
            expected = _inspect_rule(one, {name: point.threshold}, poses, "any")
            assert expected == (point.choice.false_rejects, point.choice.misses)
        if policy.name == "zero_miss":
            assert c.misses == 0
        if policy.name == "false_reject_budget":
            assert c.false_rejects <= 0.1 * data.n_good
        if policy.name == "miss_budget":
            assert c.misses <= 0.2 * data.n_defect


def test_a_part_whose_mean_score_is_the_threshold_is_rejected() -> None:
    """Pose scores are combined, then divided: score >= threshold is a reject, exactly."""
    weakest = [0.39971189053738476, 0.5226872211976584, 0.12831967114546297]
    m = sum(weakest) / 3
    assert sum(v / m for v in weakest) / 3 < 1.0  # the rounding trap of dividing first
    shots = np.array([[0.1, 0.12, 0.11], [0.2, 0.21, 0.19], weakest, [0.9, 0.8, 0.7]])
    data = PartScores(
        ["g1", "g2", "d1", "d2"],
        [0, 0, 1, 1],
        {"a": shots.mean(axis=1)},
        shots={"a": shots},
    )
    res = calibrate(data, Policy("zero_miss"), recipe="t", combine_poses="mean", resamples=100)
    t = res.thresholds["a"]
    # the weakest defect's own mean score, lowered by the guard (no part lies in between)
    assert t == pytest.approx(m * (1 - GUARD), rel=1e-12) and t < m
    assert _inspect_rule(data, res.thresholds, "mean", "any") == (0, 0)
    assert res.combined.choice.misses == 0
    cfg = DecisionConfig(combine_poses="mean")
    assert decide({"a": weakest}, {"a": t}, cfg, ["l", "c", "r"]).verdict is Verdict.FAIL


@pytest.mark.slow
def test_policies_that_allow_no_false_reject_find_a_threshold() -> None:
    """good_quantile 0.99 on 30 good parts, or a zero false-reject budget: the threshold lies
    above every good part, for one detector and for two, with the max or mean of poses."""
    rng = np.random.default_rng(7)
    policies = [
        Policy("good_quantile", quantile=0.99),
        Policy("false_reject_budget", false_reject_budget=0.0),
    ]
    for _ in range(5):
        shots = rng.gamma(4, 0.5, (30, 3, 2)).astype(np.float32).astype(np.float64)
        labels = np.zeros(30, int)
        labels[np.argsort(shots[:, :, 0].mean(axis=1))[:3]] = 1  # the three lowest: defective
        for names in (["a"], ["a", "b"]):
            data = PartScores(
                [f"p{i}" for i in range(30)],
                labels,
                {n: shots[:, :, j].max(axis=1) for j, n in enumerate(names)},
                shots={n: shots[:, :, j] for j, n in enumerate(names)},
            )
            for policy in policies:
                for poses in ("max", "mean"):
                    res = calibrate(
                        data, policy, recipe="t", combine_poses=poses, resamples=10,
                        oob_resamples=20,
                    )
                    assert res.combined.choice.false_rejects == 0
                    assert _inspect_rule(data, res.thresholds, poses, "any")[0] == 0


def test_combined_zero_miss_is_never_worse_than_one_detector() -> None:
    data = _data(4)
    res = calibrate(
        data, Policy("zero_miss"), recipe="t", combine_detectors="any", resamples=100,
        oob_resamples=0,
    )  # fmt: skip
    assert res.combined.choice.misses == 0
    # a common scale of the thresholds searched on the combined score: at scale 1 (each
    # detector at its own zero-miss point) "any" would reject at least as many good parts
    at_scale_1 = {n: p.policy_threshold for n, p in res.detectors.items()}
    fr_at_scale_1, _ = _inspect_rule(data, at_scale_1, "max", "any")
    assert res.combined.choice.false_rejects <= fr_at_scale_1


def test_single_detector_combined_equals_detector() -> None:
    data = _data(5, dets=1)
    res = calibrate(data, Policy("youden"), recipe="t", resamples=300, oob_resamples=20)
    det = res.detectors["det0"]
    assert res.scale == 1.0  # the threshold sits just below the policy's observed score
    assert det.threshold == pytest.approx(det.policy_threshold * (1 - GUARD), rel=1e-12)
    assert det.choice.false_rejects == res.combined.choice.false_rejects
    assert det.choice.misses == res.combined.choice.misses
    assert det.false_reject == res.combined.false_reject  # same flags, same seed, same interval


def test_zero_miss_warns_about_too_few_defects() -> None:
    data = _data(6, n_defect=9, dets=1)
    res = calibrate(data, Policy("zero_miss"), recipe="t", resamples=200, oob_resamples=20)
    text = " ".join(res.warnings)
    assert "9 defective parts" in text and "28.3%" in text and "299" in text


def test_miss_budget_guarantee_warning() -> None:
    data = _data(7, n_defect=20, dets=1)
    res = calibrate(
        data, Policy("miss_budget", miss_budget=0.05), recipe="t", resamples=200, oob_resamples=20
    )
    assert any("too few defective parts for the miss budget" in w for w in res.warnings)


def test_good_only_set_states_it() -> None:
    rng = np.random.default_rng(0)
    data = PartScores([str(i) for i in range(50)], np.zeros(50), {"a": rng.random(50) + 0.1})
    with pytest.raises(CalibrationError, match="good_quantile"):
        calibrate(data, Policy("zero_miss"), recipe="t")
    res = calibrate(
        data, Policy("good_quantile", quantile=0.9), recipe="t", resamples=200, oob_resamples=20
    )
    assert res.combined.choice.false_rejects == 5 and res.combined.miss.n == 0
    assert any("good parts only" in w and "miss rate is unknown" in w for w in res.warnings)


def test_all_defect_set_states_unknown_false_rejects() -> None:
    data = PartScores(["a", "b", "c"], np.ones(3), {"a": np.array([0.3, 0.5, 0.9])})
    res = calibrate(data, Policy("zero_miss"), recipe="t", resamples=200, oob_resamples=20)
    assert res.thresholds == {"a": pytest.approx(0.3 * (1 - GUARD), rel=1e-12)}
    assert res.combined.false_reject.rate is None
    assert any("false-reject rate is unknown" in w for w in res.warnings)


def test_non_positive_threshold_is_refused() -> None:
    data = PartScores(["a", "b", "c", "d"], [0, 0, 1, 1], {"a": np.array([-0.9, -0.8, -0.5, 0.2])})
    with pytest.raises(CalibrationError, match="must be positive"):
        calibrate(data, Policy("zero_miss"), recipe="t")


def test_capture_stems_group_into_parts() -> None:
    stems = ["p000001_left", "p000001_centre", "p000002_left", "p000002_centre"]
    keys = [part_key(s, True) for s in stems]
    scores_in = {"a": [0.1, 0.7, 0.2, 0.3]}
    parts, labels, scores, shots = group_parts(keys, [0, 1, 0, 0], scores_in, "max", [0, 1, 1, 0])
    assert parts == ["p000001", "p000002"] and labels.tolist() == [1, 0]
    assert scores["a"].tolist() == [0.7, 0.3]
    assert shots["a"].tolist() == [[0.1, 0.7], [0.3, 0.2]]  # pose order within each part
    _, _, mean, _ = group_parts(keys, [0, 1, 0, 0], scores_in, "mean")
    assert np.allclose(mean["a"], [0.4, 0.25])
    assert part_key("0004_002_01_t08", True) == "0004_002_01_t08"  # AITEX tile: its own part


def test_out_of_sample_is_honest_about_zero_miss() -> None:
    data = _data(8, n_good=150, n_defect=20, dets=1)
    res = calibrate(data, Policy("zero_miss"), recipe="t", resamples=200, oob_resamples=150)
    oob = res.out_of_sample
    assert res.combined.choice.misses == 0  # by construction on the calibration set
    assert oob is not None and oob.resamples == 150
    assert oob.miss_rate is not None and oob.miss_rate > 0  # new defects can fall below it
    lo, hi = oob.threshold_ci["det0"]
    assert lo <= res.thresholds["det0"] <= hi
    assert any("left out of bootstrap resamples" in n for n in res.notes)
    # separated classes: no false reject out of sample; the threshold sits at the weakest
    # defect drawn, so a left-out weaker defect can still be missed (and the estimate says so)
    sep = PartScores(
        [str(i) for i in range(60)],
        np.r_[np.zeros(40), np.ones(20)],
        {"a": np.r_[np.linspace(0.1, 0.3, 40), np.linspace(2.0, 3.0, 20)]},
    )
    oob = calibrate(sep, Policy("youden"), recipe="t", resamples=200).out_of_sample
    assert oob is not None and oob.false_reject_rate == 0.0
    assert oob.threshold_ci["a"][0] == pytest.approx(2.0 * (1 - GUARD), rel=1e-12)
    assert 0.0 < oob.miss_rate < 0.2


def test_other_policies_are_compared_not_applied() -> None:
    data = _data(9, dets=1)
    compare = [Policy("zero_miss"), Policy("youden"), Policy("good_quantile", quantile=0.9)]
    res = calibrate(
        data, Policy("youden"), recipe="t", resamples=100, oob_resamples=0, compare=compare
    )
    assert [a.policy.name for a in res.alternatives] == ["zero_miss", "good_quantile"]
    zero = res.alternatives[0]
    assert zero.misses == 0 and zero.thresholds is not None
    assert _inspect_rule(data, zero.thresholds, "max", "any") == (zero.false_rejects, 0)
    good_only = PartScores(["a", "b"], [0, 0], {"x": np.array([0.2, 0.3])})
    res = calibrate(
        good_only, Policy("good_quantile", quantile=0.5), recipe="t", resamples=100,
        compare=[Policy("zero_miss")],
    )  # fmt: skip
    assert res.alternatives[0].thresholds is None and "defective" in res.alternatives[0].refused


@pytest.mark.parametrize("poses", ["max", "mean"])
@pytest.mark.parametrize("combine", ["any", "all", "mean"])
def test_inspection_decision_reproduces_the_stated_counts(poses: str, combine: str) -> None:
    """The contract with station inspect: its own decide() gives the calibrated counts."""
    cfg = DecisionConfig(combine_poses=poses, combine_detectors=combine)
    rng = np.random.default_rng(11)
    labels = np.r_[np.zeros(60, int), np.ones(15, int)]
    shots = {
        f"d{j}": rng.gamma(3.0, 0.2, (75, 3)) + labels[:, None] * rng.uniform(0, 0.5, (75, 3))
        for j in range(2)
    }
    data = PartScores(
        [str(i) for i in range(75)],
        labels,
        {k: v.max(axis=1) for k, v in shots.items()},
        shots=shots,
    )
    for policy in (Policy("zero_miss"), Policy("youden")):
        res = calibrate(
            data, policy, recipe="t", combine_poses=poses, combine_detectors=combine,
            resamples=100, oob_resamples=0,
        )  # fmt: skip
        fr = miss = 0
        for i, label in enumerate(labels):
            part = {k: [float(x) for x in v[i]] for k, v in shots.items()}
            rejected = decide(part, res.thresholds, cfg, ["l", "c", "r"]).rejected
            fr += int(label == 0 and rejected)
            miss += int(label == 1 and not rejected)
        assert (fr, miss) == (res.combined.choice.false_rejects, res.combined.choice.misses)
