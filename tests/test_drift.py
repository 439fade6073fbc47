"""Drift charts: EWMA and CUSUM against hand-computed values, the monitor's alarms (since when,
how much, never twice, re-armed by a clear, resumed after a restart), image statistics, the
twin's lamp ageing, alarms stored and listed (review page with its chart, `station monitor`),
and a short live twin run where the lamp dims and an alarm is raised."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_cellcal import run as run_cli
from test_inspection_support import bright_set, database, small_recipe

from station.devices.factory import open_devices
from station.inspection.cycle import Inspector
from station.inspection.drift_hook import DriftHook, build_monitor
from station.inspection.recorder import Recorder
from station.inspection.results import Event
from station.monitoring.charts import Cusum, Ewma, ewma_sigma_factor, standardise
from station.monitoring.drift import Baseline, DriftMonitor
from station.monitoring.imagestats import image_stats
from station.recipe.quality import DriftConfig, ReferenceCardConfig
from station.review.app import create_app
from station.storage.alarms import PartPoint, add_alarm, list_alarms, signal_history
from station.twin.ageing import Ageing
from station.twin.world import TwinWorld, pose_tcp

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_ewma_matches_hand_computed_values() -> None:
    ew = Ewma(0.2, 3.0)
    # z1 = 0.2; z2 = 0.4 + 0.8 * 0.2 = 0.56; z3 = -0.2 + 0.8 * 0.56 = 0.248
    got = [ew.update(u, i) for i, u in enumerate([1.0, 2.0, -1.0])]
    assert [round(s.value, 9) for s in got] == [0.2, 0.56, 0.248]
    # exact limits: 3 * sqrt(0.2 / 1.8 * (1 - 0.8^(2i))): i=1 -> 3 * 0.2, i=2 -> 3 * 0.256125
    assert got[0].limit == pytest.approx(0.6)
    assert got[1].limit == pytest.approx(3 * math.sqrt(0.2 / 1.8 * (1 - 0.8**4)))
    assert ewma_sigma_factor(0.2, 10_000) == pytest.approx(1 / 3)  # asymptote sqrt(0.2/1.8)
    assert not any(s.out for s in got)
    ew.reset()
    s = ew.update(4.0, 7)  # z = 0.8 > 0.6
    assert s.out and s.side == 1 and s.since == 7 and s.shift_sigma == 4.0


def test_cusum_matches_hand_computed_values() -> None:
    cu = Cusum(k=0.5, h=2.0)
    us = [1.0, 1.5, 0.0, -2.0, 2.0, 2.0]
    got = [cu.update(u, i) for i, u in enumerate(us)]
    # C+: 0.5, 1.5, 1.0, 0, 1.5, 3.0; C-: 0, 0, 0, 1.5, 0, 0
    assert [round(s.value, 9) for s in got] == [0.5, 1.5, 1.0, 1.5, 1.5, 3.0]
    assert [s.out for s in got] == [False] * 5 + [True]
    last = got[-1]
    assert last.side == 1 and last.since == 4  # the run started after C+ was 0 at index 3
    assert last.shift_sigma == pytest.approx(0.5 + 3.0 / 2)  # k + C / N
    assert got[3].since == 3 and got[3].shift_sigma == pytest.approx(-(0.5 + 1.5 / 1))
    assert standardise(100.0, 10.0, 2.0, 4.0) == 4.0  # clipped


def _monitor() -> DriftMonitor:  # the textbook settings, for a short hand-made series
    cfg = DriftConfig(ewma_lambda=0.2, ewma_l=3.0, cusum_k=0.5, cusum_h=5.0)
    return DriftMonitor("r", cfg, {"mean a": Baseline(100.0, 2.0, 30, "test")})


def _points(values: list[float], start: int = 1) -> list[PartPoint]:
    return [PartPoint(i, i, T0 + timedelta(minutes=i), "pass", {"mean a": v})
            for i, v in enumerate(values, start=start)]


def test_a_step_raises_one_alarm_per_chart_naming_signal_since_and_shift() -> None:
    mon = _monitor()
    rng = np.random.default_rng(0)
    vals = list(100 + 2 * rng.standard_normal(20)) + list(94 + 2 * rng.standard_normal(30))
    raised = [a for p in _points(vals) for a in mon.add(p)]
    assert sorted(a.chart for a in raised) == ["cusum", "ewma"]  # once each, not per point
    for a in raised:  # the shift starts at part 21 and is -6 (-3 sigma)
        assert a.signal == "mean a" and 21 <= a.part_id <= 26
        assert 1 <= a.since_part_id <= a.part_id
        assert -9.0 < a.shift < -1.0 and a.baseline == 100.0
        assert "mean a" in a.message and "below" in a.message and "% of its baseline" in a.message
    mon.clear("mean a", "cusum")  # the operator dealt with it: the CUSUM starts again
    again = [a for p in _points([94.0] * 10, start=51) for a in mon.add(p)]
    assert [a.chart for a in again] == ["cusum"]


def test_warm_up_sets_the_limits_from_the_first_points() -> None:
    mon = DriftMonitor("r", DriftConfig(warmup_parts=20), {})
    vals = list(50 + np.random.default_rng(1).standard_normal(30))
    for p in _points(vals):
        mon.add(p)
    st = mon.signals["mean a"]
    assert st.baseline is not None and st.baseline.source == "warm-up: parts 1-20"
    assert st.baseline.centre == pytest.approx(np.mean(vals[:20]))
    assert st.baseline.sigma == pytest.approx(np.std(vals[:20], ddof=1))
    assert [p[0] for p in st.last] == list(range(21, 31))  # charted after the warm-up


def test_the_card_warms_up_on_its_own_count() -> None:
    cfg = DriftConfig(warmup_parts=20, reference=ReferenceCardConfig(warmup_parts=5))
    mon = DriftMonitor("r", cfg, {})
    rng = np.random.default_rng(2)
    for i in range(1, 31):
        mon.add(PartPoint(i, i, T0, "pass", {"mean a": 50 + rng.standard_normal(),
                                             "mean card": 80 + rng.standard_normal()}))
    assert mon.signals["mean card"].baseline.source == "warm-up: parts 1-5"
    assert mon.signals["mean a"].baseline.source == "warm-up: parts 1-20"
    # the defaults: sheet images and scores need twice the card's parts (docs/monitoring.md)
    assert DriftConfig().warmup_parts == DriftConfig().min_baseline_parts == 60
    assert DriftConfig().reference.warmup_parts == 30


def test_image_stats_follow_light_and_focus() -> None:
    rng = np.random.default_rng(2)
    img = np.clip(rng.normal(120, 30, (96, 128)), 0, 255)
    dim = image_stats(img * 0.8)
    base = image_stats(img)
    assert dim["mean"] == pytest.approx(0.8 * base["mean"], rel=1e-6)
    assert dim["contrast"] == pytest.approx(0.8 * base["contrast"], rel=1e-6)
    assert dim["sharpness"] == pytest.approx(base["sharpness"], rel=1e-6)  # light-independent
    blurred = (img[:-1, :-1] + img[1:, :-1] + img[:-1, 1:] + img[1:, 1:]) / 4
    assert image_stats(blurred)["sharpness"] < 0.5 * base["sharpness"]


def test_twin_lamp_ageing_ramps_and_is_checked(station_home: Path) -> None:
    a = Ageing.from_params({"lamp_dim": {"start_part": 10, "parts": 200, "to": 0.85}})
    assert [a.light(p) for p in (5, 10, 110, 210, 500)] == pytest.approx(
        [1.0, 1.0, 0.925, 0.85, 0.85])
    with pytest.raises(ValueError, match="lamp_dim"):
        Ageing.from_params({"lamp_dim": {"start_part": 1, "parts": 0, "to": 0.8}})
    recipe = small_recipe(station_home, twin__params={"lamp_dim": {"start_part": 0, "parts": 1,
                                                                   "to": 0.5}})
    world = TwinWorld(recipe, seed=1)
    world.queue_sheet(5, False)
    world.next_sheet()  # part 1: the lamp is at half
    tcp = pose_tcp(recipe.robot.poses[1])
    dim = world.render(tcp, noise_seed=1).image.mean()
    world.sheets_presented = 0  # as new
    assert dim < 0.8 * world.render(tcp, noise_seed=1).image.mean()  # (the full one clips)


def _lamp_run(home: Path, parts: int) -> tuple[Any, Any, list[Event], DriftHook]:
    recipe = small_recipe(
        home,
        twin__params={"lamp_dim": {"start_part": 12, "parts": 4, "to": 0.7}},
        twin__defect_rate=0.0,
        # textbook limits: this test is about storing, replaying and showing alarms (the
        # shipped, wide limits are exercised on the reference card below)
        monitoring={"drift": {"warmup_parts": 10, "ewma_lambda": 0.2, "ewma_l": 3.0,
                              "cusum_k": 0.5, "cusum_h": 5.0}},
    )
    db = database(recipe)
    monitor, notes = build_monitor(recipe, db, {})
    assert "warm-up" in notes[0]
    hook = DriftHook(recipe, db, monitor)
    events, _ = _live(recipe, db, hook, parts)
    return recipe, db, events, hook


def _live(recipe: Any, db: Any, hook: DriftHook, parts: int) -> tuple[list[Event], Any]:
    """`parts` live twin parts with the drift hook: (events, run summary)."""
    events: list[Event] = []
    with (
        open_devices(recipe, world=TwinWorld(recipe, seed=4)) as dev,
        Inspector(recipe, bright_set(recipe, threshold=50.0), Recorder(db, recipe), dev,
                  on_event=events.append, hooks=[hook]) as insp,
    ):
        summary = insp.run_live(count=parts)
    return events, summary


def test_lamp_dimming_on_the_twin_raises_a_stored_alarm_that_survives_a_restart(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, db, events, hook = _lamp_run(station_home, 20)
    alarms = list_alarms(db, recipe.name)
    assert alarms, "the dimming lamp raised no alarm"
    light = [a for a in alarms if a.signal.split()[0] in ("mean", "contrast")]
    assert light and all(a.shift < 0 for a in light)  # the lamp dims from part 13 on
    assert all(13 <= (a.part_sequence or 0) <= 20 for a in alarms)
    first = min(light, key=lambda a: a.id)
    shown = [e for e in events if e.level == "warning" and "drift alarm" in e.text]
    assert len(shown) == len(alarms)
    history = signal_history(db, recipe.name)
    assert len(history) == 20 and "mean centre" in history[0].values

    # a restart resumes the charts from the stored history and stores nothing twice
    again, notes = build_monitor(recipe, db, {})
    assert "20 stored part(s)" in notes[-1]
    for name, st in hook.monitor.signals.items():
        assert again.signals[name].last == st.last
        assert again.signals[name].alarmed == st.alarmed
    assert len(list_alarms(db, recipe.name)) == len(alarms)
    assert add_alarm(db, _as_new(first)) is None

    code, out, _ = run_cli(capsys, "monitor", "--recipe", str(recipe.source), "--signal",
                           first.signal)
    assert code == 0, out
    assert f"{len(alarms)} open alarm(s)" in out and first.message[:30] in out
    assert "ALARM" in out
    assert f"last points of {first.signal}" in out

    client = TestClient(create_app(recipe.storage.resolved_database_url(),
                                   station_home / "data"), base_url="http://127.0.0.1:8080")
    queue = client.get("/").text  # every page says that alarms are open and links them
    n = len(alarms)
    assert f"Alarms ({n} open)" in queue and 'id="alarm-banner"' in queue
    assert f"{n} drift alarm{'s' if n != 1 else ''} open" in queue
    html = client.get("/alarms").text
    assert f'id="alarm-{first.id}"' in html and "<svg" in html and "<polyline" in html
    csrf = html.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(f"/alarms/{first.id}/clear", data={"csrf": csrf, "operator": "ana"},
                    follow_redirects=False)
    assert r.status_code == 303
    cleared = [a for a in list_alarms(db, recipe.name) if a.id == first.id][0]
    assert cleared.cleared_by == "ana" and not cleared.open
    left = client.get("/").text
    assert (f"Alarms ({n - 1} open)" in left) if n > 1 else ("alarm-banner" not in left)
    client.close()
    db.dispose()


def _as_new(a: Any) -> Any:
    from station.storage.alarms import NewAlarm

    return NewAlarm(a.recipe, a.signal, a.chart, a.since_part_id, a.since_at, a.part_id,
                    a.value or 0.0, a.baseline or 0.0, a.limit or 0.0, a.shift or 0.0, a.message)


# -- the reference card (monitoring.drift.reference) -------------------------------------------
def _card_recipe(home: Path, **overrides: Any) -> Any:
    """A small recipe (160 x 128 camera: 16 x 13 mm seen from 350 mm) with a 12 x 10 mm card
    beside the sheet, inside its pose's view."""
    drift = dict(overrides.pop("drift", {}))
    drift["reference"] = {"enabled": True, "centre_mm": [400.0, -170.0], "size_mm": [12.0, 10.0],
                          "inset_mm": 1.0, **drift.get("reference", {})}
    return small_recipe(home, camera__width=160, camera__height=128,
                        monitoring={"drift": drift}, **overrides)


