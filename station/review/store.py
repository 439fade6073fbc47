"""Database queries behind the review pages, and the review labels calibration reads.

The review queue holds every part an operator must look at, newest first: rejected (`fail`),
`fault`, `interrupted` (the station stopped mid-part) and stale `pending` parts (a live or
offline inspection undecided for STALE_PENDING: the station died and has not restarted; its
next start marks them interrupted). Reviews are never overwritten: every mark adds a row and
the newest one (by `created_at`, then `id`) counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from station.storage.models import Calibration, Part, Review, ReviewLabel, Shot, Verdict

QUEUE_VERDICTS: tuple[Verdict, ...] = (Verdict.FAIL, Verdict.FAULT, Verdict.INTERRUPTED)
# No decision stored: the operator labels the sheet itself (defective or good).
UNDECIDED_VERDICTS: tuple[Verdict, ...] = (Verdict.INTERRUPTED, Verdict.PENDING)
# A pending live/offline part this old has no station deciding it any more (a cycle takes
# seconds; the recipe's part timeout is 30 s by default). Captures stay pending by design.
STALE_PENDING = timedelta(minutes=10)
DECIDED_MODES = ("live", "offline")
# verdict=pass switches the queue to an audit of passed parts: reviews of a sample of them
# give calibration the misses and an unbiased false-reject rate.
FILTER_VERDICTS: tuple[Verdict, ...] = (*QUEUE_VERDICTS, Verdict.PENDING, Verdict.PASS)
PAGE_SIZE = 50
MAX_COMMENT = 2000
MAX_OPERATOR = 128

# Values of the "reviewed" filter: not yet, any review, or the newest review's label.
REVIEWED_CHOICES = ("no", "yes", ReviewLabel.DEFECT_CONFIRMED.value, ReviewLabel.FALSE_REJECT.value)


def label_text(label: ReviewLabel | str, verdict: Verdict | str) -> str:
    """What a label means for a part with `verdict`: the two stored labels read as a reject's
    check, an audit of a passed part, or the operator's call on a sheet the detectors never
    decided (interrupted, pending, or a fault: rejected whatever the sheet was)."""
    v = Verdict(verdict)
    if v == Verdict.PASS:
        words = ("missed defect", "good")
    elif v in UNDECIDED_VERDICTS or v == Verdict.FAULT:  # the station's reject, not a verdict
        words = ("sheet defective", "sheet good")
    else:
        words = ("defect confirmed", "false reject")
    return words[0] if ReviewLabel(label) == ReviewLabel.DEFECT_CONFIRMED else words[1]


def as_utc(dt: datetime) -> datetime:
    """Timestamps come back naive from SQLite; they were written in UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def local_day_start(day: date) -> datetime:
    """Midnight of `day` in the station PC's local time zone, as an aware UTC datetime."""
    return datetime.combine(day, time.min).astimezone().astimezone(UTC)


@dataclass(frozen=True)
class QueueFilter:
    """What the operator asked the queue for. Dates are local calendar days, both inclusive."""

    recipe: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    verdict: Verdict | None = None  # one of QUEUE_VERDICTS or pending; None: all; pass: audit
    reviewed: str | None = None  # one of REVIEWED_CHOICES, None: any
    page: int = 1

    @property
    def audit(self) -> bool:
        return self.verdict == Verdict.PASS

    def base_conditions(self) -> list[ColumnElement[bool]]:
        """Conditions the counts share: queue verdicts, recipe and date range."""
        if self.audit:
            return [Part.verdict == Verdict.PASS, *self.scope_conditions()]
        stale = and_(
            Part.verdict == Verdict.PENDING,
            Part.mode.in_(DECIDED_MODES),
            Part.started_at < datetime.now(UTC) - STALE_PENDING,
        )
        return [or_(Part.verdict.in_(QUEUE_VERDICTS), stale), *self.scope_conditions()]

    def scope_conditions(self) -> list[ColumnElement[bool]]:
        """The recipe and date-range conditions (no verdict)."""
        conds: list[ColumnElement[bool]] = []
        if self.recipe:
            conds.append(Part.recipe == self.recipe)
        if self.date_from:
            conds.append(Part.started_at >= local_day_start(self.date_from))
        if self.date_to:
            conds.append(Part.started_at < local_day_start(self.date_to + timedelta(days=1)))
        return conds

    def conditions(self) -> list[ColumnElement[bool]]:
        """All conditions: the base ones plus the verdict and reviewed filters."""
        conds = self.base_conditions()
        if self.verdict:
            conds.append(Part.verdict == self.verdict)
        if self.reviewed == "no":
            conds.append(~_has_review())
        elif self.reviewed == "yes":
            conds.append(_has_review())
        elif self.reviewed:
            conds.append(_latest_label() == ReviewLabel(self.reviewed))
        return conds


