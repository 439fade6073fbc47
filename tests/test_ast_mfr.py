"""AST-MFR on small synthetic woven textures (real pretrained weights, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import textures
import torch

from station.detectors.artifact import load_artifact, save_artifact
from station.detectors.ast_mfr import ASTMFR, pick_student, stage_layers
from station.detectors.ast_mfr_model import MFRBlock, Projection, distance_map, random_mask
from station.detectors.registry import KNOWN_DETECTORS, available_detectors, create_detector
from station.errors import DetectorError

SIZE = 64
SMALL: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "device": "cpu",
    "epochs": 12,
    "batch_size": 4,
    "min_steps_per_epoch": 3,
    "val_fraction": 0.2,
}


def weave(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return textures.weave(rng, n, size)


def with_defect(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark, flat 14 x 14 patch (a foreign body) and its mask, in the upper half (so that a
    map mirrored top to bottom would put it elsewhere)."""
    out = img.copy()
    mask = np.zeros(img.shape, bool)
    mask[10:24, 24:38] = True
    out[mask] = 20
    return out, mask


# Tiny matrices: one torch thread is faster, and far faster on a loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return weave(np.random.default_rng(0), 10)


@pytest.fixture(scope="module")
def trained(one_thread: Any, train_images: np.ndarray) -> tuple[ASTMFR, Any]:
    det = create_detector("ast_mfr", **SMALL)
    assert isinstance(det, ASTMFR)
    report = det.fit(train_images)
    return det, report


def test_registered_and_known_to_recipes() -> None:
    assert "ast_mfr" in available_detectors()
    assert "ast_mfr" in KNOWN_DETECTORS


def test_random_mask_rate_honoured() -> None:
    gen = torch.Generator().manual_seed(1)
    for rate in (0.1, 0.3, 0.5, 0.7):
        m = random_mask(8, 64, 64, rate, torch.device("cpu"), gen)
        assert m.shape == (8, 1, 64, 64)
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert float((m == 0).float().mean()) == pytest.approx(rate, abs=0.02)


