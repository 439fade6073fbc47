"""Candidate models: which versions, their thresholds, and loading them beside the live ones.

A candidate is one model version per detector of the recipe (the retrained ones; a detector
not retrained keeps its live version). Its thresholds come from a calibration made for exactly
those versions: `station retrain` writes one under `calibration/candidates/` (the live
calibration, `calibration/<recipe>.yaml`, is untouched until a promotion).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from station.detectors.artifact import find_artifact, latest_artifact, load_artifact
from station.errors import CalibrationError, StationError
from station.files import atomic_write

if TYPE_CHECKING:
    from station.calibration.core import CalibrationResult
    from station.detectors.artifact import LoadedModel
    from station.recipe import Recipe

HEADER = (
    "# Threshold calibration of a candidate model set, written by `station retrain`; it\n"
    "# becomes the live calibration when the candidate is promoted (station models promote).\n"
)


def candidate_id(versions: dict[str, str]) -> str:
    """The name a candidate's shadow verdicts are stored under: its versions, joined."""
    text = "+".join(versions[k] for k in sorted(versions))
    if len(text) <= 128:
        return text
    return f"candidate-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def live_versions(recipe: Recipe) -> dict[str, str]:
    """detector -> the live model version (what station inspect loads)."""
    # a model file is named after its version (station.detectors.training)
    return {det.name: latest_artifact(recipe, det.name).stem for det in recipe.detectors}


def detector_of(recipe: Recipe, version: str) -> str:
    """The recipe detector a version string belongs to (`<detector>-<time>-<hex>`)."""
    for det in recipe.detectors:
        if version.startswith(f"{det.name}-"):
            return det.name
    names = ", ".join(d.name for d in recipe.detectors)
    raise StationError(
        f"model version {version!r} belongs to none of recipe {recipe.name}'s detectors ({names})",
        hint="station models list shows the versions",
    )


def resolve_versions(recipe: Recipe, named: list[str]) -> dict[str, str]:
    """The candidate set: the named versions, the live version for every other detector."""
    versions = live_versions(recipe)
    for version in named:
        name = detector_of(recipe, version)
        find_artifact(recipe, name, version)  # refused now when the file is absent
        versions[name] = version
    return versions


def load_versions(recipe: Recipe, versions: dict[str, str]) -> dict[str, LoadedModel]:
    """The models of a candidate set, checked against the recipe."""
    return {
        name: load_artifact(find_artifact(recipe, name, v), recipe=recipe)
        for name, v in versions.items()
    }


def candidates_dir(recipe: Recipe) -> Path:
    return recipe.calibration_path.parent / "candidates"


def save_candidate_calibration(
    recipe: Recipe, result: CalibrationResult, dataset: str, retrain: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write a candidate's calibration (YAML, same layout as a live one) beside the live ones;
    `retrain`: what station retrain adds (the confirmed-defect constraint)."""
    from station.calibration.store import result_document

    doc = result_document(result, None, dataset, "")
    doc["candidate"] = candidate_id(dict(result.model_versions))
    if retrain:
        doc["retrain"] = retrain
    stamp = result.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = candidates_dir(recipe) / f"{recipe.name}-{stamp}.yaml"
    text = HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as exc:
        raise CalibrationError(
            f"cannot write {path}: {exc}", hint="check the folder's permissions and free space"
        ) from None
    return path, doc


@dataclass
class CandidateCalibration:
    path: Path
    document: dict[str, Any]

    @property
    def thresholds(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.document["thresholds"].items()}

    @property
    def created_at(self) -> datetime:
        v = self.document["created_at"]
        when = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
        return when if when.tzinfo else when.replace(tzinfo=UTC)


def find_calibration(recipe: Recipe, versions: dict[str, str]) -> CandidateCalibration:
    """The newest calibration made for exactly `versions` and the recipe's decision rule: a
    candidate's (calibration/candidates/), else a live one (history included)."""
    want = {str(k): str(v) for k, v in versions.items()}
    found: list[CandidateCalibration] = []
    folder = candidates_dir(recipe)
    files = sorted(folder.glob(f"{recipe.name}-*.yaml")) if folder.is_dir() else []
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
            continue
        got = {str(k): str(v) for k, v in (doc.get("model_versions") or {}).items()}
        decision = doc.get("decision") or {}
        same_rule = all(
            decision.get(k) == getattr(recipe.decision, k)
            for k in ("combine_poses", "combine_detectors")
        )
        if got == want and same_rule and set(doc["thresholds"]) == set(want):
            found.append(CandidateCalibration(path, doc))
    if found:
        return max(found, key=lambda c: c.created_at)
    from station.calibration.store import load_active_calibration

    try:
        active = load_active_calibration(recipe, want)
    except CalibrationError:
        raise CalibrationError(
            f"no calibration for the model set {candidate_id(want)} of recipe {recipe.name}",
            hint=f"station retrain --recipe {recipe.name} calibrates its candidates",
        ) from None
    doc = {
        "thresholds": active.thresholds,
        "model_versions": active.model_versions,
        "created_at": active.created_at.isoformat(),
    }
    return CandidateCalibration(active.path, doc)
