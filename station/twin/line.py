"""Simulated line: brings sheets (good or defective at the twin's rate) and takes the reject bit.

The reject output and the part-present input live on the robot controller, as on the real cell,
so a lost robot link fails line I/O too. The line contract's signals (heartbeat, RESULT_VALID,
part-id echo) are kept on the world, each change logged in `world.line_log` in order; the
twin's heartbeat is a flag, not a timer (twin time does not run by itself). As on the real line,
it stops when the line is closed, reopened or its link is lost, and a restart keeps it still for
longer than `heartbeat_timeout_s` of twin time first, so the PLC sees a new run.
"""

from __future__ import annotations

from station.errors import LineIOError
from station.twin.world import TwinWorld


class SimLine:
    """The twin's conveyor; implements `station.interfaces.LineIO`."""

    def __init__(self, world: TwinWorld) -> None:
        self.world = world
        params = world.twin.params
        self.transfer_s = float(params.get("line_transfer_s", 1.5))
        limit = params.get("line_parts")  # sheets the line brings before running empty
        self.limit = int(limit) if limit is not None else None
        self.is_open = False
        self.rejects = 0
        self.count = 0  # sheets since the heartbeat started: the part-id echo
        self._still_since: float | None = None  # twin time the heartbeat last stopped

    def _link(self, what: str) -> None:
        if self.world.trip("link_lost"):
            self.world.link_up = False
        if not self.world.link_up:
            self._stop_heartbeat()  # its toggles no longer reach the controller
            raise LineIOError(
                f"line I/O (simulated, on the robot controller) unreachable while {what}",
                hint="check the network link to the controller, then restart the run",
            )

    def open(self) -> None:
        self._stop_heartbeat()
        self._link("opening")
        self.is_open = True

    def close(self) -> None:
        self._stop_heartbeat()
        self.is_open = False

    def wait_for_part(self, timeout_s: float) -> str | None:
        self._link("waiting for a sheet")
        if self.limit is not None and self.world.sheets_presented >= self.limit:
            self.world.wait(timeout_s)
            return None
        self.world.wait(self.transfer_s)
        _, part_id = self.world.next_sheet()
        self._signal("result_valid", False)  # a new sheet: no result yet
        self.count += 1
        return part_id

    def _signal(self, name: str, value: object) -> None:
        if getattr(self.world, name) != value or name == "reject_output":
            setattr(self.world, name, value)
            self.world.line_log.append((name, value))

    def set_reject(self, reject: bool) -> None:
        self._link("setting the reject output")
        self._signal("reject_output", bool(reject))
        if self.world.reject_output != bool(reject):  # read-back, as on the real cell
            raise LineIOError("reject output did not hold")
        if reject:
            self.rejects += 1

    def release_part(self) -> None:
        self._link("releasing the sheet")
        self.world.wait(self.transfer_s / 2)
        self.world.present(None)
        self._signal("result_valid", False)  # the sheet has left

    def publish_result(self, reject: bool) -> None:
        self.set_reject(reject)
        self._link("writing the part id")
        self._signal("part_id_echo", self.count)
        self._link("raising the result-valid output")
        self._signal("result_valid", True)

    def _stop_heartbeat(self) -> None:
        if self.world.heartbeat:
            self._still_since = self.world.clock_s
        self._signal("heartbeat", False)

    def start_heartbeat(self) -> None:
        """Part ids restart at 1; a restart first keeps the heartbeat still for longer than
        heartbeat_timeout_s (the PLC then counts from 1 again), as `URLineIO` does."""
        self._stop_heartbeat()
        self._link("starting the heartbeat")
        self.count = 0
        self._signal("part_id_echo", 0)
        cfg = self.world.recipe.line_io
        if self._still_since is not None and cfg.heartbeat_output is not None:
            quiet = cfg.heartbeat_timeout_s + cfg.heartbeat_period_s
            self.world.wait(self._still_since + quiet - self.world.clock_s)
        self._signal("heartbeat", True)

    def fail_safe(self) -> None:
        self._stop_heartbeat()
        self.set_reject(True)
        self._signal("result_valid", False)
