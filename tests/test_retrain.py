"""Retraining from reviews: the review rule, live and candidate model files, the promotion
gate and its record, shadow mode beside the live models, and a restart keeping all of it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select
from test_inspection_offline import _layout
from test_inspection_support import bright_set, database, small_recipe
from tool_module import load_tool

from station.decision import Decision, Verdict
from station.detectors.artifact import (
    artifact_path,
    candidate_path,
    latest_artifact,
    load_artifact,
    new_version,
    write_live,
)
from station.errors import StationError
from station.imaging import write_png
from station.inspection.cycle import Inspector
from station.inspection.offline import group_offline
from station.inspection.recorder import Recorder
from station.inspection.shadow import ShadowHook
from station.retrain.evaluate import Judged, evidence, not_worse_on_defects
from station.retrain.promote import promote
from station.retrain.reviews import qualifies, reviewed_parts, select_false_rejects
from station.review.store import add_review
from station.storage.models import ModelPromotion, ModelVersion, Part, ReviewLabel, Shot
from station.storage.promotions import promotions
from station.storage.shadow import shadow_rows

FR, DC = ReviewLabel.FALSE_REJECT, ReviewLabel.DEFECT_CONFIRMED
REPO = Path(__file__).resolve().parents[1]


def test_review_rule_agreeing_operators_and_supervisors() -> None:
    sup = ["Sam Super"]
    assert qualifies([("ann", FR), ("bob", FR)], 2, sup)[0]
    assert not qualifies([("ann", FR), ("Ann ", FR)], 2, sup)[0]  # one operator, twice
    assert not qualifies([("ann", FR), ("bob", FR), ("cy", DC)], 2, sup)[0]  # contradicted
    assert not qualifies([("ann", FR)], 2, sup)[0]
    assert qualifies([("ann", FR)], 1, [])[0]
    ok, why = qualifies([("sam super", FR)], 2, sup)
    assert ok and "supervisor" in why
    # the supervisor's newest word decides, either way
    assert qualifies([("ann", DC), ("Sam Super", FR)], 2, sup)[0]
    assert not qualifies([("ann", FR), ("bob", FR), ("Sam Super", DC)], 2, sup)[0]
    assert not qualifies([("Sam Super", FR), ("Sam Super", DC)], 2, sup)[0]


def _part(db, recipe, root: Path, verdict: Verdict, seq_shots: bool = True,  # noqa: ANN001
          exposure_us: float | None = None) -> int:
    """A part row with a shot file per recipe pose, shot at the recipe's exposure (or this)."""
    part = db.create_part(recipe.name, mode="live", verdict=verdict, ground_truth="good")
    settings = {"exposure_us": exposure_us or recipe.camera.exposure_us, "gain_db": 0.0}
    with db.session() as s:
        for k, pose in enumerate(recipe.robot.poses):
            rel = f"{recipe.name}/images/{part.sequence:06d}/{pose.name}.png"
            if seq_shots:
                write_png(root / rel, np.full((48, 64), 100, np.uint8))
            s.add(
                Shot(part_id=part.id, pose_index=k, pose_name=pose.name, image_path=rel,
                     image_sha256="0" * 64, width=64, height=48, camera_settings=settings)
            )  # fmt: skip
    return part.id


