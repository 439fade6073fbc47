"""Optics and coverage of a recipe (station.geometry.coverage), and `station recipe check`'s
block."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cellcal import run  # the CLI in-process: (exit code, stdout, stderr)

from station.geometry import coverage as cov
from station.geometry.ur_poses import rotvec_to_matrix
from station.recipe import Pose, Recipe, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "recipes" / "glassfiber.yaml").read_text()
POSES = yaml.safe_load((REPO / "recipes" / "glassfiber.poses.yaml").read_text())["poses"]
DOWN = (math.pi, 0.0, 0.0)


def _recipe(edit=None) -> Recipe:  # noqa: ANN001
    """The shipped recipe, poses inline, edited."""
    data = yaml.safe_load(SHIPPED)
    data["robot"].pop("poses_file")
    data["robot"]["poses"] = [dict(p) for p in POSES]
    if edit is not None:
        edit(data)
    return parse_recipe(yaml.safe_dump(data), "test.yaml")


def _pose(x: float, y: float, z: float, rotvec: tuple[float, float, float] = DOWN) -> Pose:
    return Pose(name="p", position_mm=(x, y, z), rotvec_rad=rotvec)


def test_straight_down_footprint_and_mm_per_px() -> None:
    r = _recipe()
    cam = cov.NominalCamera.from_recipe(r)
    assert cam.f_px == pytest.approx(8.0 / 0.00345)
    fp = cov.footprint(cam, _pose(400, 0, 579))
    w, h = 640 * 0.00345 * 579 / 8, 512 * 0.00345 * 579 / 8  # sensor size x distance / f
    # image u grows with base x, image v with base -y: the top-left pixel sees (-x, +y)
    assert fp == pytest.approx(
        np.array(
            [
                [400 - w / 2, h / 2],
                [400 + w / 2, h / 2],
                [400 + w / 2, -h / 2],
                [400 - w / 2, -h / 2],
            ]
        )
    )
    assert w == pytest.approx(159.8, abs=0.05) and h == pytest.approx(127.8, abs=0.05)
    assert cov.camera_mm_per_px(cam, _pose(0, 0, 579)) == pytest.approx(579 * 0.00345 / 8)


def test_tilted_footprint_projects_back_onto_the_image_corners() -> None:
    cam = cov.NominalCamera.from_recipe(_recipe())
    rot = _compose(DOWN, (0.0, 0.25, 0.0))  # looking down, then tilted about base y
    pose = _pose(350, 20, 500, rot)
    fp = cov.footprint(cam, pose)
    assert fp is not None
    widths = np.linalg.norm(fp[1] - fp[0]), np.linalg.norm(fp[2] - fp[3])
    assert abs(widths[0] - widths[1]) < 1e-6  # tilted about the image's v axis: a trapezoid
    heights = np.linalg.norm(fp[3] - fp[0]), np.linalg.norm(fp[2] - fp[1])
    assert abs(heights[0] - heights[1]) > 5  # the far edge is the longer
    # the forward projection (world -> pixel) of each footprint corner is the window corner
    r = rotvec_to_matrix(rot)
    pc = (np.column_stack([fp, np.zeros(4)]) - np.array(pose.position_mm)) @ r
    uv = np.column_stack(
        [cam.f_px * pc[:, 0] / pc[:, 2] + cam.cx, cam.f_px * pc[:, 1] / pc[:, 2] + cam.cy]
    )
    u0, v0, u1, v1 = cam.window
    assert uv == pytest.approx(np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]), abs=1e-6)
    assert cov.view_distance(pose) == pytest.approx(500 / math.cos(0.25))
    assert cov.footprint(cam, _pose(0, 0, 500, (0.0, 0.0, 0.0))) is None  # looking up


def _compose(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float]:
    """The rotation vector of R(b) @ R(a)."""
    import cv2

    r = rotvec_to_matrix(b) @ rotvec_to_matrix(a)
    v, _ = cv2.Rodrigues(r)
    return tuple(float(x) for x in v.ravel())


def test_rotation_matches_opencv() -> None:
    import cv2

    for v in ((0.1, -0.4, 2.0), (math.pi, 0, 0), (0, 0, 0), (3.14159, 0, 0)):
        expected, _ = cv2.Rodrigues(np.array(v, np.float64).reshape(3, 1))
        assert rotvec_to_matrix(v) == pytest.approx(expected, abs=1e-12)


def test_detector_mm_per_px_follows_the_preprocessing() -> None:
    assert cov.detector_factor(_recipe()) == 1.0  # the shipped recipe cuts tiles
    untiled = _recipe(lambda d: d["preprocess"]["tiling"].update(enabled=False))
    assert cov.detector_factor(untiled) == pytest.approx(640 / 256)  # the coarser axis
    cropped = _recipe(
        lambda d: d["preprocess"].update(
            crop=[0, 0, 256, 512], size=[256, 256], tiling={"enabled": False}
        )
    )
    assert cov.detector_factor(cropped) == pytest.approx(2.0)
    cam = cov.NominalCamera.from_recipe(cropped)
    assert cam.window == (-0.5, -0.5, 255.5, 511.5)  # the footprint is the crop's
    enlarged = _recipe(
        lambda d: d["preprocess"].update(size=[1024, 1024], tiling={"enabled": False})
    )
    assert cov.detector_factor(enlarged) == 1.0  # enlarging adds no detail
    assert cov.needed_mm_per_px(_recipe()) == pytest.approx(2.0 / 8)


def test_region_default_and_explicit() -> None:
    assert cov.region_rect(_recipe()) == (245.0, -155.0, 555.0, 155.0)  # sheet + 5 mm margin
    r = _recipe(lambda d: d["coverage"].update(region_mm=[50, -10, -20, 40]))
    assert cov.region_rect(r) == (380.0, -10.0, 450.0, 40.0)  # any corner order


def test_raster_counts_coverage_overlap_and_gaps() -> None:
    def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)

    region = (0.0, 0.0, 100.0, 50.0)
    ras = cov.raster(region, [box(0, 0, 60, 50), box(40, 0, 70, 50)])
    assert ras.percent == pytest.approx(70.0)
    assert ras.overlap_percent == pytest.approx(20.0)
    assert ras.gaps == [pytest.approx((70.0, 0.0, 100.0, 50.0))]
    ras = cov.raster(region, [box(10, 0, 90, 50), box(0, 0, 5, 50)])
    assert [g[0] for g in ras.gaps] == [90.0, 5.0]  # largest first
    assert cov.raster(region, [box(-1, -1, 101, 51)]).percent == 100.0


def test_depth_of_field_matches_the_textbook() -> None:
    # 50 mm at f/8, focused at 10 m with a 0.03 mm circle of confusion (two 15 um pixels):
    # hyperfocal 10.47 m, sharp from 5.11 m to 223 m
    lens = _recipe().camera.lens.model_copy(
        update={"focal_length_mm": 50.0, "f_number": 8.0, "pixel_size_um": 15.0}
    )
    near, far = cov.depth_of_field(lens, 10_000.0)
    assert near == pytest.approx(5114.6, rel=1e-3) and far == pytest.approx(223_200, rel=1e-3)
    assert cov.depth_of_field(lens, 20_000.0)[1] == math.inf  # beyond the hyperfocal distance


def test_flange_is_the_tcp_less_the_offset() -> None:
    r = _recipe(lambda d: d["robot"].update(tcp_offset_mm=[10.0, 0.0, 95.0]))
    pose = _pose(400, 50, 579)
    assert cov.flange_position(pose, r.robot) == pytest.approx([390, 50, 674])
    assert cov.reach_distance(pose, r.robot) == pytest.approx(
        math.dist((390, 50, 674), (0, 0, 89.2))
    )


def test_shipped_recipe_covers_its_sheet() -> None:
    rep = cov.check(load_recipe(str(REPO / "recipes" / "glassfiber.yaml")))
    assert rep.problems == []
    assert rep.raster.percent == 100.0 and rep.raster.gaps == []
    assert rep.detector_mm_px <= rep.needed_mm_px
    assert rep.lines()[0].startswith("coverage 100.0 %")


def test_the_old_three_poses_leave_most_of_the_sheet_unseen() -> None:
    three = [
        {"name": n, "position_mm": [400 + 12 * i, 6 * i, 350]}
        for i, n in zip((-1, 0, 1), ("left", "centre", "right"), strict=True)
    ]

    def old(d: dict) -> None:
        d["robot"]["poses"] = three
        d["camera"]["lens"].update(focal_length_mm=12.0, focus_distance_mm=350.0)
        d["preprocess"]["tiling"]["enabled"] = False

    rep = cov.check(_recipe(old))
    assert 5 < rep.raster.percent < 6  # the 5.8 % of the sheet, 5.4 % with the margin
    assert rep.detector_mm_px == pytest.approx(350 * 0.00345 / 12 * 2.5)
    (gap, coarse) = rep.problems
    assert gap.startswith("coverage.region_mm: the poses see 5.4 % of the region")
    assert "station plan-poses --recipe glassfiber" in gap
    assert coarse.startswith("coverage.smallest_defect_mm: 2 mm at 8 px needs <= 0.250")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["camera"]["lens"].update(focus_distance_mm=350.0),
            "camera.lens.focus_distance_mm: poses r1c1, r1c2, r1c3, r2c3 (+5 more) view the sheet "
            "from 579-579 mm, outside the depth of field",
        ),
        (
            lambda d: d["camera"]["lens"].update(min_focus_distance_mm=600.0),
            "camera.lens.min_focus_distance_mm: poses r1c1",
        ),
        (
            lambda d: d["camera"]["lens"].update(focus_distance_mm=90.0),
            "camera.lens.focus_distance_mm: 90 is closer than the lens focuses",
        ),
        (
            lambda d: d["robot"].update(reach_mm=700.0),
            "robot.poses: r1c2, r1c3, r2c3, r2c2 (+2 more) put the flange up to 765 mm from the "
            "shoulder, beyond "
            "robot.reach_mm 700",
        ),
        (
            lambda d: d["coverage"].update(region_mm=[-50, -50, 50, 50]),
            "coverage.region_mm: [-50.0, -50.0, 50.0, 50.0] leaves part of the 300 x 300 mm sheet "
            "out; set coverage.partial: true",
        ),
        (
            lambda d: d["sheet"].update(width_mm=400),
            "coverage.region_mm: the poses see 79.5 % of the region; largest gap x 195.0..237.0",
        ),
        (
            lambda d: d["robot"]["poses"][0].update(rotvec_rad=[0, 0, 0]),
            "robot.poses.r1c1.rotvec_rad: the camera does not see the table",
        ),
        (
            lambda d: d["coverage"].update(smallest_defect_mm=1.0),
            "coverage.smallest_defect_mm: 1 mm at 8 px needs <= 0.125 mm/px",
        ),
    ],
)
def test_check_names_the_field_and_the_fix(edit, expected: str) -> None:  # noqa: ANN001
    problems = cov.check(_recipe(edit)).problems
    assert any(p.startswith(expected) for p in problems), problems


def test_an_explicit_partial_region_must_still_be_covered() -> None:
    ok = cov.check(
        _recipe(lambda d: d["coverage"].update(region_mm=[-50, -50, 50, 50], partial=True))
    )
    assert ok.problems == [] and ok.raster.percent == 100.0
    left = _recipe(
        lambda d: (
            d["coverage"].update(region_mm=[-50, -50, 50, 50], partial=True)
            or d["robot"].update(poses=[POSES[0]])
        )
    )
    (problem,) = cov.check(left).problems
    assert problem.startswith("coverage.region_mm: the poses see ")
    assert "set coverage.partial" not in problem  # it is set already


def test_recipe_check_prints_coverage_and_refuses_a_gap(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 0, err
    assert "coverage 100.0 % of the region" in out and "9 shots per sheet" in out
    assert "overlap 59.1 % of the region seen by 2+ shots" in out
    assert "mm/px 0.250 at the camera, 0.250 at the detector (tiles); needed <= 0.250" in out
    poses = station_home / "recipes" / "glassfiber.poses.yaml"
    text = poses.read_text()
    poses.write_text(text[: text.index("  - name: r2c3")])  # the first row only
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 2 and "Traceback" not in err
    assert "coverage 38.7" in out  # the numbers behind the refusal
    lines = [line.strip() for line in err.splitlines() if "yaml: " in line]  # one per problem
    assert len(lines) == 1 and "coverage.region_mm: the poses see 38.7" in lines[0], err
    assert "largest gap x 245.0..555.0, y -35.0..155.0 mm (1 gap)" in lines[0]


def test_recipe_check_names_an_overlap_of_one(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = station_home / "recipes" / "glassfiber.yaml"
    path.write_text(SHIPPED.replace("overlap: 0.15 ", "overlap: 1.0 "))
    code, _, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 2
    (line,) = [x.strip() for x in err.splitlines() if "yaml: " in x]
    assert line.endswith("coverage.overlap: must be at least 0 and below 1 (got 1.0)"), err


# -- through the cell calibration --------------------------------------------------------------


def write_cell(
    recipe: Recipe, shift_mm: tuple[float, float, float], dist: tuple[float, ...] = (0,) * 5
) -> np.ndarray:
    """Write calibration/cell-<recipe>.yaml as the calibration commands do: the recipe's lens,
    distortion `dist` (k1 k2 p1 p2 k3), the camera mounted `shift_mm` (camera axes) away from
    tcp_offset_mm, the table at z = 0. Returns the nominal 3x3 intrinsics."""
    from station.cellcal import geometry as geo
    from station.cellcal import store
    from station.cellcal.views import nominal_mount

    model = store.nominal_model(recipe)
    mount = nominal_mount(recipe)
    true_mount = mount @ geo.from_pose(shift_mm, (0.0, 0.0, 0.0))
    date = store.now()
    names = ("k1", "k2", "p1", "p2", "k3")
    store.write(
        store.cell_path(recipe),
        {
            "camera_serial": "twin",
            "camera": {
                "date": date,
                "image_size": [recipe.camera.width, recipe.camera.height],
                "matrix": model.matrix.tolist(),
                "distortion": dict(zip(names, map(float, dist), strict=True)),
            },
            "hand_eye": {
                "date": date,
                "camera_to_flange": geo.as_dict(true_mount),
                "nominal_mount": geo.as_dict(mount),
                "board_to_base": geo.as_dict(np.eye(4)),
            },
        },
    )
    return model.matrix


def test_a_calibrated_mounting_moves_the_footprints(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera mounted 2 mm / -12 mm (camera x / y) off tcp_offset_mm: every footprint moves by
    that offset turned into the base frame, the check names the calibrated model and finds the
    gaps the shift opens at the region's edge."""
    from station.cellcal.store import camera_model

    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 0 and "camera model: nominal (recipe lens, no distortion" in out, err
    recipe = load_recipe("glassfiber")
    write_cell(recipe, (2.0, -12.0, 0.0))
    model = camera_model(recipe)
    assert model.calibrated
    nominal, calibrated = cov.check(recipe), cov.check(recipe, model)
    assert calibrated.camera_model == model.source and nominal.camera_model == cov.NOMINAL
    for pose, before, after in zip(
        recipe.robot.poses, nominal.footprints, calibrated.footprints, strict=True
    ):
        shift = (rotvec_to_matrix(pose.rotvec_rad) @ np.array([2.0, -12.0, 0.0]))[:2]
        assert shift == pytest.approx([2.0, 12.0], abs=1e-3)  # straight down: v is base -y
        assert len(after) == 4 * cov.BORDER_POINTS
        # corners first, in the nominal order, each moved by the mounting's offset
        assert after[:: cov.BORDER_POINTS] == pytest.approx(before + shift, abs=1e-4)  # file: 5 dp
    assert calibrated.camera_mm_px == pytest.approx(nominal.camera_mm_px, rel=1e-6)
    assert calibrated.view_mm == pytest.approx(nominal.view_mm, rel=1e-6)
    # the raster planned for the nominal camera reaches 8 mm past the region (view margin):
    # 12 mm off opens gaps
    assert 95.0 < calibrated.raster.percent < 100.0
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 2 and "Traceback" not in err
    assert "camera model: calibrated (calibration/cell-glassfiber.yaml" in out
    assert "coverage.region_mm: the poses see 9" in err


