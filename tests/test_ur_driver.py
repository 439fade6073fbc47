"""URRobot and URLineIO: the real ur_rtde in supervised child processes, against the fake UR.

Each test runs its own fake controller on a private loopback address. Faults are injected on
the fake; the driver must answer with ProtectiveStop / RobotError / LineIOError within its
timeouts, never hang and never take this process down.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Iterator

import pytest

from station.errors import LineIOError, ProtectiveStop, RobotError
from station.geometry.ur_poses import rotation_distance
from station.hardware.ur.line_io import URLineIO
from station.hardware.ur.robot import URRobot
from station.interfaces import LineIO, Robot
from station.recipe import LineIOConfig, Pose, URRobotConfig
from station.twin.fake_ur import FakeURController
from station.twin.fake_ur.motion import LinearMove
from station.twin.fake_ur.plc import (
    HEARTBEAT_LOST,
    MISMATCH,
    NO_RESULT,
    REJECT,
    Disposition,
    PlcConfig,
    SimPLC,
)

pytestmark = pytest.mark.timeout(60)  # nothing here may hang the suite
_hosts = itertools.count(2)
DOWN = (math.pi, 0.0, 0.0)


def _next_host() -> str:
    # A private 127.x.y.z per test: ur_rtde always uses the standard ports.
    return f"127.{40 + os.getpid() % 200}.23.{next(_hosts)}"


def _cfg(host: str, **over: object) -> URRobotConfig:
    base: dict[str, object] = {
        "host": host,
        "tcp_offset_mm": (0.0, 0.0, 95.0),
        "speed_mm_s": 500.0,
        "acceleration_mm_s2": 2500.0,
        "settle_s": 0.0,
        "connect_timeout_s": 10.0,
        "move_timeout_s": 10.0,
        "home": Pose(name="home", position_mm=(400.0, 0.0, 450.0), rotvec_rad=DOWN),
        "poses": [
            Pose(name="left", position_mm=(388.0, -6.0, 350.0), rotvec_rad=DOWN),
            Pose(name="right", position_mm=(412.0, 6.0, 350.0), rotvec_rad=(math.pi, 0.0, 0.2)),
        ],
    }
    base.update(over)
    return URRobotConfig.model_validate(base)


@pytest.fixture
def fake() -> Iterator[FakeURController]:
    ctl = FakeURController(
        _next_host(),
        initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0],
        protective_stop_unlock_delay_s=0.0,
    )
    with ctl:
        yield ctl


@pytest.fixture
def robot(fake: FakeURController) -> Iterator[URRobot]:
    rob = URRobot(_cfg(fake.host))
    yield rob
    rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_connect_moves_and_reads_back_in_mm(fake: FakeURController, robot: URRobot) -> None:
    assert isinstance(robot, Robot)
    robot.connect()
    assert fake.model.tcp_offset == pytest.approx([0.0, 0.0, 0.095, 0.0, 0.0, 0.0])
    for pose in [robot.cfg.home, *robot.cfg.poses]:
        st = robot.move_to(pose)
        assert st.tcp_mm_rotvec[:3] == pytest.approx(pose.position_mm, abs=1e-3)
        assert not st.protective_stop and not st.emergency_stop
        assert [v * 1000 for v in fake.tcp_pose[:3]] == pytest.approx(pose.position_mm, abs=1e-3)
    # The controller reports its own rotation vector (angle <= pi) for the same orientation.
    assert rotation_distance(st.tcp_mm_rotvec[3:], (math.pi, 0.0, 0.2)) < 1e-6
    t0 = robot.state().timestamp_s
    time.sleep(0.1)
    assert robot.state().timestamp_s > t0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_move_takes_at_least_the_profile_time(fake: FakeURController) -> None:
    cfg = _cfg(fake.host, speed_mm_s=200.0, acceleration_mm_s2=1000.0, settle_s=0.1)
    rob = URRobot(cfg)
    try:
        rob.connect()
        rob.move_to(cfg.home)
        start = fake.tcp_pose
        target = Pose(name="far", position_mm=(400.0, 100.0, 450.0), rotvec_rad=DOWN)
        expected = LinearMove(start, target.as_ur(), 0.2, 1.0, t0=0.0).duration
        t = time.monotonic()
        rob.move_to(target)
        # moveL returns when the robot has stopped; settle_s comes on top.
        assert time.monotonic() - t >= 0.9 * expected + 0.1
    finally:
        rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_move_reported_late_is_still_waited_for(fake: FakeURController) -> None:
    # The script reports the async move "running" after the driver's start wait (a loaded
    # host): the arm is moving, so the move is not over.
    cfg = _cfg(fake.host, speed_mm_s=200.0, acceleration_mm_s2=1000.0)
    rob = URRobot(cfg)
    try:
        rob.connect()
        rob.move_to(cfg.home)
        fake.delay_async_report(1.0)
        target = Pose(name="far", position_mm=(400.0, 100.0, 450.0), rotvec_rad=DOWN)
        st = rob.move_to(target)
        assert st.tcp_mm_rotvec[:3] == pytest.approx(target.position_mm, abs=1e-3)
    finally:
        rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_protective_stop_mid_move_then_recovery(fake: FakeURController, robot: URRobot) -> None:
    robot.connect()
    robot.move_to(robot.cfg.home)
    fake.arm_protective_stop(at_fraction=0.5)
    with pytest.raises(ProtectiveStop, match="protective stop"):
        robot.move_to(robot.cfg.poses[0])
    st = robot.state()
    assert st.protective_stop and 360.0 < st.tcp_mm_rotvec[2] < 440.0  # stopped half way down
    with pytest.raises(ProtectiveStop):
        robot.move_to(robot.cfg.poses[0])  # still stopped: refused before moving
    fake.unlock_protective_stop()
    # RTDE data lags the controller by up to a cycle: wait until the driver sees the unlock,
    # as an operator does before resuming.
    deadline = time.monotonic() + 5.0
    while robot.state().protective_stop and time.monotonic() < deadline:
        time.sleep(0.01)
    st = robot.move_to(robot.cfg.poses[0])  # the control script is uploaded again
    assert st.tcp_mm_rotvec[:3] == pytest.approx(robot.cfg.poses[0].position_mm, abs=1e-3)


@pytest.mark.timeout(60)
def test_emergency_stop_and_power_off_refuse_connect(fake: FakeURController) -> None:
    fake.emergency_stop()
    rob = URRobot(_cfg(fake.host))
    with pytest.raises(ProtectiveStop, match="emergency"):
        rob.connect()
    fake.release_emergency_stop()
    with pytest.raises(RobotError, match="POWER_OFF"):
        rob.connect()
    rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_connection_loss_mid_move_raises_within_timeout(fake: FakeURController) -> None:
    cfg = _cfg(fake.host, speed_mm_s=50.0, move_timeout_s=6.0)
    rob = URRobot(cfg)
    rob.connect()
    timer = threading.Timer(0.3, fake.disconnect_network)
    timer.start()
    t = time.monotonic()
    with pytest.raises(RobotError) as err:
        rob.move_to(cfg.home)
    assert time.monotonic() - t < cfg.move_timeout_s + 3.0
    print(err.value)
    assert "\n" not in str(err.value) and fake.host in str(err.value)
    fake.reconnect_network()
    rob.connect()  # a fresh link process
    assert rob.move_to(cfg.home).tcp_mm_rotvec[:3] == pytest.approx((400.0, 0.0, 450.0), abs=1e-3)
    rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_dropped_connections_mid_move_raise(fake: FakeURController) -> None:
    cfg = _cfg(fake.host, speed_mm_s=50.0, move_timeout_s=6.0)
    rob = URRobot(cfg)
    rob.connect()
    threading.Timer(0.3, fake.drop_connections).start()
    with pytest.raises(RobotError):
        rob.move_to(cfg.home)  # ur_rtde reconnects by itself; the move must not pass as done
    rob.connect()
    assert rob.move_to(cfg.home).tcp_mm_rotvec[:3] == pytest.approx((400.0, 0.0, 450.0), abs=1e-3)
    rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_silent_peer_times_out_on_connect(fake: FakeURController) -> None:
    fake.go_silent()
    rob = URRobot(_cfg(fake.host, connect_timeout_s=2.0))
    t = time.monotonic()
    with pytest.raises(RobotError, match="no answer to open_receive within 2.0 s"):
        rob.connect()
    assert time.monotonic() - t < 8.0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_stale_data_detected(fake: FakeURController, robot: URRobot) -> None:
    robot.connect()
    fake.go_silent()  # the socket stays open but nothing streams
    with pytest.raises(RobotError, match="stale"):
        for _ in range(3):  # the first read may still get the last package sent
            robot.state()


@pytest.mark.timeout(60)
def test_nothing_listening_is_a_clear_error() -> None:
    rob = URRobot(_cfg(_next_host()))
    with pytest.raises(RobotError, match="open_receive failed") as info:
        rob.connect()
    hint = info.value.hint or ""  # the CLI prints it as `hint: ...`
    assert "robot.host" in hint and "remote control" in hint and "30004" in hint, hint


# -- line I/O --------------------------------------------------------------------------------
@pytest.fixture
def line(fake: FakeURController) -> Iterator[URLineIO]:
    io = URLineIO(
        _cfg(fake.host),
        LineIOConfig(part_present_input=2, reject_output=4, release_output=6, release_pulse_s=0.1),
    )
    io.open()
    yield io
    io.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_part_present_input(fake: FakeURController, line: URLineIO) -> None:
    assert isinstance(line, LineIO)
    assert line.wait_for_part(0.2) is None
    threading.Timer(0.2, fake.set_digital_input, args=(2, True)).start()
    part = line.wait_for_part(5.0)
    assert part is not None and part.startswith("ur-")
    assert line.wait_for_part(0.2) is None  # the same sheet is not a new part
    fake.set_digital_input(2, False)
    assert line.wait_for_part(0.2) is None
    fake.set_digital_input(2, True)
    second = line.wait_for_part(2.0)
    assert second is not None and second != part


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_reject_output_confirmed_and_release_pulse(fake: FakeURController, line: URLineIO) -> None:
    line.set_reject(True)
    assert fake.digital_output(4)
    line.set_reject(False)
    assert not fake.digital_output(4)
    seen: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(fake.digital_output(6))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    line.release_part()
    stop.set()
    watcher.join()
    assert True in seen and not fake.digital_output(6)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_reject_that_does_not_read_back_raises(fake: FakeURController, line: URLineIO) -> None:
    fake.freeze_outputs()
    with pytest.raises(LineIOError, match="did not read back 1"):
        line.set_reject(True)


@pytest.mark.timeout(60)
def test_line_link_loss_raises_line_error(fake: FakeURController, line: URLineIO) -> None:
    fake.disconnect_network()
    with pytest.raises(LineIOError):
        line.set_reject(True)
        line.set_reject(False)  # the first write after a loss may still "succeed"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_factory_builds_ur_drivers_from_the_recipe(fake: FakeURController) -> None:
    from station.devices.factory import open_devices
    from station.recipe import load_recipe

    recipe = load_recipe("glassfiber")
    recipe = recipe.model_copy(
        update={
            "robot": recipe.robot.model_copy(update={"host": fake.host, "driver": "ur_rtde"}),
            "line_io": recipe.line_io.model_copy(update={"driver": "ur_rtde"}),
            "camera": recipe.camera.model_copy(update={"driver": "sim"}),
        }
    )
    fake.model.speed_scale = 4.0
    with open_devices(recipe) as dev:
        assert isinstance(dev.robot, URRobot) and isinstance(dev.line, URLineIO)
        for pose in recipe.robot.poses:
            st = dev.robot.move_to(pose)
            assert st.tcp_mm_rotvec[:3] == pytest.approx(pose.position_mm, abs=1e-3)
        dev.line.set_reject(True)
        assert fake.digital_output(recipe.line_io.reject_output)
    assert fake.wait_until(lambda: not fake.program_running, 5.0)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_move_that_overruns_its_timeout_is_stopped(fake: FakeURController) -> None:
    cfg = _cfg(fake.host, speed_mm_s=20.0, move_timeout_s=1.0)  # 50 mm take 2.5 s
    rob = URRobot(cfg)
    try:
        rob.connect()
        t = time.monotonic()
        with pytest.raises(RobotError, match="did not reach pose 'home' within 1 s"):
            rob.move_to(cfg.home)
        assert time.monotonic() - t < 3.0
        z = fake.tcp_pose[2]
        time.sleep(0.3)
        assert fake.tcp_pose[2] == pytest.approx(z, abs=1e-6)  # the arm stands still
        assert 0.406 < z < 0.445  # stopped on the way up from 405 mm to 450 mm
    finally:
        rob.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_dashboard_stop_ends_the_program(fake: FakeURController, robot: URRobot) -> None:
    from station.hardware.ur.robot import dashboard_stop

    robot.connect()
    assert fake.model.program_running()
    assert dashboard_stop(fake.host)
    assert not fake.model.program_running()
    assert dashboard_stop(_next_host(), timeout_s=0.2) is False  # nothing there: said, not raised


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_safeguard_stop_is_named(fake: FakeURController) -> None:
    cfg = _cfg(fake.host, speed_mm_s=50.0)
    rob = URRobot(cfg)
    try:
        fake.safeguard_stop()
        with pytest.raises(ProtectiveStop, match="safety mode SAFEGUARD_STOP"):
            rob.connect()  # at once, not after ur_rtde's script timeout
        fake.reset_safeguard()
        rob.connect()
        threading.Timer(0.3, fake.safeguard_stop).start()
        with pytest.raises(ProtectiveStop, match="SAFEGUARD_STOP") as err:
            rob.move_to(cfg.home)
        assert "safeguard" in (err.value.hint or "")
    finally:
        rob.close()


@pytest.mark.timeout(60)
def test_a_link_process_that_died_is_said_so(fake: FakeURController, robot: URRobot) -> None:
    robot.connect()
    proc = robot._link._proc
    proc.kill()
    proc.wait()
    with pytest.raises(RobotError, match=r"link process ended \(exit code -9\)"):
        robot.state()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_link_process_dies_with_the_station(fake: FakeURController) -> None:
    import signal
    import subprocess
    import sys

    # The child blocks inside ur_rtde (a silent controller): it never reads the end of its
    # stdin, so only the kernel can end it when the station is killed.
    fake.go_silent()
    script = (
        "import sys\n"
        "from station.errors import RobotError\n"
        "from station.hardware.ur.link import URLink\n"
        "link = URLink(sys.argv[1], RobotError, 'robot')\n"
        "link.start(10.0)\n"
        "print(link._proc.pid, flush=True)\n"
        "link.call('open_receive', 60.0, host=sys.argv[1])\n"
    )
    station = subprocess.Popen(
        [sys.executable, "-c", script, fake.host], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(station.stdout.readline())
        station.send_signal(signal.SIGKILL)  # no atexit hook runs
        station.wait(timeout=10)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if station.poll() is None:
            station.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["silent", "cut"])
def test_link_lost_as_a_move_starts_fails_within_seconds(
    fake: FakeURController, kind: str
) -> None:
    # The controller dies while ur_rtde waits for the move command's acknowledgement: the link
    # child is stuck inside ur_rtde, so only the parent's short calls can notice.
    cfg = _cfg(fake.host, speed_mm_s=50.0, move_timeout_s=20.0)
    rob = URRobot(cfg)
    try:
        rob.connect()
        fake.arm_link_loss(kind)
        t = time.monotonic()
        with pytest.raises(RobotError, match=fake.host) as err:
            rob.move_to(cfg.poses[0])
        took = time.monotonic() - t
        assert took < cfg.move_timeout_s / 4, f"noticed after {took:.1f} s"
        assert "\n" not in str(err.value)
    finally:
        rob.close()


# -- the line contract against the simulated PLC ----------------------------------------------
def _plc(fake: FakeURController, cfg: LineIOConfig, **over: object) -> SimPLC:
    plc = SimPLC(fake.model, PlcConfig.from_line_io(cfg, **{"part_every_s": 0.3, "gap_s": 0.1,
                                                             "hold_s": 0.3, **over}))
    plc.start()
    return plc


def _routed(plc: SimPLC, n: int, timeout_s: float = 5.0) -> Disposition:
    deadline = time.monotonic() + timeout_s
    while len(plc.dispositions) < n:
        assert time.monotonic() < deadline, f"sheet {n} not routed: {plc.dispositions}"
        time.sleep(0.01)
    return plc.dispositions[n - 1]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_plc_passes_only_a_valid_result_for_its_sheet(fake: FakeURController) -> None:
    cfg = LineIOConfig(part_present_input=2, reject_output=4, result_timeout_s=1.0)
    line = URLineIO(_cfg(fake.host), cfg)
    line.open()
    plc = _plc(fake, cfg, gap_s=0.5)  # time to start the heartbeat between two sheets
    try:
        first = _routed(plc, 1)  # no heartbeat yet: the station is dead to the PLC
        assert first.route == "rejected" and first.reason == HEARTBEAT_LOST
        line.start_heartbeat()
        n = len(plc.dispositions)
        # sheet A passes, B is rejected by the station, C gets no result, D's number is wrong
        # (a lost edge), E is in step again
        for step in ("pass", "reject", "none", "wrong", "pass"):
            assert line.wait_for_part(5.0) is not None
            assert not fake.digital_output(2)  # RESULT_VALID low while the sheet is inspected
            if step == "wrong":
                line._count += 1
            if step != "none":
                line.publish_result(step == "reject")
                # the verdict and the number were there before RESULT_VALID rose
                assert fake.digital_output(2) and fake.digital_output(4) == (step == "reject")
                assert fake.model.in_int[18] == line._count
            n += 1
            _routed(plc, n)
        got = [(d.route, d.reason.split(" (")[0]) for d in plc.dispositions[-5:]]
        assert got == [
            ("passed", ""),
            ("rejected", REJECT),
            ("rejected", NO_RESULT),
            ("rejected", MISMATCH),
            ("passed", ""),
        ]
        # A result left high is never taken for the next sheet's: it must rise after it.
        assert fake.digital_output(2)
        assert _routed(plc, n + 1).reason == NO_RESULT
        assert line.wait_for_part(5.0) is not None and not fake.digital_output(2)
        line.close()  # the heartbeat stops: the sheet in place is rejected at once
        d = _routed(plc, n + 2, timeout_s=3.0)
        assert d.route == "rejected" and d.reason == HEARTBEAT_LOST
        assert d.decided_at - d.presented_at < cfg.result_timeout_s + cfg.heartbeat_timeout_s
    finally:
        plc.stop()
        line.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_heartbeat_toggles_from_this_process_and_fail_safe(fake: FakeURController) -> None:
    cfg = LineIOConfig(part_present_input=2, reject_output=4, heartbeat_period_s=0.1,
                       heartbeat_timeout_s=0.3)
    line = URLineIO(_cfg(fake.host), cfg)
    line.open()
    try:
        line.start_heartbeat()
        seen = []
        for _ in range(60):
            seen.append(fake.digital_output(1))
            time.sleep(0.01)
        assert 3 <= sum(a != b for a, b in itertools.pairwise(seen)) <= 9
        fake.set_digital_input(2, True)
        assert line.wait_for_part(2.0) is not None
        line.publish_result(False)
        line.fail_safe()
        assert fake.digital_output(4) and not fake.digital_output(2)
        level = fake.digital_output(1)
        time.sleep(0.3)
        assert fake.digital_output(1) == level  # still
    finally:
        line.close()


def test_line_outputs_must_differ() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="result_valid_output and reject_output are both DO4"):
        LineIOConfig(reject_output=4, result_valid_output=4)