def test_selection_follows_the_recipe_rule(station_home: Path) -> None:
    recipe = small_recipe(station_home, retrain={"agreeing_reviews": 2, "supervisors": ["chief"]})
    db = database(recipe)
    root = recipe.data_dir.parent
    two = _part(db, recipe, root, Verdict.FAIL)
    one = _part(db, recipe, root, Verdict.FAIL)
    chief = _part(db, recipe, root, Verdict.FAIL)
    contradicted = _part(db, recipe, root, Verdict.FAIL)
    passed = _part(db, recipe, root, Verdict.PASS)
    no_files = _part(db, recipe, root, Verdict.FAIL, seq_shots=False)
    brighter = _part(db, recipe, root, Verdict.FAIL, exposure_us=recipe.camera.exposure_us * 2)
    with db.session() as s:  # through the review app's own storage function
        for pid, reviews in {
            brighter: [("ann", FR), ("bob", FR)],  # shot before the exposure was changed
            two: [("ann", FR), ("bob", FR)],
            one: [("ann", FR)],
            chief: [("chief", FR)],
            contradicted: [("ann", FR), ("bob", FR), ("cy", DC)],
            passed: [("ann", FR), ("bob", FR)],
            no_files: [("ann", FR), ("bob", FR)],
        }.items():
            for who, label in reviews:
                add_review(s, pid, label, who)
    sel = select_false_rejects(recipe, reviewed_parts(recipe, db))
    assert sorted(p.part_id for p in sel.parts) == sorted([two, chief])
    assert sel.skipped == {
        "false reject by 1 of the 2 operators needed": 1,
        "a review confirmed a defect": 1,
        "not rejected by the station (pass)": 1,
        "shots missing on disk or not every pose": 1,
        "shot under another exposure or gain than the recipe's camera now": 1,
    }
    db.dispose()


def _fake_model(recipe, name: str, version: str, path: Path) -> Path:  # noqa: ANN001
    """A model file with a station artifact's layout (enough for the pointer and promotion)."""
    payload = {
        "format_version": 1, "detector": name, "detector_version": 1, "config": {},
        "state_dict": {}, "meta": {"version": version, "recipe": recipe.name},
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, str(path))
    return path


def _version(minutes: int) -> str:
    return new_version("patchcore", datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=minutes))


def test_candidates_are_never_live_and_the_pointer_decides(station_home: Path) -> None:
    recipe = small_recipe(station_home)
    old, live, cand = _version(0), _version(10), _version(20)
    _fake_model(recipe, "patchcore", old, artifact_path(recipe, "patchcore", old))
    _fake_model(recipe, "patchcore", live, artifact_path(recipe, "patchcore", live))
    _fake_model(recipe, "patchcore", cand, candidate_path(recipe, "patchcore", cand))
    assert latest_artifact(recipe, "patchcore").stem == live  # no pointer: the newest file
    write_live(recipe, "patchcore", old)  # a rollback
    assert latest_artifact(recipe, "patchcore").stem == old
    with pytest.raises(StationError, match="no patchcore model"):
        write_live(recipe, "patchcore", cand)  # a candidate is promoted, not pointed at
    # `station train` after the promotion: its model is live, as without a pointer
    newer = new_version("patchcore", datetime.now(UTC) + timedelta(seconds=5))
    _fake_model(recipe, "patchcore", newer, artifact_path(recipe, "patchcore", newer))
    assert latest_artifact(recipe, "patchcore").stem == newer


def _judged(seq: int, defective: bool, live: Verdict, cand: Verdict) -> Judged:
    return Judged(seq, seq, defective, False, Decision(live, "l"), Decision(cand, "c"))


def _candidate_row(db, recipe, version: str, live: str, judged: list[Judged]) -> None:  # noqa: ANN001
    ev = evidence(judged, {"patchcore": live}, {"patchcore": version})
    with db.session() as s:
        s.add(
            ModelVersion(
                recipe=recipe.name, detector="patchcore", version=version,
                artifact_path="x", artifact_sha256="0" * 64,
                metrics={"role": "candidate", "retrain": {"candidate": version, "parts": [],
                                                          "shadow_evaluation": ev}},
            )
        )  # fmt: skip


