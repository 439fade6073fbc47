"""tools/native_tiles.py: a tiled recipe on images of different sizes, those smaller than a
tile mirrored up to it, laid out as an evaluate run that tools/ensemble_scores.py reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from baseline_runs import SIZE, checked_run, make_category, speck, write_recipe
from tool_module import load_tool

from station.imaging import read_image, write_png


def test_padding_mirrors_images_zero_fills_masks_and_crops_back() -> None:
    tool = load_tool("native_tiles")
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    grown = tool.pad_to(img, (5, 4), mirror=True)
    assert grown.shape == (5, 4)
    assert (grown[0] == img[0]).all() and (grown[-1] == img[-1]).all()  # mirrored rows
    assert (tool.crop_back(grown, (3, 4)) == img).all()
    mask = tool.pad_to(np.ones((3, 4), np.uint8), (4, 6), mirror=False)
    assert mask.sum() == 12 and mask.shape == (4, 6)
    assert tool.pad_to(img, (2, 2), mirror=True).shape == (3, 4)  # never shrinks
    # --scale: one factor for every image, aspect kept; masks stay 0/255
    assert tool.scaled(np.zeros((40, 100), np.uint8), 0.5, is_mask=False).shape == (20, 50)
    blocks = np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))
    half = tool.scaled(blocks, 0.5, is_mask=True)
    assert half.shape == (8, 8) and set(np.unique(half)) == {0, 255} and half[:4, :4].all()


def test_tool_scores_mixed_sizes_at_their_own_pixels(tmp_path: Path, station_home: Path) -> None:
    tool = load_tool("native_tiles")
    cat = make_category(tmp_path / "data" / "weave", "speck", speck)
    # Half the images narrower than a tile, one test image wider than two.
    for p in sorted((cat / "train" / "good").glob("*.png"))[::2]:
        write_png(p, read_image(p)[:, : SIZE - 16])
    wide = cat / "test" / "good" / "t0.png"
    write_png(wide, np.concatenate([read_image(wide)] * 3, axis=1))
    mask = np.where(speck(np.full((SIZE, SIZE), 255, np.uint8)) == 0, 255, 0).astype(np.uint8)
    for i in range(4):  # the specks' masks: where speck() darkens
        write_png(cat / "ground_truth" / "speck" / f"d{i}_mask.png", mask)
    # one good and one defective test image (with its mask) narrower than a tile
    for p in (cat / "test" / "good" / "t1.png", cat / "test" / "speck" / "d1.png",
              cat / "ground_truth" / "speck" / "d1_mask.png"):
        write_png(p, read_image(p)[:, : SIZE - 16])
    recipe = write_recipe(station_home, "native-test", tiled=True)
    out = tmp_path / "out"
    argv = ["--recipe", str(recipe), "--dataset", str(cat.parent), "--threads", "1"]
    assert tool.main([*argv, "--out", str(out)]) == 0

    doc, row, _ = checked_run(out, "patchcore")
    assert doc["tile"] == [SIZE, SIZE]
    assert row["padded_images"] == 12  # ten training and two test images, not the mask
    # each test image's map and mask are cropped back to its own pixels before they count
    own = sum(read_image(p).shape[0] * read_image(p).shape[1]
              for p in (cat / "test").rglob("*.png"))
    assert row["pixels"] == own == SIZE * SIZE * (3 + 2 + 3) + 2 * SIZE * (SIZE - 16)
    assert row["image_auroc"] == 1.0  # every speck above every good weave
    assert 0.9 < row["pixel_auroc"] <= 1.0
    padded = read_image(out / "padded" / "weave" / "train" / "good" / "g00.png")
    assert padded.shape[:2] == (SIZE, SIZE)  # narrowed by 16 px, mirrored back to a tile

    untiled = station_home / "recipes" / "native-untiled.yaml"
    untiled.write_text("extends: native-test\nname: native-untiled\n"
                       "preprocess: {tiling: {enabled: false}}\n")  # fmt: skip
    with pytest.raises(SystemExit, match="resizes whole shots"):
        tool.main(["--recipe", str(untiled), "--dataset", str(cat.parent), "--out", str(out)])
