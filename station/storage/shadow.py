"""Shadow verdicts: what a candidate model decided on a part beside the live one (never what
drove the line), and where the two disagree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from station.errors import StorageError
from station.storage.db import Database
from station.storage.models import Part, Review, ReviewLabel, ShadowVerdict, Verdict

REJECTING = (Verdict.FAIL, Verdict.FAULT, Verdict.INTERRUPTED)


def record_shadow_verdict(
    db: Database,
    part_id: int,
    candidate: str,
    model_versions: dict[str, str],
    verdict: Verdict,
    reason: str,
    part_score: float | None,
    scores: dict[str, Any],
    thresholds: dict[str, float],
) -> int:
    """Store one shadow verdict (one per part and candidate: a second one replaces it)."""
    values: dict[str, Any] = {
        "model_versions": dict(model_versions),
        "verdict": verdict,
        "reason": reason,
        "part_score": part_score,
        "scores": dict(scores),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "created_at": datetime.now(UTC),
    }
    with db.session() as s:
        row = s.scalars(
            select(ShadowVerdict).where(
                ShadowVerdict.part_id == part_id, ShadowVerdict.candidate == candidate
            )
        ).first()
        if row is None:
            row = ShadowVerdict(part_id=part_id, candidate=candidate, **values)
            s.add(row)
        else:
            for key, value in values.items():
                setattr(row, key, value)
        try:
            s.flush()
        except IntegrityError as exc:  # the part row is gone
            raise StorageError(f"part {part_id} cannot take a shadow verdict: {exc.orig}") from None
        return int(row.id)


@dataclass
class ShadowRow:
    """A part with its live and shadow verdicts and the newest review label (if any)."""

    part_id: int
    recipe: str
    sequence: int
    started_at: datetime
    live: Verdict
    live_score: float | None
    shadow: Verdict
    shadow_score: float | None
    shadow_reason: str
    candidate: str
    label: ReviewLabel | None
    ground_truth: str | None

    @property
    def disagree(self) -> bool:
        return (self.live in REJECTING) != (self.shadow in REJECTING)


def shadow_rows(
    session: Session,
    recipe: str | None = None,
    candidate: str | None = None,
    disagree_only: bool = False,
    limit: int = 500,
) -> list[ShadowRow]:
    """Shadow verdicts with their parts' live verdicts, newest part first."""
    stmt = (
        select(ShadowVerdict, Part)
        .join(Part, Part.id == ShadowVerdict.part_id)
        .order_by(Part.started_at.desc(), Part.id.desc(), ShadowVerdict.candidate)
    )
    if recipe:
        stmt = stmt.where(Part.recipe == recipe)
    if candidate:
        stmt = stmt.where(ShadowVerdict.candidate == candidate)
    found = list(session.execute(stmt))
    labels = _labels(session, [p.id for _, p in found])
    out = []
    for sv, part in found:
        row = ShadowRow(
            part_id=part.id,
            recipe=part.recipe,
            sequence=part.sequence,
            started_at=part.started_at,
            live=Verdict(part.verdict),
            live_score=part.part_score,
            shadow=Verdict(sv.verdict),
            shadow_score=sv.part_score,
            shadow_reason=sv.reason or "",
            candidate=sv.candidate,
            label=labels.get(part.id),
            ground_truth=part.ground_truth,
        )
        if row.disagree or not disagree_only:
            out.append(row)
        if len(out) >= limit:
            break
    return out


def _labels(session: Session, part_ids: list[int]) -> dict[int, ReviewLabel]:
    out: dict[int, ReviewLabel] = {}
    for i in range(0, len(part_ids), 500):
        chunk = part_ids[i : i + 500]
        stmt = (
            select(Review.part_id, Review.label)
            .where(Review.part_id.in_(chunk))
            .order_by(Review.created_at, Review.id)
        )
        for part_id, label in session.execute(stmt):
            out[part_id] = ReviewLabel(label)
    return out
