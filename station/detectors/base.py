"""The detector interface every anomaly detector implements.

Input: a batch of preprocessed images as uint8 numpy arrays, N x H x W x 3 (RGB) or N x H x W
(grey; detectors replicate it to three channels). All images in a detector's life have the
size it was fitted on. Output: a per-pixel anomaly map at input resolution and an image score
(max of the map). Detectors know nothing about hardware, recipes' files or the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


class Detector(ABC):
    """Fit on good images, predict anomaly maps. Subclasses register with `@register`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the saved state changes meaning

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        """Train on good images (each H x W or H x W x 3 uint8, all one size)."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> Prediction:
        """Anomaly maps and scores for a batch (N x H x W [x 3] uint8)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the untrained detector: `create_detector(name, **cfg)`."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Learned state (tensors and plain values) for the artifact."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