def _input_to_generator(block: MFRBlock, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = block.generate.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    try:
        block(x)
    finally:
        handle.remove()
    return seen[0]


def test_mfr_block_masks_whole_positions_in_training_only() -> None:
    block = MFRBlock(6, 5, mask_rate=0.4)
    block.generator = torch.Generator().manual_seed(2)
    x = torch.rand(4, 6, 32, 32) + 0.1  # no zeros of its own
    block.train()
    masked = _input_to_generator(block, x)
    zero_pos = (masked == 0).all(dim=1)
    # all channels of a position are masked together, at the configured rate
    assert torch.equal((masked == 0).any(dim=1), zero_pos)
    assert float(zero_pos.float().mean()) == pytest.approx(0.4, abs=0.04)
    kept = ~zero_pos[:, None].expand_as(x)
    assert torch.equal(masked[kept], x[kept])
    # inference: the generation block sees the features untouched
    block.eval()
    assert torch.equal(_input_to_generator(block, x), x)
    assert block(x).shape == (4, 5, 32, 32)


def test_distance_map_values() -> None:
    a = torch.randn(2, 7, 3, 3)
    assert distance_map(a, a * 3.0, 1.0).abs().max() < 1e-5  # scale-free, identical -> 0
    # opposite vectors: cosine distance 2, 0.5 * |2u|^2 = 2
    assert torch.allclose(distance_map(a, -a, 1.0), torch.full((2, 3, 3), 4.0), atol=1e-5)
    assert torch.allclose(distance_map(a, -a, 0.0), torch.full((2, 3, 3), 2.0), atol=1e-5)


@pytest.mark.slow
def test_pair_is_asymmetric_and_recorded(trained: tuple[ASTMFR, Any]) -> None:
    det, report = trained
    cfg = det.config()
    assert cfg["backbone"] == "efficientnet_lite0"
    assert cfg["student"] not in ("auto", "efficientnet_lite0")
    assert report.extra["pair"] == {
        "teacher": "efficientnet_lite0",
        "student": cfg["student"],
        "asymmetric": True,
    }
    assert det.teacher.layers == list(stage_layers("efficientnet_lite0"))
    assert det.student.layers == list(stage_layers(cfg["student"]))
    assert det.teacher.strides == det.student.strides == [4, 8, 16]
    assert pick_student("efficientnet_lite0") != "efficientnet_lite0"
    assert all(isinstance(h, MFRBlock) for h in det.heads)


def test_loss_decreases_on_good_images(trained: tuple[ASTMFR, Any]) -> None:
    _, report = trained
    hist = report.extra["loss_history"]
    assert len(hist) == SMALL["epochs"]
    assert hist[-1] < 0.6 * hist[0]
    assert report.extra["n_validation"] == 2 and len(report.good_scores) == 2


def test_student_backbone_trained(trained: tuple[ASTMFR, Any]) -> None:
    det, _ = trained
    changed = [
        k for k, v in det.student.state_dict().items() if not torch.equal(v, det._student_init[k])
    ]
    assert changed  # the paper trains the student, not only the MFR blocks


def test_maps_low_on_training_images_high_on_defects(
    trained: tuple[ASTMFR, Any], train_images: np.ndarray
) -> None:
    det, _ = trained
    good = det.predict(train_images)
    assert good.maps.shape == (10, SIZE, SIZE) and good.maps.dtype == np.float32
    assert np.allclose(good.scores, good.maps.reshape(10, -1).max(1))
    fresh = weave(np.random.default_rng(5), 4)
    defects = [with_defect(img) for img in fresh]
    bad = det.predict(np.stack([d[0] for d in defects]))
    clean = det.predict(fresh)
    # image level: every defect image scores above every good one
    assert bad.scores.min() > max(good.scores.max(), clean.scores.max())
    for amap, (_, mask) in zip(bad.maps, defects, strict=True):
        # pixel level: the defect is where the map is high; the training images stay near 0
        assert amap[mask].mean() > 2.0 * amap[~mask].mean()
        assert amap[mask].mean() > 3.0 * good.maps.mean()
        assert amap[mask].mean() > 2.0 * amap[40:54, 24:38].mean()  # not its mirror image


def test_no_masking_at_inference_deterministic(
    trained: tuple[ASTMFR, Any], train_images: np.ndarray
) -> None:
    det, _ = trained
    a = det.predict(train_images[:3])
    b = det.predict(train_images[:3])
    assert np.array_equal(a.maps, b.maps)


def test_artifact_roundtrip(trained: tuple[ASTMFR, Any], tmp_path: Path) -> None:
    det, _ = trained
    imgs = weave(np.random.default_rng(9), 2)
    before = det.predict(imgs)
    path = tmp_path / "m.pt"
    save_artifact(det, path, {"version": "ast_mfr-test"})
    loaded = load_artifact(path)
    assert loaded.detector.config() == det.config()
    after = loaded.detector.predict(imgs)
    assert np.allclose(before.maps, after.maps, atol=1e-5)
    state = loaded.detector.state_dict()
    assert state["pair"]["student"] == det.config()["student"]
    assert state["student_identity"]["weights_sha256"] == det.student.identity["weights_sha256"]


@pytest.mark.slow
def test_ablation_variants_build_and_frozen_student_trains(train_images: np.ndarray) -> None:
    sym = create_detector(
        "ast_mfr", **{**SMALL, "student": "efficientnet_lite0", "epochs": 1, "val_fraction": 0}
    )
    assert isinstance(sym, ASTMFR) and sym.pair["asymmetric"] is False
    no_mfr = create_detector(
        "ast_mfr", **{**SMALL, "mfr": False, "train_student": False, "epochs": 3}
    )
    assert isinstance(no_mfr, ASTMFR)
    assert all(isinstance(h, Projection) for h in no_mfr.heads)
    report = no_mfr.fit(train_images)
    assert report.extra["loss_history"][-1] < report.extra["loss_history"][0]
    # the frozen student keeps its pretrained weights
    assert all(
        torch.equal(v, no_mfr._student_init[k]) for k, v in no_mfr.student.state_dict().items()
    )
    assert "student" not in no_mfr.state_dict()


def test_bad_input() -> None:
    with pytest.raises(DetectorError, match="mask_rate"):
        create_detector("ast_mfr", **{**SMALL, "mask_rate": 1.0})
    with pytest.raises(DetectorError, match="unknown parameter"):
        create_detector("ast_mfr", **{**SMALL, "masking": 0.3})
    with pytest.raises(DetectorError, match="unknown backbone"):
        create_detector("ast_mfr", **{**SMALL, "student": "resnext50"})
    det = create_detector("ast_mfr", **SMALL)
    with pytest.raises(DetectorError, match="before fit"):
        det.predict(weave(np.random.default_rng(1), 1))
