"""`station db verify`: the archive check finds what is missing, changed or left over."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, update
from test_inspection_support import database, run_cli, sheet, small_recipe

from station.inspection.recorder import PartRecord, Recorder
from station.recipe import Recipe
from station.storage.models import ModelVersion, Part, Verdict
from station.storage.verify import verify_archive


def _decided(rec: Recorder, defect: bool) -> PartRecord:
    """A part with one shot and one detector's heatmap, decided by model v1 and committed."""
    part = rec.new_part("live", f"sheet-{defect}")
    part.model_versions = {"brightspot": "v1"}
    rec.open_part(part)
    shot = rec.add_shot(part, 0, "left", sheet(defect), robot_pose=[0.0] * 6)
    det = rec.write_detection(
        part,
        shot,
        detector="brightspot",
        model_version="v1",
        score=0.6 if defect else 0.1,
        threshold=0.3,
        amap=np.full((8, 8), 0.6 if defect else 0.1, np.float32),
        latency_ms=1.0,
        store_raw=True,
    )
    shot.detections.append(det)
    part.verdict = Verdict.FAIL if defect else Verdict.PASS
    rec.finish_part(part)
    return part


def _model_row(rec: Recorder, recipe: Recipe) -> Path:
    """Model v1's file in the models folder and its model_versions row."""
    path = recipe.models_dir / "brightspot" / "v1.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    with rec.db.session() as s:
        s.add(ModelVersion(recipe=recipe.name, detector="brightspot", version="v1",
                           artifact_path=rec.rel(path),
                           artifact_sha256=hashlib.sha256(b"weights").hexdigest()))  # fmt: skip
    return path


@pytest.fixture
def archive(station_home: Path) -> tuple[Recorder, Recipe, list[PartRecord]]:
    recipe = small_recipe(station_home)
    rec = Recorder(database(recipe), recipe)
    _model_row(rec, recipe)
    parts = [_decided(rec, False), _decided(rec, True)]
    rec.end_run()
    return rec, recipe, parts