def test_an_unknown_signal_is_refused_before_anything_is_printed(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "monitor", "--signal", "nosuch")
    assert code == 2 and out == "", out  # no header, no chart table before the error
    # no part yet: only the placement watch's sides (the shipped recipe checks placement)
    assert err.splitlines() == ["error: no signal 'nosuch'", "  hint: known: placement bottom, "
                                "placement left, placement right, placement top"], err


def test_reference_card_section_is_validated_naming_the_field(station_home: Path) -> None:
    from station.errors import RecipeError

    ok = _card_recipe(station_home)
    assert ok.monitoring.drift.reference.enabled
    with pytest.raises(RecipeError, match=r"monitoring\.drift\.reference\.centre_mm.*overlaps"):
        _card_recipe(station_home, drift={"reference": {"enabled": True,
                                                        "centre_mm": [400.0, -152.0]}})
    with pytest.raises(RecipeError, match="every_parts"):
        _card_recipe(station_home, drift={"reference": {"enabled": True, "every_parts": 0,
                                                        "centre_mm": [400.0, -170.0]}})
    with pytest.raises(RecipeError, match="size_mm"):
        _card_recipe(station_home, drift={"reference": {"enabled": True, "size_mm": [5, 40]}})
    with pytest.raises(RecipeError, match="lamp_jitter"):
        TwinWorld(small_recipe(station_home, twin__params={"lamp_jitter": -0.1}))


