"""Recipe sections for quality over time: drift charts, the material check, retraining from
reviews and shadow models (`monitoring:`, `retrain:`). Re-exported by station.recipe."""

from __future__ import annotations

from pydantic import Field

from station.recipe_base import _Strict


class DriftConfig(_Strict):
    """EWMA and CUSUM charts on passed parts' scores and on per-pose image statistics, with
    limits from the calibration's good parts."""

    # Wide limits: a recipe charts ~3 statistics x poses + detectors (58 charts with 9 poses);
    # these keep each chart's false-alarm chance in 1000 stable parts near 0.2 % (Gaussian
    # points, known baseline; docs/monitoring.md). L 3 / h 5 would alarm on nearly every run.
    enabled: bool = True
    ewma_lambda: float = Field(0.1, gt=0, le=1)  # weight of the newest point
    ewma_l: float = Field(4.5, gt=0, le=10)  # limit in standard deviations of the EWMA
    cusum_k: float = Field(0.5, ge=0, le=5)  # allowance, in standard deviations
    cusum_h: float = Field(12.0, gt=0, le=50)  # decision interval, in standard deviations
    clip: float = Field(4.0, gt=0, le=50)  # each point clipped to +-clip sigma (robust charts)
    # a signal needs this many of the calibration's passed good parts for its limits ...
    min_baseline_parts: int = Field(10, ge=2, le=10000)
    # ... else its first this many inspected parts set them (a warm-up)
    warmup_parts: int = Field(30, ge=2, le=10000)


class MaterialCheckConfig(_Strict):
    """Each shot against the training material's pooled-feature distribution, before the
    detectors: a shot beyond the threshold faults the part. `station train` fits its model
    (station.monitoring.material, docs/material_check.md); when enabled, inspection needs one."""

    enabled: bool = True
    false_alarm: float = Field(0.01, gt=0, lt=1)  # on held-out good images, sets the threshold


class MonitoringConfig(_Strict):
    drift: DriftConfig = DriftConfig()
    material_check: MaterialCheckConfig = MaterialCheckConfig()


class RetrainConfig(_Strict):
    """Which operator reviews may add a false-rejected part's shots to the good training data."""

    agreeing_reviews: int = Field(2, ge=1, le=10)  # reviews that must agree ("false reject")
    supervisors: list[str] = Field(default_factory=list)  # one review by one of them suffices
    # candidate model versions (station retrain) that `station inspect` runs beside the live
    # models: their verdicts are stored (shadow_verdicts), never drive the reject output, and
    # each shot is scored twice (inference time doubles for a full candidate set)
    shadow: list[str] = Field(default_factory=list)
