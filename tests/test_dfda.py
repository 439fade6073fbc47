"""DFDA-AD: K-means, attention modules and the detector on small synthetic woven textures
(real efficientnet_lite0 + mobilenet_v2 weights, CPU)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import textures
import torch

from station.detectors.dfda import (
    DFDA,
    ChannelSpatialAttention,
    QueryKeyAttention,
    choose_k,
    elbow_k,
    kmeans,
)
from station.detectors.registry import available_detectors, create_detector
from station.errors import DetectorError

SIZE = 96
SMALL: dict[str, Any] = {
    "device": "cpu",
    "k_candidates": (2, 4, 8, 16, 32),
    "attention_epochs": 3,
    "attention_batch": 4,
}


def weave(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return textures.weave(rng, n, size)


def blobs(n_per: int, centres: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = [c + spread * torch.randn(n_per, centres.shape[1], generator=g) for c in centres]
    return torch.cat(pts)


# Tiny matrices: one torch thread is faster, and far faster on a loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return weave(np.random.default_rng(0), 12)


@pytest.fixture(scope="module")
def trained(one_thread: Any, train_images: np.ndarray) -> tuple[DFDA, Any]:
    det = create_detector("dfda", **SMALL)
    assert isinstance(det, DFDA)
    return det, det.fit(train_images)


# -- K-means ----------------------------------------------------------------------------------


def test_kmeans_converges_and_finds_the_blobs() -> None:
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = blobs(200, true, 0.5, seed=1)
    res = kmeans(x, 4, max_iter=100, seed=3)
    assert res.converged and res.n_iter < 100
    # Every true centre has a found centre within a fraction of the spread.
    d = torch.cdist(true, res.centres).amin(1)
    assert float(d.max()) < 0.2
    # Lloyd iterations never increase the inertia.
    h = np.asarray(res.history)
    assert np.all(np.diff(h) <= 1e-6 * h[0])
    assert torch.bincount(res.labels, minlength=4).min() == 200


def test_kmeans_is_seeded_and_clips_k() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    a, b = kmeans(x, 7, seed=11), kmeans(x, 7, seed=11)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.labels, b.labels)
    few = kmeans(x[:3], 10)
    assert few.centres.shape == (3, 5) and few.inertia == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DetectorError):
        kmeans(torch.zeros(0, 3), 2)


def test_kmeans_respects_the_iteration_cap() -> None:
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1))
    res = kmeans(x, 50, max_iter=2, seed=0, tol=0.0)
    assert res.n_iter == 2 and not res.converged


def test_elbow_finds_the_number_of_clusters() -> None:
    true = torch.randn(16, 6, generator=torch.Generator().manual_seed(5)) * 20
    x = blobs(60, true, 0.5, seed=2)
    k, inertias = choose_k(x, (2, 4, 8, 16, 32, 64), seed=0)
    assert k == 16
    assert inertias[16] < 0.05 * inertias[2]
    assert elbow_k([4, 8], [2.0, 1.0]) == 8  # too few points for an elbow: the largest


# -- attention modules ------------------------------------------------------------------------


def test_attention_modules_keep_shape_and_gate_into_zero_one() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 40, 12, 12)
    cb = ChannelSpatialAttention(40)
    y = cb(x)
    assert y.shape == x.shape and torch.all(y <= x + 1e-6) and torch.all(y >= 0)
    qk = QueryKeyAttention(40, dim=16)
    w = qk.weights(x)
    assert w.shape == (2, 1, 12, 12) and torch.all((w > 0) & (w < 1))
    assert qk(x).shape == x.shape
    # Three fully connected layers in the channel MLP.
    assert sum(isinstance(m, torch.nn.Linear) for m in cb.mlp) == 3


# -- the detector -----------------------------------------------------------------------------


def test_registered_and_bad_config() -> None:
    assert "dfda" in available_detectors()
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", k=0)
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", val_fraction=1.5)


def test_grid_is_28_at_224_and_features_concatenate_both_branches() -> None:
    det = create_detector("dfda", device="cpu")
    assert isinstance(det, DFDA)
    x = torch.rand(1, 3, 224, 224)
    a, b = det.branch_maps(x)
    assert a.shape[-2:] == (28, 28) and b.shape[-2:] == (14, 14)
    z = det.fuse(a, b)
    assert z.shape == (1, a.shape[1] + b.shape[1], 28, 28)
    ident = det.backbone.identity
    assert ident["backbone"] == "efficientnet_lite0+mobilenet_v2"
    assert set(ident["branches"]) == {"cbam", "query_key"}


def test_fit_report_and_prediction_shapes(trained: tuple[DFDA, Any]) -> None:
    det, rep = trained
    assert rep.n_images == 12 and rep.extra["n_val"] >= 1
    assert rep.extra["k_from"] == "elbow" and rep.extra["k"] in SMALL["k_candidates"]
    assert rep.extra["kmeans_converged"] and rep.extra["kmeans_iterations"] <= 100
    losses = rep.extra["attention_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the self-supervised objective falls
    pred = det.predict(weave(np.random.default_rng(9), 3))
    assert pred.maps.shape == (3, SIZE, SIZE) and pred.maps.dtype == np.float32
    assert np.allclose(pred.scores, pred.maps.reshape(3, -1).max(1))


def test_injected_defects_score_higher_than_training_images(
    trained: tuple[DFDA, Any], train_images: np.ndarray
) -> None:
    det, _ = trained
    good = det.predict(train_images).scores
    bad = weave(np.random.default_rng(4), 4)
    boxes = [(20, 20), (50, 30), (30, 60), (60, 60)]
    for i, (y, x) in enumerate(boxes):
        bad[i, y : y + 14, x : x + 14] = 250 if i % 2 == 0 else 10
    pred = det.predict(bad)
    assert pred.scores.min() > good.max()
    for i, (y, x) in enumerate(boxes):  # the map is hotter on the defect than off it
        inside = np.zeros((SIZE, SIZE), bool)
        inside[y : y + 14, x : x + 14] = True
        assert pred.maps[i][inside].mean() > 1.2 * pred.maps[i][~inside].mean()


def test_same_seed_same_model(train_images: np.ndarray, trained: tuple[DFDA, Any]) -> None:
    det, _ = trained
    other = create_detector("dfda", **SMALL)
    other.fit(train_images)
    test = weave(np.random.default_rng(7), 2)
    assert np.array_equal(det.predict(test).maps, other.predict(test).maps)
    third = create_detector("dfda", **{**SMALL, "seed": 5})
    assert not torch.equal(third.cbam.mlp[0].weight, det.cbam.mlp[0].weight)


def test_state_round_trip(trained: tuple[DFDA, Any]) -> None:
    det, _ = trained
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    fresh = create_detector("dfda", **det.config())
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    test = weave(np.random.default_rng(8), 2)
    assert np.allclose(det.predict(test).maps, fresh.predict(test).maps, atol=1e-5)
    bad = det.state_dict()
    bad["centres"] = bad["centres"][:, :5]
    with pytest.raises(DetectorError):
        fresh.load_state_dict(bad)
    bad = det.state_dict()
    bad["backbone_identity"]["b"]["weights_sha256"] = "0" * 64
    with pytest.raises(DetectorError):
        fresh.load_state_dict(bad)


def test_unfitted_and_wrong_size(trained: tuple[DFDA, Any]) -> None:
    det, _ = trained
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu").predict(weave(np.random.default_rng(1), 1))
    with pytest.raises(DetectorError):
        det.predict(weave(np.random.default_rng(1), 1, size=64))


def test_ablation_switches_change_the_features(train_images: np.ndarray) -> None:
    x = torch.from_numpy(np.repeat(train_images[:2, None], 3, 1)).float() / 255
    full = create_detector("dfda", device="cpu")
    plain = create_detector("dfda", device="cpu", use_cbam=False, use_query_key=False)
    a, b = full.branch_maps(x)
    ref = torch.cat([a, torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear")], 1)
    assert torch.allclose(plain.fuse(a, b), ref)
    assert not torch.allclose(full.fuse(a, b), ref)
