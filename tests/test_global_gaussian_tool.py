"""tools/global_gaussian.py: the global Gaussian baseline on a generated folder, its output
laid out as an evaluate run that tools/ensemble_scores.py reads (with its --spread table)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from textures import plain_weave
from tool_module import load_tool

from station.imaging import write_png

SIZE = 64
RECIPE = """extends: glassfiber
name: gauss-test
preprocess: {crop: null, size: [64, 64], tiling: {enabled: false}}
detectors:
  - {name: patchcore, backbone: efficientnet_lite0, weights: package, device: cpu}
"""


def make_category(root: Path) -> Path:
    for i in range(20):
        write_png(root / "train" / "good" / f"g{i:02d}.png", plain_weave(i, SIZE))
    for i in range(4):
        write_png(root / "test" / "good" / f"t{i}.png", plain_weave(100 + i, SIZE))
        # a change of the whole surface: what a pooled statistic sees
        darker = (plain_weave(200 + i, SIZE).astype(np.int16) - 60).clip(0, 255)
        write_png(root / "test" / "uneven" / f"d{i}.png", darker.astype(np.uint8))
    return root


def test_scores_a_category_and_feeds_the_ensemble_tool(station_home: Path, tmp_path: Path) -> None:
    gaussian, ensemble_scores = load_tool("global_gaussian"), load_tool("ensemble_scores")
    data = make_category(tmp_path / "data" / "weave")
    recipe = station_home / "recipes" / "gauss-test.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(data.parent), "--threads", "1"]
    assert gaussian.main([*argv, "--out", str(out)]) == 0

    doc = json.loads((out / "results.json").read_text())
    assert doc["backbone"] == "efficientnet_lite0" and doc["pool"] == "meanstd"
    row = doc["categories"]["weave"]["gaussian"]
    assert row["image_auroc"] == 1.0  # every darkened image beyond every good one
    assert row["fr_recall_100"] == 0.0
    good = row["model"]["good_scores"]
    assert good["n"] == 2 and good["std"] > 0  # 10 % of 20 training images held out
    with (out / "weave" / "gaussian" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["defect"] * 4 + ["good"] * 4

    runs = ensemble_scores.read_runs([f"gaussian={out}"])
    stats, scored = runs["gaussian"]["weave"]
    assert stats == {"mean": good["mean"], "std": good["std"]}
    assert len(scored) == 8 and sum(label for label, _ in scored.values()) == 4

    # --spread: the good test images' standardised scores, by hand from scores.csv
    z = [(float(r["score"]) - good["mean"]) / good["std"] for r in rows if r["label"] == "good"]
    lines = ensemble_scores.good_spread(runs, ["weave"])
    assert lines[-1] == f"| gaussian | {np.median(z):.1f} / {np.percentile(z, 95):.1f} |"
