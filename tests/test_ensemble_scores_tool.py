"""tools/ensemble_scores.py: members' scores standardised by their own held-out good images,
then combined by the mean (the ensemble detector's rule), the max or a soft max."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tool_module import load_tool

from station.metrics import image_auroc

# two detectors, one category: four good images, four defective. b's second good image lies 4
# held-out sd out: the max lets it outrank three defects, the soft max two, the mean none.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
SCORES = {
    "a": [2.0, 1.0, 2.5, 2.0, 5.5, 5.0, 7.0, 4.0],
    "b": [11.0, 19.0, 12.0, 13.0, 18.0, 17.0, 13.0, 15.0],
}
HELD_OUT = {"a": (2.0, 1.0), "b": (11.0, 2.0)}  # (mean, std) of each one's held-out good scores


# a second category for the mean / worst columns: a's good images reach into its defects
FELT = {
    "a": [2.0, 6.0, 2.5, 3.0, 5.5, 5.0, 7.0, 4.0],
    "b": [11.0, 12.0, 12.0, 13.0, 18.0, 17.0, 13.0, 15.0],
}


def write_run(root: Path, det: str, felt: bool = False) -> Path:
    out = root / det
    mean, std = HELD_OUT[det]
    cats = {"weave": SCORES} | ({"felt": FELT} if felt else {})
    doc: dict = {"categories": {}}
    for cat, scores in cats.items():
        (out / cat / det).mkdir(parents=True)
        doc["categories"][cat] = {det: {"model": {"good_scores": {"mean": mean, "std": std}}}}
        rows = ["image,label,score"] + [
            f"img{i},{'defect' if y else 'good'},{s}"
            for i, (y, s) in enumerate(zip(LABELS, scores[det], strict=True))
        ]
        (out / cat / det / "scores.csv").write_text("\n".join(rows) + "\n")
    (out / "results.json").write_text(json.dumps(doc))
    return out


def by_hand(rule: str, scores: dict = SCORES) -> float:
    return image_auroc(combined_by_hand(rule, scores), np.array(LABELS))


def combined_by_hand(rule: str, scores: dict = SCORES) -> np.ndarray:
    z = np.array([(np.array(scores[d]) - HELD_OUT[d][0]) / HELD_OUT[d][1] for d in ("a", "b")])
    return {"mean": z.mean(0), "max": z.max(0), "logsumexp": np.log(np.exp(z).sum(0))}[rule]


def fr100_by_hand(combined: np.ndarray) -> float:
    """Good images at or above the lowest defect's score, over the good images."""
    labels = np.array(LABELS)
    return float((combined[labels == 0] >= combined[labels == 1].min()).mean())


def test_mean_worst_and_false_reject_columns_by_hand(tmp_path: Path) -> None:
    tool = load_tool("ensemble_scores")
    runs = tool.read_runs([f"{d}={write_run(tmp_path, d, felt=True)}" for d in ("a", "b")])
    for rule in tool.RULES:
        row = tool.table(runs, [("a", "b")], ["weave", "felt"], rule)[-1]
        cells = [c.strip() for c in row.strip("|").split("|")]
        per_cat = [combined_by_hand(rule, sc) for sc in (SCORES, FELT)]
        aucs = [image_auroc(c, np.array(LABELS)) for c in per_cat]
        frs = [fr100_by_hand(c) for c in per_cat]
        if rule == "mean":  # the columns can tell a mean from one category's figure
            assert aucs[0] != aucs[1] and frs[0] != frs[1]
        for cell, auc, fr in zip(cells[1:3], aucs, frs, strict=True):
            assert cell == f"{auc:.3f} / {fr:.2f}"
        assert cells[3:] == [f"{np.mean(aucs):.3f}", f"{min(aucs):.3f}", f"{np.mean(frs):.3f}"]
    # LABEL@DET: two runs of one detector side by side, each under its own label
    again = tool.read_runs([f"a={write_run(tmp_path / 'x', 'a')}",
                            f"other@a={write_run(tmp_path / 'y', 'a', felt=True)}"])
    assert sorted(again) == ["a", "other"] and sorted(again["other"]) == ["felt", "weave"]
    assert sorted(again["a"]) == ["weave"]


def test_rules_match_the_standardised_scores_by_hand(tmp_path: Path) -> None:
    tool = load_tool("ensemble_scores")
    runs = tool.read_runs([f"{d}={write_run(tmp_path, d)}" for d in ("a", "b")])
    aurocs = {}
    for rule in tool.RULES:
        row = tool.table(runs, [("a", "b")], ["weave"], rule)[-1]
        aurocs[rule] = float(row.split("|")[2].split("/")[0])
        assert aurocs[rule] == pytest.approx(by_hand(rule), abs=5e-4)
    assert aurocs == {"mean": 1.0, "logsumexp": 0.875, "max": 0.812}  # 16, 14, 13 of 16 pairs
    with pytest.raises(SystemExit, match="--rule must be one of"):
        tool.combine(np.zeros((2, 3)), "median")


def test_cli_names_its_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool("ensemble_scores")
    argv = [f"--runs=a={write_run(tmp_path, 'a')}", f"--runs=b={write_run(tmp_path, 'b')}"]
    assert tool.main([*argv, "--rule", "max", "--out", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    assert "members combined by max" in printed
    assert (tmp_path / "t.md").read_text().strip() == printed.strip()
