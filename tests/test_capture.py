"""`station capture` on the twin: MVTec layout on disk, Part/Shot rows, resume, faults."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import pytest
import yaml
from sqlalchemy import select
from test_twin_render import classic

from station.cli.app import main
from station.errors import StationError
from station.inspection.capture import run_capture
from station.recipe import load_recipe
from station.storage.db import open_database
from station.storage.models import Part, Shot


def set_twin(home: Path, **twin: object) -> None:
    """The home's glassfiber recipe with these twin settings and no waiting, on the three poses
    and 12 mm lens these tests count shots for (`classic`; tests/test_shipped_recipe.py
    captures through the shipped raster)."""
    path = home / "recipes/glassfiber.yaml"
    data = classic(yaml.safe_load(path.read_text()))
    data["twin"].update({"time_scale": 0, **twin})
    path.write_text(yaml.safe_dump(data))


def parts_and_shots(home: Path) -> tuple[list[Part], list[Shot]]:
    db = open_database(f"sqlite:///{home / 'data/station.db'}")
    try:
        with db.session() as s:
            parts = list(s.scalars(select(Part).order_by(Part.sequence)))
            shots = list(s.scalars(select(Shot).order_by(Shot.id)))
            return parts, shots
    finally:
        db.dispose()


def watch_worlds(monkeypatch: pytest.MonkeyPatch) -> list:
    """The twin worlds `run_capture` makes from now on, to read the sheet on the table."""
    from station.inspection import capture as capture_mod
    from station.twin.world import TwinWorld

    worlds: list[TwinWorld] = []

    class Watched(TwinWorld):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            worlds.append(self)

    monkeypatch.setattr(capture_mod, "TwinWorld", Watched)
    return worlds


def pngs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if ".staging" not in p.parts)


@pytest.mark.slow
def test_capture_five_good_parts(station_home: Path) -> None:
    set_twin(station_home)
    main(["capture", "--recipe", "glassfiber", "--count", "5"])
    data = station_home / "data"
    ds = data / "glassfiber/dataset"
    files = pngs(ds)
    assert len(files) == 15 and all(f.parent == ds / "train/good" for f in files)
    assert files[0].name == "p000001_centre.png"
    parts, shots = parts_and_shots(station_home)
    assert [p.sequence for p in parts] == [1, 2, 3, 4, 5]
    assert all(p.mode == "capture" and p.ground_truth == "good" for p in parts)
    assert all(p.line_part_id and p.finished_at is not None for p in parts)
    assert len(shots) == 15
    for shot in shots:
        path = data / shot.image_path
        assert not Path(shot.image_path).is_absolute() and path.is_file()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shot.image_sha256
        assert (shot.width, shot.height) == (640, 512) and shot.mask_path is None
        assert len(shot.robot_pose) == 6 and shot.camera_settings["exposure_us"] == 8000
    first = sorted((s for s in shots if s.part_id == parts[0].id), key=lambda s: s.pose_index)
    assert [s.pose_name for s in first] == ["left", "centre", "right"]
    meta = json.loads((ds / "meta/p000001.json").read_text())
    assert meta["ground_truth"] == "good" and len(meta["shots"]) == 3
    assert meta["shots"][0]["robot_pose"][2] == pytest.approx(350, abs=0.2)
    assert meta["simulated_cycle_s"] > 1.0  # robot and line timing ran (without waiting)


def test_a_good_capture_puts_only_good_sheets_on_the_table(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Good sheets train the detectors: even where every sheet of the twin is defective, the
    good capture's sheets carry no defect."""
    set_twin(station_home, defect_rate=1.0)
    worlds = watch_worlds(monkeypatch)
    seen: list[list] = []
    run_capture(load_recipe("glassfiber"), 3, label="good",
                on_shot=lambda _seq, _pose: seen.append(worlds[0].sheet_truth()))
    assert len(seen) == 9 and all(truth == [] for truth in seen)


