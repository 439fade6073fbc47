"""Offline inspection of stored images: grouping, verdicts, records, pipelining on and off."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import select
from test_inspection_support import bright_set, database, sheet, small_recipe

from station.imaging import write_png
from station.inspection.cycle import Inspector
from station.inspection.offline import group_offline
from station.inspection.recorder import Recorder
from station.inspection.results import Event
from station.storage.models import Part, Verdict


def _layout(root: Path) -> list[Path]:
    """Capture layout: one good part, one defective part (defect on `centre`), one loose file
    (no part of a three-pose recipe: a fault)."""
    for pose in ("right", "left", "centre"):
        write_png(root / "test/good" / f"p000001_{pose}.png", sheet(False))
        write_png(root / "test/defect" / f"p000002_{pose}.png", sheet(pose == "centre"))
    write_png(root / "loose.png", sheet(True))
    return [root / "test", root / "loose.png"]


def test_grouping_follows_capture_stems(station_home: Path, tmp_path: Path) -> None:
    recipe = small_recipe(station_home)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    keyed = {g.key.rsplit("/", 1)[-1]: g for g in groups}
    assert set(keyed) == {"p000001", "p000002", "loose.png"}
    assert [p for p, _ in keyed["p000002"].shots] == ["left", "centre", "right"]  # recipe order
    assert keyed["p000001"].ground_truth == "good" and keyed["p000002"].ground_truth == "defect"
    loose = keyed["loose.png"]
    assert loose.ground_truth is None and loose.shots == []
    assert loose.missing == ["left", "centre", "right"]
    assert "p<sequence>_<pose>.png" in loose.problem


@pytest.mark.parametrize("pipelined", [True, False])
def test_offline_verdicts_and_records(station_home: Path, tmp_path: Path, pipelined: bool) -> None:
    recipe = small_recipe(station_home)
    db = database(recipe)
    dets = bright_set(recipe)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    (bad := tmp_path / "broken.png").write_bytes(b"not a png")
    groups += group_offline([bad], recipe)
    events = []
    with Inspector(
        recipe, dets, Recorder(db, recipe), pipelined=pipelined, on_event=events.append
    ) as insp:
        summary = insp.run_offline(groups)
    verdicts = [r.verdict for r in summary.results]
    # test/defect sorts before test/good; the loose image is no part of a three-pose recipe
    assert verdicts == [Verdict.FAIL, Verdict.PASS, Verdict.FAULT, Verdict.FAULT]
    assert summary.counts == {"pass": 1, "fail": 1, "fault": 2}
    assert "loose.png is not named for a pose" in summary.results[2].reason
    fail = summary.results[0]
    assert fail.normalized["brightspot"] > 1.0 and "centre" in fail.reason
    assert summary.results[3].fault.kind == "input" and "broken.png" in summary.results[3].reason
    assert sum(e.kind == "part_finished" for e in events) == 4
    assert dets.detectors[0].detector.threads == {"inference_0"}

    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.verdict for r in rows] == verdicts
        assert all(r.mode == "offline" for r in rows)
        defect, good = rows[0], rows[1]
        assert good.ground_truth == "good" and defect.ground_truth == "defect"
        assert [s_.pose_name for s_ in defect.shots] == ["left", "centre", "right"]
        for shot in defect.shots:
            assert (recipe.data_dir.parent / shot.image_path).is_file()
            (d,) = shot.detections
            assert (recipe.data_dir.parent / d.heatmap_path).is_file()
            assert d.threshold == pytest.approx(0.3)
        t = defect.timings_ms
        assert t["inference"] > 0 and t["cycle"] > 0 and t["motion"] == 0
        assert defect.model_versions == {"brightspot": "brightspot-test-1"}
        assert rows[3].shots == [] and rows[2].shots == []  # neither file became a shot


@pytest.mark.slow
@pytest.mark.postgres
def test_offline_on_postgres(station_home: Path, tmp_path: Path, fresh_postgres_url: str) -> None:
    recipe = small_recipe(
        station_home, storage={"database_url": fresh_postgres_url, "data_dir": "data"}
    )
    db = database(recipe)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    with Inspector(recipe, bright_set(recipe), Recorder(db, recipe)) as insp:
        summary = insp.run_offline(groups)
    assert [r.verdict for r in summary.results] == [Verdict.FAIL, Verdict.PASS, Verdict.FAULT]
    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.sequence for r in rows] == [1, 2, 3]
        assert [len(r.shots) for r in rows] == [3, 3, 0]
    db.dispose()


def test_live_view_shows_counts_scores_and_breakdown(station_home: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from station.inspection.live_view import LiveView

    recipe = small_recipe(station_home)
    view = LiveView("station inspect: test", "pipelined")
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    groups.append(groups.pop(0))  # the defective sheet last, after the loose image's fault
    with Inspector(
        recipe, bright_set(recipe), Recorder(database(recipe), recipe), on_event=view.handle
    ) as insp:
        summary = insp.run_offline(groups)
    view.handle(Event("message", "camera: timeout", level="error"))
    console = Console(width=120, record=True, color_system=None)
    console.print(view.render())
    text = console.export_text()
    last = summary.results[-1]
    assert "parts 3" in text and "pass 1" in text and "fail 1" in text and "fault 1" in text
    assert f"last: part {last.sequence}" in text and "FAIL" in text
    assert "brightspot" in text and "0.3" in text  # the threshold beside the score
    for key in ("motion", "exposure", "inference", "logging", "wait", "cycle"):
        assert key in text
    assert "camera: timeout" in text


def _inspect(recipe, paths: list[Path]) -> list:  # noqa: ANN001
    with Inspector(recipe, bright_set(recipe), Recorder(database(recipe), recipe)) as insp:
        return insp.run_offline(group_offline(paths, recipe)).results


def test_a_loose_image_is_a_part_only_on_a_one_pose_recipe(
    station_home: Path, tmp_path: Path
) -> None:
    """The rule: a part is one p<sequence>_<pose> image per recipe pose; on a one-pose recipe
    any other name is that pose."""
    write_png(loose := tmp_path / "sheet42.png", sheet(False))
    three = small_recipe(station_home)
    (r,) = _inspect(three, [loose])
    assert r.verdict is Verdict.FAULT and r.fault.kind == "input"
    assert r.reason == (
        "image sheet42.png is not named for a pose, and recipe glassfiber shoots 3: missing "
        "left, centre, right (name a part's images p<sequence>_<pose>.png, one per pose: "
        "left, centre, right)"
    )
    write_png(tmp_path / "named" / "p000042_left.png", sheet(False))  # the same file, as a pose
    (r,) = _inspect(three, [tmp_path / "named"])
    assert r.verdict is Verdict.FAULT and "no image of pose(s) centre, right" in r.reason

    robot = yaml.safe_load((station_home / "recipes" / "small.yaml").read_text())["robot"]
    robot["poses"] = robot["poses"][1:2]
    one = small_recipe(station_home, robot=robot)
    (g,) = group_offline([loose], one)
    assert g.shots == [("centre", loose)] and g.problem is None and g.missing == []
    (r,) = _inspect(one, [loose])
    assert r.verdict is Verdict.PASS


def test_a_folder_without_images_is_named_with_the_suffixes_looked_for(
    station_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main

    (empty := tmp_path / "empty").mkdir()
    write_png(empty / "sub" / "p1_left_mask.png", np.zeros((8, 8), np.uint8))  # a mask only
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(empty)])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[0] == (
        f"error: folder {empty} holds no images (no .png, .jpg, .jpeg, .bmp, .tif or .tiff "
        "file there or in sub-folders, *_mask files aside)"
    ), err


def test_unknown_and_repeated_poses_are_faults(station_home: Path, tmp_path: Path) -> None:
    recipe = small_recipe(station_home)
    for name in ("p1_left", "p1_centre", "p1_right", "p1_top", "p2_left", "p2_centre"):
        write_png(tmp_path / "a" / f"{name}.png", sheet(False))
    write_png(tmp_path / "a" / "p2_centre.jpg", sheet(False))
    write_png(tmp_path / "a" / "p2_right.png", sheet(False))
    one, two = _inspect(recipe, [tmp_path / "a"])
    assert one.verdict is Verdict.FAULT
    assert "images of pose(s) top that recipe glassfiber does not have" in one.reason
    assert two.verdict is Verdict.FAULT and "more than one image of pose(s) centre" in two.reason


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        ((sheet(False).astype(np.uint16) << 8), "16-bit grey"),
        (np.repeat(sheet(False)[:, :, None], 3, axis=2), "8-bit colour"),
    ],
)
def test_only_the_recipe_pixel_format_is_accepted(
    station_home: Path, tmp_path: Path, image: np.ndarray, kind: str
) -> None:
    recipe = small_recipe(station_home)  # Mono8, 64 x 48
    folder = tmp_path / "shots"
    folder.mkdir()
    for pose in ("left", "centre", "right"):
        img = image if pose == "centre" else sheet(False)
        cv2.imwrite(str(folder / f"p000001_{pose}.png"), img)  # as written, any depth
    (r,) = _inspect(recipe, [folder])
    assert r.verdict is Verdict.FAULT and r.fault.kind == "input"
    assert r.reason == (
        f"image {folder}/p000001_centre.png is {kind}; the recipe's camera (Mono8) takes "
        "8-bit grey images"
    )
    colour = small_recipe(station_home, camera__pixel_format="RGB8")
    (r,) = _inspect(colour, [folder])
    assert "p000001_left.png is 8-bit grey; the recipe's camera (RGB8) takes 8-bit colour" in (
        r.reason
    )


def test_a_part_without_a_row_is_named_by_its_line_id() -> None:
    """A part decided while the database could not take its row has no sequence number: the
    operator's line names the sheet the line gave it, never "part None"."""
    from station.inspection.live_view import part_label
    from station.inspection.results import PartResult

    def result(sequence: int | None, line_id: str | None) -> PartResult:
        return PartResult(sequence, None, "live", Verdict.FAULT, "disk full", None, {}, {}, {},
                          {}, None, line_part_id=line_id)

    assert part_label(result(12, "ur-1")) == "12"
    assert part_label(result(None, "ur-20261203T150543729-0003")) == "ur-20261203T150543729-0003"
    assert part_label(result(None, None)) == "?"


