"""A labelled MVTec-layout folder scored by a real trained PatchCore artifact, end to end.

Trains a small PatchCore (64 x 64 images) into the recipe's models folder, then runs
`station calibrate-threshold --dataset DIR` and checks files, rates and the active calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from station.calibration.core import calibrate
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
    scores = data.scores["patchcore"]
    assert scores[4:].min() > scores[:4].max()  # part score = max over shots: the defect shows
    res = calibrate(data, Policy("zero_miss"), recipe="glassfiber", resamples=200, oob_resamples=0)
    assert res.thresholds["patchcore"] == scores[4:].min()

    # CLI: writes YAML + PNG + history, recorded, usable by inspect for this model version
    main(
        ["calibrate-threshold", "--dataset", str(root), "--policy", "youden", "--resamples", "200"]
    )
    out = capsys.readouterr().out
    assert "youden" in out and "wrote" in out
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
        ("test/good/000", 0), ("test/good/001", 0), ("test/hole/000", 1), ("test/hole/001", 1)
    ]


def test_dataset_hash_sees_labels_and_content() -> None:
    base = [("test/good/a.png", 0, "11"), ("test/defect/b.png", 1, "22")]
    h = dataset_hash(base)
    assert h == dataset_hash(list(reversed(base)))  # order of listing does not matter
    assert h != dataset_hash([("test/good/a.png", 0, "11"), ("test/defect/b.png", 1, "23")])
    assert h != dataset_hash([("test/good/a.png", 1, "11"), ("test/defect/b.png", 1, "22")])
