"""The honest twin: defects anywhere on the sheet with ground truth in base-frame mm, fabric
faults cut at the sheet's edge, a glare that moves with the camera pose, and a raster of
poses over the whole sheet rendered from one shared layer raster."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from station.errors import RecipeError
from station.recipe import Recipe, parse_recipe
from station.twin import TwinWorld, optics
from station.twin.glare import SheetGloss
from station.twin.sheet import DefectSpec, SheetSpec
from station.twin.world import pose_tcp

REPO = Path(__file__).resolve().parents[1]
DOWN = (math.pi, 0.0, 0.0)


def recipe(
    focal_mm: float = 12.0,
    height_mm: float = 350.0,
    poses: list[tuple[float, float]] | None = None,
    **params: object,
) -> Recipe:
    """glassfiber with the given lens focused at `height_mm`, poses at that height (default:
    one over the sheet centre), twin params as given."""
    data = yaml.safe_load((REPO / "recipes/glassfiber.yaml").read_text())
    data["robot"].pop("poses_file", None)
    data["robot"]["poses"] = [
        {"name": f"p{i}", "position_mm": [x, y, height_mm], "rotvec_rad": list(DOWN)}
        for i, (x, y) in enumerate(poses or [(400.0, 0.0)])
    ]
    data["camera"]["lens"].update(focal_length_mm=focal_mm, focus_distance_mm=height_mm)
    data["preprocess"]["tiling"] = {"enabled": False}
    data["twin"].update(time_scale=0, params=dict(params))
    return parse_recipe(yaml.safe_dump(data))


def tcp(x: float, y: float, z: float) -> np.ndarray:
    return np.array([x, y, z, *DOWN])


def seen_mm(world: TwinWorld, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Base-frame table points (N, 2) of the mask's pixels seen from `t`."""
    vs, us = np.nonzero(mask)
    return optics.pixels_to_plane(
        world.intrinsics, world.truth.pose(t), np.column_stack([us, vs]).astype(np.float64)
    )


def test_defects_land_anywhere_on_the_sheet_whatever_the_poses() -> None:
    w = TwinWorld(recipe())
    sheet = w.recipe.sheet
    centres = []
    for seed in range(300):
        spec = w.make_sheet(seed, defective=True)
        centres += [d.centre_mm for d in spec.defects]
    c = np.array(centres)
    half = np.array([sheet.width_mm, sheet.height_mm]) / 2
    assert np.all(np.abs(c) <= half)
    # uniform over the area: each quarter of the sheet gets about a quarter of them, and
    # some lie within 10 mm of every edge
    quarters = np.histogram2d(c[:, 0], c[:, 1], bins=2, range=[[-150, 150], [-150, 150]])[0]
    assert quarters.min() > 0.17 * len(c)
    for axis in (0, 1):
        assert (c[:, axis] > half[axis] - 10).any() and (c[:, axis] < -half[axis] + 10).any()
    # the one pose over the centre sees 64 x 51 mm: most defects lie outside it
    assert np.mean((np.abs(c[:, 0]) > 35) | (np.abs(c[:, 1]) > 28)) > 0.8


def test_truth_is_in_base_mm_and_matches_the_rendered_mask() -> None:
    w = TwinWorld(recipe())
    base = dataclasses.replace(
        w.make_sheet(3, defective=False), centre_mm=(401.5, -2.0), angle_rad=0.02
    )
    spec = dataclasses.replace(
        base,
        defects=(
            DefectSpec("washer", (30.0, -20.0), 10.0, 0.3, 5),
            DefectSpec("cut", (-40.0, 25.0), 14.0, 1.0, 6),
        ),
    )
    w.present(spec)
    truth = w.sheet_truth()
    assert [d["kind"] for d in truth] == ["washer", "cut"]
    for d, t in zip(spec.defects, truth, strict=True):
        at = spec.local_to_table() @ [*d.centre_mm, 1.0]
        assert t["centre_mm"] == pytest.approx(at[:2], abs=1e-3)
        assert t["size_mm"] == d.size_mm
        x0, y0, x1, y1 = t["bbox_mm"]
        assert x0 < at[0] < x1 and y0 < at[1] < y1
        # a view straight over it: the mask's extent on the table is the truth's box
        view = tcp(*t["centre_mm"], 350.0)
        shot = w.render(view, noise_seed=1)
        pts = seen_mm(w, view, shot.mask)
        assert len(pts) > 50
        assert [*pts.min(axis=0), *pts.max(axis=0)] == pytest.approx(t["bbox_mm"], abs=0.6)
    d = w.describe()
    assert d["truth"] == truth and d["defects"] == [x.as_dict() for x in spec.defects]
    w.present(None)
    assert w.sheet_truth() == [] and w.describe()["truth"] == []


