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

Each policy is one `PolicyRule` subclass registered in `RULES` (its name, its parameter, what
data it needs, how it reads, which candidate it picks, what it warns about); `Policy` is the
value a recipe or the command line gives (name + parameter) and looks its rule up there.

Ties between candidate thresholds go to fewer misses, then fewer false rejects, then the
higher threshold. Every choice is an observed score (or the float just above the largest), so
re-applying it reproduces the stated counts exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from station.calibration.roc import as_scores, candidate_thresholds, count_at
from station.errors import CalibrationError

if TYPE_CHECKING:
    from station.calibration.bootstrap import RateEstimate
    from station.recipe import DecisionConfig

_EPS = 1e-9  # budgets are fractions; counts compare against budget * n with this slack


Value = float | None  # a policy's parameter (None: it has none)


def parts_needed(rate: float, level: float) -> int | None:  # bootstrap imports scipy
    """`bootstrap.parts_needed`, imported on use: loading a recipe needs this module's names
    (`RULES`), and scipy behind bootstrap would add seconds to every command's start."""
    from station.calibration.bootstrap import parts_needed as needed

    return needed(rate, level)


@dataclass(frozen=True)
class Counts:
    """Exact counts at each candidate threshold, and the class sizes."""

    fr: np.ndarray  # good parts rejected
    miss: np.ndarray  # defective parts passed
    n_good: int
    n_defect: int


class PolicyRule:
    """One threshold policy. Subclass it, set the class fields, and decorate with `@register`."""

    name: ClassVar[str] = ""
    param: ClassVar[str | None] = None  # the Policy field holding its value (flag --<param>)
    recipe_field: ClassVar[str | None] = None  # DecisionConfig field with the recipe's value
    example: ClassVar[str] = "0.05"  # shown in the hint when the value is missing
    needs_good: ClassVar[bool] = True  # refuse a set without good parts
    needs_defects: ClassVar[bool] = True  # refuse a set without defective parts
    good_scores_only: ClassVar[bool] = False  # candidates and choice from good scores alone
    compared: ClassVar[bool] = True  # listed among the other policies of a calibration

    def describe(self, value: Value) -> str:
        raise NotImplementedError

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        """(feasible, objective to minimise) at each candidate, from exact counts."""
        raise NotImplementedError

    def pick(self, t: np.ndarray, c: Counts, value: Value, what: str = "") -> int:
        """Index of the candidate picked; ties: fewer misses, fewer false rejects, higher t."""
        feasible, objective = self.objective(c, value)
        idx = np.flatnonzero(feasible)
        if len(idx) == 0:  # cannot happen: t = lowest score meets any miss budget
            raise CalibrationError(f"no threshold satisfies policy {self.name}")
        # np.lexsort: last key is primary
        order = np.lexsort((-t[idx], c.fr[idx], c.miss[idx], np.round(objective[idx], 12)))
        return int(idx[order[0]])

    def warnings(
        self, value: Value, fr: RateEstimate, miss: RateEstimate, level: float
    ) -> list[str]:
        """What the calibration set cannot show about this policy's promise."""
        return []

    def comparison(self, decision: DecisionConfig) -> Policy | None:
        """This policy with the recipe's value, for the comparison table (None: not listed)."""
        if not self.compared:
            return None
        if self.param is None or self.recipe_field is None:
            return Policy(self.name)
        return Policy(self.name, **{self.param: getattr(decision, self.recipe_field)})


RULES: dict[str, PolicyRule] = {}


def register(cls: type[PolicyRule]) -> type[PolicyRule]:
    RULES[cls.name] = cls()
    return cls


def _fr_bound_warning(fr: RateEstimate, budget: float, level: float) -> list[str]:
    if not fr.n or fr.upper is None or fr.upper <= budget:
        return []
    return [
        f"false-reject rate {fr.count}/{fr.n} = {fr.rate:.1%} on this set, but its "
        f"{level:.0%} upper bound is {fr.upper:.1%}, above the {budget:.1%} target; more good "
        "parts narrow it"
    ]


