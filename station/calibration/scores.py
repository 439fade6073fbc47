"""Labelled part scores for calibration, from image folders or from operator reviews.

- Folders in MVTec-AD layout (what `station capture` writes, or `--dataset DIR`): the test
  images (`test/good` = good, any other `test/<kind>` = defective) are scored by the recipe's
  trained detectors. Stems `p{sequence:06d}_{pose}` group shots into parts (capture layout);
  otherwise each image is its own part. A part is defective when any of its shots is.
- Operator reviews in the database: the newest review of each part gives its label
  (defect_confirmed = defective, false_reject = good); the scores are the stored Detection
  scores of its shots. Reviews mostly cover rejected parts, and the result says so.

A part's score for one detector is `combine_poses` (max or mean) over its shots. With
`combine_poses: sheet_map` it is the raw peak of the part's sheet map, built as inspection
builds it (`sheet_map_peaks`): each shot's detector maps projected through the given camera
model from the recipe pose of its name, fused by `decision.sheet_fusion`; parts are scored one
at a time (one part's maps in memory). Reviews cannot give it (the database keeps shot scores,
not the map peaks), so that source is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from station.calibration.core import PartScores
from station.datasets import MVTecFolder
from station.decision import COMBINE_POSES, combine_scores
from station.detectors.engine import ScoringEngine, load_models
from station.errors import CalibrationError
from station.files import file_sha256
from station.geometry.coverage import region_rect
from station.geometry.sheet_map import recipe_mapper, shot_view
from station.imaging import read_image, saturated_mask

if TYPE_CHECKING:
    from station.datasets import DatasetItem
    from station.detectors.artifact import LoadedModel
    from station.geometry.sheet_map import CameraLike
    from station.recipe import Recipe

CAPTURE_STEM = re.compile(r"^p(\d{6,})_(.+)$")
ProgressFn = Callable[[str, int, int], None]


def part_key(stem: str, group: bool) -> str:
    m = CAPTURE_STEM.match(stem) if group else None
    return f"p{m.group(1)}" if m else stem


def combine_shots(values: Sequence[float], how: str) -> float:
    """A part's score from its shots in pose order, by the decision rule's `combine_poses`."""
    if how not in COMBINE_POSES:
        raise CalibrationError(f"unknown combine_poses {how!r}", hint="use max or mean")
    return combine_scores(values, how)


def group_parts(
    shot_parts: Sequence[str],
    shot_labels: Sequence[int],
    shot_scores: dict[str, Sequence[float]],
    combine_poses: str,
    shot_order: Sequence[int] | None = None,
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-shot labels and scores folded into parts (label: defective if any shot is).

    Returns part ids, labels, pose-combined scores and the N x P shot scores (NaN padded),
    shots sorted by `shot_order` (pose index) within each part.
    """
    order = list(shot_order) if shot_order is not None else [0] * len(shot_parts)
    index: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(shot_parts):
        index[key].append(i)
    parts = sorted(index)
    for p in parts:
        index[p].sort(key=lambda i: (order[i], i))
    labels = np.array([max(int(shot_labels[i]) for i in index[p]) for p in parts], np.int64)
    width = max((len(v) for v in index.values()), default=0)
    scores: dict[str, np.ndarray] = {}
    shots: dict[str, np.ndarray] = {}
    for det, vals in shot_scores.items():
        arr = np.full((len(parts), width), np.nan)
        for r, p in enumerate(parts):
            arr[r, : len(index[p])] = [float(vals[i]) for i in index[p]]
        shots[det] = arr
        scores[det] = np.array(
            [combine_shots([float(vals[i]) for i in index[p]], combine_poses) for p in parts]
        )
    return parts, labels, scores, shots


def dataset_hash(entries: Iterable[tuple[str, int, str]]) -> str:
    """sha256 over sorted (name, label, content sha256) lines: what the thresholds rest on."""
    h = hashlib.sha256()
    for name, label, digest in sorted(entries):
        h.update(f"{name}\t{label}\t{digest}\n".encode())
    return h.hexdigest()