def test_fabric_faults_end_at_the_sheet_edge_objects_hang_over() -> None:
    w = TwinWorld(recipe())
    base = dataclasses.replace(
        w.make_sheet(4, defective=False), centre_mm=(400.0, 0.0), angle_rad=0.0
    )
    edge = 400.0 + base.size_mm[0] / 2
    for kind, hangs in (("contamination", False), ("fold", False), ("washer", True)):
        w.present(
            dataclasses.replace(base, defects=(DefectSpec(kind, (148.0, 0.0), 16.0, 0.0, 9),))
        )
        (t,) = w.sheet_truth()
        view = tcp(edge, 0.0, 350.0)
        pts = seen_mm(w, view, w.render(view, noise_seed=1).mask)
        assert (pts[:, 0] < edge).any(), kind
        if hangs:
            assert t["bbox_mm"][2] > edge + 3 and pts[:, 0].max() > edge + 3
        else:
            assert t["bbox_mm"][2] <= edge + 0.2 and pts[:, 0].max() <= edge + 0.2, kind


@pytest.mark.parametrize("size", [4.0, 19.0])
def test_a_fold_pulls_in_the_weave_near_it_not_out_to_the_sheet_edge(size: float) -> None:
    """The cloth a fold takes up comes from within about half its length: the weave farther
    off, and the sheet's edge, lie where they lay without the fold (the twin once sheared the
    weave along lines from the fold's ends to the edge, a fold far easier to see than its
    drawn box)."""
    from station.twin.layers import render_layers
    from station.twin.sheet import Region

    plain = SheetSpec(seed=3, weave="plain", pitch_mm=(2.0, 2.0), size_mm=(200.0, 160.0),
                      centre_mm=(0.0, 0.0), angle_rad=0.0, brightness=1.0, waviness_mm=0.0)
    folded = dataclasses.replace(plain, defects=(DefectSpec("fold", (0.0, 0.0), size, 0.6, 7),))
    region = Region.covering(-100, -80, 100, 80, 4.0)
    a = render_layers(plain, region).stack[..., 0]
    b = render_layers(folded, region).stack[..., 0]
    changed = np.abs(b - a) > 0.05 * float(np.percentile(a, 99))
    ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    dist = np.hypot(region.x0 + xs / region.ppm, region.y0 + ys / region.ppm)
    length = float(np.clip(3 * size, 20, 150))  # Fold.L
    assert changed[dist < length / 2].mean() > 0.05  # the fold and its pull show
    # beyond twice its length the weave is as it was, but for a trace (sheared to the edge:
    # 1.1-2.7 % of it changed)
    assert changed[dist > 2 * length].mean() < 0.004


def mirror_point(spec: SheetSpec, gloss: SheetGloss, camera: np.ndarray) -> np.ndarray:
    """Where the sheet's bow normal points at `camera` (x, y mm): p = c + z * slope(p)."""
    p = camera[:2].copy()
    c, s = math.cos(spec.angle_rad), math.sin(spec.angle_rad)
    for _ in range(20):
        lx, ly = spec.table_to_local(p[None, :])[0]
        gx, gy = (float(v) for v in gloss.slopes(np.array(lx), np.array(ly)))
        p = camera[:2] + camera[2] * np.array([c * gx - s * gy, s * gx + c * gy])
    return p


