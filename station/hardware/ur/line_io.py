"""`URLineIO`: the conveyor signals on the UR control box's standard digital I/O.

A part-present sensor drives a standard digital input; the reject signal is a standard digital
output, confirmed by reading the output bits back (an RTDE write can "succeed" on a dead link).
An optional release output is pulsed when the sheet may move on. ur_rtde runs in a supervised
child process (see `station.hardware.ur.link`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from station.errors import LineIOError
from station.hardware.ur.link import URLink
from station.hardware.ur.robot import fresh_state
from station.recipe import LineIOConfig, RobotConfig

IO_CALL_TIMEOUT_S = 2.0


class URLineIO:
    """LineIO protocol on a UR controller's digital I/O. Reopen by calling `open()` again."""

    def __init__(
        self,
        robot_cfg: RobotConfig,
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
        self._count = 0

    def open(self) -> None:
        t = self.robot_cfg.connect_timeout_s
        self._link.start(t)
        try:
            self._link.call("open_receive", t, host=self.host)
            self._link.call("open_io", t, host=self.host)
            st = fresh_state(self._link, None, self.stale_after_s, LineIOError)
            self._last_ts = st["timestamp"]
            self._await_clear = self._input(st)
        except Exception:
            self._link.kill()
            raise

    def close(self) -> None:
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
        deadline = time.monotonic() + timeout_s
        while True:
            present = self._input(self._state())
            if not present:
                self._await_clear = False
            elif not self._await_clear:
                self._await_clear = True
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
