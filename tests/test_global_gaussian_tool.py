"""tools/global_gaussian.py: the global Gaussian baseline on a generated folder, its output
laid out as an evaluate run that tools/ensemble_scores.py reads (with its --spread table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from baseline_runs import checked_run, make_category, write_recipe
from tool_module import load_tool


def darker(img: np.ndarray) -> np.ndarray:
    """A change of the whole surface: what a pooled statistic sees."""
    return (img.astype(np.int16) - 60).clip(0, 255).astype(np.uint8)


def test_scores_a_category_and_feeds_the_ensemble_tool(station_home: Path, tmp_path: Path) -> None:
    gaussian, ensemble_scores = load_tool("global_gaussian"), load_tool("ensemble_scores")
    data = make_category(tmp_path / "data" / "weave", "uneven", darker)
    recipe = write_recipe(station_home, "gauss-test")
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(data.parent), "--threads", "1"]
    assert gaussian.main([*argv, "--out", str(out)]) == 0

    doc, row, rows = checked_run(out, "gaussian")
    assert doc["backbone"] == "efficientnet_lite0" and doc["pool"] == "meanstd"
    assert row["image_auroc"] == 1.0  # every darkened image beyond every good one
    assert row["fr_recall_100"] == 0.0

    # --spread: the good test images' standardised scores, by hand from scores.csv
    good = row["model"]["good_scores"]
    z = [(float(r["score"]) - good["mean"]) / good["std"] for r in rows if r["label"] == "good"]
    runs = ensemble_scores.read_runs([f"gaussian={out}"])
    lines = ensemble_scores.good_spread(runs, ["weave"])
    assert lines[-1] == f"| gaussian | {np.median(z):.1f} / {np.percentile(z, 95):.1f} |"
