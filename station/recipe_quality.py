"""Recipe sections for quality over time: drift charts, the material check, retraining from
reviews and shadow models (`monitoring:`, `retrain:`). Re-exported by station.recipe."""

from __future__ import annotations

from pydantic import Field

from station.recipe_base import _Strict


class DriftConfig(_Strict):
    """EWMA and CUSUM charts on passed parts' scores and on per-pose image statistics, with
    limits from the calibration's good parts."""

    enabled: bool = True
    ewma_lambda: float = Field(0.2, gt=0, le=1)  # weight of the newest point
    ewma_l: float = Field(3.0, gt=0, le=10)  # limit in standard deviations of the EWMA
    cusum_k: float = Field(0.5, ge=0, le=5)  # allowance, in standard deviations
    cusum_h: float = Field(5.0, gt=0, le=50)  # decision interval, in standard deviations


class MaterialCheckConfig(_Strict):
    """Each shot against the training material's pooled-feature distribution, before the
    detectors: a shot beyond the threshold faults the part."""

    enabled: bool = True
    false_alarm: float = Field(0.01, gt=0, lt=1)  # on held-out good images, sets the threshold


class MonitoringConfig(_Strict):
    drift: DriftConfig = DriftConfig()
    material_check: MaterialCheckConfig = MaterialCheckConfig()


class RetrainConfig(_Strict):
    """Which operator reviews may add a false-rejected part's shots to the good training data."""

    agreeing_reviews: int = Field(2, ge=1, le=10)  # reviews that must agree ("false reject")
    supervisors: list[str] = Field(default_factory=list)  # one review by one of them suffices