def test_the_twin_renders_the_card_the_lamp_dims_it_and_defocus_blurs_its_print(
    station_home: Path,
) -> None:
    from station.inspection.drift_hook import reference_boxes
    from station.monitoring.reference import card_stats
    from station.recipe import card_pose

    def stats(**params: Any) -> dict[str, float]:
        recipe = _card_recipe(station_home, twin__params=params)
        world = TwinWorld(recipe, seed=3)
        world.next_sheet()
        shot = world.render(pose_tcp(card_pose(recipe)))
        return card_stats(shot.image, *reference_boxes(recipe))

    new = stats(lamp_jitter=0.0)
    # grey patch (albedo 0.45: ~53 of 255 at the shipped 4000 us), black/white print
    assert 40 < new["mean"] < 140 and new["contrast"] > 15
    dim = stats(lamp_jitter=0.0, lamp_dim={"start_part": 0, "parts": 1, "to": 0.85})
    assert dim["mean"] == pytest.approx(0.85 * new["mean"], rel=0.02)
    assert dim["contrast"] == pytest.approx(0.85 * new["contrast"], rel=0.03)
    assert dim["sharpness"] == pytest.approx(new["sharpness"], rel=0.05)  # not the lamp
    blur = stats(lamp_jitter=0.0, defocus={"start_part": 0, "parts": 1, "to_px": 1.5})
    assert blur["sharpness"] < 0.5 * new["sharpness"]
    assert blur["mean"] == pytest.approx(new["mean"], rel=0.01)  # a flat patch keeps its mean
    # the lamp's shot-to-shot jitter moves the card's mean (the sensor noise alone barely does)
    assert abs(stats(lamp_jitter=0.05)["mean"] - new["mean"]) > 0.001 * new["mean"]


