"""Cell calibration on the twin: camera intrinsics and hand-eye against the twin's known truth,
the calibration file, the board printout, and every refusal (one line, exit 2, nothing written).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from station.cellcal import geometry as geo
from station.cellcal import solve
from station.cellcal.store import (
    CameraModel,
    camera_model,
    cell_path,
    inspection_camera,
    nominal_model,
)
from station.cli.app import main
from station.errors import CellCalibrationError, StationError
from station.geometry.charuco import BoardDef, recipe_board
from station.recipe import Recipe, load_recipe, parse_recipe
from station.twin.truth import TrueCamera, perturbed_truth
from station.twin.world import TwinWorld

pytestmark = pytest.mark.timeout(300)


def write_recipe(home: Path, name: str, params: dict, **twin: object) -> str:
    text = yaml.safe_dump({"extends": "glassfiber", "name": name,
                           "twin": {"time_scale": 0, "params": params, **twin}})
    (home / "recipes" / f"{name}.yaml").write_text(text)
    return name


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ex:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(ex.value.code or 0), out.out, out.err


def written(home: Path) -> list[str]:
    """Files the calibration may write: the calibration folder and the stored views."""
    return sorted(str(p.relative_to(home)) for p in [*home.glob("calibration/**/*"),
                                                     *home.glob("data/*/cell-calibration/**/*")])


def table_error_mm(recipe: Recipe, model: CameraModel) -> float:
    """The largest distance (mm) between where `model` puts the table point seen at a pixel and
    where the twin's true camera (distortion, principal point, mount) sees it, over a 9 x 7 grid
    of pixels at each of the recipe's poses. Works out the truth with the twin's own optics."""
    true = TrueCamera.from_recipe(recipe)
    k = true.intrinsics
    uu, vv = np.meshgrid(np.linspace(0, k.width - 1, 9), np.linspace(0, k.height - 1, 7))
    uv = np.column_stack([uu.ravel(), vv.ravel()])
    rays = np.c_[true.ideal_pixels(uv), np.ones(len(uv))] @ np.linalg.inv(k.matrix).T
    worst = 0.0
    for pose in recipe.robot.poses:
        tcp = np.array([*pose.position_mm, *pose.rotvec_rad])
        cam = true.pose(tcp)
        d = rays @ cam.rotation.T
        truth_xy = cam.centre[:2] + d[:, :2] * (-cam.centre[2] / d[:, 2])[:, None]
        xyz = model.pixels_to_table(tcp, uv)
        assert np.allclose(xyz[:, 2], 0.0, atol=1.0)  # the table is z = 0 in the twin
        worst = max(worst, float(np.linalg.norm(xyz[:, :2] - truth_xy, axis=1).max()))
    return worst


def table_headings(out: str) -> list[str]:
    """The headings of the first table in `out` (rich's heavy heading row)."""
    heading = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in heading.strip().strip("┃").split("┃")]


def test_default_twin_camera_is_the_nominal_pinhole() -> None:
    recipe = load_recipe("glassfiber")
    truth = TrueCamera.from_recipe(recipe)
    assert truth.tcp_to_camera is None and not truth.distorted
    assert TwinWorld(recipe).board is None
    # the sheet map's camera on the twin is the lens data's pinhole, worked out by hand here
    cam = recipe.camera
    f = cam.lens.focal_length_mm * 1000.0 / cam.lens.pixel_size_um
    expected = [[f, 0, (cam.width - 1) / 2], [0, f, (cam.height - 1) / 2], [0, 0, 1]]
    model = inspection_camera(recipe)
    np.testing.assert_allclose(model.matrix, expected, rtol=1e-12)
    assert not np.any(model.dist) and "exact" in model.source


