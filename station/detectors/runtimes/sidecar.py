"""An export's files and its JSON sidecar: identity, and the checks that refuse a stale export.

Beside a model file `<models_dir>/<detector>/<version>.pt`, `station export` writes
  onnx:      <version>.onnx                  + <version>.onnx.json
  openvino:  <version>.xml, <version>.bin    + <version>.openvino.json
The sidecar records the format, opset, input size and graph kind, what the runtime needs
beside the graph, and the identity the export was made from: the artifact's version and
sha256, the recipe's name, its sha256 (`recipe.sha256`, for the record) and `model_sha256`,
a digest of what the model depends on in the recipe (`preprocess` and the detector's entry
without `runtime`, `device` and the detector's other runtime settings, e.g. PatchCore's
`knn`). Loading refuses an export whose artifact sha256, recipe name
or model digest differ from now, or whose graph file changed: switching `runtime` or
`device` in the recipe does not need a new export; any other change to the detector's entry
or to the preprocessing does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.errors import DetectorError
from station.files import atomic_write, file_sha256, writing

if TYPE_CHECKING:
    from station.recipe import Recipe

# 2: PatchCore graph kind patch_scores (k-NN distances in the graph); 3: OpenVINO's .bin (its
# weights and PatchCore's bank) is hashed and checked too, as the graph file always was
SIDECAR_VERSION = 3
FORMATS = ("onnx", "openvino")
# recipe runtime -> the export format it runs
RUNTIME_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}


def graph_path(artifact: Path, fmt: str) -> Path:
    """The graph file of `artifact`'s export in `fmt` (OpenVINO: the .xml; its .bin beside)."""
    return artifact.with_suffix(".onnx" if fmt == "onnx" else ".xml")


def sidecar_path(artifact: Path, fmt: str) -> Path:
    return artifact.with_suffix(f".{fmt}.json")


def export_files(artifact: Path, fmt: str) -> list[Path]:
    """Every file an export of `artifact` in `fmt` consists of (graph first, sidecar last)."""
    graph = graph_path(artifact, fmt)
    weights = [graph.with_suffix(".bin")] if fmt == "openvino" else []
    return [graph, *weights, sidecar_path(artifact, fmt)]


def model_digest(recipe: Recipe, detector: str) -> str:
    """sha256 of what a model depends on in the recipe: preprocessing and the detector's
    entry, less `runtime`, `device` and its `runtime_settings` (where and how it runs)."""
    from station.detectors.registry import detector_class

    entry = recipe.detector(detector).model_dump(mode="json", exclude={"runtime", "device"})
    runtime_only = getattr(detector_class(detector), "runtime_settings", frozenset())
    entry["params"] = {k: v for k, v in entry["params"].items() if k not in runtime_only}
    doc = {"preprocess": recipe.preprocess.model_dump(mode="json"), "detector": entry}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _same_file(folder: Path, record: dict[str, Any]) -> bool:
    """The file `record` names (file, sha256) is in `folder` with those bytes."""
    path = folder / str(record.get("file") or "")
    return bool(record.get("file")) and path.is_file() and file_sha256(path) == record.get("sha256")


def write_sidecar(path: Path, doc: dict[str, Any]) -> None:
    with writing(f"export sidecar {path}"):
        atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_checked(
    artifact: Path, artifact_sha256: str, fmt: str, recipe: Recipe, detector: str
) -> dict[str, Any]:
    """The sidecar of `artifact`'s `fmt` export, refused (one-line DetectorError naming the
    file and `station export`) when missing, unreadable or stale."""
    side = sidecar_path(artifact, fmt)
    fix = f"station export --recipe {recipe.name} --format {fmt}"
    if not side.is_file():
        raise DetectorError(
            f"detector {detector} runs on {fmt} but model {artifact.name} has no {fmt} export "
            f"({side} does not exist)",
            hint=fix,
        )
    try:
        doc = json.loads(side.read_text())
        made_from, made_for = doc["artifact"], doc["recipe"]
        graph = artifact.parent / doc["graph"]["file"]
        graph_sha = doc["graph"]["sha256"]
        weights = doc["graph"].get("weights") or {}
        doc_format = doc["format"]
        doc["graph"]["kind"]  # noqa: B018 (a sidecar without it is unreadable, said here)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DetectorError(f"export sidecar {side} cannot be read ({exc})", hint=fix) from None
    stale = None
    if doc_format != fmt or doc.get("sidecar_version") != SIDECAR_VERSION:
        stale = f"it holds format {doc_format!r}, version {doc.get('sidecar_version')}"
    elif made_from.get("sha256") != artifact_sha256:
        stale = f"it was made from another model file (sha256 {str(made_from.get('sha256'))[:12]})"
    elif made_for.get("name") != recipe.name:
        stale = f"it was made for recipe {made_for.get('name')!r}"
    elif made_for.get("model_sha256") != model_digest(recipe, detector):
        stale = f"recipe {recipe.name} changed the preprocessing or the {detector} entry since"
    elif not graph.is_file() or file_sha256(graph) != graph_sha:
        stale = f"its graph {graph.name} is missing or changed"
    elif fmt == "openvino" and not _same_file(artifact.parent, weights):
        name = weights.get("file") or graph.with_suffix(".bin").name
        stale = f"its weights {name} are missing or changed"
    if stale:
        raise DetectorError(f"export {side} is stale: {stale}", hint=fix)
    return dict(doc)
