"""Offline inspection of stored images: grouping, verdicts, records, pipelining on and off."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from test_inspection_support import bright_set, database, sheet, small_recipe

from station.imaging import write_png
from station.inspection.cycle import Event, Inspector, group_offline
from station.inspection.recorder import Recorder
from station.storage.models import Part, Verdict


def _layout(root: Path) -> list[Path]:
    """Capture layout: one good part, one defective part (defect on `centre`), one loose file."""
    for pose in ("right", "left", "centre"):
        write_png(root / "test/good" / f"p000001_{pose}.png", sheet(False))
        write_png(root / "test/defect" / f"p000002_{pose}.png", sheet(pose == "centre"))
    write_png(root / "loose.png", sheet(True))
    return [root / "test", root / "loose.png"]


def test_grouping_follows_capture_stems(station_home: Path, tmp_path: Path) -> None:
    recipe = small_recipe(station_home)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    keyed = {g.key.rsplit("/", 1)[-1]: g for g in groups}
    assert set(keyed) == {"p000001", "p000002", "loose.png"}
    assert [p for p, _ in keyed["p000002"].shots] == ["left", "centre", "right"]  # recipe order
    assert keyed["p000001"].ground_truth == "good" and keyed["p000002"].ground_truth == "defect"
    assert keyed["loose.png"].ground_truth is None and keyed["loose.png"].shots[0][0] == "loose"


@pytest.mark.parametrize("pipelined", [True, False])
def test_offline_verdicts_and_records(station_home: Path, tmp_path: Path, pipelined: bool) -> None:
    recipe = small_recipe(station_home)
    db = database(recipe)
    dets = bright_set(recipe)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    (bad := tmp_path / "broken.png").write_bytes(b"not a png")
    groups += group_offline([bad], recipe)
    events = []
    with Inspector(
        recipe, dets, Recorder(db, recipe), pipelined=pipelined, on_event=events.append
    ) as insp:
        summary = insp.run_offline(groups)
    verdicts = [r.verdict for r in summary.results]
    # test/defect sorts before test/good
    assert verdicts == [Verdict.FAIL, Verdict.PASS, Verdict.FAIL, Verdict.FAULT]
    assert summary.counts == {"pass": 1, "fail": 2, "fault": 1}
    fail = summary.results[0]
    assert fail.normalized["brightspot"] > 1.0 and "centre" in fail.reason
    assert summary.results[3].fault.kind == "input" and "broken.png" in summary.results[3].reason
    assert sum(e.kind == "part_finished" for e in events) == 4
    assert dets.detectors[0].detector.threads == {"inference_0"}

    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.verdict for r in rows] == verdicts
        assert all(r.mode == "offline" for r in rows)
        defect, good = rows[0], rows[1]
        assert good.ground_truth == "good" and defect.ground_truth == "defect"
        assert [s_.pose_name for s_ in defect.shots] == ["left", "centre", "right"]
        for shot in defect.shots:
            assert (recipe.data_dir.parent / shot.image_path).is_file()
            (d,) = shot.detections
            assert (recipe.data_dir.parent / d.heatmap_path).is_file()
            assert d.threshold == pytest.approx(0.3)
        t = defect.timings_ms
        assert t["inference"] > 0 and t["cycle"] > 0 and t["motion"] == 0
        assert defect.model_versions == {"brightspot": "brightspot-test-1"}
        assert rows[3].shots == []  # the unreadable file never became a shot


@pytest.mark.postgres
def test_offline_on_postgres(station_home: Path, tmp_path: Path, fresh_postgres_url: str) -> None:
    recipe = small_recipe(
        station_home, storage={"database_url": fresh_postgres_url, "data_dir": "data"}
    )
    db = database(recipe)
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    with Inspector(recipe, bright_set(recipe), Recorder(db, recipe)) as insp:
        summary = insp.run_offline(groups)
    assert [r.verdict for r in summary.results] == [Verdict.FAIL, Verdict.PASS, Verdict.FAIL]
    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.sequence for r in rows] == [1, 2, 3]
        assert [len(r.shots) for r in rows] == [3, 3, 1]
    db.dispose()


def test_live_view_shows_counts_scores_and_breakdown(station_home: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from station.inspection.live_view import LiveView

    recipe = small_recipe(station_home)
    view = LiveView("station inspect: test", "pipelined")
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    with Inspector(
        recipe, bright_set(recipe), Recorder(database(recipe), recipe), on_event=view.handle
    ) as insp:
        summary = insp.run_offline(groups)
    view.handle(Event("message", "camera: timeout", level="error"))
    console = Console(width=120, record=True, color_system=None)
    console.print(view.render())
    text = console.export_text()
    last = summary.results[-1]
    assert "parts 3" in text and "pass 1" in text and "fail 2" in text and "fault 0" in text
    assert f"last: part {last.sequence}" in text and "FAIL" in text
    assert "brightspot" in text and "0.3" in text  # the threshold beside the score
    for key in ("motion", "exposure", "inference", "logging", "wait", "cycle"):
        assert key in text
    assert "camera: timeout" in text
