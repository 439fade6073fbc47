"""Retraining mechanics: the live PatchCore bank extended by reviewed shots, and candidate
thresholds that keep the confirmed defects the live model rejects rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from station.calibration.core import PartScores, calibrate
from station.calibration.policies import Policy
from station.decision import decide
from station.detectors.common import split_validation
from station.detectors.patchcore import PatchCore
from station.recipe import DecisionConfig
from station.retrain.bank import coverage_radius, extend_bank
from station.retrain.calibrate import leave_one_out, needed_scale, rescaled

SIZE = 96


def weave(seed: int, pitch: float = 8.0) -> np.ndarray:
    """A grey weave-like texture with random phase and noise; `pitch` in px."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 40 * np.sin(2 * np.pi * x / pitch + px) * np.sin(2 * np.pi * y / pitch + py)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[35:45, 48:72] = 20  # a dark foreign strip
    return out


def _nn(det: PatchCore, images: list[np.ndarray]) -> torch.Tensor:
    """Each image's largest patch distance to the bank."""
    from station.detectors.common import to_batch

    feats, (h, w) = det.patch_features(to_batch(images, det.image_hw))
    dist, _ = det.model.knn_index().search(feats, 1)
    return dist[:, 0].view(len(images), h * w).max(1).values


def test_extended_bank_keeps_the_live_rows_and_covers_the_new_texture() -> None:
    torch.set_num_threads(1)
    det = PatchCore(device="cpu", max_bank=2000, batch_size=4, val_fraction=0.25, seed=1)
    old = [weave(s) for s in range(8)]
    det.fit(old)
    live_bank = det.model.memory_bank.clone()
    new = [weave(s, pitch=11.2) for s in range(100, 104)]  # the variant: 1.4 x the pitch
    old_test = [weave(s) for s in range(200, 204)]
    before_old, before_new = _nn(det, old_test), _nn(det, new)
    radius = coverage_radius(det, old)
    # worked out here: the farthest patch of the images fit() trained on from the bank
    train_idx, _ = split_validation(len(old), 0.25, 1)
    assert radius == pytest.approx(float(_nn(det, [old[i] for i in train_idx]).max()), rel=1e-5)
    assert float(before_new.min()) > radius  # the premise: the variant is not covered

    info = extend_bank(det, old, new)
    bank = det.model.memory_bank
    assert info["added_rows"] > 0 and info["new_patches_uncovered"] == 0
    assert torch.equal(bank[: len(live_bank)], live_bank)  # the live rows, untouched, first
    assert len(bank) == len(live_bank) + info["added_rows"]
    assert float(_nn(det, new).max()) <= radius + 1e-4  # covered as tightly as the old cloth
    assert bool((_nn(det, old_test) <= before_old + 1e-4).all())  # old cloth: never further
    # a defect on the old cloth still stands out above every good image of either texture
    goods = np.stack([*old_test, *(weave(s, pitch=11.2) for s in range(300, 303))])
    bad = with_defect(weave(400))[None]
    assert det.predict(bad).scores[0] > det.predict(goods).scores.max()


def test_extension_stops_at_max_bank() -> None:
    torch.set_num_threads(1)
    det = PatchCore(device="cpu", max_bank=60, batch_size=4, val_fraction=0.25, seed=1)
    old = [weave(s) for s in range(4)]
    det.fit(old)
    n0 = len(det.model.memory_bank)
    info = extend_bank(det, old, [weave(s, pitch=11.2) for s in range(100, 103)])
    assert len(det.model.memory_bank) == 60 == n0 + info["added_rows"]
    assert info["new_patches_uncovered"] > 0  # reported, not hidden


def test_needed_scale_and_leave_one_out() -> None:
    assert needed_scale([]) == 1.0 and needed_scale([1.2, 1.0]) == 1.0
    s = needed_scale([1.3, 0.9, 0.95])
    assert s < 0.9 and s == pytest.approx(0.9, rel=1e-3)
    # held out, the lowest is missed (the others set a higher threshold); the rest are not
    assert leave_one_out([1.3, 0.9, 0.95]) == [False, True, False]
    assert leave_one_out([1.3, 1.1]) == [False, False]


@pytest.mark.parametrize("combine", ["any", "all", "mean"])
def test_constraint_rejects_every_confirmed_defect_the_policy_would_pass(combine: str) -> None:
    """Labelled scores where the false-reject budget puts the thresholds above some confirmed
    defects: after the constraint, the decision rule rejects every one of them."""
    rng = np.random.default_rng(3)
    n_good, n_bad = 60, 20
    good = rng.normal(1.0, 0.1, (n_good, 1, 2))
    bad = rng.normal(1.4, 0.3, (n_bad, 1, 2))
    shots = np.concatenate([good, bad])
    data = PartScores(
        part_ids=[f"p{i}" for i in range(n_good + n_bad)],
        labels=np.array([0] * n_good + [1] * n_bad),
        scores={"a": shots[:, 0, 0], "b": shots[:, 0, 1]},
        shots={"a": shots[:, :, 0], "b": shots[:, :, 1]},
    )
    policy = Policy(name="false_reject_budget", false_reject_budget=0.05)
    res = calibrate(data, policy, recipe="r", combine_detectors=combine, resamples=100,
                    oob_resamples=0)  # fmt: skip
    cfg = DecisionConfig(combine_poses="max", combine_detectors=combine)
    # confirmed defects of the reviewed history: near the thresholds, some below them
    confirmed = [{"a": [res.thresholds["a"] * f], "b": [res.thresholds["b"] * g]}
                 for f, g in ((0.93, 0.9), (1.2, 0.97), (0.98, 1.05), (1.5, 1.6))]  # fmt: skip
    before = [decide(c, res.thresholds, cfg, ["p"]) for c in confirmed]
    assert not all(d.rejected for d in before)  # the premise: the policy passes some
    scale = needed_scale([float(d.part_score) for d in before])
    after = rescaled(res, data, scale)
    assert all(decide(c, after.thresholds, cfg, ["p"]).rejected for c in confirmed)
    # the rates stated for the labelled set are those of the new thresholds
    values = np.max(shots / np.array([after.thresholds["a"], after.thresholds["b"]]), axis=2)
    if combine == "any":
        flags = values.max(1) >= 1.0
        assert after.combined.choice.false_rejects == int(flags[:n_good].sum())
    assert after.combined.choice.false_rejects >= res.combined.choice.false_rejects


def test_the_bank_is_measured_on_the_files_the_live_model_was_fit_on(tmp_path) -> None:  # noqa: ANN001
    """train/good gains files after a fit (a promotion's review shots): the coverage radius
    must still split the fit's own files in the fit's order, or some of its validation images
    count as training ones (the split depends on the count and the order)."""
    from station.files import file_sha256
    from station.imaging import write_png
    from station.retrain.run import _fitted_files

    files = [tmp_path / f"{n}.png" for n in ("g0", "g1", "g2")]
    for i, f in enumerate(files):
        write_png(f, weave(i))
    fit = [file_sha256(f) for f in files]
    review = tmp_path / "review-p000001_left.png"
    write_png(review, weave(50))
    base = sorted([*files, review])  # training_images' order
    assert _fitted_files(base, [{"fit_files_sha256": fit}]) == files
    assert _fitted_files(base, [{}]) == base  # a model that did not record them: as before
    assert _fitted_files(base, [{"fit_files_sha256": fit}, {"fit_files_sha256": fit[:2]}]) is None
    files[1].unlink()
    assert _fitted_files([p for p in base if p.exists()], [{"fit_files_sha256": fit}]) is None
