"""`URRobot`: the station's Robot on a real UR controller, through ur_rtde in a child process.

Units: the recipe speaks millimetres and rotation vectors; ur_rtde speaks metres. Every read of
the robot state is checked for staleness (ur_rtde keeps returning the last values after a lost
link), and every move is bracketed by protective/emergency stop checks.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from typing import Any

from station.errors import HardwareError, ProtectiveStop, RobotError
from station.geometry.ur_poses import rotation_distance
from station.hardware.ur.link import URLink
from station.interfaces import RobotState
from station.recipe import Pose
from station.recipe.devices import URRobotConfig
from station.ur_modes import (
    FAULT,
    NORMAL,
    RECOVERY,
    REDUCED,
    ROBOT_MODES,
    RUNNING,
    SAFEGUARD_STOP,
    SAFETY_MODES,
    VIOLATION,
)

log = logging.getLogger("station.hardware.ur")

STATE_CALL_TIMEOUT_S = 2.0
MOVE_CALL_TIMEOUT_S = 1.0  # each call while moving: the link's supervision during moves
MOVE_START_WAIT_S = 0.5
MOVE_POLL_S = 0.004
STILL_SPEED_M_S = 1e-3  # TCP slower than 1 mm/s: the arm stands still
DASHBOARD_PORT = 29999
# read-back of what the driver set: the TCP offset (m, rad), the payload (kg, m); the receive
# stream shows a new payload within a few cycles
TCP_TOLERANCE_M = 1e-4
TCP_TOLERANCE_RAD = 1e-3
PAYLOAD_TOLERANCE_KG = 1e-3
PAYLOAD_TOLERANCE_M = 1e-4
PAYLOAD_READBACK_S = 1.0
SCRIPT_HINT = "check remote control mode and the controller log, then reconnect"
NO_PAYLOAD = "robot.payload_kg not set: the pendant installation's payload is used"


def dashboard_stop(host: str, timeout_s: float = 1.0) -> bool:
    """Stop the running program through the dashboard server, on a plain socket (no ur_rtde):
    the last resort when the control link is gone and the arm may still be moving."""
    try:
        with socket.create_connection((host, DASHBOARD_PORT), timeout=timeout_s) as sock:
            f = sock.makefile("rwb")
            f.readline()  # the greeting
            f.write(b"stop\n")
            f.flush()
            reply = f.readline().decode("utf-8", "replace").strip()
    except OSError as exc:
        log.error("dashboard stop on %s failed: %s", host, exc)
        return False
    log.warning("dashboard stop on %s: %s", host, reply)
    return reply.lower().startswith("stopped")


def fresh_state(
    link: URLink, last_timestamp: float | None, stale_after_s: float, error_cls: type[HardwareError]
) -> dict[str, Any]:
    """Read the state and insist it is live: connected, and its timestamp moving on.

    When `last_timestamp` is None the timestamp must advance between two reads.
    """
    deadline = time.monotonic() + stale_after_s
    st = link.call("state", STATE_CALL_TIMEOUT_S)
    base = st["timestamp"] if last_timestamp is None else last_timestamp
    while True:
        if not st["connected"]:
            raise error_cls(
                f"UR {link.role} link to {link.host}: RTDE connection lost",
                "check the network and the controller, then reconnect",
            )
        if st["timestamp"] > base:
            return st
        if time.monotonic() > deadline:
            raise error_cls(
                f"UR {link.role} link to {link.host}: controller data stale "
                f"(timestamp stuck at {st['timestamp']:.3f} s for {stale_after_s:.1f} s)",
                "the controller stopped streaming; check it, then reconnect",
            )
        time.sleep(0.01)
        st = link.call("state", STATE_CALL_TIMEOUT_S)


def check_safety(st: dict[str, Any], host: str) -> None:
    """Any safety mode but NORMAL or REDUCED stops the station for a person (ProtectiveStop)."""
    if st["emergency_stop"]:
        raise ProtectiveStop(
            f"robot at {host} is emergency-stopped",
            "release the emergency stop, then power on and release the brakes on the pendant",
        )
    if st["protective_stop"]:
        raise ProtectiveStop(
            f"robot at {host} is in a protective stop",
            "inspect the cause, then unlock the protective stop on the pendant",
        )
    mode = st.get("safety_mode", NORMAL)
    if mode not in (NORMAL, REDUCED):
        name = SAFETY_MODES.get(mode, str(mode))
        raise ProtectiveStop(
            f"robot at {host} is in safety mode {name}",
            SAFETY_HINTS.get(mode, "see the safety message on the pendant and clear it"),
        )


SAFETY_HINTS = {
    SAFEGUARD_STOP: "a safeguard (light curtain, door) stopped the robot: clear the cell, "
    "reset the safeguard",
    RECOVERY: "the arm is outside its safety limits: move it back in recovery mode on the "
    "pendant",
    VIOLATION: "a safety limit was violated: see the pendant, fix the cause, restart the arm",
    FAULT: "the safety system reports a fault: see the pendant log, restart the arm",
}


class URRobot:
    """Robot protocol on a UR controller. Reconnect by calling `connect()` again."""

    def __init__(
        self,
        robot_cfg: URRobotConfig,
        *,
        stale_after_s: float = 1.0,
        position_tolerance_mm: float = 1.0,
        rotation_tolerance_rad: float = 0.01,
    ) -> None:
        self.cfg = robot_cfg
        self.stale_after_s = stale_after_s
        self.position_tolerance_mm = position_tolerance_mm
        self.rotation_tolerance_rad = rotation_tolerance_rad
        self._link = URLink(robot_cfg.host, RobotError, "robot")
        self._last_ts: float | None = None

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> None:
        cfg = self.cfg
        t = cfg.connect_timeout_s
        self._link.start(t)
        try:
            self._link.call("open_receive", t, host=cfg.host)
            st = fresh_state(self._link, None, self.stale_after_s, RobotError)
            check_safety(st, cfg.host)
            if st["robot_mode"] != RUNNING:
                mode = ROBOT_MODES.get(st["robot_mode"], str(st["robot_mode"]))
                raise RobotError(
                    f"robot at {cfg.host} is in mode {mode}, not RUNNING",
                    "power on the arm and release the brakes on the pendant",
                )
            # Uploads ur_rtde's control script; needs remote control on e-Series robots.
            self._link.call("open_control", t, host=cfg.host)
            # after a dropped link the new script may not run yet: commands would be refused
            if not self._ensure_script():  # uploaded again: the tool is set already
                self._set_tool()  # a new program runs with the installation's TCP and payload
            if cfg.payload_kg is None:
                log.warning(NO_PAYLOAD)
            self._last_ts = st["timestamp"]
        except Exception:
            self._link.kill()
            raise

    def close(self) -> None:
        self._link.close()

    def _ensure_script(self) -> bool:
        """Upload ur_rtde's control script again when it stopped (a protective stop, Stop on
        the pendant) and set the TCP and payload again: the new program starts with the
        installation's. True when it was uploaded again."""
        cfg = self.cfg
        status = self._link.call("ensure_script", cfg.connect_timeout_s, wait_s=2.0)
        if status == "stopped":
            check_safety(self._state(), cfg.host)  # a safety stop keeps it from starting
            raise RobotError(
                f"robot at {cfg.host} does not run the ur_rtde control script", SCRIPT_HINT
            )
        if status == "uploaded":
            log.warning(
                "robot at %s: the control script had stopped (program stopped on the pendant?); "
                "uploaded it again and set the TCP and payload",
                cfg.host,
            )
            self._set_tool()
        return status == "uploaded"

    def _set_tool(self) -> None:
        """Send the recipe's TCP offset and payload and read both back; the replies also show
        that the control script takes commands."""
        cfg = self.cfg
        t = cfg.connect_timeout_s
        offset = [v / 1000.0 for v in cfg.tcp_offset_mm] + list(cfg.tcp_offset_rotvec_rad)
        if not self._link.call("set_tcp", t, offset=offset):
            raise RobotError(f"robot at {cfg.host} refused the TCP offset {offset}", SCRIPT_HINT)
        got = self._link.call("tcp_offset", t)
        err_m = math.dist(got[:3], offset[:3])
        if err_m > TCP_TOLERANCE_M or rotation_distance(got[3:], offset[3:]) > TCP_TOLERANCE_RAD:
            mm = ", ".join(f"{v * 1000:.1f}" for v in got[:3])
            rad = ", ".join(f"{v:.3f}" for v in got[3:])
            raise RobotError(
                f"robot at {cfg.host} reports TCP offset [{mm}] mm / [{rad}] rad, not the "
                f"recipe's robot.tcp_offset_mm {list(cfg.tcp_offset_mm)} / "
                f"robot.tcp_offset_rotvec_rad {list(cfg.tcp_offset_rotvec_rad)}",
                "check the TCP settings and the controller log on the pendant, then reconnect",
            )
        if cfg.payload_kg is not None:
            cog = [v / 1000.0 for v in cfg.payload_cog_mm]
            if not self._link.call("set_payload", t, mass=cfg.payload_kg, cog=cog):
                raise RobotError(
                    f"robot at {cfg.host} refused the payload {cfg.payload_kg:g} kg "
                    "(robot.payload_kg)",
                    SCRIPT_HINT,
                )
            self._check_payload(cfg.payload_kg, cog)

    def _check_payload(self, mass: float, cog: list[float]) -> None:
        """Wait for the RTDE `payload` output to show `mass` (and `cog`, unless zero: e-Series
        keeps its COG then), at most PAYLOAD_READBACK_S."""
        deadline = time.monotonic() + PAYLOAD_READBACK_S
        while True:
            got = self._link.call("payload", STATE_CALL_TIMEOUT_S)
            mass_ok = abs(got["payload"] - mass) <= PAYLOAD_TOLERANCE_KG
            cog_ok = not any(cog) or math.dist(got["payload_cog"], cog) <= PAYLOAD_TOLERANCE_M
            if mass_ok and cog_ok:
                return
            if time.monotonic() > deadline:
                shown = ", ".join(f"{v * 1000:.1f}" for v in got["payload_cog"])
                raise RobotError(
                    f"robot at {self.cfg.host} reports a payload of {got['payload']:.3f} kg "
                    f"at [{shown}] mm, not robot.payload_kg {mass:g} kg at "
                    f"robot.payload_cog_mm {list(self.cfg.payload_cog_mm)}",
                    "check the payload settings and the controller log on the pendant, "
                    "then reconnect",
                )
            time.sleep(0.01)

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        st = fresh_state(self._link, self._last_ts, self.stale_after_s, RobotError)
        self._last_ts = st["timestamp"]
        return st

    @staticmethod
    def _to_robot_state(st: dict[str, Any]) -> RobotState:
        tcp = st["tcp"]
        pose = (tcp[0] * 1000.0, tcp[1] * 1000.0, tcp[2] * 1000.0, tcp[3], tcp[4], tcp[5])
        return RobotState(
            tcp_mm_rotvec=pose,
            protective_stop=st["protective_stop"],
            emergency_stop=st["emergency_stop"],
            timestamp_s=st["timestamp"],
        )

    def state(self) -> RobotState:
        return self._to_robot_state(self._state())

    # -- motion ----------------------------------------------------------------------------
    def move_to(self, pose: Pose) -> RobotState:
        cfg = self.cfg
        st = self._state()
        check_safety(st, cfg.host)
        # After a protective stop the controller stopped ur_rtde's script: load it again.
        if not st["program_running"]:
            self._ensure_script()
        outcome = self._guarded_move(pose)
        if outcome == "refused":
            # The script may have stopped after the state read above (a cycle old): the arm
            # did not move. Unless a safety stop did it, upload it and try once more. Two fresh
            # reads: the second comes a full controller cycle after the refusal.
            self._state()
            check_safety(self._state(), cfg.host)
            if self._ensure_script():
                outcome = self._guarded_move(pose)
        if outcome == "stale":
            self._link.kill()
            dashboard_stop(cfg.host)
            raise RobotError(
                f"UR robot link to {cfg.host}: controller data stopped during the move to "
                f"{pose.name!r}; link closed",
                "check the network cable and the controller, then reconnect",
            )
        if outcome == "timeout":
            raise RobotError(
                f"robot at {cfg.host} did not reach pose {pose.name!r} within "
                f"{cfg.move_timeout_s:g} s (robot.move_timeout_s); the arm was stopped",
                "check the speed slider on the pendant and robot.speed_mm_s, then resume",
            )
        # Two fresh reads: the second package was certainly sent after the move ended.
        self._state()
        st = self._state()
        check_safety(st, cfg.host)
        if outcome != "done":
            raise RobotError(
                f"robot at {cfg.host}: moveL to pose {pose.name!r} was {outcome} by the controller",
                "check the pendant for a program error or safety event",
            )
        self._check_reached(pose, st["tcp"])
        if cfg.settle_s > 0:
            time.sleep(cfg.settle_s)
            st = self._state()
            check_safety(st, cfg.host)
        return self._to_robot_state(st)

    def _guarded_move(self, pose: Pose) -> str:
        try:
            return self._move(pose)
        except RobotError:
            dashboard_stop(self.cfg.host)  # the link is gone: the arm may still be moving
            raise

    def _move(self, pose: Pose) -> str:
        """Start the move and watch it from here: "done", "refused", "stopped" (safety stop or
        script ended), "stale" (the controller's timestamp stopped advancing) or "timeout" (the
        arm is stopped first). Every call to the link child has MOVE_CALL_TIMEOUT_S: a child
        stuck inside ur_rtde fails the move with a RobotError that soon, not at the timeout."""
        cfg = self.cfg
        acc = cfg.acceleration_mm_s2 / 1000.0
        t0 = time.monotonic()
        args = {"pose": pose.as_ur(), "speed": cfg.speed_mm_s / 1000.0, "acceleration": acc}
        if not self._link.call("movel_start", MOVE_CALL_TIMEOUT_S, **args):
            return "refused"
        started = time.monotonic()  # movel_start can block for a while on a loaded host
        last_ts, last_change, running = -1.0, started, False
        while True:
            st = self._link.call("move_status", MOVE_CALL_TIMEOUT_S)
            now = time.monotonic()
            if st["stopped"] or not st["program_running"]:
                return "stopped"
            if st["timestamp"] != last_ts:
                last_ts, last_change = st["timestamp"], now
            elif now - last_change > self.stale_after_s or not st["connected"]:
                return "stale"
            # The script reports "running" a cycle or more after moveL returns; a move too
            # short to be seen running has ended once the arm stands still (the caller checks
            # the pose reached). An arm still moving is never "done".
            if st["progress"] >= 0:
                running = True
            elif running or (
                now - started > MOVE_START_WAIT_S and st["tcp_speed"] < STILL_SPEED_M_S
            ):
                return "done"
            if now - t0 > cfg.move_timeout_s:
                self._link.call("stopl", MOVE_CALL_TIMEOUT_S, acceleration=max(acc, 0.5))
                return "timeout"
            time.sleep(MOVE_POLL_S)

    def _check_reached(self, pose: Pose, tcp: list[float]) -> None:
        err_mm = math.dist([v * 1000.0 for v in tcp[:3]], pose.position_mm)
        rot_err = rotation_distance(tcp[3:6], pose.rotvec_rad)
        if err_mm > self.position_tolerance_mm or rot_err > self.rotation_tolerance_rad:
            raise RobotError(
                f"robot at {self.cfg.host} stopped {err_mm:.1f} mm / {rot_err:.3f} rad away "
                f"from pose {pose.name!r}",
                "check the program and safety limits on the pendant",
            )
