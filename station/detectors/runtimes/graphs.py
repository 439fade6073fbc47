"""What each detector exports, and the ONNX export itself.

`export_net(detector)` gives the torch module to export and what its outputs are:
- PatchCore: the feature extraction (mirrored context, backbone, stage pooling, centering,
  channel pooling) and the exact nearest-neighbour distance of every patch to the memory bank
  (one matmul against the bank, a graph constant, and a min), upsampled and smoothed by two
  constant matmuls -> patch features (N*h*w x D), distances (N x h*w), smoothed map
  (N x H x W). What is left runs per image on its top patch only, through
  `PatchCoreModel.score_from_distances` (the `knn` index: exact distance, re-weighting, the
  map scaled to the score).
- An ensemble whose members are all PatchCores on one shared backbone pass (the two scales of
  `glassfiber-ensemble`): that pass once, then each member's distances and smoothed map as
  above -> per member i `features_i`, `distances_i`, `smoothed_i`. Each member's top patch
  runs outside as for PatchCore; the ensemble's standardisation and average then combine them
  (`Ensemble.combine`). Other ensembles are not exported.
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
import copy
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

from station.detectors.common import upsample_smooth
from station.errors import DetectorError, cause

if TYPE_CHECKING:
    from station.detectors.base import Detector

DEFAULT_OPSET = 17
INPUT = "images"
PATCH_OUTPUTS = ("features", "distances", "smoothed")  # PatchCore's graph (kind patch_scores)


class ExportError(DetectorError):
    """This detector's network cannot be exported (or its export disagrees with torch)."""


@dataclass
class ExportNet:
    module: nn.Module
    kind: str  # "patch_scores" (PatchCore: top-patch re-weighting outside), its ensemble
    # "ensemble_patch_scores", or "maps_scores"
    outputs: tuple[str, ...]
    image_hw: tuple[int, int]


def smoothing_matrices(
    grid: tuple[int, int], image_hw: tuple[int, int], sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H x h, W x w) matrices R, C with R @ d @ C.T == upsample_smooth(d) for an h x w map d.

    Bilinear upsampling and the Gaussian blur (reflect padding) each act on one axis at a
    time, and both keep a map that is constant along an axis constant: so an impulse in
    row i, constant along the width, comes out as column i of R in every output column."""
    h, w = grid
    rows_in = torch.eye(h)[:, None, :, None].expand(h, 1, h, w).contiguous()
    cols_in = torch.eye(w)[:, None, None, :].expand(w, 1, h, w).contiguous()
    rows = upsample_smooth(rows_in, image_hw, sigma)[:, :, 0].t().contiguous()
    cols = upsample_smooth(cols_in, image_hw, sigma)[:, 0, :].t().contiguous()
    return rows, cols


def distance_basis(channels: list[int], layer_dim: int) -> torch.Tensor:
    """D x D' matrix B (D' <= D) with |(q - b) @ B| == |q - b| for any two PatchCore features.

    A stage with c < layer_dim channels is widened to layer_dim by the channel pooling
    (g @ P, P: c x layer_dim): its layer_dim dims hold only c degrees of freedom. With
    P P.T = L L.T (Cholesky), (g @ P) @ P.T @ inv(L.T) = g @ L, and |g @ L|^2 = g P P.T g.T
    = |g @ P|^2: that stage's block of B maps its layer_dim dims to c with the same
    Euclidean distances. Other stages keep their dims (an identity block). The bank search
    then costs sum(min(c, layer_dim)) instead of D multiply-adds per bank row."""
    blocks = []
    for c in channels:
        if c < layer_dim:
            p = _pool_matrix(c, layer_dim).double()
            chol = torch.linalg.cholesky(p @ p.T)
            blocks.append(torch.linalg.solve_triangular(chol, p, upper=False).T)  # P.T inv(L.T)
        else:
            blocks.append(torch.eye(layer_dim, dtype=torch.float64))
    return torch.block_diag(*blocks).float()


class _PatchScores(nn.Module):
    """PatchCore up to the patch distances: images -> (patch features N*h*w x D, distance of
    each patch to its nearest bank row N x h*w, their upsampled smoothed map N x H x W)."""

    def __init__(self, model: nn.Module, image_hw: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        basis = distance_basis(list(model.backbone.channels), int(model.layer_dim))
        bank = model.memory_bank.detach().float() @ basis
        self.register_buffer("basis", basis)
        # |q - b|^2 = |q|^2 + (|b|^2 - 2 q.b): the bank term is one matmul with a constant.
        self.register_buffer("neg2_bank_t", (-2.0 * bank).t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))
        with torch.no_grad():
            _, grid = model.patch_features(torch.zeros(1, 3, *image_hw))  # type: ignore[operator]
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        rows, cols = smoothing_matrices(self.grid, image_hw, float(model.sigma))
        self.register_buffer("rows", rows)
        self.register_buffer("cols_t", cols.t().contiguous())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.from_stage_maps(self.model.stage_maps(x, self.model.backbone))  # type: ignore[operator]

    def from_stage_maps(
        self, maps: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The outputs from stage maps by layer name (this model's own, or a shared pass's
        that taps more layers)."""
        feats, _ = self.model.features_of(maps)  # type: ignore[operator]
        h, w = self.grid
        z = feats @ self.basis  # the same distances in fewer dims (`distance_basis`)
        d2 = (z @ self.neg2_bank_t + self.bank_sq).amin(dim=1) + (z * z).sum(1)
        dist = d2.clamp_min(0.0).sqrt().reshape(-1, h * w)
        smoothed = self.rows @ dist.reshape(-1, h, w) @ self.cols_t
        return feats, dist, smoothed


