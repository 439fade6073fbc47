"""tools/nearest_images.py: patch distances restricted to each image's nearest training images,
laid out as an evaluate run that tools/ensemble_scores.py reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from baseline_runs import SIZE, checked_run, make_category, speck, write_recipe
from tool_module import load_tool

from station.imaging import write_png


def test_scores_compare_only_with_the_nearest_images() -> None:
    tool = load_tool("nearest_images")
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 5, 4, generator=g)  # three gallery images of five patches
    means = torch.tensor([[0.0, 0, 0, 0], [10.0, 0, 0, 0], [20.0, 0, 0, 0]])
    # image 0's own patches, described as lying nearest image 1
    query = tool.Described(patches[:1].clone(), torch.tensor([[9.0, 0, 0, 0]]), (1, 5))
    gallery = tool.Described(patches, means, (1, 5))
    only_nearest = tool.distances(gallery, query, k=1).amax(1)
    two_nearest = tool.distances(gallery, query, k=2).amax(1)
    everything = tool.distances(gallery, query, k=10).amax(1)  # beyond the gallery
    expected = torch.cdist(patches[0], patches[1]).min(1).values.max()
    assert only_nearest[0] == pytest.approx(float(expected), rel=1e-5)
    assert only_nearest[0] > 0.5
    assert two_nearest[0] == pytest.approx(0.0, abs=1e-3)  # images 1 and 0: its own patches
    assert everything[0] == pytest.approx(0.0, abs=1e-3)


def test_tool_writes_an_evaluate_like_run(tmp_path: Path, station_home: Path) -> None:
    tool = load_tool("nearest_images")
    cat = make_category(tmp_path / "data" / "weave", "speck", speck)
    recipe = write_recipe(station_home, "nearest-test")
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(cat.parent), "--threads", "1", "--k", "5"]
    assert tool.main([*argv, "--out", str(out)]) == 0

    doc, row, _ = checked_run(out, "nearest")
    assert doc["k"] == 5
    assert row["image_auroc"] == 1.0  # every speck above every good weave

    assert math.isnan(row["pixel_auroc"])  # no maps asked for

    with pytest.raises(SystemExit, match="--k must be at least 1"):
        tool.main([*argv[:-1], "0", "--out", str(out)])
    with pytest.raises(SystemExit, match="--maps needs a mask"):
        tool.main([*argv, "--maps", "--out", str(out)])


def test_maps_find_the_speck(tmp_path: Path, station_home: Path) -> None:
    tool = load_tool("nearest_images")
    cat = make_category(tmp_path / "data" / "weave", "speck", speck)
    mask = speck(np.full((SIZE, SIZE), 255, np.uint8)) == 0
    for i in range(4):
        write_png(cat / "ground_truth" / "speck" / f"d{i}_mask.png", mask.astype(np.uint8) * 255)
    recipe = write_recipe(station_home, "nearest-test")
    argv = ["--recipe", str(recipe), "--dataset", str(cat.parent), "--threads", "1", "--k", "5"]
    assert tool.main([*argv, "--maps", "--out", str(tmp_path / "out")]) == 0
    _, row, _ = checked_run(tmp_path / "out", "nearest")
    assert row["pixel_auroc"] > 0.9  # the speck's pixels above the weave's
