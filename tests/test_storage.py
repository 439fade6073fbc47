"""Storage: migrations, round trips on SQLite and PostgreSQL, concurrent SQLite writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from station.errors import StorageError
from station.storage.db import open_database, upgrade
from station.storage.models import (
    Base,
    Calibration,
    Detection,
    ModelVersion,
    Part,
    Review,
    ReviewLabel,
    Shot,
    Verdict,
)


def _log_part(db, recipe: str, n_shots: int = 3) -> int:
    part = db.create_part(recipe, verdict=Verdict.PENDING)
    with db.session() as s:
        part = s.merge(part)
        for i in range(n_shots):
            shot = Shot(
                part_id=part.id,
                pose_index=i,
                pose_name=f"pose{i}",
                image_path=f"{recipe}/images/{part.sequence:06d}/pose{i}.png",
                image_sha256="ab" * 32,
                width=640,
                height=512,
                camera_settings={"exposure_us": 8000.0},
                robot_pose=[400.0, 0.0, 350.0, 3.14159, 0.0, 0.0],
            )
            shot.detections.append(
                Detection(
                    detector="patchcore",
                    model_version="patchcore-v1",
                    score=0.5 + i,
                    threshold=1.0,
                    normalized_score=0.5 + i,
                    heatmap_path=f"{recipe}/images/{part.sequence:06d}/pose{i}_patchcore.png",
                    latency_ms=12.5,
                )
            )
            s.add(shot)
        part.verdict = Verdict.FAIL
        part.part_score = 2.5
        part.reason = "patchcore over threshold on pose2"
        return part.id


def _roundtrip(url: str) -> None:
    db = open_database(url)
    try:
        part_id = _log_part(db, "glassfiber")
        with db.session() as s:
            s.add(Review(part_id=part_id, operator="ana", label=ReviewLabel.FALSE_REJECT,
                         comment="<b>fold</b> from handling"))
            s.add(Calibration(recipe="glassfiber", policy="zero_miss", source="dataset",
                              thresholds={"patchcore": 1.23}, model_versions={"patchcore": "v1"}))
            s.add(ModelVersion(recipe="glassfiber", detector="patchcore", version="v1",
                               artifact_path="glassfiber/models/patchcore/v1.pt",
                               artifact_sha256="cd" * 32, config={"coreset_ratio": 0.1}))
        with db.session() as s:
            part = s.get(Part, part_id)
            assert part is not None
            assert part.verdict is Verdict.FAIL
            assert part.sequence == 1
            assert [sh.pose_name for sh in part.shots] == ["pose0", "pose1", "pose2"]
            assert part.shots[2].detections[0].score == pytest.approx(2.5)
            assert part.shots[0].robot_pose[3] == pytest.approx(3.14159)
            assert part.reviews[0].label is ReviewLabel.FALSE_REJECT
            assert part.reviews[0].comment == "<b>fold</b> from handling"
            assert s.scalar(select(Calibration.thresholds))["patchcore"] == pytest.approx(1.23)
            assert s.scalar(select(ModelVersion.config))["coreset_ratio"] == 0.1
        assert _log_part(db, "glassfiber") != part_id
        with db.session() as s:
            assert s.scalar(select(sa.func.max(Part.sequence))) == 2
    finally:
        db.dispose()


def test_sqlite_roundtrip(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'station.db'}")


@pytest.mark.postgres
def test_postgres_roundtrip(fresh_postgres_url: str) -> None:
    _roundtrip(fresh_postgres_url)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migration_from_empty_to_head_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert upgrade(url) == "0003"
    assert _tables(url) >= set(Base.metadata.tables)
    # Upgrading again is a no-op, and the schema has no drift against the models.
    assert upgrade(url) == "0003"
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def _log_old_part(db) -> None:
    """A part with three shots and detections, through Core inserts of 0001's columns only."""
    with db.engine.begin() as conn:
        ins = conn.execute(sa.insert(Part.__table__).values(recipe="r", sequence=1))
        for i in range(3):
            shot = conn.execute(
                sa.insert(Shot.__table__).values(
                    part_id=ins.inserted_primary_key[0],
                    pose_index=i,
                    pose_name=f"pose{i}",
                    image_path=f"r/images/000001/pose{i}.png",
                    image_sha256="ab" * 32,
                    width=640,
                    height=512,
                )
            )
            conn.execute(
                sa.insert(Detection.__table__).values(
                    shot_id=shot.inserted_primary_key[0],
                    detector="patchcore",
                    model_version="v1",
                    score=0.5 + i,
                )
            )


def test_upgrade_keeps_rows_and_then_takes_a_missing_score(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert upgrade(url, "0001") == "0001"
    db = open_database(url, migrate=False)
    _log_old_part(db)
    db.dispose()
    assert upgrade(url) == "0003"
    db = open_database(url, migrate=False)
    with db.session() as s:
        scores = sorted(s.scalars(select(Detection.score)).all())
        assert scores == [0.5, 1.5, 2.5]
        assert s.scalars(select(Part.run_id)).all() == [None]  # 0003: rows from before it
        shot = s.scalars(select(Shot)).first()
        shot.detections[0].score = None  # 0002: a detector that gave no finite score
    with db.session() as s:
        assert s.scalar(select(sa.func.count()).where(Detection.score.is_(None))) == 1
    db.dispose()


@pytest.mark.postgres
def test_postgres_migration_from_empty(fresh_postgres_url: str) -> None:
    assert upgrade(fresh_postgres_url) == "0003"
    assert _tables(fresh_postgres_url) >= set(Base.metadata.tables)


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'w.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.dispose()


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="not valid"):
        open_database("not a url")


def _writer(url: str, recipe: str, n: int) -> None:
    db = open_database(url, migrate=False)
    for _ in range(n):
        _log_part(db, recipe, n_shots=2)
    db.dispose()


@pytest.mark.slow
def test_two_processes_logging_to_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    upgrade(url)
    ctx = mp.get_context("spawn")
    n = 40
    procs = [ctx.Process(target=_writer, args=(url, "glassfiber", n)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    db = open_database(url, migrate=False)
    with db.session() as s:
        assert s.scalar(select(sa.func.count(Part.id))) == 2 * n
        assert s.scalar(select(sa.func.count(Shot.id))) == 2 * n * 2
        sequences = s.scalars(select(Part.sequence)).all()
        assert sorted(sequences) == list(range(1, 2 * n + 1))
    db.dispose()
