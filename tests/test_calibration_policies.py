"""Threshold policies on hand-made score sets: ties, one class only, separated, overlapping."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from station import recipe as recipes
from station.calibration.policies import (
    RULES,
    Counts,
    Policy,
    PolicyRule,
    choose_threshold,
    register,
)
from station.calibration.recipes import parse_recipe
from station.calibration.roc import auroc, roc_curve
from station.cli.app import main
from station.errors import CalibrationError, RecipeError

ALL = [
    Policy("zero_miss"),
    Policy("false_reject_budget", false_reject_budget=0.25),
    Policy("miss_budget", miss_budget=0.34),
    Policy("youden"),
    Policy("f1"),
    Policy("good_quantile", quantile=0.75),
]


def _counts(good, defect, t):  # noqa: ANN001, ANN202
    return sum(1 for g in good if g >= t), sum(1 for d in defect if d < t)


def _brute(policy: Policy, good: list[float], defect: list[float]) -> tuple[int, int]:
    """(false rejects, misses) of the best threshold by exhaustive search, written plainly."""
    cands = sorted(set(good) | set(defect))
    cands.append(cands[-1] + 1.0)
    ng, nd = len(good), len(defect)
    best = None
    for t in cands:
        fr, miss = _counts(good, defect, t)
        if policy.name == "zero_miss":
            if miss:
                continue
            key = (fr,)
        elif policy.name == "false_reject_budget":
            if fr > policy.false_reject_budget * ng + 1e-9:
                continue
            key = (miss, fr)
        elif policy.name == "miss_budget":
            if miss > policy.miss_budget * nd + 1e-9:
                continue
            key = (fr, miss)
        elif policy.name == "youden":
            key = (round(-((nd - miss) / nd - fr / ng), 12), miss, fr)
        else:  # f1
            tp = nd - miss
            f1 = 2 * tp / (2 * tp + fr + miss) if tp else 0.0
            key = (round(-f1, 12), miss, fr)
        if best is None or key < best[0]:
            best = (key, (fr, miss))
    assert best is not None
    return best[1]


def test_ties_are_counted_as_rejected_and_reproduce_exactly() -> None:
    good = [1.0, 2.0, 2.0, 3.0]
    defect = [2.0, 3.0, 4.0]
    c = choose_threshold(good, defect, Policy("zero_miss"))
    assert c.threshold == 2.0  # the lowest defect score: the highest that catches all
    assert (c.false_rejects, c.misses) == (3, 0)  # both good 2.0s tie with it and are rejected
    assert _counts(good, defect, c.threshold) == (c.false_rejects, c.misses)
    # a budget of one false reject cannot separate the tied pair at 2.0: it goes up to 3.0
    c = choose_threshold(good, defect, Policy("false_reject_budget", false_reject_budget=0.25))
    assert (c.threshold, c.false_rejects, c.misses) == (3.0, 1, 1)


def test_every_score_tied() -> None:
    good, defect = [5.0] * 4, [5.0] * 3
    assert auroc(np.array(good), np.array(defect)) == 0.5
    c = choose_threshold(good, defect, Policy("zero_miss"))
    assert (c.threshold, c.false_rejects, c.misses) == (5.0, 4, 0)
    c = choose_threshold(good, defect, Policy("false_reject_budget", false_reject_budget=0.5))
    assert c.threshold > 5.0 and (c.false_rejects, c.misses) == (0, 3)


@pytest.mark.parametrize("policy", [p for p in ALL if p.name != "good_quantile"])
def test_all_good_is_refused_with_the_way_out(policy: Policy) -> None:
    with pytest.raises(CalibrationError) as info:
        choose_threshold([0.1, 0.2, 0.3], [], policy)
    assert "defective" in info.value.message
    assert "good_quantile" in (info.value.hint or "") and "--quantile" in info.value.hint


def test_all_good_quantile_policy() -> None:
    good = [float(v) for v in range(1, 9)]  # 1..8
    c = choose_threshold(good, [], Policy("good_quantile", quantile=0.75))
    assert (c.threshold, c.false_rejects, c.n_defect) == (7.0, 2, 0)
    assert c.miss_rate is None
    c = choose_threshold(good, [], Policy("good_quantile", quantile=1.0))
    assert c.threshold > 8.0 and c.false_rejects == 0
    c = choose_threshold(good, [], Policy("good_quantile", quantile=0.0))
    assert c.threshold == 1.0 and c.false_rejects == 8


def test_all_defect() -> None:
    defect = [0.4, 0.7, 0.9]
    c = choose_threshold([], defect, Policy("zero_miss"))
    assert (c.threshold, c.misses, c.false_reject_rate) == (0.4, 0, None)
    # no good parts: raising the threshold saves nothing, so ties go to fewer misses
    c = choose_threshold([], defect, Policy("miss_budget", miss_budget=0.34))
    assert (c.threshold, c.misses) == (0.4, 0)
    for policy in (
        Policy("false_reject_budget", false_reject_budget=0.1),
        Policy("youden"),
        Policy("f1"),
        Policy("good_quantile", quantile=0.9),
    ):
        with pytest.raises(CalibrationError, match="needs good parts"):
            choose_threshold([], defect, policy)


def test_nothing_at_all() -> None:
    with pytest.raises(CalibrationError, match="no labelled parts"):
        choose_threshold([], [], Policy("zero_miss"))


@pytest.mark.parametrize("policy", [p for p in ALL if p.name != "good_quantile"])
def test_perfectly_separated(policy: Policy) -> None:
    good, defect = [0.1, 0.2, 0.3, 0.35], [0.6, 0.8, 0.9]
    c = choose_threshold(good, defect, policy)
    # every candidate in (0.35, 0.6] is perfect; ties go to the highest, an observed score
    assert (c.threshold, c.false_rejects, c.misses) == (0.6, 0, 0)


def test_inverted_scores_reject_nothing_under_a_zero_budget() -> None:
    good, defect = [0.8, 0.9], [0.1, 0.2]
    c = choose_threshold(good, defect, Policy("false_reject_budget", false_reject_budget=0.0))
    assert c.threshold > 0.9 and (c.false_rejects, c.misses) == (0, 2)
    assert roc_curve(np.array(good), np.array(defect)).auroc == 0.0


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("policy", [p for p in ALL if p.name != "good_quantile"])
def test_overlapping_matches_exhaustive_search(policy: Policy, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # integer scores force many ties, within and across the classes
    good = rng.integers(0, 12, size=int(rng.integers(3, 30))).astype(float).tolist()
    defect = rng.integers(5, 16, size=int(rng.integers(1, 12))).astype(float).tolist()
    c = choose_threshold(good, defect, policy)
    assert (c.false_rejects, c.misses) == _brute(policy, good, defect)
    assert _counts(good, defect, c.threshold) == (c.false_rejects, c.misses)
    assert c.threshold in set(good) | set(defect) or c.threshold > max(good + defect)


def test_zero_budgets() -> None:
    good, defect = [1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 5.0]
    zm = choose_threshold(good, defect, Policy("zero_miss"))
    mb = choose_threshold(good, defect, Policy("miss_budget", miss_budget=0.0))
    assert zm == mb and zm.threshold == 2.5
    fb = choose_threshold(good, defect, Policy("false_reject_budget", false_reject_budget=0.0))
    assert (fb.threshold, fb.false_rejects, fb.misses) == (5.0, 0, 2)


def test_quantile_budget_rounding_is_exact() -> None:
    # 0.95 and 0.05 are not exact in binary; 5 % of 20 must still allow one false reject
    good = [float(v) for v in range(20)]
    c = choose_threshold(good, [], Policy("good_quantile", quantile=0.95))
    assert c.false_rejects == 1
    c = choose_threshold(good, [30.0], Policy("false_reject_budget", false_reject_budget=0.05))
    assert c.false_rejects == 0  # 30 alone needs no false reject; the fewest misses is 0


def test_float32_scores_round_trip() -> None:
    rng = np.random.default_rng(3)
    good = rng.random(50).astype(np.float32)
    defect = (rng.random(10) + 0.5).astype(np.float32)
    for policy in ALL:
        c = choose_threshold(good, defect, policy)
        assert int((good >= c.threshold).sum()) == c.false_rejects
        assert int((defect < c.threshold).sum()) == c.misses
        # the YAML stores repr(float), which round-trips exactly
        assert float(repr(c.threshold)) == c.threshold


def test_bad_policy_values() -> None:
    with pytest.raises(CalibrationError, match="unknown threshold policy"):
        Policy("by_eye")
    with pytest.raises(CalibrationError, match="needs a value"):
        Policy("good_quantile")
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        Policy("false_reject_budget", false_reject_budget=5.0)


def test_roc_counts_are_monotone() -> None:
    rng = np.random.default_rng(1)
    roc = roc_curve(rng.random(40), rng.random(15) + 0.3)
    assert np.all(np.diff(roc.false_rejects) <= 0) and np.all(np.diff(roc.misses) >= 0)
    assert roc.false_rejects[0] == 40 and roc.misses[-1] == 15
    for a, b in itertools.pairwise(roc.thresholds):
        assert a < b


# -- the policies registry is the one list of policy names --------------------------------


SHIPPED = Path(__file__).parents[1] / "recipes" / "glassfiber.yaml"


def _with_policy(name: str) -> str:
    """The shipped recipe's text with decision.policy set to `name`."""
    text = SHIPPED.read_text()
    assert "policy: zero_miss" in text
    return text.replace("policy: zero_miss", f"policy: {name}", 1)


