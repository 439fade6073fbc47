"""The line contract end to end: `station inspect --live` as a real subprocess on the emulated
cell (fake UR controller with its simulated PLC, pylon camera emulator), killed with SIGKILL
mid-part by tools/drill_kill.py. The PLC must reject the killed sheet as a dead station's, and
route every sheet the station decided by its verdict. And on the twin: a resume after a line-I/O
fault is a new run for the PLC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_inspection_live import _cell

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_station_killed_mid_part_gets_its_sheet_rejected(tmp_path: Path) -> None:
    home, report = tmp_path / "home", tmp_path / "report.json"
    host = f"127.{40 + os.getpid() % 200}.78.2"
    cmd = [sys.executable, str(REPO / "tools" / "drill_kill.py"), "--kills", "1"]
    cmd += ["--final-count", "3", "--home", str(home), "--host", host, "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(report.read_text())
    assert r["problems"] == [] and r["station_exit_codes"][0] == -9
    disp = [json.loads(line) for line in (home / "plc.jsonl").read_text().splitlines()]
    killed = next(d for d in disp if d["sheet"] == r["killed_sheets"][0])
    assert killed["route"] == "rejected"
    assert killed["reason"] in ("heartbeat lost", "no valid result in time")
    assert r["part_rows"].get("interrupted") == 1  # the killed part, marked at the restart
    assert r["sheets_with_valid_result"] >= 5  # two before the kill, three in the last run
    # every part really inspected: pass or fail, none faulted (e.g. for a coverage gap)
    assert r["part_rows"].get("pass", 0) + r["part_rows"].get("fail", 0) == r["decided_parts"] >= 4
    assert r["shot_rows"] == r["shot_files_on_disk"]
    # no sheet passed that the station did not decide as a pass, and both routes were taken
    assert r["routes"].get("passed", 0) <= r["part_rows"].get("pass", 0)
    assert r["part_rows"].get("pass", 0) >= 1 and r["part_rows"].get("fail", 0) >= 1
    assert r["routes"].get("passed", 0) >= 1 and r["reject_reasons"].get("reject output", 0) >= 1


def test_a_line_io_resume_drops_the_heartbeat_and_restarts_part_ids(station_home: Path) -> None:
    """The link drops during part 2; the operator's resume restarts the heartbeat. The PLC must
    see it still (a new station run, counted from 1 again), and part 3 is sheet 1 of it."""
    cell = _cell(station_home)
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault("link_lost")
    summary = cell.run(3)
    assert summary.parts == 3 and [f.kind for f in cell.faults_seen] == ["line_io"]
    log = cell.world.line_log
    assert [v for s, v in log if s == "heartbeat"] == [True, False, True, False]
    restart = [i for i, s in enumerate(log) if s == ("heartbeat", True)][1]
    assert ("part_id_echo", 0) in log[log.index(("heartbeat", False)):restart]
    assert [v for s, v in log[restart:] if s == "part_id_echo"] == [1]


def test_the_line_sees_a_stopped_station_while_the_operator_is_called(station_home: Path) -> None:
    """A protective stop in part 2: while the operator is away the heartbeat is still, the
    reject output up and RESULT_VALID low, so the PLC rejects sheets within its heartbeat
    timeout rather than waiting for a result; the resume is a new run (part ids from 1)."""
    cell = _cell(station_home)
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault("protective_stop", after=1)
    summary = cell.run(3)
    assert summary.parts == 3 and [f.kind for f in cell.faults_seen] == ["protective_stop"]
    assert cell.line_at_operator == [(False, True, False)]
    log = cell.world.line_log
    assert [v for s, v in log if s == "heartbeat"] == [True, False, True, False]
    restart = [i for i, s in enumerate(log) if s == ("heartbeat", True)][1]
    assert [v for s, v in log[restart:] if s == "part_id_echo"] == [1]
