"""Native-resolution tiles: origins, cutting, blended stitching, training tiles, recipe checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from station.detectors.engine import training_tiles
from station.detectors.registry import parse_recipe
from station.errors import RecipeError, StationError
from station.geometry.tiling import (
    WEIGHT_FLOOR,
    cut,
    pick_tiles,
    stitch,
    tile_grid,
    tile_origins,
    tile_weight,
)
from station.recipe import PreprocessConfig, TilingConfig

SHIPPED = (Path(__file__).resolve().parents[1] / "recipes" / "glassfiber.yaml").read_text()


@pytest.mark.parametrize(
    ("side", "tile", "overlap"),
    [(640, 256, 32), (512, 256, 32), (512, 256, 0), (300, 256, 100), (1250, 256, 64), (7, 3, 2)],
)
def test_origins_cover_the_side_with_the_least_overlap(side: int, tile: int, overlap: int) -> None:
    xs = tile_origins(side, tile, overlap)
    assert xs[0] == 0 and xs[-1] + tile == side
    steps = np.diff(xs)
    assert (steps > 0).all() and (tile - steps >= overlap).all()  # overlap at least as asked
    assert steps.max() - steps.min() <= 1  # spread evenly
    covered = np.zeros(side, bool)
    for x in xs:
        covered[x : x + tile] = True
    assert covered.all()
    if len(xs) > 2:  # no more tiles than needed: one fewer could not keep the overlap
        assert (side - tile) / (len(xs) - 2) > tile - overlap


def test_origins_edge_cases() -> None:
    assert tile_origins(256, 256, 32) == [0]  # side == tile: one tile
    assert tile_origins(512, 256, 0) == [0, 256]  # overlap 0: tiles abut
    assert tile_origins(640, 256, 32) == [0, 192, 384]
    with pytest.raises(ValueError, match="does not fit"):
        tile_origins(200, 256, 0)
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(512, 256, 256)


def test_cut_gives_the_tiles_row_major() -> None:
    img = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3)
    grid = tile_grid(40, 50, (16, 20), 4)
    tiles = cut(img, grid)
    assert tiles.shape == (len(grid), 16, 20, 3)
    for t, (y, x) in zip(tiles, grid.origins, strict=True):
        assert np.array_equal(t, img[y : y + 16, x : x + 20])
    assert grid.origins[1] == (0, grid.xs[1])  # x runs fastest


def test_weight_falls_toward_the_edges_but_never_to_zero() -> None:
    w = tile_weight(32, 48)
    assert w.min() == pytest.approx(WEIGHT_FLOOR**2, rel=1e-5) and w.min() > 0
    assert w.max() == pytest.approx(1.0, abs=0.01)
    assert w[16, 24] > w[16, 2] > w[16, 0] and w[16, 24] > w[1, 24]


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(64, 80, (32, 32), 8), (64, 96, (32, 32), 0)]
)
def test_stitch_reconstructs_a_constant_and_a_ramp(
    h: int, w: int, tile: tuple, overlap: int
) -> None:
    grid = tile_grid(h, w, tile, overlap)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for full in (np.full((h, w), 0.37, np.float32), 0.01 * xx + 0.02 * yy + 1.0):
        back = stitch(cut(full, grid), grid)
        assert back.shape == (h, w) and back.dtype == np.float32
        np.testing.assert_allclose(back, full, rtol=1e-5, atol=1e-6)


def test_stitch_blends_disagreeing_tiles_smoothly() -> None:
    grid = tile_grid(32, 56, (32, 32), 8)  # two tiles, 8 px overlap
    back = stitch(np.stack([np.zeros((32, 32)), np.ones((32, 32))]), grid)
    assert back[:, :24].max() == 0.0 and back[:, 32:].min() == 1.0
    seam = back[5, 24:32]
    assert (np.diff(seam) > 0).all() and 0 < seam[0] < 0.5 < seam[-1] < 1  # a ramp, no step


def test_a_hot_spot_in_one_tile_survives_at_its_place() -> None:
    h, w = 512, 640
    grid = tile_grid(h, w, (256, 256), 32)
    shot = np.zeros((h, w), np.float32)
    shot[300:304, 420:424] = 1.0  # inside the overlap of several tiles and inside one alone
    shot[100:103, 100:103] = 1.0  # only in the first tile
    tiles = cut(shot, grid)
    back = stitch(tiles, grid)
    np.testing.assert_allclose(back, shot, atol=1e-6)
    peak = np.unravel_index(np.argmax(back * (np.arange(h)[:, None] < 200)), back.shape)
    assert 100 <= peak[0] < 103 and 100 <= peak[1] < 103
    # a spot only one tile's map shows (in an overlap the neighbour scored clean) stays put
    lone = np.zeros_like(tiles)
    k = grid.origins.index((grid.ys[1], grid.xs[1]))
    y0, x0 = grid.origins[k]
    lone[k, 10:14, 40:44] = 1.0  # near the tile's top edge: shared with the tile above
    back = stitch(lone, grid)
    peak = np.unravel_index(np.argmax(back), back.shape)
    assert y0 + 10 <= peak[0] < y0 + 14 and x0 + 40 <= peak[1] < x0 + 44
    assert 0.01 < back.max() < 1.0  # diluted by the clean neighbour, never lost


def test_stitch_refuses_maps_that_do_not_fit() -> None:
    grid = tile_grid(64, 64, (32, 32), 0)
    with pytest.raises(ValueError, match="do not fit"):
        stitch(np.zeros((3, 32, 32)), grid)


def test_pick_tiles_is_seeded_and_bounded() -> None:
    a = pick_tiles(9, 3, np.random.default_rng(1))
    assert len(set(a.tolist())) == 3 and a.max() < 9
    assert np.array_equal(a, pick_tiles(9, 3, np.random.default_rng(1)))
    assert np.array_equal(pick_tiles(4, None, np.random.default_rng(0)), np.arange(4))
    assert np.array_equal(pick_tiles(4, 9, np.random.default_rng(0)), np.arange(4))


def _cfg(per_image: int | None = None) -> PreprocessConfig:
    return PreprocessConfig(
        size=(32, 32),
        tiling=TilingConfig(enabled=True, overlap_px=8, train_tiles_per_image=per_image),
    )


def test_training_tiles_are_tile_sized_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    every = training_tiles(shots, _cfg(), seed=0)
    per_shot = len(tile_grid(64, 80, (32, 32), 8))
    assert every.shape == (3 * per_shot, 32, 32, 3)
    some = training_tiles(shots, _cfg(2), seed=5)
    assert some.shape == (6, 32, 32, 3)
    assert np.array_equal(some, training_tiles(shots, _cfg(2), seed=5))
    assert not np.array_equal(some, training_tiles(shots, _cfg(2), seed=6))
    every_list = [t.tobytes() for t in every]
    assert all(t.tobytes() in every_list for t in some)  # drawn from the shots' own tiles
    with pytest.raises(StationError, match="smaller than the 32 x 32 tile"):
        training_tiles([np.zeros((20, 80, 3), np.uint8)], _cfg(), seed=0)


def _recipe(edit) -> list[str]:  # noqa: ANN001
    data = yaml.safe_load(SHIPPED)
    data.setdefault("preprocess", {})
    edit(data["preprocess"])
    try:
        parse_recipe(yaml.safe_dump(data), "tiles.yaml")
    except RecipeError as exc:
        return exc.problems
    return []


def test_recipe_refuses_a_tile_larger_than_the_shot_or_an_overlap_too_wide() -> None:
    on = {"enabled": True, "overlap_px": 32}
    assert _recipe(lambda p: p.update(size=[256, 256], crop=None, tiling=on)) == []
    big = _recipe(lambda p: p.update(size=[700, 256], crop=None, tiling=on))
    assert len(big) == 1 and "preprocess.size" in big[0] and "larger than the 640 x 512" in big[0]
    cropped = _recipe(lambda p: p.update(size=[256, 256], crop=[0, 0, 300, 200], tiling=on))
    assert "larger than the 300 x 200 shot (preprocess.crop)" in cropped[0]
    wide = _recipe(lambda p: p.update(size=[256, 128], tiling={"enabled": True, "overlap_px": 128}))
    assert len(wide) == 1 and "preprocess.tiling.overlap_px" in wide[0] and "128 px" in wide[0]
    assert _recipe(lambda p: p.update(size=[700, 700], tiling={"enabled": False})) == []


TILED_RECIPE = """
preprocess:
  crop: null
  size: [48, 48]
  grey_to_rgb: true
  tiling: {enabled: true, overlap_px: 16, train_tiles_per_image: 3}

