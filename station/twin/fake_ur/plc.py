"""`SimPLC`: the line's PLC, holding the other side of the line contract on the fake controller.

It presents sheets on the part-present input, watches the station's heartbeat output, waits for
RESULT_VALID to rise after each presentation and checks the part-id echo (an RTDE input int
register), then routes the sheet: `passed` only when RESULT_VALID rose within
result_timeout_s, the heartbeat was alive, the echo matched and REJECT was low; otherwise
`rejected` with the reason (a sheet rejected for a lost heartbeat still stays in place for
hold_s, so a station that only captures sees it). Sheet numbers restart at 1 when the heartbeat
comes back after a loss (a new station run); a mismatch rejects the sheet and takes the
station's number as the new count (in step again from the next sheet). Every disposition is
kept in `dispositions` and, when `log_path` is given, appended to that JSONL file. A failure
(e.g. a log that cannot be written) ends the thread and is kept in `failure`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from station.errors import StationError
from station.files import writing
from station.recipe import LineIOConfig
from station.twin.fake_ur.robot import RobotModel

NO_RESULT = "no valid result in time"
HEARTBEAT_LOST = "heartbeat lost"
MISMATCH = "part id mismatch"
REJECT = "reject output"


@dataclass(frozen=True)
class PlcConfig:
    part_input: int = 0
    reject_output: int = 0
    result_valid_output: int = 2
    heartbeat_output: int | None = 1  # None: no heartbeat to watch
    part_id_register: int | None = 18  # None: no echo to check
    result_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 1.0
    part_every_s: float = 4.0  # from one sheet's presentation to the next
    gap_s: float = 0.3  # part-present stays low at least this long between sheets
    hold_s: float = 1.0  # a rejected sheet without a result stays in place at least this long
    scan_s: float = 0.004

    @classmethod
    def from_line_io(cls, cfg: LineIOConfig, **over: Any) -> PlcConfig:
        if cfg.result_valid_output is None:
            raise ValueError("the PLC needs line_io.result_valid_output")
        base = cls(
            part_input=cfg.part_present_input,
            reject_output=cfg.reject_output,
            result_valid_output=cfg.result_valid_output,
            heartbeat_output=cfg.heartbeat_output,
            part_id_register=cfg.part_id_register,
            result_timeout_s=cfg.result_timeout_s,
            heartbeat_timeout_s=cfg.heartbeat_timeout_s,
        )
        return replace(base, **over)


@dataclass
class Disposition:
    sheet: int  # the PLC's count of sheets presented (never restarts)
    route: str  # "passed" | "rejected"
    reason: str  # "" when passed
    expected_id: int  # the station's number the PLC expects for this sheet
    echoed_id: int | None  # the register when RESULT_VALID rose (None: it did not)
    presented_at: float  # time.time()
    decided_at: float


@dataclass
class _Sheet:
    no: int
    t0: float
    wall0: float
    expected: int
    valid_low_seen: bool
    lost: bool = False  # the heartbeat was lost while it waited: rejected whatever comes


class SimPLC(threading.Thread):
    def __init__(
        self,
        model: RobotModel,
        cfg: PlcConfig,
        *,
        log_path: Path | None = None,
        on_disposition: Callable[[Disposition], None] | None = None,
    ) -> None:
        super().__init__(name="sim-plc", daemon=True)
        self.model, self.cfg = model, cfg
        self.log_path = log_path
        self.on_disposition = on_disposition
        self.dispositions: list[Disposition] = []
        self.sheets_presented = 0
        self.current: int | None = None  # the sheet presented and not yet routed
        self.alive = cfg.heartbeat_output is None
        self.failure: StationError | None = None  # why it stopped by itself (e.g. its log)
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def _bit(self, index: int) -> bool:
        return bool(self.model.digital_out >> index & 1)

    def run(self) -> None:
        """Scan until stopped; a failure ends the thread and is kept in `failure` for whoever
        runs the PLC to report (no traceback from the thread)."""
        try:
            self._scan()
        except StationError as exc:
            self.failure = exc
        except Exception as exc:  # noqa: BLE001 (said by the caller in one line)
            self.failure = StationError(f"{type(exc).__name__}: {exc}")

    def _scan(self) -> None:
        cfg = self.cfg
        expect_next = 1
        last_beat = self._bit(cfg.heartbeat_output) if cfg.heartbeat_output is not None else False
        last_toggle = -1e9
        sheet: _Sheet | None = None
        next_at = time.monotonic() + cfg.gap_s
        self.model.set_digital_input(cfg.part_input, False)
        while not self._halt.wait(cfg.scan_s):
            now = time.monotonic()
            if cfg.heartbeat_output is not None:
                beat = self._bit(cfg.heartbeat_output)
                if beat != last_beat:
                    last_beat, last_toggle = beat, now
                    if not self.alive:  # a new station run: its sheet numbers restart
                        self.alive, expect_next = True, 1
                elif now - last_toggle > cfg.heartbeat_timeout_s:
                    self.alive = False
            valid = self._bit(cfg.result_valid_output)
            if sheet is None:
                if now >= next_at:
                    self.sheets_presented += 1
                    sheet = _Sheet(self.sheets_presented, now, time.time(), expect_next, not valid)
                    expect_next += 1
                    self.model.set_digital_input(cfg.part_input, True)
                    self.current = sheet.no
                continue
            if not valid:
                sheet.valid_low_seen = True
            echoed: int | None = None
            sheet.lost = sheet.lost or not self.alive
            if sheet.lost:
                if now - sheet.t0 < cfg.hold_s:
                    continue
                reason = HEARTBEAT_LOST
            elif sheet.valid_low_seen and valid:  # rose after this sheet's presentation
                reg = cfg.part_id_register
                echoed = self.model.in_int[reg] if reg is not None else sheet.expected
                if echoed != sheet.expected:
                    reason = f"{MISMATCH} (station {echoed}, line {sheet.expected})"
                    expect_next = echoed + 1
                else:
                    reason = REJECT if self._bit(cfg.reject_output) else ""
            elif now - sheet.t0 > cfg.result_timeout_s:
                reason = NO_RESULT
            else:
                continue
            self.model.set_digital_input(cfg.part_input, False)
            self._record(
                Disposition(
                    sheet=sheet.no,
                    route="rejected" if reason else "passed",
                    reason=reason,
                    expected_id=sheet.expected,
                    echoed_id=echoed,
                    presented_at=sheet.wall0,
                    decided_at=time.time(),
                )
            )
            next_at = max(sheet.t0 + cfg.part_every_s, now + cfg.gap_s)
            sheet = self.current = None

    def _record(self, d: Disposition) -> None:
        with self._lock:
            self.dispositions.append(d)
        if (log := self.log_path) is not None:
            with writing(f"PLC log {log}"), log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(d)) + "\n")
        if self.on_disposition is not None:
            self.on_disposition(d)

    def snapshot(self) -> list[Disposition]:
        with self._lock:
            return list(self.dispositions)
