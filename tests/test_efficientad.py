"""EfficientAD on small synthetic woven textures (teacher distilled from real efficientnet_lite0
weights, CPU, few steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import textures
import torch

from station.detectors.artifact import load_artifact, save_artifact
from station.detectors.efficientad import EfficientAD
from station.detectors.efficientad_net import (
    AutoEncoder,
    hard_mse,
    lr_schedule,
    pdn,
    pdn_out_size,
)
from station.detectors.registry import available_detectors, create_detector
from station.errors import DetectorError

SIZE = 64
SMALL: dict[str, Any] = {
    "device": "cpu",
    "distill_steps": 12,
    "distill_batch": 2,
    "distill_lr": 1e-3,
    "steps": 12,
    "lr": 1e-3,
    "min_split_images": 4,
    "val_fraction": 0.25,
}


def weave(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return textures.weave(rng, n, size)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A scratch station home for the teacher cache (module scope, so fits can share it)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("effad_home")
    mp.setenv("STATION_HOME", str(path))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield path
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return weave(np.random.default_rng(0), 8)


@pytest.fixture(scope="module")
def trained(home: Path, train_images: np.ndarray) -> tuple[EfficientAD, Any]:
    det = create_detector("efficientad", **SMALL)
    assert isinstance(det, EfficientAD)
    report = det.fit(train_images)
    return det, report


def test_registered() -> None:
    assert "efficientad" in available_detectors()


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "medium"])
def test_pdn_grid_and_receptive_field(size: str) -> None:
    net = pdn(size, 384)
    assert net(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)
    assert pdn_out_size(256) == 56 and pdn_out_size(SIZE) == 8
    # Positive weights keep every ReLU open, so the input gradient of one output cell is
    # non-zero exactly on its receptive field: 33 x 33 px starting at 4 * cell index.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.fill_(0.1)
    x = torch.ones(1, 3, SIZE, SIZE, requires_grad=True)
    net(x)[0, :, 3, 5].sum().backward()
    assert x.grad is not None
    rows, cols = torch.nonzero(x.grad[0, 0] > 0, as_tuple=True)
    assert (int(rows.min()), int(rows.max())) == (12, 12 + 32)
    assert (int(cols.min()), int(cols.max())) == (20, 20 + 32)


def test_autoencoder_reaches_the_pdn_grid() -> None:
    ae = AutoEncoder((SIZE, SIZE), (8, 8))
    assert ae(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 384, 8, 8)
    ae = AutoEncoder((256, 256), (56, 56))
    assert ae(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)
    assert ae.encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 64, 1, 1)


def test_hard_mse_keeps_only_the_hardest() -> None:
    d = torch.arange(1000, dtype=torch.float32)
    assert float(hard_mse(d, 0.999)) == pytest.approx(999.0)
    assert float(hard_mse(d, 0.99)) == pytest.approx(float(d[990:].mean()))


@pytest.mark.parametrize("kind", ["cosine", "paper"])
def test_lr_schedules(kind: str) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_schedule(opt, 100, kind)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if kind == "paper":
        assert lrs[0] == lrs[94] == 1.0 and lrs[95] == lrs[99] == pytest.approx(0.1)
    else:  # warm-up over 5 steps to the full lr, then a monotone decay towards 1 %
        assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
        assert 0.01 <= lrs[99] < 0.02


@pytest.mark.slow
def test_fit_report_and_distillation(trained: tuple[EfficientAD, Any]) -> None:
    det, report = trained
    assert report.n_images == 8 and report.extra["n_validation"] == 2
    assert report.extra["teacher_from_cache"] is False
    hist = report.extra["distill_history"]
    assert len(hist) == SMALL["distill_steps"]
    # The teacher learns the backbone features (median: single augmented batches are noisy).
    assert np.median(hist[-6:]) < 0.8 * np.mean(hist[:2])
    assert report.extra["grid"] == [8, 8]
    q = report.extra["quantiles"]
    assert q["st_b"] > q["st_a"] and q["ae_b"] > q["ae_a"]
    assert len(report.good_scores) == 2 and all(np.isfinite(report.good_scores))


def test_maps_scores_and_defects(trained: tuple[EfficientAD, Any]) -> None:
    det, _ = trained
    good = weave(np.random.default_rng(5), 4)
    bad = good.copy()
    bad[:, 20:30, 16:48] = 250  # a bright bar across the weave
    bad[:, 40:44, 10:30] = 10
    pg, pb = det.predict(good), det.predict(bad)
    assert pg.maps.shape == (4, SIZE, SIZE) and pg.maps.dtype == np.float32
    assert np.allclose(pg.scores, pg.maps.reshape(4, -1).max(1))
    assert pb.scores.min() > pg.scores.max()
    # The defect region holds the map's maximum.
    for m in pb.maps:
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert 12 <= y <= 52 and 4 <= x <= 56
    # an off-centre spot is high where it is, not where a mirrored map would put it
    spot = good.copy()
    spot[:, 14:26, 14:26] = 15
    for m in det.predict(spot).maps:
        inside = m[14:26, 14:26].mean()
        assert inside > m[38:50, 14:26].mean() and inside > m[14:26, 38:50].mean()


@pytest.mark.slow
def test_teacher_cache_is_reused(
    home: Path, trained: tuple[EfficientAD, Any], train_images: np.ndarray
) -> None:
    det, report = trained
    files = list((home / "data" / "weights").glob("efficientad_teacher_*.pt"))
    assert [f.name for f in files] == [f"efficientad_teacher_{report.extra['teacher_key']}.pt"]
    again = create_detector("efficientad", **{**SMALL, "steps": 2})
    rep2 = again.fit(train_images)
    assert rep2.extra["teacher_from_cache"] is True
    assert rep2.extra["distill_seconds"] == 0.0
    assert rep2.extra["teacher_key"] == report.extra["teacher_key"]
    assert det.teacher is not None and again.teacher is not None
    first, second = det.teacher.state_dict(), again.teacher.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Other training images: another key, so a fresh distillation.
    other = create_detector("efficientad", **{**SMALL, "steps": 1, "distill_steps": 1})
    rep3 = other.fit(weave(np.random.default_rng(9), 8))
    assert rep3.extra["teacher_from_cache"] is False
    assert rep3.extra["teacher_key"] != report.extra["teacher_key"]


def test_save_load_roundtrip(trained: tuple[EfficientAD, Any], tmp_path: Path) -> None:
    det, _ = trained
    path = tmp_path / "m.pt"
    save_artifact(det, path, {"version": "efficientad-test"})
    loaded = load_artifact(path).detector
    imgs = weave(np.random.default_rng(3), 3)
    a, b = det.predict(imgs), loaded.predict(imgs)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)
    assert loaded.config() == det.config()


def test_bad_input(trained: tuple[EfficientAD, Any]) -> None:
    det, _ = trained
    with pytest.raises(DetectorError, match="trained on 64 x 64"):
        det.predict(weave(np.random.default_rng(1), 1, size=72))
    fresh = create_detector("efficientad", device="cpu")
    with pytest.raises(DetectorError, match="predict before fit"):
        fresh.predict(weave(np.random.default_rng(1), 1))
    with pytest.raises(DetectorError, match="not trained"):
        fresh.state_dict()
    with pytest.raises(DetectorError, match="too small"):
        fresh.fit(weave(np.random.default_rng(1), 2, size=48))
    with pytest.raises(DetectorError, match="model_size"):
        create_detector("efficientad", device="cpu", model_size="large")
    with pytest.raises(DetectorError, match="schedule"):
        create_detector("efficientad", device="cpu", schedule="linear")
