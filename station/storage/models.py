"""SQLAlchemy 2 models: every part, shot, detection, review, calibration and model version.

The verdict and review-label columns store the values of `station.decision.Verdict` and
`ReviewLabel` (re-exported here).

Schema changes go through an Alembic migration in `station/storage/migrations/versions/`.
Images and heatmaps live on disk (paths relative to the recipe's data directory, with sha256);
the database holds what was decided and where to find it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from station.decision import ReviewLabel, Verdict  # the column types, re-exported


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


_TS = DateTime(timezone=True)


class Part(Base):
    __tablename__ = "parts"
    __table_args__ = (
        UniqueConstraint("recipe", "sequence", name="uq_parts_recipe_sequence"),
        Index("ix_parts_part_key", "part_key", unique=True),
        Index("ix_parts_recipe_verdict_started", "recipe", "verdict", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe: Mapped[str] = mapped_column(String(128))
    recipe_sha256: Mapped[str] = mapped_column(String(64), default="")
    sequence: Mapped[int] = mapped_column(Integer)  # per-recipe running number
    line_part_id: Mapped[str | None] = mapped_column(String(128))  # id from the line, if any
    mode: Mapped[str] = mapped_column(String(16), default="live")  # live | offline | capture
    started_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(_TS)
    verdict: Mapped[Verdict] = mapped_column(
        Enum(Verdict, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=Verdict.PENDING,
    )
    reason: Mapped[str | None] = mapped_column(Text)  # why fail/fault, in words
    part_score: Mapped[float | None] = mapped_column(Float)  # combined, 1.0 = at threshold
    calibration_id: Mapped[int | None] = mapped_column(ForeignKey("calibrations.id"))
    model_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(default=dict)  # cycle breakdown
    ground_truth: Mapped[str | None] = mapped_column(String(16))  # good | defect (twin only)
    # who wrote the row: the inspection run (one per Recorder) and the part's record key, so a
    # journal record replayed later is checked against the row it claims (0003)
    run_id: Mapped[str | None] = mapped_column(String(32))
    part_key: Mapped[str | None] = mapped_column(String(32))
    # the sheet map (0004; NULL on parts inspected without one): the fused map image, the
    # table rectangle it covers [x0, y0, x1, y1] in base-frame mm (x0, y0 at the image's
    # top-left pixel corner), its scale, the fusion rule across views, the camera model used
    # ("exact twin" / "calibrated ..." / "nominal ..."), the inspected region [x0, y0, x1, y1]
    sheet_map_path: Mapped[str | None] = mapped_column(Text)
    sheet_map_extent_mm: Mapped[list[Any] | None] = mapped_column()
    sheet_map_mm_per_px: Mapped[float | None] = mapped_column(Float)
    sheet_map_fusion: Mapped[str | None] = mapped_column(String(16))  # max | mean | min
    sheet_map_camera: Mapped[str | None] = mapped_column(Text)
    sheet_region_mm: Mapped[list[Any] | None] = mapped_column()
    # what the monitoring measured on the part as a whole, by key (0005), e.g. drift signals
    stats: Mapped[dict[str, Any] | None] = mapped_column()
    # the twin's defects on the sheet (0006; twin only): kind, centre_mm, size_mm, bbox_mm in
    # base-frame mm, each as `station.twin` drew it, whether or not a shot saw it
    twin_defects: Mapped[list[Any] | None] = mapped_column()
    # where the sheet was found in the shots (0007; NULL when the recipe does not check it):
    # problem, offset_mm, angle_deg, size_mm, corners_mm, past_region_mm
    # (station.geometry.placement)
    sheet_placement: Mapped[dict[str, Any] | None] = mapped_column()

    shots: Mapped[list[Shot]] = relationship(
        back_populates="part", cascade="all, delete-orphan", order_by="Shot.pose_index"
    )
    sheet_defects: Mapped[list[SheetDefectRow]] = relationship(
        back_populates="part", cascade="all, delete-orphan", order_by="SheetDefectRow.index"
    )
    # oldest first; the newest review (by created_at, then id) is the part's label
    reviews: Mapped[list[Review]] = relationship(
        back_populates="part",
        cascade="all, delete-orphan",
        order_by="(Review.created_at, Review.id)",
    )

    @property
    def newest_review(self) -> Review | None:
        """The review whose label counts (None: not reviewed)."""
        return self.reviews[-1] if self.reviews else None


class Shot(Base):
    __tablename__ = "shots"
    __table_args__ = (UniqueConstraint("part_id", "pose_index", name="uq_shots_part_pose"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    pose_index: Mapped[int] = mapped_column(Integer)
    pose_name: Mapped[str] = mapped_column(String(64))
    image_path: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    camera_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    robot_pose: Mapped[list[Any]] = mapped_column(default=list)  # read back: mm + rotvec rad
    captured_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    mask_path: Mapped[str | None] = mapped_column(Text)  # ground truth (twin only)
    # where the shot lies on the table: 4 corners [[x, y], ...] in base-frame mm (0004)
    footprint_mm: Mapped[list[Any] | None] = mapped_column()
    # what the cycle hooks measured on the shot, by hook name (0005): image statistics,
    # material distance, ...
    stats: Mapped[dict[str, Any] | None] = mapped_column()

    part: Mapped[Part] = relationship(back_populates="shots")
    detections: Mapped[list[Detection]] = relationship(
        back_populates="shot", cascade="all, delete-orphan", order_by="Detection.detector"
    )


class Detection(Base):
    __tablename__ = "detections"
    __table_args__ = (UniqueConstraint("shot_id", "detector", name="uq_detections_shot_det"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shot_id: Mapped[int] = mapped_column(ForeignKey("shots.id", ondelete="CASCADE"), index=True)
    detector: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    score: Mapped[float | None] = mapped_column(Float)  # None: the detector gave no finite score
    threshold: Mapped[float | None] = mapped_column(Float)
    normalized_score: Mapped[float | None] = mapped_column(Float)  # score / threshold
    heatmap_path: Mapped[str | None] = mapped_column(Text)  # 8-bit PNG
    raw_map_path: Mapped[str | None] = mapped_column(Text)  # float32 .npy, if asked for
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)

    shot: Mapped[Shot] = relationship(back_populates="detections")


class SheetDefectRow(Base):
    """One defect region on a part's sheet map (`station.geometry.sheet_map.SheetDefect`)."""

    __tablename__ = "sheet_defects"
    __table_args__ = (
        UniqueConstraint("part_id", "defect_index", name="uq_sheet_defects_part_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column("defect_index", Integer)  # 0, 1, ... within the part
    detector: Mapped[str] = mapped_column(String(64))
    x_mm: Mapped[float] = mapped_column(Float)  # centre, base frame, on the table plane
    y_mm: Mapped[float] = mapped_column(Float)
    area_mm2: Mapped[float] = mapped_column(Float)
    peak: Mapped[float | None] = mapped_column(Float)  # fused score / threshold; NULL: not finite
    shots: Mapped[list[Any]] = mapped_column(default=list)  # pose names of the shots that see it
    box_mm: Mapped[list[Any] | None] = mapped_column()  # its cells' extent [x0, y0, x1, y1] (0006)

    part: Mapped[Part] = relationship(back_populates="sheet_defects")


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    operator: Mapped[str] = mapped_column(String(128))
    label: Mapped[ReviewLabel] = mapped_column(
        Enum(
            ReviewLabel,
            native_enum=False,
            length=32,
            values_callable=lambda e: [m.value for m in e],
        )
    )
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)

    part: Mapped[Part] = relationship(back_populates="reviews")


class Calibration(Base):
    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    policy: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))  # capture | dataset | reviews
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)  # detector -> threshold
    rates: Mapped[dict[str, Any]] = mapped_column(default=dict)  # expected rates with CIs
    model_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_sha256: Mapped[str] = mapped_column(String(64), default="")
    file_path: Mapped[str] = mapped_column(Text, default="")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("recipe", "detector", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe: Mapped[str] = mapped_column(String(128))
    detector: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))  # e.g. patchcore-20261124T2100-1a2b3c4d
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    train_data_sha256: Mapped[str] = mapped_column(String(64), default="")
    n_train_images: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trained_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)


