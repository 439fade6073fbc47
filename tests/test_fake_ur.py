"""The fake UR controller, driven by the real ur_rtde 1.6 clients and by raw RTDE packages.

ur_rtde holds the GIL while it blocks, so its clients run in a subprocess (`_client`) while the
fake runs in this process. Each test listens on its own loopback address.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from station.geometry.ur_poses import pose_inv, pose_trans, rotation_distance
from station.twin.fake_ur import FakeURController
from station.twin.fake_ur.motion import LinearMove

pytestmark = pytest.mark.timeout(60)  # nothing here may hang the suite
_hosts = itertools.count(2)
HOME = [0.4, 0.0, 0.5, math.pi, 0.0, 0.0]


def _next_host() -> str:
    # A private 127.x.y.z per test: ur_rtde always uses the standard ports.
    return f"127.{40 + os.getpid() % 200}.17.{next(_hosts)}"


@pytest.fixture
def fake() -> Iterator[FakeURController]:
    ctl = FakeURController(
        _next_host(), initial_tcp_pose=list(HOME), protective_stop_unlock_delay_s=0.0
    )
    with ctl:
        yield ctl


# rtde_receive reads its own stream on its own thread: right after a blocking moveL returns, its
# last sample may be a cycle old (seen on a loaded 2-core machine). Wait for it, up to a second.
SETTLED_POSE = """
def settled_pose(r, target, tol=1e-6, wait=1.0):
    t = time.monotonic()
    while time.monotonic() - t < wait:
        pose = r.getActualTCPPose()
        if max(abs(a - b) for a, b in zip(pose[:3], target[:3])) <= tol:
            return pose
        time.sleep(0.002)
    return r.getActualTCPPose()
