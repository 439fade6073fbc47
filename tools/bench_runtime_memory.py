"""Peak resident memory of `station inspect --live` per runtime (torch, onnxruntime, openvino).

    .venv/bin/python tools/bench_runtime_memory.py [--parts 4]

In a scratch station home, `station demo` (small: 2 good, 4 labelled sheets, 1 part) trains
and calibrates the twin recipe's demo copy; its models are exported to ONNX and OpenVINO;
then `station inspect --live` runs `--parts` sheets once per runtime, each in its own
process with the recipe's detectors set to that runtime, and the process's peak resident set
size (ru_maxrss from wait4) is reported. Each process inspects the same sheets (the recipe's
`twin.params.first_sheet` pins them; the twin's line otherwise goes on between runs), so every
part's verdict and score is read back from the database and compared with eager torch's, part
by part.

    # the full demo's models and its 16 live sheets:
    STATION_HOME=/tmp/demo-home station demo
    .venv/bin/python tools/bench_runtime_memory.py --home /tmp/demo-home --parts 16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STATION = [sys.executable, "-m", "station"]


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """(exit code, peak RSS MiB, stdout tail) of one station command in its own process."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*STATION, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return proc.returncode, usage.ru_maxrss / 1024.0, text[-1500:]


Rows = dict[str, tuple[str, float | None]]


def _live_parts(recipe_file: Path, after_id: int) -> tuple[int, Rows]:
    """(largest part id in the database, {line part id: (verdict, part score)} of the live
    parts with an id > after_id)."""
    from sqlalchemy import func, select

    from station.detectors.registry import load_recipe
    from station.storage.db import open_database
    from station.storage.models import Part

    db = open_database(load_recipe(str(recipe_file)).storage.resolved_database_url(), migrate=False)
    try:
        with db.session() as s:
            last = int(s.execute(select(func.max(Part.id))).scalar() or 0)
            rows = s.execute(
                select(Part.line_part_id, Part.verdict, Part.part_score)
                .where(Part.id > after_id, Part.mode == "live")
                .order_by(Part.id)
            ).all()
    finally:
        db.dispose()
    return last, {str(pid): (str(getattr(v, "value", v)), score) for pid, v, score in rows}


def _agreement(want: Rows, got: Rows) -> tuple[bool, str]:
    """(every torch part found with the same verdict, 'verdicts same on N/N parts, |d score|
    <= x') against the torch run's parts."""
    common = [k for k in want if k in got]
    same = sum(want[k][0] == got[k][0] for k in common)
    diffs = [
        abs(got[k][1] - want[k][1]) / max(abs(want[k][1]), 1e-12)  # type: ignore[operator]
        for k in common
        if want[k][1] is not None and got[k][1] is not None
    ]
    worst = f"{max(diffs):.1e}" if diffs else "n/a"
    ok = bool(want) and same == len(common) == len(want)
    return ok, f"verdicts same as torch on {same}/{len(common)} parts, max rel |d score| {worst}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--runtimes", default="torch,onnxruntime,openvino")
    ap.add_argument("--home", type=Path, default=None, help="reuse this scratch home")
    args = ap.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="station-rss-"))
    env = {**os.environ, "STATION_HOME": str(home)}
    recipe_file = home / "data" / "glassfiber-demo" / "recipe.yaml"
    if not recipe_file.is_file():
        import shutil

        shutil.copytree(REPO / "recipes", home / "recipes", dirs_exist_ok=True)
        demo = ["demo", "--good", "2", "--labelled", "4", "--parts", "1", "--time-scale", "0"]
        code, _, text = _run(demo, env)
        if code and not (home / "calibration" / "glassfiber-demo.yaml").is_file():
            print(text)
            return code
        if code:  # its one live sheet faulted (e.g. the material check on 2 good sheets)
            print(f"note: the small demo's live step ended {code}; its models and calibration "
                  "are what this bench needs")  # fmt: skip
    for fmt in ("onnx", "openvino"):
        code, _, text = _run(["export", "-r", str(recipe_file), "--format", fmt], env)
        if code:
            print(text)
            return code
    os.environ["STATION_HOME"] = str(home)  # the database URL resolves under the home
    original = recipe_file.read_text()
    rows = []
    parts: dict[str, Rows] = {}
    last, _ = _live_parts(recipe_file, 1 << 62)  # only the largest id so far
    first_sheet = last + 1  # sheets no earlier run has seen, the same for every runtime
    try:
        for runtime in args.runtimes.split(","):
            data = yaml.safe_load(original)
            for d in data["detectors"]:
                d["runtime"] = runtime
            # the demo trains no material model: inspect without that check (all runtimes)
            data.setdefault("monitoring", {}).setdefault("material_check", {})["enabled"] = False
            # every runtime on the same sheets (the twin's line otherwise goes on between runs)
            data.setdefault("twin", {}).setdefault("params", {})["first_sheet"] = first_sheet
            recipe_file.write_text(yaml.safe_dump(data, sort_keys=False))
            cmd = [
                "inspect",
                "--live",
                "-r",
                str(recipe_file),
                "--count",
                str(args.parts),
                "--no-view",
            ]
            code, rss, text = _run(cmd, env)
            last, parts[runtime] = _live_parts(recipe_file, last)
            verdicts = [ln.strip() for ln in text.splitlines() if "pass" in ln.lower()][-1:]
            rows.append((runtime, code, rss, verdicts[0] if verdicts else text[-300:]))
    finally:
        recipe_file.write_text(original)
    print(f"peak RSS of station inspect --live, {args.parts} parts (home {home})")
    for runtime, code, rss, verdicts in rows:
        print(f"  {runtime:12s} exit {code}  peak RSS {rss:7.0f} MiB  {verdicts}")
    base, agree = parts.get("torch"), True
    for runtime, got in parts.items():
        if base is not None and runtime != "torch":
            ok, text = _agreement(base, got)
            agree = agree and ok
            print(f"  {runtime:12s} {text}")
    return 1 if any(code for _, code, _, _ in rows) or not agree else 0


if __name__ == "__main__":
    raise SystemExit(main())
