"""A trained model served by ONNX Runtime or OpenVINO: the same `predict` contract as torch.

`load_runtime_model(recipe, name, path, runtime, device)` loads the artifact at `path` with
every check `load_artifact` makes (recipe, size, preprocessing, settings), then its export for
the runtime (refused when missing or stale, `sidecar.read_checked`), and returns a
LoadedModel whose detector is a `RuntimeDetector` with the artifact's version, meta and sha256:
calibrations and thresholds keyed by model version still match.

`RuntimeDetector.predict`: images -> the same [0, 1] RGB batch as torch (`to_batch`) -> the
runtime in chunks of RUNTIME_BATCH -> maps and scores. PatchCore's graph gives patch features, each
patch's nearest-bank distance and the smoothed map; the top patch's search and re-weighting run
through `PatchCoreModel.score_from_distances` on the CPU (its `knn` index,
station.detectors.knn), whatever device the graph runs on. A PatchCore ensemble's graph gives
those three per member; each member's top patch runs the same way, then `Ensemble.combine`.
The torch model is kept for that step only (PatchCore and its ensemble) and otherwise dropped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from station.detectors.artifact import LoadedModel, load_artifact
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import to_batch
from station.detectors.runtimes import sidecar
from station.errors import DetectorError

if TYPE_CHECKING:
    from station.recipe import Recipe


RUNTIME_BATCH = 8  # images per graph call


def open_session(fmt: str, graph: Path, device: str) -> Any:
    """An OrtSession / OvSession for `graph`, threads as torch has them (`--threads`)."""
    threads = torch.get_num_threads()
    session: Any
    if fmt == "onnx":
        from station.detectors.runtimes.ort_runtime import OrtSession

        tensorrt = os.environ.get("STATION_ORT_TENSORRT", "") == "1"
        session = OrtSession(graph, device, threads, tensorrt=tensorrt)
    else:
        from station.detectors.runtimes.ov_runtime import OvSession

        session = OvSession(graph, device, threads)
    if device.strip().lower() == "auto":  # said, never silent: auto may land on the CPU
        session.description += " (device auto)"
        if not session.on_gpu:
            print(f"NOTE: {session.description}: {session.cpu_note}, running on the CPU",
                  file=sys.stderr, flush=True)  # fmt: skip
    return session


class RuntimeDetector(Detector):
    """A fitted detector's export on a runtime. Predict only: fit with the torch detector."""

    def __init__(
        self, torch_detector: Detector, session: Any, doc: dict[str, Any], runtime: str
    ) -> None:
        self.name = torch_detector.name  # type: ignore[misc]
        self.version = torch_detector.version  # type: ignore[misc]
        self.runtime = runtime
        self.session = session
        self.kind = str(doc["graph"]["kind"])
        self.image_hw = torch_detector.image_hw
        self._cfg = {**torch_detector.config(), "runtime": runtime}
        # the graph's own batch, not the torch detector's (tuned for eager torch): 8 was
        # its fastest on the CPU (docs/runtimes.md, per-shot latency)
        self.batch_size = RUNTIME_BATCH
        grid = doc["graph"].get("grid") or (0, 0)
        grids = grid if self.kind == "ensemble_patch_scores" else [grid]
        self.grids = [(int(g[0]), int(g[1])) for g in grids]
        # PatchCore (one) or a PatchCore ensemble (each member): the top patch's step outside
        self.scorers: list[Any] = []
        self.ensemble: Any = None
        self.device = torch.device("cpu")
        if self.kind == "patch_scores":
            self.scorers = [getattr(torch_detector, "model")]  # noqa: B009
        elif self.kind == "ensemble_patch_scores":
            self.ensemble = torch_detector
            self.scorers = [m.model for m in getattr(torch_detector, "members")]  # noqa: B009
        self.description = f"{session.description}, {self.kind} graph"
        if self.scorers:
            self.description += f", top-patch k-NN on torch {self.device.type}"

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        raise DetectorError(
            f"{self.name} on {self.runtime} is an export and cannot be trained",
            hint="train with the torch detector: station train",
        )

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        outs = self.session.run(x)
        if not self.scorers:
            return outs[0].astype(np.float32), outs[1].reshape(-1).astype(np.float32)
        per_member = []
        for i, (scorer, (h, w)) in enumerate(zip(self.scorers, self.grids, strict=True)):
            feats, dist, smoothed = (torch.from_numpy(o) for o in outs[3 * i : 3 * i + 3])
            if dist.shape[1] != h * w:
                raise DetectorError(
                    f"{self.name}: export gave {dist.shape[1]} patches, expected {h} x {w}"
                )
            with torch.no_grad():
                maps, scores = scorer.score_from_distances(feats, dist, smoothed)
            per_member.append((maps.numpy(), scores.numpy()))
        if self.ensemble is None:
            return per_member[0]
        return tuple(self.ensemble.combine(per_member))  # type: ignore[return-value]

    def predict(self, images: np.ndarray) -> Prediction:
        self.require_fitted()
        t0 = time.perf_counter()
        assert self.image_hw is not None
        batch = to_batch(images, self.image_hw, self.name)
        maps, scores = [], []
        for start in range(0, batch.shape[0], self.batch_size):
            m, s = self._predict_tensor(batch[start : start + self.batch_size])
            maps.append(m)
            scores.append(s)
        return Prediction(
            maps=np.concatenate(maps),
            scores=np.concatenate(scores),
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )


def load_runtime_model(
    recipe: Recipe, name: str, path: Path, runtime: str, device: str | None = None
) -> LoadedModel:
    """The artifact at `path` served by `runtime` on `device` (default: the recipe's)."""
    fmt = sidecar.RUNTIME_FORMAT[runtime]
    if fmt == "onnx":  # a runtime that is not installed: said before any model is read
        from station.detectors.runtimes.ort_runtime import ort_module

        ort_module()
    else:
        from station.detectors.runtimes.ov_runtime import openvino

        openvino()
    loaded = load_artifact(path, recipe=recipe, device="cpu")
    doc = sidecar.read_checked(path, loaded.sha256, fmt, recipe, name)
    graph = path.parent / doc["graph"]["file"]
    session = open_session(fmt, graph, device or recipe.detector(name).device)
    det = RuntimeDetector(loaded.detector, session, doc, runtime)
    meta = {**loaded.meta, "runtime": runtime, "runtime_description": det.description}
    return LoadedModel(det, meta, loaded.version, loaded.path, loaded.sha256)
