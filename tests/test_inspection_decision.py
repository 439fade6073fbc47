"""Decision rule and heatmap encoding: hand-computed cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from station.decision import Decision, Verdict, decide
from station.recipe import DecisionConfig
from station.storage.heatmaps import COLORMAP, encode_heatmap, heat_levels

POSES = ["left", "centre", "right"]


def cfg(**kw: str) -> DecisionConfig:
    return DecisionConfig(**kw)


def test_any_rejects_when_one_detector_is_over() -> None:
    d = decide(
        {"a": [0.1, 0.2, 0.3], "b": [1.0, 5.0, 2.0]},
        {"a": 1.0, "b": 4.0},
        cfg(),
        POSES,
    )
    assert d.verdict is Verdict.FAIL
    assert d.part_score == pytest.approx(1.25)  # b: max 5 / 4
    assert d.detector_scores == pytest.approx({"a": 0.3, "b": 1.25})
    assert "b 1.250x" in d.reason and "centre" in d.reason and "a " not in d.reason
    assert d.rejected


def test_at_threshold_is_defective() -> None:
    d = decide({"a": [0.5, 2.0, 1.0]}, {"a": 2.0}, cfg(), POSES)
    assert d.verdict is Verdict.FAIL and d.part_score == pytest.approx(1.0)


def test_pass_below_every_threshold() -> None:
    d = decide({"a": [0.5, 1.9, 1.0], "b": [0.1, 0.1, 0.2]}, {"a": 2.0, "b": 1.0}, cfg(), POSES)
    assert d.verdict is Verdict.PASS and not d.rejected
    assert d.part_score == pytest.approx(0.95)
    assert "a 0.950x on centre" in d.reason


def test_mean_over_poses() -> None:
    # a: mean(0.5, 2.0, 0.5)/2 = 0.5 -> pass with mean, fail with max
    scores = {"a": [0.5, 2.0, 0.5]}
    assert decide(scores, {"a": 2.0}, cfg(combine_poses="mean"), POSES).verdict is Verdict.PASS
    assert decide(scores, {"a": 2.0}, cfg(combine_poses="max"), POSES).verdict is Verdict.FAIL


def test_all_needs_every_detector_over() -> None:
    th = {"a": 1.0, "b": 1.0}
    one = decide({"a": [2.0] * 3, "b": [0.5] * 3}, th, cfg(combine_detectors="all"), POSES)
    assert one.verdict is Verdict.PASS and one.part_score == pytest.approx(0.5)
    assert "a over" in one.reason
    both = decide({"a": [2.0] * 3, "b": [1.5] * 3}, th, cfg(combine_detectors="all"), POSES)
    assert both.verdict is Verdict.FAIL and both.part_score == pytest.approx(1.5)


def test_mean_of_detectors() -> None:
    th = {"a": 1.0, "b": 1.0}
    low = decide({"a": [1.6] * 3, "b": [0.2] * 3}, th, cfg(combine_detectors="mean"), POSES)
    assert low.verdict is Verdict.PASS and low.part_score == pytest.approx(0.9)
    assert "mean of detectors 0.900x" in low.reason
    high = decide({"a": [1.6] * 3, "b": [0.6] * 3}, th, cfg(combine_detectors="mean"), POSES)
    assert high.verdict is Verdict.FAIL and high.part_score == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("scores", "thresholds", "needle"),
    [
        ({"a": [0.1, math.nan, 0.1]}, {"a": 1.0}, "non-finite score on pose centre"),
        ({"a": [0.1, 0.1, math.inf]}, {"a": 1.0}, "non-finite"),
        ({"a": [0.1, 0.1]}, {"a": 1.0}, "scored 2 of the part's 3 poses"),
        ({"a": [0.1, 0.1, 0.1]}, {}, "no usable threshold for detector a"),
        ({"a": [0.1, 0.1, 0.1]}, {"a": 0.0}, "no usable threshold"),
        ({}, {"a": 1.0}, "no detector produced a score"),
    ],
)
def test_bad_inputs_are_faults(scores, thresholds, needle) -> None:  # noqa: ANN001
    d = decide(scores, thresholds, cfg(), POSES)
    assert d.verdict is Verdict.FAULT and d.rejected
    assert needle in d.reason
    assert d == Decision.fault(d.reason)


def test_heat_levels_put_threshold_mid_scale() -> None:
    m = np.array([[0.0, 1.0, 2.0, 4.0, -1.0, np.nan]], np.float32)
    assert heat_levels(m, 2.0).tolist() == [[0, 64, 128, 255, 0, 0]]
    with pytest.raises(ValueError, match="positive"):
        heat_levels(m, 0.0)


def _decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


def test_heatmap_is_colour_at_shot_size() -> None:
    amap = np.zeros((32, 32), np.float32)
    amap[8:16, 8:16] = 3.0  # 1.5x threshold in the top-left quarter
    img = _decode(encode_heatmap(amap, 2.0, (100, 60)))
    assert img.shape == (60, 100, 3)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAP)[:, 0]
    assert img[0, 0].tolist() == lut[0].tolist()  # zero -> bottom colour
    hot = img[22, 31]  # inside the scaled square (rows 15..30, cols 25..50)
    expected = lut[int(np.floor(3.0 / 4.0 * 255 + 0.5))]
    assert np.abs(hot.astype(int) - expected.astype(int)).max() <= 2


def test_heatmap_into_crop_region() -> None:
    amap = np.full((16, 16), 2.0, np.float32)  # at threshold everywhere
    img = _decode(encode_heatmap(amap, 2.0, (80, 40), crop=(10, 5, 20, 30)))
    assert img.shape == (40, 80, 3)
    assert img[:5].max() == 0 and img[:, :10].max() == 0 and img[:, 30:].max() == 0
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAP)[:, 0]
    assert img[20, 20].tolist() == lut[128].tolist()
    with pytest.raises(ValueError, match="outside"):
        encode_heatmap(amap, 2.0, (80, 40), crop=(90, 0, 10, 10))


def test_ratio_display_never_contradicts_the_verdict() -> None:
    from station.decision import fmt_ratio

    assert fmt_ratio(0.99999) == "0.999" and fmt_ratio(1.0) == "1.000"
    assert fmt_ratio(1.23456) == "1.234" and fmt_ratio(0.0) == "0.000"
