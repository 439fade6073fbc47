"""Drift alarms and the monitored signals' history (0005: `alarms`, `shots.stats`,
`parts.stats`).

Signals are named `<stat> <pose>` (image statistics of one pose, stored with each shot as
`Shot.stats["drift"]`) and `score <detector>` (a passed part's score over its threshold,
stored once per part as `Part.stats["drift_part"]` by `record_part_signals`).
`placement <side>` (how far a part's found sheet reaches past its region) is read from the
part's own `sheet_placement` and `sheet_region_mm`, nothing stored twice. `signal_history`
reads them back in part order, so the charts can be replayed after a restart.
`add_alarm` never writes the same alarm twice (same recipe, signal, chart and raising part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload

from station.errors import StorageError
from station.geometry.placement import side_reach
from station.storage.db import Database
from station.storage.models import Alarm, Calibration, Part, Verdict

PLACEMENT_PREFIX = "placement "  # `placement <side>`: mm the found sheet reaches past the region
CPK_CHART = "cpk"  # the placement watch's alarms (station.monitoring.placement)
SHOT_KEY = "drift"  # Shot.stats key of the image statistics (the hook's name)
PART_KEY = "drift_part"  # Part.stats key of the part-level signals
DECIDED = (Verdict.PASS, Verdict.FAIL, Verdict.FAULT)


@dataclass
class AlarmRow:
    """An alarm, detached from the session."""

    id: int
    recipe: str
    signal: str
    chart: str
    since_part_id: int | None
    since_sequence: int | None
    since_at: datetime | None
    part_id: int | None
    part_sequence: int | None
    raised_at: datetime
    value: float | None
    baseline: float | None
    limit: float | None
    shift: float | None
    message: str
    cleared_at: datetime | None
    cleared_by: str | None

    @property
    def open(self) -> bool:
        return self.cleared_at is None


@dataclass
class NewAlarm:
    recipe: str
    signal: str
    chart: str
    since_part_id: int | None
    since_at: datetime | None
    part_id: int | None
    value: float
    baseline: float
    limit: float
    shift: float
    message: str


@dataclass
class PartPoint:
    """One part's monitored values (signal -> value), in sequence order."""

    part_id: int
    sequence: int
    at: datetime  # when it was charted (`charted_at`): clears up to then count before it
    verdict: str
    values: dict[str, float]


def _row(a: Alarm, seq: dict[int, int]) -> AlarmRow:
    return AlarmRow(
        a.id, a.recipe, a.signal, a.chart, a.since_part_id,
        seq.get(a.since_part_id) if a.since_part_id else None, a.since_at, a.part_id,
        seq.get(a.part_id) if a.part_id else None, a.raised_at, a.value, a.baseline, a.limit,
        a.shift, a.message, a.cleared_at, a.cleared_by,
    )


def _sequences(s: Any, rows: list[Alarm]) -> dict[int, int]:
    ids = {i for a in rows for i in (a.since_part_id, a.part_id) if i is not None}
    if not ids:
        return {}
    rows = s.execute(select(Part.id, Part.sequence).where(Part.id.in_(ids)))
    return {int(r[0]): int(r[1]) for r in rows}


def add_alarm(db: Database, alarm: NewAlarm) -> AlarmRow | None:
    """Store an alarm; None when the same alarm (signal, chart, raising part) is stored."""
    with db.session() as s:
        same = s.scalars(select(Alarm).where(
            Alarm.recipe == alarm.recipe, Alarm.signal == alarm.signal,
            Alarm.chart == alarm.chart, Alarm.part_id == alarm.part_id,
        )).first()
        if same is not None:
            return None
        row = Alarm(**{k: getattr(alarm, k) for k in alarm.__dataclass_fields__})
        s.add(row)
        s.commit()
        return _row(row, _sequences(s, [row]))


def list_alarms(
    db: Database, recipe: str | None = None, *, open_only: bool = False, limit: int = 200
) -> list[AlarmRow]:
    """Alarms, newest first."""
    with db.session() as s:
        q = select(Alarm).order_by(Alarm.raised_at.desc(), Alarm.id.desc()).limit(limit)
        if recipe is not None:
            q = q.where(Alarm.recipe == recipe)
        if open_only:
            q = q.where(Alarm.cleared_at.is_(None))
        rows = list(s.scalars(q))
        seq = _sequences(s, rows)
        return [_row(a, seq) for a in rows]


def count_open(db: Database, recipe: str | None = None) -> int:
    """Alarms not cleared (of `recipe`, if given): every review page says so."""
    with db.reading() as s:
        q = select(func.count(Alarm.id)).where(Alarm.cleared_at.is_(None))
        if recipe is not None:
            q = q.where(Alarm.recipe == recipe)
        return int(s.scalar(q) or 0)


def get_alarm(db: Database, alarm_id: int) -> AlarmRow | None:
    with db.session() as s:
        a = s.get(Alarm, alarm_id)
        return None if a is None else _row(a, _sequences(s, [a]))


