"""Drill: the database and the data on one small full disk during `station inspect --live`.

Mounts a tmpfs (root only), puts a twin recipe's SQLite database and data folder on it (the
journal too, unless --journal-dir names another path), trains a small PatchCore and calibrates
it, then runs `station inspect --live` on the twin, fills the disk after --fill-after sheets,
lets the run end (a stop for the operator exits 3), frees the disk, starts again for one sheet,
and counts: sheets decided, Part rows by verdict, journal files, shot files, and whether every
decided sheet is in the database with the verdict the line was given, and that `station db verify`
finds every row's files whole.

With --emulated the same scenario runs on the emulated cell (tools/_emulated_cell.py, shared
with drill_kill.py): the fake UR controller with its simulated PLC presents a sheet every 2.5 s,
the pylon emulator plays twin shots, the restart inspects 2 sheets, and the report adds the PLC's
dispositions and checks that every sheet without a valid result was rejected, that every sheet
with one has its Part row with the verdict the line was given, and that no sheet passed whose row
is not `pass`. Exits 1 when a check fails.

    sudo .venv/bin/python tools/drill_full_disk.py [--emulated] [--size 4m] [--count 8]
        [--fill-after 2] [--journal-dir /other/disk/journal] [--reserve-mb 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
LOST = re.compile(r"in\s+no\s+journal\s+and\s+no\s+database\s+\(parts\s+([^)]*)\)")
PART_LINE = re.compile(r"^part (\S+): (pass|fail|fault|interrupted)\b")


def _recipe(home: Path, disk: Path, args: argparse.Namespace) -> None:
    from _emulated_cell import small_cell

    data = small_cell(yaml.safe_load((REPO / "recipes" / "glassfiber.yaml").read_text()))
    data["name"] = "drill"
    data["twin"].update(time_scale=0.0)
    data["storage"] = _storage(disk, args)
    (home / "recipes" / "drill.yaml").write_text(yaml.safe_dump(data))


def _storage(disk: Path, args: argparse.Namespace) -> dict[str, object]:
    """Database and data on the small disk; the journal too unless --journal-dir."""
    storage: dict[str, object] = {
        "database_url": f"sqlite:///{disk}/station.db",
        "data_dir": str(disk),
    }
    if args.journal_dir:
        storage["journal_dir"] = args.journal_dir
    if args.reserve_mb is not None:
        storage["journal_reserve_mb"] = args.reserve_mb
    return storage


def _prepare(home: Path) -> None:
    """Train PatchCore on twin sheets and calibrate it on a labelled twin set (off the disk)."""
    from _emulated_cell import train_and_calibrate

    from station.recipe import load_recipe

    train_and_calibrate(load_recipe("drill"), home / "labelled")


def _live(home: Path, disk: Path, count: int, fill_after: int | None) -> tuple[int, str]:
    """One `inspect --live` run on the twin; fills the disk after `fill_after` decided sheets."""
    env = {**os.environ, "STATION_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "station", "inspect", "--live", "-r", "drill", "-n", str(count)]
    proc = subprocess.Popen(
        [*cmd, "--no-view"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return _follow(proc, disk, fill_after)


def _follow(proc: subprocess.Popen[str], disk: Path, fill_after: int | None) -> tuple[int, str]:
    """Reads a live run's output to its end, filling the disk after `fill_after` part lines;
    kills the run if it has not ended within 600 s."""
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    out: list[str] = []
    decided = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if PART_LINE.match(line):
            decided += 1
            if decided == fill_after:
                _fill(disk)
    watchdog.cancel()
    proc.wait(timeout=60)
    return proc.returncode, "".join(out)


def _fill(disk: Path) -> None:
    try:
        with open(disk / "filler.bin", "wb") as fh:
            while True:
                fh.write(b"\1" * 4096)
                fh.flush()
    except OSError:
        pass


def _count(disk: Path, journal: Path) -> dict[str, object]:
    conn = sqlite3.connect(disk / "station.db")
    try:
        rows = conn.execute("SELECT sequence, verdict FROM parts WHERE mode = 'live'").fetchall()
        shot_rows = conn.execute("SELECT count(*) FROM shots").fetchone()[0]
    finally:
        conn.close()
    images = disk / "drill" / "images"
    shots = [p for p in images.glob("*/*.png") if p.name.count(".") == 1] if images.is_dir() else []
    return {
        "rows": dict(rows),
        "by_verdict": dict(Counter(v for _, v in rows)),
        "shot_rows": shot_rows,
        "shot_files": len(shots),
        "journal_files": len(list(journal.glob("*.json"))),
        "refused_files": len(list((journal / "refused").glob("*.json"))),
    }


def _decisions(out: str) -> list[tuple[str, str]]:
    """(sequence, verdict) of every part line a run printed; the sequence is not a number (the
    station prints `None`) when the part was decided before it had a row."""
    return [(m.group(1), m.group(2)) for m in map(PART_LINE.match, out.splitlines()) if m]


def _print_run(name: str, code: int, out: str, also: tuple[str, ...] = ()) -> None:
    decided = _decisions(out)
    print(
        f"{name}: exit {code}, sheets decided {len(decided)} "
        f"({dict(Counter(v for _, v in decided))})"
    )
    for line in out.splitlines():
        if line.startswith(("warning:", "error:", *also)):
            print(f"  | {line}")


def _printed_vs_rows(out1: str, out2: str, rows: dict[int, str]) -> bool:
    """Every decision the station printed has a row of that verdict; prints the counts."""
    decided = _decisions(out1)
    numbered = [(int(s), v) for s, v in decided if s.isdigit()]
    same = sum(rows.get(s) == v for s, v in numbered)
    unnumbered = [v for s, v in decided if not s.isdigit()]  # no row when decided
    seen = {s for s, _ in numbered} | {int(s) for s, _ in _decisions(out2) if s.isdigit()}
    late = Counter(v for s, v in rows.items() if s not in seen)
    print(
        f"decided sheets with a row of the same verdict: {same} of {len(numbered)} numbered"
        f"; {len(unnumbered)} decided before they had a row ({dict(Counter(unnumbered))}), "
        f"rows written for them later: {dict(late)}"
    )
    return same == len(numbered) and Counter(unnumbered) == late and "interrupted" not in late


def _inspected(fill_after: int, restart_count: int, out1: str, code2: int, out2: str) -> dict:
    """Checks that the drill inspected something: without them every other check holds when
    each sheet faults or the station never ran."""
    first, again = _decisions(out1), _decisions(out2)
    decided = ("pass", "fail")
    return {
        f"(5) the {fill_after} sheets before the fill were decided pass or fail": (
            len(first) >= fill_after and all(v in decided for _, v in first[:fill_after])
        ),
        f"(6) the restart on the freed disk decided its {restart_count} sheets pass or fail "
        "and exited 0": (
            code2 == 0 and len(again) == restart_count and all(v in decided for _, v in again)
        ),
    }


def _twin(args: argparse.Namespace, home: Path, disk: Path, journal: Path) -> bool:
    _recipe(home, disk, args)
    _prepare(home)
    code1, out1 = _live(home, disk, args.count, args.fill_after)
    held = len(list(journal.glob("*.json")))
    (disk / "filler.bin").unlink(missing_ok=True)
    code2, out2 = _live(home, disk, args.restart_count or 1, None)
    c = _count(disk, journal)
    rows: dict[int, str] = c.pop("rows")  # type: ignore[assignment]
    _print_run("first run", code1, out1, ("stopped:", "  to do:"))
    print(f"disk filled after {args.fill_after}; journal files after the first run: {held}")
    _print_run("restart", code2, out2)
    print(f"Part rows by verdict: {c['by_verdict']}")
    print(
        f"shot rows {c['shot_rows']}, shot files {c['shot_files']}, journal files "
        f"{c['journal_files']}, refused files {c['refused_files']}"
    )
    from station.recipe import load_recipe

    checks = {
        "every decided sheet is in the database with its verdict": _printed_vs_rows(
            out1, out2, rows
        ),
        **_inspected(args.fill_after, args.restart_count or 1, out1, code2, out2),
        **_archive(load_recipe("drill")),
    }
    for name, ok in checks.items():
        print(f"{name}: {'yes' if ok else 'NO'}")
    return all(checks.values())


def _emulated(args: argparse.Namespace, home: Path, disk: Path, journal: Path) -> bool:
    """The same scenario on the emulated cell; checks the PLC's dispositions against the rows."""
    from _emulated_cell import prepare, start_cell, station, wait

    recipe = prepare(home, args.host, 15.0, _storage(disk, args))
    fake, plc = start_cell(recipe, args.host, home)
    try:
        code1, out1 = _follow(station(home, None, args.count), disk, args.fill_after)
        held = len(list(journal.glob("*.json")))
        (disk / "filler.bin").unlink(missing_ok=True)
        code2, out2 = _follow(station(home, None, args.restart_count or 2), disk, None)
        time.sleep(recipe.line_io.heartbeat_timeout_s + 0.5)  # the sheet after the safe state
        wait(lambda: plc.current is None, 10, "the last sheet's routing")
    finally:
        plc.stop()
        fake.stop()
    (home / "station-1.log").write_text(out1)
    (home / "station-2.log").write_text(out2)
    _print_run("first run", code1, out1, ("stopped:", "  to do:"))
    print(f"disk filled after {args.fill_after}; journal files after the first run: {held}")
    _print_run("restart", code2, out2)
    inspected = _inspected(args.fill_after, args.restart_count or 2, out1, code2, out2)
    return _emulated_report(recipe, plc, journal, out1, out2, inspected)


