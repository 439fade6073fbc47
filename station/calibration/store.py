"""Calibration files and records: write them, and find the one `station inspect` may use.

`calibration/<recipe>.yaml` always holds the newest calibration of a recipe; every calibration
is also kept as `calibration/history/<recipe>-<UTC time>.yaml` (with its ROC plot and a CSV of
the part scores it rests on) and as a `Calibration` row in the database.
`load_active_calibration(recipe, model_versions)` returns the newest calibration
made for exactly these model versions and this decision rule, and refuses otherwise: running
on thresholds fitted to another model would be silently wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from station.calibration.core import CalibrationResult, OperatingPoint
from station.errors import CalibrationError, StorageError
from station.files import atomic_write_all
from station.paths import station_home
from station.recipe import Recipe, load_recipe

FORMAT_VERSION = 1
HEADER = (
    "# Threshold calibration written by `station calibrate-threshold`; do not edit by hand,\n"
    "# re-run the command instead. Decision: a part is defective when score >= threshold.\n"
)


def _display(path: Path) -> str:
    """`path` relative to the station home when inside it (for files and the database)."""
    try:
        return path.resolve().relative_to(station_home()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def history_dir(recipe: Recipe) -> Path:
    return recipe.calibration_path.parent / "history"


def plot_path(yaml_path: Path) -> Path:
    return yaml_path.with_name(yaml_path.stem + "_roc.png")


def scores_path(yaml_path: Path) -> Path:
    return yaml_path.with_name(yaml_path.stem + "_scores.csv")


def scores_csv(result: CalibrationResult) -> str:
    """One row per part: label, each detector's part score, combined score, verdict.

    Scores are written with repr(), so re-applying the thresholds to this file reproduces the
    stated counts exactly.
    """
    names = [n for n in result.part_values if n != "combined"]
    lines = [",".join(["part", "label", *names, "combined", "rejected"])]
    combined = result.part_values.get("combined", np.empty(0))
    for i, part in enumerate(result.part_ids):
        row = [part, "defect" if result.labels[i] else "good"]
        row += [repr(float(result.part_values[n][i])) for n in names]
        row += [repr(float(combined[i])), str(int(combined[i] >= 1.0))]
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def _point_dict(p: OperatingPoint) -> dict[str, Any]:
    out: dict[str, Any] = {"threshold": p.threshold}
    if p.policy_threshold is not None and p.policy_threshold != p.threshold:
        out["policy_threshold"] = p.policy_threshold
    if p.model_version:
        out["model_version"] = p.model_version
    out["false_reject_rate"] = p.false_reject.as_dict()
    out["miss_rate"] = p.miss.as_dict()
    out["auroc"] = None if p.auroc is None else round(p.auroc, 6)
    out["auroc_ci"] = None if p.auroc_ci is None else [round(v, 6) for v in p.auroc_ci]
    return out


def result_document(
    result: CalibrationResult,
    calibration_id: int | None,
    dataset: str,
    plot: str,
    scores: str = "",
) -> dict[str, Any]:
    """The YAML content for a calibration (plain types only)."""
    return {
        "format": FORMAT_VERSION,
        "recipe": result.recipe,
        "id": calibration_id,
        "created_at": result.created_at.isoformat(),
        "policy": result.policy.as_dict(),
        "policy_description": result.policy.describe(),
        "source": result.source,
        "dataset": dataset,
        "data_sha256": result.data_sha256,
        "decision": {
            "rule": "defective when score >= threshold; combined = "
            f"{result.combine_detectors} over detectors of score / threshold, >= 1.0",
            "combine_poses": result.combine_poses,
            "combine_detectors": result.combine_detectors,
            "combined_threshold": 1.0,
            "scale": result.scale,
        },
        "thresholds": dict(result.thresholds),
        "model_versions": dict(result.model_versions),
        "counts": {"good": result.n_good, "defect": result.n_defect, "shots": result.n_shots},
        "combined": _point_dict(result.combined),
        "detectors": {name: _point_dict(p) for name, p in result.detectors.items()},
        "out_of_sample": result.out_of_sample.as_dict() if result.out_of_sample else None,
        "alternatives": [a.as_dict(result.n_good, result.n_defect) for a in result.alternatives],
        "intervals": {
            "bootstrap": "percentile, good and defective parts resampled separately",
            "resamples": result.resamples,
            "seed": result.seed,
            "level": result.level,
            "exact": "Clopper-Pearson; `upper` is the exact one-sided bound",
        },
        "warnings": list(result.warnings),
        "notes": list(result.notes),
        "roc_plot": plot,
        "scores": scores,
    }


@dataclass
class SavedCalibration:
    id: int | None
    path: Path  # calibration/<recipe>.yaml
    history_path: Path
    plot_path: Path
    scores_path: Path  # per-part scores and verdicts (history folder)
    document: dict[str, Any]


def save_calibration(
    result: CalibrationResult,
    recipe: Recipe,
    *,
    dataset: str = "",
    database_url: str | None = None,
    record: bool = True,
    camera_source: str | None = None,
) -> SavedCalibration:
    """Write the YAML (current + history) and the ROC plot; record a Calibration row.
    `camera_source`: the sheet map's camera model, with combine_poses sheet_map."""
    from station.calibration.roc_plot import render_calibration

    path = recipe.calibration_path
    stamp = result.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    hist = history_dir(recipe) / f"{recipe.name}-{stamp}.yaml"
    png = plot_path(path)
    cal_id: int | None = None
    doc = result_document(result, None, dataset, _display(png), _display(scores_path(hist)))
    if result.combine_poses == "sheet_map":  # the map's fusion and grid set the scores' scale
        doc["decision"]["sheet_fusion"] = recipe.decision.sheet_fusion
        doc["decision"]["sheet_map_mm_per_px"] = recipe.decision.sheet_map_mm_per_px
        if camera_source is not None:  # the map's geometry: a new cell calibration moves it
            doc["decision"]["sheet_map_camera"] = camera_source
    figure = render_calibration(result)  # before the record: a failure leaves no row
    if record:
        cal_id = _record(result, doc, _display(hist), database_url or _db_url(recipe))
        doc["id"] = cal_id
    text = HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    try:  # all or nothing: a history copy alone would become the active calibration
        atomic_write_all({
            plot_path(hist): figure,
            scores_path(hist): scores_csv(result).encode("utf-8"),
            hist: text.encode("utf-8"),
            png: figure,
            path: text.encode("utf-8"),
        })  # fmt: skip
    except OSError as exc:
        if cal_id is not None:  # no row for a calibration whose files do not exist
            _forget(cal_id, database_url or _db_url(recipe))
        raise CalibrationError(
            f"cannot write calibration files under {path.parent}: {exc}",
            hint="check the folder's permissions and free space",
        ) from None
    return SavedCalibration(cal_id, path, hist, png, scores_path(hist), doc)


