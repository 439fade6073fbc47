"""The emulated cell the drills share: fake UR controller with its simulated PLC, the pylon
emulator playing twin shots, and a small `drill` recipe (64x48 camera on three poses, PatchCore
at 64 px trained here on twin sheets) that extends glassfiber-emulated. Used by drill_kill.py and
drill_full_disk.py --emulated; not a tool on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The drills' small cell, over whichever recipe they extend: a 30 x 20 mm sheet that three
# overlapping shots of a 64x48 camera see whole (its 20 um pixels make each footprint about
# 37 x 28 mm at 350 mm), each shot resized whole for PatchCore at 64 px on the CPU; twin defects
# sized to that resolution, no reference card. Not the shipped raster: kills and full disks are
# the subject, not coverage, but every part is really inspected and decided.
SMALL_CELL: dict[str, Any] = {
    "robot": {
        "poses_file": None,
        "poses": [
            {"name": n, "position_mm": [400.0 + d, 0.0, 350.0], "rotvec_rad": [3.14159, 0, 0]}
            for n, d in (("left", -6.0), ("centre", 0.0), ("right", 6.0))
        ],
    },
    "camera": {
        "width": 64,
        "height": 48,
        "lens": {"focal_length_mm": 12.0, "pixel_size_um": 20.0, "focus_distance_mm": 350.0},
    },
    # the three views do not see the table all around it: no placement check
    "sheet": {"width_mm": 30.0, "height_mm": 20.0, "center_mm": [400.0, 0.0],
              "check_placement": False},
    "preprocess": {"size": [64, 64], "tiling": {"enabled": False}},
    "coverage": {"region_mm": None, "partial": False, "smallest_defect_mm": 5.0,
                 "edge_margin_mm": 3.0},  # the views are 28 mm tall: a 26 mm region
    "twin": {"defect_size_mm": [5.0, 12.0]},
    "detectors": [{"name": "patchcore", "device": "cpu", "params": {"coreset_ratio": 0.5}}],
    # the drills train PatchCore without `station train`, so no material model: check off
    "monitoring": {
        "material_check": {"enabled": False},
        "drift": {"reference": {"enabled": False}},
    },
}


def small_cell(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a recipe, or an `extends` override of one) with SMALL_CELL merged in, section
    by section (a list replaces a list)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    return merge(data, SMALL_CELL)


def drill_recipe(host: str, result_timeout_s: float, storage: dict[str, Any]) -> dict[str, Any]:
    """The `drill` recipe on the emulated cell: glassfiber-emulated made small."""
    return small_cell(
        {
            "extends": "glassfiber-emulated",
            "name": "drill",
            "robot": {"host": host, "connect_timeout_s": 10},
            "camera": {"emulator_images": "data/drill/emulator"},
            "line_io": {"result_timeout_s": result_timeout_s},
            "twin": {"defect_rate": 0.5},
            "storage": storage,
        }
    )


DEFAULT_STORAGE = {"database_url": "sqlite:///data/station.db", "data_dir": "data"}
DECIDED = ("pass", "fail", "fault")


def prepare(
    home: Path, host: str, result_timeout_s: float, storage: dict[str, Any] | None = None
) -> Any:
    """Recipes, a trained PatchCore, a calibration and the emulator's twin shots in `home`.

    `storage` is the recipe's storage section (default: database and data under `home/data`);
    the emulator's shots stay under `home/data/drill/emulator` wherever the data goes. The
    calibration's output goes to home/prepare.log.
    """
    import shutil

    from station.recipe import load_recipe

    shutil.copytree(REPO / "recipes", home / "recipes", dirs_exist_ok=True)
    text = yaml.safe_dump(drill_recipe(host, result_timeout_s, storage or DEFAULT_STORAGE))
    (home / "recipes" / "drill.yaml").write_text(text)
    recipe = load_recipe("drill")
    with (
        (home / "prepare.log").open("w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        train_and_calibrate(recipe, home / "labelled")
    from station.devices.pylon_emulator import prepare_twin_images

    prepare_twin_images(recipe, 6)
    return recipe


def train_and_calibrate(recipe: Any, ds: Path) -> None:
    """PatchCore trained on three good twin sheets, calibrated on six labelled ones in `ds`."""
    from station.cli.app import main
    from station.detectors.training import train_and_save
    from station.imaging import preprocess, write_png
    from station.twin import render_part_shots

    train = [i for s in range(3) for _, i, _ in render_part_shots(recipe, 100 + s, False)]
    pre = [preprocess(i, recipe.preprocess) for i in train]
    train_and_save(recipe, recipe.detectors[0], [], pre, train_hash="drill-twin-100-102")
    for seq, defective in enumerate([False] * 3 + [True] * 3, start=1):
        for pose, img, _ in render_part_shots(recipe, 200 + seq, defective):
            write_png(
                ds / "test" / ("defect" if defective else "good") / f"p{seq:06d}_{pose}.png", img
            )
    argv = ["calibrate-threshold", "--recipe", "drill", "--dataset", str(ds)]
    try:
        main([*argv, "--resamples", "100", "--oob-resamples", "0"])
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"calibrate-threshold exited {exc.code}") from None


def start_cell(recipe: Any, host: str, home: Path, part_every_s: float = 2.5) -> tuple[Any, Any]:
    """The fake UR controller and its simulated PLC (logging to home/plc.jsonl), both running."""
    from station.twin.fake_ur import FakeURController
    from station.twin.fake_ur.plc import PlcConfig, SimPLC

    fake = FakeURController(
        host, initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0], speed_scale=4.0
    ).start()
    plc = SimPLC(
        fake.model,
        PlcConfig.from_line_io(recipe.line_io, part_every_s=part_every_s),
        log_path=home / "plc.jsonl",
    )
    plc.start()
    return fake, plc


def station(home: Path, log: Path | None, count: int | None = None) -> subprocess.Popen[Any]:
    """`station inspect --live -r drill --no-view` on the emulated cell; output to `log`, or
    piped as text when `log` is None."""
    cmd = [sys.executable, "-m", "station", "inspect", "--live", "-r", "drill", "--no-view"]
    cmd += ["-n", str(count)] if count else []
    env = {
        **os.environ,
        "STATION_HOME": str(home),
        "PYLON_CAMEMU": "1",
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    if log is None:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            text=True,
        )
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home)


def wait(
    cond: Any,
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    """Until `cond()`; TimeoutError after `timeout_s`, RuntimeError as soon as `proc` (the
    station) exits. Either names what was awaited and ends with the tail of `log`."""

    def failed(why: str) -> str:
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        return f"drill: {what} {why}" + (f"; {log} ends:\n{tail}" if tail else "")

    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(failed(f"never came: the station exited {proc.returncode}"))
        if time.monotonic() > deadline:
            raise TimeoutError(failed(f"not within {timeout_s:g} s"))
        time.sleep(0.01)


def stamp(line_part_id: str | None) -> tuple[float, int] | None:
    """('ur-20261203T133622616-0001') -> (epoch seconds, sheet number)."""
    try:
        _, text, num = (line_part_id or "").split("-")
        t = datetime.strptime(text, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC).timestamp()
        return t, int(num)
    except ValueError:
        return None


def database_counts(recipe: Any) -> dict[str, Any]:
    """Live Part rows (sequence, line part id, verdict), shot rows and shot files on disk."""
    from sqlalchemy import select

    from station.storage.db import open_database
    from station.storage.models import Part, Shot

    db = open_database(recipe.storage.resolved_database_url())
    with db.session() as s:
        parts = s.scalars(select(Part).order_by(Part.sequence)).all()
        rows = [(p.sequence, p.line_part_id, p.verdict.value) for p in parts]
        shot_paths = [sh.image_path for sh in s.scalars(select(Shot)).all()]
    db.dispose()
    root = recipe.data_dir.parent
    images = recipe.images_dir
    # shots are <pose>.png; heatmaps <pose>.<detector>.heat.png
    files = list(images.rglob("*.png")) if images.is_dir() else []
    return {
        "rows": rows,
        "shot_rows": len(shot_paths),
        "shot_rows_with_file": sum((root / p).is_file() for p in shot_paths),
        "shot_files_under_images": sum(f.name.count(".") == 1 for f in files),
    }


def archive_check(recipe: Any) -> dict[str, Any]:
    """What `station db verify` finds in the drill's archive once the runs have ended: files a
    row names that are missing or changed and refused records are loss; the rest is reported."""
    from station.storage.db import existing_database
    from station.storage.verify import verify_archive

    db = existing_database(recipe.storage.resolved_database_url())
    try:
        r = verify_archive(db, recipe)
    finally:
        db.dispose()
    return {
        "files_found": r.files,
        "missing": r.missing,
        "changed": r.damaged,
        "refused": r.refused,
        "held_in_journal": len(r.held),
        "undecided": r.pending,
        "files_no_row_names": r.unnamed,
    }


def routing_findings(disp: list[Any], rows: list[tuple[int, str | None, str]]) -> list[Any]:
    """(kind, disposition, message) for each sheet the line and the database disagree on.

    kind: `no result` (passed without a valid result), `no row` (a valid result that is not
    exactly one Part row), `verdict` (the row's verdict is not the one the line was given: pass
    when passed, fail or fault when rejected; `interrupted` is a lost decision).
    """
    found: list[Any] = []
    for d in disp:
        valid = d.echoed_id is not None and d.echoed_id == d.expected_id
        if d.route == "passed" and not valid:
            found.append(("no result", d, f"sheet {d.sheet} passed without a valid result"))
        if not valid:
            continue
        match = [
            v
            for _, lid, v in rows
            if (st := stamp(lid))
            and st[1] == d.echoed_id
            and d.presented_at - 0.5 <= st[0] <= d.decided_at + 0.5
        ]
        if len(match) != 1:
            msg = f"sheet {d.sheet} ({d.route}): {len(match)} database parts match its result"
            found.append(("no row", d, f"{msg} {d.echoed_id}"))
        elif (match[0] == "pass") != (d.route == "passed") or match[0] not in DECIDED:
            msg = f"sheet {d.sheet} routed {d.route} but its row is {match[0]}"
            found.append(("verdict", d, msg))
    return found


def check_routing(disp: list[Any], rows: list[tuple[int, str | None, str]]) -> list[str]:
    return [msg for _, _, msg in routing_findings(disp, rows)]


def routing_summary(plc: Any) -> dict[str, Any]:
    disp = plc.snapshot()
    return {
        "sheets_presented": plc.sheets_presented,
        "sheets_routed": len(disp),
        "routes": dict(Counter(d.route for d in disp)),
        "reject_reasons": dict(Counter(d.reason.split(" (")[0] for d in disp if d.reason)),
        "sheets_with_valid_result": sum(d.echoed_id == d.expected_id for d in disp),
    }
