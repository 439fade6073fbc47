"""`station tune`: synthetic defects, and a tiny run end to end on generated 64 px weaves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_ensemble import RECIPE_ENSEMBLE
from test_train_evaluate_cli import RECIPE_PATCH, run
from test_train_evaluate_cli import make_recipe as make_cli_recipe
from textures import plain_weave

from station.imaging import write_png
from station.tuning.faults import KINDS, make_defect, synthetic_set, visible

SIZE = 64
# the CLI tests' tiny recipe with a small patch pool
TINY = RECIPE_PATCH.replace("max_bank: 200", "max_bank: 200\n      max_train_patches: 2000")
assert TINY != RECIPE_PATCH
CHEAP = "patchcore-lite0-pad0,patchcore-lite0-pad0-nocenter,ensemble"


def make_recipe(home: Path, name: str = "tiny") -> str:
    return make_cli_recipe(home, name, TINY)


def make_data(root: Path, n_good: int) -> Path:
    """An MVTec-layout folder whose test split holds only files that cannot be read."""
    for i in range(n_good):
        write_png(root / "train" / "good" / f"g{i:02d}.png", plain_weave(i, SIZE))
    for sub in ("test/good", "test/defect", "ground_truth/defect"):
        (root / sub).mkdir(parents=True)
        (root / sub / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("channels", [1, 3])
def test_fault_changes_only_its_mask_and_repeats_by_seed(kind: str, channels: int) -> None:
    grey = plain_weave(3, 96)
    img = grey if channels == 1 else np.repeat(grey[:, :, None], 3, 2)
    changed_share = []
    for seed in range(5):
        out, mask = make_defect(img, kind, np.random.default_rng(seed), 96)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == (96, 96)
        diff = out != img if channels == 1 else (out != img).any(axis=2)
        assert mask.any() and not diff[~mask].any()  # nothing outside the mask changed
        assert 0 < mask.mean() < 0.5  # a few px up to a part of the image, never all of it
        changed_share.append(diff[mask].mean())
        again, mask2 = make_defect(img, kind, np.random.default_rng(seed), 96)
        assert np.array_equal(again, out) and np.array_equal(mask2, mask)
    other, _ = make_defect(img, kind, np.random.default_rng(99), 96)
    assert not np.array_equal(other, out)  # another seed, another fault
    assert np.mean(changed_share) > 0.5  # the mask is the fault, not a loose frame round it


def test_synthetic_set_cycles_kinds() -> None:
    good = [plain_weave(i, SIZE) for i in range(4)]
    images, kinds, masks = synthetic_set(good, 12, SIZE, seed=1)
    assert kinds == list(KINDS) * 2 and len(images) == len(masks) == 12
    again, _, _ = synthetic_set(good, 12, SIZE, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))


def _auroc(good: list[float], defect: list[float]) -> float:
    labels = [0] * len(good) + [1] * len(defect)
    return float(roc_auc_score(labels, good + defect))


def test_tune_end_to_end_and_resume(
    station_home: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    recipe = make_recipe(station_home)
    data = make_data(station_home / "ds" / "weave", n_good=26)
    out = station_home / "tune"
    argv = ["tune", "--recipe", recipe, "--data", str(data), "--out", str(out)]
    assert run([*argv, "--only", CHEAP, "--budget-min", "5", "--threads", "1"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "too few images to choose" not in said and "chosen:" in said

    rows = [json.loads(x) for x in (out / "tune.jsonl").read_text().splitlines()]
    head, cands = rows[0], [r for r in rows[1:] if r["type"] == "candidate"]
    assert head["type"] == "run" and head["n_fit"] == 16 and head["n_held_out"] == 10
    check_timed_again(out, rows)
    assert head["n_synthetic"] == 20 and set(head["synthetic_per_kind"]) == set(KINDS)
    ids = [c["id"] for c in cands]
    assert ids[:2] == ["patchcore-lite0-pad0", "patchcore-lite0-pad0-nocenter"]
    assert ids[2].startswith("ensemble(") and len(ids) == 3
    for c in cands:
        assert c["status"] == "done" and 0.0 <= c["auroc"] <= 1.0 and c["throughput"] > 0
        assert len(c["scores"]["good"]) == 10 and len(c["scores"]["synthetic"]) == 20
        assert set(c["per_kind"]) == set(KINDS) and c["real_auroc"] is None
        # the AUROCs against sklearn, from the journal's scores (the kinds cycle, as made)
        good, syn = c["scores"]["good"], c["scores"]["synthetic"]
        assert c["auroc"] == pytest.approx(_auroc(good, syn))
        for i, kind in enumerate(KINDS):
            assert c["per_kind"][kind] == pytest.approx(_auroc(good, syn[i :: len(KINDS)]))
        fr = c["fr100"]
        assert fr["n_good"] == 10 and fr["caught"] == 20  # 100 % recall on the synthetic set
    assert cands[2]["fit"]["members_reused"] is True
    assert cands[2]["entry"]["params"]["members"][0]["name"] == "patchcore"

    md = (out / "tune.md").read_text()
    assert "| rank | candidate | synthetic AUROC" in md and md.count("| `") == 3
    assert (out / "chosen_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = max(cands, key=lambda c: (c["auroc"], -c["fr100"]["false_reject_rate"]))
    assert f"**Chosen: `{best['id']}`**" in md
    # the tiny recipe's own PatchCore (Lite0, defaults) was not in --only
    assert "own detector, `patchcore-lite0`, was not scored: left out by --only" in md

    from station.detectors.registry import load_recipe

    variant = out / f"{recipe}-tuned.yaml"
    assert "extends: tiny" in variant.read_text()
    tuned = load_recipe(str(variant))
    assert tuned.name == "tiny-tuned" and tuned.preprocess.size == (64, 64)
    assert [d.name for d in tuned.detectors] == [best["entry"]["name"]]
    assert tuned.detectors[0].params == best["entry"]["params"]

    # a report that cannot be written: one line, and no new variant beside the old report
    from station.tuning import run as tune_run

    variant.unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune_run, "write_report", lambda *a: (_ for _ in ()).throw(
            OSError(28, "No space left on device")))  # fmt: skip
        code = run([*argv, "--only", CHEAP, "--budget-min", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"cannot write the tune's outputs in {out}: No space left on device" in " ".join(
        err.split())
    assert not variant.exists()
    assert run([*argv, "--only", CHEAP, "--budget-min", "5"]) == 0 and variant.is_file()
    capsys.readouterr()

    # a rerun with the same --out skips what is done; a new candidate runs
    more = "patchcore-lite0-pad0,patchcore-lite0-pad0-nocenter,patchcore-lite0-k3"
    assert run([*argv, "--only", more, "--budget-min", "5"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "resuming" in said and "3 candidate(s) done" in said
    rows = [json.loads(x) for x in (out / "tune.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows[1:] if r["type"] == "candidate"] == [*ids, "patchcore-lite0-k3"]
    check_timed_again(out, rows)

    # real defects given: the journal starts over (and says so); they fill their own column
    real = station_home / "real"
    for i in range(3):
        img = plain_weave(300 + i, SIZE)
        img[20:30, 16:44] = 15
        write_png(real / f"d{i}.png", img)
    extra = ["--defects", str(real), "--choose-on", "real", "--budget-min", "5"]
    assert run([*argv, "--only", "patchcore-lite0-pad0", *extra]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "starting over" in said
    rows = [json.loads(x) for x in (out / "tune.jsonl").read_text().splitlines()]
    assert rows[0]["n_real"] == 3 and [r["id"] for r in rows[1:]] == ["patchcore-lite0-pad0"]
    assert len(rows[1]["scores"]["real"]) == 3 and rows[1]["real_auroc"] == 1.0
    assert "chosen on: real defects" in (out / "tune.md").read_text()


def check_timed_again(out: Path, rows: list[dict]) -> None:
    """The journal's timing lines: each candidate within the margin of the best timed twice
    more (once per run), its throughput the fastest of its passes."""
    from station.tuning.journal import read_journal
    from station.tuning.report import near_best
    from station.tuning.run import RETIME_PASSES

    timed = [r for r in rows[1:] if r["type"] == "timing"]
    assert len({t["id"] for t in timed}) == len(timed)  # a resumed run does not time again
    records = {r["id"]: r for r in read_journal(out)[1]}
    near = {r["id"] for r in near_best(list(records.values()), "synthetic")}
    if len(near) >= 2:
        assert near <= {t["id"] for t in timed}
    for t in timed:
        assert len(t["passes"]) == RETIME_PASSES and all(v > 0 for v in t["passes"])
        r = records[t["id"]]
        assert r["throughput_passes"][1:] == t["passes"]
        assert r["throughput"] == max(r["throughput_passes"])


def test_an_unwritable_out_or_a_garbage_journal_is_no_traceback(tmp_path: Path) -> None:
    """--out under a file was an OSError traceback; a journal of garbage bytes a
    UnicodeDecodeError. Now: one line naming the folder; a journal started over."""
    from station.errors import StationError
    from station.tuning.journal import FILE, Journal, read_journal

    (tmp_path / "afile").write_text("")
    with pytest.raises(StationError, match="cannot write tune folder .*afile.*--out"):
        Journal(tmp_path / "afile" / "tune", {"digest": "d"}).open()
    (tmp_path / FILE).write_bytes(bytes(range(128, 256)) * 4)
    assert read_journal(tmp_path) is None
    journal = Journal(tmp_path, {"digest": "d"}).open()
    assert journal.restarted_from == "unreadable" and read_journal(tmp_path) == (
        {"type": "run", "digest": "d"}, [])


def test_journal_timing_lines_make_the_fastest_pass_count(tmp_path: Path) -> None:
    from station.tuning.journal import Journal, read_journal

    journal = Journal(tmp_path, {"digest": "d"}).open()
    journal.add({"id": "a", "status": "done", "throughput": 10.0})
    journal.add({"id": "b", "status": "done", "throughput": 12.0})
    journal.add_passes("a", [14.0, 9.0])
    journal.add_passes("b", [float("nan"), 11.0])
    assert journal.records["a"]["throughput"] == 14.0
    assert journal.records["a"]["throughput_passes"] == [10.0, 14.0, 9.0]
    _, again = read_journal(tmp_path)
    assert {r["id"]: r["throughput"] for r in again} == {"a": 14.0, "b": 12.0}
    assert Journal(tmp_path, {"digest": "d"}).open().records["b"]["throughput_passes"] == [
        12.0,
        None,
        11.0,
    ]


def test_retime_times_the_candidates_near_the_best_again_in_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestration of `run.retime` (the timing itself is `score`'s, run end to end
    above): who is timed, in which order, what the journal keeps, and a resume."""
    from station.tuning import run as tune_run
    from station.tuning.journal import Journal
    from station.tuning.report import rank

    journal = Journal(tmp_path, {"digest": "d"}).open()
    for cid, auroc, speed in (("a", 0.900, 10.0), ("b", 0.898, 14.0), ("c", 0.80, 50.0)):
        journal.add({"id": cid, "status": "done", "auroc": auroc, "throughput": speed,
                     "entry": {}, "size": None, "fit": {"model": f"{cid}.pt"}})  # fmt: skip
    timed: list[str] = []
    speeds = {"a": [16.0, 12.0], "b": [13.0, 15.0]}

    def throughput(rcp: object, cid: str, det: object, data: object, progress: object) -> float:
        assert det == f"loaded {cid}"
        timed.append(cid)
        return speeds[cid][timed.count(cid) - 1]

    class Data:
        def resized(self, size: object) -> Data:
            return self

    monkeypatch.setattr(tune_run, "throughput", throughput)
    monkeypatch.setattr(tune_run, "load_candidate", lambda r, *_: f"loaded {r['id']}")
    monkeypatch.setattr(tune_run, "with_size", lambda rcp, size: rcp)
    plan = tune_run.Plan(None, Data(), [], False, 60.0, tmp_path)  # type: ignore[arg-type]
    said: list[str] = []
    hooks = tune_run.Hooks(say=said.append)
    tune_run.retime(plan, journal, {}, hooks)
    assert timed == ["a", "b", "b", "a"]  # "c" is not near the best
    assert journal.records["a"]["throughput_passes"] == [10.0, 16.0, 12.0]
    assert {c: journal.records[c]["throughput"] for c in "abc"} == {"a": 16.0, "b": 15.0, "c": 50.0}
    assert rank(list(journal.records.values()), "synthetic")[0]["id"] == "a"
    assert "timing the 2 candidate(s)" in said[0]
    tune_run.retime(plan, Journal(tmp_path, {"digest": "d"}).open(), {}, hooks)  # resumed
    assert len(timed) == 4
    # a candidate whose model cannot be read: nobody is timed again, and the line says so
    other = Journal(tmp_path / "other", {"digest": "d"}).open()
    for cid in "ab":
        other.add({**journal.records[cid], "throughput_passes": None})

    def unreadable(r: dict, *_: object) -> str:
        raise OSError(f"{r['id']}.pt: no such file")

    monkeypatch.setattr(tune_run, "load_candidate", unreadable)
    tune_run.retime(plan, other, {}, hooks)
    assert len(timed) == 4 and "not timed again" in said[-1] and "a.pt" in said[-1]


