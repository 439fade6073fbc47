"""The verdict of one part from its detector scores: pure functions, no I/O.

Per detector, the raw scores of the part's poses are combined by `decision.combine_poses` (max
or mean) and divided by that detector's calibrated threshold (1.0 = at threshold; the part is
defective for it exactly when its combined score >= threshold). The detectors' values are then
combined by `decision.combine_detectors`:

- `any`  (default): reject when any detector is at or over its threshold; part score = max.
- `all`:  reject only when every detector is at or over; part score = min.
- `mean`: reject when the mean of the detectors' values is at or over 1; part score = mean.

A missing or non-finite score, or an unusable threshold, is a fault (treated as reject), never a
pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from station.recipe import DecisionConfig
from station.storage.models import Verdict


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


def _combine(values: Sequence[float], how: str) -> float:
    return max(values) if how == "max" else sum(values) / len(values)


def decide(
    scores: Mapping[str, Sequence[float]],
    thresholds: Mapping[str, float],
    cfg: DecisionConfig,
    pose_names: Sequence[str],
) -> Decision:
    """Verdict of a part: `scores[detector][k]` is the raw image score of pose `pose_names[k]`."""
    if not scores:
        return Decision.fault("no detector produced a score")
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
        per_detector[name] = normalise(_combine(raw, cfg.combine_poses), threshold)
        worst_pose[name] = pose_names[max(range(len(raw)), key=raw.__getitem__)]

    values = list(per_detector.values())
    how = cfg.combine_detectors
    if how == "any":
        part_score = max(values)
        reject = part_score >= 1.0
    elif how == "all":
        part_score = min(values)
        reject = part_score >= 1.0
    else:
        part_score = sum(values) / len(values)
        reject = part_score >= 1.0

    over = sorted((n for n, v in per_detector.items() if v >= 1.0), key=lambda n: -per_detector[n])
    pose_word = "max" if cfg.combine_poses == "max" else "mean"
    if reject:
        if how == "mean":
            reason = f"mean of detectors {fmt_ratio(part_score)}x threshold"
        else:
            reason = ", ".join(
                f"{n} {fmt_ratio(per_detector[n])}x threshold "
                f"({pose_word} over poses, worst {worst_pose[n]})"
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