def test_glare_sits_where_the_bow_mirrors_each_camera() -> None:
    """The same sheet point glares from the camera above it and not from its neighbour 70 mm
    away; each view's highlight lies where the sheet's bow normal points at that camera."""
    off = TwinWorld(recipe(focal_mm=8.0, height_mm=580.0, glare=0))
    spec = off.make_sheet(12, defective=False)
    gloss = SheetGloss.from_spec(spec, off.lighting.sheet_bow_mrad)
    # scaled to a peak of 0.25 (diffuse white is about 0.7): bright, not clipped
    on = TwinWorld(recipe(focal_mm=8.0, height_mm=580.0, glare=0.25 / gloss.strength))
    for w in (on, off):
        w.present(spec)
    a, b = tcp(400.0, 0.0, 580.0), tcp(470.0, 0.0, 580.0)
    spots = []
    for view in (a, b):
        extra = np.clip(
            on.render(view, noise_seed=2).image.astype(np.float32)
            - off.render(view, noise_seed=2).image.astype(np.float32),
            0,
            None,
        )
        pose = on.truth.pose(view)
        # the sheet point (400, 0): bright from A, not from B
        u0, v0 = np.round(
            optics.project_points(on.intrinsics, pose, np.array([[400.0, 0.0, 0.0]]))[0]
        ).astype(int)
        near = extra[v0 - 15 : v0 + 16, u0 - 15 : u0 + 16].mean()
        assert near > 20 if view is a else near < 3
        # the highlight's centre (over the weave's cover), on the table
        smooth = cv2.GaussianBlur(extra, (0, 0), 20)
        vs, us = np.nonzero(smooth > 0.5 * smooth.max())
        wt = smooth[vs, us]
        uv = np.array([[(us * wt).sum() / wt.sum(), (vs * wt).sum() / wt.sum()]])
        spot = optics.pixels_to_plane(on.intrinsics, pose, uv)[0]
        assert spot == pytest.approx(mirror_point(spec, gloss, view[:3]), abs=3.0)
        spots.append(spot)
    assert spots[1][0] - spots[0][0] == pytest.approx(70, abs=3)


def test_glare_off_shows_no_bow_and_bad_settings_are_recipe_errors() -> None:
    shots = []
    for bow in (1.0, 8.0):
        for glare in (0, 2.0):
            w = TwinWorld(recipe(focal_mm=8.0, height_mm=580.0, glare=glare, sheet_bow_mrad=bow))
            w.present(w.make_sheet(5, defective=False))
            shots.append(w.render(tcp(400.0, 0.0, 580.0), noise_seed=4).image)
    off1, on1, off8, on8 = shots
    assert np.array_equal(off1, off8)  # no glare: the bow does not show
    assert not np.array_equal(on1, on8)  # glare: the bow moves the highlight
    assert on1.astype(float).mean() > off1.astype(float).mean() + 1
    for params, says in (
        ({"glare": -1}, "twin.params.glare"),
        ({"glare": "yes"}, "twin.params.glare"),
        ({"glare_lobe_deg": 0}, "twin.params.glare_lobe_deg"),
        ({"sheet_bow_mrad": 500}, "twin.params.sheet_bow_mrad"),
    ):
        with pytest.raises(RecipeError, match=says):
            TwinWorld(recipe(**params))


def test_a_raster_over_the_whole_sheet_shares_one_layer_raster() -> None:
    """Six poses at 580 mm with the 8 mm lens (2 x 3, serpentine) cover the sheet; the first
    shot renders the layers for all of them, and each shot looks as if rendered alone."""
    raster = [
        (325.0, -100.0),
        (475.0, -100.0),
        (475.0, 0.0),
        (325.0, 0.0),
        (325.0, 100.0),
        (475.0, 100.0),
    ]
    r = recipe(focal_mm=8.0, height_mm=580.0, poses=raster, glare=0)
    w = TwinWorld(r)
    w.present(w.make_sheet(8, defective=True))
    shots = [w.render(pose_tcp(p), noise_seed=[8, i]) for i, p in enumerate(r.robot.poses)]
    assert len(w._cache) == 1
    region = w._cache[0].region
    need = optics.ground_px_per_mm(w.intrinsics, w.truth.pose(pose_tcp(r.robot.poses[0])))
    assert region.ppm >= need and region.width * region.height <= 4_000_000
    # a shot rendered on its own (a one-pose recipe) looks the same
    k = 4
    alone = TwinWorld(recipe(focal_mm=8.0, height_mm=580.0, poses=[raster[k]], glare=0))
    alone.present(w.sheet)
    single = alone.render(pose_tcp(r.robot.poses[k]), noise_seed=[8, k])
    assert alone._cache[0].region.width < region.width
    # (the rasters share the sheet's texel lattice: equal but for a rare rounding)
    diff = np.abs(single.image.astype(np.float32) - shots[k].image.astype(np.float32))
    assert diff.mean() < 0.05 and np.mean(diff > 0) < 0.002
    assert np.mean(single.mask != shots[k].mask) < 1e-4
    # every defect lies in some shot
    for t in w.sheet_truth():
        x, y = t["centre_mm"]
        assert any(abs(x - px) <= 80 and abs(y - py) <= 64 for px, py in raster)
