"""Calibration files, history, database record, stale refusal, and the CLI on reviews."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from station.calibration.core import PartScores, calibrate
from station.calibration.policies import Policy
from station.calibration.store import load_active_calibration, save_calibration
from station.errors import CalibrationError
from station.recipe import Recipe, load_recipe
from station.storage.db import open_database
from station.storage.models import Calibration, Detection, Part, Review, ReviewLabel, Shot, Verdict


def _data(version: str = "pc-1", seed: int = 0) -> PartScores:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(80, int), np.ones(20, int)]
    scores = rng.gamma(4, 0.1, 100) + labels * rng.uniform(0.1, 0.8, 100)
    return PartScores(
        [f"p{i:06d}" for i in range(100)],
        labels,
        {"patchcore": scores},
        source="capture",
        model_versions={"patchcore": version},
        data_sha256="d" * 64,
    )


def _save(home: Path, version: str = "pc-1", when: datetime | None = None, **kw):  # noqa: ANN003, ANN202
    recipe = load_recipe("glassfiber")
    res = calibrate(_data(version), Policy("zero_miss"), recipe="glassfiber", resamples=200)
    if when is not None:
        res.created_at = when
    return recipe, res, save_calibration(res, recipe, dataset="test", **kw)


@pytest.mark.slow
def test_files_record_and_exact_rates(station_home: Path) -> None:
    recipe, res, saved = _save(station_home)
    assert saved.path == station_home / "calibration" / "glassfiber.yaml"
    assert saved.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved.plot_path.stat().st_size > 10_000
    from station.files import default_file_mode as file_mode

    for f in (saved.path, saved.plot_path, saved.scores_path):  # not mkstemp's owner-only mode
        assert f.stat().st_mode & 0o777 == file_mode()
    assert saved.history_path.is_file() and saved.history_path.parent.name == "history"
    # the per-part CSV reproduces the stated counts with the stated threshold
    rows = [line.split(",") for line in saved.scores_path.read_text().splitlines()[1:]]
    t_file = yaml.safe_load(saved.path.read_text())["thresholds"]["patchcore"]
    fr_csv = sum(1 for r in rows if r[1] == "good" and float(r[2]) >= t_file)
    assert fr_csv == res.combined.choice.false_rejects == sum(int(r[4]) for r in rows[:80])
    doc = yaml.safe_load(saved.path.read_text())
    assert doc["id"] == saved.id and doc["policy"]["name"] == "zero_miss"
    assert doc["model_versions"] == {"patchcore": "pc-1"} and doc["data_sha256"] == "d" * 64
    # the threshold read back from the file reproduces the stated counts exactly
    data = _data()
    t = doc["thresholds"]["patchcore"]
    s = data.scores["patchcore"]
    assert int((s[data.labels == 0] >= t).sum()) == doc["combined"]["false_reject_rate"]["count"]
    assert int((s[data.labels == 1] < t).sum()) == doc["combined"]["miss_rate"]["count"] == 0
    db = open_database(recipe.storage.resolved_database_url())
    with db.session() as session:
        row = session.scalars(select(Calibration)).one()
        assert row.id == saved.id and row.thresholds == {"patchcore": t}
        assert row.model_versions == {"patchcore": "pc-1"} and row.source == "capture"
        assert row.file_path == saved.history_path.relative_to(station_home).as_posix()
    db.dispose()


@pytest.mark.slow
def test_active_calibration_and_stale_refusal(station_home: Path) -> None:
    recipe = load_recipe("glassfiber")
    with pytest.raises(CalibrationError) as info:
        load_active_calibration(recipe, {"patchcore": "pc-1"})
    assert "no threshold calibration" in info.value.message
    assert "station calibrate-threshold --recipe glassfiber" in info.value.hint

    _, res, saved = _save(station_home)
    active = load_active_calibration("glassfiber", {"patchcore": "pc-1"})
    assert active.thresholds == res.thresholds and active.id == saved.id
    assert active.policy == "zero_miss" and active.note == ""

    with pytest.raises(CalibrationError) as info:
        load_active_calibration(recipe, {"patchcore": "pc-2"})
    msg = info.value.message
    assert "stale" in msg and "patchcore" in msg and "pc-1" in msg and "pc-2" in msg
    assert "calibrate-threshold" in info.value.hint

    with pytest.raises(CalibrationError, match="no threshold for detector simplenet"):
        load_active_calibration(recipe, {"patchcore": "pc-1", "simplenet": "sn-1"})


@pytest.mark.slow
def test_newest_matching_calibration_wins(station_home: Path) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    _save(station_home, "pc-1", t0)
    _, res2, saved2 = _save(station_home, "pc-2", t0 + timedelta(hours=1))
    active = load_active_calibration("glassfiber", {"patchcore": "pc-2"})
    assert active.id == saved2.id and active.path.name == "glassfiber.yaml"
    # a model rolled back to pc-1 finds its own, older calibration in the history, and says so
    older = load_active_calibration("glassfiber", {"patchcore": "pc-1"})
    assert older.path.parent.name == "history" and older.id != saved2.id
    assert "newer one" in older.note
    # the current file deleted: its copy in the history, said
    (station_home / "calibration/glassfiber.yaml").unlink()
    copy = load_active_calibration("glassfiber", {"patchcore": "pc-2"})
    assert copy.id == saved2.id and copy.path == saved2.history_path
    assert copy.note.startswith("calibration/glassfiber.yaml is missing: using its copy")


@pytest.mark.slow
def test_decision_rule_change_makes_it_stale(station_home: Path) -> None:
    _save(station_home)
    path = station_home / "recipes" / "glassfiber.yaml"
    path.write_text(path.read_text().replace("combine_poses: max", "combine_poses: mean"))
    with pytest.raises(CalibrationError, match="combine_poses=max"):
        load_active_calibration("glassfiber", {"patchcore": "pc-1"})


@pytest.mark.slow
def test_damaged_file_is_refused(station_home: Path) -> None:
    _, _, saved = _save(station_home)
    saved.path.write_text("thresholds: {patchcore: -1}\nmodel_versions: {}\ncreated_at: x\n")
    with pytest.raises(CalibrationError, match="damaged"):
        load_active_calibration("glassfiber", {"patchcore": "pc-1"})


def test_a_bad_created_at_is_damage_not_a_crash(station_home: Path) -> None:
    """Calibrations are ordered by created_at: one that is no date was a ValueError traceback."""
    (station_home / "calibration/glassfiber.yaml").write_text(
        "thresholds: {patchcore: 1.5}\nmodel_versions: {patchcore: pc-1}\ncreated_at: yesterday\n"
    )
    with pytest.raises(CalibrationError, match="damaged") as info:
        load_active_calibration("glassfiber", {"patchcore": "pc-1"})
    assert "created_at" in info.value.message and "calibrate-threshold" in info.value.hint


def _review_db(recipe: Recipe, n_good: int, n_defect: int, passed_audit: int = 0) -> None:
    """Reviewed parts in the recipe's database, one scored shot per recipe pose."""
    url = recipe.storage.resolved_database_url()
    rng = np.random.default_rng(1)
    db = open_database(url)
    with db.session() as s:
        for i in range(n_good + n_defect):
            defect = i >= n_good
            audit = i < passed_audit
            part = Part(recipe="glassfiber", sequence=i + 1, mode="live")
            part.verdict = Verdict.PASS if audit else Verdict.FAIL
            for k, pose in enumerate(p.name for p in recipe.robot.poses):
                shot = Shot(
                    pose_index=k,
                    pose_name=pose,
                    image_path=f"glassfiber/images/{i:06d}/{pose}.png",
                    image_sha256="0" * 64,
                    width=64,
                    height=64,
                )
                score = float(rng.gamma(4, 0.1) + (0.6 if defect and k == 1 else 0.0))
                shot.detections.append(
                    Detection(detector="patchcore", model_version="pc-7", score=score)
                )
                part.shots.append(shot)
            label = ReviewLabel.DEFECT_CONFIRMED if defect else ReviewLabel.FALSE_REJECT
            older = ReviewLabel.FALSE_REJECT if defect else ReviewLabel.DEFECT_CONFIRMED
            t = datetime(2026, 11, 2, tzinfo=UTC)
            part.reviews.append(Review(operator="ann", label=older, created_at=t))
            part.reviews.append(Review(operator="bob", label=label, created_at=t + timedelta(1)))
            s.add(part)
    db.dispose()


