"""`station export`: a recipe detector's newest model as an ONNX or OpenVINO graph + sidecar.

`export_model(recipe, name, fmt)` loads the newest artifact with every recipe check, traces
its exportable network (`graphs.export_net`), writes the graph beside the artifact (OpenVINO:
converted from the ONNX graph, weights kept fp32), runs the written graph once on the runtime
against eager torch (a seeded probe batch) and refuses the export when they disagree by more
than `MAX_REL_DIFF` of the eager output's magnitude. The sidecar (`sidecar.py`) records the
identity and the measured difference.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from station.detectors.artifact import latest_artifact, load_artifact
from station.detectors.runtimes import graphs, sidecar
from station.detectors.runtimes.detector import open_session
from station.errors import DetectorError, cause
from station.files import writing

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import Recipe

# An export whose output differs from eager torch by more than this share of the eager
# output's largest magnitude (on the probe batch) is refused.
MAX_REL_DIFF = 1e-5
PROBE_BATCH = 2
# The opsets torch's TorchScript exporter (graphs.export_onnx: dynamo=False) writes, from
# torch.onnx._constants (ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET) of torch 2.x.
OPSETS = range(7, 21)


@dataclass
class ExportResult:
    detector: str
    version: str
    files: list[Path]
    rel_diff: float  # max |runtime - torch| / max |torch| on the probe batch


def _probe(hw: tuple[int, int]) -> torch.Tensor:
    """A seeded, image-like probe batch: smooth noise in [0, 1]."""
    g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(PROBE_BATCH, 3, max(1, hw[0] // 8), max(1, hw[1] // 8), generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=hw, mode="bilinear", align_corners=False)
    return (0.8 * fine + 0.2 * torch.rand(PROBE_BATCH, 3, *hw, generator=g)).clamp(0, 1)


def _check(net: graphs.ExportNet, fmt: str, graph: Path) -> tuple[float, list[int] | None]:
    """(relative difference of the written graph vs eager torch, PatchCore's grid)."""
    x = _probe(net.image_hw)
    net.module.eval()
    with torch.no_grad():
        eager = net.module(x)
    eager_outs = [eager] if isinstance(eager, torch.Tensor) else list(eager)
    got = open_session(fmt, graph, "cpu").run(x.numpy())
    rel = 0.0
    for want, have in zip(eager_outs, got, strict=True):
        w = want.float().numpy()
        if w.shape != have.shape:
            raise graphs.ExportError(f"exported graph gives shape {have.shape}, torch {w.shape}")
        rel = max(rel, float(np.abs(have - w).max() / max(float(np.abs(w).max()), 1e-12)))
    return rel, _grid(net)


def _grid(net: graphs.ExportNet) -> list[Any] | None:
    """PatchCore's patch grid (h, w); an ensemble's, one per member; None otherwise."""
    if net.kind == "patch_scores":
        return list(getattr(net.module, "grid"))  # noqa: B009
    if net.kind == "ensemble_patch_scores":
        return [list(g) for g in getattr(net.module, "grids")]  # noqa: B009
    return None


def _write_graph(net: graphs.ExportNet, fmt: str, graph: Path, opset: int) -> None:
    """The ONNX graph at `graph`, or (openvino) the IR converted from it: .xml + .bin."""
    if fmt == "onnx":
        graphs.export_onnx(net, graph, opset)
        return
    from station.detectors.runtimes.ov_runtime import openvino

    ov = openvino()
    with tempfile.TemporaryDirectory(dir=graph.parent) as tmpdir:
        onnx_file = Path(tmpdir) / "graph.onnx"
        graphs.export_onnx(net, onnx_file, opset)
        try:
            model = ov.convert_model(str(onnx_file))
            ov.save_model(model, str(Path(tmpdir) / "graph.xml"), compress_to_fp16=False)
        except Exception as exc:  # noqa: BLE001 (a converter failure: not exportable)
            raise graphs.ExportError(f"OpenVINO conversion failed: {cause(exc)}") from None
        shutil.move(str(Path(tmpdir) / "graph.bin"), graph.with_suffix(".bin"))
        shutil.move(str(Path(tmpdir) / "graph.xml"), graph)


def _weights_record(graph: Path, fmt: str) -> dict[str, str] | None:
    """OpenVINO's .bin beside its .xml (every constant: the backbone's weights, PatchCore's
    bank), by name and sha256; None for ONNX (one file)."""
    if fmt != "openvino":
        return None
    weights = graph.with_suffix(".bin")
    return {"file": weights.name, "sha256": sidecar.file_sha256(weights)}


def _beside_graph(detector: Detector, kind: str, artifact: Path) -> dict[str, Any]:
    """What the runtime needs outside the graph (PatchCore's top-patch search; an
    ensemble's, per member, and its standardisation)."""
    det: Any = detector
    if kind == "ensemble_patch_scores":
        return {
            "members": [_patch_step(m.model, artifact) for m in det.members],
            "combine": "Ensemble.combine: each member standardised by its held-out good "
            "scores (mean, std from the artifact), then averaged",
            "standardisation": [list(s) for s in det.stats],
        }
    return _patch_step(det.model, artifact) if kind == "patch_scores" else {}


def _patch_step(model: Any, artifact: Path) -> dict[str, Any]:
    bank = model.memory_bank
    return {
        "score_step": "PatchCoreModel.score_from_distances: top patch k-NN, re-weighting (torch)",
        "memory_bank": {
            "in_graph": "constant of the distance matmul; also read from the artifact",
            "from": artifact.name,
            "rows": int(bank.shape[0]),
            "dims": int(bank.shape[1]),
        },
        "num_neighbors": model.num_neighbors,
        "sigma": model.sigma,
    }


def export_model(
    recipe: Recipe, name: str, fmt: str, opset: int = graphs.DEFAULT_OPSET
) -> ExportResult:
    """Export detector `name`'s newest model of `recipe` to `fmt` (see the module doc)."""
    if fmt not in sidecar.FORMATS:
        raise DetectorError(f"format must be one of {', '.join(sidecar.FORMATS)}, not {fmt!r}")
    path = latest_artifact(recipe, name)
    loaded = load_artifact(path, recipe=recipe, device="cpu")
    net = graphs.export_net(loaded.detector)
    graph = sidecar.graph_path(path, fmt)
    side = sidecar.sidecar_path(path, fmt)
    # Written and checked aside first: a failed export leaves the previous one as it was.
    what = f"{fmt} export of detector {name} in {graph.parent}"
    with writing(what):
        aside = tempfile.TemporaryDirectory(dir=graph.parent, prefix=".export-")
    with aside as tmpdir:
        staged = Path(tmpdir) / graph.name
        _write_graph(net, fmt, staged, opset)
        rel, grid = _check(net, fmt, staged)
        if rel > MAX_REL_DIFF:
            raise graphs.ExportError(
                f"the {fmt} graph differs from torch by {rel:.2g} of the output's magnitude "
                f"(more than {MAX_REL_DIFF:g})"
            )
        weights = [staged.with_suffix(".bin")] if fmt == "openvino" else []
        with writing(what):
            side.unlink(missing_ok=True)  # no sidecar while the graph files are replaced
            for f in (*weights, staged):
                f.replace(graph.with_name(f.name))
    h, w = net.image_hw
    doc = {
        "sidecar_version": sidecar.SIDECAR_VERSION,
        "format": fmt,
        "opset": opset,
        "detector": name,
        "detector_version": int(loaded.detector.version),
        "artifact": {"file": path.name, "version": loaded.version, "sha256": loaded.sha256},
        "recipe": {
            "name": recipe.name,
            "sha256": recipe.sha256,
            "model_sha256": sidecar.model_digest(recipe, name),
        },
        "graph": {
            "file": graph.name,
            "sha256": sidecar.file_sha256(graph),
            "weights": _weights_record(graph, fmt),
            "kind": net.kind,
            "input": {
                "name": graphs.INPUT,
                "shape": ["batch", 3, h, w],
                "dtype": "float32",
                "range": "RGB in [0, 1]; the backbone's normalisation is in the graph",
            },
            "outputs": list(net.outputs),
            "grid": grid,
        },
        "beside_graph": _beside_graph(loaded.detector, net.kind, path),
        "check": {"probe_batch": PROBE_BATCH, "max_rel_diff": rel, "limit": MAX_REL_DIFF},
        "exported_with": {"torch": torch.__version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    sidecar.write_sidecar(side, doc)
    return ExportResult(name, loaded.version, sidecar.export_files(path, fmt), rel)


def serve_detector(detector: Detector, fmt: str, folder: Path, device: str = "cpu") -> Any:
    """A fitted torch detector exported to `fmt` in `folder` (checked as `station export`
    checks) and served by its runtime: a RuntimeDetector, for benchmarks and tests."""
    from station.detectors.runtimes.detector import RuntimeDetector

    net = graphs.export_net(detector)
    graph = folder / f"{detector.name}{'.onnx' if fmt == 'onnx' else '.xml'}"
    _write_graph(net, fmt, graph, graphs.DEFAULT_OPSET)
    rel, grid = _check(net, fmt, graph)
    if rel > MAX_REL_DIFF:
        raise graphs.ExportError(f"the {fmt} graph differs from torch by {rel:.2g}")
    runtime = next(r for r, f in sidecar.RUNTIME_FORMAT.items() if f == fmt)
    doc = {"graph": {"kind": net.kind, "grid": grid}}
    return RuntimeDetector(detector, open_session(fmt, graph, device), doc, runtime)
