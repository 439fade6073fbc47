"""The detector interface every anomaly detector implements, and what they share.

Input: a batch of preprocessed images as uint8 numpy arrays, N x H x W x 3 (RGB) or N x H x W
(grey; detectors replicate it to three channels). All images in a detector's life have the
size it was fitted on. Output: a per-pixel anomaly map at input resolution and an image score.
Detectors know nothing about hardware, recipes' files or the database.

A detector keeps its settings in `self._cfg` (what `config()` returns), its torch device in
`self.device` and the fitted image size (height, width) in `self.image_hw`. The base class then
gives it the "not fitted" guard, batched prediction through `_predict_tensor`, AMP (fp16
autocast on CUDA when `amp` is set) and saving:
- `state_dict()` / `load_state_dict()`: the learned state. The base class guards against
  saving an unfitted detector, adds the image size (under `size_key`), moves tensors to the
  CPU and turns missing keys or modules that do not fit into one-line DetectorErrors; the
  detector only writes and reads its own fitted parts (`_fitted_state`, `_load_fitted_state`).
- `state()` / `load_state()`: the whole saved payload (format version, detector name and
  version, config, state dict) that an artifact file holds, and its checks.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from station.detectors.common import autocast_for, predict_in_batches
from station.detectors.types import (
    FORMAT_VERSION,
    FitReport,
    Prediction,
    ProgressFn,
    check_payload,
    plain,
)
from station.errors import DetectorError

__all__ = [
    "FORMAT_VERSION",
    "Detector",
    "FitReport",
    "Prediction",
    "ProgressFn",
    "autocast_for",
    "check_payload",
    "plain",
]


def to_cpu(value: Any) -> Any:
    """`value` with every tensor detached and on the CPU (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


class Detector(ABC):
    """Fit on good images, predict anomaly maps. Subclasses register with `@register`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the saved state changes meaning
    # The settings dataclass (`create_detector` checks params against it); None: the
    # constructor's annotated parameters are the settings.
    Config: ClassVar[type | None] = None
    # The key `state_dict()` stores the fitted (height, width) under.
    size_key: ClassVar[str] = "image_hw"
    # Settings that choose where and how the model runs, not what it learned (the device;
    # PatchCore's exact-or-approximate search): a saved model loads with other values for
    # them, and a recipe's values replace the saved ones (artifact.load_artifact).
    runtime_settings: ClassVar[frozenset[str]] = frozenset({"device"})
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

    # -- saving: per-detector hooks --------------------------------------------------------
    def _fitted_state(self) -> dict[str, Any]:
        """The detector's own fitted parts (tensors, module state dicts, plain values); the
        image size is added by `state_dict`. Called only when fitted."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _fitted_state")

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        """Restore the fitted parts from `state` (a KeyError names a missing entry);
        `image_hw` is the saved image size, set on the detector after this returns."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _load_fitted_state")

    # -- saving: the template ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Learned state for the artifact: the fitted parts and the image size, on the CPU."""
        self.require_fitted("save")
        assert self.image_hw is not None
        state = {**self._fitted_state(), self.size_key: list(self.image_hw)}
        return to_cpu(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved into this detector (built with the same config)."""
        if not isinstance(state, Mapping):
            raise DetectorError(f"{self.name}: saved state is not a dict")
        try:
            h, w = state[self.size_key]
            hw = (int(h), int(w))
            self._load_fitted_state(dict(state), hw)
        except KeyError as exc:
            raise DetectorError(f"{self.name}: saved state lacks {exc.args[0]!r}") from None
        self.image_hw = hw

    def load_module(self, module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """`module.load_state_dict(state)`, a mismatch as a one-line DetectorError."""
        try:
            module.load_state_dict(state)
        except (KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise DetectorError(
                f"{self.name}: saved state does not fit this configuration: {first}",
                hint="load it with the config it was saved with",
            ) from None

    def state(self) -> dict[str, Any]:
        """What an artifact file holds besides its meta: format version, detector name and
        version, config and state dict."""
        return {
            "format_version": FORMAT_VERSION,
            "detector": self.name,
            "detector_version": int(self.version),
            "config": self.config(),
            "state_dict": self.state_dict(),
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        """Load a `state()` payload into this detector, built from the payload's config (the
        device may differ): the format, name, version and settings are checked first."""
        check_payload(payload, self.name, self.version)
        mine = self.config()
        changed = [
            f"{k} {v!r} -> {mine[k]!r}"
            for k, v in payload["config"].items()
            if k not in self.runtime_settings and k in mine and plain(v) != plain(mine[k])
        ]
        if changed:
            raise DetectorError(
                f"{self.name}: saved with other settings than this detector has: "
                f"{', '.join(changed)}",
                hint="build the detector from the saved config",
            )
        self.load_state_dict(payload["state_dict"])

    # -- shared by the torch detectors --------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.image_hw is not None

    def require_fitted(self, doing: str = "") -> None:
        """DetectorError unless fitted (or loaded); `doing` names what was attempted."""
        if not self.fitted:
            if doing:
                raise DetectorError(
                    f"{self.name}: nothing to {doing}, the detector is not trained yet",
                    hint="run station train first",
                )
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