def test_card_signals_use_the_cards_own_chart_settings() -> None:
    cfg = DriftConfig(reference={"ewma_l": 5.5, "cusum_h": 9.0})
    mon = DriftMonitor("r", cfg, {})
    assert mon.settings("mean card") == (cfg.reference.ewma_lambda, 5.5, cfg.reference.cusum_k,
                                         9.0)
    assert mon.settings("mean r1c1") == (cfg.ewma_lambda, cfg.ewma_l, cfg.cusum_k, cfg.cusum_h)


def test_a_dimming_lamp_raises_a_stored_card_alarm_and_the_card_never_joins_the_part(
    station_home: Path,
) -> None:
    recipe = _card_recipe(
        station_home,
        twin__params={"lamp_dim": {"start_part": 12, "parts": 4, "to": 0.8},
                      # the first part's card grab times out (3 tries): a warning, not a fault
                      "faults": {"camera_timeout": {"after": 3, "count": 3}}},
        twin__defect_rate=0.0,
        drift={"reference": {"warmup_parts": 6}},
    )
    db = database(recipe)
    monitor, _ = build_monitor(recipe, db, {})
    hook = DriftHook(recipe, db, monitor)
    events, summary = _live(recipe, db, hook, 20)
    assert summary.parts == 20
    missed = [e for e in events if "reference card not shot for part 1" in e.text]
    assert len(missed) == 1 and missed[0].level == "warning"
    results = [e.result for e in events if e.kind == "part_finished" and e.result is not None]
    assert results[0].verdict.value == "pass"  # the failed card shot left the part alone
    assert all(r.timings_ms.get("reference", 0) > 0 for r in results)
    history = signal_history(db, recipe.name)
    assert "mean card" not in history[0].values and "mean card" in history[1].values
    from station.storage.models import Shot

    with db.session() as s:  # the card is never a shot of the part
        assert {sh.pose_name for sh in s.query(Shot)} == {"left", "centre", "right"}
    card = [a for a in list_alarms(db, recipe.name) if a.signal.endswith(" card")]
    assert card, "the dimming lamp raised no card alarm"
    light = [a for a in card if a.signal in ("mean card", "contrast card")]
    assert light and all(a.shift < 0 for a in light)
    assert all(13 <= (a.part_sequence or 0) <= 20 for a in card)
    # a restart resumes the card's charts from the stored parts
    again, _ = build_monitor(recipe, db, {})
    assert again.signals["mean card"].last == hook.monitor.signals["mean card"].last
    db.dispose()


