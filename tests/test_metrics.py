"""Metrics against scikit-learn, hand-computed cases, and a brute-force AUPRO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from station import metrics
from station.errors import StationError


def _random_with_ties(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    # Few distinct values -> many ties; positives shifted up so AUROC is not ~0.5.
    scores = np.round(rng.normal(size=n) + labels * 0.8, 1)
    return scores, labels.astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_ap_f1_match_sklearn(seed: int) -> None:
    scores, labels = _random_with_ties(seed, 2000)
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores)
    )
    p, r, t = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best, thr = metrics.f1_max_threshold(scores, labels)
    assert best == pytest.approx(f1.max())
    assert thr == pytest.approx(t[int(np.argmax(f1[:-1]))])
    assert metrics.f1_max(scores, labels) == pytest.approx(f1.max())


def test_pixel_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((6, 16, 16), dtype=np.uint8)
    masks[1, 3:7, 4:9] = 255
    masks[4, 10:14, 1:3] = 255
    maps = np.round(rng.random(masks.shape) + (masks > 0) * 0.5, 2).astype(np.float32)
    flat_m, flat_g = maps.reshape(-1), (masks > 0).reshape(-1)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_g, flat_m))
    assert metrics.pixel_ap(maps, masks) == pytest.approx(average_precision_score(flat_g, flat_m))
    out = metrics.evaluate_all(maps.reshape(6, -1).max(1), [0, 1, 0, 0, 1, 0], maps, masks)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(flat_g, flat_m))
    assert out["pixel_ap"] == pytest.approx(average_precision_score(flat_g, flat_m))
    assert out["aupro"] == pytest.approx(metrics.aupro(maps, masks))
    p, r, _ = precision_recall_curve(flat_g, flat_m)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    assert out["pixel_f1_max"] == pytest.approx(f1.max())
    assert set(out) >= {"image_auroc", "image_ap", "image_f1_max", "pixel_f1_max", "aupro"}


def test_hand_checked_auroc() -> None:
    labels = [0, 0, 1, 1]
    assert metrics.image_auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert metrics.image_auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert metrics.image_auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
    # One positive below one negative: 3 of 4 pairs ordered right.
    assert metrics.image_auroc([0.1, 0.6, 0.5, 0.9], labels) == 0.75
    assert metrics.f1_max([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert metrics.average_precision([0.1, 0.2, 0.8, 0.9], labels) == 1.0


def test_undefined_metrics_are_nan() -> None:
    assert math.isnan(metrics.image_auroc([0.1, 0.2], [1, 1]))
    assert math.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))
    assert math.isnan(metrics.aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4))))


def test_bad_input_is_a_station_error() -> None:
    with pytest.raises(StationError, match="labels"):
        metrics.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(StationError, match="NaN"):
        metrics.image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(StationError, match="0 or 1"):
        metrics.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(StationError, match="shape"):
        metrics.pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_aupro_hand_computed_two_regions() -> None:
    # Region A = one pixel, region B = two pixels (8-connected), 13 good pixels.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 3, 2:4] = True
    maps = np.full((1, 4, 4), 0.1)
    maps[0, 0, 0] = 0.9  # A fully found at t=0.9 (FPR 0)
    maps[0, 1, 2] = 0.85  # one false positive -> FPR 1/13
    maps[0, 3, 2] = 0.8  # half of B
    maps[0, 3, 3] = 0.2  # rest of B (still FPR 1/13)
    # PRO = 0.5 on [0, 1/13], then 1.0 up to 0.3: area = 0.5/13 + (0.3 - 1/13).
    expected = (0.5 / 13 + (0.3 - 1 / 13)) / 0.3
    assert metrics.aupro(maps, masks) == pytest.approx(expected)
    # Perfect and inverted maps.
    assert metrics.aupro(masks.astype(float), masks) == pytest.approx(1.0)
    assert metrics.aupro(1.0 - masks.astype(float), masks) == pytest.approx(0.0)


def _aupro_brute_force(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Direct definition: for each distinct threshold compute FPR and mean region overlap."""
    regions = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    good = ~masks
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = (above & good).sum() / good.sum()
        pro = np.mean([above[i][r].mean() for i, r in regions])
        pts.append((fpr, pro))
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    keep = x <= limit
    xs, ys = list(x[keep]), list(y[keep])
    j = int(keep.sum())
    if j < x.size and xs[-1] < limit:
        ys.append(y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1]))
        xs.append(limit)
    return float(np.trapezoid(ys, xs) / limit)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[0, 1:4, 1:4] = True
    masks[0, 8:11, 7:9] = True
    masks[2, 5:6, 2:10] = True
    maps = np.round(rng.random(masks.shape) * 0.8 + masks * 0.3, 2)
    assert metrics.aupro(maps, masks) == pytest.approx(_aupro_brute_force(maps, masks))
    assert metrics.aupro(maps, masks, fpr_limit=0.05) == pytest.approx(
        _aupro_brute_force(maps, masks, 0.05)
    )


def test_evaluate_all_image_only_and_list_inputs() -> None:
    out = metrics.evaluate_all([0.1, 0.9, 0.4], [0, 1, 0])
    assert out["image_auroc"] == 1.0 and out["image_f1_max"] == 1.0
    assert out["image_f1_threshold"] == pytest.approx(0.9)
    assert "pixel_auroc" not in out
    maps = [np.zeros((3, 3)), np.eye(3)]
    masks = [np.zeros((3, 3)), np.eye(3)]
    out = metrics.evaluate_all([0.0, 1.0], [0, 1], maps, masks)
    assert out["pixel_auroc"] == 1.0 and out["aupro"] == pytest.approx(1.0)
