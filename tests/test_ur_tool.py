"""The robot's tool on a UR controller: TCP offset and payload, set and read back at connect and
after every upload of the control script, against the fake UR (which, as a real controller,
starts every program with the installation's TCP and payload).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from test_ur_driver import _cfg as driver_cfg
from test_ur_driver import _next_host

from station.errors import ProtectiveStop, RobotError
from station.geometry.ur_poses import pose_inv, pose_trans
from station.hardware.ur.robot import NO_PAYLOAD, URRobot, dashboard_stop
from station.recipe import Pose, URRobotConfig
from station.twin.fake_ur import FakeURController

pytestmark = pytest.mark.timeout(60)  # nothing here may hang the suite
DOWN = (math.pi, 0.0, 0.0)
RECIPE_TCP = [0.0, 0.0, 0.095, 0.0, 0.0, 0.0]
INSTALLATION_PAYLOAD = 0.7
# a minimal program the fake runs as ur_rtde's control script
SCRIPT = "def rtde_control():\n  rtde_cmd()\n  signal_done_with_cmd()\nend\n"


def _cfg(host: str, **over: object) -> URRobotConfig:
    poses = [Pose(name="a", position_mm=(400.0, 0.0, 350.0), rotvec_rad=DOWN),
             Pose(name="b", position_mm=(420.0, 10.0, 360.0), rotvec_rad=DOWN)]  # fmt: skip
    return driver_cfg(host, **{"payload_kg": 1.2, "payload_cog_mm": (0.0, 0.0, 40.0),
                               "poses": poses, **over})  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakeURController]:
    ctl = FakeURController(
        _next_host(),
        initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0],
        installation_payload=INSTALLATION_PAYLOAD,
    )
    with ctl:
        yield ctl


@pytest.fixture
def robot(fake: FakeURController) -> Iterator[URRobot]:
    rob = URRobot(_cfg(fake.host))
    yield rob
    rob.close()


def _assert_tool_and_pose(fake: FakeURController, pose: Pose) -> None:
    """The controller runs the recipe's TCP and payload, and its TCP is at `pose`."""
    assert fake.model.tcp_offset == pytest.approx(RECIPE_TCP, abs=1e-9)
    assert fake.model.payload == pytest.approx(1.2)
    assert fake.model.payload_cog == pytest.approx([0.0, 0.0, 0.04])
    assert [v * 1000 for v in fake.tcp_pose[:3]] == pytest.approx(pose.position_mm, abs=1e-3)


def _flange(fake: FakeURController) -> list[float]:
    return pose_trans(fake.tcp_pose, pose_inv(fake.model.tcp_offset))[:3]


def test_payload_settings_are_checked() -> None:
    ok = _cfg("127.0.0.1", payload_kg=None)
    assert ok.payload_kg is None and ok.payload_cog_mm == (0.0, 0.0, 40.0)
    for bad in (0.0, -1.0, 5.5):
        with pytest.raises(ValidationError, match="payload_kg"):
            _cfg("127.0.0.1", payload_kg=bad)


def test_fake_program_start_restores_the_installation_tool() -> None:
    with FakeURController(
        _next_host(),
        initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0],
        installation_tcp_offset=[0.0, 0.0, 0.05, 0.0, 0.0, 0.0],
        installation_payload=0.8,
    ) as fake:
        m = fake.model
        assert m.tcp_offset == [0.0, 0.0, 0.05, 0.0, 0.0, 0.0] and m.payload == 0.8
        m.set_tcp([0.0, 0.0, 0.1, 0.0, 0.0, 0.0])
        m.payload, m.payload_cog = 2.0, [0.0, 0.0, 0.03]
        assert fake.tcp_pose[2] == pytest.approx(0.45)  # the tool points down
        m.run_program(SCRIPT)
        assert fake.wait_until(lambda: fake.program_running, 2.0)
        assert m.tcp_offset == [0.0, 0.0, 0.05, 0.0, 0.0, 0.0]
        assert m.payload == 0.8 and m.payload_cog == [0.0, 0.0, 0.0]
        assert fake.tcp_pose[2] == pytest.approx(0.5)  # the flange stayed where it was


@pytest.mark.slow
def test_connect_sets_and_reads_back_tcp_and_payload(
    fake: FakeURController, robot: URRobot, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="station.hardware.ur"):
        robot.connect()
    assert NO_PAYLOAD not in caplog.text
    robot.move_to(robot.cfg.home)
    _assert_tool_and_pose(fake, robot.cfg.home)


