"""The drift hook: image statistics of every shot, drift charts after every part, alarms.

`shot` measures mean, contrast and sharpness (stored with the shot as `stats["drift"]`);
`part` adds a passed part's detector scores (score / threshold), feeds the recipe's
`DriftMonitor`, stores the alarms it raises and returns them as warnings for the live view.
`build_monitor` makes the monitor of a recipe: baselines from its calibration's good parts,
then the charts replayed over the parts already inspected with that calibration, so that a
restart resumes the charts (`station monitor` builds the same one to show them).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from station.inspection.hooks import CycleHook
from station.inspection.results import Event
from station.monitoring.baseline import calibration_baselines
from station.monitoring.drift import SCORE_PREFIX, DriftMonitor
from station.monitoring.imagestats import image_stats
from station.paths import station_home
from station.storage.alarms import (
    NewAlarm,
    PartPoint,
    add_alarm,
    list_alarms,
    record_part_signals,
    signal_history,
)

if TYPE_CHECKING:
    import numpy as np

    from station.inspection.models import DetectorSet
    from station.inspection.recorder import PartRecord
    from station.inspection.results import PartResult
    from station.recipe import Recipe
    from station.storage.db import Database


def read_calibration(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def build_monitor(
    recipe: Recipe, db: Database, calibration: dict[str, Any], *, store: bool = True
) -> tuple[DriftMonitor, list[str]]:
    """The recipe's drift monitor, resumed from the stored history of this calibration's
    parts; with `store`, alarms the history raises and the database lacks are stored (a
    crash between a part's record and its alarm). Returns the monitor and notes in words
    (where the baselines come from, what was replayed)."""
    cfg = recipe.monitoring.drift
    poses = [p.name for p in recipe.robot.poses]
    baselines, notes = calibration_baselines(
        calibration, station_home(), poses, cfg.min_baseline_parts
    )
    monitor = DriftMonitor(recipe.name, cfg, baselines)
    cal_id = calibration.get("id") if isinstance(calibration.get("id"), int) else None
    history = signal_history(db, recipe.name, cal_id)
    raised = monitor.replay(history, list_alarms(db, recipe.name, limit=10_000))
    missed = [a for a in raised if store and add_alarm(db, a) is not None]
    notes.append(
        f"charts resumed over {len(history)} stored part(s)"
        + (f"; {len(missed)} alarm(s) the history raised were stored now" if missed else "")
    )
    return monitor, notes


class DriftHook(CycleHook):
    name = "drift"

    def __init__(self, recipe: Recipe, db: Database, monitor: DriftMonitor) -> None:
        self.recipe = recipe
        self.db = db
        self.monitor = monitor
        self._lock = threading.Lock()
        self._pending: dict[int, dict[str, float]] = {}  # part sequence -> its shots' values

    def shot(self, part: PartRecord, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        stats = image_stats(image)
        with self._lock:
            values = self._pending.setdefault(part.sequence, {})
            values.update({f"{k} {pose_name}": v for k, v in stats.items()})
        return stats

    def part(self, result: PartResult) -> list[Event]:
        with self._lock:
            values = self._pending.pop(result.sequence, {}) if result.sequence is not None else {}
        if result.part_id is None or result.sequence is None:  # held in the journal: not charted
            return []
        if result.verdict.value == "pass":
            scores = {SCORE_PREFIX + d: float(v) for d, v in result.normalized.items()}
            record_part_signals(self.db, result.part_id, scores)
            values.update(scores)
        self.monitor.sync(list_alarms(self.db, self.recipe.name, open_only=True))
        point = PartPoint(result.part_id, result.sequence, datetime.now(UTC),
                          result.verdict.value, values)
        return self.store(self.monitor.add(point))

    def store(self, raised: list[NewAlarm]) -> list[Event]:
        events = []
        for alarm in raised:
            row = add_alarm(self.db, alarm)
            if row is not None:
                events.append(Event("message", f"drift alarm {row.id}: {row.message}",
                                    None, "warning"))
        return events


def active_calibration_doc(detectors: DetectorSet) -> dict[str, Any]:
    """The calibration document the detectors' thresholds come from ({} when there is none:
    every chart then takes its limits from a warm-up)."""
    path = detectors.calibration_path
    return read_calibration(path) if path is not None else {}


def drift_hook(recipe: Recipe, db: Database, calibration: dict[str, Any]) -> DriftHook | None:
    """The recipe's drift hook (None when `monitoring.drift.enabled` is off)."""
    if not recipe.monitoring.drift.enabled:
        return None
    monitor, _ = build_monitor(recipe, db, calibration)
    return DriftHook(recipe, db, monitor)
