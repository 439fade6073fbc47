"""Calibration from part-level scores: thresholds per detector and for the combined decision.

Each detector gets a threshold from the policy on its part scores. A part's combined score is
`combine_detectors` over detectors of score / threshold (any -> max, all -> min, mean -> mean),
so the combined threshold is 1.0. With several detectors the policy is applied once more, to
the combined score: all detector thresholds are scaled by one factor chosen on exact counts of
the final decision rule, so the stated combined rates are what `station inspect` will reproduce
on this set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from station.calibration.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    RateEstimate,
    bootstrap_auroc,
    bootstrap_rate,
)
from station.calibration.policies import Choice, Policy, check_data, choose_threshold, select
from station.calibration.roc import RocCurve, roc_curve
from station.decision import COMBINE_DETECTORS, COMBINE_POSES, combine, decision_values
from station.errors import CalibrationError

_ROUGH_DEFECTS = 10  # below this many defective parts, rates and AUROC are rough


@dataclass
class PartScores:
    """Labelled part scores, one array per detector.

    `shots` (optional) holds the raw shot scores per detector as N x P arrays in pose order,
    NaN where a part has fewer shots; decisions are then computed exactly as the inspection
    does: score / threshold per shot, combined over poses, then over detectors. Without
    `shots`, each part is one shot with the score in `scores`.
    """

    part_ids: list[str]
    labels: np.ndarray  # 1 = defective, 0 = good
    scores: dict[str, np.ndarray]  # detector -> one (pose-combined) score per part
    source: str = "dataset"  # capture | dataset | reviews
    model_versions: dict[str, str] = field(default_factory=dict)
    data_sha256: str = ""
    n_shots: int = 0
    notes: list[str] = field(default_factory=list)  # what the set is, said plainly
    warnings: list[str] = field(default_factory=list)  # what makes its rates doubtful
    shots: dict[str, np.ndarray] | None = None  # detector -> N x P shot scores (NaN = none)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.part_ids)
        if not self.scores:
            raise CalibrationError("no detector scores to calibrate")
        if len(self.labels) != n or any(len(v) != n for v in self.scores.values()):
            raise ValueError("part_ids, labels and every score array must have one entry per part")
        if self.shots is not None and (
            set(self.shots) != set(self.scores)
            or any(np.asarray(v).ndim != 2 or len(v) != n for v in self.shots.values())
        ):
            raise ValueError("shots must hold an N x P array for every detector in scores")

    @property
    def detectors(self) -> list[str]:
        return list(self.scores)

    @property
    def n_good(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    @property
    def n_defect(self) -> int:
        return int(np.count_nonzero(self.labels == 1))

    def matrix(self) -> np.ndarray:
        """N x D float64 part scores, detectors in `detectors` order."""
        return np.stack([np.asarray(self.scores[d], np.float64) for d in self.detectors], axis=1)

    def shot_tensor(self) -> np.ndarray:
        """N x P x D float64 shot scores (NaN where a part has fewer shots)."""
        if self.shots is None:
            return self.matrix()[:, None, :]
        width = max(np.asarray(self.shots[d]).shape[1] for d in self.detectors)
        out = np.full((len(self.part_ids), width, len(self.detectors)), np.nan)
        for j, d in enumerate(self.detectors):
            arr = np.asarray(self.shots[d], np.float64)
            out[:, : arr.shape[1], j] = arr
        return out


@dataclass
class OperatingPoint:
    """One threshold on one score (a detector's, or the combined one) and its rates."""

    name: str
    threshold: float
    roc: RocCurve
    choice: Choice
    false_reject: RateEstimate
    miss: RateEstimate
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    model_version: str = ""
    policy_threshold: float | None = None  # before the combined-score scaling (several dets)
    scores_good: np.ndarray = field(default_factory=lambda: np.empty(0))
    scores_defect: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass
class CalibrationResult:
    recipe: str
    policy: Policy
    source: str
    combine_poses: str
    combine_detectors: str
    thresholds: dict[str, float]  # what inspect applies (score >= threshold)
    detectors: dict[str, OperatingPoint]
    combined: OperatingPoint  # threshold 1.0 on the combined normalised score
    scale: float  # factor applied to the per-detector policy thresholds
    n_good: int
    n_defect: int
    n_shots: int
    model_versions: dict[str, str]
    data_sha256: str
    resamples: int
    level: float
    seed: int
    out_of_sample: OutOfSample | None = None
    part_ids: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    part_values: dict[str, np.ndarray] = field(default_factory=dict)  # raw per det + combined
    alternatives: list[Alternative] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _point(
    name: str,
    threshold: float,
    rejected: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    resamples: int,
    level: float,
    seed: int,
    **extra: object,
) -> OperatingPoint:
    """Rates of one decision (`rejected` per part) with intervals; ROC over `values`."""
    rng = np.random.default_rng(seed)  # same seed for every score: equal flags, equal CIs
    good, defect = labels == 0, labels == 1
    flags_fr = rejected[good]
    flags_miss = ~rejected[defect]
    choice = Choice(
        threshold, int(flags_fr.sum()), int(flags_miss.sum()), int(good.sum()), int(defect.sum())
    )
    roc = roc_curve(values[good], values[defect])
    return OperatingPoint(
        name,
        threshold,
        roc,
        choice,
        bootstrap_rate(flags_fr, resamples, level, rng),
        bootstrap_rate(flags_miss, resamples, level, rng),
        roc.auroc,
        bootstrap_auroc(values[good], values[defect], resamples, level, rng),
        scores_good=values[good],
        scores_defect=values[defect],
        **extra,  # type: ignore[arg-type]
    )


def _candidates(values: np.ndarray) -> np.ndarray:
    """Positive observed values, each also nudged a few floats lower, plus two above all.

    On the combined score of several detectors, scaling every threshold by a candidate does
    not divide the combined values exactly by it: the nudged copies let the exact counts still
    reach a part at a candidate, and the last candidate (1e-9 above the highest value, far
    more than any rounding) rejects none.
    """
    v = np.unique(values[np.isfinite(values) & (values > 0)])
    if len(v) == 0:
        return v
    steps = [v]
    for _ in range(3):
        steps.append(np.nextafter(steps[-1], -np.inf))
    cand = np.unique(np.concatenate(steps))
    cand = cand[cand > 0]
    return np.append(cand, [np.nextafter(v[-1], np.inf), v[-1] * (1.0 + 1e-9)])


def _counts(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rejected = values >= 1.0
    return rejected[:, labels == 0].sum(axis=1), (~rejected[:, labels == 1]).sum(axis=1)


def _pick(
    policy: Policy, cand: np.ndarray, values: np.ndarray, labels: np.ndarray, what: str
) -> int:
    """Index of the candidate the policy picks, from exact counts of the decision rule."""
    fr, miss = _counts(values, labels)
    n_good, n_defect = int((labels == 0).sum()), int((labels == 1).sum())
    return select(policy, cand, fr, miss, n_good, n_defect, what)


def fit_thresholds(
    shots: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    policy: Policy,
    combine_poses: str = "max",
    combine_detectors: str = "any",
) -> tuple[np.ndarray, float, np.ndarray]:
    """(per-detector policy thresholds, common scale, final thresholds) for N x P x D shots."""
    good = labels == 0
    t0 = np.empty(len(names))
    for j, name in enumerate(names):
        sj = shots[:, :, j : j + 1]
        raw = combine(sj[:, :, 0], combine_poses)
        check_data(policy, int(good.sum()), int((~good).sum()), name)
        cand = _candidates(raw[good] if policy.rule.good_scores_only else raw)
        plain = choose_threshold(raw[good], raw[~good], policy, what=name).threshold
        if plain <= 0 or len(cand) == 0:
            raise CalibrationError(
                f"the {policy.name} threshold of {name} would be {plain:.4g}, not positive; "
                "decisions divide scores by thresholds, so detector scores must be positive",
                hint="check that the detector produces positive anomaly scores",
            )
        values = decision_values(sj, cand[:, None], combine_poses, "any")
        t0[j] = cand[_pick(policy, cand, values, labels, name)]
    if len(names) == 1:
        return t0, 1.0, _guarded(t0.copy(), shots, labels, combine_poses, "any")
    # the policy once more, on the combined score: one scale factor for all thresholds
    v0 = decision_values(shots, t0[None, :], combine_poses, combine_detectors)[0]
    cand = _candidates(v0[good] if policy.rule.good_scores_only else v0)
    if len(cand) == 0:
        raise CalibrationError("no part has a positive combined score; scores must be positive")
    values = decision_values(shots, cand[:, None] * t0[None, :], combine_poses, combine_detectors)
    scale = float(cand[_pick(policy, cand, values, labels, "the combined score")])
    return t0, scale, _guarded(scale * t0, shots, labels, combine_poses, combine_detectors)


# How far below the chosen value a threshold is put, when no calibration part lies in between.
GUARD = 1e-4


def _guarded(
    final: np.ndarray, shots: np.ndarray, labels: np.ndarray, poses: str, detectors: str
) -> np.ndarray:
    """`final` lowered by GUARD (relative) when that changes no calibration part's verdict.

    A policy picks an observed score, so a part sits exactly at its threshold. The same shot
    scored alone (inspection) or in a batch (calibration) differs in the last bits (about
    1e-6 relative: convolution and BLAS kernels depend on the batch size), which must not
    turn that part's reject into a pass. The stated counts stay exact either way."""
    lowered = final * (1.0 - GUARD)
    both = decision_values(shots, np.stack([final, lowered]), poses, detectors) >= 1.0
    return lowered if bool((both[0] == both[1]).all()) else final


@dataclass
class OutOfSample:
    """Rates of the whole procedure (choose on a resample, apply to the parts left out)."""

    resamples: int  # resamples that produced a threshold
    false_reject_rate: float | None  # pooled over the left-out good parts
    miss_rate: float | None  # pooled over the left-out defective parts
    false_reject_ci: tuple[float, float] | None  # percentiles over resamples
    miss_ci: tuple[float, float] | None
    threshold_ci: dict[str, tuple[float, float]]  # spread of each chosen threshold

    def as_dict(self) -> dict[str, object]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 6)

        def pair(v: tuple[float, float] | None) -> list[float | None] | None:
            return None if v is None else [r(v[0]), r(v[1])]

        return {
            "method": "out-of-bag bootstrap: threshold chosen on each resample, rates "
            "counted on the parts it left out (slightly pessimistic: a resample holds about "
            "63 % of the distinct parts)",
            "resamples": self.resamples,
            "false_reject_rate": r(self.false_reject_rate),
            "false_reject_ci": pair(self.false_reject_ci),
            "miss_rate": r(self.miss_rate),
            "miss_ci": pair(self.miss_ci),
            "threshold_ci": {k: pair(v) for k, v in self.threshold_ci.items()},
        }


def out_of_sample(
    s: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    policy: Policy,
    combine_poses: str,
    combine_detectors: str,
    resamples: int = 200,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> OutOfSample | None:
    """How the policy does on parts it did not see: the honest counterpart of in-sample rates.

    A threshold chosen on a set is optimistic on that same set (zero_miss misses nothing there
    by construction). Each stratified resample picks its own threshold; the parts it did not
    draw are then judged with it. `s` is the N x P x D shot tensor. None when no resample
    could choose a threshold.
    """
    rng = np.random.default_rng([seed, 1])
    good_idx = np.flatnonzero(labels == 0)
    def_idx = np.flatnonzero(labels == 1)
    fr_k = fr_n = miss_k = miss_n = 0
    fr_rates: list[float] = []
    miss_rates: list[float] = []
    chosen: list[np.ndarray] = []
    for _ in range(resamples):
        pick = np.concatenate(
            [
                rng.choice(good_idx, len(good_idx)) if len(good_idx) else good_idx,
                rng.choice(def_idx, len(def_idx)) if len(def_idx) else def_idx,
            ]
        )
        try:
            _, _, t = fit_thresholds(
                s[pick], labels[pick], names, policy, combine_poses, combine_detectors
            )
        except CalibrationError:
            continue
        chosen.append(t)
        left = np.ones(len(labels), dtype=bool)
        left[pick] = False
        rejected = decision_values(s[left], t[None, :], combine_poses, combine_detectors)[0] >= 1.0
        lab = labels[left]
        g, d = int((lab == 0).sum()), int((lab == 1).sum())
        fr_k += int(rejected[lab == 0].sum())
        miss_k += int((~rejected[lab == 1]).sum())
        fr_n += g
        miss_n += d
        if g:
            fr_rates.append(float(rejected[lab == 0].mean()))
        if d:
            miss_rates.append(float((~rejected[lab == 1]).mean()))
    if not chosen:
        return None
    q = [(1 - level) / 2, 1 - (1 - level) / 2]

    def interval(values: list[float]) -> tuple[float, float] | None:
        if not values:
            return None
        lo, hi = np.quantile(values, q)
        return (float(lo), float(hi))

    ts = np.array(chosen)
    return OutOfSample(
        resamples=len(chosen),
        false_reject_rate=fr_k / fr_n if fr_n else None,
        miss_rate=miss_k / miss_n if miss_n else None,
        false_reject_ci=interval(fr_rates),
        miss_ci=interval(miss_rates),
        threshold_ci={
            n: (float(np.quantile(ts[:, j], q[0])), float(np.quantile(ts[:, j], q[1])))
            for j, n in enumerate(names)
        },
    )


@dataclass(frozen=True)
class Alternative:
    """Another policy's operating point on the same set (for comparison, not applied)."""

    policy: Policy
    thresholds: dict[str, float] | None
    false_rejects: int = 0
    misses: int = 0
    refused: str = ""  # why the policy cannot run on this set

    def as_dict(self, n_good: int, n_defect: int) -> dict[str, object]:
        if self.thresholds is None:
            return {"policy": self.policy.as_dict(), "refused": self.refused}
        return {
            "policy": self.policy.as_dict(),
            "thresholds": dict(self.thresholds),
            "false_rejects": f"{self.false_rejects}/{n_good}",
            "misses": f"{self.misses}/{n_defect}",
        }


def compare_policies(
    data: PartScores,
    policies: list[Policy],
    combine_poses: str = "max",
    combine_detectors: str = "any",
) -> list[Alternative]:
    """Each policy's thresholds and exact counts on `data`, or why it cannot run there."""
    s = data.shot_tensor()
    out = []
    for policy in policies:
        try:
            _, _, t = fit_thresholds(
                s, data.labels, data.detectors, policy, combine_poses, combine_detectors
            )
        except CalibrationError as exc:
            out.append(Alternative(policy, None, refused=exc.message))
            continue
        values = decision_values(s, t[None, :], combine_poses, combine_detectors)
        fr, miss = _counts(values, data.labels)
        thresholds = {n: float(v) for n, v in zip(data.detectors, t, strict=True)}
        out.append(Alternative(policy, thresholds, int(fr[0]), int(miss[0])))
    return out


def _detector_points(
    data: PartScores,
    s: np.ndarray,
    thresholds: np.ndarray,
    t0: np.ndarray,
    combine_poses: str,
    bootstrap: tuple[int, float, int],
    warnings: list[str],
) -> tuple[dict[str, OperatingPoint], dict[str, np.ndarray]]:
    """Each detector's operating point alone, and its pose-combined part scores."""
    resamples, level, seed = bootstrap
    labels = data.labels
    points: dict[str, OperatingPoint] = {}
    part_values: dict[str, np.ndarray] = {}
    for j, name in enumerate(data.detectors):
        sj = s[:, :, j : j + 1]
        own = decision_values(sj, thresholds[None, j : j + 1], combine_poses, "any")[0]
        raw = combine(sj[:, :, 0], combine_poses)
        part_values[name] = raw
        points[name] = _point(
            name, float(thresholds[j]), own >= 1.0, raw, labels, resamples, level, seed,
            model_version=data.model_versions.get(name, ""), policy_threshold=float(t0[j]),
        )  # fmt: skip
        if points[name].auroc is not None and points[name].auroc < 0.5:
            warnings.append(
                f"{name} scores defective parts lower than good ones "
                f"(AUROC {points[name].auroc:.3f}): check the labels and the model"
            )
    return points, part_values


def rates_at(
    data: PartScores,
    s: np.ndarray,
    thresholds: np.ndarray,
    t0: np.ndarray,
    combine_poses: str,
    combine_detectors: str,
    bootstrap: tuple[int, float, int],
    warnings: list[str],
) -> tuple[dict[str, OperatingPoint], dict[str, np.ndarray], OperatingPoint]:
    """Operating points of each detector and of the combined decision at `thresholds` (one per
    detector, `t0` the policy's own), and the part values (raw per detector, "combined");
    `s` is `data.shot_tensor()`."""
    points, part_values = _detector_points(
        data, s, thresholds, t0, combine_poses, bootstrap, warnings
    )
    values = decision_values(s, thresholds[None, :], combine_poses, combine_detectors)[0]
    combined = _point("combined", 1.0, values >= 1.0, values, data.labels, *bootstrap)
    part_values["combined"] = values
    return points, part_values, combined


def _judge_set(
    data: PartScores,
    policy: Policy,
    combined: OperatingPoint,
    level: float,
    warnings: list[str],
    notes: list[str],
) -> None:
    """Add what the set can and cannot show about the chosen operating point."""
    choice = combined.choice
    warnings += policy.rule.warnings(policy.value, combined.false_reject, combined.miss, level)
    if data.n_defect == 0:
        warnings.append(
            f"no defective parts: the threshold comes from {data.n_good} good parts only "
            f"({policy.describe()}); the miss rate is unknown"
        )
    elif 0 < data.n_defect < _ROUGH_DEFECTS:
        warnings.append(
            f"only {data.n_defect} defective parts: AUROC and miss rate are rough "
            "(see the intervals)"
        )
    if data.n_good == 0:
        warnings.append("no good parts: the false-reject rate is unknown")
    if policy.rule.good_scores_only and data.n_defect:
        notes.append(
            f"threshold from good scores only; the {data.n_defect} defective parts were used "
            "to measure the miss rate, not to choose the threshold"
        )
    if choice.false_rejects == 0 and choice.misses == choice.n_defect and choice.n_defect:
        warnings.append("the threshold is above every defective part: nothing would be caught")
    if combined.auroc == 1.0:
        notes.append("good and defective parts are perfectly separated on this set")


def calibrate(
    data: PartScores,
    policy: Policy,
    *,
    recipe: str,
    combine_poses: str = "max",
    combine_detectors: str = "any",
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
    oob_resamples: int = 200,
    compare: list[Policy] | None = None,
) -> CalibrationResult:
    """Thresholds for every detector and the combined decision, with rates and intervals."""
    if combine_detectors not in COMBINE_DETECTORS:
        raise CalibrationError(f"unknown combine_detectors {combine_detectors!r}")
    if combine_poses not in COMBINE_POSES:
        raise CalibrationError(f"unknown combine_poses {combine_poses!r}")
    labels = data.labels
    check_data(policy, data.n_good, data.n_defect)
    s = data.shot_tensor()
    names = data.detectors
    warnings: list[str] = list(data.warnings)
    notes = list(data.notes)

    t0, scale, thresholds = fit_thresholds(
        s, labels, names, policy, combine_poses, combine_detectors
    )
    final = {n: float(t) for n, t in zip(names, thresholds, strict=True)}

    boot = (resamples, level, seed)
    points, part_values, combined = rates_at(
        data, s, thresholds, t0, combine_poses, combine_detectors, boot, warnings
    )
    choice = combined.choice

    _judge_set(data, policy, combined, level, warnings, notes)

    oob = (
        out_of_sample(
            s, labels, names, policy, combine_poses, combine_detectors, oob_resamples, level, seed
        )
        if oob_resamples > 0
        else None
    )
    if oob is not None and oob.miss_rate is not None and choice.misses == 0 and oob.miss_rate > 0:
        notes.append(
            f"no defect is missed on this set by construction of the threshold; on parts left "
            f"out of bootstrap resamples the same policy missed {oob.miss_rate:.1%}"
        )
    return CalibrationResult(
        recipe=recipe,
        policy=policy,
        source=data.source,
        combine_poses=combine_poses,
        combine_detectors=combine_detectors,
        thresholds=final,
        detectors=points,
        combined=combined,
        scale=float(scale),
        n_good=data.n_good,
        n_defect=data.n_defect,
        n_shots=data.n_shots,
        model_versions=dict(data.model_versions),
        data_sha256=data.data_sha256,
        resamples=resamples,
        level=level,
        seed=seed,
        out_of_sample=oob,
        part_ids=list(data.part_ids),
        labels=labels,
        part_values=part_values,
        alternatives=compare_policies(
            data, [p for p in compare or [] if p != policy], combine_poses, combine_detectors
        ),
        warnings=warnings,
        notes=notes,
    )