@pytest.mark.slow
def test_capture_labelled_sorts_shots_by_ground_truth(station_home: Path) -> None:
    set_twin(station_home, defect_rate=0.6)
    main(["capture", "--recipe", "glassfiber", "--count", "6", "--label", "labelled",
          "--seed", "3"])
    data = station_home / "data"
    ds = data / "glassfiber/dataset"
    defect = sorted((ds / "test/defect").glob("*.png"))
    good = sorted((ds / "test/good").glob("*.png"))
    assert defect and good and len(defect) + len(good) == 18
    assert not (ds / "train").exists()
    for f in defect:
        mask = cv2.imread(str(ds / "ground_truth/defect" / f"{f.stem}_mask.png"), 0)
        assert mask is not None and mask.shape == (512, 640) and (mask > 0).any()
        assert set(mask.ravel().tolist()) <= {0, 255}
    assert len(list((ds / "ground_truth/defect").glob("*.png"))) == len(defect)
    parts, shots = parts_and_shots(station_home)
    by_part: dict[int, list[Shot]] = {}
    for s in shots:
        by_part.setdefault(s.part_id, []).append(s)
        assert (s.mask_path is not None) == ("/test/defect/" in s.image_path)
        if s.mask_path:
            assert (data / s.mask_path).is_file()
    for p in parts:
        has_defect = any(s.mask_path for s in by_part[p.id])
        assert p.ground_truth == ("defect" if has_defect else "good")
    meta = json.loads((ds / f"meta/p{parts[0].sequence:06d}.json").read_text())
    assert "defects" in meta["twin"]


@pytest.mark.slow
def test_rerun_continues_numbering_without_overwriting(station_home: Path) -> None:
    set_twin(station_home)
    main(["capture", "--recipe", "glassfiber", "--count", "2"])
    ds = station_home / "data/glassfiber/dataset/train/good"
    first = {p.name: p.read_bytes() for p in ds.glob("*.png")}
    main(["capture", "--recipe", "glassfiber", "--count", "2"])
    parts, _ = parts_and_shots(station_home)
    assert [p.sequence for p in parts] == [1, 2, 3, 4]
    assert {p.name: p.read_bytes() for p in ds.glob("p00000[12]_*.png")} == first
    assert len(list(ds.glob("*.png"))) == 12
    # files on disk without a database row (e.g. the run died in between) are not overwritten
    (ds / "p000009_left.png").write_bytes(b"not really a png")
    main(["capture", "--recipe", "glassfiber", "--count", "1"])
    parts, _ = parts_and_shots(station_home)
    assert parts[-1].sequence == 10


