"""tools/false_alarm_sites.py: the pure helpers (peak site, zero-miss judging, edge bands and
levels, the report). The tool itself scores a bench home end to end (minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tool_module import load_tool

REPO = Path(__file__).resolve().parents[1]


def _tool():  # noqa: ANN202 (a module loaded from tools/)
    return load_tool("false_alarm_sites")


T = _tool()
H, W = 8, 10
# mm inside the nominal sheet edge per pixel: the left two columns lie on the table
INSIDE = {"a": np.tile(np.arange(W, dtype=float) - 2.0, (H, 1)), "b": np.full((H, W), 20.0)}


def _part(set_name: str, label: int, peaks: dict[str, tuple[int, int, float]],
          kind: str = "cut") -> dict:  # fmt: skip
    maps = []
    for pose in ("a", "b"):
        m = np.ones((H, W), np.float32)
        if pose in peaks:
            y, x, v = peaks[pose]
            m[y, x] = v
        maps.append(m)
    truth = [{"kind": kind, "size_mm": 3.0}] if label else []
    score = max(float(m.max()) for m in maps)
    return {"set": set_name, "key": f"{set_name}{len(peaks)}{score}", "label": label,
            "truth": truth, "maps": maps, "shot_scores": [score], "poses": ["a", "b"]}  # fmt: skip


def test_peak_site_places_the_peak_on_the_sheet_and_the_border() -> None:
    part = _part("test", 0, {"a": (3, 0, 9.0), "b": (4, 5, 5.0)})
    site = T.peak_site(part, INSIDE)
    assert site["pose"] == "a" and site["px"] == [0, 3] and site["peak"] == 9.0
    assert site["mm_inside_sheet"] == -2.0 and site["px_to_border"] == 0


def test_judge_sets_the_threshold_at_the_weakest_calibration_defect() -> None:
    parts = [
        _part("labelled", 1, {"b": (4, 5, 6.0)}),
        _part("labelled", 1, {"b": (4, 5, 9.0)}),
        _part("labelled", 0, {"b": (4, 5, 2.0)}),
        _part("test", 0, {"b": (4, 5, 7.0)}),  # a false reject
        _part("test", 0, {"b": (4, 5, 3.0)}),
        _part("test", 1, {"b": (4, 5, 5.0)}, kind="crease"),  # a miss
        _part("test", 1, {"b": (4, 5, 8.0)}),
    ]
    scores = [max(p["shot_scores"]) for p in parts]
    j = T.judge(scores, parts)
    assert j["threshold"] == 6.0
    assert j["false_rejects"] == [1, 2] and j["misses"] == [1, 2]
    assert j["missed"] == [[("crease", 3.0)]]
    assert j["auroc"] == pytest.approx(0.75)


def test_edge_levels_lift_only_bands_above_the_interior() -> None:
    """A hot table strip in calibration good sheets gets a level above the interior's; the
    analysis then lowers a peak there and leaves the interior alone."""
    hot = _part("labelled", 0, {})
    hot["maps"][0][:, :2] = 5.0  # the two table columns of pose a
    bands = T.band_of(INSIDE)
    levels = T.edge_levels([hot], bands)
    interior = levels[-2]
    assert interior == pytest.approx(1.0)
    assert levels[bands["a"][0, 0]] == pytest.approx(5.0)
    parts = [hot, _part("labelled", 1, {"b": (2, 2, 4.0)}), _part("test", 0, {"a": (1, 1, 5.0)}),
             _part("test", 1, {"b": (2, 2, 4.5)})]  # fmt: skip
    res = T.analyse(parts, INSIDE)
    assert res["good_peaks"]["n"] == 2
    assert res["part_score_map_max"]["false_rejects"] == [1, 1]  # the table strip at 5.0
    assert res["edge_normalised"]["false_rejects"] == [0, 1]  # lowered to the interior's 1.0
    assert "normalised by distance to the edge" in T.markdown(res, Path("/h"))