def score_folder(
    recipe: Recipe,
    root: Path,
    source: str,
    models: dict[str, LoadedModel] | None = None,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    camera: CameraLike | None = None,
) -> PartScores:
    """Score the labelled test images of an MVTec-layout folder with the recipe's detectors
    (`models`, default their newest trained versions). `camera`: the sheet map's camera model
    (`station.cellcal.store.inspection_camera`), needed with `combine_poses: sheet_map`."""
    root = Path(root)
    items = MVTecFolder(root).test_items()
    if not items:
        raise CalibrationError(
            f"no labelled images in {root / 'test'}",
            hint="capture sheets you know with station capture --label test-good and "
            "--label test-defect (--label labelled on the twin), or give --dataset a folder "
            "with test/good and test/<defect> images",
        )
    group = all(CAPTURE_STEM.match(it.stem) for it in items)
    dec = recipe.decision
    if dec.combine_poses == "sheet_map" and camera is None:
        raise CalibrationError(
            "combine_poses sheet_map scores a part on its sheet map, and no camera model was given",
            hint="calibrate with station calibrate-threshold (it uses the station's)",
        )
    models = models if models is not None else load_models(recipe)
    engine = ScoringEngine.from_models(models, recipe.preprocess, batch_size)
    # one image, one part: keyed by its path, as MVTec AD reuses 000.png in every folder
    keys = [
        part_key(it.stem, group) if group else it.path.relative_to(root).with_suffix("").as_posix()
        for it in items
    ]
    how = f"{dec.combine_poses} over each part's shots"
    if dec.combine_poses == "sheet_map" and camera is not None:
        parts, labels, scores, shots = sheet_map_peaks(
            recipe, engine, items, keys, camera, progress
        )
        how = (
            f"each detector's raw peak on the part's sheet map ({dec.sheet_fusion} over views, "
            f"{dec.sheet_map_mm_per_px:g} mm/px; camera model: {camera.source})"
        )
    else:
        parts, labels, scores, shots = _shot_parts(recipe, engine, items, keys, group, progress)
    digest = dataset_hash(
        (it.path.relative_to(root).as_posix(), it.label, file_sha256(it.path)) for it in items
    )
    n_def = int(labels.sum())
    what = "parts (shots grouped by p<sequence>_ prefix)" if group else "images (one part each)"
    notes = [
        f"labels from folder {root}: {len(parts) - n_def} good and {n_def} defective {what}, "
        f"{len(items)} shots",
        f"part scores: {how}",
    ]
    return PartScores(
        part_ids=parts,
        labels=labels,
        scores=scores,
        source=source,
        model_versions={n: str(m.version) for n, m in models.items()},
        data_sha256=digest,
        n_shots=len(items),
        notes=notes,
        shots=shots,
        warnings=misplaced_captures(root, parts) if group else [],
    )