@pytest.mark.slow
def test_fault_mid_capture_keeps_earlier_parts(station_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # each part: home, 3 poses, home = 5 moves; the 11th move (part 3) stops the robot
    set_twin(station_home, params={"faults": {"protective_stop": {"after": 10}}})
    with pytest.raises(SystemExit) as ei:
        main(["capture", "--recipe", "glassfiber", "--count", "5"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "protective stop" in err and "2 of 5 parts" in err and "Traceback" not in err
    parts, shots = parts_and_shots(station_home)
    assert [p.sequence for p in parts] == [1, 2] and len(shots) == 6
    ds = station_home / "data/glassfiber/dataset"
    assert len(pngs(ds)) == 6 and not (ds / ".staging").exists()
    set_twin(station_home, params={})
    main(["capture", "--recipe", "glassfiber", "--count", "1"])
    parts, _ = parts_and_shots(station_home)
    assert [p.sequence for p in parts] == [1, 2, 3]


@pytest.mark.slow
def test_camera_failure_is_one_clear_error(station_home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    set_twin(station_home, params={"faults": {"camera_timeout": {"after": 4}}})
    with pytest.raises(SystemExit) as ei:
        main(["capture", "--recipe", "glassfiber", "--count", "3"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "camera" in err and "1 of 3 parts" in err
    parts, _ = parts_and_shots(station_home)
    assert len(parts) == 1


@pytest.mark.slow
def test_interrupt_mid_part_leaves_no_partial_part(station_home: Path) -> None:
    set_twin(station_home)
    recipe = load_recipe("glassfiber")
    calls: list[tuple[int, str]] = []

    def on_shot(seq: int, pose: str) -> None:
        calls.append((seq, pose))
        if seq == 2 and pose == "centre":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_capture(recipe, 3, on_shot=on_shot)
    ds = recipe.dataset_dir
    assert [p.name for p in pngs(ds)] == [
        "p000001_centre.png", "p000001_left.png", "p000001_right.png"]
    assert not (ds / ".staging").exists()
    parts, _ = parts_and_shots(station_home)
    assert [p.sequence for p in parts] == [1]


def test_labelled_needs_the_simulated_camera(station_home: Path) -> None:
    path = station_home / "recipes/glassfiber.yaml"
    data = yaml.safe_load(path.read_text())
    data["camera"]["driver"] = "pylon"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StationError, match="ground truth") as err:
        run_capture(load_recipe("glassfiber"), 1, label="labelled")
    assert "--label test-good and --label test-defect" in (err.value.hint or "")
    with pytest.raises(StationError, match="not known"):
        run_capture(load_recipe("glassfiber"), 1, label="maybe")


@pytest.mark.slow
def test_sheets_the_operator_knows_go_to_the_test_split(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test-good and test-defect: held out for thresholds, labelled by the operator's word (no
    masks); on the twin the sheets are made so, whatever its defect rate."""
    set_twin(station_home, defect_rate=0.5)
    worlds = watch_worlds(monkeypatch)
    truths: dict[str, list[list]] = {"test-good": [], "test-defect": []}
    for label, seen in truths.items():
        worlds.clear()
        def keep(_seq: int, _pose: str, seen: list[list] = seen) -> None:
            seen.append(worlds[0].sheet_truth())  # the sheet on the table at each shot

        run_capture(load_recipe("glassfiber"), 3, label=label, on_shot=keep)
    assert all(t == [] for t in truths["test-good"])
    assert all(t != [] for t in truths["test-defect"])
    ds = station_home / "data/glassfiber/dataset"
    assert len(list((ds / "test/good").glob("*.png"))) == 9
    assert len(list((ds / "test/defect").glob("*.png"))) == 9
    assert not (ds / "ground_truth").exists() and not (ds / "train").exists()
    parts, _ = parts_and_shots(station_home)
    assert [p.ground_truth for p in parts] == ["good"] * 3 + ["defect"] * 3


def test_out_folder_and_unlabelled(station_home: Path, tmp_path: Path) -> None:
    set_twin(station_home, defect_rate=1.0)
    out = tmp_path / "elsewhere"
    res = run_capture(load_recipe("glassfiber"), 1, label="unlabelled", out=out)
    assert res.shots == 3 and len(list((out / "unlabelled").glob("*.png"))) == 3
    assert not (out / "ground_truth").exists()
    parts, shots = parts_and_shots(station_home)
    assert parts[0].ground_truth is None
    assert all(Path(s.image_path).is_absolute() and Path(s.image_path).is_file() for s in shots)


@pytest.mark.slow
def test_capture_counts_clipped_shots_and_warns(station_home: Path, capsys) -> None:  # noqa: ANN001
    """Over-exposed shots are counted and the command says to lower the exposure; a dim
    exposure clips nothing and says nothing."""
    set_twin(station_home)
    path = station_home / "recipes/glassfiber.yaml"
    for exposure, clipped in ((60000, True), (2000, False)):
        data = yaml.safe_load(path.read_text())
        data["camera"]["exposure_us"] = exposure
        path.write_text(yaml.safe_dump(data))
        main(["capture", "--recipe", "glassfiber", "--count", "1"])
        out = " ".join(capsys.readouterr().out.split())
        assert ("3 of 3 shots have clipped pixels" in out) is clipped, out
        assert ("lower camera.exposure_us" in out) is clipped


def test_a_negative_seed_is_one_clear_error(station_home: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """numpy refuses a negative seed deep in the twin: refused up front, before any shot."""
    with pytest.raises(SystemExit) as ei:
        main(["capture", "--recipe", "glassfiber", "--seed", "-1"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "--seed -1 must be 0 or more" in err and "Traceback" not in err
    assert not (station_home / "data").exists()


def test_captured_sheets_are_never_the_ones_a_live_run_brings(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The twin's live line brings sheet k from (twin.seed, k). A capture without --seed draws
    sheet `seq` from (twin.seed + CAPTURE_SEED_OFFSET, seq), so no live sheet is one the
    detector was trained or calibrated on. (Until 2026-12-07 both drew from twin.seed: the
    demo's live good sheets were its training sheets.)"""
    from station.twin import CAPTURE_SEED_OFFSET
    from station.twin.world import TwinWorld, derive_seed

    set_twin(station_home)
    main(["capture", "--recipe", "glassfiber", "--count", "2"])
    recipe = load_recipe("glassfiber")
    ds = station_home / "data/glassfiber/dataset"
    captured = [json.loads((ds / f"meta/p{k:06d}.json").read_text())["twin"]["sheet_seed"]
                for k in (1, 2)]
    world = TwinWorld(recipe)  # as station inspect --live makes it
    live = [world.next_sheet()[0].seed for _ in range(20)]
    assert not set(captured) & set(live)
    assert captured == [derive_seed(recipe.twin.seed + CAPTURE_SEED_OFFSET, k) for k in (1, 2)]
    # --seed twin.seed draws the live line's sheets again: said, not refused
    main(["capture", "--recipe", "glassfiber", "--count", "1", "--seed", str(recipe.twin.seed)])
    err = " ".join(capsys.readouterr().err.split())
    assert f"--seed {recipe.twin.seed} is twin.seed: these are the sheets station inspect" in err


def test_a_writer_taking_part_numbers_meanwhile_never_shares_one(station_home: Path) -> None:
    """An offline inspection logging parts while a capture runs: each captured part keeps the
    number its files are named by (before, the capture crashed on a taken number with its
    files already in place and no row)."""
    set_twin(station_home)
    recipe = load_recipe("glassfiber")
    other = open_database(recipe.storage.resolved_database_url())

    def on_shot(seq: int, pose: str) -> None:
        if pose == "centre":  # another program logs a part of the same recipe
            other.create_part(recipe.name, mode="offline")

    try:
        result = run_capture(recipe, 2, on_shot=on_shot)
    finally:
        other.dispose()
    parts, shots = parts_and_shots(station_home)
    captured = [p.sequence for p in parts if p.mode == "capture"]
    assert captured == result.sequences == [1, 3]
    assert [p.sequence for p in parts if p.mode == "offline"] == [2, 4]
    named = {p.name.split("_")[0] for p in pngs(recipe.dataset_dir)}
    assert named == {"p000001", "p000003"} and len(shots) == 6
    seq_of = {p.id: p.sequence for p in parts}
    assert all(sh.image_path.split("/")[-1].startswith(f"p{seq_of[sh.part_id]:06d}_")
               for sh in shots)


def test_a_capture_refuses_a_camera_other_than_the_calibrated_one(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a live run: the sheets' placement is found through the cell calibration, which is
    the calibrated camera's own."""
    import dataclasses as dc

    from station.cellcal.store import inspection_camera
    from station.errors import CellCalibrationError
    from station.inspection import capture as capture_mod

    set_twin(station_home)
    recipe = load_recipe("glassfiber")
    made = dc.replace(inspection_camera(recipe), calibrated=True, camera_serial="0815-0001")
    monkeypatch.setattr(capture_mod, "inspection_camera", lambda _recipe: made)
    with pytest.raises(CellCalibrationError, match="made with camera 0815-0001"):
        run_capture(recipe, 1)
    parts, _ = parts_and_shots(station_home)
    assert parts == [] and pngs(recipe.dataset_dir) == []
