"""The ensemble detector: members standardised on their held-out good scores, averaged; its
checks; and a recipe with an ensemble trained and evaluated through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import textures
from test_train_evaluate_cli import make_category, make_recipe, run

from station.detectors.artifact import read_artifact
from station.detectors.common import split_validation
from station.detectors.registry import create_detector
from station.detectors.runtimes.graphs import ExportError, export_net
from station.errors import DetectorError

pytestmark = pytest.mark.usefixtures("one_thread")

PATCHCORE = {"name": "patchcore", "params": {"max_bank": 200, "batch_size": 4}}
SIMPLENET = {
    "name": "simplenet",
    "params": {"embed_dim": 32, "hidden_dim": 32, "epochs": 1, "min_steps_per_epoch": 2},
}


def _ensemble(**over: Any) -> Any:
    cfg: dict[str, Any] = {"device": "cpu", "val_fraction": 0.34, "members": [PATCHCORE, SIMPLENET]}
    return create_detector("ensemble", **{**cfg, **over})


@pytest.fixture(scope="module")
def fitted() -> Any:
    det = _ensemble()
    report = det.fit(textures.weave(np.random.default_rng(0), 6, 64))
    return det, report


def test_score_is_the_mean_of_standardised_member_scores(fitted: Any) -> None:
    det, report = fitted
    imgs = textures.weave(np.random.default_rng(1), 3, 64)
    imgs[0, 20:30, 20:30] = 255  # one image with a bright fault
    pred = det.predict(imgs)
    z = []
    for member, (mean, std) in zip(det.members, det.stats, strict=True):
        z.append((member.predict(imgs).scores.astype(np.float64) - mean) / std)
    np.testing.assert_allclose(pred.scores, np.mean(z, axis=0), rtol=1e-5, atol=1e-5)
    # the map's peak is the image score; the map keeps the image size
    assert pred.maps.shape == (3, 64, 64)
    np.testing.assert_allclose(pred.maps.reshape(3, -1).max(1), pred.scores, atol=1e-4)
    assert pred.scores[0] > pred.scores[1:].max()
    # each member's scale is the mean and sample std of its scores on the held-out images,
    # computed here from those images, not read back from the detector
    _, val = split_validation(6, 0.34, 0)
    train = textures.weave(np.random.default_rng(0), 6, 64)
    for member, (mean, std) in zip(det.members, det.stats, strict=True):
        held_out = member.predict(train[val]).scores.astype(np.float64)
        assert mean == pytest.approx(held_out.mean(), rel=1e-3)
        assert std == pytest.approx(held_out.std(ddof=1), rel=1e-3) and std > 0
    assert len(report.good_scores) == 2 and abs(float(np.mean(report.good_scores))) < 1e-5
    assert [m["name"] for m in report.extra["members"]] == ["patchcore", "simplenet"]


def test_patchcores_on_one_backbone_share_its_pass() -> None:
    coarse = {"name": "patchcore", "params": {"max_bank": 200, "layers": ["blocks.4", "blocks.5"]}}
    other = {"name": "patchcore", "params": {"max_bank": 200, "patch_size": 1}}
    det = _ensemble(members=[PATCHCORE, coarse, other, SIMPLENET])
    # the first two agree on weights, context and patch size; patch_size 1 reads its own pass
    assert [(p.runner, p.members) for p in det.passes] == [(1, (0, 1))]
    assert det.passes[0].trunk.layers == ["blocks.2", "blocks.4", "blocks.5"]
    det.fit(textures.weave(np.random.default_rng(0), 6, 64))
    imgs = textures.weave(np.random.default_rng(1), 5, 64)  # 5 images: batches of 4 and 1
    imgs[0, 20:30, 20:30] = 255
    shared = det._shared_outputs(imgs)
    assert sorted(shared) == [0, 1]
    for i in (0, 1):  # as each member's own predict, to float rounding (batches differ)
        own = det.members[i].predict(imgs)
        np.testing.assert_allclose(shared[i][0], own.maps, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(shared[i][1], own.scores, rtol=1e-5, atol=1e-5)
    z = [
        (m.predict(imgs).scores.astype(np.float64) - mean) / std
        for m, (mean, std) in zip(det.members, det.stats, strict=True)
    ]
    np.testing.assert_allclose(det.predict(imgs).scores, np.mean(z, axis=0), atol=1e-5)


def test_a_shared_pass_ensemble_exports_as_one_graph() -> None:
    """The exported module (one backbone pass, each member's distances and smoothed map),
    each member's top-patch step and `combine` give the ensemble's own maps and scores."""
    import torch

    from station.detectors.common import to_batch

    coarse = {"name": "patchcore", "params": {"max_bank": 200, "layers": ["blocks.4", "blocks.5"]}}
    det = _ensemble(members=[PATCHCORE, coarse])
    det.fit(textures.weave(np.random.default_rng(0), 6, 64))
    imgs = textures.weave(np.random.default_rng(1), 3, 64)
    imgs[2, 30:36, 10:50] = 15
    net = export_net(det)
    assert net.kind == "ensemble_patch_scores" and net.module.grids == [(8, 8), (4, 4)]
    assert net.outputs[:4] == ("features_0", "distances_0", "smoothed_0", "features_1")
    with torch.no_grad():
        outs = net.module(to_batch(imgs, (64, 64)))
        per_member = [
            tuple(t.numpy() for t in m.model.score_from_distances(*outs[3 * i : 3 * i + 3]))
            for i, m in enumerate(det.members)
        ]
    maps, scores = det.combine(per_member)
    want = det.predict(imgs)
    tol = 1e-5 * float(np.abs(want.maps).max())
    np.testing.assert_allclose(scores, want.scores, rtol=0, atol=tol)
    np.testing.assert_allclose(maps, want.maps, rtol=0, atol=tol)
    assert int(np.argmax(scores)) == 2


def test_members_share_the_held_out_split(fitted: Any) -> None:
    det, _ = fitted
    for member in det.members:
        assert member.config()["val_fraction"] == 0.34 and member.config()["seed"] == 0


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"members": [PATCHCORE]}, "at least two members"),
        ({"members": [PATCHCORE, {"name": "ensemble"}]}, "cannot be an ensemble"),
        ({"members": [PATCHCORE, "simplenet"]}, "member 2 must be a mapping"),
        ({"members": [PATCHCORE, {"name": "dfda", "layers": 3}]}, r"unknown keys \['layers'\]"),
        (
            {"members": [PATCHCORE, {"name": "simplenet", "params": {"val_fraction": 0.2}}]},
            "simplenet sets .*val_fraction.* same good images",
        ),
        ({"val_fraction": 0.0}, "val_fraction must be in"),
        ({"members": [PATCHCORE, {"name": "nosuch"}]}, "unknown detector 'nosuch'"),
        (
            {"members": [{"name": "patchcore", "params": {"num_neighbors": "x"}}, SIMPLENET]},
            "num_neighbors",
        ),
    ],
)
def test_bad_ensembles_are_refused(over: dict[str, Any], match: str) -> None:
    with pytest.raises(DetectorError, match=match) as err:
        _ensemble(**over)
    assert "\n" not in err.value.message


def test_too_few_held_out_images_name_the_member() -> None:
    det = _ensemble(val_fraction=0.1)  # 1 of 6 images held out: no standard deviation
    with pytest.raises(DetectorError, match=r"member patchcore \(1/2\) scored 1 held-out") as err:
        det.fit(textures.weave(np.random.default_rng(0), 6, 64))
    assert "at least 15 good training images" in (err.value.hint or "")


def test_an_ensemble_with_other_detectors_is_not_exported(fitted: Any) -> None:
    det, _ = fitted
    with pytest.raises(ExportError, match="every member is a PatchCore .* patchcore, simplenet"):
        export_net(det)


RECIPE_ENSEMBLE = """
preprocess:
  crop: null
  size: [64, 64]
  grey_to_rgb: true

detectors:
  - name: ensemble
    backbone: efficientnet_lite0
    weights: package
    device: cpu
    params:
      val_fraction: 0.34
      members:
        - {name: patchcore, params: {max_bank: 200, batch_size: 4}}
        - {name: simplenet, params: {embed_dim: 32, hidden_dim: 32, epochs: 1,
                                     min_steps_per_epoch: 2}}
"""


def test_train_and_evaluate_an_ensemble_recipe(station_home: Path) -> None:
    make_recipe(station_home, "ens", RECIPE_ENSEMBLE)
    cat = make_category(station_home / "ds" / "cat", n_train=6)
    assert run(["train", "-r", "ens", "--data", str(cat), "--no-db"]) == 0
    # the saved model loads through the recipe (its settings match the recipe's entry)
    out = station_home / "eval"
    assert run(["evaluate", "-r", "ens", "--dataset", str(cat), "--out", str(out),
                "--heatmaps", "0"]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    m = res["categories"]["cat"]["ensemble"]
    assert m["image_auroc"] == 1.0  # the generated faults are plain
    assert (out / "cat" / "ensemble" / "scores.csv").is_file()
    (model,) = (station_home / "data" / "ens" / "models" / "ensemble").glob("*.pt")
    assert read_artifact(model)["meta"]["good_scores"]["n"] == 2


def test_every_bad_member_param_is_named() -> None:
    from station.detectors.ensemble import EnsembleConfig
    from station.detectors.registry import config_problems

    bad = {"name": "patchcore", "params": {"sigma": -1.0, "num_neighbors": 0}}
    members = [bad, {"name": "dfda", "params": {"k": 0}}]
    assert config_problems("ensemble", {"members": members}) == [
        "ensemble: member 1 (patchcore): patchcore: num_neighbors must be >= 1, not 0",
        "ensemble: member 1 (patchcore): patchcore: sigma must be >= 0, not -1.0",
        "ensemble: member 2 (dfda): dfda: k must be 'auto', 'elbow' or an integer >= 1, not 0",
    ]
    with pytest.raises(DetectorError, match="not 0; ensemble: member 1") as err:
        EnsembleConfig(members=[bad, SIMPLENET]).check()  # training and loading
    assert "params.members" in (err.value.hint or "")
