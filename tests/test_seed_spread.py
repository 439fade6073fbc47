"""The spread of `station evaluate --seeds`: values per seed, mean, sample sd, worst, partial."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from station.calibration.evaluation import Evaluation
from station.calibration.recipes import load_recipe
from station.calibration.seed_spread import SeedSpread, parse_seeds, with_seed
from station.errors import StationError


def finished_run(per_category: dict[str, dict[str, float]]) -> Evaluation:
    """An Evaluation as `evaluate` leaves it: per-category metrics and their means."""
    recipe = load_recipe("glassfiber")
    run = Evaluation(recipe, list(recipe.detectors), Path("set"), True, Path("out"), "stamp")
    run.results = {c: {"patchcore": m} for c, m in per_category.items()}
    keys = {k for m in per_category.values() for k in m}
    run.means = {
        "patchcore": {
            k: sum(m[k] for m in per_category.values()) / len(per_category) for k in keys
        }
    }
    return run


def test_spread_by_hand() -> None:
    spread = SeedSpread([4, 7, 9])
    table = [((0.90, 0.2), (0.80, 0.4)), ((0.94, 0.1), (0.70, 0.5)), ((0.92, 0.3), (0.75, 0.6))]
    spread.runs = [
        finished_run(
            {
                cat: {"image_auroc": auroc, "fr_recall_100": fr}
                for cat, (auroc, fr) in zip("ab", per_cat, strict=True)
            }
        )
        for per_cat in table
    ]
    summary = spread.summary()
    a = summary["categories"]["a"]["patchcore"]["image_auroc"]
    assert a["values"] == [0.90, 0.94, 0.92]
    assert a["mean"] == pytest.approx(0.92) and a["sd"] == pytest.approx(0.02)
    mean = summary["mean"]["patchcore"]["image_auroc"]
    assert mean["values"] == pytest.approx([0.85, 0.82, 0.835])
    assert mean["sd"] == pytest.approx(0.015)
    assert summary["worst"]["patchcore"]["image_auroc"]["values"] == [0.80, 0.70, 0.75]
    fr = summary["mean"]["patchcore"]["fr_recall_100"]
    assert fr["mean"] == pytest.approx(0.35)
    # a metric no run has (no masks: no pixel AUROC) is reported as missing, not as a number
    pixel = summary["categories"]["b"]["patchcore"]["pixel_auroc"]
    assert pixel == {"values": [None, None, None], "mean": None, "sd": None}
    md = spread.markdown()
    assert "with seeds 4 / 7 / 9" in md
    assert "| a | patchcore | 0.900 / 0.940 / 0.920 (0.920 +- 0.020) |" in md
    assert "| **worst** | patchcore | 0.800 / 0.700 / 0.750 (0.750 +- 0.050) | n/a |" in md


def test_a_partial_run_reports_the_seeds_it_has(tmp_path: Path) -> None:
    spread = SeedSpread([0, 1, 2])
    spread.runs = [
        finished_run({"a": {"image_auroc": 0.9}}),
        finished_run({"a": {"image_auroc": math.nan}}),  # e.g. no defective test image
    ]
    assert spread.done == [0, 1]
    assert math.isnan(spread.worst("patchcore")[1])  # no AUROC in that run: nothing to rank
    spread.write(tmp_path)
    doc = json.loads((tmp_path / "seeds.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["requested"] == [0, 1, 2] and doc["complete"] is False
    assert doc["spread"]["categories"]["a"]["patchcore"]["image_auroc"]["values"] == [0.9, None]
    assert "with seeds 0 / 1\n" in (tmp_path / "seeds.md").read_text()


def test_seeds_option_and_detector_copies() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 5, 6 ") == [5, 6]
    for bad in ("1", "0,0", "a,b", "-1,2", ""):
        with pytest.raises(StationError, match="--seeds"):
            parse_seeds(bad)
    recipe = load_recipe("glassfiber")
    copies = with_seed(recipe.detectors, 7)
    assert [d.params["seed"] for d in copies] == [7] * len(copies)
    assert "seed" not in recipe.detectors[0].params  # the recipe itself is left as it was
    assert copies[0].params["coreset_ratio"] == recipe.detectors[0].params["coreset_ratio"]
