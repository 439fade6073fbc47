"""Model versions as trained (station train, station retrain) and model promotions (who made
which model live, when, on which evidence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select

from station.storage.db import Database
from station.storage.models import ModelPromotion, ModelVersion


def record_trained_models(
    db: Database,
    recipe: str,
    data_root: Path,
    trained: Sequence[Any],
    extra_metrics: dict[str, Any] | None = None,
) -> None:
    """One ModelVersion row per trained model (`station.detectors.training.TrainedModel`:
    path, version, sha256, meta), its file named relative to the data root when inside it."""
    with db.session() as s:
        for t in trained:
            try:
                rel = t.path.resolve().relative_to(data_root.resolve()).as_posix()
            except ValueError:
                rel = t.path.resolve().as_posix()  # outside the data root: keep absolute
            s.add(
                ModelVersion(
                    recipe=recipe,
                    detector=t.meta["detector"],
                    version=t.version,
                    artifact_path=rel,
                    artifact_sha256=t.sha256,
                    train_data_sha256=t.meta["train_data_sha256"],
                    n_train_images=t.meta["n_train_images"],
                    config=t.meta["config"],
                    metrics={
                        "good_scores": t.meta["good_scores"],
                        "fit": t.meta["fit"],
                        **(extra_metrics or {}),
                    },
                )
            )


@dataclass
class Promotion:
    id: int
    recipe: str
    detector: str
    from_version: str | None
    to_version: str
    promoted_by: str
    promoted_at: datetime
    evidence: dict[str, Any]
    note: str


def record_promotion(
    db: Database,
    recipe: str,
    detector: str,
    from_version: str | None,
    to_version: str,
    promoted_by: str,
    evidence: dict[str, Any],
    note: str = "",
) -> int:
    with db.session() as s:
        row = ModelPromotion(
            recipe=recipe,
            detector=detector,
            from_version=from_version,
            to_version=to_version,
            promoted_by=promoted_by,
            promoted_at=datetime.now(UTC),
            evidence=evidence,
            note=note,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def promotions(db: Database, recipe: str, detector: str | None = None) -> list[Promotion]:
    """Every promotion of the recipe (of `detector`, if given), oldest first."""
    stmt = select(ModelPromotion).where(ModelPromotion.recipe == recipe)
    if detector:
        stmt = stmt.where(ModelPromotion.detector == detector)
    with db.session() as s:
        rows = s.scalars(stmt.order_by(ModelPromotion.promoted_at, ModelPromotion.id)).all()
        return [
            Promotion(
                r.id,
                r.recipe,
                r.detector,
                r.from_version,
                r.to_version,
                r.promoted_by,
                r.promoted_at,
                dict(r.evidence or {}),
                r.note,
            )
            for r in rows
        ]


def _one_version(recipe: str, detector: str, version: str) -> Select[tuple[ModelVersion]]:
    return select(ModelVersion).where(
        ModelVersion.recipe == recipe,
        ModelVersion.detector == detector,
        ModelVersion.version == version,
    )


def model_version(db: Database, recipe: str, detector: str, version: str) -> ModelVersion | None:
    """The ModelVersion row of one model (detached), or None."""
    with db.session() as s:
        row = s.scalars(_one_version(recipe, detector, version)).first()
        if row is not None:
            s.expunge(row)
        return row


def model_versions(db: Database, recipe: str) -> list[ModelVersion]:
    """Every recorded model version of the recipe (detached), oldest first."""
    with db.session() as s:
        rows = list(
            s.scalars(
                select(ModelVersion)
                .where(ModelVersion.recipe == recipe)
                .order_by(ModelVersion.detector, ModelVersion.trained_at, ModelVersion.id)
            )
        )
        for row in rows:
            s.expunge(row)
        return rows


def update_model_version(
    db: Database, recipe: str, detector: str, version: str, **values: Any
) -> None:
    """Set columns of one ModelVersion row (e.g. its artifact path after a promotion)."""
    with db.session() as s:
        row = s.scalars(_one_version(recipe, detector, version)).first()
        if row is None:
            return
        for key, value in values.items():
            setattr(row, key, value)
