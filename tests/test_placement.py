"""The placement check: the sheet's edges found in the shots (station.geometry.placement),
against the recipe's place; on drawn mosaics with a known outline, on the twin's renders, and
live."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from station.geometry.placement import (
    Placement,
    find_recipe_sheet,
    find_sheet,
    mosaic_grid,
    recipe_mosaic,
)
from station.geometry.sheet_map import Grid, shot_view
from station.recipe import load_recipe

CENTRE = (400.0, 0.0)
SHEET = (250.0, -150.0, 550.0, 150.0)  # 300 x 300 mm around CENTRE
REGION = (247.0, -153.0, 553.0, 153.0)  # grown by 3 mm
REACH = 16.0  # the views see this far past the region


def _drawn(
    offset: tuple[float, float] = (0.0, 0.0),
    angle_deg: float = 0.0,
    sheet_grey: float = 100.0,
    table_grey: float = 20.0,
    seen_mm: float = REACH,
    sheet_present: bool = True,
    seed: int = 0,
    half_mm: tuple[float, float] = (150.0, 150.0),
) -> tuple[np.ndarray, Grid]:
    """A mosaic of a woven 300 x 300 mm sheet at `offset` and `angle_deg` on a plain table,
    seen to `seen_mm` past the region (NaN beyond)."""
    grid = mosaic_grid(REGION, REACH + 4.0)
    fine = dataclasses.replace(grid, mm_per_px=grid.mm_per_px / 4, shape=(
        grid.shape[0] * 4, grid.shape[1] * 4))  # each cell the mean of 4 x 4 samples
    c = fine.centres()
    a = math.radians(angle_deg)
    dx, dy = c[..., 0] - CENTRE[0] - offset[0], c[..., 1] - CENTRE[1] - offset[1]
    lx, ly = math.cos(a) * dx + math.sin(a) * dy, -math.sin(a) * dx + math.cos(a) * dy
    rng = np.random.default_rng(seed)
    weave = 15.0 * np.sin(2 * np.pi * lx / 2.5) * np.sin(2 * np.pi * ly / 2.5)
    sheet = sheet_grey + weave + rng.normal(0, 3, lx.shape)
    table = table_grey + rng.normal(0, 4, lx.shape)
    on = (np.abs(lx) <= half_mm[0]) & (np.abs(ly) <= half_mm[1]) & sheet_present
    values = np.where(on, sheet, table).reshape(grid.shape[0], 4, grid.shape[1], 4)
    values = values.mean(axis=(1, 3))
    c = grid.centres()
    x0, y0, x1, y1 = REGION
    seen = (c[..., 0] > x0 - seen_mm) & (c[..., 0] < x1 + seen_mm)
    seen &= (c[..., 1] > y0 - seen_mm) & (c[..., 1] < y1 + seen_mm)
    return np.where(seen, values, np.nan), grid


def _find(values: np.ndarray, grid: Grid) -> Placement:
    return find_sheet(values, grid, SHEET, REGION, tolerance_mm=1.0)


@pytest.mark.parametrize(
    ("offset", "angle", "sheet_grey", "table_grey"),
    [
        ((0.0, 0.0), 0.0, 100.0, 20.0),
        ((1.6, -1.1), 0.3, 100.0, 20.0),
        ((-0.7, 2.2), -0.25, 100.0, 20.0),
        ((1.0, 0.5), 0.2, 60.0, 200.0),  # a dark sheet on a light table
    ],
)
def test_a_sheet_in_place_is_found_where_it_lies(
    offset: tuple[float, float], angle: float, sheet_grey: float, table_grey: float
) -> None:
    pl = _find(*_drawn(offset, angle, sheet_grey, table_grey))
    assert pl.problem is None and pl.found
    assert pl.offset_mm == pytest.approx(offset, abs=0.3)
    assert pl.angle_deg == pytest.approx(angle, abs=0.03)
    assert pl.size_mm == pytest.approx((300.0, 300.0), abs=0.6)
    assert pl.past_region_mm is not None and pl.past_region_mm <= 1.0
    assert pl.summary().startswith(f"sheet {offset[0]:+.1f} / {offset[1]:+.1f} mm off its place")


def test_a_sheet_reaching_past_the_region_is_a_problem() -> None:
    pl = _find(*_drawn((5.0, 0.0)))  # its right edge 2 mm past the region's
    assert pl.found and pl.offset_mm == pytest.approx((5.0, 0.0), abs=0.3)
    assert pl.past_region_mm == pytest.approx(2.0, abs=0.3)
    assert pl.problem is not None
    assert pl.problem.startswith("the sheet lies +5.0 / +0.0 mm off its place")
    assert "mm past the inspected region (tolerance 1.0 mm), not inspected whole" in pl.problem
    # rotated in place: its corners leave the region
    a = math.radians(2.0)
    turned = _find(*_drawn((0.0, 0.0), 2.0))
    assert turned.past_region_mm == pytest.approx(150 * (math.sin(a) + math.cos(a)) - 153, abs=0.3)
    assert turned.problem is not None


def test_a_sheet_of_another_size_is_a_problem() -> None:
    small = _find(*_drawn(half_mm=(145.0, 150.0)))  # 290 x 300 mm in the 300 x 300 place
    assert small.found and small.size_mm == pytest.approx((290.0, 300.0), abs=0.6)
    assert small.problem is not None
    assert small.problem.startswith("the sheet measures 290.0 x 300.0 mm, the recipe's 300 x 300")
    assert "(tolerance 3.0 mm): another product" in small.problem
    assert _find(*_drawn(half_mm=(148.8, 150.0))).problem is None  # 2.4 mm short: within


def test_an_edge_past_what_the_shots_see_is_a_problem() -> None:
    pl = _find(*_drawn((25.0, 0.0)))  # its right edge 22 mm past the region, seen to 16
    assert not pl.found and pl.offset_mm is None
    assert pl.problem is not None and pl.problem.startswith("the sheet's right edge lies past")
    assert pl.summary().startswith("sheet not found: ")
    inside = _find(*_drawn((-18.0, 0.0), seen_mm=40.0))  # seen whole, 18 mm to the left
    assert inside.problem is not None
    assert inside.problem.startswith("the sheet's right edge lies more than 15 mm inside")


def test_an_empty_table_or_a_table_like_the_sheet_is_a_problem() -> None:
    empty = _find(*_drawn(sheet_present=False))
    alike = _find(*_drawn(table_grey=100.0))
    for pl in (empty, alike):
        assert not pl.found
        assert pl.problem is not None and pl.problem.startswith("sheet and table look alike")
        assert "sheet.check_placement: false" in pl.problem
    values, grid = _drawn()
    c = grid.centres()
    values[np.hypot(c[..., 0] - 400.0, c[..., 1]) < 40.0] = 20.0  # a hole 80 mm across
    holed = _find(values, grid)
    assert holed.problem is not None and not holed.found
    assert holed.problem.startswith("7 % of the sheet's place looks like the table")
    assert "a large hole or dark area" in holed.problem
    blind = _find(*_drawn(seen_mm=-4.0))  # the views end inside the region
    assert blind.problem == "the shots see no table beside the sheet (coverage.view_margin_mm)"


def test_a_hole_or_an_object_at_an_edge_does_not_move_it() -> None:
    values, grid = _drawn((1.0, -0.5), 0.1)
    c = grid.centres()
    hole = np.hypot(c[..., 0] - 251.0, c[..., 1] - 20.0) < 6.0  # a hole at the left edge
    values[hole] = 20.0
    thing = (np.abs(c[..., 0] - 556.0) < 9.0) & (np.abs(c[..., 1] + 60.0) < 12.0)
    values[thing] = 180.0  # a bright object over the right edge
    pl = _find(values, grid)
    assert pl.problem is None
    assert pl.offset_mm == pytest.approx((1.0, -0.5), abs=0.3)
    assert pl.angle_deg == pytest.approx(0.1, abs=0.03)


def test_the_twin_sheet_is_found_where_the_twin_put_it(station_home: Path) -> None:
    """The shipped recipe's nine shots of twin sheets: in place (within 0.5 mm and 0.05 deg
    of the twin's own placement), and one the line put off its place."""
    from station.cellcal.store import inspection_camera
    from station.twin.world import MISPLACED_MM, TwinWorld, pose_tcp

    recipe = load_recipe("glassfiber")
    camera = inspection_camera(recipe)
    world = TwinWorld(recipe, seed=5)
    world.inject_fault("misplaced_sheet", after=1, count=1)
    found = []
    for _ in range(2):
        spec, _ = world.next_sheet()
        mosaic = recipe_mosaic(recipe, camera.table_to_base)
        for pose in recipe.robot.poses:
            tcp = pose_tcp(pose)
            mosaic.add(shot_view(camera, pose.name, tcp), world.render(tcp).image)
        pl = find_recipe_sheet(mosaic.result(), mosaic.grid, recipe)
        true = (spec.centre_mm[0] - recipe.sheet.center_mm[0],
                spec.centre_mm[1] - recipe.sheet.center_mm[1])
        assert pl.offset_mm == pytest.approx(true, abs=0.5)
        assert pl.angle_deg == pytest.approx(math.degrees(spec.angle_rad), abs=0.05)
        assert np.abs(np.array(pl.corners_mm) - spec.corners_mm()).max() < 1.0
        found.append((pl, true))
    (placed, true0), (off, true1) = found
    assert placed.problem is None
    assert true1[0] - true0[0] == pytest.approx(MISPLACED_MM[0], abs=3.0)
    assert off.problem is not None and "past the inspected region" in off.problem


