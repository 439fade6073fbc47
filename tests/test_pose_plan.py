"""Pose planning (station.geometry.pose_plan) and `station plan-poses`."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cellcal import run  # the CLI in-process: (exit code, stdout, stderr)

from station.errors import RecipeError
from station.geometry import coverage as cov
from station.geometry import pose_plan as pp
from station.recipe import Pose, Recipe, card_pose, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "recipes" / "glassfiber.yaml").read_text()


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """`folder` cannot be written in, for this process too: read-only for a user, immutable
    (chattr +i) for root, whom permissions do not stop."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(mode & ~0o222)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip(f"cannot make {folder} immutable with chattr +i here (needs root)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _recipe(edit=None) -> Recipe:  # noqa: ANN001
    """The shipped recipe, edited, read for planning (its poses file is not needed)."""
    data = yaml.safe_load(SHIPPED)
    data["robot"]["poses_file"] = "nosuch.poses.yaml"
    if edit is not None:
        edit(data)
    return parse_recipe(yaml.safe_dump(data), "test.yaml", planning=True)


def test_move_time_is_trapezoidal_or_triangular() -> None:
    # 250 mm/s, 1200 mm/s²: full speed after 52 mm of ramps
    assert pp.move_s(500, 250, 1200) == pytest.approx(500 / 250 + 250 / 1200)
    assert pp.move_s(20, 250, 1200) == pytest.approx(2 * math.sqrt(20 / 1200))
    assert pp.move_s(0, 250, 1200) == 0.0
    knee = 250**2 / 1200  # both formulas meet there
    assert pp.move_s(knee, 250, 1200) == pytest.approx(2 * math.sqrt(knee / 1200))


def test_the_reference_card_detour_is_counted_per_part() -> None:
    """The card's detour: last pose -> card -> home instead of last pose -> home, plus its
    settle, averaged over every_parts; nothing when the card is off."""
    rec = load_recipe("glassfiber")
    r = rec.robot
    card = card_pose(rec)

    def move(a: Pose, b: Pose) -> float:
        d = float(np.linalg.norm(np.subtract(b.position_mm, a.position_mm)))
        return pp.move_s(d, r.speed_mm_s, r.acceleration_mm_s2)

    want = move(r.poses[-1], card) + move(card, r.home) - move(r.poses[-1], r.home) + r.settle_s
    assert pp.card_extra_s(rec) == pytest.approx(want) and want > 0.5

    def with_reference(**ref: object) -> Recipe:
        data = yaml.safe_load(SHIPPED)
        data["monitoring"]["drift"]["reference"].update(ref)
        edited = parse_recipe(yaml.safe_dump(data), "test.yaml", planning=True)
        return edited.model_copy(update={"robot": r})  # the shipped poses

    assert pp.card_extra_s(with_reference(every_parts=4)) == pytest.approx(want / 4)
    assert pp.card_extra_s(with_reference(enabled=False)) == 0.0


def test_shipped_plan_covers_the_sheet_at_the_resolution() -> None:
    r = _recipe()
    p = pp.plan(r)
    assert p.height_mm == 579  # floor(0.25 mm/px * 8 mm / 3.45 um)
    assert p.grid == (3, 3) and len(p.poses) == 9
    assert p.report.problems == [] and p.report.raster.percent == 100.0
    assert min(p.overlap) >= r.coverage.overlap
    assert p.report.detector_mm_px <= 0.25
    # serpentine: rows along x, every other row reversed, rows in y order
    xs = [q.position_mm[0] for q in p.poses]
    ys = [q.position_mm[1] for q in p.poses]
    assert xs[:3] == sorted(xs[:3]) and xs[3:6] == sorted(xs[3:6], reverse=True)
    assert ys[0] == ys[2] < ys[3] == ys[5] < ys[6] == ys[8]
    assert all(q.rotvec_rad == r.robot.home.rotvec_rad for q in p.poses)
    # the raster spans the region grown by the view margin exactly: the outer footprints
    # reach that far past the region's edges
    m = r.coverage.view_margin_mm
    assert m == 8.0
    prints = np.array([f for f in p.report.footprints if f is not None])
    x0, y0, x1, y1 = p.report.region
    assert prints[:, :, 0].min() == pytest.approx(x0 - m, abs=0.02)
    assert prints[:, :, 0].max() == pytest.approx(x1 + m, abs=0.02)
    assert prints[:, :, 1].min() == pytest.approx(y0 - m, abs=0.02)
    assert prints[:, :, 1].max() == pytest.approx(y1 + m, abs=0.02)
    # motion: home -> 9 poses -> home, each move by the trapezoid, settle per shot
    stops = [r.robot.home.position_mm, *(q.position_mm for q in p.poses), r.robot.home.position_mm]
    moves = sum(
        pp.move_s(math.dist(a, b), 250, 1200) for a, b in zip(stops, stops[1:], strict=False)
    )
    assert p.motion.total_s == pytest.approx(moves + 9 * 0.15)