def _emulated_report(
    recipe: object, plc: object, journal: Path, out1: str, out2: str, inspected: dict
) -> bool:
    from _emulated_cell import DECIDED, database_counts, routing_findings, routing_summary

    disp = plc.snapshot()  # type: ignore[attr-defined]
    c = database_counts(recipe)
    rows = c["rows"]
    verdicts = Counter(v for _, _, v in rows)
    for key, value in routing_summary(plc).items():
        print(f"PLC {key.replace('_', ' ')}: {value}")
    print(
        f"decided parts (rows pass/fail/fault): {sum(verdicts[v] for v in DECIDED)}; "
        f"Part rows by verdict: {dict(verdicts)}"
    )
    print(
        f"shot rows {c['shot_rows']} (with their file {c['shot_rows_with_file']}), shot files "
        f"under images {c['shot_files_under_images']}, journal files "
        f"{len(list(journal.glob('*.json')))}, refused files "
        f"{len(list((journal / 'refused').glob('*.json')))}"
    )
    found = routing_findings(disp, rows)
    invalid = [d for d in disp if d.echoed_id is None or d.echoed_id != d.expected_id]
    print(
        f"sheets without a valid result: {len(invalid)}, "
        f"rejected {sum(d.route == 'rejected' for d in invalid)}"
    )
    for _, _, msg in found:
        print(f"  problem: {msg}")
    _named_lost(out1 + out2, [d for kind, d, _ in found if kind == "no row"])
    checks = {
        "(1) every sheet without a valid result was rejected by the PLC": all(
            d.route == "rejected" for d in invalid
        ),
        "(2) every decided sheet is in the database with the verdict the line was given": not any(
            kind != "no result" for kind, _, _ in found
        ),
        "(3) no sheet passed at the PLC whose Part row is not pass": not any(
            d.route == "passed" for _, d, _ in found
        ),
        "(4) every decision the station printed has a row of that verdict": _printed_vs_rows(
            out1, out2, {s: v for s, _, v in rows}
        ),
        **inspected,
        **_archive(recipe),
    }
    for name, ok in checks.items():
        print(f"{name}: {'yes' if ok else 'NO'}")
    return all(checks.values())


