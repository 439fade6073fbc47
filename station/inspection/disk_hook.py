"""Free disk space as a cycle hook: a line at the start of a run, warnings before a disk fills
(station.monitoring.disk). It never changes a verdict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from station.inspection.hooks import CycleHook
from station.inspection.results import Event
from station.monitoring.disk import DiskWatch, describe, disks, folder_bytes, station_paths
from station.storage.parts import part_folder

if TYPE_CHECKING:
    from pathlib import Path

    from station.inspection.results import PartResult
    from station.recipe import Recipe


class DiskHook(CycleHook):
    name = "disk"

    def __init__(self, recipe: Recipe, paths: list[Path]) -> None:
        cfg = recipe.monitoring.disk
        self.recipe = recipe
        self.watch = DiskWatch(paths, cfg.warn_free_gb, cfg.warn_hours)

    def start(self) -> list[Event]:
        found = disks(self.watch.paths)
        events = [Event("message", describe(d)) for d in found]
        low = self.watch.check(time.monotonic(), found)  # before any part: free space only
        return events + [Event("message", line, level="warning") for line in low]

    def part(self, result: PartResult) -> list[Event]:
        seq = result.sequence
        size = folder_bytes(part_folder(self.recipe, seq)) if seq else None
        lines = self.watch.observe(size, time.monotonic())
        return [Event("message", line, level="warning") for line in lines]


def disk_hook(recipe: Recipe) -> DiskHook | None:
    """The recipe's disk watch over its data, journal and SQLite folders (None when off)."""
    if not recipe.monitoring.disk.enabled:
        return None
    return DiskHook(recipe, station_paths(recipe, recipe.data_dir,
                                          recipe.storage.resolved_database_url()))
