"""tools/tune_labelled.py: users who label a few defects and let `tune --choose-on real` pick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tool_module import load_tool


def candidate(cid: str, synthetic_shift: float, speed: float, seed: int) -> dict:
    """A finished tune candidate: 50 held-out good scores and 100 synthetic defects
    `synthetic_shift` above them."""
    rng = np.random.default_rng(seed)
    good, syn = rng.normal(0, 1, 50), rng.normal(synthetic_shift, 1, 100)
    return {
        "type": "candidate",
        "id": cid,
        "status": "done",
        "auroc": float((syn[:, None] > good[None, :]).mean()),
        "fr100": {},
        "throughput": speed,
        "scores": {"good": good.tolist(), "synthetic": syn.tolist(), "real": []},
    }


def write_tune(folder: Path, records: list[dict], test: dict[str, np.ndarray], labels) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"type": "run"}), *(json.dumps(r) for r in records)]
    (folder / "tune.jsonl").write_text("\n".join(lines) + "\n")
    check = folder / "check.json"
    rows = [{"id": k, "scores": v.tolist()} for k, v in test.items()]
    check.write_text(json.dumps({"rows": rows, "labels": [int(v) for v in labels]}))
    return check


def run_tool(folder: Path, records: list[dict], means: dict, n: tuple[int, int], *opts: str):
    """tools/tune_labelled.py on a test split of n = (good, defective) images whose scores
    sit at `means[candidate]` = (good mean, defect mean); its JSON output."""
    labels = np.r_[np.zeros(n[0], int), np.ones(n[1], int)]
    rng = np.random.default_rng(3)
    test = {c: np.r_[rng.normal(g, 1, n[0]), rng.normal(d, 1, n[1])] for c, (g, d) in means.items()}
    check = write_tune(folder, records, test, labels)
    out = folder / "labelled.json"
    args = ["--tune", str(folder), "--check", str(check), "--json", str(out), *opts]
    assert load_tool("tune_labelled").main(args) == 0
    return json.loads(out.read_text())


def test_a_few_real_defects_find_what_the_synthetic_set_misses(tmp_path: Path) -> None:
    # "syn" leads on synthetic defects but barely sees the real ones; "real" sees them all.
    records = [candidate("syn", 3.0, 10.0, 1), candidate("real", 1.5, 10.0, 2)]
    means = {"syn": (0.0, 0.3), "real": (0.0, 5.0)}
    got = run_tool(tmp_path / "t", records, means, (60, 12), "--k", "1,3,11", "--draws", "50")
    assert got["n_defects"] == 12
    assert [r["k"] for r in got["rows"]] == [1, 3]  # 11 leaves one defect to judge on
    for row in got["rows"]:
        assert row["gap_synthetic"] > 0.3 and row["within_synthetic"] == 0.0
        assert row["gap_real"] == 0.0 and row["within_real"] == 1.0
        assert row["real_better"] == 1.0 and row["real_worse"] == 0.0


def test_a_check_without_test_scores_is_refused(tmp_path: Path) -> None:
    tool = load_tool("tune_labelled")
    check = write_tune(tmp_path / "t", [candidate("a", 2.0, 1.0, 1)], {}, [])
    check.write_text(json.dumps({"rows": [{"id": "a", "real": 0.9}]}))
    with pytest.raises(SystemExit, match="run tools/tune_check.py --json again"):
        tool.main(["--tune", str(tmp_path / "t"), "--check", str(check)])


def test_good_images_from_the_same_production_as_the_reference(tmp_path: Path) -> None:
    """A candidate whose good scores rise from the training images to the later good test
    images looks best against the held-out training images; against good images drawn from
    the test split (`--goods`) the steady one wins."""
    records = [candidate("shifty", 2.0, 10.0, 1), candidate("steady", 2.0, 10.0, 2)]
    means = {"shifty": (3.0, 3.5), "steady": (0.0, 2.5)}
    gaps = {}
    for goods in (0, 30):
        opts = ("--k", "5", "--goods", str(goods), "--draws", "40")
        (row,) = run_tool(tmp_path / f"g{goods}", records, means, (80, 20), *opts)["rows"]
        assert row["goods"] == goods
        gaps[goods] = row["gap_real"]
    assert gaps[0] > 0.2 and gaps[30] < 0.05, gaps


def test_the_picks_are_judged_without_the_images_their_user_labelled() -> None:
    tool = load_tool("tune_labelled")
    labels = np.array([0, 0, 1, 1])
    scores = {"a": np.array([0.0, 1.0, 5.0, 0.5])}
    # all four: 3 of 4 (good, defect) pairs in order; without the drawn defect (5.0): 1 of 2
    assert tool.rest_aurocs(scores, labels, np.array([], int))["a"] == 0.75
    assert tool.rest_aurocs(scores, labels, np.array([2]))["a"] == 0.5
