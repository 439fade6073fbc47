"""PatchCore on small synthetic weave textures: detection, bounded memory, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from station.detectors.artifact import load_artifact, new_version, read_artifact, save_artifact
from station.detectors.common import local_aggregate, mirrored_stage_maps
from station.detectors.patchcore import PatchCore, greedy_coreset
from station.detectors.registry import available_detectors, create_detector
from station.errors import DetectorError

torch.set_num_threads(2)
SIZE = 96


def weave(seed: int, size: int = SIZE) -> np.ndarray:
    """A grey plain-weave-like texture with random phase and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 40 * np.sin(2 * np.pi * x / 8 + px) * np.sin(2 * np.pi * y / 8 + py)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(img: np.ndarray, cx: int = 60, cy: int = 40) -> np.ndarray:
    out = img.copy()
    out[cy - 5 : cy + 5, cx - 12 : cx + 12] = 20  # a dark foreign strip
    return out


@pytest.fixture(scope="module")
def fitted() -> PatchCore:
    det = PatchCore(device="cpu", max_bank=300, batch_size=4, val_fraction=0.25, seed=1)
    report = det.fit([weave(s) for s in range(8)])
    assert report.n_images == 8 and len(report.good_scores) == 2
    assert report.extra["bank_size"] <= 300
    return det


def test_registered() -> None:
    assert "patchcore" in available_detectors()
    with pytest.raises(DetectorError, match="known detectors: .*patchcore"):
        create_detector("nope")


def test_defect_scores_higher_and_is_localised(fitted: PatchCore) -> None:
    goods = np.stack([weave(s) for s in range(100, 104)])
    bad = with_defect(weave(200))[None]
    pg = fitted.predict(goods)
    pb = fitted.predict(bad)
    assert pg.maps.shape == (4, SIZE, SIZE) and pg.scores.shape == (4,)
    assert pb.scores[0] > 1.5 * pg.scores.max()
    np.testing.assert_allclose(pg.scores, pg.maps.reshape(4, -1).max(1), rtol=1e-6)
    peak_y, peak_x = np.unravel_index(np.argmax(pb.maps[0]), pb.maps[0].shape)
    assert abs(peak_y - 40) <= 12 and abs(peak_x - 60) <= 16


def test_image_score_is_the_weighted_nearest_distance_of_the_worst_patch(
    fitted: PatchCore,
) -> None:
    imgs = np.stack([weave(400), with_defect(weave(401)), dot(weave(402))])
    out = fitted.predict(imgs)
    x = torch.from_numpy(imgs).float().div(255)[:, None].expand(-1, 3, -1, -1)
    feats, (h, w) = fitted.patch_features(x)
    bank = fitted.bank
    d = torch.cdist(feats, bank).view(3, h * w, -1)  # every patch to every bank row
    nearest = d.min(2)
    worst = nearest.values.argmax(1)
    for i in range(3):
        j = nearest.indices[i, worst[i]]
        support = torch.cdist(bank[j][None], bank)[0].argsort()[: fitted.config()["num_neighbors"]]
        to_support = d[i, worst[i], support].double()  # support[0] is bank row j itself
        w_i = 1 - torch.exp(to_support[0] - torch.logsumexp(to_support, 0))
        assert out.scores[i] == pytest.approx(float(nearest.values[i, worst[i]] * w_i), rel=1e-4)
    # The map peaks at the image score, where the worst patch is.
    np.testing.assert_allclose(out.maps.reshape(3, -1).max(1), out.scores, rtol=1e-5)


def dot(img: np.ndarray, cx: int = 30, cy: int = 50) -> np.ndarray:
    out = img.copy()
    out[cy - 2 : cy + 2, cx - 2 : cx + 2] = 250  # a 4 px bright speck
    return out


def test_image_score_does_not_depend_on_the_smoothing() -> None:
    # Version 2 scored images by the smoothed map's peak, which flattens a one-patch speck far
    # more than a broad fault; now smoothing shapes the map only.
    train = [weave(s) for s in range(8)]
    imgs = np.stack([weave(100), weave(101), dot(weave(402)), with_defect(weave(403))])
    out = {}
    for sigma in (2.0, 12.0):
        det = PatchCore(device="cpu", max_bank=300, val_fraction=0.25, seed=1, sigma=sigma)
        det.fit(train)
        out[sigma] = det.predict(imgs)
    np.testing.assert_allclose(out[2.0].scores, out[12.0].scores, rtol=1e-5)
    assert np.abs(out[2.0].maps - out[12.0].maps).max() > 0.1 * out[2.0].scores.max()
    assert out[2.0].scores[2] > 1.2 * out[2.0].scores[:2].max()  # the speck stands out