def _has_review() -> ColumnElement[bool]:
    return exists().where(Review.part_id == Part.id)


def _latest_label():  # noqa: ANN202 (a correlated scalar subquery)
    r = aliased(Review)
    return (
        select(r.label)
        .where(r.part_id == Part.id)
        .order_by(r.created_at.desc(), r.id.desc())
        .limit(1)
        .correlate(Part)
        .scalar_subquery()
    )


@dataclass
class QueueCounts:
    """Counts over the recipe and date filters (ignoring the verdict/reviewed filters)."""

    by_verdict: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)  # "none" = not reviewed
    matching: int = 0  # parts matching every filter: drives paging

    @property
    def total(self) -> int:
        return sum(self.by_verdict.values())

    @property
    def unreviewed(self) -> int:
        return self.by_label.get("none", 0)

    @property
    def reviewed(self) -> int:
        return self.total - self.unreviewed


@dataclass
class QueueRow:
    part: Part
    latest: Review | None
    n_reviews: int


@dataclass
class QueuePage:
    rows: list[QueueRow]
    counts: QueueCounts
    page: int
    pages: int


def queue_counts(session: Session, flt: QueueFilter) -> QueueCounts:
    """One grouped query: parts per (verdict, newest review label) under the base filters."""
    inner = (
        select(Part.verdict.label("verdict"), _latest_label().label("label"))
        .where(*flt.base_conditions())
        .subquery()
    )
    rows = session.execute(
        select(inner.c.verdict, inner.c.label, func.count()).group_by(
            inner.c.verdict, inner.c.label
        )
    ).all()
    counts = QueueCounts()
    for verdict, label, n in rows:
        v = Verdict(verdict).value
        lab = ReviewLabel(label).value if label else "none"
        counts.by_verdict[v] = counts.by_verdict.get(v, 0) + n
        counts.by_label[lab] = counts.by_label.get(lab, 0) + n
        if flt.verdict and v != flt.verdict.value:
            continue
        if flt.reviewed == "no" and lab != "none":
            continue
        if flt.reviewed == "yes" and lab == "none":
            continue
        if flt.reviewed not in (None, "no", "yes") and lab != flt.reviewed:
            continue
        counts.matching += n
    return counts


def _latest_reviews(session: Session, part_ids: list[int]) -> dict[int, tuple[Review, int]]:
    """Newest review and review count per part, for a page of parts."""
    out: dict[int, tuple[Review, int]] = {}
    if not part_ids:
        return out
    stmt = select(Review).where(Review.part_id.in_(part_ids)).order_by(Review.created_at, Review.id)
    for review in session.scalars(stmt):
        n = out[review.part_id][1] + 1 if review.part_id in out else 1
        out[review.part_id] = (review, n)
    return out


