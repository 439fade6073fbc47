"""DFDA-AD: K-means, attention modules and the detector on small synthetic woven textures
(real efficientnet_lite0 + mobilenet_v2 weights, CPU)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import textures
import torch

from station.detectors.dfda import DFDA
from station.detectors.dfda_faults import (
    SYNTHETIC_KINDS,
    patch_labels,
    separation_loss,
    synthetic_defect,
)
from station.detectors.dfda_fit import Branches
from station.detectors.dfda_net import ChannelSpatialAttention, QueryKeyAttention
from station.detectors.kmeans import choose_k, elbow_k, kmeans
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


@pytest.mark.parametrize("standardize", [True, False])
def test_standardized_spatial_gate_ignores_the_image_level(standardize: bool) -> None:
    """With `standardize`, the spatial gate sees each pooled map relative to its own image, so
    scaling a whole image leaves the gate (and, with a constant channel gate, the output up to
    the same scale) unchanged; the plain gate reads absolute levels."""
    torch.manual_seed(0)
    cb = ChannelSpatialAttention(40, standardize=standardize)
    with torch.no_grad():  # constant channel gate (0.5), so only the spatial gate can differ
        torch.nn.init.zeros_(cb.mlp[-1].weight)
        torch.nn.init.zeros_(cb.mlp[-1].bias)
    x = torch.rand(2, 40, 12, 12)
    same = torch.allclose(cb(3.0 * x), 3.0 * cb(x), atol=1e-5)
    assert same == standardize


# -- the detector -----------------------------------------------------------------------------


def test_registered_and_bad_config() -> None:
    assert "dfda" in available_detectors()
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", k=0)
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", val_fraction=1.5)
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", attention_init="zeros")


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


@pytest.mark.slow
def test_fit_report_and_prediction_shapes(trained: tuple[DFDA, Any]) -> None:
    det, rep = trained
    assert rep.n_images == 12 and rep.extra["n_val"] >= 1
    assert rep.extra["k_from"] == "synthetic-fault validation"
    assert rep.extra["k"] in SMALL["k_candidates"]
    assert set(rep.extra["k_separation"]) == {str(k) for k in SMALL["k_candidates"]}
    assert rep.extra["kmeans_converged"] and rep.extra["kmeans_iterations"] <= 100
    # The objective over the whole training set, fresh centres: before training, then after
    # each epoch (it falls on real fabric; on 11 tiny images it is too noisy to assert).
    losses, margins = rep.extra["attention_losses"], rep.extra["attention_margins"]
    assert len(losses) == len(margins) == 4 and all(np.isfinite(losses))
    assert 0.5 < rep.extra["synthetic_val"]["patch_auroc"] <= 1.0
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_ablation_switches_change_the_features(train_images: np.ndarray) -> None:
    x = torch.from_numpy(np.repeat(train_images[:2, None], 3, 1)).float() / 255
    rand = create_detector("dfda", device="cpu")  # random initialisation by default
    plain = create_detector("dfda", device="cpu", use_cbam=False, use_query_key=False)
    neutral = create_detector("dfda", device="cpu", attention_init="neutral")
    a, b = rand.branch_maps(x)
    ref = torch.cat([a, torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear")], 1)
    assert torch.allclose(plain.fuse(a, b), ref)
    assert not torch.allclose(rand.fuse(a, b), ref)
    # Neutral initialisation: untrained gates are a constant 0.5 (CBAM: 0.5 x 0.5).
    z = neutral.fuse(a, b)
    ca = a.shape[1]
    assert torch.allclose(z[:, :ca], 0.25 * ref[:, :ca], atol=1e-6)
    assert torch.allclose(z[:, ca:], 0.5 * ref[:, ca:], atol=1e-6)


# -- synthetic faults and the training objective ----------------------------------------------


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_synthetic_fault_mask_is_exactly_the_changed_pixels(kind: str) -> None:
    imgs = weave(np.random.default_rng(3), 2)
    for i in range(6):
        img = imgs[0] if i % 2 == 0 else np.repeat(imgs[0][:, :, None], 3, 2)  # grey and RGB
        out, mask = synthetic_defect(img, np.random.default_rng(i), imgs[1], kinds=[kind])
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
        diff = np.abs(out.astype(int) - img.astype(int))
        changed = diff.max(axis=2) if diff.ndim == 3 else diff
        assert mask.any() and np.array_equal(changed > 0, mask)
        assert changed[mask].min() >= 8  # every masked pixel visibly changed
        assert mask.mean() < 0.5  # a local fault, not the whole image
    a, ma = synthetic_defect(imgs[0], np.random.default_rng(5), imgs[1])
    b, mb = synthetic_defect(imgs[0], np.random.default_rng(5), imgs[1])
    assert np.array_equal(a, b) and np.array_equal(ma, mb)  # seeded
    with pytest.raises(DetectorError):
        synthetic_defect(imgs[0], np.random.default_rng(0), kinds=["scratch"])
    with pytest.raises(DetectorError):
        create_detector("dfda", device="cpu", synthetic_kinds=["scratch"])


def test_flat_image_still_gets_a_fault() -> None:
    flat = np.full((32, 32), 255, np.uint8)
    out, mask = synthetic_defect(flat, np.random.default_rng(0), kinds=["blur"])
    assert mask.any() and np.array_equal(out != flat, mask)


def test_patch_labels_mark_fault_cells_and_keep_a_ring_out() -> None:
    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, 30:34, 8:56] = True  # a horizontal line through rows of cells 3 and 4 (8 px cells)
    defect, good = patch_labels(m, (8, 8))
    assert defect[0, 3, 1:7].all() and defect[0, 4, 1:7].all()
    assert not defect[0, :3].any() and not defect[0, 5:].any()
    assert not good[0, 1:7].any()  # within two cells of the fault: neither
    assert good[0, 0].all() and good[0, 7].all() and not (defect & good).any()


def test_separation_loss_is_scale_free_and_ranks() -> None:
    g = torch.Generator().manual_seed(0)
    good = torch.rand(500, generator=g)
    far, near = torch.full((20,), 3.0), torch.full((20,), 0.9)
    loss_far, margin_far = separation_loss(good, far)
    loss_near, margin_near = separation_loss(good, near)
    assert loss_far < loss_near and margin_far > margin_near
    loss_scaled, margin_scaled = separation_loss(7.0 * good, 7.0 * far)
    assert torch.isclose(loss_scaled, loss_far, atol=1e-5)
    assert margin_scaled == pytest.approx(margin_far, abs=1e-4)
    # The gradient pushes fault distances up.
    d = far.clone().requires_grad_(True)
    separation_loss(good, d)[0].backward()
    assert d.grad is not None and bool((d.grad < 0).all())


@pytest.mark.slow
def test_attention_steps_lower_the_objective_and_widen_the_margin(
    train_images: np.ndarray,
) -> None:
    det = create_detector("dfda", device="cpu", attention_init="neutral")
    assert isinstance(det, DFDA)
    det.image_hw = (SIZE, SIZE)
    imgs = list(train_images)
    clean = det._branches(imgs)
    bad = det._branches(*det._faults(imgs, np.random.default_rng(1)))
    ref = Branches(clean.a, clean.b)
    centres = det._epoch_centres(clean, ref, 8, 144, np.random.default_rng(0))
    loss0, margin0 = det._objective(clean, bad, centres)
    params = list(det.cbam.parameters()) + list(det.qk.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    every = torch.arange(len(imgs))
    for _ in range(15):
        assert det._attention_step(clean, bad, ref, every, centres, opt) is not None
    with torch.no_grad():
        det.scales = det._ref_scales(ref)
    loss1, margin1 = det._objective(clean, bad, centres)
    assert loss1 < 0.9 * loss0 and margin1 > margin0
    assert float(det.qk.key.weight.detach().abs().sum()) > 0  # left the neutral start


@pytest.mark.slow
def test_untrained_attention_reports_no_training(train_images: np.ndarray) -> None:
    det = create_detector("dfda", **{**SMALL, "k": 4, "attention_epochs": 0})
    rep = det.fit(train_images)
    assert rep.extra["attention_losses"] == [] and rep.extra["synthetic_val_before"] == {}
    assert rep.extra["k_from"] == "config" and rep.extra["k"] == 4
    elbow = create_detector("dfda", **{**SMALL, "k": "elbow", "attention_epochs": 0})
    rep = elbow.fit(train_images)
    assert rep.extra["k_from"] == "elbow" and str(rep.extra["k"]) in rep.extra["k_inertias"]


@pytest.mark.slow
def test_k_falls_back_to_the_elbow_when_no_candidate_can_be_judged(
    train_images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny images: the synthetic faults may cover no held-out patch, so every separation is
    NaN. The fit says so and takes the elbow rule instead of failing."""
    det = create_detector("dfda", **{**SMALL, "attention_epochs": 0})
    nan = {"patch_auroc": math.nan, "image_auroc": math.nan, "mean": math.nan}
    monkeypatch.setattr(det, "_separation", lambda *a: dict(nan))
    rep = det.fit(train_images)
    assert rep.extra["k_from"] == "elbow (the synthetic faults covered no held-out patch)"
    assert rep.extra["k"] in SMALL["k_candidates"]
    # patches absent but whole images judged: the image AUROC decides
    by_k = {2: 0.6, 4: 0.9, 8: 0.9, 16: 0.7, 32: 0.5}

    def image_only(centres: torch.Tensor, *_: Any) -> dict[str, float]:
        return {"patch_auroc": math.nan, "image_auroc": by_k[len(centres)], "mean": math.nan}

    monkeypatch.setattr(det, "_separation", image_only)
    rep = det.fit(train_images)
    assert rep.extra["k_from"] == "synthetic-fault validation" and rep.extra["k"] == 4