def test_a_distorted_footprint_follows_the_bent_edges(station_home: Path) -> None:
    """Barrel distortion bends the window's straight edges into curves that bow inwards on the
    table: the footprint follows them (its border points project back onto the window's edge)
    and the raster counts a point between the chord and the curve as unseen."""
    import cv2

    from station.cellcal.store import camera_model

    recipe = load_recipe("glassfiber")
    k = write_cell(recipe, (0.0, 0.0, 0.0), dist=(-0.25, 0.0, 0.0, 0.0, 0.0))
    model = camera_model(recipe)
    pose = recipe.robot.poses[4]
    cam = cov.NominalCamera.from_recipe(recipe)
    fp = cov.footprint_of(cam, pose, model)
    assert fp is not None and not cov.convex(fp)
    cam_pose = model.camera_pose(cov.tcp_of(pose))
    base_to_cam = np.linalg.inv(cam_pose)
    rvec = cv2.Rodrigues(base_to_cam[:3, :3])[0]
    uv, _ = cv2.projectPoints(
        np.c_[fp, np.zeros(len(fp))], rvec, base_to_cam[:3, 3], k, np.array(model.dist)
    )
    assert uv.reshape(-1, 2) == pytest.approx(cov.window_border(cam), abs=0.01)
    # the top edge's middle lies inside the chord between the top corners
    n = cov.BORDER_POINTS
    chord_mid = (fp[0] + fp[n]) / 2
    centre = fp.mean(axis=0)
    bow = float(np.linalg.norm(chord_mid - centre) - np.linalg.norm(fp[n // 2] - centre))
    assert bow > 0.2  # mm: k1 -0.25 bows each edge ~0.3 mm inwards
    between = (chord_mid + fp[n // 2]) / 2
    inner = centre + 0.9 * (fp[n // 2] - centre)
    seen = cov.in_polygon(fp, np.array([between[0], inner[0]]), np.array([between[1], inner[1]]))
    assert seen.tolist() == [False, True]
    ras = cov.raster(cov.region_rect(recipe), [fp])
    corners_only = cov.raster(cov.region_rect(recipe), [fp[::n]])
    assert ras.percent < corners_only.percent


def test_mm_per_px_is_the_coarsest_over_the_window() -> None:
    """A view tilted 15 degrees sees its far edge coarser than its centre: the check takes
    the far edge (it measured the centre: 0.2415 against 0.2656 mm/px there)."""
    r = _recipe()
    cam = cov.NominalCamera.from_recipe(r)
    down = _pose(400, 0, 579)
    assert cov.mm_per_px_of(cam, down) == pytest.approx(cov.camera_mm_per_px(cam, down))
    tilted = _pose(400, 0, 560, _compose(DOWN, (0.26, 0.0, 0.0)))
    centre = cov.camera_mm_per_px(cam, tilted)
    assert cov.mm_per_px_of(cam, tilted) > 1.08 * centre


def test_a_plan_through_a_distorted_lens_resolves_at_the_window_edges(station_home: Path) -> None:
    """Barrel distortion makes the window's corners coarser than its centre; the planner lowers
    the camera until every pose resolves there, so its own check finds nothing."""
    from station.cellcal.store import camera_model
    from station.geometry.pose_plan import plan

    recipe = load_recipe("glassfiber")
    flat = plan(recipe, model=camera_model(recipe))
    write_cell(recipe, (0.0, 0.0, 0.0), dist=(-0.25, 0.0, 0.0, 0.0, 0.0))
    model = camera_model(recipe)
    bent = plan(recipe, model=model)
    assert bent.report.problems == [] and bent.height_mm < flat.height_mm
    assert bent.report.detector_mm_px <= bent.report.needed_mm_px * (1 + 1e-9)


def test_crossing_rule_agrees_with_the_convex_rule() -> None:
    quad = np.array([[0.0, 0.0], [10.0, 1.0], [9.0, 8.0], [-1.0, 6.0]])
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(-3, 13, 2000), rng.uniform(-3, 11, 2000)
    assert cov.convex(quad) and cov.convex(quad[::-1])
    assert np.array_equal(cov.in_polygon(quad, xs, ys), cov._inside(quad, xs, ys))


def test_a_refused_cell_calibration_falls_back_in_check_and_stops_planning(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell calibration changed by hand: `recipe check` still reports (nominal model, saying
    why), `plan-poses` refuses in one line and writes nothing."""
    recipe = load_recipe("glassfiber")
    write_cell(recipe, (2.0, -12.0, 0.0))
    path = station_home / "calibration" / "cell-glassfiber.yaml"
    path.write_text(path.read_text().replace("camera_serial: twin", "camera_serial: other"))
    code, out, err = run(capsys, "recipe", "check", "glassfiber")
    assert code == 0, err
    assert "camera model: nominal (recipe lens" in out and "cell calibration is refused" in out
    poses = station_home / "recipes" / "glassfiber.poses.yaml"
    before = poses.read_text()
    code, out, err = run(capsys, "plan-poses", "--recipe", "glassfiber", "--out", "plan.png")
    assert code != 0 and "Traceback" not in err and "changed by hand" in err
    assert poses.read_text() == before
