"""Free space on the disks the station writes to, and how long it lasts at the current rate.

A full data disk does not pass a sheet (every part faults and is rejected, the journal keeps the
decisions), but it stops production. `DiskWatch` warns before: when a disk's free space falls
below `warn_free_gb`, or when at the recipe's recent rate (sheets per hour over the last
`RATE_WINDOW_S`, bytes per sheet of the newest parts) it fills within `warn_hours`. It warns on
the first part that finds it low, then at most once per `repeat_s` while it stays low.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from station.storage.db import sqlite_file
from station.storage.journal import journal_folder

if TYPE_CHECKING:
    from station.recipe import Recipe

GB = 1e9
MB = 1e6
# the rate is the last hour's, as the review pages' banner reckons it: a weekend's stop in a
# long run must not dilute it
RATE_WINDOW_S = 3600.0
MIN_PARTS = 5  # fewer in the window: no rate, free space only


def sheets_per_hour(times_s: Sequence[float]) -> float | None:
    """Sheets per hour between the first and last of the window's part times (oldest first,
    seconds); None with fewer than MIN_PARTS or no time between them."""
    if len(times_s) < MIN_PARTS or times_s[-1] <= times_s[0]:
        return None
    return (len(times_s) - 1) / (times_s[-1] - times_s[0]) * 3600


@dataclass(frozen=True)
class Disk:
    path: Path  # the first watched path on this disk
    free: int
    total: int


def disks(paths: Iterable[Path]) -> list[Disk]:
    """Free and total bytes of each disk holding one of `paths` (a path not made yet counts
    by its nearest existing folder), one entry per disk."""
    seen: dict[int, Disk] = {}
    for path in paths:
        probe = Path(path)
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            dev = os.stat(probe).st_dev
            if dev not in seen:
                usage = shutil.disk_usage(probe)
                seen[dev] = Disk(Path(path), usage.free, usage.total)
        except OSError:
            continue  # an unreadable path: the writes there will say so
    return list(seen.values())


def station_paths(recipe: Recipe, data: Path, database_url: str) -> list[Path]:
    """The folders the station writes to: `data`, the recipe's journal folder and, with
    SQLite, the database file's folder."""
    paths = [data, journal_folder(recipe)]
    database = sqlite_file(database_url)
    if database is not None:
        paths.append(database.parent)
    return paths


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is missing)."""
    total = 0
    for p in folder.rglob("*") if folder.is_dir() else []:
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            continue
    return total


def size(nbytes: float) -> str:
    """e.g. 4.2 GB, 750 GB, 3.1 MB."""
    if nbytes >= 100 * GB:
        return f"{nbytes / GB:.0f} GB"
    return f"{nbytes / GB:.1f} GB" if nbytes >= GB else f"{nbytes / MB:.1f} MB"


def describe(disk: Disk) -> str:
    return f"disk of {disk.path}: {size(disk.free)} free of {size(disk.total)}"


class DiskWatch:
    """Watches the disks of `paths` part by part (see the module docstring)."""

    def __init__(
        self, paths: Iterable[Path], warn_free_gb: float, warn_hours: float, repeat_s: float = 3600
    ) -> None:
        self.paths = list(paths)
        self.warn_free = warn_free_gb * GB
        self.warn_hours = warn_hours
        self.repeat_s = repeat_s
        self.part_bytes: list[int] = []  # the sizes of the newest parts' files
        self.times: deque[float] = deque()  # when the parts of the last RATE_WINDOW_S ended
        self.parts = 0
        self.warned_at: dict[Path, float] = {}  # disks warned of, while they stay low

    def rate(self, now_s: float) -> tuple[float, float] | None:
        """(bytes per sheet, sheets per hour) over the last RATE_WINDOW_S; None with fewer
        than MIN_PARTS parts in it."""
        while self.times and now_s - self.times[0] > RATE_WINDOW_S:
            self.times.popleft()
        per_hour = sheets_per_hour(self.times)
        if per_hour is None or not self.part_bytes:
            return None
        return sum(self.part_bytes) / len(self.part_bytes), per_hour

    def observe(self, part_bytes: int | None, now_s: float) -> list[str]:
        """One finished part (its files' size, when known); the warnings it brings."""
        self.parts += 1
        self.times.append(now_s)
        if part_bytes is not None:
            self.part_bytes = [*self.part_bytes[-49:], part_bytes]
        return self.check(now_s)

    def check(self, now_s: float, found: list[Disk] | None = None) -> list[str]:
        """The warnings due now (free space only until the rate is known); `found`: the
        watched disks as just read (default: read them now)."""
        rate = self.rate(now_s)
        out = []
        for disk in disks(self.paths) if found is None else found:
            line = self.low(disk, rate)
            if line is None:
                self.warned_at.pop(disk.path, None)
                continue
            last = self.warned_at.get(disk.path)
            if last is None or now_s - last >= self.repeat_s:
                self.warned_at[disk.path] = now_s
                out.append(line)
        return out

    def low(self, disk: Disk, rate: tuple[float, float] | None) -> str | None:
        """The warning line for `disk`, or None while it has room."""
        lasts = ""
        hours = None
        if rate is not None and rate[0] > 0 and rate[1] > 0:
            bytes_per_sheet, per_hour = rate
            sheets = disk.free / bytes_per_sheet
            hours = sheets / per_hour
            lasts = (
                f", about {hours:.1f} h ({sheets:,.0f} sheets at {bytes_per_sheet / MB:.2f} MB "
                f"per sheet, {per_hour:,.0f} sheets/h)"
            )
        if disk.free >= self.warn_free and (hours is None or hours >= self.warn_hours):
            return None
        return (
            f"{describe(disk)}{lasts}; free space or move old images off it: on a full disk "
            "every sheet is rejected as a fault"
        )