def test_recipe_check_refuses_poses_that_do_not_see_the_table_around_the_sheet(
    station_home: Path,
) -> None:
    from station.geometry.coverage import check
    from station.recipe import parse_recipe

    path = station_home / "recipes" / "glassfiber.yaml"
    text = path.read_text()
    ok = check(parse_recipe(text, str(path)))
    assert not [p for p in ok.problems if p.startswith("sheet.check_placement")]
    grown = text.replace("edge_margin_mm: 5.0", "edge_margin_mm: 10.0")  # views end 3 mm past
    problems = check(parse_recipe(grown, str(path))).problems
    said = [p for p in problems if p.startswith("sheet.check_placement")]
    assert said and "of the table 4 mm around the region" in said[0]
    off = grown.replace("check_placement: true", "check_placement: false")
    assert not [p for p in check(parse_recipe(off, str(path))).problems
                if p.startswith("sheet.check_placement")]


@pytest.mark.slow
def test_a_misplaced_sheet_is_faulted_rejected_and_stored(station_home: Path) -> None:
    """Live on the twin with the shipped geometry: the line puts the second sheet off its
    place; that part is a `misplaced` fault (rejected, its placement and sheet map stored),
    the sheets before and after it are decided, and the placement of each is on its row."""
    import yaml
    from sqlalchemy import select
    from test_inspection_support import bright_set, database

    from station.devices.factory import open_devices
    from station.inspection.cycle import Inspector
    from station.inspection.recorder import Recorder
    from station.recipe import parse_recipe
    from station.storage.models import Part, Verdict
    from station.twin.world import TwinWorld

    data = yaml.safe_load((station_home / "recipes" / "glassfiber.yaml").read_text())
    data["twin"].update(time_scale=0.0)
    data["twin"].setdefault("params", {})["faults"] = {"misplaced_sheet": {"after": 1, "count": 1}}
    data.setdefault("monitoring", {}).setdefault("drift", {})["reference"] = {"enabled": False}
    data["storage"] = {"database_url": f"sqlite:///{station_home}/data/station.db"}
    path = station_home / "recipes" / "placed.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = parse_recipe(path.read_text(), str(path))
    db = database(recipe)
    world = TwinWorld(recipe, seed=4)
    with (
        open_devices(recipe, world=world) as dev,
        Inspector(recipe, bright_set(recipe, threshold=1.0, mean=250.0), Recorder(db, recipe),
                  dev, operator=lambda fault: True) as insp,
    ):
        summary = insp.run_live(count=3)
    faults = [r.fault.kind if r.fault else None for r in summary.results]
    assert faults == [None, "misplaced", None]
    assert dev.line.rejects >= 1
    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.verdict for r in rows] == [Verdict.PASS, Verdict.FAULT, Verdict.PASS]
        placed = [r.sheet_placement for r in rows]
        assert rows[1].reason.startswith("not inspected whole: the sheet lies +")
        assert all(r.sheet_map_path for r in rows)
    assert placed[0]["problem"] is None and placed[2]["problem"] is None
    assert "past the inspected region" in placed[1]["problem"]
    shift = [b - a for a, b in zip(placed[0]["offset_mm"], placed[1]["offset_mm"], strict=True)]
    assert shift == pytest.approx([9.0, -4.0], abs=3.0)  # MISPLACED_MM, beside each own jitter
    db.dispose()