def test_promotion_refused_when_worse_on_confirmed_defects_then_recorded(
    station_home: Path,
) -> None:
    recipe = small_recipe(station_home)
    db = database(recipe)
    live, worse, better = _version(0), _version(10), _version(20)
    _fake_model(recipe, "patchcore", live, artifact_path(recipe, "patchcore", live))
    for v in (worse, better):
        _fake_model(recipe, "patchcore", v, candidate_path(recipe, "patchcore", v))
    P, F = Verdict.PASS, Verdict.FAIL
    # `worse` passes confirmed defect 2, which the live model rejected
    _candidate_row(db, recipe, worse, live, [_judged(1, False, F, P), _judged(2, True, F, P)])
    _candidate_row(db, recipe, better, live, [_judged(1, False, F, P), _judged(2, True, F, F)])
    with pytest.raises(StationError, match=r"worse on confirmed defects.*p2"):
        promote(recipe, db, "patchcore", worse, "sam")
    assert promotions(db, recipe.name) == []
    assert latest_artifact(recipe, "patchcore").stem == live
    with pytest.raises(StationError, match="--by"):
        promote(recipe, db, "patchcore", better, " ")

    done = promote(recipe, db, "patchcore", better, "Sam Super", note="new cloth lot")
    assert (done.from_version, done.to_version) == (live, better)
    assert latest_artifact(recipe, "patchcore") == artifact_path(recipe, "patchcore", better)
    assert not candidate_path(recipe, "patchcore", better).exists()
    assert done.calibration is None  # no calibration made for it: calibrate-threshold
    db.dispose()

    db = database(recipe)  # a restart: the promotion and its evidence are in the database
    (p,) = promotions(db, recipe.name)
    assert (p.promoted_by, p.from_version, p.to_version, p.note) == (
        "Sam Super",
        live,
        better,
        "new cloth lot",
    )
    ev = p.evidence["shadow_evaluation"]["splits"]["all"]
    assert ev["candidate"]["misses"]["count"] == 0 and ev["candidate"]["misses"]["n"] == 1
    assert ev["candidate"]["false_rejects"]["ci"][1] == pytest.approx(0.975)  # 0/1, exact
    with db.session() as s:
        assert s.scalar(select(ModelPromotion.detector)) == "patchcore"
    with pytest.raises(StationError, match="already live"):
        promote(recipe, db, "patchcore", better, "sam")
    db.dispose()


