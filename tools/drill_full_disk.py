"""Drill: the database and the data on one small full disk during `station inspect --live`.

Mounts a tmpfs (root only), puts a twin recipe's SQLite database and data folder on it (the
journal too, unless --journal-dir names another path), trains a small PatchCore and calibrates
it, then runs `station inspect --live` on the twin, fills the disk after --fill-after sheets,
lets the run end (a stop for the operator exits 3), frees the disk, starts again for one sheet,
and counts: sheets decided, Part rows by verdict, journal files, shot files, and whether every
decided sheet is in the database with the verdict the line was given.

    sudo .venv/bin/python tools/drill_full_disk.py [--size 4m] [--count 8] [--fill-after 2]
        [--journal-dir /other/disk/journal] [--reserve-mb 1]
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
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PART_LINE = re.compile(r"^part (\S+): (pass|fail|fault|interrupted)\b")


def _recipe(home: Path, disk: Path, args: argparse.Namespace) -> None:
    data = yaml.safe_load((REPO / "recipes" / "glassfiber.yaml").read_text())
    data["name"] = "drill"
    data["camera"].update(width=64, height=48)
    data["preprocess"].update(size=[64, 64])
    data["twin"].update(time_scale=0.0)
    data["detectors"] = [{"name": "patchcore", "device": "cpu", "params": {"coreset_ratio": 0.5}}]
    storage = {"database_url": f"sqlite:///{disk}/station.db", "data_dir": str(disk)}
    if args.journal_dir:
        storage["journal_dir"] = args.journal_dir
    if args.reserve_mb is not None:
        storage["journal_reserve_mb"] = args.reserve_mb
    data["storage"] = storage
    (home / "recipes" / "drill.yaml").write_text(yaml.safe_dump(data))


def _prepare(home: Path) -> None:
    """Train PatchCore on twin sheets and calibrate it on a labelled twin set (off the disk)."""
    from station.detectors.training import train_and_save
    from station.imaging import preprocess, write_png
    from station.recipe import load_recipe
    from station.twin import render_part_shots

    recipe = load_recipe("drill")
    train = [img for s in range(3) for _, img, _ in render_part_shots(recipe, 100 + s, False)]
    train_and_save(
        recipe,
        recipe.detectors[0],
        [],
        [preprocess(i, recipe.preprocess) for i in train],
        train_hash="twin-seeds-100-102",
    )
    ds = home / "labelled"
    for seq, defective in enumerate([False] * 3 + [True] * 3, start=1):
        for pose, img, _ in render_part_shots(recipe, 200 + seq, defective):
            write_png(
                ds / "test" / ("defect" if defective else "good") / f"p{seq:06d}_{pose}.png", img
            )
    _station(
        home,
        "calibrate-threshold",
        "-r",
        "drill",
        "--dataset",
        str(ds),
        "--resamples",
        "100",
        "--oob-resamples",
        "0",
        check=True,
    )


def _station(home: Path, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATION_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "station", *argv],
        env=env,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if check and proc.returncode != 0:
        sys.exit(
            f"error: station {' '.join(argv)} exited {proc.returncode}: {proc.stdout[-800:]}"
            f"{proc.stderr[-800:]}"
        )
    return proc


def _live(home: Path, disk: Path, count: int, fill_after: int | None) -> tuple[int, str]:
    """One `inspect --live` run; fills the disk after `fill_after` sheets were decided."""
    env = {**os.environ, "STATION_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    cmd = [
        sys.executable,
        "-m",
        "station",
        "inspect",
        "--live",
        "-r",
        "drill",
        "-n",
        str(count),
        "--no-view",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out: list[str] = []
    decided = 0
    for line in proc.stdout:
        out.append(line)
        if PART_LINE.match(line):
            decided += 1
            if decided == fill_after:
                _fill(disk)
    proc.wait(timeout=600)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4m", help="tmpfs size (database + data)")
    ap.add_argument("--count", type=int, default=8, help="sheets in the first run")
    ap.add_argument("--fill-after", type=int, default=2, help="fill the disk after N sheets")
    ap.add_argument("--journal-dir", help="journal on another path (storage.journal_dir)")
    ap.add_argument("--reserve-mb", type=float, help="storage.journal_reserve_mb")
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
        _recipe(home, disk, args)
        _prepare(home)
        journal = (
            Path(args.journal_dir) / "drill" if args.journal_dir else disk / "drill" / "journal"
        )
        code1, out1 = _live(home, disk, args.count, args.fill_after)
        decided = [(m.group(1), m.group(2)) for m in map(PART_LINE.match, out1.splitlines()) if m]
        held = len(list(journal.glob("*.json")))
        (disk / "filler.bin").unlink(missing_ok=True)
        code2, out2 = _live(home, disk, 1, None)
        after = [m.group(1) for m in map(PART_LINE.match, out2.splitlines()) if m]
        c = _count(disk, journal)
        rows: dict[int, str] = c.pop("rows")  # type: ignore[assignment]
        numbered = [(int(s), v) for s, v in decided if s.isdigit()]
        same = sum(rows.get(s) == v for s, v in numbered)
        unnumbered = [v for s, v in decided if not s.isdigit()]  # no row when decided
        seen = {s for s, _ in numbered} | {int(s) for s in after if s.isdigit()}
        late = Counter(v for s, v in rows.items() if s not in seen)
        print(
            f"first run: exit {code1}, sheets decided {len(decided)} "
            f"({dict(Counter(v for _, v in decided))}), disk filled after {args.fill_after}"
        )
        for line in out1.splitlines():
            if line.startswith(("warning:", "error:", "stopped:", "  to do:")):
                print(f"  | {line}")
        print(f"journal files after the first run: {held}")
        print(f"restart: exit {code2}")
        for line in out2.splitlines():
            if line.startswith(("warning:", "error:")):
                print(f"  | {line}")
        print(f"Part rows by verdict: {c['by_verdict']}")
        print(
            f"shot rows {c['shot_rows']}, shot files {c['shot_files']}, journal files "
            f"{c['journal_files']}, refused files {c['refused_files']}"
        )
        print(
            f"decided sheets with a row of the same verdict: {same} of {len(numbered)} numbered"
            f"; {len(unnumbered)} decided before they had a row ({dict(Counter(unnumbered))}), "
            f"rows written for them later: {dict(late)}"
        )
        ok = same == len(numbered) and Counter(unnumbered) == late and "interrupted" not in late
        print("every decided sheet is in the database with its verdict:", "yes" if ok else "NO")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
