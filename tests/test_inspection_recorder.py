"""Recorder: write order, crash recovery, and a locked database held in the journal."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from test_inspection_support import database, sheet, small_recipe

import station.storage.db as dbmod
from station.errors import StorageError
from station.inspection.recorder import PartRecord, Recorder
from station.inspection.results import recovery_messages
from station.storage.heatmaps import encode_png, write_atomic
from station.storage.models import Detection, Part, Shot, Verdict


@pytest.fixture
def rec(station_home: Path) -> Recorder:
    recipe = small_recipe(station_home)
    return Recorder(database(recipe), recipe)


def _parts(rec: Recorder) -> list[Part]:
    with rec.db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        for r in rows:
            _ = [sh.detections for sh in r.shots]
        return list(rows)


def test_write_order_and_paths(rec: Recorder) -> None:
    part = rec.new_part("live", "sheet-1")
    rec.open_part(part)
    (row,) = _parts(rec)
    assert row.verdict is Verdict.PENDING and row.sequence == 1 and row.line_part_id == "sheet-1"
    assert row.shots == []

    img = sheet(True)
    mask = np.zeros_like(img)
    shot = rec.add_shot(part, 0, "left", img, robot_pose=[1, 2, 3, 0, 0, 0], mask=mask)
    assert shot.image_path == "glassfiber/images/000001/left.png"
    data = (rec.data_root / shot.image_path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == shot.image_sha256
    (row,) = _parts(rec)
    assert row.verdict is Verdict.PENDING  # shot row is in before any detection
    assert [s.image_path for s in row.shots] == [shot.image_path]
    assert row.shots[0].mask_path == "glassfiber/images/000001/left.mask.png"

    amap = np.full((32, 32), 0.6, np.float32)
    det = rec.write_detection(
        part,
        shot,
        detector="brightspot",
        model_version="v1",
        score=0.6,
        threshold=0.3,
        amap=amap,
        latency_ms=1.5,
        store_raw=True,
    )
    assert det.normalized_score == pytest.approx(2.0)
    assert (rec.data_root / det.heatmap_path).is_file()
    assert np.load(rec.data_root / det.raw_map_path).shape == (32, 32)
    shot.detections.append(det)
    part.verdict, part.reason, part.part_score = Verdict.FAIL, "bright", 2.0
    rec.finish_part(part)
    (row,) = _parts(rec)
    assert row.verdict is Verdict.FAIL and row.finished_at is not None
    (d,) = row.shots[0].detections
    assert d.heatmap_path == "glassfiber/images/000001/left.brightspot.heat.png"
    # idempotent: a second sync adds no rows
    rec.finish_part(part)
    with rec.db.session() as s:
        assert len(s.scalars(select(Detection)).all()) == 1
        assert len(s.scalars(select(Shot)).all()) == 1


def test_recover_marks_pending_interrupted_and_adopts_shot_files(rec: Recorder) -> None:
    captured = rec.db.create_part(rec.recipe.name, mode="capture")  # never decided: left alone
    done = rec.new_part("live")
    rec.open_part(done)
    done.verdict = Verdict.PASS
    rec.finish_part(done)

    crashed = rec.new_part("live")
    rec.open_part(crashed)
    rec.add_shot(crashed, 0, "left", sheet(False))
    # the crash came after the second shot reached the disk, before its row, and cut off
    # the third shot's write (the temporary file an atomic write renames when complete)
    write_atomic(rec.part_folder(crashed) / "centre.png", encode_png(sheet(False, seed=1)))
    torn = rec.part_folder(crashed) / ".right.png.x1y2.tmp"
    torn.write_bytes(b"\x89PNG half")

    # while the crashed run's process lives (an offline run beside a start), its parts stay
    assert Recorder(rec.db, rec.recipe).recover().interrupted == []
    rec.run_lock.release()  # the crash: the kernel drops the process's locks
    report = Recorder(rec.db, rec.recipe).recover()  # a new process
    assert report.interrupted == [crashed.sequence] and report.shots_added == 1
    assert not torn.exists()  # the torn write is gone, never adopted as a shot
    assert list(rec.runs_dir.glob("*.lock")) == []  # the ended run's lock file is gone
    rows = _parts(rec)
    assert [r.verdict for r in rows] == [Verdict.PENDING, Verdict.PASS, Verdict.INTERRUPTED]
    assert rows[0].id == captured.id
    assert "mid-part" in rows[2].reason
    assert [(s.pose_index, s.pose_name) for s in rows[2].shots] == [(0, "left"), (1, "centre")]
    assert Recorder(rec.db, rec.recipe).recover().interrupted == []


def test_a_pass_committed_before_the_line_had_it_says_so_after_a_crash(rec: Recorder) -> None:
    """The verdict is committed before the result goes out, the cycle time after the line's
    answer: a crash in between leaves a pass the line may never have had."""
    sent = rec.new_part("live")
    rec.open_part(sent)
    sent.verdict, sent.reason = Verdict.PASS, "pass"
    sent.timings_ms = {"inference": 5.0, "line": 1.0, "cycle": 90.0}  # its answer came back
    rec.finish_part(sent)
    cut = rec.new_part("live")
    rec.open_part(cut)
    cut.verdict, cut.reason, cut.timings_ms = Verdict.PASS, "pass", {"inference": 5.0}
    rec.finish_part(cut)  # then the crash, before send_result
    rec.run_lock.release()  # the kernel drops the dead process's locks; its file stays
    report = Recorder(rec.db, rec.recipe).recover()
    assert report.unconfirmed == [cut.sequence]
    rows = {r.sequence: r for r in _parts(rec)}
    assert rows[sent.sequence].reason == "pass"
    assert rows[cut.sequence].verdict is Verdict.PASS  # what the detectors decided stays
    assert "stopped before the line confirmed this pass" in rows[cut.sequence].reason
    assert Recorder(rec.db, rec.recipe).recover().unconfirmed == []  # said once
    lines = recovery_messages(report, rec.journal.refused_dir)
    assert any(f"part(s) {cut.sequence}: passed, but" in text for text, _ in lines)


def _lock(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.slow
def test_locked_database_is_journaled_then_written(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    db = database(rec.recipe)  # a fresh engine picks up the short busy timeout
    rec = Recorder(db, rec.recipe)
    part = rec.new_part("live")
    rec.open_part(part)
    shot = rec.add_shot(part, 0, "left", sheet(True))
    shot.detections.append(
        rec.write_detection(
            part,
            shot,
            detector="brightspot",
            model_version="v1",
            score=0.6,
            threshold=0.3,
            amap=np.zeros((8, 8), np.float32),
            latency_ms=1.0,
        )
    )
    part.verdict, part.reason = Verdict.FAIL, "bright"

    dbfile = db.url.removeprefix("sqlite:///")
    lock = _lock(dbfile)
    try:
        with pytest.raises(StorageError, match="locked"):
            rec.finish_part(part)
        rec.keep(part, "locked")
        journal = rec.journal_dir / f"{part.key}.json"
        assert journal.is_file()
        assert PartRecord.from_json(journal.read_text()).verdict is Verdict.FAIL
        other = rec.new_part("live")
        with pytest.raises(StorageError):
            rec.open_part(other)
    finally:
        lock.rollback()
        lock.close()

    # the station died while the record was held: the next start writes it
    report = Recorder(database(rec.recipe), rec.recipe).recover()
    assert report.journal_replayed == 1 and report.interrupted == []
    assert not journal.exists()
    (row,) = _parts(rec)
    assert row.verdict is Verdict.FAIL and len(row.shots[0].detections) == 1


def test_part_refused_before_its_row_gets_one_later(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    rec = Recorder(database(rec.recipe), rec.recipe)
    lock = _lock(rec.db.url.removeprefix("sqlite:///"))
    try:
        part = rec.new_part("live", "sheet-9")
        with pytest.raises(StorageError):
            rec.open_part(part)
        part.verdict, part.reason = Verdict.FAULT, "storage: database is locked"
        rec.keep(part, "locked")
    finally:
        lock.rollback()
        lock.close()
    assert rec.flush_backlog() == 0 and not rec.backlog
    (row,) = _parts(rec)
    assert (row.verdict, row.line_part_id, row.sequence) == (Verdict.FAULT, "sheet-9", 1)


def test_record_refused_for_good_is_set_aside_not_retried_forever(rec: Recorder) -> None:
    import dataclasses

    part = rec.new_part("live")
    rec.open_part(part)
    shot = rec.add_shot(part, 0, "left", sheet(False))
    # a second shot row at the same pose index breaks a constraint: never accepted
    part.shots.append(dataclasses.replace(shot, pose_name="again", db_id=None))
    part.verdict, part.reason = Verdict.FAULT, "test"
    rec.keep(part, "refused")
    assert rec.flush_backlog() == 0 and rec.set_aside == [part.key]
    assert not (rec.journal_dir / f"{part.key}.json").exists()
    kept = PartRecord.from_json((rec.journal_dir / "refused" / f"{part.key}.json").read_text())
    assert [s.pose_name for s in kept.shots] == ["left", "again"]
    other = rec.new_part("live")
    rec.open_part(other)  # the next part is not blocked
    assert other.sequence == 2
    # the same record found in the journal at start-up is set aside too
    rec.keep(part, "refused")
    report = Recorder(rec.db, rec.recipe).recover()
    assert report.set_aside == 1 and report.journal_replayed == 0
    assert not list(rec.journal_dir.glob("*.json"))


def test_disk_full_is_a_storage_error(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    import subprocess

    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(StorageError, match="disk full"):
            write_atomic(mnt / "big.bin", b"x" * 200_000)
        assert [p.name for p in mnt.iterdir()] == []  # no partial or temporary file left
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _decided(rec: Recorder, verdict: Verdict, line_id: str) -> PartRecord:
    part = rec.new_part("live", line_id)
    rec.open_part(part)
    rec.add_shot(part, 0, "left", sheet(verdict is Verdict.FAIL))
    part.verdict, part.reason = verdict, f"{verdict.value} by the detectors"
    rec.finish_part(part)
    return part


def test_journal_replay_never_rewrites_another_part(rec: Recorder) -> None:
    """Issue 23: a journal file naming an existing part id rewrote its verdict."""
    failed = _decided(rec, Verdict.FAIL, "sheet-1")
    forged = Recorder(rec.db, rec.recipe).new_part("live", "forged")  # another run's record
    forged.db_id, forged.sequence = failed.db_id, failed.sequence
    forged.verdict, forged.reason = Verdict.PASS, "forged"
    rec.journal_dir.mkdir(parents=True)
    path = rec.journal_dir / f"{forged.key}.json"
    path.write_text(forged.to_json())
    report = Recorder(rec.db, rec.recipe).recover()
    (row,) = _parts(rec)
    assert (row.verdict, row.line_part_id, row.reason) == (Verdict.FAIL, "sheet-1", failed.reason)
    assert report.journal_replayed == 0 and not path.exists()
    assert (rec.journal_dir / "refused" / path.name).is_file()
    (line,) = report.refused
    assert path.name in line and "run id" in line and "\n" not in line


def test_unknown_or_garbage_journal_files_are_moved_aside_and_never_block(rec: Recorder) -> None:
    """Issue 23: an unknown part id blocked every start; garbage was logged at every start."""
    _decided(rec, Verdict.PASS, "sheet-1")
    ghost = rec.new_part("live", "ghost")
    ghost.db_id, ghost.sequence, ghost.verdict = 999999, 7, Verdict.FAIL
    rec.journal_dir.mkdir(parents=True)
    (rec.journal_dir / "ghost.json").write_text(ghost.to_json())
    (rec.journal_dir / "garbage.json").write_text("{not json")
    (rec.journal_dir / "list.json").write_text("[1, 2]")
    report = Recorder(rec.db, rec.recipe).recover()
    assert sorted(p.name for p in (rec.journal_dir / "refused").iterdir()) == [
        "garbage.json",
        "ghost.json",
        "list.json",
    ]
    assert len(report.refused) == 3 and all("journal file " in ln for ln in report.refused)
    assert any("ghost.json" in ln and "999999" in ln for ln in report.refused)
    assert Recorder(rec.db, rec.recipe).recover().refused == []  # reported once
    assert [r.line_part_id for r in _parts(rec)] == ["sheet-1"]


def test_record_replayed_after_its_commit_adds_no_second_row(rec: Recorder) -> None:
    """A crash between the commit of a held record and the removal of its journal file."""
    part = rec.new_part("live", "sheet-1")
    part.verdict, part.reason = Verdict.FAULT, "storage: database is locked"
    rec.keep(part, "locked")  # refused before its row: no id yet
    text = (rec.journal_dir / f"{part.key}.json").read_text()
    assert rec.flush_backlog() == 0
    (rec.journal_dir / f"{part.key}.json").write_text(text)  # the unlink never happened
    report = Recorder(rec.db, rec.recipe).recover()
    assert [(r.line_part_id, r.verdict) for r in _parts(rec)] == [("sheet-1", Verdict.FAULT)]
    assert report.journal_replayed == 1 and report.refused == []


def test_a_replayed_record_with_shots_adopts_the_rows_its_commit_wrote(rec: Recorder) -> None:
    """The same crash for a part with a shot and a detection: the replay finds the rows the
    commit wrote and adopts them; it is not refused for the rows' unique constraints."""
    part = rec.new_part("live", "sheet-1")
    rec.open_part(part)
    shot = rec.add_shot(part, 0, "left", sheet(True))
    shot.detections.append(rec.write_detection(
        part, shot, detector="brightspot", model_version="v1", score=0.6, threshold=0.3,
        amap=np.zeros((8, 8), np.float32), latency_ms=1.0))
    part.verdict, part.reason = Verdict.FAULT, "storage: database is locked"
    rec.keep(part, "locked")
    path = rec.journal_dir / f"{part.key}.json"
    text = path.read_text()
    assert rec.flush_backlog() == 0
    path.write_text(text)  # the unlink never happened; the copy has no shot or detection ids
    report = Recorder(rec.db, rec.recipe).recover()
    assert report.refused == [] and report.set_aside == 0 and report.journal_replayed == 1
    (row,) = _parts(rec)
    assert row.verdict is Verdict.FAULT and len(row.shots) == 1
    assert [d.score for d in row.shots[0].detections] == [pytest.approx(0.6)]