def queue_page(session: Session, flt: QueueFilter, page_size: int = PAGE_SIZE) -> QueuePage:
    counts = queue_counts(session, flt)
    pages = max(1, -(-counts.matching // page_size))
    page = min(max(1, flt.page), pages)
    # Sort ids only, then load the page's rows: sorting whole rows (JSON columns and all)
    # costs several times more on SQLite.
    ids_stmt = (
        select(Part.id)
        .where(*flt.conditions())
        .order_by(Part.started_at.desc(), Part.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    ids = list(session.scalars(ids_stmt))
    by_id = {p.id: p for p in session.scalars(select(Part).where(Part.id.in_(ids)))} if ids else {}
    parts = [by_id[i] for i in ids if i in by_id]
    latest = _latest_reviews(session, [p.id for p in parts])
    rows = [
        QueueRow(p, *(latest.get(p.id) or (None, 0)))  # type: ignore[arg-type]
        for p in parts
    ]
    return QueuePage(rows=rows, counts=counts, page=page, pages=pages)


def started_since(session: Session, recipe: str, since: datetime) -> list[tuple[int, datetime]]:
    """(sequence, start) of the recipe's live and offline parts started since `since`, oldest
    first (the rate the disk banner reckons with)."""
    rows = session.execute(
        select(Part.sequence, Part.started_at)
        .where(Part.recipe == recipe, Part.mode.in_(DECIDED_MODES), Part.started_at >= since)
        .order_by(Part.started_at)
    ).all()
    return [(int(seq), at) for seq, at in rows]


def recipes_in_queue(session: Session) -> list[str]:
    return list(session.scalars(select(Part.recipe).distinct().order_by(Part.recipe)))


def load_part(session: Session, part_id: int) -> Part | None:
    stmt = (
        select(Part)
        .where(Part.id == part_id)
        .options(
            selectinload(Part.shots).selectinload(Shot.detections),
            selectinload(Part.reviews),
            selectinload(Part.sheet_defects),
        )
    )
    return session.scalars(stmt).first()


def load_calibration(session: Session, calibration_id: int | None) -> Calibration | None:
    return session.get(Calibration, calibration_id) if calibration_id else None


def neighbours(session: Session, part: Part, flt: QueueFilter) -> tuple[int | None, int | None]:
    """(newer, older) part ids next to `part` in the queue under the same filters."""
    at, pid = part.started_at, part.id
    older = or_(Part.started_at < at, and_(Part.started_at == at, Part.id < pid))
    newer = or_(Part.started_at > at, and_(Part.started_at == at, Part.id > pid))
    conds = flt.conditions()
    prev_id = session.scalar(
        select(Part.id).where(*conds, newer).order_by(Part.started_at.asc(), Part.id.asc()).limit(1)
    )
    next_id = session.scalar(
        select(Part.id)
        .where(*conds, older)
        .order_by(Part.started_at.desc(), Part.id.desc())
        .limit(1)
    )
    return prev_id, next_id


def add_review(
    session: Session, part_id: int, label: ReviewLabel, operator: str, comment: str = ""
) -> Review:
    """Store one review row (history is kept; the newest row counts)."""
    review = Review(
        part_id=part_id,
        label=label,
        operator=operator.strip()[:MAX_OPERATOR],
        comment=comment.strip()[:MAX_COMMENT],
        created_at=datetime.now(UTC),
    )
    session.add(review)
    session.flush()
    return review


def export_rows(session: Session, flt: QueueFilter) -> Iterator[list[Any]]:
    """CSV rows of every review (whole history) of parts under the recipe/date filters."""
    latest = aliased(Review)
    newest_id = (
        select(latest.id)
        .where(latest.part_id == Review.part_id)
        .order_by(latest.created_at.desc(), latest.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    conds = flt.scope_conditions()
    stmt = (
        select(Review, Part, (Review.id == newest_id).label("is_latest"))
        .join(Part, Part.id == Review.part_id)
        .where(*conds)
        .order_by(Review.created_at, Review.id)
        .execution_options(yield_per=500)
    )
    for review, part, is_latest in session.execute(stmt):
        yield [
            review.id,
            as_utc(review.created_at).isoformat(timespec="seconds"),
            review.operator,
            ReviewLabel(review.label).value,
            review.comment,
            bool(is_latest),
            part.id,
            part.recipe,
            part.sequence,
            part.line_part_id or "",
            Verdict(part.verdict).value,
            "" if part.part_score is None else f"{part.part_score:.6g}",
            as_utc(part.started_at).isoformat(timespec="seconds"),
            part.reason or "",
            label_text(review.label, part.verdict),
        ]


EXPORT_HEADER = [
    "review_id",
    "reviewed_at_utc",
    "operator",
    "label",
    "comment",
    "is_latest",
    "part_id",
    "recipe",
    "sequence",
    "line_part_id",
    "part_verdict",
    "part_score",
    "part_started_at_utc",
    "part_reason",
    "label_meaning",  # the label as the page showed it (e.g. "sheet good" on an interrupted part)
]
