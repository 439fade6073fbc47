"""The placement watch (station.monitoring.placement): each side's capability index against
the placement tolerance, hand-computed; the reaches read back from stored parts; the live hook,
a restart, `station monitor`, the review page's chart and a clear on a real SQLite database."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from test_cellcal import run as run_cli
from test_inspection_support import database

from station.decision import Verdict as DecisionVerdict
from station.geometry.coverage import region_rect, sheet_rect
from station.geometry.placement import side_reach
from station.inspection.drift_hook import DriftHook, build_monitor
from station.inspection.results import PartResult
from station.monitoring.placement import PlacementWatch, fault_share
from station.recipe import parse_recipe
from station.recipe.quality import PlacementWatchConfig
from station.review.app import create_app
from station.storage.alarms import PartPoint, list_alarms, placement_values
from station.storage.models import Part, Verdict

AT = datetime(2026, 12, 7, tzinfo=UTC)


def _point(seq: int, right: float, verdict: str = "pass") -> PartPoint:
    values = {"placement left": -4.0 + 0.01 * (seq % 3), "placement right": right,
              "placement bottom": -4.0 - 0.01 * (seq % 2), "placement top": -4.0}
    return PartPoint(seq, seq, AT, verdict, values)


def test_the_index_and_the_alarm_match_hand_computed_values() -> None:
    watch = PlacementWatch("r", 1.0, PlacementWatchConfig(window_parts=10, min_cpk=1.0))
    # ten sheets whose right side lies 0.0 or 0.2 mm past: mean 0.1, sd 0.1054, Cpk 2.846
    for k in range(10):
        assert watch.add(_point(k + 1, 0.2 * (k % 2))) == []
        assert (watch.cpk("right") is None) == (k < 9)  # judged once the window is full
    assert watch.cpk("right") == pytest.approx(0.9 / (3 * math.sqrt(0.1 / 9)), rel=1e-9)
    # the next ten at 0.5 or 0.9 mm (a faulted part counts too): mean 0.7, sd 0.2108, Cpk 0.474
    raised = []
    for k in range(10):
        raised += watch.add(_point(11 + k, 0.5 + 0.4 * (k % 2), "fault" if k == 3 else "pass"))
    (alarm,) = raised  # once, at the part that brought the index below 1
    assert watch.cpk("right") == pytest.approx(0.3 / (3 * math.sqrt(0.4 / 9)), rel=1e-9)
    assert alarm.signal == "placement right" and alarm.chart == "cpk"
    assert alarm.limit == 1.0 and alarm.baseline < 1.0 < alarm.value
    assert "the sheets' right side lies" in alarm.message and "tolerance 1.0 mm" in alarm.message
    assert "fault as misplaced" in alarm.message and "coverage.edge_margin_mm" in alarm.message
    assert watch.alarmed() == {"placement right"}
    assert fault_share(1.0) == pytest.approx(0.0013499, rel=1e-4)  # P(z > 3)
    assert fault_share(0.3 / (3 * math.sqrt(0.4 / 9))) == pytest.approx(0.0774, abs=5e-4)
    # a clear starts the side's window again: no alarm until it is full and still too near
    watch.clear("placement right")
    assert watch.cpk("right") is None and watch.alarmed() == set()
    assert all(watch.add(_point(30 + k, 0.0)) == [] for k in range(9))


def test_reaches_are_read_from_the_stored_placement() -> None:
    region = (0.0, 0.0, 100.0, 50.0)
    corners = [[-0.5, 2.0], [99.0, 1.5], [99.5, 49.0], [1.0, 51.0]]
    assert side_reach(corners, region) == pytest.approx(
        {"left": 0.5, "right": -0.5, "bottom": -1.5, "top": 1.0})
    part = Part(sheet_placement={"corners_mm": corners}, sheet_region_mm=list(region))
    assert placement_values(part) == pytest.approx(
        {"placement left": 0.5, "placement right": -0.5, "placement bottom": -1.5,
         "placement top": 1.0})
    for bad in ({"corners_mm": None}, {"corners_mm": [[1, "x"]]}, None):  # not found, edited
        assert placement_values(Part(sheet_placement=bad, sheet_region_mm=list(region))) == {}


def _recipe(home: Path, window: int) -> Any:
    path = home / "recipes" / "glassfiber.yaml"
    data = yaml.safe_load(path.read_text())
    data["monitoring"]["drift"]["placement"] = {"window_parts": window, "min_cpk": 1.0}
    data["storage"] = {"database_url": f"sqlite:///{home}/data/station.db"}
    out = home / "recipes" / "watched.yaml"
    out.write_text(yaml.safe_dump(data))
    return parse_recipe(out.read_text(), str(out))


def _store(db: Any, recipe: Any, seq: int, right: float) -> int:
    """A decided part whose sheet was found `right` mm past the region's right side."""
    x0, y0, x1, y1 = sheet_rect(recipe)
    dx = right + (region_rect(recipe)[2] - x1)
    corners = [[x0 + dx, y0], [x1 + dx, y0], [x1 + dx, y1], [x0 + dx, y1]]
    with db.session() as s:
        part = Part(recipe=recipe.name, sequence=seq, mode="live", verdict=Verdict.PASS,
                    started_at=AT, finished_at=AT, sheet_region_mm=list(region_rect(recipe)),
                    sheet_placement={"problem": None, "corners_mm": corners})
        s.add(part)
        s.commit()
        return part.id


