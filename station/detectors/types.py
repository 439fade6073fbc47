"""The values detectors hand back: predictions and fit reports (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Prediction:
    maps: np.ndarray  # N x H x W float32, higher = more anomalous
    scores: np.ndarray  # N float32, image scores (max of each map)
    latency_ms: float = 0.0  # wall time for the whole batch


@dataclass
class FitReport:
    n_images: int
    seconds: float
    # Scores of held-out good images (validation split) or of the training images.
    good_scores: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
