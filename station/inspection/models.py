"""The recipe's trained detectors and their calibrated thresholds, ready to score shots.

`load_detector_set(recipe)` loads the latest artifact of every detector the recipe lists and
the active threshold calibration that matches those exact model versions (a stale or missing
calibration is a CalibrationError: inspection never runs without real thresholds).
`DetectorSet.score(image)` preprocesses one shot as in training and runs every detector on it
(through the scoring engine, `station.detectors.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from station.detectors.cell_imaging import imaging_changes
from station.detectors.engine import ScoringEngine, load_models
from station.errors import CalibrationError, DetectorError, StationError

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import PreprocessConfig, Recipe
    from station.storage.db import Database

# what a detector failure means for the part (the hint of its DetectorError)
FAULT_HINT = "the part is treated as a reject; check the model and the device"


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
    warnings: list[str] = field(default_factory=list)  # said at the start of a run
    calibration_path: Path | None = None  # the calibration file the thresholds come from

    @property
    def model_versions(self) -> dict[str, str]:
        return {d.name: d.version for d in self.detectors}

    @property
    def thresholds(self) -> dict[str, float]:
        return {d.name: d.threshold for d in self.detectors}

    def score(self, image: np.ndarray) -> list[DetectorOutput]:
        """Run every detector on one shot. Any failure is a DetectorError naming the detector."""
        engine = ScoringEngine(
            {d.name: d.detector for d in self.detectors},
            self.preprocess_cfg,
            fault_hint=FAULT_HINT,
        )
        try:
            x = engine.prepare(image)[None]
        except StationError as exc:
            raise DetectorError(f"preprocessing the shot failed: {exc.message}", exc.hint) from None
        results = engine.score(x)
        out = []
        for d in self.detectors:
            r = results[d.name]
            amap, score = r.map(0), float(r.scores[0])
            bad = int(amap.size - np.count_nonzero(np.isfinite(amap)))
            if bad and np.isfinite(score):  # (a non-finite score: decide() faults the part)
                # the sheet map would skip those cells as if they were seen and clean
                raise DetectorError(
                    f"detector {d.name} gave a map with {bad} non-finite values", FAULT_HINT
                )
            out.append(DetectorOutput(d.name, d.version, score, d.threshold, amap, r.latency_ms))
        return out


def load_detector_set(recipe: Recipe, db: Database | None = None) -> DetectorSet:
    """Latest trained artifact of each recipe detector plus the matching calibration.

    With `db`, parts link to the calibration's database record when that database has it.
    """
    from station.calibration import load_active_calibration

    models = load_models(recipe)
    warnings = _imaging_warnings(recipe, models)
    loaded = [(n, m.detector, str(m.version)) for n, m in models.items()]
    versions = {name: version for name, _, version in loaded}
    camera = None
    if recipe.decision.combine_poses == "sheet_map":  # its thresholds hold for one camera model
        from station.cellcal.store import inspection_camera

        camera = inspection_camera(recipe).source
    active = load_active_calibration(recipe, versions, camera)
    detectors = []
    for name, detector, version in loaded:
        threshold = active.thresholds.get(name)
        if threshold is None:
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
        warnings=warnings + [f"thresholds {active.path.name}: {w}" for w in active.warnings],
        calibration_path=active.path,
    )


def _imaging_warnings(recipe: Recipe, models: dict[str, Any]) -> list[str]:
    """What changed in the cell's imaging since each model was trained: a scale change is
    refused (faults would be seen at another size than learnt), the rest is said."""
    out = []
    for m in models.values():
        changes, scale_moved = imaging_changes(m.meta.get("imaging"), recipe)
        if not changes:
            continue
        said = f"model {m.version} was trained under other imaging: {', '.join(changes)}"
        fix = f"retrain (station train --recipe {recipe.name}) and recalibrate"
        if scale_moved:
            raise DetectorError(said, hint=f"{fix}, or put the poses and lens back")
        out.append(f"{said}; its scores may have moved: {fix}")
    return out
