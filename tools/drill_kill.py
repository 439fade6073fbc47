"""Kill drill on the emulated cell: does the line reject every sheet a dead station leaves?

The fake UR controller runs in this process with its simulated PLC (station.twin.fake_ur.plc),
the pylon camera emulator plays twin shots, and `station inspect --live` runs as a real
subprocess on a small recipe that extends glassfiber-emulated (64x48 camera, PatchCore at
64 px trained here on twin sheets). The station is killed with SIGKILL mid-part (robot moving,
sheet waiting for its result) `--kills` times and restarted each time; a last run inspects
`--final-count` sheets and exits. Then it counts: sheets presented and their dispositions, the
database rows by verdict (killed parts come back `interrupted`), shot files on disk, and checks
that every sheet without a valid result was rejected and every decided sheet was routed by its
verdict.

    .venv/bin/python tools/drill_kill.py --kills 3 [--home DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = """\
extends: glassfiber-emulated
name: drill
robot:
  host: {host}
  connect_timeout_s: 10
camera:
  width: 64
  height: 48
  emulator_images: data/drill/emulator
preprocess:
  size: [64, 64]
detectors:
  - name: patchcore
    device: cpu
    params: {{coreset_ratio: 0.5}}
line_io:
  result_timeout_s: {result_timeout}
storage:
  database_url: sqlite:///data/station.db
  data_dir: data
twin:
  defect_rate: 0.5
"""


def prepare(home: Path, host: str, result_timeout_s: float) -> Any:
    """Recipes, a trained PatchCore, a calibration and the emulator's twin shots in `home`."""
    import shutil

    from station.cli.app import main
    from station.detectors.training import train_and_save
    from station.devices.pylon_emulator import prepare_twin_images
    from station.imaging import preprocess, write_png
    from station.recipe import load_recipe
    from station.twin import render_part_shots

    shutil.copytree(REPO / "recipes", home / "recipes", dirs_exist_ok=True)
    text = RECIPE.format(host=host, result_timeout=result_timeout_s)
    (home / "recipes" / "drill.yaml").write_text(text)
    recipe = load_recipe("drill")
    train = [i for s in range(3) for _, i, _ in render_part_shots(recipe, 100 + s, False)]
    pre = [preprocess(i, recipe.preprocess) for i in train]
    train_and_save(recipe, recipe.detectors[0], [], pre, train_hash="drill-twin-100-102")
    ds = home / "labelled"
    for seq, defective in enumerate([False] * 3 + [True] * 3, start=1):
        for pose, img, _ in render_part_shots(recipe, 200 + seq, defective):
            write_png(ds / "test" / ("defect" if defective else "good") / f"p{seq:06d}_{pose}.png",
                      img)
    argv = ["calibrate-threshold", "--recipe", "drill", "--dataset", str(ds)]
    try:
        main([*argv, "--resamples", "100", "--oob-resamples", "0"])
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"calibrate-threshold exited {exc.code}") from None
    prepare_twin_images(recipe, 6)
    return recipe


def _station(home: Path, log: Path, count: int | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "station", "inspect", "--live", "-r", "drill", "--no-view"]
    env = {**os.environ, "STATION_HOME": str(home), "PYLON_CAMEMU": "1", "COLUMNS": "200"}
    with log.open("ab") as out:
        return subprocess.Popen([*cmd, *(["-n", str(count)] if count else [])], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=home)


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: {what} not within {timeout_s:g} s")
        time.sleep(0.01)


def _stamp(line_part_id: str | None) -> tuple[float, int] | None:
    """('ur-20261203T133622616-0001') -> (epoch seconds, sheet number)."""
    try:
        _, stamp, num = (line_part_id or "").split("-")
        t = datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC).timestamp()
        return t, int(num)
    except ValueError:
        return None