@pytest.mark.slow
def test_recovers_the_true_camera_within_the_acceptance(station_home: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = load_recipe("glassfiber")
    params = perturbed_truth(base, seed=0)  # mount 3 mm and 1 degree off, distortion on
    name = write_recipe(station_home, "twincal", params)
    code, out, err = run(capsys, "calibrate-camera", "-r", name)
    assert code == 0, err
    assert "RMS reprojection" in out and "view19" in out
    assert table_headings(out) == ["view", "corners", "RMS px"]  # no view needs a note
    code, out, err = run(capsys, "calibrate-hand-eye", "-r", name)
    assert code == 0, err
    assert re.search(r"kept (TSAI|PARK|DANIILIDIS)", out)

    recipe = load_recipe(name)
    data = yaml.safe_load(cell_path(recipe).read_text())
    truth = params["camera_truth"]
    x_true = geo.from_pose(truth["mount_offset_mm"], truth["mount_rotvec_rad"])
    nominal = geo.from_pose(base.robot.tcp_offset_mm, base.robot.tcp_offset_rotvec_rad)
    off = geo.inv(nominal) @ x_true
    assert np.linalg.norm(off[:3, 3]) == pytest.approx(3.0) and geo.angle_deg(off) == (
        pytest.approx(1.0))
    model = camera_model(recipe)
    assert model.calibrated and "calibrated" in model.source
    err_t = geo.inv(x_true) @ model.camera_to_flange
    assert np.linalg.norm(err_t[:3, 3]) < 0.5
    assert geo.angle_deg(err_t) < 0.1
    for k in (data["camera"]["matrix"], model.matrix):  # calibrateCamera's and the final one
        assert abs(k[0][0] / truth["fx"] - 1) < 0.005 and abs(k[1][1] / truth["fy"] - 1) < 0.005
    assert data["camera"]["rms_px"] < 0.3 and data["hand_eye"]["rms_px"] < 0.3
    assert set(data["hand_eye"]["methods"]) == {"TSAI", "PARK", "DANIILIDIS"}
    assert data["camera_serial"] == "TWIN-0001"
    assert len(list((station_home / "calibration" / "history").glob("cell-twincal-*.yaml"))) == 2
    # the board lies where the twin put it
    board_true = TwinWorld(recipe).board_placed.board_to_base()
    b = geo.from_dict(data["hand_eye"]["board_to_base"])
    assert np.linalg.norm(b[:3, 3] - board_true[:3, 3]) < 0.5
    assert "hand-eye" in run(capsys, "recipe", "check", name)[1]
    # what it is for: the stored model puts every pixel where the true camera sees it
    # (0.008 mm here; the lens-data model is 8.9 mm off, so this test tells the two apart)
    assert table_error_mm(recipe, model) < 0.05
    assert table_error_mm(recipe, nominal_model(recipe)) > 1.0
    # it no longer holds for another lens, or once the robot reports its TCP through another
    # offset: refused, not used
    cam, robot = recipe.camera, recipe.robot
    lens = cam.lens.model_copy(update={"focal_length_mm": 12.0})
    other_lens = cam.model_copy(update={"lens": lens})
    moved = [*robot.tcp_offset_mm[:2], robot.tcp_offset_mm[2] + 25.0]
    for update, says in [({"camera": other_lens}, "mm lens"),
                         ({"robot": robot.model_copy(update={"tcp_offset_mm": moved})},
                          "another robot.tcp_offset_mm")]:
        with pytest.raises(CellCalibrationError, match=says):
            camera_model(recipe.model_copy(update=update))


@pytest.mark.slow
def test_the_file_refuses_hand_edits(station_home: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    name = write_recipe(station_home, "edited", {})
    assert run(capsys, "calibrate-camera", "-r", name)[0] == 0
    recipe = load_recipe(name)
    path = cell_path(recipe)
    path.write_text(path.read_text().replace("rms_px: 0.", "rms_px: 0.0"))
    with pytest.raises(CellCalibrationError, match="changed by hand"):
        camera_model(recipe)
    code, _, err = run(capsys, "calibrate-hand-eye", "-r", name)
    assert code == 2 and "changed by hand" in err and "Traceback" not in err


def test_nominal_model_without_a_calibration(station_home: Path) -> None:
    recipe = load_recipe("glassfiber")
    model = camera_model(recipe)
    assert not model.calibrated and model.source.startswith("nominal")
    # straight down from 350 mm: the image centre is right under the TCP
    xyz = model.pixels_to_table([400.0, 0.0, 350.0, np.pi, 0, 0], np.array([[319.5, 255.5]]))
    assert xyz[0] == pytest.approx([400.0, 0.0, 0.0], abs=1e-6)
    lens = recipe.camera.lens  # the shipped lens, whatever it is: f in pixels
    f_px = lens.focal_length_mm * 1000 / lens.pixel_size_um
    assert nominal_model(recipe).matrix[0, 0] == pytest.approx(f_px)


def test_the_default_board_and_views_follow_the_recipes_optics() -> None:
    from test_twin_render import classic

    from station.cellcal.views import MAX_BLUR_PX, blur_px, board_centre_guess, plan_views

    shipped = load_recipe("glassfiber")
    text = (Path(__file__).resolve().parents[1] / "recipes/glassfiber.yaml").read_text()
    old = parse_recipe(yaml.safe_dump(classic(yaml.safe_load(text))))
    assert recipe_board(old).square_mm == 5.0  # 12 mm lens at 350 mm: the board it always had

    def distances(recipe: Recipe, board: BoardDef) -> list[float]:
        centre = [*board_centre_guess(recipe), 0.0]
        return [float(np.linalg.norm(np.subtract(p.position_mm, centre)))
                for p in plan_views(recipe, board, 8)]

    for recipe in (old, shipped):
        board = recipe_board(recipe)
        lens = recipe.camera.lens
        f_px = lens.focal_length_mm * 1000 / lens.pixel_size_um
        # from the focus distance, straight down, it spans 80-95 % of the image width
        span = board.size_mm[0] * f_px / lens.focus_distance_mm / recipe.camera.width
        assert 0.8 < span < 0.95
        assert 40 < board.square_mm * f_px / lens.focus_distance_mm < 60  # px per square
        assert np.mean(distances(recipe, board)) == pytest.approx(lens.focus_distance_mm,
                                                                  rel=0.1)
    # a smaller board than the view wants: the views come closer, as far as the focus allows
    near = distances(shipped, BoardDef())
    assert max(near) < 0.85 * shipped.camera.lens.focus_distance_mm
    assert all(blur_px(shipped.camera.lens, d) < MAX_BLUR_PX for d in near)


@pytest.mark.parametrize(("args", "params", "message"), [
    (["--count", "4"], {}, "4 views are too few"),
    ([], {"calibration_board": {"centre_mm": [100.0, 300.0]}}, "board was not found"),
    (["--squares", "6x5"], {}, "are not on the board"),
    (["--dictionary", "DICT_5X5_100"], {}, "show DICT_4X4_"),
    (["--marker-mm", "2.5"], {}, "off the layout"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(
        station_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], params: dict,
        message: str) -> None:
    name = write_recipe(station_home, "bad", params)
    code, out, err = run(capsys, "calibrate-camera", "-r", name, *args)
    assert code == 2, out + err
    assert message in err and "Traceback" not in err and "hint:" in err
    assert len(err.strip().splitlines()) == 2  # the error and its hint
    assert written(station_home) == []


@pytest.mark.parametrize(("kind", "message"), [
    ("translate", "differ only by translations"), ("one_axis", "rotate about one axis only")])
def test_views_that_only_translate_or_turn_about_one_axis_are_refused_before_moving(
        station_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str,
        message: str) -> None:
    name = write_recipe(station_home, "degenerate", {})
    if kind == "translate":  # straight down at different places and heights
        poses = [{"name": f"v{i}", "position_mm": [400 + 4 * (i % 3), 3 * (i // 3) - 4,
                                                   340 + 3 * i], "rotvec_rad": [np.pi, 0, 0]}
                 for i in range(9)]
    else:  # tilted about the base x axis only
        poses = [{"name": f"v{i}", "position_mm": [400, 350 * np.sin(a), 350 * np.cos(a)],
                  "rotvec_rad": [np.pi + a, 0, 0]} for i, a in enumerate(np.linspace(-.4, .4, 9))]
    views = tmp_path / "views.yaml"
    views.write_text(yaml.safe_dump([{**p, "position_mm": [float(v) for v in p["position_mm"]],
                                      "rotvec_rad": [float(v) for v in p["rotvec_rad"]]}
                                     for p in poses]))
    code, _, err = run(capsys, "calibrate-camera", "-r", name, "--views", str(views))
    assert code == 2 and message in err and "Traceback" not in err
    assert written(station_home) == []


def test_a_bad_view_names_the_view_and_field(
        station_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = write_recipe(station_home, "badviews", {})
    views = tmp_path / "views.yaml"
    views.write_text(yaml.safe_dump([{"name": "v0", "position_mm": [400.0, 0.0, 350.0],
                                      "rotvec_rad": [3.14, 0.0, 0.0]},
                                     {"name": "v1", "position_mm": [1.0, 2.0],
                                      "rotvec_rad": [3.14, 0.0, 0.0]}]))
    code, _, err = run(capsys, "calibrate-camera", "-r", name, "--views", str(views))
    assert code == 2 and "view 1 position_mm" in err and "Traceback" not in err, err


def test_motion_checks() -> None:
    down = geo.from_pose([400, 0, 350], [np.pi, 0, 0])
    shifts = [geo.from_pose([i, 2 * i, 0], [0, 0, 0]) @ down for i in range(5)]
    assert solve.motion_problem(shifts) == "the views differ only by translations"
    rolls = [down @ geo.from_pose([i, 0, 0], [0, 0, 0.2 * i]) for i in range(5)]
    assert solve.motion_problem(rolls) == "the views rotate about one axis only"
    mixed = [*rolls, down @ geo.from_pose([0, 0, 0], [0.3, 0, 0])]
    assert solve.motion_problem(mixed) is None
    shifts = [geo.from_pose([i, 0, 0], [0, 0, 0]) @ down for i in range(9)]
    with pytest.raises(CellCalibrationError, match="undetermined: the views differ only"):
        solve.solve_hand_eye(BoardDef(), {f"v{i}": f for i, f in enumerate(shifts)},
                             {f"v{i}": np.eye(4) for i in range(9)})


def test_board_printout_is_true_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pdf = tmp_path / "board.pdf"
    code, out, _ = run(capsys, "calibrate-camera", "--print-board", str(pdf), "--squares", "10x7",
                       "--square-mm", "20")
    assert code == 0 and "200 x 140 mm" in out
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    # the image is drawn 200 x 140 mm wide (in points: mm * 72 / 25.4)
    m = re.search(rb"([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm /Im1 Do", data)
    assert m and float(m[1]) == pytest.approx(200 * 72 / 25.4, abs=1e-3)
    assert float(m[2]) == pytest.approx(140 * 72 / 25.4, abs=1e-3)
    assert b"DICT_4X4_100" in data and b"square 20 mm" in data
    board = BoardDef(10, 7, 20.0, 15.0)
    assert board.image(120).shape == (7 * 120, 10 * 120)


def test_printout_defaults_to_the_recipes_board(station_home: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pdf = tmp_path / "board.pdf"
    code, out, _ = run(capsys, "calibrate-camera", "--print-board", str(pdf), "-r", "glassfiber")
    w, h = recipe_board(load_recipe("glassfiber")).size_mm
    assert code == 0 and f"{w:g} x {h:g} mm" in out and pdf.is_file()
    code, _, err = run(capsys, "calibrate-camera", "--print-board", str(tmp_path / "b2.pdf"))
    assert code == 2 and "--square-mm" in err and "Traceback" not in err
    assert not (tmp_path / "b2.pdf").exists()


def test_printout_under_a_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path under a file said `File exists` (files.writing, for every command)."""
    (tmp_path / "afile").write_text("")
    for pdf in (tmp_path / "afile" / "b.pdf", tmp_path / "afile" / "sub" / "b.pdf"):
        code, _, err = run(capsys, "calibrate-camera", "--print-board", str(pdf),
                           "--square-mm", "20")
        assert code == 2 and err.splitlines() == [
            f"error: cannot write {pdf}: {tmp_path / 'afile'} is a file, not a folder",
            "  hint: give a path in a folder, or move that file away",
        ]
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


@pytest.mark.slow
def test_distorted_board_render_puts_corners_where_the_true_model_projects_them() -> None:
    import cv2

    from station.cellcal.detect import BoardDetector
    from station.cellcal.views import plan_views
    from station.twin.world import pose_tcp

    base = load_recipe("glassfiber")
    params = perturbed_truth(base, seed=3)
    recipe = base.model_copy(update={"twin": base.twin.model_copy(update={"params": params})})
    world = TwinWorld(recipe)
    world.show_board()
    truth, board = world.truth, world.board_placed.board
    assert truth.distorted and truth.tcp_to_camera is not None
    det = BoardDetector(board)
    for pose in plan_views(recipe, board, 8)[::3]:
        tcp = pose_tcp(pose)
        found = det.detect(world.render(tcp, noise_seed=1).image, pose.name)
        assert found is not None and len(found.ids) > 30
        cam = truth.pose(tcp)
        cam_t = np.eye(4)
        cam_t[:3, :3], cam_t[:3, 3] = cam.rotation, cam.centre
        board_in_cam = geo.inv(cam_t) @ world.board_placed.board_to_base()
        proj, _ = cv2.projectPoints(board.corners_mm()[found.ids], geo.rotvec(board_in_cam),
                                    board_in_cam[:3, 3], truth.matrix, truth.dist)
        err = np.linalg.norm(proj.reshape(-1, 2) - found.corners, axis=1)
        assert np.sqrt(np.mean(err**2)) < 0.15


def test_outlier_views_are_dropped_and_named() -> None:
    import cv2

    from station.cellcal.detect import Detection

    board = BoardDef()
    k = np.array([[3480.0, 0, 320.0], [0, 3480.0, 256.0], [0, 0, 1]])
    dist = np.array([-0.2, 0.1, 0.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    dets = {}
    for i in range(12):
        # board -> camera: the board faces the camera from about 350 mm, tilted up to ~23 deg
        t = geo.from_pose([-30.0, -22.5, 350.0 + 20 * rng.uniform(-1, 1)],
                          [rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(-1, 1)])
        ids = np.arange(len(board.corners_mm()))
        proj, _ = cv2.projectPoints(board.corners_mm(), geo.rotvec(t), t[:3, 3], k, dist)
        uv = proj.reshape(-1, 2) + rng.normal(0, 0.05 if i != 5 else 3.0, (len(ids), 2))
        dets[f"v{i:02d}"] = Detection(ids, uv, 54)
    res = solve.solve_intrinsics(board, dets, (640, 512))
    assert list(res.dropped) == ["v05"] and "RMS" in res.dropped["v05"]
    assert "v05" not in res.used and res.rms_px < 0.1
    assert res.matrix[0, 0] == pytest.approx(3480, rel=0.005)
    # calibrate-camera's table: a `note` column says why, only when a view has one (it was a
    # fourth column without a heading, and empty when every view was used)
    noted = views_table(res, dets, [*dets, "v12"])  # v12: the board was not found
    assert table_headings(noted) == ["view", "corners", "RMS px", "note"], noted
    rows = {line.split()[1]: line for line in noted.splitlines() if line.startswith("│")}
    assert "dropped: RMS" in rows["v05"] and "board not found" in rows["v12"], noted
    assert [c.strip() for c in rows["v00"].split("│")][4] == "" and len(rows) == 13
    clean = views_table(dataclasses.replace(res, dropped={}), dets, list(res.used))
    assert table_headings(clean) == ["view", "corners", "RMS px"], clean


def views_table(res: solve.IntrinsicsResult, dets: dict, names: list[str]) -> str:
    """calibrate-camera's per-view table for these views, as printed."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from station.cli.cellcal import camera_views_table

    done = SimpleNamespace(result=res, capture=SimpleNamespace(names=names),
                           corners={n: len(d.ids) for n, d in dets.items() if n in names})
    console = Console(width=120, file=io.StringIO(), record=True)
    console.print(camera_views_table(done))
    return console.export_text()


def test_default_twin_renders_exactly_as_the_nominal_pinhole() -> None:
    from station.twin.render import shade
    from station.twin.world import pose_tcp

    recipe = load_recipe("glassfiber")
    world = TwinWorld(recipe)
    world.present(world.make_sheet(5, defective=True))
    tcp = pose_tcp(recipe.robot.poses[0])
    shot = world.render(tcp, noise_seed=3)
    plain = shade(world.sheet, world._layers(tcp), recipe.camera, tcp, world.lighting, 3)
    assert np.array_equal(shot.image, plain.image) and np.array_equal(shot.mask, plain.mask)


def test_bad_twin_truth_is_a_recipe_problem() -> None:
    from station.errors import RecipeError

    base = load_recipe("glassfiber")
    for params, says in [({"camera_truth": {"k9": 1.0}}, "unknown key(s) k9"),
                         ({"calibration_board": {"squares_x": 2}}, "at least 3 x 3")]:
        recipe = base.model_copy(update={"twin": base.twin.model_copy(update={"params": params})})
        with pytest.raises(RecipeError, match=re.escape(says)):
            TwinWorld(recipe)


@pytest.mark.slow
def test_a_wrong_square_size_is_refused_and_a_slightly_wrong_one_warned_about(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ruler read 5 % long: the board poses disagree by millimetres, the hand-eye is refused
    and nothing written (it was written with a warning). 1 % long: written, with a warning."""
    name = write_recipe(station_home, "ruler", {})
    true = recipe_board(load_recipe(name)).square_mm
    path = cell_path(load_recipe(name))
    assert run(capsys, "calibrate-camera", "-r", name, "--square-mm", f"{1.05 * true:g}")[0] == 0
    code, _, err = run(capsys, "calibrate-hand-eye", "-r", name)
    err = " ".join(err.split())
    assert code == 2 and "hand-eye refused: the board poses disagree" in err, err
    assert "nothing written" in err and "Traceback" not in err
    assert "hand_eye" not in yaml.safe_load(path.read_text())
    assert run(capsys, "calibrate-camera", "-r", name, "--square-mm", f"{1.01 * true:g}")[0] == 0
    code, out, err = run(capsys, "calibrate-hand-eye", "-r", name)
    assert code == 0 and "warning: the board poses disagree" in " ".join(out.split()), err
    assert yaml.safe_load(path.read_text())["hand_eye"]["warnings"]


def test_a_failed_write_keeps_the_old_file_and_adds_no_history_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_files import disk_full_at

    from station.cellcal import store

    path = tmp_path / "calibration" / "cell-x.yaml"
    store.write(path, {"cell": "x", "camera": {"rms_px": 0.1}})
    before = {p: p.read_bytes() for p in path.parent.rglob("*") if p.is_file()}
    disk_full_at(monkeypatch, path)
    with pytest.raises(StationError, match="cannot write"):
        store.write(path, {"cell": "x", "camera": {"rms_px": 0.2}})
    assert {p: p.read_bytes() for p in path.parent.rglob("*") if p.is_file()} == before


def test_a_failed_emulator_set_leaves_the_previous_one_whole(
    station_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prepare-emulator replaces the emulator's folder all or none: a full disk at the second
    new view leaves the previous views whole (no mix, no temporary folder) with a one-line
    error; the next try replaces them, keeping the folder's permissions and hidden files."""
    from test_files import disk_full_at

    (station_home / "recipes" / "emu.yaml").write_text(yaml.safe_dump({
        "extends": "glassfiber-emulated", "name": "emu", "twin": {"time_scale": 0},
        "camera": {"emulator_images": "data/emu/images"}}))
    folder = station_home / "data/emu/images"
    prepare = ("calibrate-camera", "-r", "emu", "--prepare-emulator", "--count")
    assert run(capsys, *prepare, "9")[0] == 0
    (folder / "view00.png").unlink()  # tell the sets apart: the new one has a view00
    (folder / ".keep").write_text("not played")
    folder.chmod(0o750)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(before) == 9

    def siblings() -> list[str]:
        return sorted(p.name for p in folder.parent.iterdir())

    disk_full_at(monkeypatch, folder / "view01.png")
    code, out, err = run(capsys, *prepare, "8")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert siblings() == ["images"]
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1].lstrip().startswith("hint:"), err
    assert "No space left on device; the previous set is kept" in lines[0]
    monkeypatch.undo()
    monkeypatch.setenv("STATION_HOME", str(station_home))
    assert run(capsys, *prepare, "8")[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == [".keep"] + [f"view{i:02d}.png"
                                                                  for i in range(8)]
    assert (folder.stat().st_mode & 0o777) == 0o750 and siblings() == ["images"]


def test_a_render_error_midway_leaves_the_emulator_set_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.cellcal import run as cellcal_run
    from station.cellcal.views import plan_views

    recipe = load_recipe("glassfiber")
    poses = plan_views(recipe, recipe_board(recipe), 8)
    folder = tmp_path / "emulator"
    cellcal_run.prepare_emulator(recipe, poses[:2], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    render, calls = TwinWorld.render, []

    def failing(self: TwinWorld, *args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("render failed")
        return render(self, *args, **kw)

    monkeypatch.setattr(TwinWorld, "render", failing)
    with pytest.raises(RuntimeError, match="render failed"):
        cellcal_run.prepare_emulator(recipe, poses[2:5], folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["emulator"]
