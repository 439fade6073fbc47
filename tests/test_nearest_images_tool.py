"""tools/nearest_images.py: patch distances restricted to each image's nearest training images,
laid out as an evaluate run that tools/ensemble_scores.py reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from baseline_runs import checked_run, make_category, speck, write_recipe
from tool_module import load_tool


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
    tool = load_tool("nearest_images")
    cat = make_category(tmp_path / "data" / "weave", "speck", speck)
    recipe = write_recipe(station_home, "nearest-test")
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(cat.parent), "--threads", "1", "--k", "5"]
    assert tool.main([*argv, "--out", str(out)]) == 0

    doc, row, _ = checked_run(out, "nearest")
    assert doc["k"] == 5
    assert row["image_auroc"] == 1.0  # every speck above every good weave

    with pytest.raises(SystemExit, match="--k must be at least 1"):
        tool.main([*argv[:-1], "0", "--out", str(out)])
