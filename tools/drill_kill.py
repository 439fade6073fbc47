"""Kill drill on the emulated cell: does the line reject every sheet a dead station leaves?

The fake UR controller runs in this process with its simulated PLC (station.twin.fake_ur.plc),
the pylon camera emulator plays twin shots, and `station inspect --live` runs as a real
subprocess on a small recipe that extends glassfiber-emulated (64x48 camera on three poses,
PatchCore at 64 px trained here on twin sheets). The station is killed with SIGKILL mid-part
(robot moving, sheet waiting for its result) `--kills` times and restarted each time; a last
run inspects `--final-count` sheets and exits. Then it counts: sheets presented and their
dispositions, the database rows by verdict (killed parts come back `interrupted`), shot files
on disk, and checks that every sheet without a valid result was rejected and every decided
sheet was routed by its verdict, and that `station db verify` finds every row's files whole.

    .venv/bin/python tools/drill_kill.py --kills 3 [--home DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _emulated_cell import (  # noqa: E402
    DECIDED,
    archive_check,
    check_routing,
    database_counts,
    prepare,
    routing_summary,
    start_cell,
    station,
    wait,
)


def drill(home: Path, kills: int, final_count: int, host: str, seed: int) -> dict[str, Any]:
    from station.twin.fake_ur.plc import HEARTBEAT_LOST, NO_RESULT

    rng = random.Random(seed)
    recipe = prepare(home, host, 15.0)
    fake, plc = start_cell(recipe, host, home)
    killed: list[int] = []
    runs: list[int] = []

    def mid_part() -> bool:
        return plc.current is not None and fake.model.move is not None

    try:
        for k in range(kills):
            log = home / f"station-{k}.log"
            proc = station(home, log)
            start = len(plc.snapshot())

            def decided(start: int = start) -> bool:
                return sum(d.echoed_id is not None for d in plc.snapshot()[start:]) >= 2

            wait(decided, 180, "two results from the station", proc, log)
            # mid-part: a sheet waits for its result and the robot is moving over it
            while True:
                wait(mid_part, 60, "a part with the robot moving", proc, log)
                sheet = plc.current
                time.sleep(rng.uniform(0.0, 0.8))
                if plc.current == sheet:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            runs.append(proc.returncode)
            killed.append(sheet or 0)
            wait(lambda s=sheet: any(d.sheet == s for d in plc.snapshot()), 20, "the routing")
        proc = station(home, home / "station-final.log", final_count)
        runs.append(proc.wait(timeout=300))
        time.sleep(recipe.line_io.heartbeat_timeout_s + 0.5)  # the sheet after the safe state
    finally:
        plc.stop()
        fake.stop()

    disp = plc.snapshot()
    counts = database_counts(recipe)
    rows = counts["rows"]
    problems: list[str] = []
    by_sheet = {d.sheet: d for d in disp}
    for s in killed:
        d = by_sheet.get(s)
        if d is None or d.route != "rejected" or d.reason not in (HEARTBEAT_LOST, NO_RESULT):
            problems.append(f"killed sheet {s} was not rejected for a dead station: {d}")
    problems += check_routing(disp, rows)
    verdicts = Counter(v for _, _, v in rows)
    if verdicts["fault"]:  # the cell is healthy: a fault means the drill decided nothing real
        problems.append(f"{verdicts['fault']} parts faulted on a healthy cell (station-*.log)")
    if not (verdicts["pass"] and verdicts["fail"]):  # routing by verdict needs both verdicts
        problems.append(f"routing by verdict not exercised: part rows {dict(verdicts)}")
    archive = archive_check(recipe)
    if archive["missing"] or archive["changed"] or archive["refused"]:
        problems.append("station db verify: a row's file is missing or changed, or a record "
                        "was refused (archive)")
    return {
        "kills": kills,
        "station_exit_codes": runs,
        "killed_sheets": killed,
        **routing_summary(plc),
        "decided_parts": sum(verdicts[v] for v in DECIDED),
        "part_rows": dict(verdicts),
        "shot_rows": counts["shot_rows"],
        "shot_files_on_disk": counts["shot_rows_with_file"],
        "shot_files_under_images": counts["shot_files_under_images"],
        "archive": archive,
        "problems": problems,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--final-count", type=int, default=3)
    ap.add_argument("--home", type=Path, help="station home to build (default: a temporary one)")
    ap.add_argument("--host", default=f"127.{40 + os.getpid() % 200}.77.2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="drill-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["STATION_HOME"] = str(home)
    report = drill(home, args.kills, args.final_count, args.host, args.seed)
    report["home"] = str(home)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
