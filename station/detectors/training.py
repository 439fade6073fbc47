"""Train a detector on a folder of good images and save it as an artifact (used by
`station train` and `station evaluate --train`).

Images are read and preprocessed by the scoring engine (`engine.load_images`). The detector
receives all good images; it holds out its own validation split (seeded) and
reports those images' scores, summarised here as good-score statistics in the artifact meta.

With `preprocess.tiling` the detector is fitted on tiles cut as the engine cuts shots
(`engine.training_tiles`: all, or `train_tiles_per_image` drawn per shot with the detector's
seed); its validation split and good-score statistics are then per tile (meta
`good_scores_per: tile`), while an inspected shot scores the max over its tiles.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from station.detectors.artifact import new_version, preprocess_meta, save_artifact
from station.detectors.backbones import file_sha256
from station.detectors.base import Detector, FitReport, ProgressFn
from station.detectors.cell_imaging import imaging_meta
from station.detectors.engine import training_tiles
from station.detectors.registry import create_detector, detector_kwargs

if TYPE_CHECKING:
    from station.recipe import DetectorConfig, Recipe


@dataclass
class TrainedModel:
    detector: Detector
    report: FitReport
    version: str
    path: Path
    sha256: str
    meta: dict[str, Any]


def data_sha256(files: Sequence[Path]) -> str:
    """sha256 over the sorted sha256s of the training files (order- and name-independent)."""
    digests = sorted(file_sha256(Path(f)) for f in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def score_stats(scores: Sequence[float]) -> dict[str, Any]:
    """Mean, std and quantiles of good-image scores (empty dict entries when none)."""
    s = np.asarray(list(scores), dtype=np.float64)
    if s.size == 0:
        return {"n": 0}
    q = np.quantile(s, [0.0, 0.5, 0.9, 0.95, 0.99, 1.0])
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
        "min": float(q[0]),
        "q50": float(q[1]),
        "q90": float(q[2]),
        "q95": float(q[3]),
        "q99": float(q[4]),
        "max": float(q[5]),
    }


def train_and_save(
    recipe: Recipe,
    det_cfg: DetectorConfig,
    files: Sequence[Path],
    images: Sequence[np.ndarray],
    out_path: Path | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    train_hash: str | None = None,
) -> TrainedModel:
    """Fit `det_cfg`'s detector on `images` (preprocessed shots; cut into tiles when the recipe
    tiles) and save it (default: the recipe's models dir)."""
    detector = create_detector(det_cfg.name, **detector_kwargs(det_cfg, device))
    tiling = recipe.preprocess.tiling
    fit_on: Sequence[np.ndarray] = images
    if tiling.enabled:
        seed = int(detector.config().get("seed", 0) or 0)
        fit_on = training_tiles(images, recipe.preprocess, seed)
    report = detector.fit(fit_on, progress=progress)
    version = new_version(det_cfg.name)
    path = out_path or recipe.models_dir / det_cfg.name / f"{version}.pt"
    first = fit_on[0]
    backbone = getattr(detector, "backbone", None)
    meta: dict[str, Any] = {
        "version": version,
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256,
        "detector": det_cfg.name,
        "detector_version": detector.version,
        "config": detector.config(),
        "backbone": dict(getattr(backbone, "identity", {}) or {}),
        "train_data_sha256": train_hash or data_sha256(files),
        # the files in the order fit split them (station.retrain.bank measures on that split)
        "fit_files_sha256": [file_sha256(Path(f)) for f in files],
        "n_train_images": len(images),
        "tiling": (
            {**tiling.model_dump(), "n_train_tiles": len(fit_on)} if tiling.enabled else None
        ),
        "good_scores_per": "tile" if tiling.enabled else "image",
        "train_folder": str(Path(files[0]).parent) if files else "",
        "image_size": [int(first.shape[1]), int(first.shape[0])],
        "preprocess": preprocess_meta(recipe),
        "imaging": imaging_meta(recipe),  # exposure, gain, scale: station.inspection checks
        "channels": 1 if first.ndim == 2 else int(first.shape[2]),
        "good_scores": score_stats(report.good_scores),
        "fit": {k: v for k, v in report.extra.items() if _plain(v)},
        "fit_seconds": round(report.seconds, 3),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    sha = save_artifact(detector, path, meta)
    return TrainedModel(detector, report, version, path, sha, meta)


def _plain(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, str | int | bool | list | dict) or v is None