def test_a_whole_archive_is_ok(
    archive: tuple[Recorder, Recipe, list[PartRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, recipe, _ = archive
    report = verify_archive(rec.db, recipe)
    assert (report.parts, report.shots, report.hashed, report.models_checked) == (2, 2, 2, 1)
    assert report.files == 6  # per part: shot, heatmap, raw map
    assert not report.lost and not report.unnamed and not report.pending and not report.held
    code, out = run_cli(["db", "verify", "-r", "small"], capsys)
    assert code == 0, out
    assert "2 parts, 2 shots; 6 files found, 2 shots' sha256 compared; 1 deciding model" in out
    assert "ok: every row's files are there and unchanged" in out


def test_a_missing_heatmap_and_a_changed_shot_are_loss(
    archive: tuple[Recorder, Recipe, list[PartRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, recipe, (good, bad) = archive
    heat = bad.shots[0].detections[0].heatmap_path
    assert heat is not None
    (rec.data_root / heat).unlink()
    shot = rec.data_root / good.shots[0].image_path
    shot.write_bytes(shot.read_bytes() + b"\0")
    report = verify_archive(rec.db, recipe)
    assert report.missing == [f"{heat} (part 2, heatmap left/brightspot)"]
    assert report.damaged == [
        f"{good.shots[0].image_path} (part 1, shot left): sha256 differs from its row's"
    ]
    assert verify_archive(rec.db, recipe, hashes=False).damaged == []  # existence only
    code, out = run_cli(["db", "verify", "-r", "small"], capsys)
    assert code == 1
    assert "1 file(s) named by a row are missing:" in out and heat in out
    assert "1 shot file(s) changed since they were written:" in out
    assert "not whole" in out and "Traceback" not in out


def test_a_deciding_model_changed_or_gone_is_reported(
    archive: tuple[Recorder, Recipe, list[PartRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, recipe, _ = archive
    model = recipe.models_dir / "brightspot" / "v1.pt"
    model.write_bytes(b"other weights")
    (line,) = verify_archive(rec.db, recipe).models
    what = "model brightspot v1 (decided 2 part(s), from part 1)"
    assert line == f"{what}: file {model} changed (sha256)"
    model.unlink()
    assert verify_archive(rec.db, recipe).models[0].endswith(f"file {model} missing")
    with rec.db.session() as s:
        s.execute(delete(ModelVersion))
    assert verify_archive(rec.db, recipe).models[0].endswith("no model_versions row")
    code, out = run_cli(["db", "verify", "-r", "small"], capsys)
    assert code == 1 and "1 model(s) that decided parts cannot be traced:" in out


def test_since_checks_only_the_newer_parts_and_their_folders(
    archive: tuple[Recorder, Recipe, list[PartRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, recipe, (old, new) = archive
    with rec.db.session() as s:
        s.execute(update(Part).where(Part.sequence == 1).values(
            started_at=datetime.now(UTC) - timedelta(days=10)))  # fmt: skip
    (rec.part_folder(old) / "left.png").unlink()
    (rec.part_folder(old) / "stray.png").write_bytes(b"x")
    (rec.part_folder(new) / "stray.png").write_bytes(b"x")
    recent = verify_archive(rec.db, recipe, since=datetime.now(UTC) - timedelta(days=1))
    assert recent.parts == 1 and not recent.missing
    assert recent.unnamed == [f"{rec.rel(rec.part_folder(new))}/stray.png"]
    whole = verify_archive(rec.db, recipe)
    assert whole.parts == 2 and len(whole.missing) == 1 and len(whole.unnamed) == 2
    code, out = run_cli(["db", "verify", "-r", "small", "--days", "1"], capsys)
    assert code == 0 and "recipe glassfiber: 1 parts" in out and "parts started since" in out


def test_left_overs_held_and_refused_records_and_undecided_parts(
    archive: tuple[Recorder, Recipe, list[PartRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, recipe, (good, _) = archive
    folder = rec.part_folder(good)
    (folder / "right.brightspot.heat.png").write_bytes(b"cut off")  # before its rows
    (folder / ".left.png.1a2b.tmp").write_bytes(b"torn")
    # a part the database has not taken yet: its record (and files) are the journal's
    held = Recorder(rec.db, recipe)
    undecided = held.new_part("live", "sheet-3")
    held.open_part(undecided)  # pending row; the process then "dies"
    record = PartRecord(recipe=recipe.name, recipe_sha256=recipe.sha256, mode="live")
    record.verdict = Verdict.PASS
    held.journal.write(record.key, record.to_json().encode())
    held.journal.refuse(held.journal.path("refused-one"), b"{}")
    newest = recipe.images_dir / "000099"  # as a live run's next part, before its row is read
    newest.mkdir()
    (newest / "left.png").write_bytes(b"png")
    held.hold_lock()
    during = verify_archive(rec.db, recipe)  # its run is inspecting: part 3 is skipped
    assert during.live and during.parts == 2 and not during.pending
    assert len(during.unnamed) == 2  # only in the checked parts' folders
    held.release_lock()
    held.run_lock.release()  # as the kernel does when the process dies

    report = verify_archive(rec.db, recipe)
    assert report.pending == [3]
    assert report.held == [f"{record.key}.json (part {record.label}, pass)"]
    assert [Path(p).name for p in report.refused] == ["refused-one.json"]
    assert report.unnamed == [
        f"{rec.rel(folder)}/.left.png.1a2b.tmp",
        f"{rec.rel(folder)}/right.brightspot.heat.png",
        f"{rec.rel(newest)}/left.png",
    ]
    assert report.lost and not report.missing  # a refused record is a verdict in no row
    code, out = run_cli(["db", "verify", "-r", "small"], capsys)
    assert code == 1
    assert "1 part(s) left undecided by a stop" in out
    assert "3 file(s) in the images folder that no row names" in out


def test_no_database_or_no_schema_is_one_line(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_recipe(station_home)
    url = f"sqlite:///{station_home}/data/none.db"
    code, out = run_cli(["db", "verify", "-r", "small", "--url", url], capsys)
    assert code == 2 and "no database at" in out and "Traceback" not in out
    assert not (station_home / "data" / "none.db").exists()  # not created by looking
    empty = station_home / "data" / "empty.db"
    empty.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(empty).close()
    code, out = run_cli(["db", "verify", "-r", "small", "--url", f"sqlite:///{empty}"], capsys)
    assert code == 2 and "has no station tables" in out and "station db upgrade" in out


def test_on_postgresql(
    station_home: Path, fresh_postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    small_recipe(station_home)
    empty = ["db", "verify", "-r", "small", "--url", fresh_postgres_url]
    code, out = run_cli(empty, capsys)  # a database with no tables yet
    assert code == 2 and "has no station tables" in out and "Traceback" not in out
    recipe = small_recipe(
        station_home, storage={"database_url": fresh_postgres_url, "data_dir": "data"}
    )
    rec = Recorder(database(recipe), recipe)
    _model_row(rec, recipe)
    _, bad = _decided(rec, False), _decided(rec, True)
    rec.end_run()
    (rec.data_root / bad.shots[0].image_path).unlink()
    report = verify_archive(rec.db, recipe)
    assert (report.parts, report.shots) == (2, 2)
    assert report.missing == [f"{bad.shots[0].image_path} (part 2, shot left)"]
    assert report.hashed == 1 and not report.damaged and not report.unnamed
    assert report.models_checked == 1 and not report.models
    assert verify_archive(rec.db, recipe, since=datetime.now(UTC) - timedelta(days=1)).parts == 2
    assert verify_archive(rec.db, recipe, since=datetime.now(UTC) + timedelta(days=1)).parts == 0
    rec.db.dispose()
    code, out = run_cli(["db", "verify", "-r", "small"], capsys)
    assert code == 1 and "1 file(s) named by a row are missing:" in out
