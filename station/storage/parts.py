"""Part and Shot (and Detection) rows: the one place that writes them.

A part is first a `PartRecord` (with `ShotRecord`s and `DetectionRecord`s): what the station
knows of it, whether or not the database has it yet; it serialises to JSON for the journal.
`write_part` brings the database up to a record (idempotent: only missing rows are inserted,
and a record is written only to the row it was made for). `part_columns`, `shot_columns` and
`detection_columns` give the column values of one row, for writers that insert in bulk.

Used by the inspection recorder, `station capture` and the review sample data.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from station.decision import Verdict
from station.errors import StorageError
from station.storage.db import Database
from station.storage.models import Detection, Part, Shot


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
    detections: list[DetectionRecord] = field(default_factory=list)
    db_id: int | None = None


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
    shots: list[ShotRecord] = field(default_factory=list)
    sequence: int | None = None
    db_id: int | None = None
    run_id: str = ""  # the Recorder (run) that made the record; also on its Part row

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
        shots = []
        for raw in data.pop("shots"):
            dets = [DetectionRecord(**d) for d in raw.pop("detections")]
            raw["captured_at"] = _from_iso(raw["captured_at"])
            shots.append(ShotRecord(**raw, detections=dets))
        data["verdict"] = Verdict(data["verdict"])
        data["started_at"] = _from_iso(data["started_at"])
        data["finished_at"] = _from_iso(data["finished_at"])
        return PartRecord(**data, shots=shots)


class RecordRefused(StorageError):
    """The database refuses a record for good (a constraint), not for a while."""


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
    "calibration_id", "ground_truth",
)  # fmt: skip
_SHOT = (
    "pose_index", "pose_name", "image_path", "image_sha256", "width", "height",
    "camera_settings", "robot_pose", "captured_at", "mask_path",
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
            ("record key", part.key, row.part_key),
            ("run id", part.run_id, row.run_id),
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
        for shot in part.shots:
            if shot.db_id is None:
                srow = Shot(part_id=row.id, **shot_columns(shot))
                s.add(srow)
                s.flush()
                new_ids.append((shot, srow))
                shot_id = srow.id
            else:
                shot_id = shot.db_id
            if not with_detections:
                continue
            for det in shot.detections:
                if det.db_id is not None:
                    continue
                drow = Detection(shot_id=shot_id, **detection_columns(det))
                s.add(drow)
                s.flush()
                new_ids.append((det, drow))
    for record, dbrow in new_ids:
        record.db_id = dbrow.id
    part.sequence = row.sequence