def drill(home: Path, kills: int, final_count: int, host: str, seed: int) -> dict[str, Any]:
    from sqlalchemy import select

    from station.storage.db import open_database
    from station.storage.models import Part, Shot
    from station.twin.fake_ur import FakeURController
    from station.twin.fake_ur.plc import HEARTBEAT_LOST, NO_RESULT, PlcConfig, SimPLC

    rng = random.Random(seed)
    recipe = prepare(home, host, 15.0)
    fake = FakeURController(
        host, initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0], speed_scale=4.0
    ).start()
    plc = SimPLC(fake.model, PlcConfig.from_line_io(recipe.line_io, part_every_s=2.5),
                 log_path=home / "plc.jsonl")
    plc.start()
    killed: list[int] = []
    runs: list[int] = []
    try:
        for k in range(kills):
            proc = _station(home, home / f"station-{k}.log")
            start = len(plc.snapshot())

            def decided(start: int = start) -> bool:
                return sum(d.echoed_id is not None for d in plc.snapshot()[start:]) >= 2

            _wait(decided, 180, "two results from the station")
            # mid-part: a sheet waits for its result and the robot is moving over it
            while True:
                _wait(lambda: plc.current is not None and fake.model.move is not None, 60, "a part")
                sheet = plc.current
                time.sleep(rng.uniform(0.0, 0.8))
                if plc.current == sheet:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            runs.append(proc.returncode)
            killed.append(sheet or 0)
            _wait(lambda s=sheet: any(d.sheet == s for d in plc.snapshot()), 20, "the routing")
        proc = _station(home, home / "station-final.log", final_count)
        runs.append(proc.wait(timeout=300))
        time.sleep(recipe.line_io.heartbeat_timeout_s + 0.5)  # the sheet after the safe state
    finally:
        plc.stop()
        fake.stop()

    disp = plc.snapshot()
    db = open_database(recipe.storage.resolved_database_url())
    with db.session() as s:
        parts = s.scalars(select(Part).order_by(Part.sequence)).all()
        shots = s.scalars(select(Shot)).all()
        rows = [(p.sequence, p.line_part_id, p.verdict.value) for p in parts]
        shot_paths = [sh.image_path for sh in shots]
    db.dispose()
    root = recipe.data_dir.parent
    on_disk = sum((root / p).is_file() for p in shot_paths)
    images = recipe.images_dir
    # shots are <pose>.png; heatmaps <pose>.<detector>.heat.png
    files = list(images.rglob("*.png")) if images.is_dir() else []
    image_files = sum(f.name.count(".") == 1 for f in files)

    problems: list[str] = []
    by_sheet = {d.sheet: d for d in disp}
    for s in killed:
        d = by_sheet.get(s)
        if d is None or d.route != "rejected" or d.reason not in (HEARTBEAT_LOST, NO_RESULT):
            problems.append(f"killed sheet {s} was not rejected for a dead station: {d}")
    for d in disp:
        valid = d.echoed_id is not None and d.echoed_id == d.expected_id
        if d.route == "passed" and not valid:
            problems.append(f"sheet {d.sheet} passed without a valid result")
        if not valid:
            continue
        match = [
            v for _, lid, v in rows
            if (st := _stamp(lid)) and st[1] == d.echoed_id
            and d.presented_at - 0.5 <= st[0] <= d.decided_at + 0.5
        ]
        if len(match) != 1:
            problems.append(f"sheet {d.sheet}: {len(match)} database parts match its result")
        elif (match[0] == "pass") != (d.route == "passed"):
            problems.append(f"sheet {d.sheet} routed {d.route} but decided {match[0]}")
    verdicts = Counter(v for _, _, v in rows)
    report = {
        "kills": kills,
        "station_exit_codes": runs,
        "killed_sheets": killed,
        "sheets_presented": plc.sheets_presented,
        "sheets_routed": len(disp),
        "routes": dict(Counter(d.route for d in disp)),
        "reject_reasons": dict(Counter(d.reason.split(" (")[0] for d in disp if d.reason)),
        "sheets_with_valid_result": sum(d.echoed_id == d.expected_id for d in disp),
        "decided_parts": sum(verdicts[v] for v in ("pass", "fail", "fault")),
        "part_rows": dict(verdicts),
        "shot_rows": len(shot_paths),
        "shot_files_on_disk": on_disk,
        "shot_files_under_images": image_files,
        "problems": problems,
    }
    return report


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
