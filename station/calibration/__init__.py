"""Threshold calibration: ROC policies, confidence intervals, calibration files.

- roc.py: exact counts at every candidate threshold (defective when score >= threshold).
- policies.py: one `PolicyRule` class per threshold policy in the `RULES` registry (zero_miss,
  false_reject_budget, miss_budget, youden, f1, good_quantile); `resolve_policy`.
- bootstrap.py: stratified percentile bootstrap and Clopper-Pearson bounds.
- core.py: per-detector and combined thresholds for labelled part scores (`calibrate`).
- scores.py: labelled part scores from image folders or operator reviews.
- evaluation.py: detector metrics on labelled MVTec-layout data (`station evaluate`).
- operating_point.py: false-reject rates at 100 % / 95 % recall and at the recipe's policy.
- run.py: a recipe's calibration end to end (label source, policy, comparison).
- store.py: calibration/<recipe>.yaml, history, database record, `load_active_calibration`.
- roc_plot.py: the ROC figure with the operating point.

Names are imported lazily so that `import station.calibration` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from station.calibration.core import CalibrationResult, PartScores, calibrate
    from station.calibration.policies import Policy, choose_threshold
    from station.calibration.store import (
        ActiveCalibration,
        load_active_calibration,
        save_calibration,
    )

_EXPORTS = {
    "CalibrationResult": "core",
    "PartScores": "core",
    "calibrate": "core",
    "Policy": "policies",
    "choose_threshold": "policies",
    "ActiveCalibration": "store",
    "load_active_calibration": "store",
    "save_calibration": "store",
}

__all__ = [
    "ActiveCalibration",
    "CalibrationResult",
    "PartScores",
    "Policy",
    "calibrate",
    "choose_threshold",
    "load_active_calibration",
    "save_calibration",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'station.calibration' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"station.calibration.{module}"), name)
