"""Nearest-neighbour search (station.detectors.knn): faiss exact agrees with torch, the IVF
index's recall, PatchCore's `knn` param (index built once per bank, a runtime setting that
loads old and new artifacts), and the errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from textures import plain_weave

from station.detectors import knn
from station.detectors.artifact import _check_settings, load_artifact, read_artifact, save_artifact
from station.detectors.patchcore import PatchCore
from station.errors import DetectorError

pytest.importorskip("faiss")
pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


def clustered(n: int, dim: int, seed: int, centres: int = 40) -> torch.Tensor:
    """Rows around a few centres, as patch features are (not uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, dim, generator=g) * 3
    pick = torch.randint(centres, (n,), generator=g)
    return c[pick] + torch.randn(n, dim, generator=g)


def weave(seed: int) -> np.ndarray:
    return plain_weave(seed, SIZE)


def defect(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[20:28, 16:40] = 20
    return out


@pytest.fixture(scope="module")
def fitted() -> PatchCore:
    det = PatchCore(device="cpu", knn="torch", max_bank=200, batch_size=4, val_fraction=0.25)
    det.fit([weave(s) for s in range(6)])
    return det


@pytest.mark.parametrize("k", [1, 9])
def test_faiss_flat_matches_torch(k: int) -> None:
    bank, queries = clustered(3000, 96, 0), clustered(700, 96, 1)
    d_t, i_t = knn.build_index(bank, "torch").search(queries, k)
    d_f, i_f = knn.build_index(bank, "faiss").search(queries, k)
    assert d_f.shape == d_t.shape == (700, k) and i_f.dtype == torch.int64
    torch.testing.assert_close(d_f, d_t, rtol=1e-4, atol=1e-3)
    # The same neighbour wherever the nearest two are not a float-rounding tie.
    d_all = torch.cdist(queries, bank)
    top2 = torch.topk(d_all, 2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert clear.float().mean() > 0.9
    assert torch.equal(i_f[clear, 0], i_t[clear, 0])


def test_ivf_recall_against_exact() -> None:
    bank, queries = clustered(4000, 64, 2), clustered(1000, 64, 3)
    ivf = knn.build_index(bank, "faiss_ivf")
    assert isinstance(ivf, knn.FaissIndex) and not ivf.exact and ivf.nlist == 64
    _, exact = knn.build_index(bank, "faiss").search(queries, 1)
    d, approx = ivf.search(queries, 1)
    recall = (approx[:, 0] == exact[:, 0]).float().mean().item()
    assert recall > 0.95
    # The same bank gives the same index (seeded k-means), so the same answers.
    d2, approx2 = knn.build_index(bank, "faiss_ivf").search(queries, 1)
    assert torch.equal(approx, approx2) and torch.equal(d, d2)
    # A bank too small for cells is searched exactly.
    assert knn.build_index(bank[:50], "faiss_ivf").nlist == 1


def test_patchcore_scores_agree_across_exact_searches(fitted: PatchCore) -> None:
    imgs = np.stack([defect(weave(100)), weave(101), weave(102)])
    ref = fitted.predict(imgs)
    fitted.model.knn = "faiss"
    try:
        out = fitted.predict(imgs)
        assert fitted.model.knn_index().method == "faiss"
    finally:
        fitted.model.knn = "torch"
    np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-4)
    np.testing.assert_allclose(out.maps, ref.maps, rtol=1e-3, atol=1e-4 * ref.maps.max())
    assert out.scores[0] > out.scores[1:].max()


def test_index_is_built_once_per_bank(fitted: PatchCore) -> None:
    model = fitted.model
    first = model.knn_index()
    fitted.predict(np.stack([weave(200)]))
    assert model.knn_index() is first  # no rebuild per call
    bank = model.memory_bank.clone()
    model.memory_bank = bank  # replaced (as a load does)
    second = model.knn_index()
    assert second is not first
    model.memory_bank.mul_(1.0)  # changed in place
    assert model.knn_index() is not second


def test_knn_is_a_runtime_setting(fitted: PatchCore, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_artifact(fitted, path, {"recipe": "r"})
    payload = read_artifact(path)
    assert payload["config"]["knn"] == "torch"
    # Another search loads the same model without retraining ...
    other = PatchCore(**{**payload["config"], "knn": "faiss"})
    other.load_state(payload)
    assert other.model.knn_index().method == "faiss"
    # ... a recipe asking for it is no settings change, and its value is the one used ...
    det_cfg = SimpleNamespace(
        name="patchcore",
        backbone=payload["config"]["backbone"],
        weights="auto",
        device="cpu",
        params={"knn": "faiss_ivf", "max_bank": 200, "batch_size": 4, "val_fraction": 0.25},
    )
    want = _check_settings(path, payload["config"], det_cfg, "r", PatchCore.runtime_settings)
    assert want["knn"] == "faiss_ivf"
    det_cfg.params["batch_size"] = 1  # nor is the batch size (per-image features)
    assert _check_settings(path, payload["config"], det_cfg, "r", PatchCore.runtime_settings)[
        "batch_size"
    ] == 1
    det_cfg.params["num_neighbors"] = 3  # ... while a model setting still is one
    with pytest.raises(DetectorError, match="num_neighbors"):
        _check_settings(path, payload["config"], det_cfg, "r", PatchCore.runtime_settings)
    # A model saved before the setting existed loads with the default (auto).
    del payload["config"]["knn"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_artifact(tmp_path / "old.pt").detector
    assert old.config()["knn"] == "auto"
    assert old.model.knn == "faiss"  # auto on the CPU with faiss installed


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DetectorError, match="knn must be one of"):
        PatchCore(device="cpu", knn="annoy")
    cuda = torch.device("cuda")  # resolving needs no GPU
    assert knn.resolve_knn("auto", cuda) == "torch"
    with pytest.raises(DetectorError, match="runs on the CPU"):
        knn.resolve_knn("faiss", cuda)
    real_import = knn.importlib.import_module

    def no_faiss(name: str) -> object:
        if name == "faiss":
            raise ImportError(name)
        return real_import(name)

    monkeypatch.setattr(knn.importlib, "import_module", no_faiss)
    assert knn.resolve_knn("auto", torch.device("cpu")) == "torch"
    with pytest.raises(DetectorError, match="station\\[fast\\]") as err:
        knn.resolve_knn("faiss", torch.device("cpu"))
    assert "\n" not in str(err.value)