def test_a_calibration_that_cannot_be_installed_leaves_no_row_and_no_file(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from station.retrain import promote as promote_module
    from station.retrain.candidates import candidates_dir
    from station.storage.models import Calibration

    recipe = small_recipe(station_home)
    db = database(recipe)
    live, better = _version(0), _version(20)
    _fake_model(recipe, "patchcore", live, artifact_path(recipe, "patchcore", live))
    _fake_model(recipe, "patchcore", better, candidate_path(recipe, "patchcore", better))
    P, F = Verdict.PASS, Verdict.FAIL
    _candidate_row(db, recipe, better, live, [_judged(1, False, F, P), _judged(2, True, F, F)])
    made = candidates_dir(recipe) / f"{recipe.name}-{better}.yaml"  # made for the candidate
    made.parent.mkdir(parents=True, exist_ok=True)
    made.write_text(yaml.safe_dump({
        "created_at": "2026-12-07T10:00:00+00:00", "policy": {"name": "zero_miss"},
        "thresholds": {"patchcore": 0.5}, "model_versions": {"patchcore": better}}))  # fmt: skip

    def full(files: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(promote_module, "atomic_write_all", full)
    with pytest.raises(StationError, match="the model is live, but its calibration") as err:
        promote(recipe, db, "patchcore", better, "Sam Super")
    assert "calibrate-threshold" in err.value.hint
    assert latest_artifact(recipe, "patchcore") == artifact_path(recipe, "patchcore", better)
    assert not recipe.calibration_path.exists()
    assert not list(recipe.calibration_path.parent.glob("history/*.yaml"))
    with db.session() as s:
        assert s.scalars(select(Calibration)).all() == []  # no row without its files
    db.dispose()


def test_the_promotion_gate() -> None:
    P, F = Verdict.PASS, Verdict.FAIL
    no_defects = evidence([_judged(1, False, F, P)], {}, {})
    assert not not_worse_on_defects(no_defects)[0]
    same = evidence([_judged(1, True, P, P), _judged(2, True, F, F)], {}, {})
    assert not_worse_on_defects(same)[0]  # both miss defect 1: not worse


def _shadow_run(recipe, tmp_path: Path, candidate_fails: bool = False):  # noqa: ANN001, ANN202
    db = database(recipe)
    cand = bright_set(recipe, threshold=10.0)  # a candidate that passes everything
    cand.detectors[0].version = "brightspot-cand-2"
    if candidate_fails:
        cand.detectors[0].detector.fail_with = RuntimeError("candidate broke")
    hook = ShadowHook(recipe, db, cand, "brightspot-cand-2")
    events = []
    groups = group_offline(_layout(tmp_path / "ds"), recipe)
    with Inspector(
        recipe, bright_set(recipe), Recorder(db, recipe), on_event=events.append, hooks=[hook]
    ) as insp:
        summary = insp.run_offline(groups)
    return db, summary, events


@pytest.mark.parametrize("candidate_fails", [False, True])
def test_shadow_verdicts_are_stored_and_never_drive_the_line(
    station_home: Path, tmp_path: Path, candidate_fails: bool
) -> None:
    recipe = small_recipe(station_home)
    db, summary, events = _shadow_run(recipe, tmp_path, candidate_fails)
    # the live verdicts are those of a run without a shadow (test_inspection_offline)
    assert [r.verdict for r in summary.results] == [Verdict.FAIL, Verdict.PASS, Verdict.FAULT]
    with db.session() as s:
        rows = {r.sequence: r for r in shadow_rows(s, recipe.name)}
        parts = {p.sequence: p for p in s.scalars(select(Part))}
    assert parts[1].verdict == Verdict.FAIL and parts[2].verdict == Verdict.PASS
    assert set(rows) == {1, 2}  # the loose image never reached the detectors
    if candidate_fails:
        assert rows[1].shadow == Verdict.FAULT and "candidate broke" in rows[1].shadow_reason
        assert not any(e.level == "error" for e in events)
    else:
        assert rows[1].shadow == Verdict.PASS and rows[1].disagree  # live rejected it
        assert rows[2].shadow == Verdict.PASS and not rows[2].disagree
        assert any("disagrees on part 1" in e.text for e in events)
        with db.session() as s:
            shot = s.scalars(select(Shot).where(Shot.part_id == rows[1].part_id)).first()
            assert shot.stats["shadow"]["candidate"] == "brightspot-cand-2"
    db.dispose()
    db = database(recipe)  # a restart keeps them
    with db.session() as s:
        assert len(shadow_rows(s, recipe.name)) == 2
        assert len(shadow_rows(s, recipe.name, disagree_only=True)) == 1
    db.dispose()


def test_review_page_lists_where_live_and_shadow_disagree(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from station.review.app import create_app

    recipe = small_recipe(station_home)
    db, _, _ = _shadow_run(recipe, tmp_path)
    db.dispose()
    url = recipe.storage.resolved_database_url()
    with TestClient(create_app(url, recipe.data_dir.parent), base_url="http://127.0.0.1:8080") as c:
        html = c.get("/shadow").text
        assert 'id="count-disagree">1<' in html and 'id="count-shadow">2<' in html
        rows = re.findall(r'<tr data-part-id="(\d+)" class="(\w+)"', html)
        assert [cls for _, cls in rows] == ["disagree"]
        assert "brightspot-cand-2" in html and "under threshold" in html
        every = c.get("/shadow?all=1").text
        assert len(re.findall(r'<tr data-part-id="\d+"', every)) == 2
        assert 'id="shadow-link"' in c.get("/").text and "shadow-cut" not in every
    # a long history: the disagreement older than the page's rows is still counted
    import station.review.shadow as page

    monkeypatch.setattr(page, "PAGE_ROWS", 1)
    with TestClient(create_app(url, recipe.data_dir.parent), base_url="http://127.0.0.1:8080") as c:
        every = c.get("/shadow?all=1").text
        assert 'id="count-disagree">1<' in every and 'id="count-shadow">2<' in every
        assert len(re.findall(r'<tr data-part-id="\d+"', every)) == 1
        assert "1 older are counted above, not listed" in every


def _bench():  # noqa: ANN202 (tools/bench_retrain.py, loaded as a module)
    return load_tool("bench_retrain")


@pytest.mark.slow
def test_retrain_shadow_and_promote_end_to_end(station_home: Path, one_thread: None) -> None:
    """Real models on the twin: capture, train, calibrate, a variant lot, reviews, retrain
    (candidate beside the live model), shadow mode from the recipe, promotion."""
    import yaml

    from station.recipe import load_recipe
    from station.retrain.candidates import find_calibration, live_versions
    from station.retrain.run import run_retrain

    b = _bench()
    path = station_home / "recipes" / f"{b.NAME}.yaml"

    def write(seed: int, share: float, shadow: list[str] | None = None) -> None:
        data = yaml.safe_load(b.recipe_text(seed, share, {"pitch_scale": 1.5}, 0.5))
        data["preprocess"]["size"] = [64, 64]  # small and fast
        data["decision"]["policy"] = "zero_miss"  # a low threshold: the variant is rejected
        data["retrain"] = {"agreeing_reviews": 2, "supervisors": ["chief"], "shadow": shadow or []}
        path.write_text(yaml.safe_dump(data))

    write(7, 0.0)
    b.station("capture", "--recipe", b.NAME, "--count", "8", "--label", "good")
    b.station("train", "--recipe", b.NAME)
    b.station("capture", "--recipe", b.NAME, "--count", "12", "--label", "labelled", "--seed", "9")
    b.station(
        "calibrate-threshold", "--recipe", b.NAME, "--resamples", "100", "--oob-resamples", "0"
    )
    write(11, 1.0)  # every sheet of the new lot is the variant
    b.station("inspect", "--live", "--recipe", b.NAME, "--count", "6", "--no-view")
    recipe = load_recipe(str(path))
    db = database(recipe)
    with db.session() as s:
        parts = s.scalars(select(Part).where(Part.mode == "live")).all()
        for p in parts:  # a supervisor's word on every part, as the review app stores it
            add_review(s, p.id, FR if p.ground_truth == "good" else DC, "chief")
    live_before = live_versions(recipe)
    # the premise: the first model rejects good sheets of the variant
    assert any(p.verdict == Verdict.FAIL and p.ground_truth == "good" for p in parts)
    res = run_retrain(recipe, db, resamples=100)
    (version,) = res.versions.values()
    assert res.trained[0].path == candidate_path(recipe, "patchcore", version)
    assert live_versions(recipe) == live_before  # the candidate is not live
    assert find_calibration(recipe, res.versions).path == res.calibration_path
    with db.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        assert row.metrics["role"] == "candidate"
        assert row.metrics["retrain"]["shadow_evaluation"]["parts"] == len(parts)
    assert "| all reviewed | candidate |" in res.report_path.read_text()
    # the live bank, untouched, then the reviewed shots' patches
    assert res.method == "extended live bank"
    live_bank = load_artifact(latest_artifact(recipe, "patchcore")).detector.model.memory_bank
    cand_bank = res.trained[0].detector.model.memory_bank
    assert torch.equal(cand_bank[: len(live_bank)], live_bank) and len(cand_bank) > len(live_bank)
    # no confirmed defect the live model rejected is passed by the candidate
    per_part = res.evidence["per_part"]  # [sequence, defective, trained_on, live, candidate]
    assert any(d for _, d, _, _, _ in per_part)
    assert not [s for s, d, _, lv, cv in per_part if d and lv == "fail" and cv == "pass"]
    assert res.evidence["confirmed_defects_constraint"]["scale"] <= 1.0

    write(13, 1.0, shadow=[version])  # shadow mode from the recipe
    b.station("inspect", "--live", "--recipe", b.NAME, "--count", "3", "--no-view")
    with db.session() as s:
        assert len(shadow_rows(s, b.NAME)) == 3
    if res.verdict[0]:
        b.station("models", "promote", "--recipe", b.NAME, "--detector", "patchcore",
                  "--version", version, "--by", "chief")  # fmt: skip
        assert live_versions(load_recipe(str(path))) == {"patchcore": version}
        assert len(promotions(db, b.NAME)) == 1
    else:
        with pytest.raises(StationError, match="worse on confirmed defects"):
            promote(recipe, db, "patchcore", version, "chief")
        assert promotions(db, b.NAME) == []
    db.dispose()


def test_twin_variant_is_a_good_sheet_of_another_texture(station_home: Path) -> None:
    from station.errors import RecipeError
    from station.twin.world import TwinWorld

    plain = TwinWorld(small_recipe(station_home))
    world = TwinWorld(
        small_recipe(station_home, twin__params={"variant": {"share": 0.5, "pitch_scale": 1.4,
                                                             "weave": "twill"}})
    )  # fmt: skip
    seeds = range(40)
    flags = [world.variant.applies(s) for s in seeds]
    assert 5 < sum(flags) < 35  # about half
    for s, f in zip(seeds, flags, strict=True):
        a, b = plain.make_sheet(s, defective=False), world.make_sheet(s, defective=False)
        assert not b.defective
        if f:
            assert b.weave == "twill" and b.pitch_mm[0] == pytest.approx(a.pitch_mm[0] * 1.4)
        else:
            assert b == a  # the other sheets are drawn exactly as without a variant
    for bad in ({"share": 2}, {"pitch_scale": 9}, {"weave": "satin"}, {"colour": 1}):
        with pytest.raises(RecipeError, match="variant"):
            TwinWorld(small_recipe(station_home, twin__params={"variant": bad}))


def test_a_defect_confirmed_after_the_supervisor_keeps_a_sheet_out() -> None:
    """Evaluation counts the newest review: a later "defect confirmed" must not train as good."""
    chief = ["A. Chief"]
    ok, why = qualifies([("A. Chief", FR), ("ana", DC)], 2, chief)
    assert not ok and "after the supervisor" in why
    assert not qualifies([("A. Chief", FR), ("ana", DC), ("bob", FR)], 2, chief)[0]
    assert qualifies([("ana", DC), ("A. Chief", FR)], 2, chief)[0]  # the override, kept
    assert qualifies([("A. Chief", FR), ("ana", FR)], 2, chief)[0]


def _promotable(db, recipe, parts: list[int]) -> tuple[str, str]:  # noqa: ANN001
    """A live model and a candidate (trained on the parts with these sequences) that passes
    the gate: (live, candidate)."""
    live, cand = _version(0), _version(20)
    _fake_model(recipe, "patchcore", live, artifact_path(recipe, "patchcore", live))
    _fake_model(recipe, "patchcore", cand, candidate_path(recipe, "patchcore", cand))
    P, F = Verdict.PASS, Verdict.FAIL
    _candidate_row(db, recipe, cand, live, [_judged(1, False, F, P), _judged(2, True, F, F)])
    with db.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == cand)).one()
        row.metrics = {**row.metrics, "retrain": {**row.metrics["retrain"], "parts": parts}}
    return live, cand


def test_promotion_copies_only_parts_that_still_qualify(station_home: Path) -> None:
    recipe = small_recipe(station_home, retrain={"agreeing_reviews": 2, "supervisors": ["chief"]})
    db = database(recipe)
    root = recipe.data_dir.parent
    keep, turned = _part(db, recipe, root, Verdict.FAIL), _part(db, recipe, root, Verdict.FAIL)
    with db.session() as s:
        seqs = [s.get(Part, pid).sequence for pid in (keep, turned)]
        for pid in (keep, turned):
            add_review(s, pid, FR, "chief")  # both qualified when retrain ran
    _, cand = _promotable(db, recipe, seqs)
    with db.session() as s:
        add_review(s, turned, DC, "chief")  # between retrain and promotion
    done = promote(recipe, db, "patchcore", cand, "chief")
    good = sorted(f.name for f in (recipe.dataset_dir / "train" / "good").iterdir())
    assert good == sorted(f"review-p{seqs[0]:06d}_{p.name}.png" for p in recipe.robot.poses)
    assert done.added_shots == len(recipe.robot.poses)
    assert done.left_out == {"a supervisor confirmed the defect": 1}
    assert any("1 part(s): a supervisor confirmed the defect" in n for n in done.notes)
    db.dispose()


def test_promotion_refuses_a_calibration_made_for_another_decision_rule(
    station_home: Path,
) -> None:
    import yaml

    from station.retrain.candidates import candidates_dir

    recipe = small_recipe(station_home)
    assert recipe.decision.combine_poses == "max"
    db = database(recipe)
    _, cand = _promotable(db, recipe, [])
    made = candidates_dir(recipe) / f"{recipe.name}-{cand}.yaml"  # at retrain time: mean
    made.parent.mkdir(parents=True, exist_ok=True)
    made.write_text(yaml.safe_dump({
        "created_at": "2026-12-07T10:00:00+00:00", "policy": {"name": "zero_miss"},
        "thresholds": {"patchcore": 0.5}, "model_versions": {"patchcore": cand},
        "decision": {"combine_poses": "mean", "combine_detectors": "any"}}))  # fmt: skip
    done = promote(recipe, db, "patchcore", cand, "Sam Super")
    assert done.calibration is None and not recipe.calibration_path.exists()
    assert "does not fit" in done.calibration_note and "combine_poses=mean" in done.calibration_note
    assert any("calibrate-threshold" in n for n in done.notes)
    db.dispose()


def test_promotion_finds_shadow_verdicts_of_a_partial_candidate_set(station_home: Path) -> None:
    from station.storage.shadow import record_shadow_verdict

    recipe = small_recipe(station_home)
    db = database(recipe)
    root = recipe.data_dir.parent
    _, cand = _promotable(db, recipe, [])
    done = promote(recipe, db, "patchcore", cand, "Sam Super")  # shadow mode never ran it
    assert f"no shadow verdicts for {cand}" in done.reason
    (p,) = promotions(db, recipe.name)
    assert p.evidence["shadow_mode"]["parts"] == 0 and "no shadow verdicts" in p.evidence["rule"]

    write_live(recipe, "patchcore", p.from_version)  # a second candidate, same live model
    cand2 = _version(30)
    _fake_model(recipe, "patchcore", cand2, candidate_path(recipe, "patchcore", cand2))
    P, F = Verdict.PASS, Verdict.FAIL
    _candidate_row(db, recipe, cand2, p.from_version,
                   [_judged(1, False, F, P), _judged(2, True, F, F)])  # fmt: skip
    bad = _part(db, recipe, root, Verdict.FAIL)
    with db.session() as s:
        add_review(s, bad, DC, "ann")
    # `--shadow cand2` beside another detector's live model: the set's id is not the retrain's
    record_shadow_verdict(db, bad, f"{cand2}+other-1", {"patchcore": cand2, "other": "other-1"},
                          Verdict.PASS, "under threshold", 0.1, {}, {"patchcore": 0.5})  # fmt: skip
    with pytest.raises(StationError, match="in shadow mode it passed confirmed defects"):
        promote(recipe, db, "patchcore", cand2, "Sam Super")
    db.dispose()


def test_promotion_past_the_false_reject_budget_needs_its_cost_accepted(
    station_home: Path,
) -> None:
    """Keeping the confirmed defects rejected lowered the candidate's thresholds so far that
    they reject 29 of 75 good labelled parts (budget 5 %): not promoted unless accepted."""
    recipe = small_recipe(station_home)
    db = database(recipe)
    live, cand = _promotable(db, recipe, [])
    with db.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == cand)).one()
        ev = dict(row.metrics["retrain"]["shadow_evaluation"])
        ev["confirmed_defects_constraint"] = {
            "scale": 0.84, "labelled_false_rejects": [2, 29, 75], "confirmed_defects": [2],
            "leave_one_out_missed": [],
        }  # fmt: skip
        info = {**row.metrics["retrain"], "shadow_evaluation": ev}
        row.metrics = {**row.metrics, "retrain": info}
    with pytest.raises(StationError, match=r"reject 29 of 75 good labelled parts against 2") as e:
        promote(recipe, db, "patchcore", cand, "Sam Super")
    assert "--accept-false-rejects" in (e.value.hint or "")
    assert promotions(db, recipe.name) == [] and latest_artifact(recipe, "patchcore").stem == live
    done = promote(recipe, db, "patchcore", cand, "Sam Super", accept_false_rejects=True)
    assert "false-reject cost accepted" in done.reason
    assert latest_artifact(recipe, "patchcore").stem == cand
    db.dispose()
