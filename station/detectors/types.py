"""The values detectors hand back and save: predictions, fit reports, and the layout of a
saved detector (`Detector.state()`, what an artifact file holds) with its checks. No torch
here, so that reading these stays cheap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from station.errors import DetectorError

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


# Layout of `Detector.state()` (what an artifact file holds); bump when it changes.
FORMAT_VERSION = 1
PAYLOAD_KEYS = ("format_version", "detector", "detector_version", "config", "state_dict")


def load_failure(exc: Exception) -> str:
    """Why `torch.load(..., weights_only=True)` failed, in a few words on one line. Torch's own
    text for a weights-only refusal advises weights_only=False, which would run the file's code."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        return "corrupt, or a pickle holding more than tensors"
    if "PytorchStreamReader" in text or "central directory" in text:
        return "damaged or cut short: not a whole model archive"
    if not text:
        return f"{type(exc).__name__}: empty or cut short?"
    line = text.splitlines()[0]
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."


def plain(value: Any) -> Any:
    """Settings in comparable form: tuples as lists, numbers as floats."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def check_payload(
    payload: Any, name: str | None = None, version: int | None = None, what: str = "saved state"
) -> None:
    """DetectorError unless `payload` is a complete `Detector.state()` of this format (and,
    when given, of detector `name` at `version`); `what` names the payload in the message."""
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise DetectorError(f"{what} is not a station model artifact")
    if payload["format_version"] != FORMAT_VERSION:
        raise DetectorError(
            f"{what} has format {payload['format_version']}, this station reads format "
            f"{FORMAT_VERSION}",
            hint="retrain with station train",
        )
    missing = [k for k in PAYLOAD_KEYS if k not in payload]
    if missing:
        raise DetectorError(
            f"{what} is not a complete station model artifact (no {', '.join(missing)})",
            hint="retrain with station train",
        )
    if name is not None and payload["detector"] != name:
        raise DetectorError(f"{what} holds detector {payload['detector']!r}, not {name!r}")
    if version is not None and int(payload["detector_version"]) != int(version):
        raise DetectorError(
            f"{what} holds {payload['detector']} version {payload['detector_version']}, "
            f"this station runs {payload['detector']} version {version}",
            hint="retrain with station train",
        )