@pytest.mark.parametrize(("field", "value"), [("timings_ms", 5), ("part_score", "abc")])
def test_a_journal_record_with_values_no_column_takes_is_refused_not_blocking(
    rec: Recorder, field: str, value: object
) -> None:
    bad, good = rec.new_part("live", "sheet-1"), rec.new_part("live", "sheet-2")
    for part in (bad, good):
        part.verdict, part.reason = Verdict.FAIL, "fail by the detectors"
        rec.keep(part, "locked")  # held before their rows
    path = rec.journal_dir / f"{bad.key}.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    report = Recorder(rec.db, rec.recipe).recover()  # the start goes on
    (line,) = report.refused
    assert f"{bad.key}.json refused" in line and "\n" not in line
    assert report.journal_replayed == 1
    assert [r.line_part_id for r in _parts(rec)] == ["sheet-2"]


def test_a_line_part_id_longer_than_its_column_keeps_its_end(rec: Recorder) -> None:
    path = "/mnt/archive/" + "deep/" * 40 + "p000001_left.png"
    part = rec.new_part("offline", path)
    assert len(part.line_part_id) == 128 and part.line_part_id.endswith("p000001_left.png")
    assert part.line_part_id.startswith("...")
    assert rec.new_part("live", "sheet-1").line_part_id == "sheet-1"