@pytest.mark.slow
def test_cli_from_reviews(station_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from station.cli.app import main

    recipe = load_recipe("glassfiber")
    _review_db(recipe, n_good=30, n_defect=12)
    main(["calibrate-threshold", "--recipe", "glassfiber", "--from-reviews", "--resamples", "200"])
    out = capsys.readouterr()
    assert "reviews cover only rejected parts" in out.err  # the bias is stated
    doc = yaml.safe_load((station_home / "calibration" / "glassfiber.yaml").read_text())
    assert doc["source"] == "reviews" and doc["model_versions"] == {"patchcore": "pc-7"}
    # the newest review per part wins: 30 good, 12 defective
    assert doc["counts"] == {"good": 30, "defect": 12, "shots": 42 * len(recipe.robot.poses)}
    assert doc["combined"]["miss_rate"]["count"] == 0  # zero_miss, the recipe's policy
    assert (station_home / "calibration" / "glassfiber_roc.png").is_file()
    active = load_active_calibration("glassfiber", {"patchcore": "pc-7"})
    assert active.thresholds == doc["thresholds"]


def test_cli_errors_are_one_line(station_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from station.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["calibrate-threshold", "--recipe", "glassfiber", "--from-reviews"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "no reviewed parts" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["calibrate-threshold", "--recipe", "glassfiber", "--policy", "by_eye"])
    assert done.value.code == 2 and "unknown threshold policy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["calibrate-threshold", "--policy", "youden", "--quantile", "0.9"])
    assert done.value.code == 2 and "--quantile does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["calibrate-threshold", "--policy", "good_quantile", "--quantile", "1.5"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "quantile must be between 0 and 1" in err
    with pytest.raises(SystemExit) as done:
        main(["calibrate-threshold", "--recipe", "glassfiber"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "no labelled parts" in err and "station capture" in err


def test_reviews_with_audits_and_other_model_versions(station_home: Path) -> None:
    from station.calibration.scores import scores_from_reviews

    recipe = load_recipe("glassfiber")
    url = recipe.storage.resolved_database_url()
    _review_db(recipe, n_good=20, n_defect=6, passed_audit=5)
    db = open_database(url)
    with db.session() as s:  # two parts scored by an older model: left out, and said so
        for det in s.scalars(select(Detection).join(Shot).join(Part).where(Part.sequence <= 2)):
            det.model_version = "pc-6"
    db.dispose()
    data = scores_from_reviews(recipe, url)
    assert (data.n_good, data.n_defect) == (18, 6)
    assert data.model_versions == {"patchcore": "pc-7"} and not data.warnings
    assert any("3 of the 24 reviewed parts had passed" in n for n in data.notes)
    assert any("2 reviewed parts left out" in n for n in data.notes)


@pytest.mark.slow
def test_reviewed_parts_missing_poses_are_left_out(station_home: Path) -> None:
    """An interrupted sheet reviewed as defective has scores from only some poses: its combined
    score is not comparable with whole sheets, so calibration leaves it out and says so."""
    from station.calibration.scores import scores_from_reviews

    recipe = load_recipe("glassfiber")
    url = recipe.storage.resolved_database_url()
    _review_db(recipe, n_good=10, n_defect=4)
    db = open_database(url)
    with db.session() as s:
        part = s.scalars(select(Part).where(Part.sequence == 12)).one()  # a defective one
        part.verdict = Verdict.INTERRUPTED
        for shot in part.shots:
            if shot.pose_index > 0:
                shot.detections.clear()
    db.dispose()
    data = scores_from_reviews(recipe, url)
    assert (data.n_good, data.n_defect) == (10, 3)
    assert any("1 reviewed parts left out: not scored on each" in n for n in data.notes)


def test_unwritable_folder_leaves_no_row(station_home: Path) -> None:
    recipe = load_recipe("glassfiber")
    (station_home / "calibration").rmdir()
    (station_home / "calibration").write_text("a file where the folder should be")
    res = calibrate(_data(), Policy("zero_miss"), recipe="glassfiber", resamples=100)
    with pytest.raises(CalibrationError, match="cannot write calibration files"):
        save_calibration(res, recipe)
    db = open_database(recipe.storage.resolved_database_url())
    with db.session() as session:
        assert session.scalars(select(Calibration)).all() == []
    db.dispose()


def test_sheet_map_thresholds_go_stale_with_the_camera_model(station_home: Path) -> None:
    base = load_recipe("glassfiber")
    recipe = base.model_copy(
        update={"decision": base.decision.model_copy(update={"combine_poses": "sheet_map"})}
    )
    res = calibrate(
        _data(), Policy("zero_miss"), recipe="glassfiber", resamples=200,
        combine_poses="sheet_map",
    )  # fmt: skip
    save_calibration(res, recipe, dataset="test", record=False, camera_source="calibrated (A)")
    versions = {"patchcore": "pc-1"}
    assert load_active_calibration(recipe, versions, "calibrated (A)").thresholds
    with pytest.raises(CalibrationError, match="cell calibration changed") as err:
        load_active_calibration(recipe, versions, "calibrated (B)")
    assert "calibrated (A)" in err.value.message


def test_a_failed_write_leaves_the_previous_calibration_whole(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_files import disk_full_at

    recipe, _, first = _save(station_home)
    before = {p: p.read_bytes() for p in (station_home / "calibration").rglob("*") if p.is_file()}
    disk_full_at(monkeypatch, recipe.calibration_path)
    with pytest.raises(CalibrationError, match="cannot write calibration files"):
        _save(station_home, when=datetime.now(UTC) + timedelta(hours=1))
    after = {p: p.read_bytes() for p in (station_home / "calibration").rglob("*") if p.is_file()}
    assert after == before  # no new history copy, the plot still that of the current YAML
    assert load_active_calibration(recipe, {"patchcore": "pc-1"}).path == first.path
    db = open_database(recipe.storage.resolved_database_url())
    with db.session() as session:
        assert [c.id for c in session.scalars(select(Calibration))] == [first.id]
    db.dispose()
