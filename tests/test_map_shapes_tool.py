"""tools/map_shapes.py: one PatchCore's patch distances drawn into maps of other shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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


def test_each_shape_from_one_distance_by_hand() -> None:
    tool = load_tool("map_shapes")
    d = torch.zeros(2, 1, 16, 16)
    d[0, 0, 8, 8] = 1.0  # one far patch in the first image; the second image is all 0.5
    d[1] = 0.5
    maps = tool.draw(d, (128, 128))
    assert list(maps) == ["sigma 4", "sigma 8", "sigma 16", "sigma 32", "sigma 4+16",
                          "image mean"]  # fmt: skip
    # the wider the smoothing, the wider the spot: its spread (second moment) grows with sigma
    ys, xs = np.mgrid[0:128, 0:128]

    def spread(m: np.ndarray) -> float:
        w = m / m.sum()
        cy, cx = (w * ys).sum(), (w * xs).sum()
        return float((w * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum())

    spreads = [spread(maps[f"sigma {s}"][0]) for s in (4, 8, 16, 32)]
    assert spreads == sorted(spreads) and spreads[-1] > 4 * spreads[0]
    np.testing.assert_allclose(maps["sigma 4+16"], (maps["sigma 4"] + maps["sigma 16"]) / 2)
    assert np.allclose(maps["image mean"][0], 1 / 256) and np.allclose(maps["image mean"][1], 0.5)
    assert np.allclose(maps["sigma 8"][1], 0.5, atol=1e-4)  # a flat grid stays flat
    rows = {"a": {"x": 0.8, "y": 0.6}, "b": {"x": 0.6, "y": 0.9}}
    assert tool.mean_rows(rows) == pytest.approx({"x": 0.7, "y": 0.75})
