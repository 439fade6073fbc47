"""tools/bench_recall_by_size.py and tools/_bench_fusion.py: the pure helpers (bins, intervals,
truth, matching, counts, zero_miss threshold, paired test, per-rule outcomes, capture reading).

The benchmark itself runs the station end to end (minutes); these check what it counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tool_module import load_tool

REPO = Path(__file__).resolve().parents[1]


def _tool():  # noqa: ANN202 (a module loaded from tools/)
    return load_tool("bench_recall_by_size")


T = _tool()
sys.path.insert(0, str(REPO / "tools"))
import _bench_fusion as F  # noqa: E402 (tools/ on the path first)


def test_bins_parse_label_and_index_half_open_with_a_closed_last_bin() -> None:
    edges = T.parse_bins("0, 1,2,3,5,10,25")
    assert edges == (0, 1, 2, 3, 5, 10, 25)
    assert T.bin_labels(edges) == ["<1", "1-2", "2-3", "3-5", "5-10", "10-25"]
    assert T.bin_labels((0.5, 1, 2)) == ["0.5-1", "1-2"]
    assert T.bin_index(0.7, edges) == 0
    assert T.bin_index(1.0, edges) == 1  # a bin holds its lower edge
    assert T.bin_index(2.999, edges) == 2
    assert T.bin_index(25.0, edges) == 5  # the last bin holds its upper edge too
    assert T.bin_index(25.01, edges) is None
    assert T.bin_index(0.3, (0.5, 1, 2)) is None


@pytest.mark.parametrize("text", ["", "1", "0,2,1", "1,1,2", "-1,2", "a,b"])
def test_bad_bins_are_refused_with_the_option_named(text: str) -> None:
    with pytest.raises(ValueError, match="--bins"):
        T.parse_bins(text)


def test_clopper_pearson_matches_known_values_and_scipy() -> None:
    lo, hi = T.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3084971, abs=1e-6)  # 1 - 0.025 ** (1/10)
    lo, hi = T.clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    lo, hi = T.clopper_pearson(5, 10)
    assert (lo, hi) == (pytest.approx(0.1870860, abs=1e-6), pytest.approx(0.8129140, abs=1e-6))
    assert T.clopper_pearson(0, 0) == (0.0, 1.0)
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(1, 7), (3, 40), (17, 23), (99, 100), (2, 300)]:
        lo, hi = T.clopper_pearson(k, n, 0.9)
        assert lo == pytest.approx(stats.beta.ppf(0.05, k, n - k + 1), abs=1e-7)
        assert hi == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), abs=1e-7)
    with pytest.raises(ValueError):
        T.clopper_pearson(4, 3)


def test_truth_entries_read_the_base_frame_box_or_a_square_of_the_size() -> None:
    t = T.truth_defect(
        {"kind": "cut", "centre_mm": [410.0, -5.0], "size_mm": 4.0, "bbox_mm": [400, -9, 420, -1]}
    )
    assert t.centre_mm == (410.0, -5.0) and t.size_mm == 4.0
    assert t.extent_mm == (400.0, -9.0, 420.0, -1.0)
    sq = T.truth_defect({"kind": "washer", "centre_mm": [1, 2], "size_mm": 2})
    assert sq.extent_mm == (0.0, 1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="centre_mm"):
        T.truth_defect({"kind": "cut", "size_mm": 3.0})


def test_a_defect_is_binned_by_its_drawn_extent_or_its_nominal_size() -> None:
    # a broken roving of nominal size 11 mm that the twin drew 3.8 mm long and 0.9 mm wide
    t = T.truth_defect({"centre_mm": [0, 0], "size_mm": 11.0, "bbox_mm": [-1.9, -0.4, 1.9, 0.5]})
    assert t.size("drawn") == pytest.approx(3.8) and t.size("nominal") == 11.0
    parts = [_part("pass", "defect", [], [])]
    parts[0].truth.append(t)
    drawn = T.recall_by_bin(parts, (0, 2, 5, 25), tol_mm=2.0, smallest_mm=2.0, size_by="drawn")
    nominal = T.recall_by_bin(parts, (0, 2, 5, 25), tol_mm=2.0, smallest_mm=2.0)
    assert [b["found"]["n"] for b in drawn["bins"]] == [0, 1, 0]
    assert [b["found"]["n"] for b in nominal["bins"]] == [0, 0, 1]
    small = T.truth_defect({"centre_mm": [0, 0], "size_mm": 2.5, "bbox_mm": [0, 0, 1.5, 0.5]})
    parts[0].truth[:] = [small]  # nominally 2.5 mm, drawn 1.5 mm: under the smallest size
    assert T.recall_by_bin(parts, (0, 2, 25), 2.0, 2.0, "drawn")["at_or_above_smallest"][
        "found"]["n"] == 0
    assert T.recall_by_bin(parts, (0, 2, 25), 2.0, 2.0)["at_or_above_smallest"]["found"]["n"] == 1


def test_a_region_centre_locates_a_defect_within_its_box_plus_tolerance() -> None:
    t = T.truth_defect({"centre_mm": [0, 0], "size_mm": 2, "bbox_mm": [-1, -1, 1, 1]})
    assert T.located(t, [(0.5, 0.5)], 0.0)
    assert T.located(t, [(50, 50), (2.9, -2.9)], 2.0)  # any region will do
    assert not T.located(t, [(3.1, 0.0)], 2.0)
    assert not T.located(t, [], 2.0)


def _part(verdict: str, gt: str, truths: list[tuple[float, float]], regions: list) -> object:
    truth = [
        T.truth_defect({"centre_mm": [x, 0], "size_mm": size, "bbox_mm": [x - 1, -1, x + 1, 1]})
        for size, x in truths
    ]
    return T.PartOutcome(f"p{len(truths)}", verdict, gt, None, regions, truth)


def test_recall_counts_a_defect_only_when_its_part_is_rejected_and_a_region_is_on_it() -> None:
    edges = (0, 1, 2, 5, 25)
    parts = [
        _part("fail", "defect", [(0.8, 0), (3.0, 100)], [(0.2, 0.1)]),  # small found, 3 mm not
        _part("pass", "defect", [(4.0, 0)], [(0.0, 0.0)]),  # located but passed: a miss
        _part("fail", "defect", [(10.0, 0)], [(0.0, 0.5)]),  # found
        _part("fault", "defect", [(30.0, 0)], []),  # outside the bins, counted as rejected
        _part("pass", "good", [], []),
        _part("fail", "good", [], [(5.0, 5.0)]),
    ]
    r = T.recall_by_bin(parts, edges, tol_mm=2.0, smallest_mm=2.0)
    found = [(b["bin"], b["found"]["k"], b["found"]["n"]) for b in r["bins"]]
    assert found == [("<1", 1, 1), ("1-2", 0, 0), ("2-5", 0, 2), ("5-25", 1, 1)]
    assert [b["part_rejected"]["k"] for b in r["bins"]] == [1, 0, 1, 1]
    assert [b["at_or_above_smallest"] for b in r["bins"]] == [False, False, True, True]
    big = r["at_or_above_smallest"]
    assert (big["found"]["k"], big["found"]["n"], big["part_rejected"]["k"]) == (1, 4, 3)
    assert r["outside_bins"] == 1
    rates = T.part_rates(parts)
    assert (rates["recall"]["k"], rates["recall"]["n"]) == (3, 4)
    assert (rates["false_rejects"]["k"], rates["false_rejects"]["n"]) == (1, 2)
    assert rates["faults"] == 1
    assert (rates["regions"], rates["regions_on_no_defect"]) == (4, 1)  # the good part's one
    assert T.fmt_rate(rates["false_rejects"]).startswith("1/2 = 50% [1%, 99%]")
    assert T.fmt_rate(T.rate(0, 0)) == "-"


def test_arguments_are_checked_with_the_option_named(capsys: pytest.CaptureFixture) -> None:
    args = T.parse_args(["--good", "3", "--bins", "0,2,25", "--variants", "resize"])
    assert args.edges == (0, 2, 25) and args.good == 3
    for bad in (["--variants", "tiles,nope"], ["--bins", "3,2"], ["--test", "0"]):
        with pytest.raises(SystemExit):
            T.parse_args(bad)
    err = capsys.readouterr().err
    assert "--variants: unknown nope" in err and "--bins" in err and "--test must be" in err


def test_bench_recipes_get_the_sheet_its_own_poses_and_the_glare(
    capsys: pytest.CaptureFixture,
) -> None:
    args = T.parse_args(["--sheet", "280", "220", "--glare", "0"])
    fields = T.common_fields(args)
    assert fields["sheet"] == {"width_mm": 280.0, "height_mm": 220.0}
    assert fields["robot"] == {"poses_file": "bench.poses.yaml"}
    assert fields["twin"] == {"time_scale": 0.0, "params": {"glare": 0.0}}
    plain = T.common_fields(T.parse_args([]))
    assert "sheet" not in plain and "robot" not in plain and "params" not in plain["twin"]
    for bad in (["--sheet", "0", "220"], ["--glare", "-1"]):
        with pytest.raises(SystemExit):
            T.parse_args(bad)
    err = capsys.readouterr().err
    assert "--sheet: give a width" in err and "--glare must be" in err


def test_zero_miss_threshold_is_the_lowest_defective_score() -> None:
    scores = [1.0, 5.0, 3.0, 4.0, 2.5]
    labels = [0, 0, 1, 1, 0]
    assert F.zero_miss_threshold(scores, labels, "x") == 3.0
    with pytest.raises(SystemExit, match="no defective calibration part"):
        F.zero_miss_threshold([1.0, 2.0], [0, 0], "x")


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_two_sided_p() -> None:
    a = [True, True, True, True, True, False, False]
    b = [False, False, False, False, False, False, True]
    r = F.mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"]) == (5, 1)
    assert r["p"] == pytest.approx(2 * 7 / 64)  # 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert F.mcnemar_exact([True, False], [True, False])["p"] == 1.0  # no discordant pair
    assert F.mcnemar_exact([True] * 8, [False] * 8)["p"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError):
        F.mcnemar_exact([True], [True, False])


def _scored(key: str, label: int, scores: dict, regions: dict | None = None,
            at: float = 0.0) -> object:  # fmt: skip
    truth = [
        T.truth_defect({"centre_mm": [at, 0], "size_mm": 4, "bbox_mm": [at - 1, -1, at + 1, 1]})
    ]
    return F.ScoredPart(key, label, truth if label else [], scores, regions or {})


def test_each_rule_judges_the_same_parts_with_its_own_threshold_and_regions() -> None:
    rules = ("per-shot max", "sheet map max", "sheet map mean", "sheet map min")

    def s(*v: float) -> dict:
        return dict(zip(rules, v, strict=True))

    cal = [_scored("c1", 1, s(10, 10, 8, 6)), _scored("c2", 0, s(9, 9, 7, 5)),
           _scored("c3", 0, s(11, 11, 5, 5))]  # fmt: skip
    th = {r: F.zero_miss_threshold([p.scores[r] for p in cal], [1, 0, 0], r) for r in rules}
    assert th == s(10, 10, 8, 6)
    on, off = [(0.5, 0.0)], [(50.0, 0.0)]
    test = [
        _scored("t1", 1, s(12, 12, 9, 7), {r: on for r in rules[1:]}),  # found by the maps
        _scored("t2", 1, s(10, 10, 7, 6), {r: off for r in rules[1:]}),  # mean misses it
        _scored("t3", 0, s(10.5, 10.5, 6, 5)),  # glare-like: max rejects, mean/min pass
        _scored("t4", 0, s(9, 9, 8.5, 6.5)),  # mean and min reject
    ]
    out = F.rule_outcomes(test, "sheet map mean", th["sheet map mean"])
    assert [o.verdict for o in out] == ["fail", "pass", "pass", "fail"]
    assert out[0].regions == on and out[2].regions == [] and out[0].fusion == "mean"
    assert all(o.regions == [] for o in F.rule_outcomes(test, "per-shot max", 10.0))
    ev = F.evaluate(cal, test, th, (0, 2, 25), tol_mm=2.0, smallest_mm=2.0)
    fr = {r: (ev[r]["false_rejects"]["k"], ev[r]["false_rejects"]["n"]) for r in rules}
    assert fr == {"per-shot max": (1, 2), "sheet map max": (1, 2), "sheet map mean": (1, 2),
                  "sheet map min": (1, 2)}  # fmt: skip
    assert ev["sheet map mean"]["misses"]["k"] == 1 and ev["per-shot max"]["misses"]["k"] == 0
    mc = ev["sheet map mean"]["vs_per_shot_max"]
    assert (mc["only_a"], mc["only_b"]) == (1, 1)  # t4 only by mean, t3 only by max
    assert ev["sheet map max"]["vs_per_shot_max"] == {"only_a": 0, "only_b": 0, "p": 1.0}
    big = ev["sheet map max"]["recall"]["at_or_above_smallest"]
    assert (big["found"]["k"], big["part_rejected"]["k"], big["found"]["n"]) == (1, 2, 2)
    assert ev["per-shot max"]["located"] is False and ev["sheet map min"]["located"] is True
    assert ev["per-shot max"]["calibration_false_rejects"]["k"] == 1  # c3 at 11 >= 10
    assert ev["sheet map mean"]["auroc_test"] == pytest.approx(0.75)


def test_capture_folders_are_read_as_parts_in_the_recipe_pose_order(tmp_path: Path) -> None:
    import json

    (tmp_path / "meta").mkdir()
    (tmp_path / "test" / "defect").mkdir(parents=True)
    (tmp_path / "test" / "good").mkdir(parents=True)
    for stem, sub in (("p000001_a", "defect"), ("p000001_b", "good")):
        (tmp_path / "test" / sub / f"{stem}.png").write_bytes(b"")
    truth = [{"centre_mm": [1, 2], "size_mm": 3}]
    doc = {"ground_truth": "defect", "twin": {"truth": truth},
           "shots": [{"pose_name": "a", "image_path": "x/test/defect/p000001_a.png"},
                     {"pose_name": "b", "image_path": "x/test/good/p000001_b.png"}]}  # fmt: skip
    (tmp_path / "meta" / "p000001.json").write_text(json.dumps(doc))
    (part,) = F.read_parts(tmp_path, ["b", "a"])
    assert part.key == "p000001" and part.label == 1 and part.truth == truth
    assert [(p, f.relative_to(tmp_path).as_posix()) for p, f in part.shots] == [
        ("b", "test/good/p000001_b.png"), ("a", "test/defect/p000001_a.png")]  # fmt: skip
    with pytest.raises(SystemExit, match="no shot of pose c"):
        F.read_parts(tmp_path, ["a", "b", "c"])


def _rule(threshold: float, located: bool, found: tuple[int, int], rejected: tuple[int, int],
          auroc: float | None, vs: tuple[int, int, float]) -> dict:
    bins = [{"bin": "1-2", "at_or_above_smallest": False, "found": T.rate(0, 1),
             "part_rejected": T.rate(1, 1)},
            {"bin": "2-25", "at_or_above_smallest": True, "found": T.rate(*found),
             "part_rejected": T.rate(*rejected)}]  # fmt: skip
    return {
        "threshold": threshold, "calibration_false_rejects": T.rate(3, 10),
        "false_rejects": T.rate(4, 20), "misses": T.rate(1, 8), "located": located,
        "regions": 12 if located else 0, "regions_on_no_defect": 5 if located else 0,
        "recall": {"bins": bins, "at_or_above_smallest": {
            "smallest_mm": 2.0, "found": T.rate(*found), "part_rejected": T.rate(*rejected)}},
        "auroc_test": auroc, "vs_per_shot_max": {"only_a": vs[0], "only_b": vs[1], "p": vs[2]},
    }  # fmt: skip


def test_report_rows_put_each_rule_s_numbers_in_its_own_columns() -> None:
    v = {"rules": {"per-shot max": _rule(30.1234, False, (0, 7), (7, 7), 0.9151, (0, 0, 1.0)),
                   "sheet map max": _rule(29.4, True, (5, 7), (6, 7), None, (3, 9, 0.146))}}
    head, rows = T.rule_rows(v)
    assert head[0] == "rule" and len(head) == len(rows[0]) == len(rows[1]) == 9
    assert rows[0] == ["per-shot max", "30.12", "3/10 = 30% [7%, 65%]", "4/20 = 20% [6%, 44%]",
                       "1/8 = 12% [0%, 53%]", "n/a (part level only)", "-", "0.915", "-"]
    assert rows[1][0] == "sheet map max" and rows[1][1] == "29.4"
    assert rows[1][5:] == ["5/7 = 71% [29%, 96%]", "12 (5)", "-", "3 / 9, p 0.15"]
    head, rows = T.recall_rows(v)
    assert head == ["defect size (mm)", "per-shot max: rejected", "sheet map max: found",
                    "sheet map max: rejected"]
    assert [r[0] for r in rows] == ["1-2", "2-25 *", ">= 2 (smallest)"]
    assert rows[1][1:] == ["7/7 = 100% [59%, 100%]", "5/7 = 71% [29%, 96%]",
                           "6/7 = 86% [42%, 100%]"]
    assert rows[2][1:] == rows[1][1:] and rows[0][1:] == [
        "1/1 = 100% [2%, 100%]", "0/1 = 0% [0%, 98%]", "1/1 = 100% [2%, 100%]"]
