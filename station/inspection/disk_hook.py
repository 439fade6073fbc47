"""Free disk space as a cycle hook: a line at the start of a run, warnings before a disk fills
(station.monitoring.disk). It never changes a verdict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from station.inspection.hooks import CycleHook
from station.inspection.results import Event
from station.monitoring.disk import DiskWatch, describe, disks, folder_bytes
from station.storage.db import sqlite_file
from station.storage.journal import journal_folder

if TYPE_CHECKING:
    from pathlib import Path

    from station.inspection.results import PartResult
    from station.recipe import Recipe


class DiskHook(CycleHook):
    name = "disk"

    def __init__(self, recipe: Recipe, paths: list[Path]) -> None:
        cfg = recipe.monitoring.disk
        self.images = recipe.images_dir
        self.watch = DiskWatch(paths, cfg.warn_free_gb, cfg.warn_hours)

    def start(self) -> list[Event]:
        events = [Event("message", describe(d)) for d in disks(self.watch.paths)]
        low = self.watch.check(time.monotonic())  # before any part: free space only
        return events + [Event("message", line, level="warning") for line in low]

    def part(self, result: PartResult) -> list[Event]:
        size = folder_bytes(self.images / f"{result.sequence:06d}") if result.sequence else None
        lines = self.watch.observe(size, time.monotonic())
        return [Event("message", line, level="warning") for line in lines]


def disk_hook(recipe: Recipe) -> DiskHook | None:
    """The recipe's disk watch over its data, journal and SQLite folders (None when off)."""
    if not recipe.monitoring.disk.enabled:
        return None
    paths = [recipe.data_dir, journal_folder(recipe)]
    database = sqlite_file(recipe.storage.resolved_database_url())
    if database is not None:
        paths.append(database.parent)
    return DiskHook(recipe, paths)
