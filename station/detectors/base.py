"""The detector interface every anomaly detector implements, and what they share.

Input: a batch of preprocessed images as uint8 numpy arrays, N x H x W x 3 (RGB) or N x H x W
(grey; detectors replicate it to three channels). All images in a detector's life have the
size it was fitted on. Output: a per-pixel anomaly map at input resolution and an image score.
Detectors know nothing about hardware, recipes' files or the database.

A detector keeps its settings in `self._cfg` (what `config()` returns), its torch device in
`self.device` and the fitted image size in `self.image_hw`. The base class then gives it the
"not fitted" guard, batched prediction through `_predict_tensor` and AMP (fp16 autocast on
CUDA when `amp` is set).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from station.detectors.common import autocast_for, predict_in_batches
from station.detectors.types import FitReport, Prediction, ProgressFn
from station.errors import DetectorError

__all__ = ["Detector", "FitReport", "Prediction", "ProgressFn", "autocast_for"]


class Detector(ABC):
    """Fit on good images, predict anomaly maps. Subclasses register with `@register`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the saved state changes meaning
    # The settings dataclass (`create_detector` checks params against it); None: the
    # constructor's annotated parameters are the settings.
    Config: ClassVar[type | None] = None
    _cfg: dict[str, Any]
    device: torch.device
    image_hw: tuple[int, int] | None = None

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

    # -- shared by the torch detectors --------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.image_hw is not None

    def require_fitted(self, doing: str = "") -> None:
        """DetectorError unless fitted (or loaded); `doing` names what was attempted."""
        if not self.fitted:
            if doing:
                raise DetectorError(f"{self.name}: nothing to {doing}, the detector is not fitted")
            raise DetectorError(f"{self.name}: not fitted", hint="run station train first")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The backbone's precision context: `autocast_for(device, amp setting)`."""
        return autocast_for(self.device, bool(self._cfg.get("amp", False)))

    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores) of one N x 3 x H x W batch in [0, 1]; used by `predict_batched`."""
        raise NotImplementedError

    def predict_batched(self, images: np.ndarray) -> Prediction:
        """`predict` for a detector with `_predict_tensor`: the guard, input checks (size,
        channels) and `batch_size` chunks."""
        self.require_fitted()
        assert self.image_hw is not None
        return predict_in_batches(
            images, self.image_hw, self.name, self._cfg["batch_size"], self._predict_tensor
        )
