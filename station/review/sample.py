"""Synthetic review data: parts, shots, detections, reviews and small PNG files.

For tests, the review benchmark (`tools/bench_review.py`) and the screenshot tool. The images
are a procedurally woven texture with a dark blob on defective parts; heatmaps are colour PNGs
of the same pixel size, hot where the blob is. Parts with their own image files (not
`shared_images`) that passed or failed also get a sample sheet map fused from their shot maps
(station.review.sample_sheet). Rows go in with bulk inserts so 10 000 parts take seconds.
Nothing here is used on the line.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import func, insert, select

from station.review.sample_sheet import build_sheet_map
from station.storage.db import Database
from station.storage.models import (
    Detection,
    Part,
    Review,
    ReviewLabel,
    SheetDefectRow,
    Shot,
    Verdict,
)
from station.storage.parts import (
    DetectionRecord,
    PartRecord,
    SheetMapRecord,
    ShotRecord,
    detection_columns,
    part_columns,
    sheet_map_columns,
    shot_columns,
)

POSES = ("left", "centre", "right")

# Headless Chromium for the browser test and the screenshot tool: Debian's package, quiet.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def woven_image(
    width: int, height: int, seed: int, blob: tuple[int, int, int] | None
) -> np.ndarray:
    """A grey plain-weave texture (uint8 HxW); `blob` = (x, y, radius) draws a dark defect."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pitch = 12.0  # yarn width in pixels
    # Plain weave: checkerboard of crossings; warp yarn on top in one half, weft in the other.
    warp_on_top = (np.floor(x / pitch) + np.floor(y / pitch)) % 2 == 0
    warp = np.abs(np.sin(np.pi * x / pitch))  # bright along the yarn centre
    weft = np.abs(np.sin(np.pi * y / pitch))
    img = 95 + 110 * np.where(warp_on_top, warp, weft) + rng.normal(0, 6, (height, width))
    if blob:
        bx, by, r = blob
        d2 = (x - bx) ** 2 + (y - by) ** 2
        img -= 90 * np.exp(-d2 / (2 * (r / 1.5) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def anomaly_map(
    width: int, height: int, seed: int, blob: tuple[int, int, int] | None
) -> np.ndarray:
    """A float32 HxW anomaly map: low noise (up to 0.25), about 1 more around `blob`."""
    rng = np.random.default_rng(seed + 7)
    low = cv2.resize(rng.random((max(2, height // 32), max(2, width // 32))), (width, height))
    amap = 0.25 * low.astype(np.float32)
    if blob:
        bx, by, r = blob
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        amap += np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * (r * 1.2) ** 2))
    return amap


def heatmap_png(
    width: int, height: int, seed: int, blob: tuple[int, int, int] | None
) -> np.ndarray:
    """A BGR colour heatmap (JET) of the same size: low noise, hot around `blob`."""
    u8 = np.clip(anomaly_map(width, height, seed, blob) * 255, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


@dataclass
class SampleSet:
    part_ids: list[int]
    rejected_ids: list[int]  # fail or fault, newest last


@dataclass
class _ImageFiles:
    """Writes a shot PNG and one heatmap PNG per detector, once per key; returns their paths."""

    data_root: Path
    recipe: str
    detectors: tuple[str, ...]
    size: tuple[int, int]
    rng: random.Random
    made: dict[str, str] = field(default_factory=dict)
    drawn: dict[str, tuple[int, tuple[int, int, int] | None]] = field(default_factory=dict)

    def __call__(self, key: str, bad: bool, pose: int, file_seed: int) -> tuple[str, list[str]]:
        made, rng, detectors = self.made, self.rng, self.detectors
        width, height = self.size
        if key in made:
            return made[key], [f"{made[key][:-4]}_{d}.png" for d in detectors]
        blob = (
            (
                rng.randint(width // 5, 4 * width // 5),
                rng.randint(height // 5, 4 * height // 5),
                rng.randint(8, 20),
            )
            if bad
            else None
        )
        rel = f"{self.recipe}/images/{key}.png"
        _write(self.data_root / rel, woven_image(width, height, file_seed, blob))
        heat_rels = []
        for i, d in enumerate(detectors):
            hrel = f"{rel[:-4]}_{d}.png"
            _write(self.data_root / hrel, heatmap_png(width, height, file_seed + i, blob))
            heat_rels.append(hrel)
        made[key] = rel
        self.drawn[key] = (file_seed, blob)  # what the shot's maps were drawn from
        return rel, heat_rels

    def shot_map(self, key: str, detector_index: int, ratio: float | None) -> np.ndarray:
        """The anomaly map behind a heatmap written for `key`, scaled so its peak is `ratio`
        (the detection's score / threshold): the shot map in units of the threshold."""
        file_seed, blob = self.drawn[key]
        amap = anomaly_map(*self.size, file_seed + detector_index, blob)
        return amap * np.float32((ratio or 0.0) / max(float(amap.max()), 1e-6))


def seed_parts(
    db: Database,
    data_root: Path,
    n_parts: int,
    *,
    recipe: str = "glassfiber",
    detectors: tuple[str, ...] = ("patchcore",),
    reject_rate: float = 0.3,
    fault_rate: float = 0.03,
    review_rate: float = 0.3,
    size: tuple[int, int] = (320, 256),
    shared_images: bool = False,
    seed: int = 0,
    end: datetime | None = None,
    interval_s: float = 20.0,
) -> SampleSet:
    """Insert `n_parts` parts of `recipe` (3 shots, one detection per detector and shot).

    With `shared_images` all parts point at one good and one defective image set (fast, for
    benchmarks); otherwise every shot of a rejected part gets its own PNG files.
    """
    rng = random.Random(seed)
    end = end or datetime.now(UTC) - timedelta(minutes=10)
    thresholds = {d: 1.0 + 0.5 * i for i, d in enumerate(detectors)}
    with db.session() as s:
        part_id = (s.scalar(select(func.max(Part.id))) or 0) + 1
        shot_id = (s.scalar(select(func.max(Shot.id))) or 0) + 1
        seq = (s.scalar(select(func.max(Part.sequence)).where(Part.recipe == recipe)) or 0) + 1
    parts: list[dict] = []
    shots: list[dict] = []
    dets: list[dict] = []
    reviews: list[dict] = []
    sheet_defects: list[dict] = []
    image_files = _ImageFiles(data_root, recipe, detectors, size, rng)

    rejected: list[int] = []
    for n in range(n_parts):
        started = end - timedelta(seconds=interval_s * (n_parts - 1 - n))
        part = _sample_part(
            rng, image_files, PartRecord(recipe=recipe, recipe_sha256="", mode="live", key="",
            sequence=seq + n, started_at=started, line_part_id=f"L{seq + n:07d}"),
            thresholds, (fault_rate, reject_rate), size,
            "shared" if shared_images else None, seed * 100_003 + n * 7,
        )  # fmt: skip
        row = dict(id=part_id, **part_columns(part))
        footprints = {}
        if not shared_images and part.verdict in (Verdict.PASS, Verdict.FAIL):
            footprints = _add_sheet_map(part, row, sheet_defects, image_files, data_root)
        parts.append(row)
        for shot in part.shots:
            shots.append(dict(id=shot_id, part_id=part_id, **shot_columns(shot),
                              footprint_mm=footprints.get(shot.pose_name)))  # fmt: skip
            dets += [
                dict(shot_id=shot_id, created_at=started, **detection_columns(d))
                for d in shot.detections
            ]
            shot_id += 1
        if part.verdict in (Verdict.FAIL, Verdict.FAULT):
            rejected.append(part_id)
            if rng.random() < review_rate:
                label = (
                    ReviewLabel.DEFECT_CONFIRMED if rng.random() < 0.7 else ReviewLabel.FALSE_REJECT
                )
                reviews.append(
                    dict(
                        part_id=part_id,
                        operator=rng.choice(["Ana", "Ben", "Chen"]),
                        label=label,
                        comment="",
                        created_at=started + timedelta(seconds=60),
                    )
                )
        part_id += 1
    tables = (Part, parts), (Shot, shots), (Detection, dets), (Review, reviews)
    with db.session() as s:
        for model, rows in (*tables, (SheetDefectRow, sheet_defects)):
            for i in range(0, len(rows), 5000):
                s.execute(insert(model), rows[i : i + 5000])
    first = parts[0]["id"] if parts else part_id
    return SampleSet(part_ids=list(range(first, part_id)), rejected_ids=rejected)


def _add_sheet_map(
    part: PartRecord,
    row: dict[str, Any],
    sheet_defects: list[dict[str, Any]],
    image_files: _ImageFiles,
    data_root: Path,
) -> dict[str, list[list[float]]]:
    """Make the part's sample sheet map: its columns go into `row`, its defect rows onto
    `sheet_defects`; returns each pose's footprint for the shot rows."""
    sheet = _sample_sheet_map(part, image_files, image_files.detectors, data_root)
    columns, footprints, defect_rows = sheet_map_columns(sheet, POSES)
    row.update(columns)
    sheet_defects += [dict(part_id=row["id"], **cols) for cols in defect_rows]
    return footprints


def _sample_sheet_map(
    part: PartRecord, image_files: _ImageFiles, detectors: tuple[str, ...], data_root: Path
) -> SheetMapRecord:
    """The part's sample sheet map, fused from the maps behind its shots' heatmaps."""
    ratios = [{d.detector: d.normalized_score for d in shot.detections} for shot in part.shots]

    def shot_map(pose_index: int, detector_index: int) -> np.ndarray:
        key = f"{part.sequence:06d}/{part.shots[pose_index].pose_name}"
        ratio = ratios[pose_index].get(detectors[detector_index])
        return image_files.shot_map(key, detector_index, ratio)

    rel = f"{image_files.recipe}/images/{part.sequence:06d}/sheet_map.png"
    (data_root / rel).parent.mkdir(parents=True, exist_ok=True)
    return build_sheet_map(part, detectors, shot_map, str(data_root / rel), rel)


def _sample_part(
    rng: random.Random,
    image_files: Callable[[str, bool, int, int], tuple[str, list[str]]],
    part: PartRecord,
    thresholds: dict[str, float],
    rates: tuple[float, float],
    size: tuple[int, int],
    shared: str | None,
    file_seed: int,
) -> PartRecord:
    """Fill one sample part: verdict drawn at `rates` (fault, reject), 3 shots, detections.

    `shared`: the folder of the image set all parts share (None: files of its own).
    """
    fault_rate, reject_rate = rates
    detectors = tuple(thresholds)
    roll = rng.random()
    verdict = (
        Verdict.FAULT
        if roll < fault_rate
        else Verdict.FAIL
        if roll < fault_rate + reject_rate
        else Verdict.PASS
    )
    started = part.started_at
    bad_pose = rng.randrange(len(POSES))
    part_scores: list[float] = []
    for pose_index, pose in enumerate(POSES):
        bad = verdict == Verdict.FAIL and pose_index == bad_pose
        if shared is not None:
            key = f"{shared}/{'bad' if bad else 'good'}_{pose}"
        else:
            key = f"{part.sequence:06d}/{pose}"
        rel, heat_rels = image_files(key, bad, pose_index, file_seed + pose_index)
        shot = ShotRecord(
            pose_index=pose_index, pose_name=pose, image_path=rel, image_sha256="0" * 64,
            width=size[0], height=size[1], camera_settings={"exposure_us": 8000},
            captured_at=started,
        )  # fmt: skip
        part.shots.append(shot)
        if verdict == Verdict.FAULT and pose_index != 0:
            continue
        for d, hrel in zip(detectors, heat_rels, strict=True):
            thr = thresholds[d]
            norm = rng.uniform(1.05, 2.2) if bad else rng.uniform(0.3, 0.95)
            part_scores.append(norm)
            shot.detections.append(
                DetectionRecord(
                    detector=d, model_version=f"{d}-sample-1", score=norm * thr, threshold=thr,
                    normalized_score=norm, heatmap_path=hrel, raw_map_path=None,
                    latency_ms=rng.uniform(8, 30),
                )
            )  # fmt: skip
    worst = max(part_scores) if part_scores else None
    if verdict == Verdict.FAIL:
        part.reason = f"{detectors[0]} {worst:.2f}x threshold on pose {POSES[bad_pose]}"
    elif verdict == Verdict.FAULT:
        part.reason = "camera timeout on pose centre after 2 retries"
    part.verdict = verdict
    part.part_score = worst
    part.finished_at = started + timedelta(seconds=4)
    part.model_versions = {d: f"{d}-sample-1" for d in detectors}
    part.timings_ms = {"cycle": 4000}
    return part