class Alarm(Base):
    """A monitored signal that left its control limits (0005): what moved, since when, how much."""

    __tablename__ = "alarms"
    __table_args__ = (Index("ix_alarms_recipe_raised", "recipe", "raised_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe: Mapped[str] = mapped_column(String(128))
    signal: Mapped[str] = mapped_column(String(128))  # e.g. "score patchcore", "mean r0c1"
    chart: Mapped[str] = mapped_column(String(16))  # ewma | cusum | material | ...
    # the first part of the run of points that led to the alarm, and the part that raised it
    since_part_id: Mapped[int | None] = mapped_column(ForeignKey("parts.id", ondelete="SET NULL"))
    since_at: Mapped[datetime | None] = mapped_column(_TS)
    part_id: Mapped[int | None] = mapped_column(ForeignKey("parts.id", ondelete="SET NULL"))
    raised_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    value: Mapped[float | None] = mapped_column(Float)  # the chart statistic when raised
    baseline: Mapped[float | None] = mapped_column(Float)  # the calibration's centre line
    limit: Mapped[float | None] = mapped_column(Float)  # the control limit it crossed
    shift: Mapped[float | None] = mapped_column(Float)  # estimated change of the signal
    message: Mapped[str] = mapped_column(Text, default="")  # one line for the operator
    cleared_at: Mapped[datetime | None] = mapped_column(_TS)
    cleared_by: Mapped[str | None] = mapped_column(String(128))


class ShadowVerdict(Base):
    """What a candidate model decided on a part beside the live one; never drives the line."""

    __tablename__ = "shadow_verdicts"
    __table_args__ = (
        UniqueConstraint("part_id", "candidate", name="uq_shadow_verdicts_part_candidate"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    candidate: Mapped[str] = mapped_column(String(128))  # e.g. the candidate's version string
    model_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)  # detector -> version
    verdict: Mapped[Verdict] = mapped_column(
        Enum(Verdict, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    reason: Mapped[str | None] = mapped_column(Text)
    part_score: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)  # detector -> part score
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)


class ModelPromotion(Base):
    """Who made which model live, when, and on which evidence (0005)."""

    __tablename__ = "model_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipe: Mapped[str] = mapped_column(String(128), index=True)
    detector: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[str | None] = mapped_column(String(128))
    to_version: Mapped[str] = mapped_column(String(128))
    promoted_by: Mapped[str] = mapped_column(String(128))
    promoted_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)  # shadow evaluation, counts
    note: Mapped[str] = mapped_column(Text, default="")
