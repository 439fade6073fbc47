"""tools/nearest_images.py: patch distances restricted to each image's nearest training images,
laid out as an evaluate run that tools/ensemble_scores.py reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from textures import plain_weave
from tool_module import load_tool

from station.imaging import write_png

SIZE = 64
RECIPE = """extends: glassfiber
name: nearest-test
preprocess: {crop: null, size: [64, 64], tiling: {enabled: false}}
detectors:
  - {name: patchcore, backbone: efficientnet_lite0, weights: package, device: cpu}
"""


def test_scores_compare_only_with_the_nearest_images() -> None:
    tool = load_tool("nearest_images")
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 5, 4, generator=g)  # three gallery images of five patches
    means = torch.tensor([[0.0, 0, 0, 0], [10.0, 0, 0, 0], [20.0, 0, 0, 0]])
    # image 0's own patches, described as lying nearest image 1
    query = (patches[:1].clone(), torch.tensor([[9.0, 0, 0, 0]]))
    only_nearest = tool.scores((patches, means), query, k=1)
    two_nearest = tool.scores((patches, means), query, k=2)
    everything = tool.scores((patches, means), query, k=10)  # k beyond the gallery: all of it
    expected = torch.cdist(patches[0], patches[1]).min(1).values.max()
    assert only_nearest[0] == pytest.approx(float(expected), rel=1e-5)
    assert only_nearest[0] > 0.5
    assert two_nearest[0] == pytest.approx(0.0, abs=1e-3)  # images 1 and 0: its own patches
    assert everything[0] == pytest.approx(0.0, abs=1e-3)


def test_tool_writes_an_evaluate_like_run(tmp_path: Path, station_home: Path) -> None:
    tool, ensemble_scores = load_tool("nearest_images"), load_tool("ensemble_scores")
    cat = tmp_path / "data" / "weave"
    for i in range(20):
        write_png(cat / "train" / "good" / f"g{i:02d}.png", plain_weave(i, SIZE))
    for i in range(4):
        write_png(cat / "test" / "good" / f"t{i}.png", plain_weave(100 + i, SIZE))
        spotted = plain_weave(200 + i, SIZE).copy()
        spotted[20:34, 24:38] = 0  # a dark speck on an otherwise good weave
        write_png(cat / "test" / "speck" / f"d{i}.png", spotted)
    recipe = station_home / "recipes" / "nearest-test.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(cat.parent), "--threads", "1", "--k", "5"]
    assert tool.main([*argv, "--out", str(out)]) == 0

    doc = json.loads((out / "results.json").read_text())
    assert doc["k"] == 5
    row = doc["categories"]["weave"]["nearest"]
    assert row["image_auroc"] == 1.0  # every speck above every good weave
    good = row["model"]["good_scores"]
    assert good["n"] == 2 and good["std"] > 0  # 10 % of 20 training images held out
    with (out / "weave" / "nearest" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["defect"] * 4 + ["good"] * 4
    runs = ensemble_scores.read_runs([f"nearest={out}"])
    assert runs["nearest"]["weave"][0] == {"mean": good["mean"], "std": good["std"]}

    with pytest.raises(SystemExit, match="--k must be at least 1"):
        tool.main([*argv[:-1], "0", "--out", str(out)])
