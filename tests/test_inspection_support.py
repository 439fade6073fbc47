"""Shared helpers for the inspection tests (imported by test_inspection_*.py).

`BrightSpot` is a tiny real detector for tests: it learns the mean grey level of good images
and maps how much brighter than that each neighbourhood is. Defects in the test images are
bright squares, so its verdicts are known in advance without a trained network.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from station.detectors.base import Detector, FitReport, Prediction
from station.inspection.models import DetectorSet, LoadedDetector
from station.recipe import Recipe, parse_recipe
from station.storage.db import open_database


class BrightSpot(Detector):
    name = "brightspot"

    def __init__(self, size: int = 5) -> None:
        self.size = size
        self.mean = 0.0
        self.fail_with: Exception | None = None  # raise this from predict (detector fault)
        self.nan = False  # return NaN maps and scores (a numerically broken model)
        self.nan_cells = False  # NaN in a corner of the map, a finite score all the same
        self.calls = 0
        self.threads: set[str] = set()
        self.delay_s = 0.0  # make predict slow (to see the pipelining overlap)
        self.intervals: list[tuple[float, float]] = []  # perf_counter start, end of predict

    def _grey(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        return x.mean(axis=-1) if x.ndim == 4 else x

    def fit(self, images: Sequence[np.ndarray], progress: Any = None) -> FitReport:
        self.mean = float(np.mean([self._grey(np.asarray(i)[None]).mean() for i in images]))
        return FitReport(n_images=len(images), seconds=0.0)

    def predict(self, images: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail_with is not None:
            raise self.fail_with
        if self.delay_s:
            time.sleep(self.delay_s)
        grey = self._grey(images)
        k = (self.size, self.size)
        maps = np.stack([cv2.blur(np.clip(g - self.mean, 0, None) / 255.0, k) for g in grey])
        maps = maps.astype(np.float32)
        if self.nan:
            maps[:] = np.nan
        scores = maps.reshape(len(maps), -1).max(axis=1)
        if self.nan_cells:
            maps[:, :2, :2] = np.nan
        self.intervals.append((t0, time.perf_counter()))
        return Prediction(maps=maps, scores=scores)

    def config(self) -> dict[str, Any]:
        return {"size": self.size}

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = float(state["mean"])


def small_recipe(home: Path, **overrides: Any) -> Recipe:
    """The shipped recipe, made small and fast: 64x48 camera, 32x32 detector input, no waits."""
    data = yaml.safe_load((home / "recipes" / "glassfiber.yaml").read_text())
    data["camera"].update(width=64, height=48)
    data["preprocess"].update(size=[32, 32], tiling={"enabled": False})  # resized, not tiled
    data["twin"].update(time_scale=0.0)
    # the three poses and the lens these tests were written for, whatever the shipped plan
    data["robot"].pop("poses_file", None)
    data["robot"]["poses"] = [
        {"name": n, "position_mm": [400.0 + d, 1.0 * d / 2, 350.0], "rotvec_rad": [math.pi, 0, 0]}
        for n, d in (("left", -12.0), ("centre", 0.0), ("right", 12.0))
    ]
    data["camera"]["lens"].update(focal_length_mm=12.0, focus_distance_mm=350.0)
    # the region: what the centre view sees (6.4 x 4.8 mm); a part with more of its region
    # unseen is faulted as not inspected
    data["coverage"] = {"region_mm": [-3.0, -2.2, 3.0, 2.2], "partial": True}
    # no drift reference card: these small views could not see it (test_drift switches it on)
    data.setdefault("monitoring", {}).setdefault("drift", {})["reference"] = {"enabled": False}
    data["storage"] = {"database_url": f"sqlite:///{home}/data/station.db", "data_dir": "data"}
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    text = yaml.safe_dump(data)
    path = home / "recipes" / "small.yaml"
    path.write_text(text)
    return parse_recipe(text, str(path))


def bright_set(recipe: Recipe, threshold: float = 0.3, mean: float = 100.0) -> DetectorSet:
    det = BrightSpot()
    det.mean = mean
    return DetectorSet(
        detectors=[LoadedDetector("brightspot", det, "brightspot-test-1", threshold)],
        preprocess_cfg=recipe.preprocess,
    )


def sheet(defect: bool, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A grey 'sheet' around level 100, with a white square when `defect`."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(100, 3, (h, w)), 0, 255).astype(np.uint8)
    if defect:
        img[10:22, 20:34] = 250
    return img


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`station ARGV` in this process: its exit code and everything it printed."""
    from station.cli.app import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def database(recipe: Recipe):  # noqa: ANN201
    return open_database(recipe.storage.resolved_database_url())