# the ensemble tests' recipe with two PatchCores (the shipped pair and the coarse one)
ENSEMBLE_BODY = RECIPE_ENSEMBLE.split("      val_fraction")[0] + """      members:
        - {name: patchcore, params: {max_bank: 200, batch_size: 4, max_train_patches: 2000}}
        - {name: patchcore, params: {max_bank: 200, batch_size: 4, max_train_patches: 2000,
                                     layers: [blocks.4, blocks.5]}}
"""


def test_an_ensemble_recipe_is_scored_as_it_stands_and_not_as_a_member(
    station_home: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    recipe = make_cli_recipe(station_home, "tinyens", ENSEMBLE_BODY)
    data = make_data(station_home / "ds" / "weave", n_good=26)
    out = station_home / "tune"
    argv = ["tune", "--recipe", recipe, "--data", str(data), "--out", str(out), "--threads", "1"]
    assert run([*argv, "--only", f"recipe-own,{CHEAP}", "--budget-min", "5"]) == 0
    rows = [json.loads(x) for x in (out / "tune.jsonl").read_text().splitlines()][1:]
    assert [r["status"] for r in rows] == ["done"] * 4
    ids = [r["id"] for r in rows]
    assert ids[:3] == ["recipe-own", "patchcore-lite0-pad0", "patchcore-lite0-pad0-nocenter"]
    # the best-two ensemble is made of single candidates, never of the recipe's own ensemble
    assert sorted(rows[3]["members"]) == sorted(ids[1:3])
    assert rows[0]["entry"]["params"]["members"][1]["params"]["layers"] == ["blocks.4", "blocks.5"]
    assert rows[1]["entry"]["params"]["max_train_patches"] == 2000  # from the first member
    said = " ".join(capsys.readouterr().out.split())
    assert "recipe's own detector, `recipe-own`" in said
    # 10 held-out weaves cannot tell the choice from the recipe's own: the report says so
    gain = r"The choice's gain over it: \+0\.\d{3} synthetic AUROC \[90 % paired bootstrap"
    assert re.search(gain + r".*, within the noise of these images", said)
    assert re.search(gain, " ".join((out / "tune.md").read_text().split()))
    head = (out / "tinyens-tuned.yaml").read_text().splitlines()[0]
    assert head.startswith("# Written by station tune")
    assert "its gain over the recipe's own recipe-own: +0." in head and "within the noise" in head


def test_few_images_is_a_guess_and_too_few_refused(
    station_home: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    recipe = make_recipe(station_home)
    out = station_home / "t"
    few = make_data(station_home / "few", n_good=6)
    argv = ["tune", "--recipe", recipe, "--out", str(out), "--budget-min", "5"]
    only = "patchcore-lite0-pad0,patchcore-lite0-pad0-nocenter,ensemble"
    assert run([*argv, "--data", str(few), "--only", only]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "too few images to choose: 6 good images (3 to fit, 3 held out)" in said
    md = (out / "tune.md").read_text()
    assert "too few images to choose" in md and "(a guess)" in md
    assert "- `ensemble`: 3 fit images: too few to standardise members" in md

    three = make_data(station_home / "three", n_good=3)
    assert run([*argv, "--data", str(three)]) == 2
    err = capsys.readouterr().err
    assert "too few good images to tune: 3 in" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the error line and its hint


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget-min", "0"], "--budget-min must be more than 0"),
        (["--data", "{home}/nowhere"], "training folder {home}/nowhere does not exist"),
        (["--data", "{home}/empty"], "no training images in {home}/empty"),
        (["--recipe", "nosuch"], "nosuch.yaml"),
        (["--only", "nothing"], "--only 'nothing' keeps no candidate"),
        (["--choose-on", "real"], "--choose-on real needs labelled real defects"),
    ],
)
def test_expected_failures_are_one_line(
    station_home: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    recipe = make_recipe(station_home)
    (station_home / "empty").mkdir()
    args = [a.format(home=station_home) for a in extra]
    argv = ["tune", "--recipe", recipe, "--data", str(station_home / "empty"), *args]
    assert run(argv) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert message.format(home=station_home) in err and "Traceback" not in err


def test_faults_are_redrawn_until_visible() -> None:
    img = np.full((96, 96), 255, np.uint8)  # saturated, flat: most of the image shows nothing
    img[:, 72:] = plain_weave(5, 96)[:, 72:]
    for kind in KINDS:
        for seed in range(4):
            out, mask = make_defect(img, kind, np.random.default_rng(seed), 96)
            assert visible(img, out) and not (out != img)[~mask].any()


def test_the_choice_is_the_fastest_within_the_margin_speeds_within_noise_tie() -> None:
    from station.tuning.report import rank

    def rec(cid: str, auroc: float, speed: float) -> dict[str, object]:
        return {"id": cid, "status": "done", "auroc": auroc, "throughput": speed}

    slow, fast = rec("ensemble", 0.923, 5.6), rec("lite2", 0.920, 11.4)
    assert [r["id"] for r in rank([slow, fast, rec("lite0", 0.90, 20.0)], "synthetic")] == [
        "lite2",
        "ensemble",
        "lite0",
    ]
    clear = rec("ensemble", 0.930, 5.6)  # more than the margin better: worth its cost
    assert rank([clear, fast], "synthetic")[0]["id"] == "ensemble"
    assert rank([{**fast, "status": "failed"}, clear], "synthetic") == [clear]
    # speeds within SPEED_RATIO are timing noise: the better AUROC wins, whichever timed faster
    lite1, lite2 = rec("lite1", 0.899, 13.3), rec("lite2", 0.901, 9.0)
    assert rank([lite1, lite2], "synthetic")[0]["id"] == "lite2"
    assert rank([lite1, {**lite2, "throughput": 8.5}], "synthetic")[0]["id"] == "lite1"
    assert rank([{**lite1, "throughput": float("nan")}, lite2], "synthetic")[0]["id"] == "lite2"

    from station.tuning.report import own_line

    ranked = rank([slow, fast, rec("lite0", 0.90, 20.0)], "synthetic")
    assert own_line({"own": "lite2"}, ranked).endswith("`lite2`, is the choice.")
    assert "`lite0`: rank 3 of 3, synthetic AUROC 0.900 (the choice: 0.920)" in own_line(
        {"own": "lite0"}, ranked
    )
    skipped = {"own": "lite1", "skipped": [("lite1", "no weights for backbone x")]}
    assert own_line(skipped, ranked).endswith("was not scored: no weights for backbone x.")
    assert "left out by --only" in own_line({"own": "lite1"}, ranked)
    assert own_line({"own": None}, ranked).endswith("is not one of the candidates.")


def test_a_paired_bootstrap_tells_a_clear_gain_from_noise() -> None:
    from station.metrics import image_auroc
    from station.tuning.compare import bootstrap_aurocs, paired_gain
    from station.tuning.report import own_gain, own_line, rank

    def line(facts: dict[str, object], ranked: list[dict[str, object]]) -> str:
        return own_line({**facts, "gain": own_gain(facts, ranked)}, ranked)  # as the CLI does

    # one draw of every score once is the plain AUROC; repeated scores count as often as drawn
    rng = np.random.default_rng(0)
    good, syn = rng.normal(0, 1, 60), rng.normal(1, 1, 120)
    once = (np.ones((1, 60)), np.ones((1, 120)))
    plain = image_auroc(np.r_[good, syn], np.r_[np.zeros(60), np.ones(120)])
    assert bootstrap_aurocs(good, syn, once)[0] == pytest.approx(plain)
    drawn = (np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), np.ones((3, 1)))
    assert bootstrap_aurocs(np.array([0.0, 1.0]), np.array([0.5]), drawn).tolist() == [1, 0, 0.5]
    one = (np.ones((1, 3)), np.ones((1, 2)))
    ties = bootstrap_aurocs(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0]), one)
    assert ties[0] == (1.5 + 3) / 6  # the tie at 1 counts half

    def rec(cid: str, g: np.ndarray, s: np.ndarray, speed: float) -> dict[str, object]:
        auroc = image_auroc(np.r_[g, s], np.r_[np.zeros(len(g)), np.ones(len(s))])
        scores = {"good": g.tolist(), "synthetic": s.tolist()}
        return {"id": cid, "status": "done", "auroc": auroc, "throughput": speed, "scores": scores}

    own = rec("own", good, syn, 10.0)
    clear = paired_gain(rec("x", good, syn + 1.0, 1.0), own)
    assert clear is not None and clear.clear and 0 < clear.low < clear.diff < clear.high
    jitter = rec("y", good + rng.normal(0, 0.05, 60), syn + rng.normal(0, 0.05, 120), 20.0)
    tie = paired_gain(jitter, own)
    assert tie is not None and not tie.clear and tie.low <= tie.diff <= tie.high
    assert abs(tie.diff) < 0.02 and tie.high - tie.low < 0.05  # paired: the shared noise cancels
    assert paired_gain(rec("z", good[:-1], syn, 1.0), own) is None  # other images
    assert paired_gain({"id": "w"}, own) is None  # no scores stored

    ranked = rank([own, rec("x", good, syn + 1.0, 1.0)], "synthetic")
    assert "The choice's gain over it: +0." in line({"own": "own"}, ranked)
    assert line({"own": "own"}, ranked).endswith("a clear gain.")
    ranked = rank([own, jitter], "synthetic")  # the faster one, within the margin
    assert ranked[0]["id"] == "y"
    assert "keeping the recipe's own is as well supported" in line({"own": "own"}, ranked)
    assert "gain" not in line({"own": "own", "choose_on": "real"}, ranked)


