"""A labelled MVTec-layout folder scored by a real trained PatchCore artifact, end to end.

Trains a small PatchCore (64 x 64 images) into the recipe's models folder, then runs
`station calibrate-threshold --dataset DIR` and checks files, rates and the active calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from station.calibration.core import GUARD, calibrate
from station.calibration.policies import Policy
from station.calibration.scores import dataset_hash, score_folder
from station.calibration.store import load_active_calibration
from station.detectors.engine import load_models
from station.recipe import load_recipe

SIZE = 64


def _weave(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = 120 + 40 * np.sin(x * 0.8 + rng.uniform(0, 6)) * np.sin(y * 0.8)
    return np.clip(base + rng.normal(0, 6, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def _folder(root: Path, rng: np.random.Generator) -> None:
    from station.imaging import write_png

    for i in range(8):
        write_png(root / "train/good" / f"t{i:03d}.png", _weave(rng))
    # capture layout: parts 1-4 good, parts 5-7 have a defect in one of their two shots
    for seq in range(1, 8):
        for k, pose in enumerate(("left", "right")):
            img = _weave(rng)
            defect = seq >= 5 and k == 1
            if defect:
                img[20:34, 24:40] = 250
            sub = "test/defect" if defect else "test/good"
            write_png(root / sub / f"p{seq:06d}_{pose}.png", img)


@pytest.mark.slow
def test_folder_scored_by_trained_artifact_then_cli(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main
    from station.datasets import MVTecFolder
    from station.detectors.engine import load_images
    from station.detectors.training import train_and_save

    root = station_home / "ds"
    _folder(root, np.random.default_rng(0))
    # station capture's meta: part 2's sheet was off its place, part 3's was not
    (root / "meta").mkdir()
    off = "the sheet lies +9.0 / -4.0 mm off its place"
    (root / "meta" / "p000002.json").write_text(json.dumps({"placement": {"problem": off}}))
    (root / "meta" / "p000003.json").write_text(json.dumps({"placement": {"problem": None}}))
    path = station_home / "recipes" / "glassfiber.yaml"
    text = path.read_text().replace("size: [256, 256]", f"size: [{SIZE}, {SIZE}]")
    path.write_text(text.replace("device: auto ", "device: cpu "))
    recipe = load_recipe("glassfiber")
    files = MVTecFolder(root).train_good()
    trained = train_and_save(
        recipe, recipe.detectors[0], files, load_images(files, recipe.preprocess)
    )

    # library: the newest artifact scores the folder; shots group into parts by p<seq>_
    data = score_folder(recipe, root, "dataset", models=load_models(recipe), batch_size=4)
    assert data.part_ids == [f"p{s:06d}" for s in range(1, 8)]
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and data.n_shots == 14
    assert data.model_versions == {"patchcore": trained.version}
    assert data.warnings == [f"1 of 7 parts were off their place when captured, so they are "
                             f"scored only where they lay inside the region: p000002 ({off}); "
                             "capture them again, or leave their files out of the folder"]
    scores = data.scores["patchcore"]
    assert scores[4:].min() > scores[:4].max()  # part score = max over shots: the defect shows
    res = calibrate(data, Policy("zero_miss"), recipe="glassfiber", resamples=200, oob_resamples=0)
    # the weakest defect's score, lowered by the guard against batch rounding
    assert res.thresholds["patchcore"] == pytest.approx(scores[4:].min() * (1 - GUARD), rel=1e-9)

    # CLI: writes YAML + PNG + history, recorded, usable by inspect for this model version
    main(
        ["calibrate-threshold", "--dataset", str(root), "--policy", "youden", "--resamples", "200"]
    )
    out, err = capsys.readouterr()
    assert "youden" in out and "wrote" in out
    assert "warning: 1 of 7 parts were off their place when captured" in " ".join(err.split())
    doc = yaml.safe_load((station_home / "calibration" / "glassfiber.yaml").read_text())
    assert doc["source"] == "dataset" and doc["model_versions"] == {"patchcore": trained.version}
    assert doc["counts"] == {"good": 4, "defect": 3, "shots": 14}
    t = doc["thresholds"]["patchcore"]
    assert int((scores[:4] >= t).sum()) == doc["combined"]["false_reject_rate"]["count"]
    assert int((scores[4:] < t).sum()) == doc["combined"]["miss_rate"]["count"]
    assert (station_home / "calibration" / "glassfiber_roc.png").stat().st_size > 10_000
    active = load_active_calibration(recipe, {"patchcore": trained.version})
    assert active.thresholds == {"patchcore": t} and active.policy == "youden"

    # MVTec AD layout: the same file names in every folder are still different parts
    from station.imaging import write_png

    mv = station_home / "mvtec"
    rng = np.random.default_rng(1)
    for sub in ("test/good", "test/hole"):
        for i in range(2):
            write_png(mv / sub / f"{i:03d}.png", _weave(rng))
    data = score_folder(recipe, mv, "dataset", models=load_models(recipe), batch_size=4)
    assert sorted(zip(data.part_ids, data.labels.tolist(), strict=True)) == [
        ("test/good/000", 0),
        ("test/good/001", 0),
        ("test/hole/000", 1),
        ("test/hole/001", 1),
    ]


class _UnderTheViews:
    """make_sheet of a TwinWorld with each defect moved next to one of the small recipe's
    three poses (a 6.4 x 4.8 mm view each): so the tiny capture has defective parts."""

    def __init__(self, world: object) -> None:
        self.make = world.make_sheet  # type: ignore[attr-defined]

    def __call__(self, seed: int, defective: bool | None = None) -> object:
        import dataclasses

        spec = self.make(seed, defective)
        rng = np.random.default_rng([seed, 3])
        moved = [
            dataclasses.replace(
                d,
                centre_mm=(
                    float(rng.choice([-12.0, 0.0, 12.0]) + rng.uniform(-1.5, 1.5)),
                    float(rng.uniform(-1.5, 1.5)),
                ),
                size_mm=min(d.size_mm, 4.0),
            )
            for d in spec.defects
        ]
        return dataclasses.replace(spec, defects=tuple(moved))


def _twin_capture(home: Path, tiled: bool) -> tuple[Path, object]:
    """Eight labelled parts of the small twin recipe (three poses, 64 x 48 px) with
    combine_poses sheet_map; returns the capture folder and the recipe."""
    from test_inspection_support import small_recipe

    from station.inspection.capture import run_capture
    from station.twin.world import TwinWorld

    recipe = small_recipe(
        home,
        decision={"combine_poses": "sheet_map", "sheet_map_mm_per_px": 0.1},
        preprocess={"size": [32, 32], "tiling": {"enabled": tiled, "overlap_px": 8}},
        twin__defect_size_mm=[2.0, 4.0],
        camera__exposure_us=3000,  # the shipped exposure saturates the 12 mm lens's view
    )
    world = TwinWorld(recipe, seed=11, defect_rate=0.5)
    world.make_sheet = _UnderTheViews(world)  # type: ignore[method-assign]
    root = home / "cap"
    result = run_capture(recipe, 8, label="labelled", out=root, world=world)
    assert 0 < result.defect_parts < 8
    return root, recipe


@pytest.mark.parametrize("tiled", [False, True])
def test_sheet_map_calibration_scores_parts_as_inspection_does(
    station_home: Path, tiled: bool
) -> None:
    """combine_poses sheet_map: a captured part's calibration score is its sheet map's raw
    peak, the same (to 1e-6) as inspection computes for the same images, maps at the detector
    size (resized) or at the shot's own size (tiles); the calibrated threshold then decides
    the parts as inspection does."""
    from test_inspection_support import BrightSpot, bright_set, database

    from station.cellcal.store import inspection_camera
    from station.detectors.artifact import LoadedModel
    from station.detectors.engine import load_images
    from station.inspection.cycle import Inspector
    from station.inspection.offline import group_offline
    from station.inspection.recorder import Recorder
    from station.storage.models import Verdict

    root, recipe = _twin_capture(station_home, tiled)
    camera = inspection_camera(recipe)
    det = BrightSpot()
    det.fit(load_images(sorted((root / "test/good").glob("*.png")), recipe.preprocess))
    models = {"brightspot": LoadedModel(det, {}, "brightspot-test-1", Path("-"), "")}
    data = score_folder(recipe, root, "capture", models=models, batch_size=4, camera=camera)
    assert data.part_ids == [f"p{s:06d}" for s in range(1, 9)] and data.n_shots == 24
    assert data.shots is not None and data.shots["brightspot"].shape == (8, 1)
    assert any("sheet map" in n and camera.source in n for n in data.notes)
    res = calibrate(
        data,
        Policy("zero_miss"),
        recipe=recipe.name,
        resamples=100,
        oob_resamples=0,
        combine_poses="sheet_map",
    )
    threshold = res.thresholds["brightspot"]

    dets = bright_set(recipe, threshold=threshold, mean=det.mean)
    groups = group_offline([root / "test"], recipe)
    with Inspector(recipe, dets, Recorder(database(recipe), recipe)) as insp:
        results = insp.run_offline(groups).results
    scores = dict(zip(data.part_ids, data.scores["brightspot"], strict=True))
    labels = dict(zip(data.part_ids, data.labels.tolist(), strict=True))
    assert len(results) == 8
    for group, result in zip(groups, results, strict=True):
        key = group.key.rsplit("/", 1)[-1]
        assert result.scores["brightspot"] == pytest.approx(scores[key], abs=1e-6), key
        assert result.sheet is not None and result.sheet.camera_source == camera.source
        assert result.verdict == (Verdict.FAIL if scores[key] >= threshold else Verdict.PASS)
        if labels[key]:  # zero_miss: every defective part is rejected
            assert result.verdict == Verdict.FAIL, key
    assert {r.verdict for r in results} == {Verdict.PASS, Verdict.FAIL}


def test_sheet_map_calibration_refuses_what_it_cannot_place(station_home: Path) -> None:
    """No camera model, a part lacking a pose, an image named for no pose, reviews: refused
    with a one-line error that says what to do."""
    from test_inspection_support import BrightSpot, small_recipe

    from station.calibration.scores import scores_from_reviews
    from station.detectors.artifact import LoadedModel
    from station.errors import CalibrationError
    from station.geometry.sheet_map import shot_view
    from station.imaging import write_png

    recipe = small_recipe(station_home, decision={"combine_poses": "sheet_map"})
    models = {"brightspot": LoadedModel(BrightSpot(), {}, "b-1", Path("-"), "")}
    root = station_home / "cap"
    img = np.full((48, 64), 100, np.uint8)
    for pose in ("left", "centre"):  # no "right"
        write_png(root / "test/good" / f"p000001_{pose}.png", img)
    with pytest.raises(CalibrationError, match="no camera model"):
        score_folder(recipe, root, "capture", models=models)

    class Down:  # a camera model straight down from the TCP (CameraLike)
        matrix = np.array([[3478.0, 0, 31.5], [0, 3478.0, 23.5], [0, 0, 1]])
        dist = np.zeros(5)
        table_to_base = np.eye(4)
        width, height, source = 64, 48, "test"

        def camera_pose(self, tcp: list[float]) -> np.ndarray:
            t = np.diag([1.0, -1.0, -1.0, 1.0])
            t[:3, 3] = tcp[:3]
            return t

    view = shot_view(Down(), "centre", [400.0, 0.0, 350.0, np.pi, 0.0, 0.0])
    assert view.size == (64, 48) and view.camera_to_base[2, 3] == 350.0
    with pytest.raises(CalibrationError, match="no image of pose right"):
        score_folder(recipe, root, "capture", models=models, camera=Down())
    write_png(root / "test/good" / "p000001_right.png", img)
    write_png(root / "test/good" / "p000001_top.png", img)
    with pytest.raises(CalibrationError, match="pose 'top', not one of"):
        score_folder(recipe, root, "capture", models=models, camera=Down())
    (root / "test/good" / "p000001_top.png").unlink()
    data = score_folder(recipe, root, "capture", models=models, camera=Down())
    assert data.part_ids == ["p000001"] and np.isfinite(data.scores["brightspot"]).all()
    with pytest.raises(CalibrationError, match="does not keep"):
        scores_from_reviews(recipe)


def test_dataset_hash_sees_labels_and_content() -> None:
    base = [("test/good/a.png", 0, "11"), ("test/defect/b.png", 1, "22")]
    h = dataset_hash(base)
    assert h == dataset_hash(list(reversed(base)))  # order of listing does not matter
    assert h != dataset_hash([("test/good/a.png", 0, "11"), ("test/defect/b.png", 1, "23")])
    assert h != dataset_hash([("test/good/a.png", 1, "11"), ("test/defect/b.png", 1, "22")])
