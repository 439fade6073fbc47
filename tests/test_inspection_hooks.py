"""Cycle hooks: shot statistics stored with the shot, a hook's StationError faults the part, part
events reach the live view, a failing part hook changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from test_inspection_offline import _layout
from test_inspection_support import bright_set, database, small_recipe

from station.errors import MaterialError
from station.inspection.cycle import Inspector
from station.inspection.hooks import CycleHook
from station.inspection.offline import group_offline
from station.inspection.recorder import Recorder
from station.inspection.results import Event, PartResult
from station.storage.models import Part, Verdict


class Watcher(CycleHook):
    name = "watcher"

    def __init__(self, refuse_part: int | None = None, broken_part_hook: bool = False) -> None:
        self.refuse_part = refuse_part
        self.broken = broken_part_hook
        self.parts: list[PartResult] = []

    def shot(self, part: Any, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        if part.sequence == self.refuse_part:
            raise MaterialError("material differs from training: distance 9.0 > 2.0")
        return {"mean": float(image.mean()), "pose": pose_name}

    def part(self, result: PartResult) -> list[Event]:
        self.parts.append(result)
        if self.broken:
            raise RuntimeError("chart broke")
        return [Event("message", f"seen part {result.sequence}", None, "info")]


def _run(home: Path, tmp: Path, hook: Watcher) -> tuple[list[Event], Any, Any]:
    recipe = small_recipe(home)
    db = database(recipe)
    groups = group_offline(_layout(tmp / "ds"), recipe)[:2]  # the defective part, the good one
    events: list[Event] = []
    with Inspector(
        recipe, bright_set(recipe), Recorder(db, recipe), on_event=events.append, hooks=[hook]
    ) as insp:
        summary = insp.run_offline(groups)
    return events, summary, db


def test_shot_stats_are_stored_and_part_events_reach_the_view(
    station_home: Path, tmp_path: Path
) -> None:
    hook = Watcher()
    events, summary, db = _run(station_home, tmp_path, hook)
    assert [r.verdict for r in summary.results] == [Verdict.FAIL, Verdict.PASS]
    assert [r.sequence for r in hook.parts] == [1, 2]
    assert [e.text for e in events if e.text.startswith("seen part")] == [
        "seen part 1",
        "seen part 2",
    ]
    with db.session() as s:
        part = s.scalars(select(Part).where(Part.sequence == 2)).one()
        stats = {shot.pose_name: shot.stats for shot in part.shots}
    assert set(stats) == {"left", "centre", "right"}
    for pose, st in stats.items():
        assert st["watcher"]["pose"] == pose and st["watcher"]["mean"] > 0


def test_a_hook_error_faults_the_part_with_its_reason(station_home: Path, tmp_path: Path) -> None:
    _, summary, db = _run(station_home, tmp_path, Watcher(refuse_part=2))
    first, second = summary.results
    assert first.verdict is Verdict.FAIL
    assert second.verdict is Verdict.FAULT and second.fault.kind == "material"
    assert second.reason.startswith("material differs from training")
    with db.session() as s:
        row = s.scalars(select(Part).where(Part.sequence == 2)).one()
        assert row.verdict is Verdict.FAULT and "material differs" in row.reason


def test_a_failing_part_hook_is_reported_and_changes_nothing(
    station_home: Path, tmp_path: Path
) -> None:
    events, summary, _ = _run(station_home, tmp_path, Watcher(broken_part_hook=True))
    assert [r.verdict for r in summary.results] == [Verdict.FAIL, Verdict.PASS]
    warnings = [e.text for e in events if e.level == "warning"]
    assert warnings.count("watcher: chart broke") == 2