def test_grey_and_colour_input_agree(fitted: PatchCore) -> None:
    grey = np.stack([with_defect(weave(300)), weave(301)])
    colour = np.repeat(grey[..., None], 3, axis=3)
    a, b = fitted.predict(grey), fitted.predict(colour)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)


def test_wrong_input_is_a_clear_error(fitted: PatchCore) -> None:
    with pytest.raises(DetectorError, match="trained on 96 x 96"):
        fitted.predict(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(DetectorError, match="expected H x W"):
        fitted.predict(np.zeros((1, SIZE, SIZE, 2), np.uint8))
    with pytest.raises(DetectorError, match="not fitted"):
        PatchCore(device="cpu").predict(np.zeros((1, SIZE, SIZE), np.uint8))
    with pytest.raises(DetectorError, match="coreset_ratio"):
        PatchCore(device="cpu", coreset_ratio=0)


def test_memory_stays_bounded() -> None:
    det = PatchCore(device="cpu", max_bank=40, max_train_patches=500, coreset_ratio=0.5)
    report = det.fit([weave(s, 64) for s in range(6)])
    assert report.extra["patches_pooled"] <= 500
    assert report.extra["patches_seen"] == 5 * 8 * 8  # 5 training images, 8 x 8 grid each
    assert det.state_dict()["memory_bank"].shape[0] == 40


def diagonal(seed: int, size: int = 64) -> np.ndarray:
    """Stripes running one diagonal way only: mirrored, they run the other way."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 128 + 50 * np.sin(2 * np.pi * (x + y) / 12 + rng.uniform(0, 2 * np.pi))
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_train_flips_put_the_mirrored_texture_in_the_bank() -> None:
    train = [diagonal(s) for s in range(3)]
    good = np.stack([diagonal(s) for s in range(50, 52)])
    mirrored = good[:, :, ::-1].copy()
    ratio = {}
    for flips in (False, True):
        det = PatchCore(
            device="cpu", max_bank=2000, coreset_ratio=1.0, val_fraction=0, train_flips=flips
        )
        report = det.fit(train)
        assert report.extra["patches_seen"] == 3 * 8 * 8 * (4 if flips else 1)
        assert det.config()["train_flips"] is flips
        ratio[flips] = det.predict(mirrored).scores.min() / det.predict(good).scores.max()
    assert ratio[False] > 2.0  # the other diagonal is a fault to a bank of one diagonal
    assert ratio[True] < 1.5  # ...and good texture once the bank has seen it mirrored


def test_greedy_coreset_covers_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(500, 16, generator=g)
    pts[123] += 50.0  # one far outlier must be picked early
    sel = greedy_coreset(pts, 10, proj_dim=8, seed=0)
    assert len(set(sel.tolist())) == 10 and 123 in sel.tolist()[:2]
    assert torch.equal(greedy_coreset(pts, 600), torch.arange(500))


def test_image_score_choices_share_the_bank_and_differ_as_defined(tmp_path: Path) -> None:
    train = [weave(s) for s in range(8)]
    imgs = np.stack([weave(100), dot(weave(402)), with_defect(weave(403))])
    out, raw_peaks = {}, None
    for choice in ("weighted_max", "max", "smoothed_peak"):
        det = PatchCore(device="cpu", max_bank=300, val_fraction=0.25, seed=1, image_score=choice)
        det.fit(train)
        out[choice] = det.predict(imgs)
        if choice == "max":  # persisted: a loaded model scores as it was configured
            save_artifact(det, tmp_path / "m.pt", {"recipe": "r", "image_size": [SIZE, SIZE]})
            loaded = load_artifact(tmp_path / "m.pt").detector
            assert loaded.config()["image_score"] == "max"
            np.testing.assert_array_equal(loaded.predict(imgs).scores, out["max"].scores)
        # the raw (unscaled) smoothed map is the same whatever the choice
        x = torch.from_numpy(imgs).float().div(255)[:, None].expand(-1, 3, -1, -1)
        det.model.image_score = "smoothed_peak"  # its maps are left unscaled
        peaks = det.model(x)[0].flatten(1).amax(1).numpy()
        raw_peaks = peaks if raw_peaks is None else raw_peaks
        np.testing.assert_allclose(peaks, raw_peaks, rtol=1e-5)
    weighted, plain, peak = (out[c].scores for c in ("weighted_max", "max", "smoothed_peak"))
    assert np.all(weighted < plain)  # the re-weighting factor is below 1
    assert not np.allclose(weighted / plain, (weighted / plain)[0])  # and differs per image
    np.testing.assert_allclose(peak, raw_peaks, rtol=1e-5)
    assert np.all(peak < plain)  # smoothing lowers the peak
    for pred in out.values():  # every map peaks at its image score
        np.testing.assert_allclose(pred.maps.reshape(3, -1).max(1), pred.scores, rtol=1e-5)
    with pytest.raises(DetectorError, match="image_score must be one of"):
        PatchCore(device="cpu", image_score="mean")


def test_save_load_roundtrip_is_identical(fitted: PatchCore, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    sha = save_artifact(fitted, path, {"recipe": "r", "image_size": [SIZE, SIZE]})
    assert len(sha) == 64
    loaded = load_artifact(path)
    imgs = np.stack([with_defect(weave(400)), weave(401)])
    a, b = fitted.predict(imgs), loaded.detector.predict(imgs)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.sha256 == sha and loaded.meta["recipe"] == "r"


def test_artifact_checks(fitted: PatchCore, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_artifact(fitted, path, {"recipe": "r"})
    payload = read_artifact(path)
    payload["detector_version"] = 99
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(DetectorError, match="version 99"):
        load_artifact(tmp_path / "v.pt")
    payload = read_artifact(path)
    payload["state_dict"]["backbone_identity"]["weights_sha256"] = "0" * 64
    torch.save(payload, tmp_path / "w.pt")
    with pytest.raises(DetectorError, match="trained on backbone"):
        load_artifact(tmp_path / "w.pt")
    (tmp_path / "c.pt").write_bytes(b"garbage")
    torch.save({"detector": Path("not data")}, tmp_path / "o.pt")  # refused by weights_only
    (tmp_path / "t.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for name in ("c.pt", "o.pt", "t.pt"):  # one line each: no torch advice, no traceback
        with pytest.raises(DetectorError, match="cannot be read") as err:
            load_artifact(tmp_path / name)
        assert "\n" not in err.value.message
        assert "checkpoint file is" not in err.value.message  # torch's text, cut mid-sentence
    (tmp_path / "u.pt").write_bytes(path.read_bytes()[: path.stat().st_size * 9 // 10])
    with pytest.raises(DetectorError, match="damaged or cut short"):  # no central directory
        load_artifact(tmp_path / "u.pt")
    with pytest.raises(DetectorError, match="does not exist"):
        load_artifact(tmp_path / "missing.pt")


def test_a_corrupt_or_empty_model_file_is_one_line_without_torchs_advice(tmp_path: Path) -> None:
    """Torch's refusal text advises weights_only=False (running the file's code); an empty file
    gives an empty message. Both name the file and what is wrong with it instead."""
    (tmp_path / "c.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "e.pt").write_bytes(b"")
    for name, says in (("c.pt", "corrupt"), ("e.pt", "EOFError")):
        with pytest.raises(DetectorError, match="cannot be read") as err:
            read_artifact(tmp_path / name)
        assert says in err.value.message and "weights_only" not in err.value.message
        assert "\n" not in err.value.message and name in err.value.message


def test_versions_sort_by_time_within_one_second() -> None:
    from datetime import UTC, datetime

    first = datetime(2026, 12, 1, 23, 40, 5, 1_000, tzinfo=UTC)
    second = first.replace(microsecond=2_000)
    for _ in range(20):  # whatever the random suffixes
        a, b = new_version("patchcore", first), new_version("patchcore", second)
        assert sorted([b, a]) == [a, b]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_fp16_stays_close(fitted: PatchCore, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_artifact(fitted, path, {"recipe": "r"})
    imgs = np.stack([with_defect(weave(500)), weave(501)])
    ref = fitted.predict(imgs)
    gpu = load_artifact(path, device="cuda").detector.predict(imgs)
    np.testing.assert_allclose(gpu.scores, ref.scores, rtol=1e-3)
    half = load_artifact(path, device="cuda").detector
    half._cfg["amp"] = True
    out = half.predict(imgs)
    np.testing.assert_allclose(out.scores, ref.scores, rtol=2e-2)
    assert np.corrcoef(out.maps.ravel(), ref.maps.ravel())[0, 1] > 0.999


def test_mirrored_stage_maps_line_up_with_the_image() -> None:
    det = PatchCore(device="cpu")
    x = torch.from_numpy(np.stack([weave(600), with_defect(weave(601))])).float().div(255)
    x = x[:, None].expand(-1, 3, -1, -1).contiguous()
    plain = mirrored_stage_maps(det.backbone, x, 0, 3)
    mirrored = mirrored_stage_maps(det.backbone, x, 32, 3)
    assert [m.shape for m in mirrored] == [m.shape for m in plain]
    # The same as running the network on an independently mirrored image and cropping.
    big = np.pad(x.numpy(), ((0, 0), (0, 0), (32, 32), (32, 32)), mode="reflect")
    stages = det.backbone(torch.from_numpy(big))
    for m, f, stride in zip(mirrored, stages, det.backbone.strides, strict=True):
        c = 32 // stride
        ref = local_aggregate(f, 3)[:, :, c:-c, c:-c]
        torch.testing.assert_close(m, ref)
    # Mirroring changes what the edge cells see, hardly what the centre cells see.
    diff = (mirrored[0] - plain[0]).abs()
    assert diff[:, :, 0].max() > 20 * diff[:, :, 5:-5, 5:-5].max()


def coarser(img: np.ndarray, factor: float = 1.2) -> np.ndarray:
    """The same weave seen from closer: every thread `factor` times wider."""
    import cv2

    big = cv2.resize(np.tile(img, (2, 2)), None, fx=factor, fy=factor)
    return big[: img.shape[0], : img.shape[1]]


@pytest.mark.slow
def test_centred_features_ignore_a_sheet_wide_change_but_not_a_fault() -> None:
    train = [weave(s) for s in range(8)]
    sheet_wide = np.stack([coarser(weave(s)) for s in range(700, 704)])
    ratios = {}
    for centred in (False, True):
        det = PatchCore(
            device="cpu", max_bank=300, val_fraction=0.25, seed=1, center_features=centred
        )
        det.fit(train)
        good = det.predict(np.stack([weave(s) for s in range(100, 104)])).scores.max()
        wide = det.predict(sheet_wide).scores / good
        ratios[centred] = (
            wide.min() if not centred else wide.max(),
            det.predict(with_defect(coarser(weave(710)))[None]).scores[0] / good,
        )
    assert ratios[False][0] > 1.1  # measured 1.17 at least: the coarser sheet is anomalous
    assert ratios[True][0] < 1.0  # measured 0.89 at most: centred, it is not...
    assert ratios[True][1] > 2.5  # ...while a fault on it still is (measured 3.3)


def test_mirror_pad_is_checked() -> None:
    with pytest.raises(DetectorError, match="multiple of the layers' strides"):
        PatchCore(device="cpu", mirror_pad=20)
    det = PatchCore(device="cpu", mirror_pad=64, max_bank=20)
    with pytest.raises(DetectorError, match="mirror_pad 64 px needs images larger"):
        det.fit([weave(s, 64) for s in range(3)])


def test_every_value_out_of_range_is_named_on_its_own_line() -> None:
    from station.detectors.patchcore import PatchCoreConfig
    from station.detectors.registry import config_problems

    bad = {"coreset_ratio": 0, "batch_size": 0, "num_neighbors": -3}
    expected = [
        "patchcore: coreset_ratio must be in (0, 1], not 0",
        "patchcore: batch_size must be >= 1, not 0",
        "patchcore: num_neighbors must be >= 1, not -3",
    ]
    assert config_problems("patchcore", bad) == expected
    with pytest.raises(DetectorError) as err:  # training and loading: one error, all named
        PatchCoreConfig(**bad).check()
    assert err.value.message == "; ".join(expected)
