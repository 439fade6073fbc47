"""The drift hook: image statistics of every shot, drift charts after every part, alarms.

`shot` measures mean, contrast and sharpness (stored with the shot as `stats["drift"]`);
`reference` measures the reference card's shot (monitoring.drift.reference; kept with the
part, `Part.stats["drift_part"]`, as `mean card`, ...); `part` adds a passed part's detector
scores (score / threshold), feeds the recipe's
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

from station.cellcal.store import inspection_camera
from station.errors import RecipeError
from station.geometry.coverage import checks_placement, placement_tolerance_mm
from station.inspection.hooks import CycleHook
from station.inspection.results import Event
from station.monitoring.baseline import calibration_baselines
from station.monitoring.drift import SCORE_PREFIX, DriftMonitor
from station.monitoring.imagestats import image_stats
from station.monitoring.placement import PlacementWatch
from station.monitoring.reference import Box, CardNotInView, card_boxes, card_stats
from station.paths import station_home
from station.recipe import CARD, card_pose
from station.storage.alarms import (
    NewAlarm,
    PartPoint,
    add_alarm,
    alarms_open_at,
    list_alarms,
    part_chart_facts,
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
    monitor = DriftMonitor(recipe.name, cfg, baselines, placement_watch(recipe))
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
        self._card: dict[int, dict[str, float]] = {}  # part sequence -> its card values
        self._boxes: tuple[Box, Box] | RecipeError | None = None  # found at the first card

    def reference(self, part: PartRecord, image: np.ndarray) -> None:
        """The reference card's statistics, kept with the part (`Part.stats`), not a shot. A
        card its pose does not see whole raises a RecipeError (a warning for each part)."""
        if self._boxes is None:
            try:
                self._boxes = reference_boxes(self.recipe)
            except RecipeError as exc:
                self._boxes = exc
        if isinstance(self._boxes, RecipeError):
            raise self._boxes
        stats = card_stats(image, *self._boxes)
        with self._lock:
            self._card[part.sequence] = {f"{k} {CARD}": v for k, v in stats.items()}

    def shot(self, part: PartRecord, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        stats = image_stats(image)
        with self._lock:
            values = self._pending.setdefault(part.sequence, {})
            values.update({f"{k} {pose_name}": v for k, v in stats.items()})
        return stats

    def part(self, result: PartResult) -> list[Event]:
        seq = result.sequence
        with self._lock:
            values = self._pending.pop(seq, {}) if seq is not None else {}
            own = self._card.pop(seq, {}) if seq is not None else {}  # the part's own signals
        if result.part_id is None or seq is None:  # held in the journal: not charted
            return []
        if result.verdict.value == "pass":
            own.update({SCORE_PREFIX + d: float(v) for d, v in result.normalized.items()})
        if own:
            record_part_signals(self.db, result.part_id, own)
            values.update(own)
        at, placement = part_chart_facts(self.db, result.part_id)
        if self.monitor.placement is not None:  # stored with the part (any verdict)
            values.update(placement)
        # clears made by the part's finish count before it, later ones from the next part on:
        # the order `DriftMonitor.replay` gives them at a restart
        at = at or datetime.now(UTC)
        self.monitor.sync(alarms_open_at(self.db, self.recipe.name, at))
        point = PartPoint(result.part_id, result.sequence, at, result.verdict.value, values)
        return self.store(self.monitor.add(point))

    def store(self, raised: list[NewAlarm]) -> list[Event]:
        events = []
        for alarm in raised:
            row = add_alarm(self.db, alarm)
            if row is not None:
                events.append(Event("message", f"drift alarm {row.id}: {row.message}",
                                    None, "warning"))
        return events


def placement_watch(recipe: Recipe) -> PlacementWatch | None:
    """The recipe's placement watch: None when its parts' placement is not checked or the
    watch is off (monitoring.drift.placement)."""
    cfg = recipe.monitoring.drift.placement
    if not cfg.enabled or not checks_placement(recipe):
        return None
    return PlacementWatch(recipe.name, placement_tolerance_mm(recipe), cfg)


def reference_boxes(recipe: Recipe) -> tuple[Box, Box]:
    """The reference card's grey patch and print in its shot (pixel boxes), from the station's
    camera model (the twin's exact one, else the cell calibration, else nominal); a RecipeError
    when the card's pose does not see the card whole."""
    cam = inspection_camera(recipe)
    ref = recipe.monitoring.drift.reference
    pose = card_pose(recipe)
    tcp = [*pose.position_mm, *pose.rotvec_rad]
    try:
        return card_boxes(ref.centre_mm, ref.size_mm, ref.inset_mm, recipe.camera.width,
                          recipe.camera.height, lambda uv: cam.pixels_to_table(tcp, uv))
    except CardNotInView as exc:
        raise RecipeError(recipe.source or recipe.name, [
            f"monitoring.drift.reference: {exc} from its pose {list(pose.position_mm)}; move "
            "the card or set height_mm so that the camera sees it whole"]) from None


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