def _db_url(recipe: Recipe) -> str:
    return recipe.storage.resolved_database_url()


def _record(result: CalibrationResult, doc: dict[str, Any], file_path: str, url: str) -> int:
    from station.storage.db import open_database
    from station.storage.models import Calibration

    db = open_database(url)
    try:
        with db.session() as session:
            row = Calibration(
                recipe=result.recipe,
                created_at=result.created_at,
                policy=result.policy.name,
                source=result.source,
                thresholds=dict(result.thresholds),
                rates={
                    "policy": doc["policy"],
                    "counts": doc["counts"],
                    "combined": doc["combined"],
                    "detectors": doc["detectors"],
                    "out_of_sample": doc["out_of_sample"],
                    "warnings": doc["warnings"],
                },
                model_versions=dict(result.model_versions),
                data_sha256=result.data_sha256,
                file_path=file_path,
            )
            session.add(row)
            session.flush()
            return int(row.id)
    except StorageError:
        raise
    finally:
        db.dispose()


def _forget(cal_id: int, url: str) -> None:
    from station.storage.db import open_database
    from station.storage.models import Calibration

    db = open_database(url, migrate=False)
    try:
        with db.session() as session:
            row = session.get(Calibration, cal_id)
            if row is not None:
                session.delete(row)
    finally:
        db.dispose()


# -- reading ---------------------------------------------------------------------------------


@dataclass
class ActiveCalibration:
    """The calibration `station inspect` applies."""

    id: int | None
    thresholds: dict[str, float]
    policy: str
    path: Path
    created_at: datetime
    model_versions: dict[str, str]
    combine_poses: str
    combine_detectors: str
    combined: dict[str, Any] = field(default_factory=dict)  # expected rates with intervals
    note: str = ""  # set when an older calibration is used because it matches the models
    warnings: list[str] = field(default_factory=list)  # what its own set made doubtful


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())  # YAML errors span several lines
        raise CalibrationError(
            f"calibration file {path} cannot be read: {why}",
            hint="re-run station calibrate-threshold",
        ) from None
    ok = isinstance(doc, dict) and isinstance(doc.get("thresholds"), dict)
    ok = ok and isinstance(doc.get("model_versions"), dict) and "created_at" in doc
    thresholds = doc.get("thresholds", {}) if ok else {}
    if ok:
        try:
            ok = all(math.isfinite(float(t)) and float(t) > 0 for t in thresholds.values())
            _created(doc)  # calibrations are ordered by it
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise CalibrationError(
            f"calibration file {path} is damaged (missing or invalid thresholds, model_versions "
            "or created_at)",
            hint="re-run station calibrate-threshold",
        )
    return doc


