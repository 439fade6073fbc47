"""tools/few_shot.py: the few-image MVTec folders it builds (seeded draw, symlinks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import few_shot  # noqa: E402 (tools/ on the path first)


def fake_category(root: Path, n_train: int = 12) -> Path:
    cat = root / "mat"
    (cat / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        (cat / "train" / "good" / f"{i:03d}.png").write_bytes(b"png")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    (cat / "test" / "good").mkdir(parents=True)
    (cat / "test" / "good" / "t0.png").write_bytes(b"png")
    (cat / "ground_truth" / "defect").mkdir(parents=True)
    return cat


def test_subset_holds_n_drawn_links_and_the_original_test(tmp_path: Path) -> None:
    src = fake_category(tmp_path / "src")
    dst = tmp_path / "scratch" / "mat"
    chosen = few_shot.build_subset(src, dst, 5, seed=0)
    links = sorted((dst / "train" / "good").iterdir())
    assert len(links) == 5 == len(set(chosen))
    assert all(
        p.is_symlink() and p.resolve().parent == (src / "train/good").resolve() for p in links
    )
    assert {p.name for p in links} == {p.name for p in chosen}
    assert all(p.suffix == ".png" for p in links)  # notes.txt is never drawn
    assert (dst / "test").is_symlink() and (dst / "test").resolve() == (src / "test").resolve()
    assert (dst / "ground_truth").resolve() == (src / "ground_truth").resolve()


def test_draw_is_fixed_by_seed_and_rebuild_replaces(tmp_path: Path) -> None:
    src = fake_category(tmp_path / "src")
    dst = tmp_path / "scratch" / "mat"
    first = few_shot.build_subset(src, dst, 4, seed=1)
    again = few_shot.build_subset(src, dst, 4, seed=1)  # an older folder is replaced
    assert first == again
    assert len(list((dst / "train" / "good").iterdir())) == 4
    others = {tuple(few_shot.build_subset(src, dst, 4, seed=s)) for s in range(2, 8)}
    assert len(others | {tuple(first)}) > 1  # seeds draw different images
    few_shot.build_subset(src, dst, 2, seed=1)
    assert len(list((dst / "train" / "good").iterdir())) == 2
    assert len(list((src / "train" / "good").iterdir())) == 13  # the source is untouched


def test_more_images_than_there_are_is_refused(tmp_path: Path) -> None:
    src = fake_category(tmp_path / "src", n_train=3)
    with pytest.raises(SystemExit, match="only 3 training images"):
        few_shot.build_subset(src, tmp_path / "scratch" / "mat", 4, seed=0)


def test_table_rows_by_hand() -> None:
    def score(i_auroc: float, false_rejects: int) -> few_shot.Score:
        return few_shot.Score(i_auroc, 0.9, false_rejects, 10, (0.0, 1.0), 10, 1)

    three = [score(0.6, 1), score(0.8, 5), score(0.7, 3)]
    lines = few_shot.table("m", [("2", three, ""), ("all", [score(0.9, 2)], " *")]).splitlines()
    assert lines[-2].startswith("| 2 | 9 / 1 | 3 | 0.700 (0.600-0.800) | 0.900 | ")
    assert "| 0.300 (0.100-0.500) |" in lines[-2]
    assert "0.100 (1/10)" in lines[-2] and "0.500 (5/10)" in lines[-2]
    assert lines[-1].startswith("| all * | 9 / 1 | 1 | 0.900 | 0.900 | 0.200 | 0.200 (2/10)")


def _results(path: Path, material: str, i_auroc: float, complete: bool = True) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    op = {"false_rejects": 2, "n_good": 10, "ci_low": 0.0, "ci_high": 0.5}
    det = {"image_auroc": i_auroc, "pixel_auroc": 0.9, "operating_points": {"recall_100": op},
           "model": {"n_train": 3, "good_scores": {"n": 1}}}
    path.write_text(json.dumps({"complete": complete,
                                "categories": {material: {"patchcore": det}}}))


def test_runs_are_planned_by_size_and_grouped_by_material_and_size(tmp_path: Path) -> None:
    reused = tmp_path / "done" / "results.json"
    plan = few_shot.plan_runs(["a", "b"], [2, 50, None], [0, 1, 2], 10, tmp_path, "",
                              {"b": reused})
    assert [(r.material, r.n, r.seed) for r in plan] == [
        ("a", 2, 0), ("a", 2, 1), ("a", 2, 2), ("b", 2, 0), ("b", 2, 1), ("b", 2, 2),
        ("a", 50, 0), ("b", 50, 0), ("a", None, None), ("b", None, None)]  # fmt: skip
    assert plan[1].results == tmp_path / "a" / "n2-s1" / "eval" / "results.json"
    assert plan[-2].results == tmp_path / "a" / "all" / "eval" / "results.json"
    assert plan[-1].results == reused
    tagged = few_shot.plan_runs(["b"], [None], [0], 10, tmp_path, "-val0.2", {"b": reused})
    assert tagged[0].results == tmp_path / "b" / "all-val0.2" / "eval" / "results.json"

    for run, auroc in zip(plan, (0.6, 0.7, 0.8, 0.5, 0.5, 0.5, 0.9, 0.9, 0.95, 0.97),
                          strict=True):
        if run.material == "a" and run.n == 50:
            _results(run.results, "a", auroc, complete=False)  # unfinished: no row
        elif not (run.material == "b" and run.n == 2 and run.seed == 2):
            _results(run.results, run.material, auroc)
    rows = few_shot.table_rows(plan, "a", [2, 50, None], {"b": reused})
    assert [(label, [s.i_auroc for s in scores], note) for label, scores, note in rows] == [
        ("2", [0.6, 0.7, 0.8], ""), ("all", [0.95], "")]
    rows = few_shot.table_rows(plan, "b", [2, 50, None], {"b": reused})
    assert [(label, [s.i_auroc for s in scores], note) for label, scores, note in rows] == [
        ("2", [0.5, 0.5], ""), ("50", [0.9], ""), ("all", [0.97], " (reused)")]
