"""tools/global_gaussian.py: the global Gaussian baseline on a generated folder, its output
laid out as an evaluate run that tools/ensemble_scores.py reads (with its --spread table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from baseline_runs import checked_run, make_category, write_recipe
from tool_module import load_tool


def darker(img: np.ndarray) -> np.ndarray:
    """A change of the whole surface: what a pooled statistic sees."""
    return (img.astype(np.int16) - 60).clip(0, 255).astype(np.uint8)


def test_scores_a_category_and_feeds_the_ensemble_tool(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gaussian, ensemble_scores = load_tool("global_gaussian"), load_tool("ensemble_scores")
    data = make_category(tmp_path / "data" / "weave", "uneven", darker)
    recipe = write_recipe(station_home, "gauss-test")
    out = tmp_path / "out"
    fitted: list[int] = []  # images each stage's Gaussian is fitted on
    distances: list[np.ndarray] = []  # per stage: the held-out images', then the test images'

    class Recorded(gaussian.LedoitWolf):
        def fit(self, x, y=None):  # noqa: ANN001, ANN202
            fitted.append(len(x))
            return super().fit(x, y)

        def mahalanobis(self, x):  # noqa: ANN001, ANN202
            distances.append(super().mahalanobis(x))
            return distances[-1]

    monkeypatch.setattr(gaussian, "LedoitWolf", Recorded)
    argv = ["--recipe", str(recipe), "--dataset", str(data.parent), "--threads", "1"]
    assert gaussian.main([*argv, "--out", str(out)]) == 0
    # one Gaussian per backbone stage (Lite0: 7), each on the 18 training images not held out
    assert fitted == [18] * 7
    held = np.sum(distances[0::2], axis=0)  # a score is the sum over the seven stages
    assert len(held) == 2

    doc, row, rows = checked_run(out, "gaussian")
    assert doc["backbone"] == "efficientnet_lite0" and doc["pool"] == "meanstd"
    assert row["image_auroc"] == 1.0  # every darkened image beyond every good one
    assert row["fr_recall_100"] == 0.0

    # --spread: the good test images' standardised scores, by hand from scores.csv
    good = row["model"]["good_scores"]
    assert (good["mean"], good["std"]) == pytest.approx((held.mean(), held.std()))
    test_scores = [float(r["score"]) for r in rows]
    assert test_scores == pytest.approx(np.sum(distances[1::2], axis=0).tolist(), rel=1e-5)
    z = [(float(r["score"]) - good["mean"]) / good["std"] for r in rows if r["label"] == "good"]
    runs = ensemble_scores.read_runs([f"gaussian={out}"])
    lines = ensemble_scores.good_spread(runs, ["weave"])
    assert lines[-1] == f"| gaussian | {np.median(z):.1f} / {np.percentile(z, 95):.1f} |"