def _created(doc: dict[str, Any]) -> datetime:
    value = doc["created_at"]
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def calibration_mismatch(
    doc: dict[str, Any], recipe: Recipe, versions: dict[str, str], camera_source: str | None
) -> list[str]:
    """Why `doc` does not fit the loaded models, the recipe's decision rule and (sheet map)
    the camera model ([] = fits)."""
    why: list[str] = []
    cal_versions = {str(k): str(v) for k, v in doc["model_versions"].items()}
    for name, version in versions.items():
        if name not in doc["thresholds"]:
            why.append(f"it has no threshold for detector {name}")
        elif cal_versions.get(name) != str(version):
            why.append(
                f"{name} was calibrated with model {cal_versions.get(name, '(unknown)')} "
                f"but the loaded model is {version}"
            )
    extra = sorted(set(doc["thresholds"]) - set(versions))
    if extra:
        why.append(f"it also covers detector(s) {', '.join(extra)} that are not running")
    decision = doc.get("decision") or {}
    keys = ["combine_poses", "combine_detectors"]
    if recipe.decision.combine_poses == "sheet_map":
        keys += ["sheet_fusion", "sheet_map_mm_per_px"]
    for key in keys:
        want = getattr(recipe.decision, key)
        if decision.get(key, want) != want:
            why.append(f"it was made for {key}={decision.get(key)}, the recipe says {want}")
    made_with = decision.get("sheet_map_camera")
    sheet = recipe.decision.combine_poses == "sheet_map"
    if sheet and camera_source and made_with and made_with != camera_source:
        why.append(
            f"its sheet maps were made with camera model {made_with!r}, the station now "
            f"uses {camera_source!r} (the cell calibration changed)"
        )
    return why


def load_active_calibration(
    recipe: Recipe | str, model_versions: dict[str, str], camera_source: str | None = None
) -> ActiveCalibration:
    """The newest calibration made for these model versions (and, with combine_poses
    sheet_map, this sheet-map camera model); CalibrationError otherwise."""
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    fix = f"run station calibrate-threshold --recipe {recipe.name}"
    current = recipe.calibration_path
    files = [current] if current.is_file() else []
    hist = history_dir(recipe)
    if hist.is_dir():
        files += sorted(hist.glob(f"{recipe.name}-*.yaml"))
    if not files:
        raise CalibrationError(
            f"no threshold calibration for recipe {recipe.name} ({_display(current)} missing)",
            hint=fix,
        )
    docs: list[tuple[datetime, Path, dict[str, Any]]] = []
    for path in files:
        try:
            doc = _read(path)
        except CalibrationError:
            if path == current:
                raise
            continue  # a damaged history file does not block a good current one
        if doc.get("recipe", recipe.name) != recipe.name:
            continue
        docs.append((_created(doc), path, doc))
    if not docs:
        raise CalibrationError(f"no readable calibration for recipe {recipe.name}", hint=fix)
    docs.sort(key=lambda d: (d[0], d[1] == current), reverse=True)
    newest_when, newest_path, newest_doc = docs[0]
    for when, path, doc in docs:
        if calibration_mismatch(doc, recipe, model_versions, camera_source):
            continue
        note = ""
        if when < newest_when:
            note = (
                f"using the calibration of {when:%Y-%m-%d %H:%M} UTC ({_display(path)}): the "
                f"newer one of {newest_when:%Y-%m-%d %H:%M} was made for other models or "
                "settings"
            )
        elif not current.is_file():
            note = (f"{_display(current)} is missing: using its copy in the history, "
                    f"{_display(path)}")
        decision = doc.get("decision") or {}
        return ActiveCalibration(
            id=doc.get("id"),
            thresholds={str(k): float(v) for k, v in doc["thresholds"].items()},
            policy=str((doc.get("policy") or {}).get("name", "")),
            path=path,
            created_at=when,
            model_versions={str(k): str(v) for k, v in doc["model_versions"].items()},
            combine_poses=str(decision.get("combine_poses", recipe.decision.combine_poses)),
            combine_detectors=str(
                decision.get("combine_detectors", recipe.decision.combine_detectors)
            ),
            combined=dict(doc.get("combined") or {}),
            note=note,
            warnings=[str(w) for w in doc.get("warnings") or []],
        )
    why = calibration_mismatch(newest_doc, recipe, model_versions, camera_source)
    reasons = "; ".join(why)
    raise CalibrationError(
        f"calibration {_display(newest_path)} of {newest_when:%Y-%m-%d %H:%M} UTC is stale: "
        f"{reasons}",
        hint=f"{fix}; thresholds must be recalibrated after retraining (and, for sheet-map "
        "scores, after a new cell calibration)",
    )
