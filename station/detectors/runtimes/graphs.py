"""What each detector exports, and the ONNX export itself.

`export_net(detector)` gives the torch module to export and what its outputs are:
- PatchCore: the feature extraction only (mirrored context, backbone, stage pooling,
  centering, channel pooling) -> patch features (N*h*w x D). The nearest-neighbour search,
  re-weighting and map smoothing stay outside the graph and run through the model's own
  `score` step (`PatchCoreModel.score`, k-NN in `station.detectors.common`), so every runtime
  shares one k-NN implementation.
- SimpleNet, EfficientAD, DFDA, AST-MFR: the whole scoring forward -> maps (N x H x W) and
  scores (N).

The input is always `images`: N x 3 x H x W float32 RGB in [0, 1] at the fitted size; the
batch axis is dynamic.

`F.adaptive_avg_pool1d` to a size that does not divide the input (PatchCore's and SimpleNet's
channel pooling) has no ONNX form, so during export it is traced as the equal linear map: a
matmul with a constant pooling matrix (`exportable_pooling`). Eager inference is unchanged.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from station.errors import DetectorError

if TYPE_CHECKING:
    from station.detectors.base import Detector

DEFAULT_OPSET = 17
INPUT = "images"


class ExportError(DetectorError):
    """This detector's network cannot be exported (or its export disagrees with torch)."""


@dataclass
class ExportNet:
    module: nn.Module
    kind: str  # "features" (PatchCore: k-NN outside the graph) or "maps_scores"
    outputs: tuple[str, ...]
    image_hw: tuple[int, int]


class _PatchFeatures(nn.Module):
    """PatchCore's feature extraction: images -> (N*h*w, D) patch features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.patch_features(x)[0]


class _MapsScores(nn.Module):
    """A detector's whole scoring forward: images -> (maps, scores)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.model(x)
        return maps.float(), scores.float()


def export_net(detector: Detector) -> ExportNet:
    """The exportable network of a fitted detector (on the CPU, eval mode)."""
    detector.require_fitted("export")
    model = getattr(detector, "model", None)
    if not isinstance(model, nn.Module) or detector.image_hw is None:
        raise ExportError(f"{detector.name}: has no plain torch scoring module to export")
    # The wrapper in eval mode too: the exporter restores the wrapper's mode afterwards,
    # recursively, which would leave dropout and batch norm in training mode.
    model = model.cpu().eval()
    if detector.name == "patchcore":
        return ExportNet(_PatchFeatures(model).eval(), "features", ("features",), detector.image_hw)
    wrapped = _MapsScores(model).eval()
    return ExportNet(wrapped, "maps_scores", ("maps", "scores"), detector.image_hw)


def _pool_matrix(length: int, size: int) -> torch.Tensor:
    """L x size matrix P with x @ P == adaptive_avg_pool1d(x, size) over the last axis.

    Built in numpy: the tracer sees one constant, not one slice assignment per column (those
    unrolled SimpleNet's 256 px graph into ~200 000 nodes that ONNX Runtime took > 8 GB to
    load)."""
    p = np.zeros((length, size), np.float32)
    for j in range(size):
        start, end = (j * length) // size, -((-(j + 1) * length) // size)
        p[start:end, j] = 1.0 / (end - start)
    return torch.from_numpy(p)


@contextlib.contextmanager
def exportable_pooling() -> Iterator[None]:
    """`F.adaptive_avg_pool1d` as a constant matmul while tracing (see the module doc)."""
    original = F.adaptive_avg_pool1d

    def pooled(x: torch.Tensor, output_size: Any) -> torch.Tensor:
        size = int(output_size[0] if isinstance(output_size, list | tuple) else output_size)
        length = int(x.shape[-1])
        return x @ _pool_matrix(length, size).to(x.device, x.dtype)

    F.adaptive_avg_pool1d = pooled  # type: ignore[assignment]
    try:
        yield
    finally:
        F.adaptive_avg_pool1d = original


def export_onnx(net: ExportNet, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace `net` on a batch of 2 at its image size and write the ONNX graph to `path`
    (dynamic batch axis). A failure is a one-line DetectorError."""
    h, w = net.image_hw
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    dynamic = {
        INPUT: {0: "batch"},
        **{o: {0: "batch" if o != "features" else "patches"} for o in net.outputs},
    }
    buf = io.BytesIO()
    try:
        with torch.no_grad(), exportable_pooling(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: sizes are fixed per model
            torch.onnx.export(
                net.module,
                (example,),
                buf,
                input_names=[INPUT],
                output_names=list(net.outputs),
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001 (any exporter failure: the detector is not exportable)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {first[:300]}") from None
    path.write_bytes(buf.getvalue())
