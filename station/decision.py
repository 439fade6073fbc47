"""The verdict of a part and the rule that decides it: domain types and pure functions, no I/O.

The one decision rule, used by the inspection (one part), calibration (many parts at many
thresholds) and calibration scores:

1. per detector, the raw scores of the part's poses are combined by `decision.combine_poses`
   (max, or mean = left-to-right sum / count); with `sheet_map`, the part's one raw score per
   detector is the peak of its fused sheet map (station.geometry.sheet_map: the shots' raw maps
   projected onto the sheet and fused across views by `decision.sheet_fusion`), a single value
   that step 1 passes through (its max);
2. that value is divided by the detector's calibrated threshold (1.0 = at threshold; the part
   is defective for it exactly when its combined score >= threshold);
3. the detectors' values are combined by `decision.combine_detectors`:
   - `any`  (default): reject when any detector is at or over its threshold; part score = max.
   - `all`:  reject only when every detector is at or over; part score = min.
   - `mean`: reject when the mean of the detectors' values is at or over 1; part score = mean.

`combine` is the one implementation of the combining steps (on the last axis of an array;
NaN = an absent shot); `decide` applies it to one part and `decision_values` to N parts at C
threshold vectors, with the same float operations, so both agree bit for bit.

A missing or non-finite score, or an unusable threshold, is a fault (treated as reject), never a
pass.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from station.recipe import DecisionConfig


class Verdict(enum.StrEnum):
    PENDING = "pending"  # part row written, decision not yet made
    PASS = "pass"
    FAIL = "fail"
    FAULT = "fault"  # hardware/detector/storage fault: treated as reject
    INTERRUPTED = "interrupted"  # the station stopped mid-part (crash, power loss)


class ReviewLabel(enum.StrEnum):
    DEFECT_CONFIRMED = "defect_confirmed"
    FALSE_REJECT = "false_reject"


COMBINE_POSES = ("max", "mean", "sheet_map")
# combine_detectors -> how `combine` combines the normalised detector values
COMBINE_DETECTORS = {"any": "max", "all": "min", "mean": "mean"}


def combine(values: np.ndarray, how: str) -> np.ndarray:
    """Combine the last axis (max, min or mean), ignoring NaN (absent shots). `sheet_map`
    combines as max: its values are the sheet maps' peaks, one per part (and detector).

    mean = the values summed left to right, divided by their count (the same float operations
    as Python's `sum(values) / len(values)`, so results agree bit for bit).
    """
    if how in ("max", "sheet_map"):
        return np.fmax.reduce(values, axis=-1)
    if how == "min":
        return np.fmin.reduce(values, axis=-1)
    total = np.zeros(values.shape[:-1])
    count = np.zeros(values.shape[:-1])
    for k in range(values.shape[-1]):
        x = values[..., k]
        present = ~np.isnan(x)
        total = np.where(present, total + np.where(present, x, 0.0), total)
        count += present
    return total / count


def combine_scores(values: Sequence[float], how: str) -> float:
    """One part's score from its shot scores in pose order (`how`: max, mean or sheet_map,
    which then gets the sheet map's peak)."""
    return float(combine(np.asarray(values, np.float64), how))


def decision_values(
    shots: np.ndarray, thresholds: np.ndarray, combine_poses: str, combine_detectors: str
) -> np.ndarray:
    """Combined normalised part scores (C x N) of N x P x D shot scores at C x D thresholds.

    Steps 1-3 of the rule for every part and threshold vector; reject at >= 1.0.
    """
    t = np.atleast_2d(np.asarray(thresholds, np.float64))
    n, _, d = shots.shape
    per_detector = combine(np.swapaxes(shots, 1, 2), combine_poses)  # N x D
    out = np.empty((len(t), n))
    step = max(1, 4_000_000 // max(1, n * d))
    for i in range(0, len(t), step):
        norm = per_detector[None, :, :] / t[i : i + step, None, :]  # C x N x D
        out[i : i + step] = combine(norm, COMBINE_DETECTORS[combine_detectors])
    return out


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    part_score: float | None = None  # combined, 1.0 = at threshold
    # detector -> its normalised score combined over poses
    detector_scores: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return self.verdict in (Verdict.FAIL, Verdict.FAULT, Verdict.INTERRUPTED)

    @staticmethod
    def fault(reason: str) -> Decision:
        return Decision(Verdict.FAULT, reason)


def fmt_ratio(ratio: float) -> str:
    """A normalised score for people: truncated (not rounded) to 3 decimals, so a pass never
    reads 1.000 and a fail never reads 0.999."""
    if not math.isfinite(ratio):
        return str(ratio)
    return f"{math.floor(ratio * 1000.0) / 1000.0:.3f}"


def normalise(score: float, threshold: float) -> float:
    """Score as a multiple of its threshold (1.0 = at threshold)."""
    return float(score) / float(threshold)


def decide(
    scores: Mapping[str, Sequence[float]],
    thresholds: Mapping[str, float],
    cfg: DecisionConfig,
    pose_names: Sequence[str],
    sheet_peaks: Mapping[str, float] | None = None,
) -> Decision:
    """Verdict of a part: `scores[detector][k]` is the raw image score of pose `pose_names[k]`;
    `sheet_peaks[detector]` the raw peak of its fused sheet map (used when combine_poses is
    sheet_map, required then)."""
    if not scores:
        return Decision.fault("no detector produced a score")
    if cfg.combine_poses == "sheet_map" and sheet_peaks is None:
        return Decision.fault("combine_poses is sheet_map but no sheet map was built")
    per_detector: dict[str, float] = {}
    worst_pose: dict[str, str] = {}
    for name, raw in scores.items():
        threshold = thresholds.get(name)
        if threshold is None or not math.isfinite(threshold) or threshold <= 0:
            return Decision.fault(f"no usable threshold for detector {name} ({threshold!r})")
        if len(raw) != len(pose_names):
            return Decision.fault(
                f"detector {name} scored {len(raw)} of the part's {len(pose_names)} poses"
            )
        for pose, s in zip(pose_names, raw, strict=True):
            if not math.isfinite(s):
                return Decision.fault(f"detector {name} returned a non-finite score on pose {pose}")
        # combine the raw scores, then divide: `score >= threshold` is then exactly a reject
        if cfg.combine_poses == "sheet_map":
            peak = float(sheet_peaks.get(name, math.nan)) if sheet_peaks is not None else math.nan
            if not math.isfinite(peak):
                return Decision.fault(f"detector {name} has no finite sheet map peak ({peak!r})")
            raw_part = combine_scores([peak], "sheet_map")
        else:
            raw_part = combine_scores(raw, cfg.combine_poses)
        per_detector[name] = normalise(raw_part, threshold)
        worst_pose[name] = pose_names[max(range(len(raw)), key=raw.__getitem__)]

    how = cfg.combine_detectors
    part_score = combine_scores(list(per_detector.values()), COMBINE_DETECTORS[how])
    reject = part_score >= 1.0
    over = sorted((n for n, v in per_detector.items() if v >= 1.0), key=lambda n: -per_detector[n])
    pose_word = {"max": "max over poses", "mean": "mean over poses"}.get(
        cfg.combine_poses, f"{cfg.sheet_fusion}-fused sheet map peak")
    if reject:
        if how == "mean":
            reason = f"mean of detectors {fmt_ratio(part_score)}x threshold"
        else:
            reason = ", ".join(
                f"{n} {fmt_ratio(per_detector[n])}x threshold "
                f"({pose_word}, worst {worst_pose[n]})"
                for n in over
            )
        return Decision(Verdict.FAIL, reason, part_score, per_detector)
    top = max(per_detector, key=per_detector.__getitem__)
    reason = f"under threshold: highest {top} {fmt_ratio(per_detector[top])}x on {worst_pose[top]}"
    if how == "mean":
        mean = f"mean of detectors {fmt_ratio(part_score)}x threshold; "
        reason = mean + reason.replace("under ", "")
    if how == "all" and over:
        reason = f"not all detectors over threshold ({', '.join(over)} over); " + reason
    return Decision(Verdict.PASS, reason, part_score, per_detector)
