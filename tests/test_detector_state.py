"""Saving and loading every detector through the base class: tiny fits, artifact round trips,
the saved layout (what files written before the base class took saving over hold), the
checks, and EfficientAD's exportable scoring module."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import textures
import torch

from station.detectors.artifact import load_artifact, read_artifact, save_artifact
from station.detectors.base import FORMAT_VERSION, Detector
from station.detectors.common import split_validation
from station.detectors.efficientad import EfficientAD
from station.detectors.efficientad_net import EfficientADModel
from station.detectors.registry import available_detectors, create_detector
from station.errors import DetectorError

# name -> (tiny settings, image side)
TINY: dict[str, tuple[dict[str, Any], int]] = {
    "patchcore": ({"device": "cpu", "max_bank": 200, "batch_size": 4}, 64),
    "simplenet": (
        {"device": "cpu", "embed_dim": 32, "hidden_dim": 32, "epochs": 1, "min_steps_per_epoch": 2},
        64,
    ),
    "efficientad": (
        {
            "device": "cpu",
            "distill_steps": 2,
            "distill_batch": 2,
            "steps": 2,
            "min_split_images": 4,
            "val_fraction": 0.25,
        },
        64,
    ),
    "dfda": (
        {"device": "cpu", "k_candidates": (2, 4), "attention_epochs": 1, "attention_batch": 4},
        96,
    ),
    "ast_mfr": (
        {
            "device": "cpu",
            "epochs": 1,
            "batch_size": 4,
            "min_steps_per_epoch": 1,
            "val_fraction": 0.2,
        },
        64,
    ),
    "ensemble": (
        {
            "device": "cpu",
            "val_fraction": 0.34,  # 2 of 6 images held out: a standard deviation per member
            "members": [
                {"name": "patchcore", "params": {"max_bank": 200, "batch_size": 4}},
                {"name": "simplenet", "params": {"embed_dim": 32, "hidden_dim": 32, "epochs": 1,
                                                 "min_steps_per_epoch": 2}},
            ],
        },
        64,
    ),
}

# The state dict's keys per detector: the layout of files already written. A change here
# means old model files no longer load: bump FORMAT_VERSION or the detector's version.
LAYOUT: dict[str, set[str]] = {
    "patchcore": {"memory_bank", "image_hw", "layer_dim", "backbone_identity"},
    "simplenet": {"adaptor", "discriminator", "image_size", "feature_scale", "backbone_identity"},
    "efficientad": {
        "teacher",
        "student",
        "autoencoder",
        "teacher_mean",
        "teacher_std",
        "quantiles",
        "image_size",
        "teacher_key",
        "backbone_identity",
    },
    "dfda": {"centres", "scales", "cbam", "query_key", "image_hw", "backbone_identity"},
    "ast_mfr": {"heads", "image_hw", "pair", "teacher_identity", "student_identity", "student"},
    "ensemble": {"members", "stats", "image_hw"},
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Detector, Any]]:
    """One tiny fitted detector of each kind and its fit report (EfficientAD's teacher cache in
    a scratch home)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STATION_HOME", str(tmp_path_factory.mktemp("state_home")))
    out = {}
    try:
        for name, (cfg, size) in TINY.items():
            det = create_detector(name, **cfg)
            out[name] = (det, det.fit(textures.weave(np.random.default_rng(0), 6, size)))
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def fitted(fitted_reports: dict[str, tuple[Detector, Any]]) -> dict[str, Detector]:
    return {name: det for name, (det, _) in fitted_reports.items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_held_out_good_scores_are_the_held_out_images_scores(
    fitted_reports: dict[str, tuple[Detector, Any]], name: str
) -> None:
    """The good scores a fit reports (thresholds and ensemble scales start from them) are the
    fitted detector's scores of exactly the images its seeded split held out."""
    det, report = fitted_reports[name]
    cfg = det.config()
    _, val = split_validation(6, cfg["val_fraction"], cfg["seed"])
    assert val and len(report.good_scores) == len(val)
    imgs = textures.weave(np.random.default_rng(0), 6, TINY[name][1])
    # atol: the ensemble's standardised scores are near +-0.7 and its members run in float32
    np.testing.assert_allclose(
        report.good_scores, det.predict(imgs[val]).scores, rtol=1e-4, atol=2e-3
    )


def test_every_detector_is_covered() -> None:
    assert sorted(TINY) == sorted(LAYOUT) == available_detectors()


@pytest.mark.parametrize("name", sorted(TINY))
def test_artifact_round_trip(fitted: dict[str, Detector], name: str, tmp_path: Path) -> None:
    det = fitted[name]
    imgs = textures.weave(np.random.default_rng(1), 2, TINY[name][1])
    path = tmp_path / "m.pt"
    save_artifact(det, path, {"version": f"{name}-test"})
    loaded = load_artifact(path).detector
    a, b = det.predict(imgs), loaded.predict(imgs)
    np.testing.assert_allclose(b.maps, a.maps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=1e-6)
    assert loaded.config() == det.config() and loaded.image_hw == det.image_hw
    # what the file holds: the payload of Detector.state(), plus the meta
    payload = read_artifact(path)
    assert payload["format_version"] == FORMAT_VERSION == 1
    assert (payload["detector"], payload["detector_version"]) == (name, det.version)
    assert set(payload) == {
        "format_version",
        "detector",
        "detector_version",
        "config",
        "state_dict",
        "meta",
    }
    assert set(payload["state_dict"]) == LAYOUT[name]


@pytest.mark.parametrize("name", sorted(TINY))
def test_state_is_on_the_cpu_and_loads_by_hand(fitted: dict[str, Detector], name: str) -> None:
    """The plain state dict (torch.save'd on its own, as the tests of each detector do) loads
    into a detector built from the config, with the same maps."""
    det = fitted[name]
    state = det.state_dict()

    def tensors(v: Any) -> list[torch.Tensor]:
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, dict):
            return [t for x in v.values() for t in tensors(x)]
        if isinstance(v, list):  # the ensemble's members
            return [t for x in v for t in tensors(x)]
        return []

    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors(state))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = create_detector(name, **det.config())
    assert not fresh.fitted
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.fitted and fresh.image_hw == det.image_hw
    imgs = textures.weave(np.random.default_rng(2), 1, TINY[name][1])
    np.testing.assert_allclose(fresh.predict(imgs).maps, det.predict(imgs).maps, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_guards(fitted: dict[str, Detector], name: str) -> None:
    det = fitted[name]
    fresh = create_detector(name, **det.config())
    with pytest.raises(DetectorError, match=f"{name}: nothing to save, .*not trained"):
        fresh.state_dict()
    with pytest.raises(DetectorError, match="not trained"):
        fresh.state()
    state = det.state_dict()
    size_key = type(det).size_key
    del state[size_key]
    with pytest.raises(DetectorError, match=f"{name}: saved state lacks '{size_key}'"):
        fresh.load_state_dict(state)
    assert not fresh.fitted  # a refused state leaves the detector unfitted
    payload = det.state()
    with pytest.raises(DetectorError, match="format 7"):
        fresh.load_state({**payload, "format_version": 7})
    with pytest.raises(DetectorError, match="version 99"):
        fresh.load_state({**payload, "detector_version": 99})
    with pytest.raises(DetectorError, match="holds detector 'other'"):
        fresh.load_state({**payload, "detector": "other"})
    with pytest.raises(DetectorError, match="other settings than this detector has: seed"):
        fresh.load_state({**payload, "config": {**payload["config"], "seed": 123}})
    with pytest.raises(DetectorError, match="no state_dict"):
        fresh.load_state({k: v for k, v in payload.items() if k != "state_dict"})
    fresh.load_state({**payload, "config": {**payload["config"], "device": "cuda"}})
    assert fresh.fitted  # the device is not a setting of the model


def test_a_module_that_does_not_fit_is_one_line(fitted: dict[str, Detector]) -> None:
    det = fitted["simplenet"]
    wide = create_detector("simplenet", **{**TINY["simplenet"][0], "embed_dim": 48})
    with pytest.raises(DetectorError, match="simplenet: saved state does not fit") as err:
        wide.load_state_dict(det.state_dict())
    assert "\n" not in err.value.message


def test_efficientad_holds_one_exportable_module(fitted: dict[str, Detector]) -> None:
    det = fitted["efficientad"]
    assert isinstance(det, EfficientAD) and isinstance(det.model, EfficientADModel)
    model = det.model
    assert det.teacher is model.teacher and det.autoencoder is model.autoencoder
    # the normalisation statistics are buffers of the module: its state is the whole scorer
    assert {"t_mean", "t_std", "q"} <= set(dict(model.named_buffers()))
    assert model.quantiles == det.quantiles and set(det.quantiles) == {
        "st_a",
        "st_b",
        "ae_a",
        "ae_b",
    }
    assert det.state_dict()["quantiles"] == det.quantiles
    imgs = textures.weave(np.random.default_rng(4), 2, 64)
    pred = det.predict(imgs)
    assert det.model is model  # predicting does not rebuild it
    x = torch.from_numpy(np.repeat(imgs[..., None], 3, axis=3)).permute(0, 3, 1, 2)
    x = x.float() / 255.0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes fixed: by design
        traced = torch.jit.trace(model, (x,), check_trace=False)
        exported = torch.export.export(model, (x,)).module()
        for maps, scores in (traced(x), exported(x)):
            np.testing.assert_allclose(maps.numpy(), pred.maps, rtol=0, atol=1e-5)
            np.testing.assert_allclose(scores.numpy(), pred.scores, rtol=0, atol=1e-5)


def test_efficientad_loaded_holds_its_module(fitted: dict[str, Detector], tmp_path: Path) -> None:
    det = fitted["efficientad"]
    fresh = create_detector("efficientad", **det.config())
    assert isinstance(fresh, EfficientAD) and fresh.model is None and not fresh.fitted
    save_artifact(det, tmp_path / "m.pt", {})
    loaded = load_artifact(tmp_path / "m.pt").detector
    assert isinstance(loaded, EfficientAD) and isinstance(loaded.model, EfficientADModel)
    assert loaded.quantiles == det.quantiles  # float64 values, exactly as measured
    assert torch.equal(loaded.model.t_mean, det.model.t_mean)