class _SharedPatchScores(nn.Module):
    """PatchCore members on one backbone pass: images -> each member's (features,
    distances, smoothed), member by member. `runner` is the member whose mirrored context
    and patch size read the pass (equal for all, `PatchCore.shared_pass_key`)."""

    def __init__(self, heads: list[_PatchScores], trunk: nn.Module, runner: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.trunk = trunk
        self.runner = runner
        self.grids = [head.grid for head in heads]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reader: Any = self.heads[self.runner].model
        maps = reader.stage_maps(x, self.trunk)
        return tuple(out for head in self.heads for out in head.from_stage_maps(maps))


def _ensemble_net(detector: Any) -> ExportNet:
    """An ensemble of PatchCores sharing one backbone pass, as one graph."""
    members = list(detector.members)
    passes = list(detector.passes)
    if any(m.name != "patchcore" for m in members) or not (
        len(passes) == 1 and len(passes[0].members) == len(members)
    ):
        raise ExportError(
            "ensemble: exports only when every member is a PatchCore on one shared backbone "
            f"pass (same weights, mirror_pad, patch_size); members here: "
            f"{', '.join(m.name for m in members)}"
        )
    hw = detector.image_hw
    heads = [_PatchScores(_cpu_eval(m.model), hw).eval() for m in members]
    net = _SharedPatchScores(heads, _cpu_eval(passes[0].trunk), passes[0].runner).eval()
    outputs = tuple(f"{o}_{i}" for i in range(len(members)) for o in PATCH_OUTPUTS)
    return ExportNet(net, "ensemble_patch_scores", outputs, hw)


class _MapsScores(nn.Module):
    """A detector's whole scoring forward: images -> (maps, scores)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.model(x)
        return maps.float(), scores.float()


def _cpu_eval(module: nn.Module) -> nn.Module:
    """`module` in eval mode on the CPU; a copy when it lives elsewhere, so that exporting a
    detector on a GPU leaves it there (a bench goes on predicting with it)."""
    on_cpu = all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    return (module if on_cpu else copy.deepcopy(module).cpu()).eval()


def export_net(detector: Detector) -> ExportNet:
    """The exportable network of a fitted detector (on the CPU, eval mode)."""
    detector.require_fitted("export")
    if detector.name == "ensemble":
        return _ensemble_net(detector)
    model = getattr(detector, "model", None)
    if not isinstance(model, nn.Module) or detector.image_hw is None:
        raise ExportError(f"{detector.name}: has no plain torch scoring module to export")
    # The wrapper in eval mode too: the exporter restores the wrapper's mode afterwards,
    # recursively, which would leave dropout and batch norm in training mode.
    model = _cpu_eval(model)
    if detector.name == "patchcore":
        net = _PatchScores(model, detector.image_hw).eval()
        return ExportNet(net, "patch_scores", PATCH_OUTPUTS, detector.image_hw)
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


@contextlib.contextmanager
def exporter_log_silenced() -> Iterator[None]:
    """Send the process's stdout (file descriptor 1) to /dev/null. torch's TorchScript exporter
    always turns its C++ log on (setup_onnx_logging tests a function, not its result), so an
    export that fails prints its whole IR graph there, hundreds of lines, past Python."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(net: ExportNet, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace `net` on a batch of 2 at its image size and write the ONNX graph to `path`
    (dynamic batch axis). A failure is a one-line DetectorError."""
    h, w = net.image_hw
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    dynamic = {
        INPUT: {0: "batch"},
        # features_i: member i's patches (an ensemble's members have grids of their own)
        **{
            o: {0: o.replace("features", "patches") if o.startswith("features") else "batch"}
            for o in net.outputs
        },
    }
    buf = io.BytesIO()
    try:
        with torch.no_grad(), exportable_pooling(), warnings.catch_warnings(), \
                exporter_log_silenced():
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
        why = cause(exc)
        hint = "pip install station[onnx]" if "onnx is not installed" in why else None
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {why}", hint=hint) from None
    path.write_bytes(buf.getvalue())