def test_the_card_is_shot_every_n_parts(station_home: Path) -> None:
    recipe = _card_recipe(station_home, twin__defect_rate=0.0,
                          drift={"reference": {"enabled": True, "centre_mm": [400.0, -170.0],
                                               "size_mm": [12.0, 10.0], "inset_mm": 1.0,
                                               "every_parts": 2}})
    db = database(recipe)
    monitor, _ = build_monitor(recipe, db, {})
    with (
        open_devices(recipe, world=TwinWorld(recipe, seed=2)) as dev,
        Inspector(recipe, bright_set(recipe, threshold=50.0), Recorder(db, recipe), dev,
                  hooks=[DriftHook(recipe, db, monitor)]) as insp,
    ):
        insp.run_live(count=5)
    shot = ["mean card" in p.values for p in signal_history(db, recipe.name)]
    assert shot == [True, False, True, False, True]
    db.dispose()


# -- a clear made while a part is in the cell: live and a restart order it alike ---------------
def _clear_recipe(home: Path) -> Any:
    """The shipped recipe (it checks placement) with textbook charts, a 10-part warm-up and a
    10-part placement window."""
    import yaml

    from station.recipe import parse_recipe

    data = yaml.safe_load((home / "recipes" / "glassfiber.yaml").read_text())
    data["monitoring"]["drift"].update(
        warmup_parts=10, ewma_lambda=0.2, ewma_l=3.0, cusum_k=0.5, cusum_h=5.0,
        placement={"window_parts": 10, "min_cpk": 1.0})
    data["storage"] = {"database_url": f"sqlite:///{home}/data/station.db"}
    path = home / "recipes" / "clears.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_recipe(path.read_text(), str(path))


