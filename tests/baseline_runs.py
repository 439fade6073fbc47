"""Shared by the tests of the baseline tools (global_gaussian, nearest_images, native_tiles):
a generated category, a small recipe, and the checks every evaluate-like run must pass."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from textures import plain_weave
from tool_module import load_tool

from station.imaging import write_png

SIZE = 64


def write_recipe(station_home: Path, name: str, tiled: bool = False) -> Path:
    """A recipe whose PatchCore runs Lite0 on whole 64 px images (`tiled`: on 64 px tiles of
    images at their own size)."""
    path = station_home / "recipes" / f"{name}.yaml"
    path.write_text(
        f"extends: glassfiber\nname: {name}\n"
        f"preprocess: {{crop: null, size: [{SIZE}, {SIZE}], "
        f"tiling: {{enabled: {str(tiled).lower()}}}}}\n"
        "detectors:\n"
        "  - {name: patchcore, backbone: efficientnet_lite0, weights: package, device: cpu}\n"
    )
    return path


def speck(img: np.ndarray) -> np.ndarray:
    """A dark speck on an otherwise good weave (rows 20-33, columns 24-37)."""
    out = img.copy()
    out[20:34, 24:38] = 0
    return out


def make_category(root: Path, kind: str, defect: Callable[[np.ndarray], np.ndarray]) -> Path:
    """20 good training weaves, 4 good test weaves and 4 test weaves changed by `defect`."""
    for i in range(20):
        write_png(root / "train" / "good" / f"g{i:02d}.png", plain_weave(i, SIZE))
    for i in range(4):
        write_png(root / "test" / "good" / f"t{i}.png", plain_weave(100 + i, SIZE))
        write_png(root / "test" / kind / f"d{i}.png", defect(plain_weave(200 + i, SIZE)))
    return root


def checked_run(out: Path, det: str) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """(results.json, the category's row, scores.csv rows) of a run on one `make_category`,
    after the checks every such run passes: 10 % of the 20 training images held out, four good
    and four defective test images scored, and `ensemble_scores` reading the same statistics."""
    doc = json.loads((out / "results.json").read_text())
    row = doc["categories"]["weave"][det]
    good = row["model"]["good_scores"]
    assert good["n"] == 2 and good["std"] > 0
    with (out / "weave" / det / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["defect"] * 4 + ["good"] * 4
    stats, scored = load_tool("ensemble_scores").read_runs([f"{det}={out}"])[det]["weave"]
    assert stats == {"mean": good["mean"], "std": good["std"]}
    assert len(scored) == 8 and sum(label for label, _ in scored.values()) == 4
    return doc, row, rows