def test_candidates_try_layers_everywhere_and_input_sizes_only_without_tiles(
    station_home: Path,
) -> None:
    from station.detectors.registry import load_recipe
    from station.tuning.candidates import (
        COARSE_LAYERS,
        FINE_LAYERS,
        resolution_problem,
        single_candidates,
        with_size,
    )

    tiled = single_candidates(load_recipe("glassfiber"), "cpu")
    ids = [c.id for c in tiled]
    assert len(ids) == len(set(ids)) and all(c.size is None for c in tiled)
    # the recipe's own configuration first (a small budget still scores it), then the grid
    assert ids[:3] == ["patchcore-lite1", "patchcore-lite0", "patchcore-lite0-pad0"]
    layers = {c.id: c.entry["params"].get("layers") for c in tiled}
    assert layers["patchcore-lite0-fine"] == list(FINE_LAYERS)
    assert layers["patchcore-lite0-coarse"] == list(COARSE_LAYERS)
    assert layers["patchcore-lite0"] is None  # the backbone's default pair

    lab = station_home / "recipes" / "lab.yaml"
    lab.write_text(
        "extends: glassfiber\nname: lab\npreprocess: {tiling: {enabled: false}}\n"
        "coverage: {smallest_defect_mm: 5}\n"
    )
    recipe = load_recipe(str(lab))
    sized = {c.id: c for c in single_candidates(recipe, "cpu") if c.size}
    # the recipe's own PatchCore backbone (the shipped Lite1) at the other sizes
    assert sorted(sized) == ["patchcore-lite1-192x192", "patchcore-lite1-320x320"]
    shipped = next(c for c in tiled if c.id == "patchcore-lite1")
    assert sized["patchcore-lite1-320x320"].entry == shipped.entry
    # 256 px resolves 5 mm at 8 px (0.624 mm/px); 192 px would not, and says how far off
    assert resolution_problem(recipe, sized["patchcore-lite1-320x320"]) is None
    why = resolution_problem(recipe, sized["patchcore-lite1-192x192"])
    assert why is not None and "0.832 mm/px" in why and "smallest_defect_mm" in why
    assert with_size(recipe, (320, 320)).preprocess.size == (320, 320)
    assert recipe.preprocess.size == (256, 256)  # the recipe itself is left alone


