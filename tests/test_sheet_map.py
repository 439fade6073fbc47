"""The sheet map (station.geometry.sheet_map): projection, fusion and defect regions on synthetic
maps seen through an analytic pinhole camera looking straight down at the table."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from station.geometry.sheet_map import (
    BLIND_BGR,
    Grid,
    SheetMapper,
    ShotView,
    back_project,
    footprint,
    project,
    render,
)

W, H = 640, 512
F = 12000 / 3.45  # 12 mm lens, 3.45 um pixels: the shipped camera
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1.0]])
HEIGHT = 350.0  # mm above the table: ~0.1 mm per pixel, a 64 x 51 mm footprint


def down_view(
    name: str,
    x: float,
    y: float,
    dist: np.ndarray | None = None,
    yaw_deg: float = 0.0,
    crop: tuple[int, int, int, int] | None = None,
) -> ShotView:
    """A camera at (x, y, HEIGHT) looking straight down (the UR rotvec [pi, 0, 0]), turned by
    `yaw_deg` about the vertical."""
    a = math.radians(yaw_deg)
    yaw = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t = np.eye(4)
    t[:3, :3] = yaw @ np.diag([1.0, -1.0, -1.0])
    t[:3, 3] = [x, y, HEIGHT]
    return ShotView(name, K, np.zeros(5) if dist is None else dist, t, (W, H), crop)


def blob_map(
    view: ShotView,
    at_mm: tuple[float, float],
    peak: float,
    base: float = 0.0,
    size: tuple[int, int] | None = None,
    sigma_px: float = 4.0,
) -> np.ndarray:
    """A map of the view's window (at `size`, default the window's) with a Gaussian spot where
    the table point `at_mm` appears (projected analytically, distortion included)."""
    x, y, w, h = view.window()
    mw, mh = size or (w, h)
    uv, _ = cv2.projectPoints(np.array([[*at_mm, 0.0]]), *_rt(view), view.matrix, view.dist)
    u, v = uv.ravel()
    mx, my = (u - x + 0.5) * mw / w - 0.5, (v - y + 0.5) * mh / h - 0.5
    s = sigma_px * mw / w
    xx, yy = np.meshgrid(np.arange(mw), np.arange(mh))
    return (base + (peak - base) * np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * s * s))).astype(
        np.float32
    )


def _rt(view: ShotView) -> tuple[np.ndarray, np.ndarray]:
    inv = np.linalg.inv(view.camera_to_base)
    return cv2.Rodrigues(inv[:3, :3])[0], inv[:3, 3]


def peak_cell_mm(grid: Grid, fused: np.ndarray) -> np.ndarray:
    r, c = np.unravel_index(np.nanargmax(fused), fused.shape)
    return grid.centres()[r, c]


def test_projection_round_trip_with_distortion() -> None:
    view = down_view("a", 400.0, 0.0, dist=np.array([-0.2, 0.1, 5e-4, -3e-4, 0.0]), yaw_deg=7)
    pts = np.array([[395.0, 3.0, 0.0], [420.0, -18.0, 0.0], [400.0, 0.0, 0.0]])
    uv = project(view, pts)
    ref, _ = cv2.projectPoints(pts, *_rt(view), K, view.dist)
    assert uv == pytest.approx(ref.reshape(-1, 2), abs=1e-6)
    assert back_project(view, uv) == pytest.approx(pts[:, :2], abs=1e-6)
    # far outside the frame (where the polynomial folds back) and behind the camera: NaN
    assert np.isnan(project(view, np.array([[900.0, 0.0, 0.0], [400.0, 0.0, 500.0]]))).all()
    foot = footprint(view)
    assert foot.shape == (4, 2) and np.isfinite(foot).all()


@pytest.mark.parametrize(
    ("dist", "yaw", "size", "crop"),
    [
        (None, 0.0, None, None),
        (np.array([-0.25, 0.15, 6e-4, -4e-4, 0.0]), 0.0, None, None),
        (None, 30.0, (256, 256), None),  # a map at the detector's input size
        (np.array([-0.1, 0.0, 0.0, 0.0, 0.0]), -12.0, (200, 160), (40, 30, 560, 450)),
    ],
)
def test_a_hot_spot_lands_at_its_table_point(dist, yaw, size, crop) -> None:
    view = down_view("centre", 400.0, 0.0, dist=dist, yaw_deg=yaw, crop=crop)
    at = (409.3, -7.8)
    grid = Grid.over((370.0, -30.0, 430.0, 30.0), 0.5)
    mapper = SheetMapper(grid, "max")
    mapper.add(view, {"patchcore": blob_map(view, at, 3.0, size=size)})
    sheet = mapper.result()
    fused = sheet.fused["patchcore"]
    assert np.linalg.norm(peak_cell_mm(grid, fused) - at) <= grid.mm_per_px
    (defect,) = sheet.defects({"patchcore": 1.0})
    assert np.linalg.norm(np.array(defect.centre_mm) - at) <= grid.mm_per_px
    assert defect.detector == "patchcore" and defect.shots == ("centre",)
    assert defect.peak == pytest.approx(3.0, rel=0.1)
    assert defect.area_mm2 > 0
    # the spot is ~1 mm across at 1/3 of its peak: a few cells (one more around, from the
    # max over each cell), not a smear
    assert defect.area_mm2 < 6.0
    # its box: the hot cells' extent, cell edges included, around the spot
    hot = np.argwhere(fused >= 1.0)
    (r0, c0), (r1, c1) = hot.min(axis=0), hot.max(axis=0)
    s, gx0, gy0 = grid.mm_per_px, grid.x0, grid.y0
    assert defect.box_mm == pytest.approx((gx0 + c0 * s, gy0 + r0 * s,
                                           gx0 + (c1 + 1) * s, gy0 + (r1 + 1) * s))
    x0, y0, x1, y1 = defect.box_mm
    assert x0 < at[0] < x1 and y0 < at[1] < y1


def test_fusion_rules_on_two_overlapping_views() -> None:
    """A spot seen by one of two views (glare): max keeps it, mean and min suppress it."""
    a, b = down_view("a", 390.0, 0.0), down_view("b", 410.0, 0.0)
    at = (402.0, 5.0)  # in both footprints (x 358-422 and 378-442)
    maps = {"a": blob_map(a, at, 1.5, base=0.2), "b": np.full((H, W), 0.2, np.float32)}
    results = {}
    for fusion in ("max", "mean", "min"):
        grid = Grid.over((380.0, -20.0, 420.0, 20.0), 0.5)
        mapper = SheetMapper(grid, fusion)
        for view in (a, b):
            mapper.add(view, {"d": maps[view.name]})
        results[fusion] = mapper.result()
    peaks = {f: r.peaks()["d"] for f, r in results.items()}
    assert peaks["max"] == pytest.approx(1.5, rel=0.05)
    assert peaks["mean"] == pytest.approx(0.85, rel=0.05)
    assert peaks["min"] == pytest.approx(0.2, abs=1e-6)
    (spot,) = results["max"].defects()
    assert spot.shots == ("a", "b")
    assert np.linalg.norm(np.array(spot.centre_mm) - at) <= 0.5
    assert results["mean"].defects() == [] and results["min"].defects() == []


def test_cells_no_view_sees_are_nan_and_counted() -> None:
    view = down_view("only", 400.0, 0.0)  # sees x 368-432, y -25.6..25.6
    grid = Grid.over((350.0, -40.0, 450.0, 40.0), 1.0)
    mapper = SheetMapper(grid, "mean", region_mm=(350.0, -40.0, 450.0, 40.0))
    mapper.add(view, {"d": np.zeros((H, W), np.float32)})
    sheet = mapper.result()
    fused = sheet.fused["d"]
    c = grid.centres()
    inside = (np.abs(c[..., 0] - 400) < 31) & (np.abs(c[..., 1]) < 25)
    outside = (np.abs(c[..., 0] - 400) > 33) | (np.abs(c[..., 1]) > 27)
    assert np.isfinite(fused[inside]).all() and (fused[inside] == 0).all()
    assert np.isnan(fused[outside]).all()
    assert sheet.unseen_cells() == int(np.isnan(fused).sum())
    assert 100 * 80 - 64 * 52 <= sheet.unseen_cells() <= 100 * 80 - 62 * 50


def test_two_detectors_combine_as_any_and_keep_their_peaks() -> None:
    view = down_view("c", 400.0, 0.0)
    grid = Grid.over((380.0, -20.0, 420.0, 20.0), 0.5)
    mapper = SheetMapper(grid, "max")
    mapper.add(
        view,
        {
            "a": blob_map(view, (390.0, 0.0), 4.0),  # raw scores: threshold 2
            "b": blob_map(view, (410.0, 10.0), 0.9),
        },
    )  # threshold 0.5
    sheet = mapper.result()
    assert sheet.peaks()["a"] == pytest.approx(4.0, rel=0.1)
    th = {"a": 2.0, "b": 0.5}
    combined = sheet.combined(th)
    assert np.nanmax(combined) == pytest.approx(2.0, rel=0.1)
    found = {d.detector: d for d in sheet.defects(th)}
    assert set(found) == {"a", "b"}
    assert np.linalg.norm(np.array(found["b"].centre_mm) - (410.0, 10.0)) <= 0.5
    assert found["a"].peak == pytest.approx(2.0, rel=0.1)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Grid.over((10.0, 0.0, 5.0, 1.0), 0.5)
    with pytest.raises(ValueError, match="fusion"):
        SheetMapper(Grid.over((0.0, 0.0, 1.0, 1.0), 0.5), "median")
    mapper = SheetMapper(Grid.over((380.0, -20.0, 420.0, 20.0), 0.5))
    view = down_view("c", 400.0, 0.0)
    mapper.add(view, {"d": np.zeros((H, W), np.float32)})
    with pytest.raises(ValueError, match="twice"):
        mapper.add(view, {"d": np.zeros((H, W), np.float32)})


def _twin_errors(params: dict, sheets: int = 3) -> tuple[dict[str, list[float]], int]:
    """Defect-centre errors (mm) of the exact and nominal camera models on twin sheets with
    camera truth `params`, at 0.25 mm cells (`defect_centre_errors`)."""
    from station.cellcal.store import inspection_camera, nominal_model
    from station.inspection.sheet_accuracy import defect_centre_errors
    from station.recipe import load_recipe

    base = load_recipe("glassfiber")
    recipe = base.model_copy(
        update={
            "twin": base.twin.model_copy(update={"params": params}),
            "decision": base.decision.model_copy(update={"sheet_map_mm_per_px": 0.25}),
        }
    )
    cameras = {"exact": inspection_camera(recipe), "nominal": nominal_model(recipe)}
    return defect_centre_errors(recipe, cameras, world_seed=5, sheets=sheets)


@pytest.mark.slow
def test_defect_centres_agree_with_the_twin_truth(station_home) -> None:  # noqa: ANN001
    """With the exact camera, within 1 mm of the truth (the drawn footprint's centroid), on
    the nominal twin camera and on one mounted 3 mm / 1 degree off with lens distortion; the
    nominal model's error on the perturbed camera is measured and printed."""
    from station.recipe import load_recipe
    from station.twin.truth import perturbed_truth

    plain, left_plain = _twin_errors({})
    perturbed, left_perturbed = _twin_errors(perturbed_truth(load_recipe("glassfiber"), seed=0))
    assert len(plain["exact"]) >= 3 and len(perturbed["exact"]) >= 3
    # the planned raster sees the whole sheet: no defect may drop out as "partly seen"
    assert left_plain == left_perturbed == 0
    assert max(plain["exact"]) <= 1.0, plain
    assert max(perturbed["exact"]) <= 1.0, perturbed
    # the nominal model is the twin's camera when no camera_truth is set
    assert plain["nominal"] == pytest.approx(plain["exact"], abs=1e-6)
    # a mounting 1 degree off moves the view ~10 mm at the planned height: the nominal model
    # puts the defects there, which is why a real cell needs its calibration
    assert min(perturbed["nominal"]) > 1.0, perturbed

    def stats(e: list[float]) -> str:
        return f"mean {np.mean(e):.3f} max {max(e):.3f} over {len(e)}"

    print(
        f"\nsheet map centre error, mm: nominal twin camera: exact {stats(plain['exact'])} "
        f"({left_plain} partly seen left out); perturbed camera: exact "
        f"{stats(perturbed['exact'])}, nominal model {stats(perturbed['nominal'])} "
        f"({left_perturbed} partly seen left out)"
    )


def test_twin_truth_centroid_is_where_the_drawn_defect_lies(station_home) -> None:  # noqa: ANN001
    """`sheet_truth` centroid_mm: the mean table point of the defect's pixels in a shot seen
    from straight above (the sheet map centres a region there); for asymmetric drawings the
    placement centre (centre_mm) lies away from it."""
    import dataclasses

    from station.cellcal.store import inspection_camera
    from station.geometry.sheet_map import shot_view
    from station.recipe import load_recipe
    from station.twin.sheet import DefectSpec
    from station.twin.world import TwinWorld

    recipe = load_recipe("glassfiber")
    world = TwinWorld(recipe, seed=2)
    base = dataclasses.replace(
        world.make_sheet(3, defective=False), centre_mm=(401.0, -1.5), angle_rad=0.01
    )
    camera = inspection_camera(recipe)
    apart = []
    for defect in (
        DefectSpec("screw", (20.0, -10.0), 6.0, 0.7, 5),
        DefectSpec("cut", (-30.0, 15.0), 14.0, 1.0, 6),
        DefectSpec("missing_roving", (5.0, 30.0), 16.0, 0.2, 7),
    ):
        world.present(dataclasses.replace(base, defects=(defect,)))
        (truth,) = world.sheet_truth()
        tcp = [*truth["centroid_mm"], 300.0, math.pi, 0.0, 0.0]
        rows, cols = np.nonzero(world.render(np.array(tcp), noise_seed=1).mask)
        seen = back_project(shot_view(camera, "above", tcp), np.column_stack([cols, rows]))
        assert len(seen) > 20, defect.kind
        drawn = seen.mean(axis=0)
        assert np.hypot(*(drawn - truth["centroid_mm"])) < 0.2, (defect.kind, drawn, truth)
        apart.append(float(np.hypot(*np.subtract(truth["centre_mm"], truth["centroid_mm"]))))
    assert max(apart) > 0.3, apart  # why the truth is the centroid, not the placement


def saturated_disc(view: ShotView, at_mm: tuple[float, float], radius_px: float) -> np.ndarray:
    """The view's H x W mask of clipped pixels: a disc where the table point `at_mm` appears."""
    uv, _ = cv2.projectPoints(np.array([[*at_mm, 0.0]]), *_rt(view), view.matrix, view.dist)
    u, v = uv.ravel()
    xx, yy = np.meshgrid(np.arange(W), np.arange(H))
    return (xx - u) ** 2 + (yy - v) ** 2 <= radius_px**2


def test_a_saturated_spot_is_fused_from_the_view_that_sees_it_clear() -> None:
    """Glare clipped in view a, clear in view b: every fusion takes b's value there, and
    nothing is blind."""
    a, b = down_view("a", 390.0, 0.0), down_view("b", 410.0, 0.0)
    at = (402.0, 5.0)
    glare = blob_map(a, at, 3.0, base=0.2, sigma_px=20.0)  # what the detector made of it
    for fusion in ("max", "mean", "min"):
        mapper = SheetMapper(Grid.over((380.0, -20.0, 420.0, 20.0), 0.5), fusion)
        mapper.add(a, {"d": glare}, saturated_disc(a, at, 50.0))
        mapper.add(b, {"d": np.full((H, W), 0.2, np.float32)}, None)
        sheet = mapper.result()
        assert sheet.peaks()["d"] < 0.6, fusion  # the clipped spot's peak is gone
        assert sheet.blind_regions() == [] and sheet.unseen_cells() == 0


def test_a_spot_saturated_in_every_view_is_blind_and_keeps_its_value() -> None:
    a, b = down_view("a", 390.0, 0.0), down_view("b", 410.0, 0.0)
    at = (400.0, 0.0)
    maps = {"a": blob_map(a, at, 3.0, base=0.2), "b": blob_map(b, at, 2.5, base=0.2)}
    mapper = SheetMapper(Grid.over((380.0, -20.0, 420.0, 20.0), 0.5), "max")
    for view in (a, b):
        mapper.add(view, {"d": maps[view.name]}, saturated_disc(view, at, 30.0))
    sheet = mapper.result()
    (blind,) = sheet.blind_regions()
    area, centre, extent = blind
    # 30 px at ~0.1 mm/px: a disc of ~3 mm radius on the table, on 0.5 mm cells
    assert 22.0 <= area <= 34.0 and np.linalg.norm(np.array(centre) - at) < 0.5
    assert 5.9 * math.sqrt(2) <= extent <= 7.1 * math.sqrt(2)  # its box, in whole cells
    assert sheet.peaks()["d"] == pytest.approx(3.0, rel=0.05)  # a bright object is not hidden
    assert sheet.unseen_cells() == 0
    picture = render(sheet.combined(), sheet.blind_cells())  # blind cells grey in the PNG
    grey = (picture == np.array(BLIND_BGR, np.uint8)).all(axis=2)
    assert grey.sum() == sheet.blind_cells().sum() == round(area / 0.25)


def test_a_thin_blind_streak_is_judged_by_its_length_not_its_area() -> None:
    """A 0.4 x 5 mm streak clipped in every view covers less than a 2 mm defect's disc
    (3.1 mm²) yet a 2 mm cut could lie in it: the part is not inspected. A spot less than 2 mm
    across passes."""
    from station.errors import NotInspected
    from station.inspection.sheet import check_seen
    from station.recipe import load_recipe

    recipe = load_recipe(str(Path(__file__).parents[1] / "recipes" / "glassfiber.yaml"))
    assert recipe.coverage.smallest_defect_mm == 2.0
    a, b = down_view("a", 390.0, 0.0), down_view("b", 410.0, 0.0)
    flat = np.full((H, W), 0.2, np.float32)

    def sheet_with(streak_mm: tuple[float, float]):  # noqa: ANN202
        mapper = SheetMapper(Grid.over((380.0, -20.0, 420.0, 20.0), 0.5), "max")
        for view in (a, b):
            ends = np.array([[400.0 - streak_mm[0] / 2, 0.3, 0.0],
                             [400.0 + streak_mm[0] / 2, 0.3, 0.0]])
            uv, _ = cv2.projectPoints(ends, *_rt(view), view.matrix, view.dist)
            mask = np.zeros((H, W), np.uint8)
            p0, p1 = (tuple(int(round(c)) for c in q) for q in uv.reshape(2, 2))
            cv2.line(mask, p0, p1, 1, thickness=max(1, round(streak_mm[1] / 0.1)))
            mapper.add(view, {"d": flat}, mask.astype(bool))
        return mapper.result()

    streak = sheet_with((5.0, 0.4))
    (r,) = streak.blind_regions()
    assert r.area_mm2 < math.pi / 4 * 2.0**2 <= 5.0 <= r.extent_mm
    with pytest.raises(NotInspected, match="mm across"):
        check_seen(streak, recipe)
    assert check_seen(sheet_with((0.8, 0.4)), recipe)[1] > 0  # blind, but too small to hide one


def test_a_saturation_mask_of_the_wrong_size_is_refused() -> None:
    mapper = SheetMapper(Grid.over((380.0, -20.0, 420.0, 20.0), 0.5))
    with pytest.raises(ValueError, match="saturation mask of shot a"):
        mapper.add(down_view("a", 400.0, 0.0), {"d": np.zeros((H, W))}, np.zeros((H, W - 1), bool))