detectors:
  - name: patchcore
    backbone: efficientnet_lite0
    weights: package
    device: cpu
    params:
      max_bank: 300
      batch_size: 4
"""


def _weave(seed: int, h: int = 80, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 40 * np.sin(2 * np.pi * x / 8 + px) * np.sin(2 * np.pi * y / 8 + py)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_train_and_evaluate_on_native_tiles(station_home: Path) -> None:
    from test_train_evaluate_cli import run

    from station.detectors.artifact import read_artifact
    from station.imaging import write_png

    text = (station_home / "recipes" / "glassfiber.yaml").read_text()
    head, _, tail = text.partition("preprocess:")
    text = head.replace("name: glassfiber", "name: tiles") + TILED_RECIPE.lstrip()
    (station_home / "recipes" / "tiles.yaml").write_text(
        text + "\n" + tail[tail.index("decision:") :]
    )
    cat = station_home / "ds" / "cat"
    for i in range(4):
        write_png(cat / "train" / "good" / f"g{i}.png", _weave(i))
    for i in range(2):
        write_png(cat / "test" / "good" / f"t{i}.png", _weave(100 + i))
        img, mask = _weave(200 + i), np.zeros((80, 96), np.uint8)
        img[50:60, 60:88] = 15  # in the far corner: only the last tiles see it
        mask[50:60, 60:88] = 255
        write_png(cat / "test" / "defect" / f"d{i}.png", img)
        write_png(cat / "ground_truth" / "defect" / f"d{i}_mask.png", mask)
    assert run(["train", "--recipe", "tiles", "--data", str(cat), "--no-db"]) == 0
    (model,) = (station_home / "data" / "tiles" / "models" / "patchcore").glob("*.pt")
    meta = read_artifact(model)["meta"]
    assert meta["image_size"] == [48, 48] and meta["n_train_images"] == 4
    assert meta["tiling"]["n_train_tiles"] == 4 * 3 and meta["good_scores_per"] == "tile"
    out = station_home / "eval"
    assert run(["evaluate", "--recipe", "tiles", "--dataset", str(cat), "--out", str(out)]) == 0
    m = json.loads((out / "results.json").read_text())["categories"]["cat"]["patchcore"]
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] > 0.9  # maps at 96 x 80, masks too
    # tiling turned off after training: the tiled model would see whole shots squeezed to its
    # tile size (small faults shrunk), so it is refused, not run
    from station.calibration.recipes import load_recipe
    from station.detectors.engine import load_models
    from station.errors import DetectorError

    recipe = station_home / "recipes" / "tiles.yaml"
    recipe.write_text(recipe.read_text().replace("enabled: true", "enabled: false"))
    with pytest.raises(DetectorError, match=r"other preprocessing.*tiling True -> False"):
        load_models(load_recipe(str(recipe)), ["patchcore"])