def _charted_part(db: Any, recipe: Any, seq: int, right: float) -> int:
    """Part `seq` as the recorder leaves it: started at T0 + 30 s * seq, finished 20 s later,
    its sheet found `right` mm past the region's right side."""
    from station.geometry.coverage import region_rect, sheet_rect
    from station.storage.models import Part, Verdict

    x0, y0, x1, y1 = sheet_rect(recipe)
    dx = right + region_rect(recipe)[2] - x1
    start = T0 + timedelta(seconds=30 * seq)
    with db.session() as s:
        part = Part(recipe=recipe.name, sequence=seq, mode="live", verdict=Verdict.PASS,
                    started_at=start, finished_at=start + timedelta(seconds=20),
                    sheet_region_mm=list(region_rect(recipe)),
                    sheet_placement={"corners_mm": [[x0 + dx, y0], [x1 + dx, y0],
                                                    [x1 + dx, y1], [x0 + dx, y1]]})
        s.add(part)
        s.commit()
        return part.id


@pytest.mark.parametrize("clear_s", [3, 25])  # into part 32: in the cell; after its finish
def test_a_clear_made_during_a_part_is_replayed_as_live_and_stores_nothing_new(
    station_home: Path, clear_s: int
) -> None:
    from station.decision import Verdict as DecisionVerdict
    from station.inspection.results import PartResult
    from station.storage.models import Alarm

    recipe = _clear_recipe(station_home)
    db = database(recipe)
    monitor, _ = build_monitor(recipe, db, {})
    hook = DriftHook(recipe, db, monitor)
    for seq in range(1, 46):  # score: a 10-part warm-up, then a steady +3 sigma step from 21
        score = 0.5 + (0.05 * (-1) ** seq if seq <= 20 else 3 * 0.05 * math.sqrt(10 / 9))
        if seq == 32:  # the operator clears the first CUSUM and placement alarms
            with db.session() as s:
                for a in s.query(Alarm).filter(Alarm.chart.in_(("cusum", "cpk"))):
                    a.cleared_at = T0 + timedelta(seconds=30 * seq + clear_s)
                    a.cleared_by = "ana"
                s.commit()
        pid = _charted_part(db, recipe, seq, 0.5 + 0.4 * (seq % 2))  # Cpk 0.47 < 1
        hook.part(PartResult(seq, pid, "live", DecisionVerdict.PASS, "", score, {}, {},
                             {"d": score}, {}, None))
    stored = sorted((a.chart, a.part_sequence, a.open) for a in list_alarms(db, recipe.name))
    late = clear_s > 20  # cleared after part 32 was charted: from part 33 on
    assert stored == [("cpk", 10, False), ("cpk", 41 + late, True), ("cusum", 22, False),
                      ("cusum", 34 + late, True), ("ewma", 22, True)]

    again, notes = build_monitor(recipe, db, {})  # a restart
    assert "stored now" not in notes[-1]
    assert len(list_alarms(db, recipe.name)) == len(stored)
    live, replayed = hook.monitor.signals["score d"], again.signals["score d"]
    assert replayed.last == live.last and replayed.alarmed == live.alarmed == {"cusum", "ewma"}
    assert hook.monitor.placement is not None and again.placement is not None
    assert again.placement.sides == hook.monitor.placement.sides
    db.dispose()