def _archive(recipe: object) -> dict[str, bool]:
    """`station db verify` on the drill's archive: prints its findings; the check."""
    from _emulated_cell import archive_check

    a = archive_check(recipe)
    print(
        f"station db verify: {a['files_found']} files found; missing {len(a['missing'])}, "
        f"changed {len(a['changed'])}, refused records {len(a['refused'])}, held in the journal "
        f"{a['held_in_journal']}, undecided parts {len(a['undecided'])}, files no row names "
        f"{len(a['files_no_row_names'])}"
    )
    for path in a["missing"] + a["changed"] + a["files_no_row_names"]:
        print(f"  | {path}")
    whole = not (a["missing"] or a["changed"] or a["refused"])
    return {"(7) station db verify: every row's files are there and unchanged": whole}


def _named_lost(out: str, missing: list[object]) -> None:
    """Whether the sheets without a row are the ones the station said were stored nowhere."""
    from _emulated_cell import stamp

    named = {p for m in LOST.finditer(out) for p in re.split(r",\s*", m.group(1).strip())}
    if not named and not missing:
        return
    told = [
        d
        for d in missing
        if any(
            (st := stamp(lid))
            and st[1] == d.echoed_id  # type: ignore[attr-defined]
            and d.presented_at - 0.5 <= st[0] <= d.decided_at + 0.5  # type: ignore[attr-defined]
            for lid in named
        )
    ]
    print(
        f"the station named {len(named)} part(s) as stored nowhere ({', '.join(sorted(named))}); "
        f"of the {len(missing)} sheet(s) with a result and no row, {len(told)} were named"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4m", help="tmpfs size (database + data)")
    ap.add_argument("--count", type=int, default=8, help="sheets in the first run")
    ap.add_argument("--fill-after", type=int, default=2, help="fill the disk after N sheets")
    ap.add_argument("--restart-count", type=int, help="sheets after the restart (1; emulated 2)")
    ap.add_argument("--journal-dir", help="journal on another path (storage.journal_dir)")
    ap.add_argument("--reserve-mb", type=float, help="storage.journal_reserve_mb")
    ap.add_argument(
        "--emulated",
        action="store_true",
        help="fake UR controller + simulated PLC + pylon emulator, not the twin",
    )
    ap.add_argument(
        "--host",
        default=f"127.{40 + os.getpid() % 200}.78.2",
        help="fake UR controller address (--emulated)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the drill mounts a tmpfs and needs root (run it with sudo)")
    work = Path(tempfile.mkdtemp(prefix="drill_full_disk_"))
    home, disk = work / "home", work / "disk"
    shutil.copytree(REPO / "recipes", home / "recipes")
    (home / "calibration").mkdir()
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(disk)], check=True
    )
    try:
        os.environ["STATION_HOME"] = str(home)
        journal = (
            Path(args.journal_dir) / "drill" if args.journal_dir else disk / "drill" / "journal"
        )
        ok = (_emulated if args.emulated else _twin)(args, home, disk, journal)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
