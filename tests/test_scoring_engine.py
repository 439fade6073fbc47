"""The scoring engine: batching, preprocessing once, results in input order, guarded faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_inspection_support import BrightSpot, sheet

from station.detectors.engine import ScoringEngine, load_images
from station.errors import DetectorError, StationError
from station.geometry.tiling import tile_grid
from station.imaging import preprocess_mask, write_png
from station.recipe import PreprocessConfig, TilingConfig

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


TILED = PreprocessConfig(
    size=(32, 32), grey_to_rgb=False, tiling=TilingConfig(enabled=True, overlap_px=8)
)


def tiled_engine(batch_size: int = 5, fault_hint: str | None = None) -> ScoringEngine:
    det = BrightSpot(size=1)  # a pointwise map: tiles stitched must give the whole-shot map
    det.mean = 100.0
    return ScoringEngine({"bright": det}, TILED, batch_size=batch_size, fault_hint=fault_hint)


def test_tiles_are_batched_across_shots_and_stitched_at_native_size() -> None:
    eng = tiled_engine(batch_size=5)
    shots = [eng.prepare(sheet(defect=i == 1, h=64, w=96, seed=i)) for i in range(3)]
    assert shots[0].shape == (64, 96)  # tiling: no resize
    per_shot = len(tile_grid(64, 96, (32, 32), 8))
    seen: list[tuple[int, int]] = []
    res = eng.score(shots, progress=lambda d, n: seen.append((d, n)))["bright"]
    assert eng.detectors["bright"].calls == -(-3 * per_shot // 5)  # type: ignore[attr-defined]
    assert seen[-1] == (3, 3) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    whole = eng.detectors["bright"].predict(np.stack(shots))
    assert isinstance(res.maps, np.ndarray) and res.maps.shape == (3, 64, 96)
    np.testing.assert_allclose(res.maps, whole.maps, atol=1e-6)
    np.testing.assert_allclose(res.scores, whole.scores, rtol=1e-6)  # max over the tiles
    assert res.scores[1] > max(res.scores[0], res.scores[2])
    one_by_one = tiled_engine(batch_size=1).score(shots)["bright"]
    np.testing.assert_allclose(one_by_one.maps, res.maps, atol=1e-6)


def test_tiled_files_may_differ_in_size_but_must_hold_a_tile(tmp_path: Path) -> None:
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    write_png(files[0], sheet(defect=True, h=48, w=64))
    write_png(files[1], sheet(defect=False, h=40, w=100, seed=1))
    res = tiled_engine().score_files(files, keep_maps=True)["bright"]
    assert isinstance(res.maps, list) and [m.shape for m in res.maps] == [(48, 64), (40, 100)]
    assert res.map(1).shape == (40, 100) and res.scores[0] > res.scores[1]
    assert tiled_engine().score_files(files)["bright"].maps is None
    loaded = load_images(files, TILED)
    assert [i.shape for i in loaded] == [(48, 64), (40, 100)]
    write_png(files[1], sheet(defect=False, h=20, w=100))
    with pytest.raises(StationError, match=r"b\.png is 100 x 20 px .* smaller than the 32 x 32"):
        tiled_engine().score_files(files)
    with pytest.raises(StationError, match="smaller than the 32 x 32 tile"):
        load_images(files, TILED)


def test_tiled_faults_are_guarded_like_whole_shots() -> None:
    guarded = tiled_engine(fault_hint="check the model")
    guarded.detectors["bright"].fail_with = RuntimeError("CUDA error")  # type: ignore[attr-defined]
    with pytest.raises(DetectorError, match="detector bright failed: RuntimeError: CUDA error"):
        guarded.score(guarded.prepare(sheet(defect=False))[None])


def test_tiled_masks_stay_at_native_size() -> None:
    mask = np.zeros((48, 64), np.uint8)
    mask[5:9, 7:11] = 255
    out = preprocess_mask(mask, TILED)
    assert out.shape == (48, 64) and out.sum() == 16 and out.max() == 1
    cropped = TILED.model_copy(update={"crop": (4, 0, 40, 48)})
    assert preprocess_mask(mask, cropped).shape == (48, 40)