@register
class ZeroMiss(PolicyRule):
    name = "zero_miss"
    needs_good = False

    def describe(self, value: Value) -> str:
        return "no missed defect, fewest false rejects"

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        return c.miss == 0, c.fr.astype(np.float64)

    def warnings(
        self, value: Value, fr: RateEstimate, miss: RateEstimate, level: float
    ) -> list[str]:
        if miss.n and miss.upper is not None and miss.upper > 0.01:
            return [
                f"{miss.count} misses in {miss.n} defective parts only shows a miss rate <= "
                f"{miss.upper:.1%} ({level:.0%} one-sided exact bound); showing <= 1 % needs at "
                f"least {parts_needed(0.01, level)} defective parts without a miss"
            ]
        return []


@register
class FalseRejectBudget(PolicyRule):
    name = "false_reject_budget"
    param = recipe_field = "false_reject_budget"

    def describe(self, value: Value) -> str:
        return f"fewest misses with false rejects <= {value:.2%}"

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        return c.fr <= value * c.n_good + _EPS, c.miss.astype(np.float64)

    def warnings(
        self, value: Value, fr: RateEstimate, miss: RateEstimate, level: float
    ) -> list[str]:
        return _fr_bound_warning(fr, float(value), level)


@register
class MissBudget(PolicyRule):
    name = "miss_budget"
    param = recipe_field = "miss_budget"
    needs_good = False

    def describe(self, value: Value) -> str:
        return f"fewest false rejects with misses <= {value:.2%}"

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        return c.miss <= value * c.n_defect + _EPS, c.fr.astype(np.float64)

    def warnings(
        self, value: Value, fr: RateEstimate, miss: RateEstimate, level: float
    ) -> list[str]:
        budget = float(value)
        if not miss.n or miss.upper is None or miss.upper <= budget:
            return []
        need = parts_needed(budget, level)
        extra = (
            f"at least {need} defective parts without a miss are needed to show it"
            if need
            else "no finite sample shows a zero miss rate"
        )
        return [
            f"too few defective parts for the miss budget {budget:.1%}: observed "
            f"{miss.count}/{miss.n}, {level:.0%} upper bound {miss.upper:.1%}; {extra}"
        ]

    def comparison(self, decision: DecisionConfig) -> Policy | None:
        return Policy(self.name, miss_budget=decision.miss_budget or 0.05)


@register
class Youden(PolicyRule):
    name = "youden"

    def describe(self, value: Value) -> str:
        return "maximum Youden's J (true-positive rate - false-reject rate)"

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        return np.ones(len(c.fr), dtype=bool), -((1.0 - c.miss / c.n_defect) - c.fr / c.n_good)


@register
class F1(PolicyRule):
    name = "f1"

    def describe(self, value: Value) -> str:
        return "maximum F1 of the defect class"

    def objective(self, c: Counts, value: Value) -> tuple[np.ndarray, np.ndarray]:
        tp = c.n_defect - c.miss
        denom = 2 * tp + c.fr + c.miss
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        return np.ones(len(c.fr), dtype=bool), -f1


@register
class GoodQuantile(PolicyRule):
    name = "good_quantile"
    param = "quantile"
    recipe_field = "good_quantile"
    example = "0.99"
    needs_defects = False
    good_scores_only = True
    compared = False

    def describe(self, value: Value) -> str:
        return (
            f"{value:g} quantile of good scores only (about {1 - value:.2%} "
            "of good parts rejected; misses not controlled)"
        )

    def pick(self, t: np.ndarray, c: Counts, value: Value, what: str = "") -> int:
        # the lowest candidate rejecting at most (1 - quantile) of the good parts
        allowed = np.floor((1.0 - float(value)) * c.n_good + _EPS)
        ok = np.flatnonzero(c.fr <= allowed)
        if len(ok) == 0:  # the last candidate rejects nothing, so only if scores are broken
            raise CalibrationError(f"no threshold of {what} meets policy {self.name}")
        return int(ok[0])

    def warnings(
        self, value: Value, fr: RateEstimate, miss: RateEstimate, level: float
    ) -> list[str]:
        return _fr_bound_warning(fr, 1.0 - float(value), level)


POLICIES = tuple(RULES)


