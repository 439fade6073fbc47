"""Part and Shot (and Detection) rows: the one place that writes them.

A part is first a `PartRecord` (with `ShotRecord`s and `DetectionRecord`s): what the station
knows of it, whether or not the database has it yet; it serialises to JSON for the journal.
`write_part` brings the database up to a record (idempotent: only missing rows are inserted,
and a record is written only to the row it was made for). `part_columns`, `shot_columns` and
`detection_columns` give the column values of one row, for writers that insert in bulk.

`record_sheet_map` writes a part's sheet map (the fused map, shot footprints and defect
regions) into the session that holds the part's row; a `PartRecord` may carry the same as a
`SheetMapRecord`, which `write_part` writes through it (journalled like the rest).

Used by the inspection recorder, `station capture` and the review sample data.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from station.decision import Verdict
from station.geometry.sheet_map import SheetDefect
from station.storage.db import Database, RecordRefused
from station.storage.models import Detection, Part, SheetDefectRow, Shot

if TYPE_CHECKING:
    from pathlib import Path

    from station.recipe import Recipe


def now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _from_iso(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def _finite(x: float | None) -> float | None:
    """NaN and inf are stored as NULL: SQLite cannot keep NaN (PostgreSQL can), and a detector
    that gave no finite score has faulted its part anyway (the reason says so)."""
    return x if x is not None and math.isfinite(x) else None


@dataclass
class DetectionRecord:
    detector: str
    model_version: str
    score: float
    threshold: float | None
    normalized_score: float | None
    heatmap_path: str | None
    raw_map_path: str | None
    latency_ms: float
    db_id: int | None = None


@dataclass
class ShotRecord:
    pose_index: int
    pose_name: str
    image_path: str
    image_sha256: str
    width: int
    height: int
    camera_settings: dict[str, Any] = field(default_factory=dict)
    robot_pose: list[float] = field(default_factory=list)
    captured_at: datetime = field(default_factory=now)
    mask_path: str | None = None
    # what the cycle hooks measured on the shot, by hook name (0005), e.g. image statistics
    stats: dict[str, Any] = field(default_factory=dict)
    detections: list[DetectionRecord] = field(default_factory=list)
    db_id: int | None = None


FUSION_RULES = ("max", "mean", "min")


@dataclass
class SheetMapRecord:
    """A part's sheet map as `record_sheet_map` takes it, for a `PartRecord` (see there)."""

    png_path: str  # relative to the data directory, like shot images
    extent_mm: list[float]  # [x0, y0, x1, y1] base-frame mm covered by the image
    mm_per_px: float
    fusion: str  # max | mean | min
    camera_source: str  # "exact twin" / "calibrated ..." / "nominal ..."
    region_mm: list[float]  # [x0, y0, x1, y1]
    footprints: dict[str, list[list[float]]] = field(default_factory=dict)  # pose -> 4 corners
    defects: list[SheetDefect] = field(default_factory=list)
    # where the sheet was found in the shots (station.geometry.placement.Placement.as_dict); None
    # when the recipe does not check it
    placement: dict[str, Any] | None = None
    written: bool = False  # set once a commit holds it

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SheetMapRecord:
        defects = [
            SheetDefect(
                centre_mm=(float(d["centre_mm"][0]), float(d["centre_mm"][1])),
                area_mm2=d["area_mm2"],
                peak=d["peak"],
                detector=d["detector"],
                shots=tuple(d["shots"]),
                box_mm=None if d.get("box_mm") is None else tuple(map(float, d["box_mm"])),
            )
            for d in data.pop("defects", [])
        ]
        return SheetMapRecord(**data, defects=defects)


def part_folder(recipe: Recipe, sequence: int) -> Path:
    """The folder of a part's shots, maps and sheet map: `<images>/<sequence:06d>`."""
    return recipe.images_dir / f"{sequence:06d}"


