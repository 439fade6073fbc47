"""The recipe's trained detectors and their calibrated thresholds, ready to score shots.

`load_detector_set(recipe)` loads the latest artifact of every detector the recipe lists and
the active threshold calibration that matches those exact model versions (a stale or missing
calibration is a CalibrationError: inspection never runs without real thresholds).
`DetectorSet.score(image)` preprocesses one shot as in training and runs every detector on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from station.errors import DetectorError, StationError

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import PreprocessConfig, Recipe
    from station.storage.db import Database


@dataclass
class LoadedDetector:
    name: str
    detector: Detector
    version: str
    threshold: float


@dataclass
class DetectorOutput:
    detector: str
    version: str
    score: float
    threshold: float
    amap: np.ndarray  # H x W float32 at the detector's input size
    latency_ms: float

    @property
    def normalized(self) -> float:
        return self.score / self.threshold


@dataclass
class DetectorSet:
    """Detectors with thresholds; `preprocess` is the recipe's preprocessing."""

    detectors: list[LoadedDetector]
    preprocess_cfg: PreprocessConfig
    calibration_id: int | None = None
    calibration_label: str = ""  # e.g. the calibration file and policy, for the operator
    calibration_note: str = ""  # e.g. why an older calibration is in use

    @property
    def model_versions(self) -> dict[str, str]:
        return {d.name: d.version for d in self.detectors}

    @property
    def thresholds(self) -> dict[str, float]:
        return {d.name: d.threshold for d in self.detectors}

    def score(self, image: np.ndarray) -> list[DetectorOutput]:
        """Run every detector on one shot. Any failure is a DetectorError naming the detector."""
        from station.imaging import preprocess

        try:
            x = preprocess(image, self.preprocess_cfg)[None]
        except StationError as exc:
            raise DetectorError(f"preprocessing the shot failed: {exc.message}", exc.hint) from None
        out = []
        for d in self.detectors:
            t0 = time.perf_counter()
            try:
                pred = d.detector.predict(x)
                amap = np.asarray(pred.maps[0], dtype=np.float32)
                score = float(np.asarray(pred.scores)[0])
            except StationError as exc:
                raise DetectorError(f"detector {d.name} failed: {exc.message}", exc.hint) from None
            except Exception as exc:  # noqa: BLE001 (a detector bug must fault the part, not crash)
                raise DetectorError(
                    f"detector {d.name} failed: {type(exc).__name__}: {exc}",
                    hint="the part is treated as a reject; check the model and the device",
                ) from None
            if amap.ndim != 2:
                raise DetectorError(f"detector {d.name} returned a map of shape {amap.shape}")
            latency = (time.perf_counter() - t0) * 1000.0
            out.append(DetectorOutput(d.name, d.version, score, d.threshold, amap, latency))
        return out


def load_detector_set(recipe: Recipe, db: Database | None = None) -> DetectorSet:
    """Latest trained artifact of each recipe detector plus the matching calibration.

    With `db`, parts link to the calibration's database record when that database has it.
    """
    from station.calibration import load_active_calibration
    from station.detectors.artifact import latest_artifact, load_artifact

    loaded = []
    for cfg in recipe.detectors:
        model = load_artifact(latest_artifact(recipe, cfg.name), recipe=recipe)
        loaded.append((cfg.name, model.detector, str(model.version)))
    versions = {name: version for name, _, version in loaded}
    active = load_active_calibration(recipe, versions)
    detectors = []
    for name, detector, version in loaded:
        threshold = active.thresholds.get(name)
        if threshold is None:
            from station.errors import CalibrationError

            raise CalibrationError(
                f"calibration {active.path} has no threshold for detector {name}",
                hint=f"run station calibrate-threshold --recipe {recipe.name}",
            )
        detectors.append(LoadedDetector(name, detector, version, float(threshold)))
    cal_id = active.id if isinstance(active.id, int) else None
    if cal_id is not None and db is not None:
        from station.storage.models import Calibration

        with db.session() as s:
            if s.get(Calibration, cal_id) is None:
                cal_id = None  # recorded in another database: keep the file reference only
    return DetectorSet(
        detectors=detectors,
        preprocess_cfg=recipe.preprocess,
        calibration_id=cal_id,
        calibration_label=f"{active.path.name} ({active.policy})",
        calibration_note=active.note,
    )