def test_overlap_and_camera_height_are_honoured() -> None:
    p = pp.plan(_recipe(), overlap=0.6)
    assert min(p.overlap) >= 0.6 and len(p.poses) > 9
    low = pp.plan(
        _recipe(
            lambda d: (
                d["coverage"].update(camera_height_mm=450)
                or d["camera"]["lens"].update(focus_distance_mm=450)
            )
        )
    )
    assert low.height_mm == 450 and "camera_height_mm" in low.height_from
    assert low.report.raster.percent == 100.0 and low.report.problems == []
    whole = pp.plan(
        _recipe(
            lambda d: (
                d["preprocess"]["tiling"].update(enabled=False)
                or d["camera"]["lens"].update(focus_distance_mm=231)
            )
        )
    )
    assert whole.height_mm == 231  # the 2.5x resize asks for a camera 2.5x closer
    assert whole.report.problems == [] and whole.report.raster.percent == 100.0


def test_view_margin_moves_the_sheet_edge_off_the_shot_border() -> None:
    """With no margin the outer footprints end on the region's edge (the sheet's edge then
    lies at the shot's border); a margin pushes them out by that much, more shots where the
    overlap would otherwise fall below coverage.overlap, and still covers the region."""

    def margin(mm: float, sheet: tuple[float, float]):  # noqa: ANN202
        return _recipe(lambda d: d["coverage"].update(view_margin_mm=mm)
                       or d["sheet"].update(width_mm=sheet[0], height_mm=sheet[1]))  # fmt: skip

    for sheet, grids in (((264, 204), [(2, 2), (2, 2)]), ((280, 220), [(2, 2), (3, 3)])):
        for mm, grid in zip((0.0, 8.0), grids, strict=True):
            p = pp.plan(margin(mm, sheet))
            prints = np.array([f for f in p.report.footprints if f is not None])
            x0, y0, x1, y1 = p.report.region
            assert p.grid == grid
            assert prints[:, :, 0].min() == pytest.approx(x0 - mm, abs=0.02)
            assert prints[:, :, 1].max() == pytest.approx(y1 + mm, abs=0.02)
            assert p.report.raster.percent == 100.0
            # with no margin the table beside the sheet is unseen: no placement check there
            said = [q.split(":")[0] for q in p.report.problems]
            assert said == ([] if mm else ["sheet.check_placement"])
            assert min(p.overlap) >= 0.15
    with pytest.raises(RecipeError, match="view_margin_mm"):
        margin(-1.0, (300, 300))


def test_height_is_lowered_until_every_pose_is_reachable() -> None:
    r = _recipe(
        lambda d: (
            d["robot"].update(reach_mm=720) or d["camera"]["lens"].update(focus_distance_mm=540)
        )
    )
    p = pp.plan(r)
    assert p.height_mm < 579 and p.height_mm % pp.HEIGHT_STEP_MM == 0
    assert "lowered from 579 mm" in p.height_from
    assert max(cov.reach_distance(q, r.robot) for q in p.poses) <= 720
    assert p.report.problems == [] and p.report.raster.percent == 100.0


def _refusal(recipe_edit=None, overlap: float | None = None) -> str:  # noqa: ANN001
    with pytest.raises(RecipeError) as info:
        pp.plan(_recipe(recipe_edit), overlap)
    (problem,) = info.value.problems
    return problem