@dataclass
class PartRecord:
    """One part as the station knows it, whether or not the database has it yet."""

    recipe: str
    recipe_sha256: str
    mode: str
    line_part_id: str | None = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=now)
    finished_at: datetime | None = None
    verdict: Verdict = Verdict.PENDING
    reason: str | None = None
    part_score: float | None = None
    calibration_id: int | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    ground_truth: str | None = None
    twin_defects: list[dict[str, Any]] | None = None  # the twin's, on the whole sheet
    shots: list[ShotRecord] = field(default_factory=list)
    sequence: int | None = None
    db_id: int | None = None
    run_id: str = ""  # the Recorder (run) that made the record; also on its Part row
    sheet_map: SheetMapRecord | None = None  # written by write_part through record_sheet_map

    @property
    def label(self) -> str:
        """How messages name the part: its sequence, else the line's id, else its key."""
        return str(self.sequence or self.line_part_id or self.key)

    def to_json(self) -> str:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        for shot, raw in zip(self.shots, data["shots"], strict=True):
            raw["captured_at"] = _iso(shot.captured_at)
        return json.dumps(data, indent=1)

    @staticmethod
    def from_json(text: str) -> PartRecord:
        data = json.loads(text)
        sheet_map = data.pop("sheet_map", None)  # journals from before the sheet map lack it
        if sheet_map is not None:
            data["sheet_map"] = SheetMapRecord.from_dict(sheet_map)
        shots = []
        for raw in data.pop("shots"):
            dets = [DetectionRecord(**d) for d in raw.pop("detections")]
            raw["captured_at"] = _from_iso(raw["captured_at"])
            shots.append(ShotRecord(**raw, detections=dets))
        data["verdict"] = Verdict(data["verdict"])
        data["started_at"] = _from_iso(data["started_at"])
        data["finished_at"] = _from_iso(data["finished_at"])
        return PartRecord(**data, shots=shots)


def part_columns(part: PartRecord) -> dict[str, Any]:
    """Every column of the part's row but its id (no key or run id: NULL)."""
    return {
        "recipe": part.recipe,
        "sequence": part.sequence,
        "started_at": part.started_at,
        "run_id": part.run_id or None,
        "part_key": part.key or None,
        **_part_state(part),
    }


# columns copied as they are from a record (the others are derived, see below)
_PART_STATE = (
    "recipe_sha256", "mode", "line_part_id", "verdict", "reason", "part_score", "finished_at",
    "calibration_id", "ground_truth", "twin_defects",
)  # fmt: skip
_SHOT = (
    "pose_index", "pose_name", "image_path", "image_sha256", "width", "height",
    "camera_settings", "robot_pose", "captured_at", "mask_path", "stats",
)  # fmt: skip
_DETECTION = (
    "detector", "model_version", "threshold", "heatmap_path", "raw_map_path", "latency_ms",
)  # fmt: skip


def _part_state(part: PartRecord) -> dict[str, Any]:
    """The columns of a part's row that follow its record (all but identity)."""
    out = {name: getattr(part, name) for name in _PART_STATE}
    out["model_versions"] = dict(part.model_versions)
    out["timings_ms"] = dict(part.timings_ms)
    return out


def shot_columns(shot: ShotRecord) -> dict[str, Any]:
    """Every column of the shot's row but its id and part id."""
    return {name: getattr(shot, name) for name in _SHOT}


def detection_columns(det: DetectionRecord) -> dict[str, Any]:
    """Every column of the detection's row but its id, shot id and creation time."""
    out = {name: getattr(det, name) for name in _DETECTION}
    out["score"] = _finite(det.score)
    out["normalized_score"] = _finite(det.normalized_score)
    return out


def check_row(part: PartRecord, row: Part | None) -> None:
    """RecordRefused unless `row` is the row this record was made for."""
    if row is None:
        raise RecordRefused(f"record {part.key} names part id {part.db_id}, which is missing")
    differs = [
        name
        for name, mine, theirs in (
            ("record key", part.key or None, row.part_key),  # as part_columns stores them
            ("run id", part.run_id or None, row.run_id),
            ("recipe", part.recipe, row.recipe),
            ("recipe digest", part.recipe_sha256, row.recipe_sha256),
            ("sequence", part.sequence or row.sequence, row.sequence),
            ("part id", part.db_id or row.id, row.id),
        )
        if mine != theirs
    ]
    known = {sh.id for sh in row.shots}
    if any(sh.db_id is not None and sh.db_id not in known for sh in part.shots):
        differs.append("shot ids")
    if differs:
        raise RecordRefused(
            f"record {part.key} does not match part id {row.id} "
            f"(sequence {row.sequence}): {', '.join(differs)} differ"
        )


