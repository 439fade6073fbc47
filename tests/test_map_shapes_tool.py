"""tools/map_shapes.py: one PatchCore's patch distances drawn into maps of other shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from baseline_runs import SIZE, make_category, speck, write_recipe
from tool_module import load_tool

from station.imaging import read_image, write_png


def test_local_specks_are_found_by_local_maps_and_not_by_the_image_mean(
    tmp_path: Path, station_home: Path
) -> None:
    tool = load_tool("map_shapes")
    cat = make_category(tmp_path / "data" / "weave", "speck", speck)
    mask = np.where(speck(np.full((SIZE, SIZE), 255, np.uint8)) == 0, 255, 0).astype(np.uint8)
    for i in range(4):
        write_png(cat / "ground_truth" / "speck" / f"d{i}_mask.png", mask)
    recipe = write_recipe(station_home, "shapes-test")
    out = tmp_path / "out.json"
    argv = ["--recipe", str(recipe), "--dataset", str(cat), "--out", str(tmp_path / "m")]
    assert tool.main([*argv, "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    row = doc["rows"]["weave"]
    assert list(row) == ["shipped", "sigma 4", "sigma 8", "sigma 16", "sigma 32",
                         "sigma 4+16", "image mean"]  # fmt: skip
    assert doc["mean"] == row  # one category
    assert row["shipped"] > 0.9 and row["sigma 4"] > 0.9
    # a speck covers 5 % of its image: a map with no location ranks the rest of it as high
    assert row["image mean"] < row["sigma 4"] - 0.2

    tiled = write_recipe(station_home, "shapes-tiled", tiled=True)
    for p in [*(cat / "test").rglob("*.png"), *(cat / "ground_truth").rglob("*.png")]:
        write_png(p, np.concatenate([read_image(p)] * 2, axis=1))  # two tiles wide
    with pytest.raises(SystemExit, match="cut into tiles"):
        tool.main(["--recipe", str(tiled), "--dataset", str(cat), "--out", str(tmp_path / "m")])
