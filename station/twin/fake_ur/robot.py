"""The simulated UR arm behind the fake controller, and the emulated ur_rtde control script.

`RobotModel` holds what a UR controller knows: TCP pose and the move in progress, robot and
safety modes, digital I/O, the RTDE registers, and the program that runs. A 125 Hz control loop
(the CB3 cycle) advances moves and fires armed faults.

ur_rtde's RTDEControlInterface uploads a URScript program ("rtde_control") that loops once per
cycle: it reads a command number from input_int_register_0, its arguments from the input double
and int registers, runs the command, and reports on output_int_register_0 (1 = ready for a
command, 2 = done with it) and output_int_register_2 (async progress). URScript cannot run here,
so `ControlScript` reproduces that loop and the commands the station uses (movel, set_tcp,
stopl/stopj, protective_stop, ...). A command it does not emulate ends the program with a
logged runtime error, as a script error would on a real controller.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from station.geometry.ur_poses import pose_inv, pose_trans
from station.twin.fake_ur.motion import LinearMove
from station.ur_modes import (
    IDLE,
    NORMAL,
    POWER_OFF,
    PROTECTIVE_STOP,
    ROBOT_EMERGENCY_STOP,
    ROBOT_MODES,
    RUNNING,
    SAFEGUARD_STOP,
    SAFETY_MODES,
)

log = logging.getLogger("station.fake_ur")

CYCLE_S = 0.008  # CB3 controller: 125 Hz

# Commands of ur_rtde's control script that run without waiting for a clear (see main loop).
REALTIME_CMDS = {24, 11, 9, 10, 6, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71}
CMD_STOP_SCRIPT = 255


class ScriptRuntimeError(Exception):
    """The emulated program hit something it cannot do; the program stops."""


class RobotModel:
    """Thread-safe state of the simulated robot and controller."""

    def __init__(
        self,
        *,
        speed_scale: float = 1.0,
        initial_tcp_pose: list[float] | None = None,
        protective_stop_unlock_delay_s: float = 5.0,
        installation_tcp_offset: list[float] | None = None,
        installation_payload: float = 0.0,
    ) -> None:
        self.lock = threading.RLock()
        self.t_start = time.monotonic()
        self.speed_scale = speed_scale
        self.unlock_delay_s = protective_stop_unlock_delay_s
        self._tcp_pose = list(initial_tcp_pose or [0.4, 0.0, 0.5, 3.14159, 0.0, 0.0])
        # the pendant installation's TCP and payload: active again whenever a program starts
        self.installation_tcp_offset = list(installation_tcp_offset or [0.0] * 6)
        self.installation_payload = installation_payload
        self.installation_payload_cog = [0.0, 0.0, 0.0]
        self._tcp_offset = list(self.installation_tcp_offset)
        self.move: LinearMove | None = None
        self.robot_mode = RUNNING
        self.safety_mode = NORMAL
        self._stop_time = 0.0
        self.digital_in = 0  # bits 0-7 standard, 8-15 configurable, 16-17 tool
        self.digital_out = 0
        self.outputs_frozen = False  # fault: digital output writes are ignored
        self.async_report_cycles = 2  # cycles before an async move reports "running"
        self.speed_slider = 1.0
        self.payload = installation_payload
        self.payload_cog = list(self.installation_payload_cog)
        self.in_int = [0] * 48
        self.in_double = [0.0] * 48
        self.out_int = [0] * 48
        self.out_double = [0.0] * 48
        self.program: ControlScript | None = None
        self.program_name = "<unnamed>"
        self.received_scripts: list[str] = []
        self._armed_stop: float | None = None
        self.on_next_move: Callable[[], None] | None = None  # fault hook, fired once
        self._running = threading.Event()
        self._loop: threading.Thread | None = None

    # -- control loop ------------------------------------------------------------------------
    def start(self) -> None:
        self._running.set()
        self._loop = threading.Thread(
            target=self._control_loop, name="fake-ur-control", daemon=True
        )
        self._loop.start()

    def stop(self) -> None:
        self._running.clear()
        self.stop_program()
        if self._loop is not None:
            self._loop.join(timeout=2)

    def _control_loop(self) -> None:
        while self._running.is_set():
            self.tick()
            time.sleep(CYCLE_S)

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            mv = self.move
            if mv is None:
                return
            if self._armed_stop is not None and mv.fraction(now) >= self._armed_stop:
                self._armed_stop = None
                self._protective_stop_locked("armed fault: protective stop mid-move")
                return
            if mv.done(now):
                self._tcp_pose = list(mv.target)
                mv.finished = True
                self.move = None

    # -- state read by RTDE and the dashboard -------------------------------------------------
    def timestamp(self) -> float:
        return time.monotonic() - self.t_start

    def tcp_pose(self) -> list[float]:
        with self.lock:
            if self.move is not None:
                return self.move.pose(time.monotonic())
            return list(self._tcp_pose)

    def tcp_speed(self) -> list[float]:
        with self.lock:
            mv = self.move
            if mv is None or mv.length <= 0:
                return [0.0] * 6
            s = mv.speed(time.monotonic()) / mv.length
            d = [(b - a) * s for a, b in zip(mv.start[:3], mv.target[:3], strict=True)]
            return d + [0.0, 0.0, 0.0]

    @property
    def tcp_offset(self) -> list[float]:
        with self.lock:
            return list(self._tcp_offset)

    def program_running(self) -> bool:
        with self.lock:
            return self.program is not None and self.program.is_alive()

    def robot_status_bits(self) -> int:
        bits = 0
        if self.robot_mode in (4, 5, 6, 7):
            bits |= 1  # power on
        if self.program_running():
            bits |= 2
        return bits

    def safety_status_bits(self) -> int:
        m = self.safety_mode
        bits = 0
        if m == NORMAL:
            bits |= 1 << 0
        elif m == 2:
            bits |= 1 << 1
        elif m == PROTECTIVE_STOP:
            bits |= (1 << 2) | (1 << 10)
        elif m == SAFEGUARD_STOP:
            bits |= (1 << 4) | (1 << 10)
        elif m == 6:
            bits |= (1 << 5) | (1 << 7) | (1 << 10)
        elif m == ROBOT_EMERGENCY_STOP:
            bits |= (1 << 6) | (1 << 7) | (1 << 10)
        elif m == 9:
            bits |= 1 << 9
        return bits

    def runtime_state(self) -> int:
        return 2 if self.program_running() else 1  # PLAYING or STOPPED

    def can_move(self) -> bool:
        return self.robot_mode == RUNNING and self.safety_mode in (NORMAL, 2)

    # -- motion --------------------------------------------------------------------------------
    def start_linear_move(self, target: list[float], v: float, a: float) -> LinearMove:
        with self.lock:
            if not self.can_move():
                raise ScriptRuntimeError(
                    f"movel refused: robot mode {ROBOT_MODES.get(self.robot_mode)}, "
                    f"safety mode {SAFETY_MODES.get(self.safety_mode)}"
                )
            now = time.monotonic()
            start = self.move.pose(now) if self.move is not None else list(self._tcp_pose)
            scale = self.speed_scale * max(self.speed_slider, 1e-3)
            mv = LinearMove(start, list(target), v, a, now, time_scale=scale)
            self.move = mv
            log.debug("movel %s -> %s in %.3f s", start, target, mv.duration)
            hook, self.on_next_move = self.on_next_move, None
        if hook is not None:
            hook()  # before the script acknowledges the command
        return mv

    def halt(self) -> None:
        """Stop where the robot is now (stopl/stopj, protective stop)."""
        with self.lock:
            if self.move is not None:
                self._tcp_pose = self.move.pose(time.monotonic())
                self.move = None

    def set_tcp(self, offset: list[float]) -> None:
        """Change the TCP; the flange stays where it is, so the reported TCP pose moves."""
        with self.lock:
            self.halt()
            flange = pose_trans(self._tcp_pose, pose_inv(self._tcp_offset))
            self._tcp_offset = list(offset)
            self._tcp_pose = pose_trans(flange, self._tcp_offset)

    def _reset_tool_locked(self) -> None:
        """A program starts: the installation's TCP and payload are active again, as on a real
        controller; whatever the last program set with set_tcp / set_payload is gone."""
        self.set_tcp(self.installation_tcp_offset)
        self.payload = self.installation_payload
        self.payload_cog = list(self.installation_payload_cog)

    # -- faults and safety --------------------------------------------------------------------
    def _protective_stop_locked(self, why: str) -> None:
        self.halt()
        self.safety_mode = PROTECTIVE_STOP
        self._stop_time = time.monotonic()
        log.info("protective stop (%s)", why)
        self._abort_program_locked()

    def protective_stop(self, why: str = "injected") -> None:
        with self.lock:
            self._protective_stop_locked(why)

    def arm_protective_stop(self, at_fraction: float) -> None:
        with self.lock:
            self._armed_stop = at_fraction

    def safeguard_stop(self) -> None:
        """A safeguard (light curtain, door switch) opened: the arm stops, the program ends."""
        with self.lock:
            self.halt()
            self.safety_mode = SAFEGUARD_STOP
            log.info("safeguard stop")
            self._abort_program_locked()

    def reset_safeguard(self) -> None:
        with self.lock:
            if self.safety_mode == SAFEGUARD_STOP:
                self.safety_mode = NORMAL

    def emergency_stop(self) -> None:
        with self.lock:
            self.halt()
            self.safety_mode = ROBOT_EMERGENCY_STOP
            self.robot_mode = POWER_OFF
            log.info("emergency stop")
            self._abort_program_locked()

    def release_emergency_stop(self) -> None:
        """The e-stop button is released; the arm stays powered off until `power on`."""
        with self.lock:
            if self.safety_mode == ROBOT_EMERGENCY_STOP:
                self.safety_mode = NORMAL

    def unlock_protective_stop(self) -> str:
        with self.lock:
            if self.safety_mode != PROTECTIVE_STOP:
                return "Protective stop releasing"
            if time.monotonic() - self._stop_time < self.unlock_delay_s:
                return (
                    "Cannot unlock protective stop until 5s after occurrence. "
                    "Always inspect cause of protective stop before unlocking"
                )
            self.safety_mode = NORMAL
            return "Protective stop releasing"

    def power_on(self) -> None:
        with self.lock:
            if self.robot_mode == POWER_OFF and self.safety_mode == NORMAL:
                self.robot_mode = IDLE

    def power_off(self) -> None:
        with self.lock:
            self.halt()
            self._abort_program_locked()
            self.robot_mode = POWER_OFF

    def brake_release(self) -> None:
        with self.lock:
            if self.robot_mode == IDLE:
                self.robot_mode = RUNNING

    # -- I/O and registers --------------------------------------------------------------------
    def set_digital_input(self, index: int, value: bool) -> None:
        with self.lock:
            if value:
                self.digital_in |= 1 << index
            else:
                self.digital_in &= ~(1 << index)

    def apply_inputs(self, values: dict[str, Any]) -> None:
        """Apply one RTDE input data package (variable name -> value)."""
        with self.lock:
            for name, mask_name, shift in (
                ("standard_digital_output", "standard_digital_output_mask", 0),
                ("configurable_digital_output", "configurable_digital_output_mask", 8),
                ("tool_digital_output", "tool_digital_output_mask", 16),
            ):
                if name in values and mask_name in values and not self.outputs_frozen:
                    mask = int(values[mask_name]) << shift
                    val = int(values[name]) << shift
                    self.digital_out = (self.digital_out & ~mask) | (val & mask)
            if int(values.get("speed_slider_mask", 0)) and "speed_slider_fraction" in values:
                self.speed_slider = min(1.0, max(0.0, float(values["speed_slider_fraction"])))
            for name, value in values.items():
                if name.startswith("input_int_register_"):
                    self.in_int[int(name.rsplit("_", 1)[1])] = int(value)
                elif name.startswith("input_double_register_"):
                    self.in_double[int(name.rsplit("_", 1)[1])] = float(value)

    # -- programs ---------------------------------------------------------------------------
    def run_program(self, script: str) -> None:
        """A program arrived on a script port: replace the running one, as the controller does.
        A secondary program (`sec`) runs beside the primary one on a real controller; the fake
        cannot run URScript, so it records it and leaves the running program alone."""
        self.received_scripts.append(script)
        if script.lstrip().startswith("sec "):
            log.warning("fake UR: secondary program recorded, not run")
            return
        with self.lock:
            self._abort_program_locked()
        old = self.program
        if old is not None:
            old.join(timeout=2)
        with self.lock:
            if not self.can_move():
                log.warning(
                    "program not started: robot mode %s, safety mode %s",
                    ROBOT_MODES.get(self.robot_mode),
                    SAFETY_MODES.get(self.safety_mode),
                )
                return
            name = re.search(r"^\s*def\s+(\w+)\s*\(", script, re.MULTILINE)
            self.program_name = name.group(1) if name else "<unnamed>"
            if "rtde_cmd()" not in script or "signal_done_with_cmd" not in script:
                log.warning(
                    "program %s not run: the fake controller only runs ur_rtde's control script",
                    self.program_name,
                )
                return
            offsets = re.search(r"global reg_offset_int\s*=\s*(\d+)", script)
            offset = int(offsets.group(1)) if offsets else 0
            self._reset_tool_locked()
            self.program = ControlScript(self, offset)
            self.program.start()
            log.info("program %s started (register offset %d)", self.program_name, offset)

    def _abort_program_locked(self) -> None:
        if self.program is not None:
            self.program.abort.set()

    def stop_program(self) -> None:
        with self.lock:
            self._abort_program_locked()
            prog = self.program
        if prog is not None and prog is not threading.current_thread():
            prog.join(timeout=2)


class ControlScript(threading.Thread):
    """ur_rtde's control script main loop, run against the model's registers."""

    def __init__(self, model: RobotModel, reg_offset: int) -> None:
        super().__init__(name="fake-ur-rtde-control-script", daemon=True)
        self.m = model
        self.off = reg_offset
        self.abort = threading.Event()
        self._wr_count = 0
        self._op_id = 0
        self._async_move: LinearMove | None = None
        self._starting: LinearMove | None = None  # reported running from the next cycle on
        self._start_delay = 0

    # registers, with the script's register offset
    def _in_int(self, i: int) -> int:
        return self.m.in_int[i + self.off]

    def _in_double(self, i: int) -> float:
        return self.m.in_double[i + self.off]

    def _pose(self, first: int) -> list[float]:
        return [self._in_double(first + k) for k in range(6)]

    def _out_int(self, i: int, v: int) -> None:
        self.m.out_int[i + self.off] = v

    def _out_double(self, i: int, v: float) -> None:
        self.m.out_double[i + self.off] = v

    def _async_progress(self, value: int) -> None:
        self._wr_count = 0 if self._wr_count + 1 > 127 else self._wr_count + 1
        if value == 0:
            self._op_id = 0 if self._op_id + 1 > 127 else self._op_id + 1
        reg = self._wr_count * 65536 + self._op_id * 16777216
        if value >= 0:
            reg += min(value, 32767) + 32768
        self._out_int(2, reg)

    def run(self) -> None:
        try:
            self._async_progress(-1)
            self._out_int(0, 1)  # ready
            executing = False
            keep_running = True
            while keep_running and not self.abort.is_set():
                cmd = self._in_int(0)
                if cmd in REALTIME_CMDS:
                    keep_running = self._process(cmd)
                    self._out_int(0, 1)
                elif cmd == 0:
                    executing = False
                    self._out_int(0, 1)
                else:
                    if not executing:
                        keep_running = self._process(cmd)
                    executing = True
                self._check_async_move()
                self.abort.wait(CYCLE_S)
        except ScriptRuntimeError as exc:
            log.warning("control script stopped: %s", exc)
        finally:
            with self.m.lock:
                if self._async_move is not None and self.m.move is self._async_move:
                    self.m.halt()
            log.info("program %s stopped", self.m.program_name)

    def _check_async_move(self) -> None:
        if self._starting is not None:
            # ur_rtde's script runs an async move in a thread that reports "running" itself,
            # a cycle or more after "done with command": the driver must not read the idle
            # progress before that as the end of the move.
            if self._start_delay > 0:
                self._start_delay -= 1
                return
            if self._starting is self._async_move:
                self._async_progress(0)
            self._starting = None
            return
        mv = self._async_move
        if mv is not None and self.m.move is not mv:
            self._async_move = None
            self._async_progress(-1)

    def _stop_async_move(self) -> None:
        if self._async_move is not None:
            self.m.halt()
            self._async_move = None
            self._async_progress(-1)

    def _wait_move(self, mv: LinearMove) -> None:
        while self.m.move is mv:
            if self.abort.wait(CYCLE_S):
                break
        if not mv.finished:  # halted: a protective stop or power off ends the program
            self.abort.wait(0.1)
            raise ScriptRuntimeError("movel interrupted before reaching its target")

    def _process(self, cmd: int) -> bool:
        if cmd == 3:  # movel
            pose = self._pose(0)
            v, a = self._in_double(6), self._in_double(7)
            is_async = self._in_int(1) == 1
            self._stop_async_move()
            mv = self.m.start_linear_move(pose, v, a)
            if is_async:
                self._async_move = mv
                self._starting, self._start_delay = mv, self.m.async_report_cycles
            else:
                self._wait_move(mv)
        elif cmd == 17:  # set_payload
            with self.m.lock:
                self.m.payload = self._in_double(0)
                self.m.payload_cog = [self._in_double(k) for k in (1, 2, 3)]
        elif cmd == 26:  # get_steptime
            self._out_double(0, CYCLE_S)
        elif cmd == 29:  # set_tcp
            self.m.set_tcp(self._pose(0))
        elif cmd == 31:  # protective_stop
            self.m.protective_stop("requested by the program")
            raise ScriptRuntimeError("protective stop requested by the program")
        elif cmd in (33, 34):  # stopl / stopj (the fake stops at once)
            self._stop_async_move()
            self.m.halt()
        elif cmd == 40:  # get_tcp_offset
            for k, v in enumerate(self.m.tcp_offset):
                self._out_double(k, v)
        elif cmd == 47:  # is_steady
            self._out_int(1, 1 if self.m.move is None else 0)
        elif cmd == CMD_STOP_SCRIPT:
            log.info("control script received stop")
        else:
            raise ScriptRuntimeError(f"command {cmd} is not emulated by the fake controller")
        if cmd != CMD_STOP_SCRIPT:
            self._out_int(0, 2)  # done with command
        return cmd != CMD_STOP_SCRIPT