def test_no_journal_copy_is_claimed_unless_it_was_synced(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: records 'held in the journal' were in memory only. A full disk answers at
    fsync (ENOSPC) with no reserve left: the part is stored nowhere, and says so."""
    import errno
    import os

    from station.errors import NowhereToStore

    rec.journal.reserve_bytes = 0
    part = rec.new_part("live", "sheet-1")
    part.verdict, part.reason = Verdict.FAULT, "storage: disk full"

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(NowhereToStore, match="stored nowhere") as err:
        rec.keep(part, "database or disk is full")
    assert "journal" in err.value.message and "\n" not in err.value.message
    monkeypatch.undo()
    assert part.key not in rec.journaled and part.key in rec.backlog
    assert not list(rec.journal_dir.glob("*.json"))
    rec.rejournal()  # space came back: now it is held
    assert part.key in rec.journaled and (rec.journal_dir / f"{part.key}.json").is_file()


def _tmpfs(where: Path, size: str) -> bool:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    try:
        with open(filler, "wb") as fh:
            while True:
                fh.write(b"\1" * 4096)
                fh.flush()
    except OSError:
        pass  # full
    return filler


def test_journal_takes_records_on_a_full_disk_from_its_reserve(station_home: Path) -> None:
    import subprocess

    disk = station_home / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        recipe = small_recipe(
            station_home, storage__journal_dir=str(disk), storage__journal_reserve_mb=0.25
        )
        rec = Recorder(database(recipe), recipe)
        rec.recover()  # takes the reserve
        assert rec.journal.reserved() == 2**18
        filler = _fill(disk)
        for i in range(3):
            part = rec.new_part("live", f"sheet-{i}")
            part.verdict, part.reason = Verdict.FAULT, "storage: disk full"
            rec.keep(part, "disk full")
            assert PartRecord.from_json(rec.journal.path(part.key).read_text()).key == part.key
        assert len(rec.journaled) == 3
        filler.unlink()
        assert rec.flush_backlog() == 0 and not list(rec.journal_dir.glob("*.json"))
        assert rec.journal.reserved() == 2**18  # taken back
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_one_live_run_per_recipe_and_per_real_cell(station_home: Path) -> None:
    import os

    from station.errors import InUse

    first = small_recipe(station_home, backend="real")
    other = first.model_copy(update={"name": "other"})  # another recipe, the same UR5
    a, b = Recorder(database(first), first), Recorder(database(other), other)
    a.hold_lock()
    try:
        with pytest.raises(InUse, match=f"cell {first.robot.host} .* PID {os.getpid()}"):
            b.recover()
        with pytest.raises(InUse, match="recipe glassfiber"):
            Recorder(a.db, first).recover()
    finally:
        a.release_lock()
    assert b.recover().interrupted == [] and not any(lock.held for lock in b.locks)