def test_a_part_with_an_unseen_region_is_not_inspected(station_home: Path, tmp_path: Path) -> None:
    """A region the shots leave a gap in (here 40 x 30 mm seen by three 6 x 5 mm views): each
    part is faulted as not inspected, naming the gap and the fix, and stored as a reject;
    never passed on what the shots happened to see."""
    recipe = small_recipe(station_home, coverage={"region_mm": [-20, -15, 20, 15], "partial": True})
    db = database(recipe)
    groups = group_offline([_layout(tmp_path / "ds")[0]], recipe)
    with Inspector(recipe, bright_set(recipe), Recorder(db, recipe)) as insp:
        results = insp.run_offline(groups).results
    assert [r.verdict for r in results] == [Verdict.FAULT, Verdict.FAULT]
    for r in results:
        assert "not inspected:" in r.reason and "seen by no shot" in r.reason, r.reason
        assert f"station plan-poses --recipe {recipe.name}" in r.reason
        assert r.fault is not None and "station recipe check" in r.fault.action
        assert "exposure" not in r.fault.action  # a gap is not glare
    with db.session() as s:
        assert [p.verdict for p in s.scalars(select(Part))] == [Verdict.FAULT, Verdict.FAULT]


def test_a_bug_in_the_sheet_map_faults_the_part_and_stops(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while the sheet map is checked is an internal fault: the part is
    recorded as a reject and the run stops, rather than the error escaping mid-part."""
    from station.geometry.sheet_map import SheetMap

    def boom(self: SheetMap) -> list:
        raise RuntimeError("boom")

    monkeypatch.setattr(SheetMap, "unseen_regions", boom)
    recipe = small_recipe(station_home)
    db = database(recipe)
    groups = group_offline([_layout(tmp_path / "ds")[0]], recipe)
    with Inspector(recipe, bright_set(recipe), Recorder(db, recipe)) as insp:
        summary = insp.run_offline(groups)
    (result,) = summary.results  # the second part is not started
    assert result.verdict is Verdict.FAULT
    assert result.reason == "internal error: RuntimeError: boom"
    assert "internal error: RuntimeError: boom" in summary.stopped_reason
    with db.session() as s:
        assert [p.verdict for p in s.scalars(select(Part))] == [Verdict.FAULT]


def test_sheet_map_decides_and_is_recorded(station_home: Path, tmp_path: Path) -> None:
    """combine_poses sheet_map: the part's score is its fused sheet map's peak; the map, the
    footprints and the defect region (where the white square lies on the table) are stored."""
    recipe = small_recipe(
        station_home, decision={"combine_poses": "sheet_map", "sheet_map_mm_per_px": 0.1}
    )
    db = database(recipe)
    groups = group_offline([_layout(tmp_path / "ds")[0]], recipe)
    with Inspector(recipe, bright_set(recipe), Recorder(db, recipe)) as insp:
        assert insp.camera.source.startswith("exact")  # the twin's camera: the nominal one
        fail, good = insp.run_offline(groups).results
    assert (fail.verdict, good.verdict) == (Verdict.FAIL, Verdict.PASS)
    assert "sheet map peak" in fail.reason
    assert fail.scores["brightspot"] == pytest.approx(fail.sheet.peaks["brightspot"])
    (defect,) = fail.sheet.defects
    # the square's centre pixel (26.5, 15.5) of the centre shot, 0.1006 mm/px from 350 mm
    k = 350.0 / (12000 / 3.45)
    at = (400.0 + (26.5 - 31.5) * k, -(15.5 - 23.5) * k)
    assert np.hypot(defect.centre_mm[0] - at[0], defect.centre_mm[1] - at[1]) < 0.2
    assert defect.shots == ("centre",) and defect.peak > 1.0
    assert 0.5 < defect.area_mm2 < 4.0  # 1.4 x 1.2 mm, grown by the max over a cell
    assert good.sheet.defects == [] and good.sheet.unseen_mm2 == 0  # the centre view's region
    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        row = rows[0]
        assert row.sheet_map_fusion == "max" and row.sheet_map_camera.startswith("exact")
        assert (recipe.data_dir.parent / row.sheet_map_path).is_file()
        assert [(d.detector, d.shots) for d in row.sheet_defects] == [("brightspot", ["centre"])]
        assert all(len(sh.footprint_mm) == 4 for sh in row.shots)
        assert rows[1].sheet_defects == [] and rows[1].sheet_map_path is not None
