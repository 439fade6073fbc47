"""Free disk space on every review page: the warning the live view gives, for whoever looks
at the review pages instead of the station's terminal.

A full data disk rejects every sheet. `DiskBanner` reads the disks of the station's data,
journal and SQLite folders and says when one has less than `warn_free_gb` free, or fills
within `warn_hours` at the recipe's rate over the last hour (sheets per hour from the parts
started then, bytes per sheet from the newest parts' folders). Read at most once a minute.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from station.monitoring.disk import (
    RATE_WINDOW_S,
    DiskWatch,
    disks,
    folder_bytes,
    sheets_per_hour,
)
from station.review import store
from station.storage.parts import part_folder

if TYPE_CHECKING:
    from station.recipe import Recipe
    from station.storage.db import Database

SIZED_PARTS = 10  # the newest parts whose folders give the bytes per sheet


@dataclass
class DiskBanner:
    recipe: Recipe  # whose parts give the rate
    paths: list[Path]
    ttl_s: float = 60.0
    _lines: list[str] = field(default_factory=list)
    _read_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lines(self, db: Database) -> list[str]:
        """The warnings now (cached for `ttl_s`); [] while every disk has room."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.ttl_s:
                self._lines = self._read(db)
                self._read_at = now
            return list(self._lines)

    def _read(self, db: Database) -> list[str]:
        cfg = self.recipe.monitoring.disk
        watch = DiskWatch(self.paths, cfg.warn_free_gb, cfg.warn_hours)
        try:
            rate = self.rate(db)
        except Exception:  # noqa: BLE001 (a database that is down: free space only; the page says why)
            rate = None
        return [line for d in disks(self.paths) if (line := watch.low(d, rate)) is not None]

    def rate(self, db: Database) -> tuple[float, float] | None:
        """(bytes per sheet, sheets per hour) over the last hour; None with too few parts."""
        since = datetime.now(UTC) - timedelta(seconds=RATE_WINDOW_S)
        with db.reading() as s:
            rows = store.started_since(s, self.recipe.name, since)
        per_hour = sheets_per_hour([_utc(t).timestamp() for _, t in rows])  # as the live watch
        if per_hour is None:
            return None
        sizes = [folder_bytes(part_folder(self.recipe, seq)) for seq, _ in rows[-SIZED_PARTS:]]
        if not any(sizes):
            return None
        return sum(sizes) / len(sizes), per_hour


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