def test_bad_input_gets_one_line_naming_field_and_fix() -> None:
    far = _refusal(lambda d: d["sheet"].update(center_mm=[700.0, 0.0]))
    assert far.startswith("robot.reach_mm: the region x 545..855, y -155..155 mm puts the flange")
    assert "move sheet.center_mm (700, 0) closer to the robot, shrink coverage.region_mm" in far
    assert _refusal(overlap=1.0).startswith(
        "coverage.overlap (--overlap): 1 must be at least 0 and below 1"
    )
    focus = _refusal(lambda d: d["camera"]["lens"].update(min_focus_distance_mm=600.0))
    assert focus.startswith(
        "coverage.smallest_defect_mm: 2 mm at 8 px needs the camera within "
        "579 mm of the sheet, closer than the lens focuses "
        "(camera.lens.min_focus_distance_mm 600)"
    )
    blurred = _refusal(lambda d: d["camera"]["lens"].update(focus_distance_mm=350.0))
    assert blurred.startswith("camera.lens.focus_distance_mm: 350 mm keeps ")
    assert "set focus_distance_mm: 579" in blurred
    closer = _refusal(lambda d: d["coverage"].update(camera_height_mm=90))
    assert closer.startswith(
        "camera.lens.min_focus_distance_mm: the lens focuses no closer than "
        "100 mm, not at coverage.camera_height_mm 90"
    )
    tiny = _refusal(
        lambda d: d["coverage"].update(smallest_defect_mm=0.1)
        or d["decision"].update(sheet_map_mm_per_px=0.05)
    )
    assert tiny.startswith(
        "coverage.smallest_defect_mm: 0.1 mm at 8 px needs the camera within 28 mm"
    )
    assert "camera.lens.focal_length_mm" in tiny
    high = _refusal(lambda d: d["coverage"].update(camera_height_mm=700))
    assert high.startswith("coverage.camera_height_mm: 700 mm is too high to resolve 2 mm")
    tilted = _refusal(lambda d: d["robot"]["home"].update(rotvec_rad=[0.0, 0.0, 0.0]))
    assert tilted.startswith("robot.home.rotvec_rad: the planned shots take the home pose's")


def test_plan_poses_writes_the_file_the_recipe_reads(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poses = station_home / "recipes" / "glassfiber.poses.yaml"
    shipped = poses.read_text()
    poses.unlink()  # plan-poses writes it from nothing
    code, out, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--out", "plan.png")
    assert code == 0, err
    assert f"wrote 9 poses to {poses}" in out
    assert "height 579 mm (from the resolution, 0.250 mm/px)" in out
    assert "coverage 100.0 % of the region" in out and "motion per sheet ~" in out
    assert poses.read_text() == shipped  # the shipped file is this command's output
    assert poses.read_text().startswith("# Generated by `station plan-poses --recipe glassfiber`")
    png = (station_home / "plan.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert [p.name for p in load_recipe("glassfiber").robot.poses][:3] == ["r1c1", "r1c2", "r1c3"]
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 0 and "coverage 100.0 %" in out, err


def test_plan_poses_refuses_inline_poses_and_bad_overlap(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(SHIPPED)
    data["robot"].pop("poses_file")
    data["robot"]["poses"] = [data["robot"]["home"]]
    (station_home / "recipes" / "inline.yaml").write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "plan-poses", "--recipe", "inline")
    assert code == 2 and "Traceback" not in err
    (line,) = [x.strip() for x in err.splitlines() if "yaml: " in x]
    assert line.endswith(
        "robot.poses_file: the poses are inline; add `robot.poses_file: "
        "glassfiber.poses.yaml` and remove robot.poses, then run station "
        "plan-poses again"
    )
    data = yaml.safe_load(SHIPPED)  # names are checked as for every other command
    data["detectors"][0]["name"] = "patchcor"
    (station_home / "recipes" / "typo.yaml").write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "plan-poses", "--recipe", "typo")
    assert code == 2 and "unknown detector 'patchcor'" in err and "Traceback" not in err
    before = (station_home / "recipes" / "glassfiber.poses.yaml").read_text()
    code, _, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--overlap", "1.0")
    assert code == 2 and "coverage.overlap (--overlap): 1 must be at least 0 and below 1" in err
    assert (station_home / "recipes" / "glassfiber.poses.yaml").read_text() == before
    # a picture path that cannot be written: one line, and the poses file as it was
    (station_home / "taken").mkdir()
    for bad in ("taken", "/proc/no-such/plan.png"):
        code, _, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--overlap", "0.3",
                           "--out", bad)
        assert code == 2 and "cannot write picture" in err and "Traceback" not in err
        assert (station_home / "recipes" / "glassfiber.poses.yaml").read_text() == before