"""


def _client(host: str, body: str, timeout: float = 40.0) -> dict:
    """Run ur_rtde code in a subprocess; `body` fills the dict `out`, returned as JSON."""
    code = "import json, sys, time\nimport rtde_control, rtde_receive, rtde_io, dashboard_client\n"
    code += f"H = {host!r}\nout = {{}}\n" + SETTLED_POSE + textwrap.dedent(body)
    code += "\nprint('RESULT ' + json.dumps(out), flush=True)\nimport os; os._exit(0)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError(f"client failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# -- pose maths and motion profile -------------------------------------------------------------
def test_rotvec_round_trip_near_pi_and_pose_trans_inverse() -> None:
    for pose in ([0.1, 0.2, 0.3, math.pi, 0, 0], [0, 0, 0, 0.1, -2.0, 0.5], [1, 2, 3, 0, 0, 0]):
        back = pose_trans(
            pose_trans(pose, [0.0, 0.0, 0.1, 0.2, 0.0, 0.0]),
            pose_inv([0.0, 0.0, 0.1, 0.2, 0.0, 0.0]),
        )
        assert max(abs(a - b) for a, b in zip(back[:3], pose[:3], strict=True)) < 1e-9
        assert rotation_distance(back[3:], pose[3:]) < 1e-9


def test_linear_move_profile_trapezoid_and_triangle() -> None:
    start = [0.4, 0.0, 0.5, math.pi, 0.0, 0.0]
    long = LinearMove(start, [0.5, 0.0, 0.5, math.pi, 0.0, 0.0], 0.25, 1.2, t0=0.0)
    # 0.1 m: accelerate 0.208 s (26 mm), cruise 48 mm at 0.25 m/s, decelerate
    assert long.duration == pytest.approx(2 * 0.25 / 1.2 + (0.1 - 0.25**2 / 1.2) / 0.25)
    short = LinearMove(start, [0.401, 0.0, 0.5, math.pi, 0.0, 0.0], 0.25, 1.2, t0=0.0)
    assert short.duration == pytest.approx(2 * math.sqrt(0.001 / 1.2))
    mid = long.pose(long.duration / 2)
    assert mid[0] == pytest.approx(0.45, abs=1e-9)  # symmetric profile: half way at half time
    assert long.pose(long.duration + 1) == [0.5, 0.0, 0.5, math.pi, 0.0, 0.0]
    fast = LinearMove(start, long.target, 0.25, 1.2, t0=0.0, time_scale=4.0)
    assert fast.duration == pytest.approx(long.duration / 4)
    turn = LinearMove(start, [0.4, 0.0, 0.5, math.pi, 0.0, 0.4], 0.5, 2.0, t0=0.0)
    assert rotation_distance(turn.pose(turn.duration / 2)[3:], start[3:]) == pytest.approx(
        rotation_distance(turn.target[3:], start[3:]) / 2, abs=1e-6
    )


# -- raw RTDE protocol -------------------------------------------------------------------------
def _rtde(conn: socket.socket, kind: str, payload: bytes = b"") -> tuple[str, bytes]:
    conn.sendall(struct.pack(">HB", 3 + len(payload), ord(kind)) + payload)
    return _read(conn)


def _read(conn: socket.socket) -> tuple[str, bytes]:
    head = b""
    while len(head) < 3:
        chunk = conn.recv(3 - len(head))
        assert chunk, "connection closed"
        head += chunk
    size, kind = struct.unpack(">HB", head)
    body = b""
    while len(body) < size - 3:
        body += conn.recv(size - 3 - len(body))
    return chr(kind), body


@pytest.mark.timeout(30)
def test_rtde_handshake_recipes_and_stream(fake: FakeURController) -> None:
    with socket.create_connection((fake.host, 30004), timeout=5) as c:
        assert _rtde(c, "V", struct.pack(">H", 2)) == ("V", b"\x01")
        kind, body = _rtde(c, "v")
        assert struct.unpack(">IIII", body)[:2] == (3, 15)
        kind, body = _rtde(c, "O", struct.pack(">d", 125.0) + b"timestamp,actual_TCP_pose,bogus")
        assert body[0] == 0 and body[1:].decode().split(",")[-1] == "NOT_FOUND"
        names = b"timestamp,actual_TCP_pose,actual_digital_input_bits"
        kind, body = _rtde(c, "O", struct.pack(">d", 125.0) + names)
        assert body[0] == 1 and body[1:] == b"DOUBLE,VECTOR6D,UINT64"
        kind, body = _rtde(c, "I", b"input_int_register_5,standard_digital_output_mask")
        assert kind == "I" and body[0] == 1 and body[1:] == b"INT32,UINT8"
        fake.set_digital_input(4, True)
        assert _rtde(c, "S") == ("S", b"\x01")
        stamps = []
        for _ in range(20):
            kind, body = _read(c)
            if kind == "U":
                ts, *pose_bits = struct.unpack(">B d 6d Q", body)[1:]
                stamps.append(ts)
                assert pose_bits[:6] == pytest.approx(HOME)
                assert pose_bits[6] == 1 << 4
        assert len(stamps) >= 15 and stamps == sorted(stamps) and stamps[-1] > stamps[0]
        # Another client may not claim an input register this one writes.
        with socket.create_connection((fake.host, 30004), timeout=5) as other:
            _rtde(other, "V", struct.pack(">H", 2))
            kind, body = _rtde(other, "I", b"input_int_register_5")
            assert body == b"\x00IN_USE"
        # Inputs apply to the controller state.
        c.sendall(struct.pack(">HBBiB", 3 + 1 + 4 + 1, ord("U"), 1, 42, 0))
        assert fake.wait_until(lambda: fake.model.in_int[5] == 42, 2.0)
        assert _rtde_until(c, "P") == ("P", b"\x01")


def _rtde_until(conn: socket.socket, kind: str) -> tuple[str, bytes]:
    conn.sendall(struct.pack(">HB", 3, ord(kind)))
    while True:
        got = _read(conn)
        if got[0] == kind:
            return got


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_silent_peer_and_dropped_connections(fake: FakeURController) -> None:
    fake.go_silent()
    with socket.create_connection((fake.host, 30004), timeout=5) as c:
        c.sendall(struct.pack(">HBH", 5, ord("V"), 2))
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(16)
    fake.go_silent(False)
    with socket.create_connection((fake.host, 29999), timeout=5) as d:
        assert d.recv(100).startswith(b"Connected: Universal Robots Dashboard Server")
        fake.drop_connections()
        d.settimeout(2)
        assert d.recv(100) == b""
    fake.disconnect_network()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((fake.host, 30004), timeout=2)
    fake.reconnect_network()
    socket.create_connection((fake.host, 30004), timeout=2).close()


# -- the real ur_rtde clients ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_receive_and_io_interfaces(fake: FakeURController) -> None:
    fake.set_digital_input(3, True)
    out = _client(
        fake.host,
        """
        r = rtde_receive.RTDEReceiveInterface(H)
        io = rtde_io.RTDEIOInterface(H)
        t0 = r.getTimestamp(); time.sleep(0.2); t1 = r.getTimestamp()
        out["ts"] = [t0, t1]
        out["pose"] = r.getActualTCPPose()
        out["modes"] = [r.getRobotMode(), r.getSafetyMode()]
        out["stops"] = [r.isProtectiveStopped(), r.isEmergencyStopped()]
        out["di3"] = r.getDigitalInState(3)
        out["set"] = io.setStandardDigitalOut(5, True)
        time.sleep(0.1)
        out["do5"] = [r.getDigitalOutState(5), r.getActualDigitalOutputBits()]
        io.setStandardDigitalOut(5, False)
        time.sleep(0.1)
        out["do5_off"] = r.getDigitalOutState(5)
        """,
    )
    assert out["ts"][1] > out["ts"][0] + 0.1
    assert out["pose"] == pytest.approx(HOME)
    assert out["modes"] == [7, 1] and out["stops"] == [False, False]
    assert out["di3"] is True
    assert out["set"] is True and out["do5"] == [True, 1 << 5]
    assert out["do5_off"] is False and not fake.digital_output(5)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_control_interface_movel_set_tcp_and_timing(fake: FakeURController) -> None:
    out = _client(
        fake.host,
        """
        r = rtde_receive.RTDEReceiveInterface(H)
        c = rtde_control.RTDEControlInterface(H)
        out["running"] = c.isProgramRunning()
        out["tcp"] = c.setTcp([0, 0, 0.1, 0, 0, 0])
        out["offset"] = c.getTCPOffset()
        p0 = r.getActualTCPPose()
        target = list(p0); target[0] += 0.1
        t = time.monotonic()
        out["move"] = c.moveL(target, 0.25, 1.2)
        out["dt"] = time.monotonic() - t
        out["p0"], out["p1"], out["target"] = p0, settled_pose(r, target), target
        # async move: sample the pose on the way
        back = list(p0)
        c.moveL(back, 0.1, 1.2, True)
        out["xs"] = []
        # as in ur_rtde's examples: the move reports "running" a little after moveL returns
        t = time.monotonic()
        while c.getAsyncOperationProgress() < 0 and time.monotonic() - t < 1.0:
            time.sleep(0.002)
        while c.getAsyncOperationProgress() >= 0:
            out["xs"].append(r.getActualTCPPose()[0])
            time.sleep(0.01)
        out["end"] = r.getActualTCPPose()
        c.stopScript()
        out["after_stop"] = c.isProgramRunning()
        """,
    )
    assert out["running"] is True and out["tcp"] is True
    assert out["offset"] == pytest.approx([0, 0, 0.1, 0, 0, 0])
    # The TCP is 100 mm further along the tool z axis, which points down.
    assert out["p0"][2] == pytest.approx(0.4, abs=1e-6)
    assert out["move"] is True and out["p1"][:3] == pytest.approx(out["target"][:3], abs=1e-6)
    expected = LinearMove(out["p0"], out["target"], 0.25, 1.2, t0=0.0).duration
    assert out["dt"] >= 0.9 * expected  # a synchronous moveL returns only when the robot stops
    # The pose is interpolated on the way back, not reported at the ends only.
    assert any(out["p0"][0] + 0.01 < x < out["p1"][0] - 0.01 for x in out["xs"])
    assert out["xs"] == sorted(out["xs"], reverse=True)
    assert out["end"][:3] == pytest.approx(out["p0"][:3], abs=1e-6)
    assert out["after_stop"] is False
    assert any("rtde_cmd()" in s for s in fake.model.received_scripts)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_protective_stop_mid_move_and_dashboard(fake: FakeURController) -> None:
    fake.arm_protective_stop(at_fraction=0.5)
    out = _client(
        fake.host,
        """
        d = dashboard_client.DashboardClient(H)
        d.connect()
        r = rtde_receive.RTDEReceiveInterface(H)
        c = rtde_control.RTDEControlInterface(H)
        target = r.getActualTCPPose(); target[1] += 0.1
        out["move"] = c.moveL(target, 0.5, 2.0)
        time.sleep(0.05)
        out["stopped"] = [r.isProtectiveStopped(), r.getSafetyMode(), c.isProgramRunning()]
        out["pose"] = r.getActualTCPPose()
        out["safety"] = d.safetystatus()
        out["mode"] = d.robotmode()
        d.unlockProtectiveStop()
        time.sleep(0.05)
        out["after_unlock"] = [r.isProtectiveStopped(), r.getSafetyMode()]
        out["reupload"] = c.reuploadScript()
        t = time.monotonic()
        while not c.isProgramRunning() and time.monotonic() - t < 5:
            time.sleep(0.01)
        out["move2"] = c.moveL(target, 0.5, 2.0)
        out["pose2"] = settled_pose(r, target)
        """,
    )
    assert out["move"] is False
    assert out["stopped"] == [True, 3, False]
    assert 0.04 < out["pose"][1] < 0.07  # stopped about half way along the 100 mm move
    assert "PROTECTIVE_STOP" in out["safety"] and "RUNNING" in out["mode"]
    assert out["after_unlock"] == [False, 1]
    assert out["move2"] is True and out["pose2"][1] == pytest.approx(0.1, abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_emergency_stop_and_recovery_through_dashboard(fake: FakeURController) -> None:
    fake.emergency_stop()
    out = _client(
        fake.host,
        """
        d = dashboard_client.DashboardClient(H)
        d.connect()
        r = rtde_receive.RTDEReceiveInterface(H)
        time.sleep(0.05)
        out["estop"] = [r.isEmergencyStopped(), r.getSafetyMode(), r.getRobotMode()]
        out["power_on_refused"] = d.robotmode()
        """,
    )
    assert out["estop"] == [True, 7, 3]
    assert "POWER_OFF" in out["power_on_refused"]
    fake.release_emergency_stop()
    out = _client(
        fake.host,
        """
        d = dashboard_client.DashboardClient(H)
        d.connect()
        d.closeSafetyPopup(); d.powerOn(); d.brakeRelease()
        r = rtde_receive.RTDEReceiveInterface(H)
        time.sleep(0.05)
        out["state"] = [r.isEmergencyStopped(), r.getSafetyMode(), r.getRobotMode()]
        """,
    )
    assert out["state"] == [False, 1, 7]
    assert fake.dashboard_log[-3:] == ["close safety popup", "power on", "brake release"]


@pytest.mark.timeout(60)
def test_eseries_controller_checks_remote_control() -> None:
    host = _next_host()
    with FakeURController(host, controller_version=(5, 11, 1, 108318)) as ctl:
        out = _client(
            host,
            """
            d = dashboard_client.DashboardClient(H)
            d.connect()
            out["remote"] = d.isInRemoteControl()
            out["version"] = d.polyscopeVersion()
            c = rtde_control.RTDEControlInterface(H)
            out["running"] = c.isProgramRunning()
            c.stopScript()
            """,
        )
        assert out == {"remote": True, "version": "5.11.1.108318", "running": True}
        ctl.remote_control = False
        out = _client(
            host,
            """
            try:
                rtde_control.RTDEControlInterface(H)
                out["error"] = None
            except Exception as exc:
                out["error"] = str(exc)
            """,
        )
        assert "remote control" in out["error"]


# -- `station sim robot-server` --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_robot_server_cli_console_and_bind_error() -> None:
    host = _next_host()
    cmd = [sys.executable, "-m", "station", "sim", "robot-server", "--host", host]
    proc = subprocess.run(
        [*cmd, "--duration", "3", "--part-input", "3"],
        input="part on\npstop\nstatus\nbogus\n",
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "safety PROTECTIVE_STOP" in out and "DI3=1" in out and "commands: part on|off" in out
    with FakeURController(host):
        busy = subprocess.run(
            [*cmd, "--duration", "1"], capture_output=True, text=True, timeout=40, input=""
        )
    assert busy.returncode == 2
    assert "cannot listen on" in busy.stderr and "Traceback" not in busy.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_robot_server_runs_the_plc(tmp_path: Path) -> None:
    # No station runs: every sheet is rejected at once, and said so.
    log = tmp_path / "plc.jsonl"
    cmd = [sys.executable, "-m", "station", "sim", "robot-server", "--host", _next_host()]
    proc = subprocess.run(
        [*cmd, "--part-every", "0.3", "--part-hold", "0.1", "--duration", "1.5"]
        + ["--plc-log", str(log)],
        input="", capture_output=True, text=True, timeout=40,
    )
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "PLC sheet 1: rejected (heartbeat lost)" in out and "0 passed" in out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) >= 3 and {d["reason"] for d in lines} == {"heartbeat lost"}


def test_a_plc_that_cannot_write_its_log_ends_the_server_with_one_line(
    fake: FakeURController, tmp_path: Path
) -> None:
    """The PLC thread died with a traceback when its log could not be written and the server
    ran on, exit 0: now the thread keeps why, and the server stops and says it (exit 2)."""
    from station.cli.sim import _serve
    from station.errors import StationError
    from station.twin.fake_ur.plc import PlcConfig, SimPLC

    (tmp_path / "afile").write_text("")
    log = tmp_path / "afile" / "plc.jsonl"  # no folder to write it in
    plc = SimPLC(fake.model, PlcConfig(part_every_s=0.2, gap_s=0.05, hold_s=0.05), log_path=log)
    plc.start()
    with pytest.raises(StationError) as err:
        _serve(fake, plc, duration=20)  # ends at the first sheet, not after 20 s
    assert err.value.message == (
        f"the simulated PLC stopped: cannot write PLC log {log}: {tmp_path / 'afile'} is a "
        "file, not a folder"
    )
    assert not plc.is_alive() and len(plc.dispositions) == 1