def misplaced_captures(root: Path, parts: Sequence[str]) -> list[str]:
    """A warning naming the captured parts whose sheet was off its place when captured (their
    `meta/p<seq>.json` placement, written by station capture with sheet.check_placement):
    scored as they are, they were inspected only where they lay inside the region."""
    off = []
    for key in parts:
        try:
            meta = json.loads((root / "meta" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no meta (an older capture, another layout): nothing to say
        problem = (meta.get("placement") or {}).get("problem") if isinstance(meta, dict) else None
        if problem:
            off.append(f"{key} ({problem})")
    if not off:
        return []
    return [f"{len(off)} of {len(parts)} parts were off their place when captured, so they are "
            f"scored only where they lay inside the region: {'; '.join(off[:3])}"
            + (f"; and {len(off) - 3} more" if len(off) > 3 else "")
            + "; capture them again, or leave their files out of the folder"]


def _shot_parts(
    recipe: Recipe,
    engine: ScoringEngine,
    items: Sequence[DatasetItem],
    keys: Sequence[str],
    group: bool,
    progress: ProgressFn | None,
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every image scored (in batches), then folded into parts by `combine_poses` (max, mean)."""
    results = engine.score_files(
        [it.path for it in items],
        progress=(lambda done, total: progress("scoring", done, total)) if progress else None,
    )
    shot_scores = {name: [float(s) for s in r.scores] for name, r in results.items()}
    pose_index = {p.name: k for k, p in enumerate(recipe.robot.poses)}

    def pose_of(stem: str) -> int:
        m = CAPTURE_STEM.match(stem) if group else None
        return pose_index.get(m.group(2), len(pose_index)) if m else 0

    return group_parts(
        keys,
        [it.label for it in items],
        shot_scores,
        recipe.decision.combine_poses,
        [pose_of(it.stem) for it in items],
    )


def _part_shots(
    recipe: Recipe, key: str, items: Sequence[DatasetItem]
) -> list[tuple[str, DatasetItem]]:
    """A part's (pose name, image) in recipe pose order: one image of every recipe pose (the
    capture layout), or on a one-pose recipe one image of any name."""
    poses = [p.name for p in recipe.robot.poses]
    named: dict[str, DatasetItem] = {}
    for it in items:
        m = CAPTURE_STEM.match(it.stem)
        pose = m.group(2) if m else (poses[0] if len(poses) == 1 else None)
        if pose is None or pose not in poses:
            what = "is not named p<sequence>_<pose>" if pose is None else f"has pose {pose!r}"
            raise CalibrationError(
                f"{it.path.name} {what}, not one of recipe {recipe.name}'s poses "
                f"({', '.join(poses)}): combine_poses sheet_map places each shot by its pose",
                hint="calibrate on parts captured with this recipe (station capture), or set "
                "decision.combine_poses to max",
            )
        if pose in named:
            raise CalibrationError(
                f"part {key} has two images of pose {pose}: {named[pose].path.name} and "
                f"{it.path.name}",
                hint="keep one image per pose and part",
            )
        named[pose] = it
    missing = [p for p in poses if p not in named]
    if missing:
        raise CalibrationError(
            f"part {key} has no image of pose {', '.join(missing)}: its sheet map would miss "
            "what those shots see",
            hint="capture the part again, or remove its images",
        )
    return [(p, named[p]) for p in poses]


def sheet_map_peaks(
    recipe: Recipe,
    engine: ScoringEngine,
    items: Sequence[DatasetItem],
    keys: Sequence[str],
    camera: CameraLike,
    progress: ProgressFn | None = None,
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(part ids, labels, raw sheet-map peak per detector and part, the same as N x 1 "shots")
    for images grouped into parts by `keys`: part by part, its shots scored with their maps,
    projected from the recipe pose of their name and fused over the inspected region, as
    inspection does (station.inspection.sheet)."""
    index: dict[str, list[DatasetItem]] = defaultdict(list)
    for it, key in zip(items, keys, strict=True):
        index[key].append(it)
    parts = sorted(index)
    tcp = {p.name: [*p.position_mm, *p.rotvec_rad] for p in recipe.robot.poses}
    region = region_rect(recipe)  # for the message below
    peaks = {n: np.full(len(parts), np.nan) for n in engine.detectors}
    labels = np.zeros(len(parts), np.int64)
    done = 0
    for r, key in enumerate(parts):
        shots = _part_shots(recipe, key, index[key])
        results = engine.score_files([it.path for _, it in shots], keep_maps=True)
        mapper = recipe_mapper(recipe, camera.table_to_base)
        try:
            for i, (pose, it) in enumerate(shots):
                view = shot_view(camera, pose, tcp[pose], recipe.preprocess.crop)
                saturated = saturated_mask(read_image(it.path))
                mapper.add(view, {n: res.map(i) for n, res in results.items()}, saturated)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise CalibrationError(
                f"sheet map of part {key} not built: {exc}",
                hint="check the poses and the camera model",
            ) from None
        found = mapper.result().peaks()
        for n in engine.detectors:
            if not np.isfinite(found.get(n, np.nan)):
                raise CalibrationError(
                    f"the sheet map of part {key} sees no cell of the region "
                    f"{[round(v, 1) for v in region]} mm",
                    hint="check the poses and the camera model",
                )
            peaks[n][r] = found[n]
        labels[r] = max(it.label for _, it in shots)
        done += len(shots)
        if progress:
            progress("scoring", done, len(items))
    return parts, labels, peaks, {n: v[:, None] for n, v in peaks.items()}


@dataclass
class _Reviewed:
    sequence: int
    label: int
    passed: bool  # the station had passed it (an audit review)
    review_id: int
    scores: dict[str, list[tuple[float, str]]]  # detector -> (score, model version) per shot
    when: datetime


def scores_from_reviews(recipe: Recipe, database_url: str | None = None) -> PartScores:
    """Labels from the newest operator review of each part, scores from stored detections."""
    if recipe.decision.combine_poses == "sheet_map":
        raise CalibrationError(
            "combine_poses sheet_map scores a part on its sheet map's peak, which the database "
            "does not keep (it keeps shot scores)",
            hint="calibrate on labelled captures (station calibrate-threshold without "
            "--from-reviews)",
        )
    names = [d.name for d in recipe.detectors]
    rows, newest_models, unscored, partial = _read_reviews(recipe, names, database_url)
    if not rows:
        raise CalibrationError(
            f"no reviewed parts of recipe {recipe.name} in the database",
            hint="review rejected parts in station review first, or calibrate on labelled "
            "captures (station calibrate-threshold without --from-reviews)",
        )

    versions, kept = _one_model_version(rows, names)
    how = recipe.decision.combine_poses
    scores = {
        n: np.array([combine_shots([s for s, _ in r.scores[n]], how) for r in kept]) for n in names
    }
    width = max((len(r.scores[n]) for r in kept for n in names), default=1)
    shots = {n: np.full((len(kept), width), np.nan) for n in names}
    for i, r in enumerate(kept):
        for n in names:
            shots[n][i, : len(r.scores[n])] = [s for s, _ in r.scores[n]]
    labels = np.array([r.label for r in kept], np.int64)
    notes, warnings = _review_notes(
        recipe, rows, kept, labels, versions, newest_models, (unscored, partial)
    )
    digest = dataset_hash(
        (
            f"p{r.sequence:06d}",
            r.label,
            f"review {r.review_id}: " + " ".join(repr(s) for n in names for s, _ in r.scores[n]),
        )
        for r in kept
    )
    return PartScores(
        part_ids=[f"p{r.sequence:06d}" for r in kept],
        labels=labels,
        scores=scores,
        source="reviews",
        model_versions=versions,
        data_sha256=digest,
        n_shots=sum(len(r.scores[names[0]]) for r in kept),
        notes=notes,
        warnings=warnings,
        shots=shots,
    )


def _read_reviews(
    recipe: Recipe, names: list[str], database_url: str | None
) -> tuple[list[_Reviewed], dict[str, str], int, int]:
    """(reviewed parts scored on every pose, newest trained model per detector, parts left
    out for a missing score, parts left out for missing poses)."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from station.storage.db import open_database
    from station.storage.models import ModelVersion, Part, ReviewLabel, Shot, Verdict

    db = open_database(database_url or recipe.storage.resolved_database_url())
    try:
        with db.session() as session:
            parts = (
                session.scalars(
                    select(Part)
                    .where(Part.recipe == recipe.name, Part.reviews.any())
                    .options(
                        selectinload(Part.reviews),
                        selectinload(Part.shots).selectinload(Shot.detections),
                    )
                    .order_by(Part.sequence)
                )
                .unique()
                .all()
            )
            newest_models = {}
            for name in names:
                mv = session.scalars(
                    select(ModelVersion)
                    .where(ModelVersion.recipe == recipe.name, ModelVersion.detector == name)
                    .order_by(ModelVersion.trained_at.desc(), ModelVersion.id.desc())
                    .limit(1)
                ).first()
                if mv is not None:
                    newest_models[name] = mv.version
            rows: list[_Reviewed] = []
            unscored = 0  # parts where a detector gave no finite score (stored as NULL)
            partial = 0  # parts not scored on every pose (interrupted, or faulted mid-part)
            n_poses = len(recipe.robot.poses)
            for part in parts:
                review = part.reviews[-1]  # oldest first: the newest counts
                per_det: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
                dets = [
                    d
                    for sh in sorted(part.shots, key=lambda sh: sh.pose_index)
                    for d in sh.detections
                    if d.detector in per_det
                ]
                if any(d.score is None for d in dets):
                    unscored += 1
                    continue
                if any(sum(d.detector == n for d in dets) != n_poses for n in names):
                    partial += 1
                    continue
                for det in dets:
                    per_det[det.detector].append((det.score, det.model_version))
                rows.append(
                    _Reviewed(
                        sequence=part.sequence,
                        label=1 if review.label == ReviewLabel.DEFECT_CONFIRMED else 0,
                        passed=part.verdict == Verdict.PASS,
                        review_id=review.id,
                        scores=per_det,
                        when=part.finished_at or part.started_at,
                    )
                )
    finally:
        db.dispose()
    return rows, newest_models, unscored, partial


def _one_model_version(
    rows: list[_Reviewed], names: list[str]
) -> tuple[dict[str, str], list[_Reviewed]]:
    """The model versions of the newest fully scored part, and the parts scored by them."""
    versions: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.when, reverse=True):
        if all(row.scores[n] for n in names):
            versions = {n: row.scores[n][0][1] for n in names}
            break
    if not versions:
        raise CalibrationError(
            "no reviewed part has stored scores from every detector of the recipe "
            f"({', '.join(names)})",
            hint="inspect parts with the current recipe, then review them",
        )
    kept = [
        r
        for r in rows
        if all(r.scores[n] and all(v == versions[n] for _, v in r.scores[n]) for n in names)
    ]
    return versions, kept


def _review_notes(
    recipe: Recipe,
    rows: list[_Reviewed],
    kept: list[_Reviewed],
    labels: np.ndarray,
    versions: dict[str, str],
    newest_models: dict[str, str],
    left_out: tuple[int, int],
) -> tuple[list[str], list[str]]:
    """(notes, warnings) on a set labelled by reviews: what it is, and how it is biased."""
    unscored, partial = left_out
    n_poses = len(recipe.robot.poses)
    n_def = int(labels.sum())
    n_passed = sum(1 for r in kept if r.passed)
    notes = [
        f"labels from operator reviews (newest per part): {len(kept) - n_def} false_reject "
        f"= good, {n_def} defect_confirmed = defective; scores are the stored detections of "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"{n_passed} of the {len(kept)} reviewed parts had passed (audit reviews)",
    ]
    if len(rows) > len(kept):
        notes.append(
            f"{len(rows) - len(kept)} reviewed parts left out: scored by other model versions"
        )
    if unscored:
        notes.append(f"{unscored} reviewed parts left out: a detector gave no finite score")
    if partial:
        notes.append(
            f"{partial} reviewed parts left out: not scored on each of the recipe's "
            f"{n_poses} poses (interrupted, or faulted mid-part)"
        )
    warnings = []
    if n_passed == 0:
        warnings.append(
            "reviews cover only rejected parts: the false-reject rate is measured among "
            "rejected parts, not among all good parts, and defects the old threshold passed "
            "are not in the set (the miss rate is optimistic); review a random sample of "
            "passed parts for unbiased rates"
        )
    for n, v in versions.items():
        if n in newest_models and newest_models[n] != v:
            warnings.append(
                f"reviewed parts were scored by {n} {v}, but the newest trained {n} is "
                f"{newest_models[n]}: station inspect with that model will refuse this "
                "calibration as stale"
            )
    return notes, warnings