def write_part(db: Database, part: PartRecord, with_detections: bool = True) -> None:
    """Bring the database up to `part` in one transaction: only missing rows are inserted.

    A new Part row takes `part.sequence`, else the recipe's next number. IntegrityError (a
    number another writer took) and StorageError pass through; RecordRefused when the row
    found is not the one the record was made for. Row ids are applied after the commit.
    """
    new_ids: list[tuple[Any, Any]] = []  # (record, row): ids applied only after commit
    with db.session() as s:
        # without an id its row may exist all the same (a crash after the commit)
        if part.db_id is not None:
            found = s.get(Part, part.db_id)
        elif part.key:
            found = s.scalar(select(Part).where(Part.part_key == part.key))
        else:
            found = None
        if found is not None or part.db_id is not None:
            check_row(part, found)
            row = found
        else:
            columns = part_columns(part)
            columns["sequence"] = part.sequence or db.next_sequence(s, part.recipe)
            row = Part(**columns)
            s.add(row)
        for name, value in _part_state(part).items():
            setattr(row, name, value)
        s.flush()
        new_ids.append((part, row))
        # rows a commit wrote before a crash let the record learn their ids (a journal replay)
        had_shots = {sh.pose_index: sh for sh in found.shots} if found is not None else {}
        had_dets = _detections_of(s, found) if found is not None and with_detections else {}
        for shot in part.shots:
            if shot.db_id is None:
                srow = _committed_before(had_shots, shot, part.key)
                if srow is None:
                    srow = Shot(part_id=row.id, **shot_columns(shot))
                    s.add(srow)
                    s.flush()
                new_ids.append((shot, srow))
                shot_id = srow.id
            else:
                shot_id = shot.db_id
            if not with_detections:
                continue
            if shot.stats:  # measured on the inference thread, after the row was added
                srow = s.get(Shot, shot_id)
                if srow is not None and srow.stats != shot.stats:
                    srow.stats = dict(shot.stats)
            for det in shot.detections:
                if det.db_id is not None:
                    continue
                want = detection_columns(det)
                drow = had_dets.get((shot_id, det.detector))
                if drow is None:
                    drow = Detection(shot_id=shot_id, **want)
                    s.add(drow)
                    s.flush()
                elif (drow.model_version, drow.score) != (want["model_version"], want["score"]):
                    raise RecordRefused(f"record {part.key}: shot {shot.pose_name} has another "
                                        f"{det.detector} detection in the database")
                new_ids.append((det, drow))
        sheet = part.sheet_map
        if sheet is not None and (not sheet.written or row.sheet_map_path != sheet.png_path):
            s.expire(row, ["shots"])  # reload with the shots just added, for the footprints
            record_sheet_map(s, row, **_sheet_args(sheet))
    for record, dbrow in new_ids:
        record.db_id = dbrow.id
    if part.sheet_map is not None:
        part.sheet_map.written = True
    part.sequence = row.sequence


def _committed_before(had: dict[int, Shot], shot: ShotRecord, key: str) -> Shot | None:
    """The row of `shot` among the part's rows (`had`, by pose index) when a crash came after
    its commit but before the record learnt its id; RecordRefused if that pose holds another
    image."""
    srow = had.get(shot.pose_index)
    if srow is not None and (srow.image_sha256, srow.pose_name) != (shot.image_sha256,
                                                                    shot.pose_name):
        raise RecordRefused(f"record {key}: pose {shot.pose_name} holds another image in the "
                            "database")
    return srow


def _detections_of(s: Session, row: Part) -> dict[tuple[int, str], Detection]:
    """The part's detection rows by (shot id, detector), in one query."""
    found = s.scalars(select(Detection).join(Shot, Detection.shot_id == Shot.id)
                      .where(Shot.part_id == row.id))
    return {(d.shot_id, d.detector): d for d in found}


def _sheet_args(sheet: SheetMapRecord) -> dict[str, Any]:
    return {
        name: getattr(sheet, name)
        for name in (
            "png_path", "extent_mm", "mm_per_px", "fusion", "camera_source", "region_mm",
            "footprints", "defects", "placement",
        )
    }  # fmt: skip


def _rect(field_name: str, value: Sequence[float]) -> list[float]:
    """[x0, y0, x1, y1] with x0 < x1 and y0 < y1, all finite; RecordRefused otherwise."""
    vals = [float(v) for v in value]
    if (
        len(vals) != 4
        or not all(map(math.isfinite, vals))
        or not (vals[0] < vals[2] and vals[1] < vals[3])
    ):
        raise RecordRefused(
            f"sheet map {field_name} must be [x0, y0, x1, y1] in mm with x0 < x1 and y0 < y1, "
            f"got {list(value)}"
        )
    return vals


def _corners(pose: str, value: Sequence[Sequence[float]]) -> list[list[float]]:
    out = [[float(c) for c in corner] for corner in value]
    if len(out) != 4 or any(len(c) != 2 or not all(map(math.isfinite, c)) for c in out):
        raise RecordRefused(
            f"sheet map footprint of pose {pose!r} must be 4 corners [x, y] in mm, got {value}"
        )
    return out