def _result(part_id: int, seq: int) -> PartResult:
    return PartResult(seq, part_id, "live", DecisionVerdict.PASS, "", 0.5, {}, {}, {}, {}, None)


def test_a_creeping_line_raises_one_stored_alarm_seen_in_monitor_and_review(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(station_home, window=10)
    db = database(recipe)
    for seq in range(1, 10):  # nine sheets creeping toward the right side
        _store(db, recipe, seq, -2.0 + 0.25 * seq)
    monitor, _ = build_monitor(recipe, db, {})
    assert monitor.placement is not None and monitor.placement.cpk("right") is None
    hook = DriftHook(recipe, db, monitor)
    events = hook.part(_result(_store(db, recipe, 10, 0.6), 10))  # the live hook reads the row
    (alarm,) = list_alarms(db, recipe.name)
    assert alarm.signal == "placement right" and alarm.part_sequence == 10
    assert alarm.since_sequence == 1 and alarm.open
    assert [e.text for e in events] == [f"drift alarm {alarm.id}: {alarm.message}"]
    # a restart replays the stored parts and stores nothing twice
    again, _ = build_monitor(recipe, db, {})
    assert again.placement.alarmed() == {"placement right"}
    assert len(list_alarms(db, recipe.name)) == 1

    code, out, _ = run_cli(capsys, "monitor", "--recipe", str(recipe.source), "--signal",
                           "placement right")
    flat = " ".join(out.split())
    assert code == 0, out
    assert "tolerance 1 mm; alarm below Cpk 1 over 10 parts" in flat and "ALARM" in out
    assert "last points of placement right" in flat and "+0.600" in out

    client = TestClient(create_app(recipe.storage.resolved_database_url(),
                                   station_home / "data"), base_url="http://127.0.0.1:8080")
    html = client.get("/alarms").text
    assert f'id="alarm-{alarm.id}"' in html and 'stroke="#c22" stroke-width="1" ' \
        'stroke-dasharray="4 3"' in html  # the tolerance drawn on the reaches' chart
    client.close()

    code, out, _ = run_cli(capsys, "monitor", "--recipe", str(recipe.source), "--clear",
                           str(alarm.id), "--by", "ana")
    assert code == 0, out
    cleared, _ = build_monitor(recipe, db, {})  # the clear restarted the side's window
    assert cleared.placement.alarmed() == set() and cleared.placement.cpk("right") is None
    db.dispose()


def test_the_watch_follows_the_placement_check(station_home: Path) -> None:
    from station.inspection.drift_hook import placement_watch

    recipe = _recipe(station_home, window=50)
    assert placement_watch(recipe).tolerance_mm == recipe.coverage.smallest_defect_mm / 2
    off = recipe.model_copy(update={"sheet": recipe.sheet.model_copy(
        update={"check_placement": False})})
    assert placement_watch(off) is None


def test_capability_and_the_margin_needed_match_hand_computed_values() -> None:
    from station.monitoring.placement import capability, margin_needed

    xs = [-4.0, -3.0, -5.0, -4.0] * 5  # mean -4, sd sqrt(10 / 19)
    sd = math.sqrt(10 / 19)
    c = capability("top", xs, 1.0)
    assert (c.n, c.mean, c.sd) == (20, pytest.approx(-4.0), pytest.approx(sd))
    assert c.cpk == pytest.approx(5 / (3 * sd))
    se = math.sqrt(1 / 180 + c.cpk**2 / 38)
    assert c.cpk_low == pytest.approx(c.cpk - 1.645 * se)
    # 2 mm less margin: the same sheets reach 2 mm farther; half-mm steps from 0 up
    assert capability("top", xs, 1.0, -2.0).cpk == pytest.approx(3 / (3 * sd))
    need = margin_needed({"top": xs}, 1.0, 5.0, 1.0)
    assert capability("top", xs, 1.0, need - 5.0).cpk_low >= 1.0
    assert capability("top", xs, 1.0, need - 5.5).cpk_low < 1.0
    assert margin_needed({"top": [0.0, 40.0] * 5}, 1.0, 5.0, 1.0) is None  # no margin helps


def _placed(recipe: Any, dx: float, dy: float) -> Any:
    from station.geometry.placement import Placement

    x0, y0, x1, y1 = sheet_rect(recipe)
    corners = ((x0 + dx, y0 + dy), (x1 + dx, y0 + dy), (x1 + dx, y1 + dy), (x0 + dx, y1 + dy))
    return Placement(None, (dx, dy), 0.0, (x1 - x0, y1 - y0), corners, None)


@pytest.mark.parametrize(
    ("spread", "n", "said"),
    [(0.3, 30, "the margin holds: every side's Cpk is at least 1 at 95 % confidence"),
     (1.8, 12, "the margin likely holds"),
     (2.5, 30, "warning: the")],
)
def test_capture_says_whether_the_margin_holds_for_the_line(
    station_home: Path, capsys: pytest.CaptureFixture[str], spread: float, n: int, said: str
) -> None:
    from station.cli.capture import placement_report
    from station.geometry.placement import Placement

    recipe = _recipe(station_home, window=50)
    offs = [spread * (k % 3 - 1) for k in range(n)]  # -s, 0, +s: sd about 0.83 s
    found = [_placed(recipe, d, -d) for d in offs]
    placement_report(recipe, [*found, Placement("the sheet and the table look alike")])
    flat = " ".join(capsys.readouterr().out.split())
    assert f"placement: {n} of {n + 1} sheets found" in flat
    assert "1 sheet(s) not found, e.g. the sheet and the table look alike" in flat
    assert said in flat, flat
    assert "camera model is" not in flat  # the twin's exact model
    if said.startswith("warning"):
        assert "widen coverage.edge_margin_mm to" in flat and "fault as misplaced" in flat


@pytest.mark.slow
def test_capture_finds_each_sheet_as_inspection_does(station_home: Path) -> None:
    from station.inspection.capture import run_capture

    recipe = _recipe(station_home, window=50)
    data = yaml.safe_load(Path(recipe.source).read_text())
    data["twin"]["time_scale"] = 0.0
    Path(recipe.source).write_text(yaml.safe_dump(data))
    recipe = parse_recipe(Path(recipe.source).read_text(), str(recipe.source))
    res = run_capture(recipe, 2, "good")
    assert len(res.placements) == 2 and all(p.found and p.problem is None
                                            for p in res.placements)
    meta = yaml.safe_load((res.root / "meta" / f"p{res.sequences[0]:06d}.json").read_text())
    assert meta["placement"] == res.placements[0].as_dict()
    assert max(abs(v) for v in meta["placement"]["offset_mm"]) < 4.0  # the twin's ~1 mm jitter


def test_capture_says_when_the_camera_model_is_nominal(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.calibration.recipes import load_recipe
    from station.cli.capture import placement_report

    recipe = load_recipe("glassfiber-emulated")  # a real camera's model: none calibrated here
    placement_report(recipe, [_placed(recipe, 0.0, 0.0)] * 3)
    flat = " ".join(capsys.readouterr().out.split())
    assert "note: the camera model is nominal" in flat and "calibrate-hand-eye" in flat
    assert "too few sheets found to judge the line's placing (at least 10)" in flat


@pytest.mark.slow
def test_a_placement_that_cannot_be_measured_never_loses_the_captured_part(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The placement is measured before the part is stored: a failure there (here frames cut
    short of the camera's size) is said in the report, and the part is stored as shot."""
    import contextlib
    import dataclasses

    import numpy as np

    import station.inspection.capture as capture

    recipe = _recipe(station_home, window=50)
    real = capture.open_devices

    @contextlib.contextmanager
    def cropping(*args: Any, **kw: Any) -> Any:
        with real(*args, **kw) as dev:
            grab = dev.camera.grab
            dev.camera.grab = lambda: dataclasses.replace(
                frame := grab(), image=np.ascontiguousarray(frame.image[:40, :50]))
            yield dev

    monkeypatch.setattr(capture, "open_devices", cropping)
    res = capture.run_capture(recipe, 1, "good")
    (placed,) = res.placements
    assert placed.problem.startswith("not measured: ValueError: shot r1c1 is (50, 40) px")
    assert res.shots == len(recipe.robot.poses) and len(res.sequences) == 1
    assert (res.root / "meta" / f"p{res.sequences[0]:06d}.json").is_file()


@pytest.mark.slow
def test_creeping_stops_on_the_twin_raise_the_alarm_live(station_home: Path) -> None:
    """The whole chain on the twin's line: stops creeping 8 mm over 14 sheets (shipped
    geometry, 5 mm margin) -> each part's sheet found in its renders and stored -> the drift
    hook reads it back -> the watch (a window of 10) raises one stored alarm on the right side
    while the sheets are still inspected, and a misplaced sheet is a fault, not a pass."""
    from test_inspection_support import bright_set

    from station.devices.factory import open_devices
    from station.inspection.cycle import Inspector
    from station.inspection.recorder import Recorder
    from station.twin.ageing import Ageing
    from station.twin.world import TwinWorld

    with pytest.raises(ValueError, match="stops_creep"):
        Ageing.from_params({"stops_creep": {"start_part": 0, "parts": 10, "to": 3.0}})
    recipe = _recipe(station_home, window=10)
    data = yaml.safe_load(Path(recipe.source).read_text())
    data["twin"].update(time_scale=0.0, defect_rate=0.0)
    data["twin"]["params"] = {"stops_creep": {"start_part": 1, "parts": 13, "to_mm": 8.0}}
    data["monitoring"]["drift"]["reference"] = {"enabled": False}
    Path(recipe.source).write_text(yaml.safe_dump(data))
    recipe = parse_recipe(Path(recipe.source).read_text(), str(recipe.source))
    db = database(recipe)
    monitor, _ = build_monitor(recipe, db, {})
    events: list[Any] = []
    with (
        open_devices(recipe, world=TwinWorld(recipe, seed=2)) as dev,
        Inspector(recipe, bright_set(recipe, threshold=1.0, mean=250.0), Recorder(db, recipe),
                  dev, on_event=events.append, hooks=[DriftHook(recipe, db, monitor)],
                  operator=lambda fault: True) as insp,
    ):
        summary = insp.run_live(count=14)
    (alarm,) = list_alarms(db, recipe.name)
    assert alarm.signal == "placement right" and 10 <= alarm.part_sequence <= 14
    assert any(f"drift alarm {alarm.id}: placement right" in e.text for e in events)
    verdicts = [r.fault.kind if r.fault else r.verdict.value for r in summary.results]
    assert set(verdicts) <= {"pass", "misplaced"}, verdicts
    first_fault = next((r.sequence for r in summary.results if r.fault), None)
    assert first_fault is None or alarm.part_sequence < first_fault  # the watch came first
    db.dispose()
