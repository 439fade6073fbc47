"""`URLineIO`: the conveyor signals on the UR control box's standard digital I/O.

A part-present sensor drives a standard digital input; the reject signal is a standard digital
output, confirmed by reading the output bits back (an RTDE write can "succeed" on a dead link).
An optional release output is pulsed when the sheet may move on. ur_rtde runs in a supervised
child process (see `station.hardware.ur.link`).

The line contract (README "Line contract"): a heartbeat output toggled by a thread of this
process (so it stops when the station dies or hangs), a RESULT_VALID output and the sheet's
number in an RTDE input int register. The heartbeat thread and the cycle share one link:
`URLink.call` holds the link's lock for a whole request and reply, so their calls never mix.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from station.errors import HardwareError, LineIOError
from station.hardware.ur.link import URLink
from station.hardware.ur.robot import fresh_state
from station.recipe.devices import LineIOConfig, URRobotConfig

IO_CALL_TIMEOUT_S = 2.0
log = logging.getLogger("station.hardware.ur")


class URLineIO:
    """LineIO protocol on a UR controller's digital I/O. Reopen by calling `open()` again."""

    def __init__(
        self,
        robot_cfg: URRobotConfig,
        line_cfg: LineIOConfig,
        *,
        poll_s: float = 0.01,
        stale_after_s: float = 1.0,
    ) -> None:
        self.robot_cfg = robot_cfg
        self.cfg = line_cfg
        self.host = robot_cfg.host
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self._link = URLink(robot_cfg.host, LineIOError, "line I/O")
        self._last_ts: float | None = None
        self._await_clear = False  # the last part's sensor must go low before the next part
        self._count = 0  # sheets seen since the heartbeat started: the part-id echo
        self._valid = False  # RESULT_VALID as last written
        self._beat_level = False
        self._beat_last = -1e9  # monotonic time of the last heartbeat toggle
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.heartbeat_error: str | None = None

    def open(self) -> None:
        self._stop_heartbeat()
        t = self.robot_cfg.connect_timeout_s
        self._link.start(t)
        try:
            self._link.call("open_receive", t, host=self.host)
            self._link.call("open_io", t, host=self.host)
            st = fresh_state(self._link, None, self.stale_after_s, LineIOError)
            self._last_ts = st["timestamp"]
            self._await_clear = self._input(st)
            if self.cfg.heartbeat_output is not None:
                self._beat_level = bool(st["digital_out"] >> self.cfg.heartbeat_output & 1)
            # a result left high by a station that died stands for no sheet of this run
            self._valid = True
            self._set_valid(False)
        except Exception:
            self._link.kill()
            raise

    def close(self) -> None:
        self._stop_heartbeat()
        self._link.close()

    def _state(self) -> dict[str, Any]:
        st = fresh_state(self._link, self._last_ts, self.stale_after_s, LineIOError)
        self._last_ts = st["timestamp"]
        return st

    def _input(self, st: dict[str, Any]) -> bool:
        return bool(st["digital_in"] >> self.cfg.part_present_input & 1)

    def wait_for_part(self, timeout_s: float) -> str | None:
        """A part is a rising edge of the part-present input (a sheet already there at `open`
        counts only after it has left)."""
        self._check_heartbeat()
        deadline = time.monotonic() + timeout_s
        while True:
            present = self._input(self._state())
            if not present:
                self._await_clear = False
                self._set_valid(False)  # the sheet has left
            elif not self._await_clear:
                self._await_clear = True
                self._set_valid(False)  # at the latest when the next sheet arrives
                self._count += 1
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
                return f"ur-{stamp}-{self._count:04d}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_s)

    def _write_output(self, index: int, value: bool, what: str) -> None:
        if not self._link.call("set_do", IO_CALL_TIMEOUT_S, index=index, value=value):
            raise LineIOError(
                f"UR line I/O at {self.host}: writing {what} DO{index}={int(value)} failed",
                "check the RTDE connection and that no other client drives this output",
            )
        deadline = time.monotonic() + self.cfg.confirm_timeout_s
        while True:
            st = self._state()
            if bool(st["digital_out"] >> index & 1) == value:
                return
            if time.monotonic() >= deadline:
                raise LineIOError(
                    f"UR line I/O at {self.host}: {what} DO{index} did not read back "
                    f"{int(value)} within {self.cfg.confirm_timeout_s:.2f} s",
                    "check the controller's I/O setup (is the output assigned to a program?)",
                )
            time.sleep(self.poll_s)

    def set_reject(self, reject: bool) -> None:
        self._write_output(self.cfg.reject_output, reject, "reject output")

    def release_part(self) -> None:
        """Pulse the release output when the recipe names one; otherwise the line needs none."""
        out = self.cfg.release_output
        if out is None:
            return
        self._write_output(out, True, "release output")
        time.sleep(self.cfg.release_pulse_s)
        self._write_output(out, False, "release output")

    # -- the line contract -------------------------------------------------------------------
    def _set_valid(self, value: bool) -> None:
        out = self.cfg.result_valid_output
        was, self._valid = self._valid, self._valid or value  # a failed raise may be out
        if out is not None and (value or was):
            self._write_output(out, value, "result-valid output")
        self._valid = value

    def publish_result(self, reject: bool) -> None:
        """Reject output (read back), the sheet's number, then RESULT_VALID (read back). The
        register write and RESULT_VALID go in order on one RTDE connection."""
        self._check_heartbeat()
        self.set_reject(reject)
        reg = self.cfg.part_id_register
        if reg is not None:
            self._set_register(reg, self._count)
        self._set_valid(True)

    def _set_register(self, index: int, value: int) -> None:
        if not self._link.call("set_int_register", IO_CALL_TIMEOUT_S, index=index, value=value):
            raise LineIOError(
                f"UR line I/O at {self.host}: writing the part id {value} to "
                f"input_int_register_{index} failed",
                "check the RTDE connection and that no other client writes this register",
            )

    def fail_safe(self) -> None:
        self._stop_heartbeat()
        self.set_reject(True)
        self._valid = True  # lower it whatever was written before
        self._set_valid(False)

    def start_heartbeat(self) -> None:
        """Sheet numbers restart at 1 with each heartbeat: the PLC counts from 1 again when the
        heartbeat comes back after a loss, so a restart first keeps it still for longer than
        heartbeat_timeout_s (within this process; a restarted process takes longer anyway).
        A sheet already in place counts only after it has left."""
        self._stop_heartbeat()
        self._count = 0
        if self.cfg.part_id_register is not None:
            self._set_register(self.cfg.part_id_register, 0)
        if self.cfg.heartbeat_output is None:
            return
        quiet = self.cfg.heartbeat_timeout_s + self.cfg.heartbeat_period_s
        wait = self._beat_last + quiet - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        # a sheet presented while no heartbeat ran is the PLC's reject: count the next one
        self._await_clear = self._input(self._state())
        self._toggle()  # the first toggle's error goes to the caller
        self._beat_stop = threading.Event()
        self._beat_thread = threading.Thread(
            target=self._beat, args=(self._beat_stop,), name="line-heartbeat", daemon=True
        )
        self._beat_thread.start()

    def _toggle(self) -> None:
        out = self.cfg.heartbeat_output
        assert out is not None
        level = not self._beat_level
        if not self._link.call("set_do", IO_CALL_TIMEOUT_S, index=out, value=level):
            raise LineIOError(
                f"UR line I/O at {self.host}: writing the heartbeat DO{out}={int(level)} failed",
                "check the RTDE connection and that no other client drives this output",
            )
        self._beat_level = level
        self._beat_last = time.monotonic()

    def _beat(self, stop: threading.Event) -> None:
        period = self.cfg.heartbeat_period_s
        next_t = time.monotonic() + period
        while not stop.wait(max(0.0, next_t - time.monotonic())):
            next_t = max(next_t + period, time.monotonic())
            try:
                self._toggle()
            except HardwareError as exc:
                self.heartbeat_error = exc.message
                log.error("line heartbeat stopped: %s", exc)
                return

    def _stop_heartbeat(self) -> None:
        self._beat_stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(IO_CALL_TIMEOUT_S + 1.0)
            self._beat_thread = None
        self.heartbeat_error = None

    def _check_heartbeat(self) -> None:
        if self.heartbeat_error is not None:
            raise LineIOError(
                f"UR line I/O at {self.host}: the heartbeat stopped ({self.heartbeat_error}); "
                "the line rejects every sheet",
                "check the link to the controller, then resume (the heartbeat restarts)",
            )