def record_sheet_map(
    session: Session,
    part: Part,
    *,
    png_path: str,
    extent_mm: Sequence[float],
    mm_per_px: float,
    fusion: str,
    camera_source: str,
    region_mm: Sequence[float],
    footprints: Mapping[str, Sequence[Sequence[float]]],
    defects: Sequence[SheetDefect],
    placement: Mapping[str, Any] | None = None,
) -> list[SheetDefectRow]:
    """Write `part`'s sheet map into `session` (the one holding the part's row and its shots).

    Sets the part's sheet-map columns, each named shot's footprint (pose name -> 4 corners in
    base-frame mm) and replaces the part's sheet defects (numbered 0, 1, ... in the given
    order); `placement`: where the sheet was found (station.geometry.placement), None when
    unchecked.
    The image's pixel (col, row) covers x0 + col * mm_per_px, y0 + row * mm_per_px onward,
    for `extent_mm` = [x0, y0, x1, y1]: rows run along +y. Calling it again replaces the map.
    RecordRefused (nothing written) on a value that cannot be stored: a bad rectangle or
    scale, an unknown fusion rule, or a pose name the part has no shot for. The caller's
    session commits.
    """
    sheet = SheetMapRecord(
        png_path, list(extent_mm), mm_per_px, fusion, camera_source, list(region_mm),
        {pose: [list(c) for c in corners] for pose, corners in footprints.items()},
        list(defects), None if placement is None else dict(placement),
    )  # fmt: skip
    columns, corners, defect_rows = sheet_map_columns(
        sheet, [shot.pose_name for shot in part.shots], f"part {part.sequence}"
    )
    for name, value in columns.items():
        setattr(part, name, value)
    shots = {shot.pose_name: shot for shot in part.shots}
    for pose, value in corners.items():
        shots[pose].footprint_mm = value
    if part.sheet_defects:
        part.sheet_defects.clear()
        session.flush()  # the old rows go before new ones take their numbers
    rows = [SheetDefectRow(**cols) for cols in defect_rows]
    part.sheet_defects.extend(rows)
    session.flush()
    return rows


def sheet_map_columns(
    sheet: SheetMapRecord, pose_names: Sequence[str], whose: str = "the part"
) -> tuple[dict[str, Any], dict[str, list[list[float]]], list[dict[str, Any]]]:
    """A sheet map's row values, checked: the part's columns, each pose's footprint and the
    columns of each SheetDefectRow (but part id). For `record_sheet_map` and bulk writers;
    RecordRefused as there. `pose_names`: the part's shots."""
    extent = _rect("extent_mm", sheet.extent_mm)
    region = _rect("region_mm", sheet.region_mm)
    if not (math.isfinite(sheet.mm_per_px) and sheet.mm_per_px > 0):
        raise RecordRefused(f"sheet map mm_per_px must be a positive number, got {sheet.mm_per_px}")
    if sheet.fusion not in FUSION_RULES:
        raise RecordRefused(f"sheet map fusion must be one of {FUSION_RULES}, got {sheet.fusion!r}")
    if not sheet.png_path or not sheet.camera_source:
        raise RecordRefused("sheet map needs its png_path and camera_source")
    named = set(sheet.footprints) | {name for d in sheet.defects for name in d.shots}
    if unknown := sorted(named - set(pose_names)):
        raise RecordRefused(
            f"sheet map of {whose} names poses without a shot: {', '.join(unknown)}"
        )
    columns = {
        "sheet_map_path": sheet.png_path,
        "sheet_map_extent_mm": extent,
        "sheet_map_mm_per_px": float(sheet.mm_per_px),
        "sheet_map_fusion": sheet.fusion,
        "sheet_map_camera": sheet.camera_source,
        "sheet_region_mm": region,
        "sheet_placement": sheet.placement,
    }
    corners = {pose: _corners(pose, value) for pose, value in sheet.footprints.items()}
    return columns, corners, [_defect_row(i, d) for i, d in enumerate(sheet.defects)]


def _defect_row(index: int, defect: SheetDefect) -> dict[str, Any]:
    x, y = (float(v) for v in defect.centre_mm)
    area = float(defect.area_mm2)
    if not all(map(math.isfinite, (x, y, area))) or area < 0:
        raise RecordRefused(
            f"sheet defect {index} needs a finite centre and area >= 0, "
            f"got centre {defect.centre_mm}, area {defect.area_mm2}"
        )
    box = None if defect.box_mm is None else _rect(f"defect {index} box_mm", defect.box_mm)
    return {
        "index": index,
        "detector": defect.detector,
        "x_mm": x,
        "y_mm": y,
        "area_mm2": area,
        "peak": _finite(float(defect.peak)),
        "shots": list(defect.shots),
        "box_mm": box,
    }
