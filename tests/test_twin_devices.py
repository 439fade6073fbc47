"""Simulated robot, camera and line: timing, pose sequence, faults, and the device factory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_twin_render import classic  # the optics these tests were written for

from station.devices.factory import open_devices
from station.errors import CameraError, LineIOError, ProtectiveStop, RecipeError, RobotError
from station.geometry.pose_plan import move_s as trapezoid_time
from station.interfaces import Camera, LineIO, Robot
from station.recipe import Pose, Recipe, parse_recipe
from station.twin import SimCamera, SimLine, SimRobot, TwinWorld
from station.twin import world as world_mod

REPO = Path(__file__).resolve().parents[1]


def recipe(camera: dict | None = None, **twin: object) -> Recipe:
    data = classic(yaml.safe_load((REPO / "recipes/glassfiber.yaml").read_text()))
    data["twin"].update({"time_scale": 0, **twin})
    data["camera"].update({"width": 160, "height": 128, **(camera or {})})
    return parse_recipe(yaml.safe_dump(data))


def test_trapezoid_profile() -> None:
    # long move: cruise at full speed, plus v/a for the ramps
    assert trapezoid_time(150.0, 250.0, 1200.0) == pytest.approx(150 / 250 + 250 / 1200)
    # short move: triangle, never reaches full speed
    assert trapezoid_time(13.0, 250.0, 1200.0) == pytest.approx(2 * math.sqrt(13 / 1200))
    # continuous at the switch-over distance v^2/a
    d = 250.0**2 / 1200.0
    assert trapezoid_time(d, 250, 1200) == pytest.approx(trapezoid_time(d + 1e-9, 250, 1200))
    assert trapezoid_time(0.0, 250, 1200) == 0.0


def test_pose_sequence_timing_and_clock() -> None:
    r = recipe()
    w = TwinWorld(r)
    robot = SimRobot(w)
    robot.connect()
    seq = [r.robot.home, *r.robot.poses, r.robot.home]
    for p in seq:
        state = robot.move_to(p)
        assert state.tcp_mm_rotvec[:3] == pytest.approx(p.position_mm, abs=0.1)
    assert [t.pose for t in robot.timings] == ["home", "left", "centre", "right", "home"]
    home_to_left = robot.timings[1]
    d = math.dist((400, 0, 500), (388, -6, 350))
    assert home_to_left.distance_mm == pytest.approx(d, abs=0.1)
    assert home_to_left.move_s == pytest.approx(d / 250 + 250 / 1200, abs=1e-3)
    left_to_centre = robot.timings[2]
    assert left_to_centre.move_s == pytest.approx(2 * math.sqrt(math.hypot(12, 6) / 1200), abs=1e-3)
    assert left_to_centre.settle_s == r.robot.settle_s
    assert robot.timings[0].total_s == 0.0  # already at home: no move, no settle
    assert w.clock_s == pytest.approx(sum(t.total_s for t in robot.timings))


def test_time_scale_sleeps_scaled_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(world_mod.time, "sleep", slept.append)
    r = recipe(time_scale=0.25)
    w = TwinWorld(r)
    robot = SimRobot(w)
    robot.connect()
    robot.move_to(r.robot.poses[1])
    t = robot.timings[-1]
    assert slept == pytest.approx([0.25 * t.move_s, 0.25 * t.settle_s])
    slept.clear()
    w0 = TwinWorld(recipe(time_scale=0))
    r0 = SimRobot(w0)
    r0.connect()
    r0.move_to(r.robot.poses[1])
    assert slept == [] and w0.clock_s > 0


def test_protective_stop_latches_until_cleared() -> None:
    r = recipe()
    w = TwinWorld(r)
    robot = SimRobot(w)
    robot.connect()
    w.inject_fault("protective_stop", after=1)
    robot.move_to(r.robot.poses[0])
    with pytest.raises(ProtectiveStop, match="protective stop"):
        robot.move_to(r.robot.poses[1])
    assert robot.state().protective_stop
    with pytest.raises(ProtectiveStop):
        robot.move_to(r.robot.poses[2])
    w.clear_faults()
    robot.move_to(r.robot.poses[2])
    assert not robot.state().protective_stop


def test_link_lost_fails_robot_and_line_io() -> None:
    r = recipe()
    w = TwinWorld(r)
    robot, line = SimRobot(w), SimLine(w)
    robot.connect()
    line.open()
    w.inject_fault("link_lost")
    with pytest.raises(RobotError, match="lost connection") as ei:
        robot.move_to(r.robot.poses[0])
    assert not isinstance(ei.value, ProtectiveStop)
    with pytest.raises(LineIOError):
        line.set_reject(True)
    with pytest.raises(RobotError):
        robot.connect()


@pytest.mark.parametrize("kind", ["camera_timeout", "failed_buffer"])
def test_camera_retries_then_fails(kind: str) -> None:
    r = recipe(camera={"retries": 2, "timeout_ms": 500})
    w = TwinWorld(r)
    cam = SimCamera(w)
    cam.open()
    w.inject_fault(kind, count=2)  # two bad tries, the third works
    frame = cam.grab()
    assert frame.image.shape == (128, 160)
    w.inject_fault(kind)  # every try fails
    t0 = w.clock_s
    with pytest.raises(CameraError, match="3 tries"):
        cam.grab()
    if kind == "camera_timeout":
        assert w.clock_s - t0 == pytest.approx(3 * (0.5 + r.camera.exposure_us / 1e6))
    w.clear_faults()
    assert cam.grab().image.shape == (128, 160)


def test_fault_after_counts_operations() -> None:
    w = TwinWorld(recipe())
    w.inject_fault("failed_buffer", after=2, count=1)
    assert [w.trip("failed_buffer") for _ in range(4)] == [False, False, True, False]
    with pytest.raises(ValueError, match="unknown fault"):
        w.inject_fault("meteor")
    with pytest.raises(ValueError, match="after must be a whole number of operations, not 'x'"):
        w.inject_fault("failed_buffer", after="x")  # as a recipe's twin.params.faults may say


def test_faults_from_recipe_params() -> None:
    w = TwinWorld(recipe(params={"faults": {"protective_stop": {"after": 3}}}))
    assert w.faults["protective_stop"].after == 3
    with pytest.raises(RecipeError, match="faults"):
        TwinWorld(recipe(params={"faults": {"meteor": {}}}))


def test_line_presents_parts_at_defect_rate_and_reject_output() -> None:
    w = TwinWorld(recipe(defect_rate=0.5))
    line = SimLine(w)
    line.open()
    ids, defective = [], []
    for _ in range(40):
        pid = line.wait_for_part(5.0)
        ids.append(pid)
        defective.append(w.sheet.defective)
        line.set_reject(w.sheet.defective)
        assert w.reject_output == w.sheet.defective
        line.release_part()
        assert w.sheet is None
    assert len(set(ids)) == 40 and ids[0] == "TWIN-7-000001"
    assert 8 < sum(defective) < 32
    w.queue_sheet(1234, defective=True, part_id="X1")
    assert line.wait_for_part(5.0) == "X1" and w.sheet.seed == 1234 and w.sheet.defective


def test_line_runs_empty_after_limit() -> None:
    w = TwinWorld(recipe(params={"line_parts": 1, "line_transfer_s": 0.5}))
    line = SimLine(w)
    line.open()
    assert line.wait_for_part(2.0)
    assert line.wait_for_part(2.0) is None


def test_line_io_resume_drops_the_heartbeat_long_enough_and_restarts_part_ids() -> None:
    """The cycle's resume after a line-I/O fault (close, open, start_heartbeat): the PLC must
    see the heartbeat still for longer than heartbeat_timeout_s, then part ids from 1 again."""
    r = recipe()
    w = TwinWorld(r)
    line = SimLine(w)
    line.open()
    line.start_heartbeat()
    assert w.clock_s == 0.0  # the first start does not wait
    line.wait_for_part(5.0)
    line.publish_result(False)
    n = len(w.line_log)
    w.inject_fault("link_lost")
    with pytest.raises(LineIOError):
        line.release_part()
    dropped_at = w.clock_s
    w.clear_faults()
    line.close()
    line.open()
    line.start_heartbeat()
    assert w.line_log[n:] == [("heartbeat", False), ("part_id_echo", 0), ("heartbeat", True)]
    cfg = r.line_io
    assert w.clock_s - dropped_at >= cfg.heartbeat_timeout_s + cfg.heartbeat_period_s
    line.wait_for_part(5.0)
    line.publish_result(True)
    assert w.part_id_echo == 1
    # a restart without a close drops it too
    del w.line_log[:]
    line.start_heartbeat()
    assert [s for s in w.line_log if s[0] == "heartbeat"] == [("heartbeat", False),
                                                              ("heartbeat", True)]


def test_camera_frame_carries_ground_truth() -> None:
    r = recipe()
    w = TwinWorld(r)
    robot, cam = SimRobot(w), SimCamera(w)
    robot.connect()
    cam.open()
    w.queue_sheet(5, defective=True)
    w.next_sheet()
    masks = []
    # the recipe's poses may miss the defects (they lie anywhere): add one over each
    over = [Pose(name=f"over{i}", position_mm=(*d["centre_mm"], 350.0),
                 rotvec_rad=(math.pi, 0.0, 0.0)) for i, d in enumerate(w.sheet_truth())]
    assert over
    for p in [*r.robot.poses, *over]:
        robot.move_to(p)
        f = cam.grab()
        assert f.mask is not None and f.mask.shape == f.image.shape
        assert f.camera_settings["exposure_us"] == r.camera.exposure_us
        masks.append(f.mask)
        if f.mask.any():
            assert f.defects and all(d["area_px"] > 0 for d in f.defects)
    assert any(m.any() for m in masks)


def test_unreachable_pose_is_refused() -> None:
    r = recipe()
    robot = SimRobot(TwinWorld(r))
    robot.connect()
    with pytest.raises(RobotError, match="reach"):
        robot.move_to(Pose(name="far", position_mm=(900, 0, 300)))
    with pytest.raises(RobotError, match="above the table"):
        robot.move_to(Pose(name="low", position_mm=(400, 0, 5)))


def test_factory_builds_sim_devices_and_closes_them() -> None:
    r = recipe()
    with open_devices(r) as dev:
        assert isinstance(dev.robot, Robot) and isinstance(dev.robot, SimRobot)
        assert isinstance(dev.camera, Camera) and isinstance(dev.line, LineIO)
        assert dev.world is not None and dev.robot.world is dev.camera.world is dev.world
        assert dev.robot.connected and dev.camera.is_open
        dev.robot.move_to(r.robot.poses[1])
        np.testing.assert_allclose(dev.world.tcp[:3], r.robot.poses[1].position_mm, atol=0.1)
        robot, camera = dev.robot, dev.camera
    assert not robot.connected and not camera.is_open


def test_factory_uses_given_world_and_closes_after_error() -> None:
    r = recipe()
    w = TwinWorld(r)
    with pytest.raises(ProtectiveStop), open_devices(r, world=w) as dev:
        assert dev.world is w
        w.inject_fault("protective_stop")
        robot = dev.robot
        dev.robot.move_to(r.robot.poses[0])
    assert not robot.connected


def test_factory_mixes_sim_robot_with_pylon_emulator(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """camera.driver pylon with the rest simulated: the real pypylon driver on the emulator."""
    pytest.importorskip("pypylon")
    import cv2

    from station.hardware.pylon.camera import PylonCamera
    from station.twin import render_part_shots

    monkeypatch.setenv("PYLON_CAMEMU", "1")
    base = recipe()
    folder = tmp_path / "emu"
    folder.mkdir()
    for i, (_, img, _) in enumerate(render_part_shots(base, 77, defective=False)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img[:128, :160])
    data = classic(yaml.safe_load((REPO / "recipes/glassfiber.yaml").read_text()))
    data["twin"]["time_scale"] = 0
    data["camera"].update({"driver": "pylon", "width": 160, "height": 128,
                           "emulator_images": str(folder)})
    r = parse_recipe(yaml.safe_dump(data))
    with open_devices(r) as dev:
        assert isinstance(dev.camera, PylonCamera) and isinstance(dev.robot, SimRobot)
        assert dev.world is not None
        dev.robot.move_to(r.robot.poses[0])
        frame = dev.camera.grab()
        assert frame.image.shape == (128, 160) and frame.mask is None


def test_the_line_goes_on_unless_its_first_sheet_is_pinned() -> None:
    """A live run's line brings the sheet after the recipe's last part; twin.params.first_sheet
    pins where it starts, so that several models or runtimes can judge the same sheets."""
    w = TwinWorld(recipe(), sheets_before=40)
    assert w.next_sheet()[1] == f"TWIN-{w.seed}-000041"
    pinned = TwinWorld(recipe(params={"first_sheet": 5}), sheets_before=40)
    spec, pid = pinned.next_sheet()
    assert pid == f"TWIN-{pinned.seed}-000005" and spec.seed == pinned.part_seed(5)
    for bad in (0, 2.5, "x"):
        with pytest.raises(RecipeError, match="twin.params.first_sheet: must be a whole number"):
            TwinWorld(recipe(params={"first_sheet": bad}))


def test_a_misspelt_twin_setting_is_refused_with_the_nearest_name() -> None:
    """twin.params keys are read with defaults, so a typo would silently leave the default."""
    with pytest.raises(RecipeError, match="twin.params.lamp_jiter: not a twin setting; did you "
                       "mean lamp_jitter"):
        TwinWorld(recipe(params={"lamp_jiter": 0.5}))
    TwinWorld(recipe(params={"lamp_jitter": 0.05, "line_parts": 3}))