def test_recipes_take_exactly_the_registered_policies() -> None:

    for name in RULES:
        assert parse_recipe(_with_policy(name), str(SHIPPED)).decision.policy == name
    with pytest.raises(RecipeError) as err:
        parse_recipe(_with_policy("zero_mis"), str(SHIPPED))
    line = str(err.value.problems[0])
    assert line.startswith("decision.policy: unknown calibration policy 'zero_mis'; known: ")
    assert all(name in line for name in RULES) and "\n" not in line
    # the recipe layer alone knows no policy names: it checks them only when given
    assert (
        recipes.parse_recipe(_with_policy("zero_mis"), str(SHIPPED)).decision.policy == "zero_mis"
    )


def test_a_registered_policy_needs_no_other_list() -> None:

    class Widest(PolicyRule):
        name = "widest_margin_test"

        def objective(self, c: Counts, value: float | None) -> tuple[np.ndarray, np.ndarray]:
            return np.ones_like(c.fr, dtype=bool), -c.fr.astype(np.float64)

    register(Widest)
    try:
        assert (
            parse_recipe(_with_policy("widest_margin_test"), str(SHIPPED)).decision.policy
            == Widest.name
        )
    finally:
        del RULES[Widest.name]


def test_recipe_check_refuses_an_unknown_policy(
    station_home: Any, capsys: pytest.CaptureFixture[str]
) -> None:

    path = station_home / "recipes" / "glassfiber.yaml"
    path.write_text(path.read_text().replace("policy: zero_miss", "policy: youdn", 1))
    with pytest.raises(SystemExit) as ex:
        main(["recipe", "check", "glassfiber"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err
    assert "decision.policy: unknown calibration policy 'youdn'; known: zero_miss" in err