@dataclass(frozen=True)
class Policy:
    name: str
    false_reject_budget: float | None = None
    miss_budget: float | None = None
    quantile: float | None = None

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise CalibrationError(
                f"unknown threshold policy {self.name!r}",
                hint=f"choose one of: {', '.join(POLICIES)}",
            )
        field = self.rule.param
        if field is not None:
            value = self.value
            if value is None:
                flag = "--" + field.replace("_", "-")
                raise CalibrationError(
                    f"policy {self.name} needs a value for {field}",
                    hint=f"give it with {flag}, e.g. {flag} {self.rule.example}",
                )
            if not 0.0 <= value <= 1.0:
                raise CalibrationError(
                    f"{field} must be between 0 and 1, got {value}",
                    hint="give a fraction, e.g. 0.05 for 5 %",
                )

    @property
    def rule(self) -> PolicyRule:
        return RULES[self.name]

    @property
    def value(self) -> float | None:
        """The value of the policy's own parameter (None when it has none)."""
        return None if self.rule.param is None else getattr(self, self.rule.param)

    @property
    def needs_defects(self) -> bool:
        return self.rule.needs_defects

    def describe(self) -> str:
        return self.rule.describe(self.value)

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"name": self.name}
        for key in ("false_reject_budget", "miss_budget", "quantile"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        return out


def resolve_policy(
    decision: DecisionConfig, name: str | None, given: Mapping[str, float | None]
) -> Policy:
    """The policy to calibrate with: `name` (default: the recipe's), its value from `given`
    (parameter -> command-line value, None = not given) or else from the recipe.

    A single value given without a name picks its policy (`--quantile 0.99` alone: good_quantile);
    a value that belongs to another policy is refused.
    """
    by_policy = {
        rule.name: given[rule.param]
        for rule in RULES.values()
        if rule.param is not None and given.get(rule.param) is not None
    }
    if name is None and len(by_policy) == 1:
        name = next(iter(by_policy))
    else:
        name = name or decision.policy
    stray = sorted(set(by_policy) - {name})
    if stray:
        flag = "--" + str(RULES[stray[0]].param).replace("_", "-")
        raise CalibrationError(
            f"{flag} does not apply to policy {name}",
            hint=f"use --policy {stray[0]} with {flag}, or leave {flag} out",
        )
    rule = RULES.get(name)
    if rule is None or rule.param is None or rule.recipe_field is None:
        return Policy(name)
    value = by_policy.get(name)
    if value is None:
        value = getattr(decision, rule.recipe_field)
    return Policy(name, **{rule.param: value})


def comparison_policies(decision: DecisionConfig) -> list[Policy]:
    """Every listed policy with the recipe's values: the comparison table of a calibration."""
    return [p for rule in RULES.values() if (p := rule.comparison(decision)) is not None]


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
    if policy.rule.needs_defects and n_defect == 0:
        raise CalibrationError(
            f"policy {policy.name} needs defective parts, but the set has only {n_good} good "
            f"parts{where}",
            hint="add labelled defective parts, or use --policy good_quantile --quantile Q "
            "(a threshold from good parts only: it bounds false rejects, not misses)",
        )
    if n_good == 0 and policy.rule.needs_good:
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
    what: str = "",
) -> int:
    """Index of the candidate the policy picks, from exact counts at each candidate."""
    check_data(policy, n_good, n_defect, what)
    fr = np.asarray(false_rejects, dtype=np.int64)
    miss = np.asarray(misses, dtype=np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    return policy.rule.pick(t, Counts(fr, miss, n_good, n_defect), policy.value, what)


def choose_threshold(good: object, defect: object, policy: Policy, what: str = "") -> Choice:
    """Apply `policy` to labelled scores; the returned counts are exact for this threshold."""
    g = as_scores(good, "good scores")
    d = as_scores(defect, "defect scores")
    check_data(policy, len(g), len(d), what)
    cand = candidate_thresholds(g) if policy.rule.good_scores_only else candidate_thresholds(g, d)
    fr, miss = count_at(g, d, cand)
    threshold = float(cand[select(policy, cand, fr, miss, len(g), len(d))])
    fr_n = int(np.count_nonzero(g >= threshold))
    miss_n = int(np.count_nonzero(d < threshold))
    return Choice(threshold, fr_n, miss_n, len(g), len(d))
