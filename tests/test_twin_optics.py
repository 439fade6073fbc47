"""Twin projection: pinhole geometry from the TCP pose, and masks that follow it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_twin_render import classic

from station.recipe import Pose, Recipe, parse_recipe
from station.twin import TwinWorld, optics
from station.twin.sheet import DefectSpec
from station.twin.world import pose_tcp

REPO = Path(__file__).resolve().parents[1]
DOWN = (np.pi, 0.0, 0.0)


def recipe(**twin: object) -> Recipe:
    """The shipped recipe with the optics these numbers are for: 12 mm lens focused at 350 mm."""
    data = classic(yaml.safe_load((REPO / "recipes/glassfiber.yaml").read_text()))
    data["twin"].update({"time_scale": 0, **twin})
    return parse_recipe(yaml.safe_dump(data))


def test_point_below_camera_lands_on_principal_point() -> None:
    r = recipe()
    k = optics.Intrinsics.from_camera(r.camera)
    pose = optics.CameraPose.from_tcp((400, 0, 350, *DOWN))
    uv = optics.project_points(k, pose, np.array([[400.0, 0.0, 0.0]]))[0]
    assert uv == pytest.approx([(640 - 1) / 2, (512 - 1) / 2], abs=1e-6)


def test_known_point_lands_at_expected_pixel() -> None:
    r = recipe()
    k = optics.Intrinsics.from_camera(r.camera)
    f_px = 12.0 / 3.45e-3
    assert k.fx == pytest.approx(f_px)
    pose = optics.CameraPose.from_tcp((400, 0, 350, *DOWN))
    # camera looks down: base +x -> image right, base +y -> image up
    uv = optics.project_points(k, pose, np.array([[410.0, 5.0, 0.0]]))[0]
    assert uv == pytest.approx([319.5 + f_px * 10 / 350, 255.5 - f_px * 5 / 350], abs=1e-6)
    # and back through the homography / ray intersection
    back = optics.pixels_to_plane(k, pose, uv[None, :])[0]
    assert back == pytest.approx([410.0, 5.0], abs=1e-9)
    hom = optics.plane_homography(k, pose) @ [410.0, 5.0, 1.0]
    assert hom[:2] / hom[2] == pytest.approx(uv, abs=1e-9)


def test_footprint_size_matches_lens() -> None:
    r = recipe()
    k = optics.Intrinsics.from_camera(r.camera)
    q = optics.footprint(k, optics.CameraPose.from_tcp((400, 0, 350, *DOWN)))
    width = q[:, 0].max() - q[:, 0].min()
    assert width == pytest.approx(639 * 3.45e-3 * 350 / 12, rel=1e-6)


def _sheet_with(world: TwinWorld, kind: str, at_table: tuple[float, float], size: float = 10.0):
    base = world.make_sheet(3, defective=False)
    base = dataclasses.replace(base, centre_mm=(400.0, 0.0), angle_rad=0.0)
    local = (at_table[0] - 400.0, at_table[1] - 0.0)
    return dataclasses.replace(base, defects=(DefectSpec(kind, local, size, 0.3, 5),))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_mask_centroid_follows_projection_and_tcp_moves() -> None:
    r = recipe()
    world = TwinWorld(r)
    world.present(_sheet_with(world, "washer", (410.0, 5.0)))
    f_px = 12.0 / 3.45e-3
    tcp = np.array([400.0, 0.0, 350.0, *DOWN])
    shot = world.render(tcp, noise_seed=1)
    expected = [319.5 + f_px * 10 / 350, 255.5 - f_px * 5 / 350]
    # the washer lies on the rovings (0.28 mm up): a tiny magnification, well under a pixel here
    assert _centroid(shot.mask) == pytest.approx(expected, abs=1.0)
    # moving the camera +5 mm in x moves the scene 5 mm * f/z to the left in the image
    moved = world.render(tcp + [5, 0, 0, 0, 0, 0], noise_seed=1)
    shift = _centroid(moved.mask) - _centroid(shot.mask)
    assert shift == pytest.approx([-f_px * 5 / 350, 0.0], abs=0.5)
    # and +3 mm in y moves it down
    moved_y = world.render(tcp + [0, 3, 0, 0, 0, 0], noise_seed=1)
    shift_y = _centroid(moved_y.mask) - _centroid(shot.mask)
    assert shift_y == pytest.approx([0.0, f_px * 3 / 350], abs=0.5)


def test_image_content_shifts_with_tcp() -> None:
    """The whole image (not only the mask) moves by the projected amount."""
    r = recipe()
    world = TwinWorld(r)
    world.present(world.make_sheet(11, defective=False))
    tcp = np.array([400.0, 0.0, 350.0, *DOWN])
    a = world.render(tcp, noise_seed=1).image.astype(np.float32)
    b = world.render(tcp + [2, 0, 0, 0, 0, 0], noise_seed=1).image.astype(np.float32)
    dx = round(12.0 / 3.45e-3 * 2 / 350)  # 20 px
    errs = {
        s: float(np.abs(a[:, 100 + s : 500 + s] - b[:, 100:500]).mean()) for s in range(-30, 31)
    }
    assert min(errs, key=errs.get) == dx


def test_mask_scales_with_height_and_area_grows_closer() -> None:
    r = recipe()
    world = TwinWorld(r)
    world.present(_sheet_with(world, "hex_nut", (400.0, 0.0), 8.0))
    near = world.render(np.array([400, 0, 300, *DOWN]), noise_seed=1).mask
    far = world.render(np.array([400, 0, 400, *DOWN]), noise_seed=1).mask
    ratio = (near > 0).sum() / (far > 0).sum()
    assert ratio == pytest.approx((400 / 300) ** 2, rel=0.06)


def test_tilted_camera_projection_consistent() -> None:
    r = recipe()
    k = optics.Intrinsics.from_camera(r.camera)
    pose = optics.CameraPose.from_tcp((400, 0, 350, np.pi, 0.1, 0.0))
    pts = np.array([[390.0, -7.0], [405.0, 3.0]])
    uv = optics.project_points(k, pose, np.column_stack([pts, [0, 0]]))
    assert optics.pixels_to_plane(k, pose, uv) == pytest.approx(pts, abs=1e-9)


def test_render_uses_recipe_pose_tcp() -> None:
    p = Pose(name="x", position_mm=(400, 0, 350), rotvec_rad=DOWN)
    assert pose_tcp(p) == pytest.approx([400, 0, 350, *DOWN])
