"""The material check (station.monitoring.material): distance and threshold, the model file and
its identity checks, the cycle hook, and a material switch on the twin caught on its first part.

The twin cell here is the small test recipe with a 160 x 120 camera fed at 64 x 64: at 64 x 48
the shots hold two or three rovings, too few to see a weave (docs/material_check.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from test_inspection_support import BrightSpot, bright_set, database, small_recipe

from station.devices.factory import open_devices
from station.errors import MaterialError, StationError
from station.inspection.cycle import Inspector
from station.inspection.material_hook import MaterialHook, material_hook
from station.inspection.recorder import Recorder
from station.monitoring.material import (
    FOLDS,
    MaterialCheck,
    MaterialModel,
    fit_material,
    latest_model,
    part_of,
    read_model,
    save_model,
)
from station.recipe import Recipe
from station.storage.models import Part, Verdict
from station.twin import render_part_shots
from station.twin.world import TwinWorld

pytestmark = pytest.mark.usefixtures("one_thread")

Trained = tuple[Path, Recipe, MaterialCheck]
SWITCH = {"at_part": 3, "weave": "twill", "roving_pitch_mm": 4.0}


def twin_recipe(home: Path, **overrides: Any) -> Recipe:
    return small_recipe(
        home,
        camera__width=160,
        camera__height=120,
        preprocess={"size": [64, 64], "tiling": {"enabled": False}},
        twin__defect_rate=0.0,
        storage__data_dir=str(home / "data"),  # absolute: whatever $STATION_HOME is
        **overrides,
    )


def good_shots(recipe: Recipe, seeds: range) -> list[np.ndarray]:
    return [img for s in seeds for _, img, _ in render_part_shots(recipe, s, False)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recipe, MaterialCheck]:
    """The twin recipe with a material model fitted on 12 good parts (36 shots)."""
    import shutil

    home = tmp_path_factory.mktemp("material")
    shutil.copytree(Path(__file__).resolve().parents[1] / "recipes", home / "recipes")
    recipe = twin_recipe(home)
    from station.imaging import preprocess

    images = [preprocess(i, recipe.preprocess) for i in good_shots(recipe, range(100, 112))]
    parts = [f"p{i // 3:06d}" for i in range(len(images))]  # three poses a part
    fit_material(recipe, images, "twin-100-111", device="cpu", groups=parts)
    return home, recipe, MaterialCheck.load(recipe, device="cpu")


# -- distance and threshold ---------------------------------------------------------------------


def test_threshold_is_the_held_out_quantile_and_far_points_exceed_it() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (200, 8))
    model = MaterialModel.fit(feats, false_alarm=0.05)
    assert model.distance(feats[:5]) == pytest.approx(np.zeros(5), abs=1e-6)  # in the bank
    fresh = rng.normal(0, 1, (2000, 8))
    rate = float((model.distance(fresh) > model.threshold).mean())
    assert 0.01 < rate < 0.12  # about the 5 % asked for, from held-out folds
    assert model.meta["held_out"]["max"] >= model.threshold
    assert (model.distance(fresh[:50] + 6.0) > model.threshold).all()  # another material
    stricter = MaterialModel.fit(feats, false_alarm=0.01)
    assert stricter.threshold > model.threshold


def test_distance_is_per_channel_standardised() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 1, (100, 2)) * [1.0, 1000.0]  # channel 2 a thousand times wider
    model = MaterialModel.fit(feats, 0.01)
    shifted = feats[:20] + [8.0, 0.0]  # 8 sd off on the narrow channel
    assert (model.distance(shifted) > model.threshold).all()


def test_folds_keep_a_part_together() -> None:
    """Shots of one part share a look (here: an offset per part). Held out by part, a shot is
    measured against other parts only, so the threshold covers part-to-part variation."""
    rng = np.random.default_rng(2)
    offsets = rng.normal(0, 3, (20, 1, 6))  # 20 parts, each its own offset
    feats = (offsets + rng.normal(0, 0.3, (20, 9, 6))).reshape(180, 6)
    parts = [part_of(f"p{i // 9:06d}_r{i % 9}.png") for i in range(180)]
    assert parts[0] == "p000000" and parts[-1] == "p000019"
    by_part = MaterialModel.fit(feats, 0.01, parts)
    by_shot = MaterialModel.fit(feats, 0.01)
    assert by_part.meta["folds_by"] == "part" and by_part.meta["n_parts"] == 20
    assert by_shot.meta["folds_by"] == "shot"
    assert by_part.threshold > 2 * by_shot.threshold
    new_parts = (rng.normal(0, 3, (50, 1, 6)) + rng.normal(0, 0.3, (50, 9, 6))).reshape(450, 6)
    assert (by_part.distance(new_parts) > by_part.threshold).mean() < 0.1
    assert (by_shot.distance(new_parts) > by_shot.threshold).mean() > 0.5
    few = MaterialModel.fit(feats[:27], 0.01, parts[:27])  # 3 parts: folds split shots
    assert few.meta["folds_by"] == "shot" and few.meta["n_parts"] == 3
    assert part_of("fabric_0001.png") == "fabric_0001" and part_of("p12x_a.png") == "p12x_a"


def test_too_few_images_is_a_clear_error() -> None:
    with pytest.raises(StationError, match=f"at least {FOLDS} good training images"):
        MaterialModel.fit(np.zeros((FOLDS - 1, 4)), 0.01)


# -- files and identity -------------------------------------------------------------------------


def test_model_file_round_trip_and_identity(trained: Trained, tmp_path: Path) -> None:
    # a model as fitted in memory, written and read back: every number the same
    fitted = MaterialModel.fit(np.random.default_rng(0).normal(0, 1, (40, 6)), 0.05)
    save_model(fitted, tmp_path / "m.npz")
    back = read_model(tmp_path / "m.npz")
    assert back.threshold == fitted.threshold
    for name in ("bank", "mean", "scale"):
        assert np.array_equal(getattr(back, name), getattr(fitted, name)), name
    _, recipe, check = trained
    path = latest_model(recipe)
    model = read_model(path)
    assert model.threshold == check.model.threshold
    assert model.meta["recipe"] == recipe.name and model.meta["layers"] == ["blocks.2"]
    assert model.meta["n_train"] == 36 and model.meta["train_data_sha256"] == "twin-100-111"
    # another preprocessing: the model no longer fits the recipe
    other = recipe.model_copy(
        update={"preprocess": recipe.preprocess.model_copy(update={"size": (96, 96)})}
    )
    with pytest.raises(StationError, match=r"does not fit recipe .* preprocess") as err:
        MaterialCheck.load(other, device="cpu")
    assert "station train --recipe" in str(err.value)


def test_missing_model_names_the_fix(station_home: Path) -> None:
    recipe = twin_recipe(station_home)
    missing = f"no material model for recipe {recipe.name} in "
    with pytest.raises(StationError, match=missing) as err:
        material_hook(recipe)
    assert f"station train --recipe {recipe.name}" in str(err.value)
    assert "material_check.enabled: false" in str(err.value)
    off = twin_recipe(station_home, monitoring={"material_check": {"enabled": False}})
    assert material_hook(off) is None  # disabled: no model needed


def test_corrupt_model_file_is_a_clear_error(trained: Trained) -> None:
    _, recipe, _ = trained
    bad = recipe.models_dir / "material" / "material-99999999T000000000-00000000.npz"
    try:
        for content in (b"not a numpy file", b"x"):  # numpy reads "x" as a pickle
            bad.write_bytes(content)
            with pytest.raises(StationError, match="cannot be read") as err:
                MaterialCheck.load(recipe, device="cpu")
            assert "unsafely" not in err.value.message  # numpy's advice: never that
            assert err.value.hint == f"retrain: station train --recipe {recipe.name}"
    finally:
        bad.unlink()


# -- the hook -----------------------------------------------------------------------------------


def test_hook_measures_good_shots_and_raises_on_another_material(
    trained: Trained,
) -> None:
    home, recipe, check = trained
    hook = MaterialHook(check)
    for image in good_shots(recipe, range(300, 303)):
        stats = hook.shot(None, "left", image)  # type: ignore[arg-type]
        assert 0 < stats["distance"] <= stats["threshold"] == round(check.model.threshold, 4)
    twill = twin_recipe(home, twin__weave="twill", twin__roving_pitch_mm=4.0)
    image = good_shots(twill, range(300, 301))[0]
    with pytest.raises(MaterialError) as err:
        hook.shot(None, "centre", image)  # type: ignore[arg-type]
    msg = err.value.message
    assert msg.startswith("material differs from training: shot centre at distance ")
    assert "threshold" in msg and msg.endswith("x)")


# -- the twin: a material switch mid-run --------------------------------------------------------


def test_twin_material_switch_is_caught_on_the_first_switched_part(
    trained: Trained,
) -> None:
    home, _, check = trained
    live = twin_recipe(home, twin__params={"material_switch": SWITCH})
    det = BrightSpot()
    det.fit(good_shots(live, range(11, 12)))
    dets = bright_set(live, threshold=0.5, mean=det.mean)
    db = database(live)
    world = TwinWorld(live, seed=3)
    with (
        open_devices(live, world=world) as dev,
        Inspector(
            live,
            dets,
            Recorder(db, live),
            dev,
            operator=lambda f: True,
            hooks=[MaterialHook(check)],
        ) as insp,
    ):
        insp.run_live(count=4)
    with db.session() as s:
        parts = s.scalars(select(Part).order_by(Part.sequence)).all()
        rows = [(p.verdict, p.reason or "", [sh.stats for sh in p.shots]) for p in parts]
    assert len(rows) == 4
    for verdict, _, stats in rows[:2]:  # before the switch: every shot measured, none faulted
        assert verdict != Verdict.FAULT
        assert all(st and st["material"]["distance"] <= st["material"]["threshold"] for st in stats)
    for verdict, reason, _ in rows[2:]:  # the first switched part and the next: never a pass
        assert verdict == Verdict.FAULT
        assert reason.startswith("material differs from training: shot left at distance")


def test_material_switch_params_are_checked(station_home: Path) -> None:
    from station.errors import RecipeError

    for bad, words in [
        ({"at_part": 0}, "at_part must be a part number"),
        ({"at_part": 2, "weave": "satin"}, "weave must be one of"),
        ({"at_part": 2, "roving_pitch_mm": 0.1}, "roving_pitch_mm must be within"),
        ({"at_part": 2, "colour": 1}, "unknown key colour"),
    ]:
        recipe = twin_recipe(station_home, twin__params={"material_switch": bad})
        with pytest.raises(RecipeError, match=words):
            TwinWorld(recipe)


# -- station train ------------------------------------------------------------------------------


def test_station_train_fits_the_material_model(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main
    from station.imaging import write_png

    recipe = twin_recipe(
        station_home,
        detectors=[{"name": "patchcore", "device": "cpu", "params": {"coreset_ratio": 0.5}}],
    )
    data = station_home / "good"
    for part in range(6):
        for pose, img, _ in render_part_shots(recipe, 100 + part, False):
            write_png(data / f"p{part + 1:06d}_{pose}.png", img)

    def train(folder: Path) -> str:
        try:
            main(["train", "--recipe", "small", "--data", str(folder), "--no-db"])
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().out
        return capsys.readouterr().out

    out = train(data)
    assert "material check: threshold" in " ".join(out.split())
    model = read_model(latest_model(recipe))
    assert model.meta["folds_by"] == "part" and model.meta["n_parts"] == 6
    assert model.meta["n_train"] == 18 and len(model.meta["train_data_sha256"]) == 64
    MaterialCheck.load(recipe, device="cpu")  # fits the recipe it was trained for

    few = station_home / "few"  # 2 parts: fitted, with a warning; 1 image: not fitted
    few.mkdir()
    for f in sorted(data.glob("p00000[12]_*.png")):
        (few / f.name).write_bytes(f.read_bytes())
    assert "fewer than 5 its threshold ignores" in " ".join(train(few).split())
    for f in sorted(few.glob("*.png"))[1:]:
        f.unlink()
    assert "material check not fitted" in " ".join(train(few).split())


def test_reviewed_shots_promotion_copied_group_by_their_part() -> None:
    """Promotion copies a reviewed sheet's shots as `review-p<sequence>_<pose>`: one part."""
    shots = [part_of(f"review-p000012_{pose}.png") for pose in ("r1c1", "r1c2", "r2c1")]
    assert shots == ["p000012"] * 3
    assert part_of("review-x_a.png") == "review-x_a"  # not a sequence: the file itself