def test_plan_poses_through_the_cell_calibration(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the camera mounted 2 mm / -3 mm (camera x / y) off tcp_offset_mm and barrel
    distortion, the planned raster moves by the mounting's offset so that the region is
    covered again, the file and the output name the calibrated model, and the check agrees."""
    from test_coverage import write_cell

    poses = station_home / "recipes" / "glassfiber.poses.yaml"
    nominal = load_recipe("glassfiber").robot.poses
    code, out, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--out", "plan.png")
    assert code == 0 and "camera model: nominal (recipe lens" in out, err
    write_cell(load_recipe("glassfiber"), (2.0, -3.0, 0.0))
    code, out, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--out", "plan.png")
    assert code == 0, err
    assert "camera model: calibrated (calibration/cell-glassfiber.yaml" in out
    assert "height 579 mm (from the resolution, 0.250 mm/px through the calibrated camera)" in out
    assert "# Camera model: calibrated (calibration/cell-glassfiber.yaml" in poses.read_text()
    planned = load_recipe("glassfiber").robot.poses
    assert [p.name for p in planned] == [p.name for p in nominal]
    for a, b in zip(nominal, planned, strict=True):  # the camera sees (+2, +3) mm off the TCP
        assert np.subtract(b.position_mm, a.position_mm) == pytest.approx([-2, -3, 0], abs=0.02)
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 0 and "coverage 100.0 % of the region" in out, err
    # barrel distortion bows the footprint's edges inwards: the shots' rectangle lies within
    # the edges' middles, not the corners' box, and still covers the region
    write_cell(load_recipe("glassfiber"), (0.0, 0.0, 0.0), dist=(-0.25, 0.0, 0.0, 0.0, 0.0))
    from station.cellcal.store import camera_model

    rec = _recipe()
    model = camera_model(rec)
    bent = pp.plan(rec, model=model)
    outline = cov.footprint_of(cov.NominalCamera.from_recipe(rec), bent.poses[0], model)
    n = cov.BORDER_POINTS
    box_w, box_h = np.ptp(outline, axis=0)
    mid_w = outline[n + n // 2, 0] - outline[3 * n + n // 2, 0]  # right edge's middle - left's
    mid_h = outline[n // 2, 1] - outline[2 * n + n // 2, 1]  # top edge's middle (+y) - bottom's
    assert mid_w < box_w - 0.3 and mid_h < box_h - 0.3
    fw, fh = bent.footprint_mm  # the box's proportions, as large as the middles allow
    assert fw <= mid_w + 1e-6 and fh <= mid_h + 1e-6
    assert min(mid_w - fw, mid_h - fh) < 0.05
    assert bent.report.problems == [] and bent.report.raster.percent == 100.0


def test_plan_poses_into_an_unwritable_recipes_folder_changes_nothing(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A poses file that cannot be written was a traceback, and the picture was already
    replaced: now one line naming the poses file, and neither file changed."""
    poses = station_home / "recipes" / "glassfiber.poses.yaml"
    picture = station_home / "plan.png"
    picture.write_bytes(b"old picture")
    before = poses.read_bytes()
    with unwritable(station_home / "recipes"):
        code, out, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--out", "plan.png")
    assert code == 2 and "Traceback" not in err and out == "", err
    assert f"error: cannot write poses file {poses}: " in " ".join(err.split())
    assert poses.read_bytes() == before and picture.read_bytes() == b"old picture"
    assert sorted(p.name for p in station_home.iterdir()) == ["calibration", "plan.png", "recipes"]
