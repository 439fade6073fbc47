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