@pytest.mark.slow
def test_unset_payload_keeps_the_installations_with_a_warning(
    fake: FakeURController, caplog: pytest.LogCaptureFixture
) -> None:
    rob = URRobot(_cfg(fake.host, payload_kg=None))
    try:
        with caplog.at_level(logging.WARNING, logger="station.hardware.ur"):
            rob.connect()
        assert NO_PAYLOAD in caplog.text
        assert fake.model.payload == INSTALLATION_PAYLOAD
        assert fake.model.tcp_offset == pytest.approx(RECIPE_TCP, abs=1e-9)
    finally:
        rob.close()


@pytest.mark.slow
def test_script_stopped_between_moves_gets_tcp_and_payload_again(
    fake: FakeURController, robot: URRobot
) -> None:
    robot.connect()
    robot.move_to(robot.cfg.home)
    assert dashboard_stop(fake.host)
    time.sleep(0.1)  # the driver sees the stopped program before the move (its script branch)
    pose = robot.cfg.poses[0]
    robot.move_to(pose)
    assert len([s for s in fake.model.received_scripts if "rtde_cmd()" in s]) == 2
    _assert_tool_and_pose(fake, pose)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_script_stopped_just_before_a_move_is_uploaded_and_the_move_done(
    fake: FakeURController, robot: URRobot
) -> None:
    # The stop lands after the driver's last state read: the move is refused before the arm
    # moves, or the stale read takes the script branch; either way it must end on the pose
    # with the recipe's tool (before: refused in about half the runs, or the installation TCP).
    robot.connect()
    robot.move_to(robot.cfg.home)
    for pose in [*robot.cfg.poses, robot.cfg.home]:
        assert dashboard_stop(fake.host)
        robot.move_to(pose)
        _assert_tool_and_pose(fake, pose)


def _after_the_state_read(
    robot: URRobot, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], object]
) -> None:
    """`fault` strikes right after move_to's state read, which still shows the script running
    and the arm free: the move is refused."""
    state, done = robot._state, []

    def read() -> dict[str, Any]:
        st = state()
        if not done:
            done.append(fault())
        return st

    monkeypatch.setattr(robot, "_state", read)


@pytest.mark.slow
def test_move_refused_by_a_just_stopped_script_is_uploaded_and_done(
    fake: FakeURController, robot: URRobot, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot.connect()
    robot.move_to(robot.cfg.home)
    _after_the_state_read(robot, monkeypatch, lambda: dashboard_stop(fake.host))
    robot.move_to(robot.cfg.poses[0])
    _assert_tool_and_pose(fake, robot.cfg.poses[0])


@pytest.mark.slow
def test_move_refused_by_a_safety_stop_is_named_not_uploaded_around(
    fake: FakeURController, robot: URRobot, monkeypatch: pytest.MonkeyPatch
) -> None:
    robot.connect()
    robot.move_to(robot.cfg.home)
    _after_the_state_read(robot, monkeypatch, fake.emergency_stop)
    with pytest.raises(ProtectiveStop, match="emergency-stopped"):
        robot.move_to(robot.cfg.poses[0])


@pytest.mark.slow
def test_tcp_not_taken_after_an_upload_fails_before_moving(
    fake: FakeURController, robot: URRobot
) -> None:
    robot.connect()
    robot.move_to(robot.cfg.home)
    before = _flange(fake)
    set_tcp = fake.model.set_tcp
    fake.model.set_tcp = lambda offset: set_tcp([0.0] * 6)  # keeps the installation's TCP
    assert dashboard_stop(fake.host)
    time.sleep(0.1)
    with pytest.raises(RobotError, match=r"TCP offset \[0.0, 0.0, 0.0\] mm.*robot.tcp_offset_mm"):
        robot.move_to(robot.cfg.poses[0])
    assert _flange(fake) == pytest.approx(before, abs=1e-6)  # the arm did not move


@pytest.mark.slow
def test_payload_not_read_back_fails_connect(fake: FakeURController, robot: URRobot) -> None:
    output = fake._output_value
    fake._output_value = lambda name: 0.0 if name == "payload" else output(name)
    with pytest.raises(RobotError, match=r"payload of 0.000 kg .*robot.payload_kg 1.2 kg"):
        robot.connect()