@pytest.mark.parametrize(
    ("params", "own"),
    [
        ("{}", "patchcore-lite0"),  # the detector's defaults are the grid's first row
        ("{mirror_pad: 0, center_features: false}", "patchcore-lite0-pad0-nocenter"),
        ("{layers: [blocks.2, blocks.4]}", "patchcore-lite0"),  # the default pair, written out
        ("{layers: [blocks.4, blocks.5]}", "patchcore-lite0-coarse"),
        ("{num_neighbors: 5}", "recipe-own"),  # no grid row: the entry runs as it stands
        ("{num_neighbors: many}", None),  # malformed: left for the detector to refuse
    ],
)
def test_the_recipes_own_patchcore_is_found_among_the_candidates(
    station_home: Path, params: str, own: str | None
) -> None:
    from station.detectors.registry import load_recipe
    from station.tuning.candidates import PATCHCORE_GRID, recipe_own, single_candidates

    path = station_home / "recipes" / "own.yaml"
    path.write_text(
        "extends: glassfiber\nname: own\ndetectors:\n  - name: patchcore\n"
        f"    backbone: efficientnet_lite0\n    params: {params}\n"
    )
    recipe = load_recipe(str(path))
    assert recipe_own(recipe) == own
    cands = single_candidates(recipe, "cpu")
    ids = [c.id for c in cands]
    grid = [row[0] for row in PATCHCORE_GRID]
    want = ([own] if own else []) + [g for g in grid if g != own]
    assert ids[: len(want)] == want
    if own == "recipe-own":
        assert cands[0].entry["params"] == recipe.detectors[0].params


