"""Storage: migrations, round trips on SQLite and PostgreSQL, concurrent SQLite writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from station.errors import StorageError
from station.geometry.sheet_map import SheetDefect
from station.storage.db import existing_database, open_database, upgrade
from station.storage.models import (
    Base,
    Calibration,
    Detection,
    ModelVersion,
    Part,
    Review,
    ReviewLabel,
    SheetDefectRow,
    Shot,
    Verdict,
)
from station.storage.parts import (
    PartRecord,
    RecordRefused,
    SheetMapRecord,
    ShotRecord,
    record_sheet_map,
    write_part,
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
            s.add(
                Review(
                    part_id=part_id,
                    operator="ana",
                    label=ReviewLabel.FALSE_REJECT,
                    comment="<b>fold</b> from handling",
                )
            )
            s.add(
                Calibration(
                    recipe="glassfiber",
                    policy="zero_miss",
                    source="dataset",
                    thresholds={"patchcore": 1.23},
                    model_versions={"patchcore": "v1"},
                )
            )
            s.add(
                ModelVersion(
                    recipe="glassfiber",
                    detector="patchcore",
                    version="v1",
                    artifact_path="glassfiber/models/patchcore/v1.pt",
                    artifact_sha256="cd" * 32,
                    config={"coreset_ratio": 0.1},
                )
            )
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
    assert upgrade(url) == "0007"
    assert _tables(url) >= set(Base.metadata.tables)
    # Upgrading again is a no-op, and the schema has no drift against the models.
    assert upgrade(url) == "0007"
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
    assert upgrade(url) == "0007"
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
def _refused_for_good(url: str, lengths: bool) -> None:
    """A value no column takes is RecordRefused (set aside by the recorder, never retried
    forever); the rows before and after it are stored. `lengths`: the server checks them
    (PostgreSQL; SQLite does not)."""
    db = open_database(url)
    db.create_part("r", verdict=Verdict.PASS)
    if lengths:
        with pytest.raises(RecordRefused, match="refused a value"), db.session() as s:
            s.add(Part(recipe="r", sequence=2, mode="x" * 40))  # 16 characters at most
            s.flush()
    with pytest.raises(RecordRefused, match="refused a value"), db.session() as s:
        s.add(Part(recipe="r", sequence=2, part_score="not a number"))
        s.flush()
    db.create_part("r", verdict=Verdict.FAIL)
    with db.session() as s:
        assert s.scalars(select(Part.sequence).order_by(Part.sequence)).all() == [1, 2]
    db.dispose()


def test_postgres_refuses_a_value_for_good(fresh_postgres_url: str) -> None:
    _refused_for_good(fresh_postgres_url, lengths=True)


def test_sqlite_refuses_a_value_for_good(tmp_path: Path) -> None:
    _refused_for_good(f"sqlite:///{tmp_path / 'r.db'}", lengths=False)


def test_postgres_migration_from_empty(fresh_postgres_url: str) -> None:
    assert upgrade(fresh_postgres_url) == "0007"
    assert _tables(fresh_postgres_url) >= set(Base.metadata.tables)


@pytest.mark.postgres
def test_postgres_upgrade_keeps_old_rows_and_downgrades(fresh_postgres_url: str) -> None:
    _upgrade_old_rows_then_add_a_sheet_map(fresh_postgres_url)


def test_sqlite_upgrade_keeps_old_rows_and_downgrades(tmp_path: Path) -> None:
    _upgrade_old_rows_then_add_a_sheet_map(f"sqlite:///{tmp_path / 'old.db'}")


def _upgrade_old_rows_then_add_a_sheet_map(url: str) -> None:
    """0003 rows stay valid at 0004 (no sheet map); 0004 and back to 0003 keeps them too."""
    assert upgrade(url, "0003") == "0003"
    db = open_database(url, migrate=False)
    _log_old_part(db)
    db.dispose()
    assert upgrade(url) == "0007"
    db = open_database(url, migrate=False)
    with db.session() as s:
        part = s.scalars(select(Part)).one()
        assert part.sheet_map_path is None and part.sheet_defects == []
        assert [sh.footprint_mm for sh in part.shots] == [None, None, None]
        record_sheet_map(s, part, **_sheet_args())
    with db.session() as s:
        assert s.scalar(select(sa.func.count()).select_from(SheetDefectRow)) == 2
    db.dispose()
    from alembic import command

    from station.storage.db import alembic_config, make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    engine.dispose()
    assert "sheet_defects" not in _tables(url)
    assert upgrade(url) == "0007"  # and up again, the old part still there
    db = open_database(url, migrate=False)
    with db.session() as s:
        assert s.scalars(select(Part.sheet_map_path)).all() == [None]
        assert s.scalar(select(sa.func.count()).select_from(Shot)) == 3
    db.dispose()


_FOOTPRINT = [[400.0, -30.0], [464.0, -30.0], [464.0, 21.0], [400.0, 21.0]]


def _sheet_args(**over: object) -> dict:
    args = dict(
        png_path="glassfiber/images/000001/sheet_map.png",
        extent_mm=[250.0, -150.0, 550.0, 150.0],
        mm_per_px=0.5,
        fusion="mean",
        camera_source="exact twin",
        region_mm=[255.0, -145.0, 545.0, 145.0],
        footprints={
            "pose0": _FOOTPRINT,
            "pose1": [[x + 50.0, y] for x, y in _FOOTPRINT],
        },
        defects=[
            SheetDefect((430.5, -2.25), 3.5, 2.4, "patchcore", ("pose0", "pose1"),
                        (429.0, -3.0, 432.0, -1.5)),
            SheetDefect((260.0, 140.0), 0.75, float("nan"), "patchcore", ("pose2",)),
        ],
    )
    args.update(over)
    return args


def _sheet_map_roundtrip(url: str) -> None:
    db = open_database(url)
    try:
        part_id = _log_part(db, "glassfiber")
        with db.session() as s:
            record_sheet_map(s, s.get(Part, part_id), **_sheet_args())
        with db.session() as s:
            part = s.get(Part, part_id)
            assert part.sheet_map_path == "glassfiber/images/000001/sheet_map.png"
            assert part.sheet_map_extent_mm == [250.0, -150.0, 550.0, 150.0]
            assert part.sheet_map_mm_per_px == 0.5
            assert (part.sheet_map_fusion, part.sheet_map_camera) == ("mean", "exact twin")
            assert part.sheet_region_mm == [255.0, -145.0, 545.0, 145.0]
            assert part.shots[0].footprint_mm == _FOOTPRINT
            assert part.shots[1].footprint_mm[0] == [450.0, -30.0]
            assert part.shots[2].footprint_mm is None  # no footprint given for pose2
            first, second = part.sheet_defects
            assert (first.index, first.x_mm, first.y_mm) == (0, 430.5, -2.25)
            assert (first.area_mm2, first.peak, first.detector) == (3.5, 2.4, "patchcore")
            assert first.shots == ["pose0", "pose1"]
            assert first.box_mm == [429.0, -3.0, 432.0, -1.5]
            assert second.index == 1 and second.peak is None  # NaN stored as NULL
            assert second.box_mm is None  # a region stored without its extent
            # again: the map is replaced, not added to
            one = [SheetDefect((300.0, 0.0), 1.0, 1.5, "simplenet", ("pose1",))]
            record_sheet_map(s, part, **_sheet_args(defects=one, fusion="max"))
        with db.session() as s:
            part = s.get(Part, part_id)
            assert part.sheet_map_fusion == "max"
            assert [(d.index, d.detector) for d in part.sheet_defects] == [(0, "simplenet")]
            s.delete(part)  # the defects go with their part
        with db.session() as s:
            assert s.scalar(select(sa.func.count()).select_from(SheetDefectRow)) == 0
    finally:
        db.dispose()


def test_sheet_map_roundtrip_sqlite(tmp_path: Path) -> None:
    _sheet_map_roundtrip(f"sqlite:///{tmp_path / 'station.db'}")


@pytest.mark.postgres
def test_sheet_map_roundtrip_postgres(fresh_postgres_url: str) -> None:
    _sheet_map_roundtrip(fresh_postgres_url)


def test_sheet_defects_go_with_their_part_in_sql(tmp_path: Path) -> None:
    """ON DELETE CASCADE in the schema itself, not only in the ORM."""
    db = open_database(f"sqlite:///{tmp_path / 'station.db'}")
    part_id = _log_part(db, "glassfiber")
    with db.session() as s:
        record_sheet_map(s, s.get(Part, part_id), **_sheet_args())
    with db.engine.begin() as conn:
        conn.execute(sa.delete(Part.__table__).where(Part.__table__.c.id == part_id))
        assert conn.scalar(select(sa.func.count()).select_from(SheetDefectRow)) == 0
    db.dispose()


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"extent_mm": [10.0, 0.0, 5.0, 1.0]}, "extent_mm must be [x0, y0, x1, y1]"),
        ({"region_mm": [0.0, 0.0, 1.0]}, "region_mm must be"),
        ({"mm_per_px": 0.0}, "mm_per_px must be a positive number"),
        ({"fusion": "median"}, "fusion must be one of"),
        ({"footprints": {"pose9": _FOOTPRINT}}, "names poses without a shot: pose9"),
        ({"footprints": {"pose0": _FOOTPRINT[:3]}}, "footprint of pose 'pose0' must be 4"),
        (
            {"defects": [SheetDefect((0.0, 0.0), 1.0, 1.0, "patchcore", ("nope",))]},
            "without a shot: nope",
        ),
        (
            {"defects": [SheetDefect((float("inf"), 0.0), 1.0, 1.0, "patchcore", ())]},
            "sheet defect 0 needs a finite centre",
        ),
        (
            {"defects": [SheetDefect((1.0, 1.0), 1.0, 1.0, "patchcore", (), (2.0, 0.0, 1.0, 2.0))]},
            "defect 0 box_mm must be [x0, y0, x1, y1]",
        ),
    ],
)
def test_sheet_map_refuses_bad_values_and_writes_nothing(
    tmp_path: Path, over: dict, words: str
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'station.db'}")
    part_id = _log_part(db, "glassfiber")
    # The session commits on a clean exit: only the refusal itself keeps the part untouched.
    with db.session() as s, pytest.raises(RecordRefused, match=re.escape(words)):
        record_sheet_map(s, s.get(Part, part_id), **_sheet_args(**over))
    with db.session() as s:
        part = s.get(Part, part_id)
        assert part.sheet_map_path is None and part.sheet_defects == []
        assert part.shots and all(shot.footprint_mm is None for shot in part.shots)
    db.dispose()


def test_part_record_carries_its_sheet_map_through_the_journal(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'station.db'}")
    part = PartRecord(recipe="glassfiber", recipe_sha256="", mode="offline", run_id="run1")
    for i in range(3):
        part.shots.append(ShotRecord(i, f"pose{i}", f"glassfiber/p{i}.png", "ab" * 32, 640, 512))
    write_part(db, part)  # shots first, as the cycle does; the map comes at the end
    defects = [
        SheetDefect((430.5, -2.25), 3.5, 2.4, "patchcore", ("pose0", "pose1"), (429, -3, 432, -1)),
        SheetDefect((260.0, 140.0), 0.75, 1.25, "patchcore", ("pose2",)),
    ]
    part.sheet_map = SheetMapRecord(**_sheet_args(defects=defects))
    part.twin_defects = [{"kind": "fold", "size_mm": 4.2, "bbox_mm": [429.0, -4.0, 433.0, 0.0]}]
    again = PartRecord.from_json(part.to_json())  # what a journal replay sees
    assert again.sheet_map == part.sheet_map and again.twin_defects == part.twin_defects
    write_part(db, again)
    assert again.sheet_map.written
    write_part(db, again)  # idempotent
    with db.session() as s:
        row = s.get(Part, again.db_id)
        assert row.sheet_map_camera == "exact twin"
        assert [d.shots for d in row.sheet_defects] == [["pose0", "pose1"], ["pose2"]]
        assert [d.box_mm for d in row.sheet_defects] == [[429.0, -3.0, 432.0, -1.0], None]
        assert row.twin_defects == part.twin_defects
        assert row.shots[1].footprint_mm[1] == [514.0, -30.0]
    # a journal written before the sheet map existed still reads
    raw = json.loads(PartRecord(recipe="r", recipe_sha256="", mode="live").to_json())
    del raw["sheet_map"]
    assert PartRecord.from_json(json.dumps(raw)).sheet_map is None
    db.dispose()


def test_sqlite_uses_wal_and_syncs_every_commit(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'w.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL, not NORMAL
    db.dispose()


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="not valid"):
        open_database("not a url")
    with pytest.raises(StorageError, match="not valid"):
        open_database("postgresql+psycopg://u@host:notaport/x")


def test_a_server_that_cannot_be_reached_is_said_so() -> None:
    """Nothing listens on port 1: not an upgrade failure, the password hidden, a hint."""
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    for opening in (open_database, existing_database):
        with pytest.raises(StorageError) as info:
            opening(url)
        err = info.value
        assert err.message.startswith(f"cannot reach database {url.replace('secret', '***')}:")
        assert "secret" not in str(err) and "upgrade" not in err.message
        assert err.hint and "server is running" in err.hint and "sqlite:///" in err.hint


def test_sqlite_failures_name_their_fix(tmp_path: Path) -> None:
    """A path SQLite cannot open, a file that is no database, a full disk: each with its fix,
    from every command (upgrade, reading, a session)."""
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(StorageError, match="unable to open database file") as info:
        upgrade(f"sqlite:///{tmp_path / 'folder.db'}")
    assert info.value.hint and f"folder {tmp_path} exists" in info.value.hint
    (tmp_path / "junk.db").write_bytes(b"no SQLite header here " * 50)
    for opening in (upgrade, existing_database):
        with pytest.raises(StorageError, match="file is not a database") as info:
            opening(f"sqlite:///{tmp_path / 'junk.db'}")
        assert info.value.hint and f"{tmp_path / 'junk.db'} is not a SQLite database" in (
            info.value.hint
        )
    db = open_database(f"sqlite:///{tmp_path / 'full.db'}")
    with pytest.raises(StorageError, match="database or disk is full") as info, db.session() as s:
        pages = s.execute(sa.text("PRAGMA page_count")).scalar()
        s.execute(sa.text(f"PRAGMA max_page_count = {pages}"))  # the disk is full now
        s.execute(sa.text("CREATE TABLE filler (x BLOB)"))
        s.execute(sa.text("INSERT INTO filler VALUES (zeroblob(1000000))"))
    db.dispose()
    assert info.value.hint and f"free space on the disk that holds {tmp_path}" in info.value.hint


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


def _write_within(url: str, seconds: float) -> str | None:
    """A part written by another connection within `seconds`; None, or why not."""
    import time

    other = open_database(url, migrate=False)
    try:
        with other.deadline(time.monotonic() + seconds):
            other.create_part("lock-probe", verdict=Verdict.PENDING)
        return None
    except StorageError as exc:
        return exc.message
    finally:
        other.dispose()


def test_a_long_read_never_holds_sqlite_s_write_lock(tmp_path: Path) -> None:
    """`station db verify`, the CSV export and the review pages read through `reading()`: the
    station's part writes go on meanwhile. A writing session holds the lock from its BEGIN."""
    url = f"sqlite:///{tmp_path / 'station.db'}"
    db = open_database(url)
    _log_part(db, "glassfiber")
    with db.reading() as s:
        assert s.scalars(select(Part)).first() is not None
        assert _write_within(url, 2.0) is None
    with db.session() as s:
        s.scalars(select(Part)).first()
        assert "locked" in (_write_within(url, 0.5) or "")
    db.dispose()


@pytest.mark.postgres
def test_a_locked_postgres_table_fails_a_write_by_its_deadline(fresh_postgres_url: str) -> None:
    """PostgreSQL waits no longer than SQLite for a lock: a part's writes fail within its
    budget (then the part is faulted and journalled) rather than stall the line."""
    import time

    upgrade(fresh_postgres_url)
    holder = sa.create_engine(fresh_postgres_url)
    with holder.connect() as conn:
        conn.execute(sa.text("LOCK TABLE parts IN ACCESS EXCLUSIVE MODE"))
        t0 = time.monotonic()
        why = _write_within(fresh_postgres_url, 1.0)
        took = time.monotonic() - t0
        conn.rollback()
    holder.dispose()
    assert why is not None and "timeout" in why, why
    assert took < 10  # without the limit it waits until the lock goes (here: forever)
    assert _write_within(fresh_postgres_url, 1.0) is None


@pytest.mark.postgres
def test_db_upgrade_never_prints_the_password(
    fresh_postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main

    url = fresh_postgres_url.replace("://station@", "://station:secretpw@")
    main(["db", "upgrade", "--db-url", url])
    out = capsys.readouterr()
    assert "revision 0007" in out.out and "secretpw" not in out.out + out.err