def clear_alarm(db: Database, alarm_id: int, who: str) -> AlarmRow:
    """Mark an alarm dealt with (its charts start again from the baseline)."""
    with db.session() as s:
        a = s.get(Alarm, alarm_id)
        if a is None:
            raise StorageError(f"no alarm {alarm_id}", hint="list them with station monitor")
        if a.cleared_at is None:
            a.cleared_at, a.cleared_by = datetime.now(UTC), who
            s.commit()
        return _row(a, _sequences(s, [a]))


def record_part_signals(db: Database, part_id: int, values: dict[str, float]) -> None:
    """Keep a part's own signals (e.g. its detector scores) with the part."""
    with db.session() as s:
        part = s.get(Part, part_id)
        if part is None:
            return
        part.stats = {**(part.stats or {}), PART_KEY: dict(values)}
        s.commit()


def signal_history(
    db: Database, recipe: str, calibration_id: int | None = None,
    sequences: tuple[int, int] | None = None,
) -> list[PartPoint]:
    """Every decided part of `recipe` (of one calibration, and in a sequence range [a, b],
    when given), in sequence order, with its monitored values."""
    with db.session() as s:
        q = (
            select(Part)
            .where(Part.recipe == recipe, Part.mode.in_(("live", "offline")),
                   Part.verdict.in_(DECIDED))
            .options(selectinload(Part.shots))
            .order_by(Part.sequence)
        )
        if calibration_id is not None:
            q = q.where(Part.calibration_id == calibration_id)
        if sequences is not None:
            q = q.where(Part.sequence.between(*sequences))
        out = []
        for p in s.scalars(q):
            values: dict[str, float] = {}
            for shot in p.shots:
                st = shot.stats or {}
                for stat, v in (st.get(SHOT_KEY) or {}).items():
                    if isinstance(v, int | float):
                        values[f"{stat} {shot.pose_name}"] = float(v)
            for name, v in ((p.stats or {}).get(PART_KEY) or {}).items():
                if isinstance(v, int | float):
                    values[name] = float(v)
            values.update(placement_values(p))
            out.append(PartPoint(p.id, p.sequence, charted_at(p), p.verdict.value, values))
        return out


def charted_at(part: Part) -> datetime:
    """When a part is charted: its finish (the drift hook charts it right after), else its
    start. Live and replayed charts both apply a clear before the first part charted at or
    after it, so a restart resumes them exactly."""
    return part.finished_at or part.started_at


def alarms_open_at(db: Database, recipe: str, at: datetime) -> list[AlarmRow]:
    """The recipe's alarms open at `at`: not cleared, or cleared after it (a clear made
    after a part's `charted_at` counts from the next part on)."""
    with db.session() as s:
        rows = list(s.scalars(select(Alarm).where(
            Alarm.recipe == recipe, or_(Alarm.cleared_at.is_(None), Alarm.cleared_at > at),
        )))
        seq = _sequences(s, rows)
        return [_row(a, seq) for a in rows]


def placement_values(part: Part) -> dict[str, float]:
    """`placement <side>` of a part whose sheet was found: how far it reaches past each side
    of its region (mm; negative inside); {} when unchecked, not found or unreadable."""
    found, region = part.sheet_placement or {}, part.sheet_region_mm
    if not isinstance(found, dict) or not found.get("corners_mm") or not region:
        return {}
    try:
        reach = side_reach(found["corners_mm"], region)
    except (TypeError, ValueError):  # a hand-edited row: not charted
        return {}
    return {PLACEMENT_PREFIX + side: v for side, v in reach.items() if math.isfinite(v)}


def part_chart_facts(db: Database, part_id: int) -> tuple[datetime | None, dict[str, float]]:
    """What charting a stored part needs from its row, in one read: `charted_at` and its
    `placement <side>` values ((None, {}) when the row is gone)."""
    with db.session() as s:
        part = s.get(Part, part_id)
        return (charted_at(part), placement_values(part)) if part is not None else (None, {})


def latest_calibration(db: Database, recipe: str) -> tuple[int | None, str | None]:
    """(calibration id, its file) of the newest decided part of `recipe` (None, None: none)."""
    with db.session() as s:
        cal_id = s.scalars(
            select(Part.calibration_id)
            .where(Part.recipe == recipe, Part.verdict.in_(DECIDED),
                   Part.calibration_id.is_not(None))
            .order_by(Part.sequence.desc()).limit(1)
        ).first()
        if cal_id is None:
            return None, None
        row = s.get(Calibration, cal_id)
        return cal_id, (row.file_path if row is not None else None)


def signal_series(
    db: Database, alarm: AlarmRow, before: int = 60, after: int = 20
) -> list[tuple[int, float]]:
    """(sequence, value) of an alarm's signal around it: from `before` parts ahead of its
    run's start to `after` parts past the part that raised it."""
    first = alarm.since_sequence or alarm.part_sequence or 0
    last = alarm.part_sequence or first
    pts = signal_history(db, alarm.recipe, sequences=(first - before, last + after))
    return [(p.sequence, p.values[alarm.signal]) for p in pts if alarm.signal in p.values]