def test_an_ensemble_recipe_is_its_own_candidate_and_lends_its_patchcore_params() -> None:
    from station.detectors.registry import load_recipe
    from station.tuning.candidates import recipe_own, single_candidates

    recipe = load_recipe("glassfiber-ensemble")
    cands = single_candidates(recipe, "cpu")
    assert recipe_own(recipe) == "recipe-own" and cands[0].id == "recipe-own"
    own = recipe.detectors[0]
    want = {"name": "ensemble", "backbone": own.backbone, "weights": own.weights}
    assert cands[0].entry == {**want, "device": "cpu", "params": own.params}
    # the grid starts from the first PatchCore member's params, as from glassfiber's entry
    shipped = {c.id: c.entry for c in single_candidates(load_recipe("glassfiber"), "cpu")}
    for c in cands[1:]:
        assert c.entry == shipped[c.id], c.id


def test_tune_an_input_size_candidate_writes_its_size_into_the_variant(
    station_home: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    # the tiny recipe with a smallest defect its 64 px shots resolve at 48 and 80 px alike
    recipe = make_recipe(station_home, "tinysize")
    path = station_home / "recipes" / "tinysize.yaml"
    text = path.read_text().replace("smallest_defect_mm: 2.0", "smallest_defect_mm: 100")
    path.write_text(text.replace("defect_px: 8 ", "defect_px: 1 "))
    data = make_data(station_home / "ds" / "weave", n_good=12)
    out = station_home / "tune"
    argv = ["tune", "--recipe", recipe, "--data", str(data), "--out", str(out), "--threads", "1"]
    assert run([*argv, "--only", "patchcore-lite0-80x80,patchcore-lite0-pad0,ensemble"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "needs two finished single candidates of one input size" in (out / "tune.md").read_text()
    rows = [json.loads(x) for x in (out / "tune.jsonl").read_text().splitlines()][1:]
    by_id = {r["id"]: r for r in rows}
    assert by_id["patchcore-lite0-80x80"]["size"] == [80, 80]
    assert by_id["patchcore-lite0-pad0"]["size"] is None
    assert all(r["status"] == "done" for r in rows), said

    from station.detectors.registry import load_recipe
    from station.tuning.report import variant_text

    # whichever is chosen, a variant keeps its candidate's input size
    for cid, size in (("patchcore-lite0-80x80", (80, 80)), ("patchcore-lite0-pad0", (64, 64))):
        variant = out / f"{cid}.yaml"
        variant.write_text(variant_text(load_recipe(recipe), by_id[cid], "test"))
        tuned = load_recipe(str(variant))
        assert tuned.preprocess.size == size
        assert tuned.detectors[0].params == by_id[cid]["entry"]["params"]
    assert load_recipe(str(out / f"{recipe}-tuned.yaml")).name == "tinysize-tuned"
