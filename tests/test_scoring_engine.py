"""The scoring engine: batching, preprocessing once, results in input order, guarded faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_inspection_support import BrightSpot, sheet

from station.detectors.engine import ScoringEngine, load_images
from station.errors import DetectorError, StationError
from station.imaging import write_png
from station.recipe import PreprocessConfig

CFG = PreprocessConfig(size=(32, 24), grey_to_rgb=False)


def engine(batch_size: int = 3, fault_hint: str | None = None) -> ScoringEngine:
    det = BrightSpot()
    det.mean = 100.0
    return ScoringEngine({"bright": det}, CFG, batch_size=batch_size, fault_hint=fault_hint)


def test_batches_keep_order_and_match_one_call() -> None:
    images = [prepared(sheet(defect=i % 2 == 1, seed=i)) for i in range(7)]
    eng = engine(batch_size=3)
    seen: list[tuple[int, int]] = []
    res = eng.score(images, progress=lambda d, n: seen.append((d, n)))["bright"]
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert eng.detectors["bright"].calls == 3  # type: ignore[attr-defined]
    one = engine(batch_size=16).score(np.stack(images))["bright"]
    assert res.maps is not None and res.maps.shape == (7, 24, 32)
    assert np.array_equal(res.scores, one.scores) and np.array_equal(res.maps, one.maps)
    assert res.scores[1::2].min() > res.scores[0::2].max()  # defects score higher
    assert res.latency_ms >= 0.0


def test_score_files_reads_and_preprocesses_like_load_images(tmp_path: Path) -> None:
    files = []
    for i in range(5):
        files.append(tmp_path / f"s{i}.png")
        write_png(files[-1], sheet(defect=i == 2, h=48, w=64, seed=i))
    by_file = engine(batch_size=2).score_files(files)["bright"]
    loaded = engine(batch_size=2).score(load_images(files, CFG))["bright"]
    assert by_file.maps is None  # not kept by default: bounded memory over a folder
    assert np.array_equal(by_file.scores, loaded.scores)
    write_png(files[3], np.zeros((48, 64, 3), np.uint8))  # colour among grey: refused
    with pytest.raises(StationError, match="s3.png"):
        engine(batch_size=2).score_files(files)


def test_faults_name_the_detector_only_when_guarded() -> None:
    x = prepared(sheet(defect=False))[None]
    eng = engine()
    eng.detectors["bright"].fail_with = RuntimeError("CUDA error")  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        eng.score(x)
    guarded = engine(fault_hint="check the model")
    guarded.detectors["bright"].fail_with = RuntimeError("CUDA error")  # type: ignore[attr-defined]
    with pytest.raises(DetectorError, match="detector bright failed: RuntimeError: CUDA error"):
        guarded.score(x)


def prepared(image: np.ndarray) -> np.ndarray:
    return engine().prepare(image)
