"""`station train` and `station evaluate` end to end on tiny generated MVTec-layout folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sqlalchemy import select
from textures import plain_weave

from station.cli.app import main
from station.detectors.artifact import read_artifact
from station.detectors.training import data_sha256
from station.files import file_sha256
from station.imaging import write_png

torch.set_num_threads(2)
SIZE = 64

RECIPE_PATCH = """
preprocess:
  crop: null
  size: [64, 64]
  grey_to_rgb: true

detectors:
  - name: patchcore
    backbone: efficientnet_lite0
    weights: package
    device: cpu
    params:
      max_bank: 200
      batch_size: 4
"""


def weave(seed: int) -> np.ndarray:
    return plain_weave(seed, SIZE)


def make_category(root: Path, n_train: int, seed: int = 0) -> Path:
    for i in range(n_train):
        write_png(root / "train" / "good" / f"g{i}.png", weave(seed + i))
    for i in range(2):
        write_png(root / "test" / "good" / f"t{i}.png", weave(seed + 100 + i))
        img, mask = weave(seed + 200 + i), np.zeros((SIZE, SIZE), np.uint8)
        img[20:30, 16:44] = 15
        mask[20:30, 16:44] = 255
        write_png(root / "test" / "defect" / f"d{i}.png", img)
        write_png(root / "ground_truth" / "defect" / f"d{i}_mask.png", mask)
    return root


def make_recipe(home: Path, name: str, body: str = RECIPE_PATCH) -> str:
    """The shipped recipe renamed `name`, its preprocess and detectors replaced by `body`."""
    text = (home / "recipes" / "glassfiber.yaml").read_text()
    head, _, tail = text.partition("preprocess:")
    tail = tail[tail.index("decision:") :]
    text = head.replace("name: glassfiber", f"name: {name}") + body.lstrip() + "\n" + tail
    (home / "recipes" / f"{name}.yaml").write_text(text)
    return name


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_train_then_evaluate(station_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = make_recipe(station_home, "tiny")
    cat = make_category(station_home / "ds" / "cat_a", n_train=2)
    assert run(["train", "--recipe", recipe, "--data", str(cat), "--threads", "2"]) == 0
    models = sorted((station_home / "data" / "tiny" / "models" / "patchcore").glob("*.pt"))
    assert len(models) == 1 and models[0].name.startswith("patchcore-")
    from station.detectors.artifact import read_artifact

    meta = read_artifact(models[0])["meta"]
    assert meta["recipe"] == "tiny" and meta["n_train_images"] == 2
    assert meta["image_size"] == [SIZE, SIZE] and meta["good_scores"]["n"] == 1
    assert meta["backbone"]["weights_source"] == "package"
    assert len(meta["train_data_sha256"]) == 64
    train = sorted((cat / "train" / "good").glob("*.png"))
    assert meta["fit_files_sha256"] == [file_sha256(p) for p in train]  # in the fit's order

    from station.storage.db import open_database
    from station.storage.models import ModelVersion

    db = open_database(f"sqlite:///{station_home / 'data' / 'station.db'}")
    with db.session() as s:
        row = s.scalars(select(ModelVersion)).one()
    db.dispose()
    assert row.recipe == "tiny" and row.version == meta["version"]
    assert row.artifact_path == f"tiny/models/patchcore/{models[0].name}"
    assert row.metrics["good_scores"]["n"] == 1
    said = capsys.readouterr().out
    assert "patchcore learnt from 1 image(s) (1 of 2 held out" in " ".join(said.split())

    out = station_home / "eval"
    assert run(["evaluate", "--recipe", recipe, "--dataset", str(cat), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "I-AUROC" in printed and "mean" in printed
    res = json.loads((out / "results.json").read_text())
    m = res["categories"]["cat_a"]["patchcore"]
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] > 0.9
    assert m["model"]["version"] == meta["version"]
    assert list((out / "cat_a" / "patchcore").glob("*.png"))
    rows = (out / "cat_a" / "patchcore" / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,kind,label,score" and len(rows) == 1 + m["n_test"]
    by_label: dict[str, list[float]] = {"good": [], "defect": []}
    for row in rows[1:]:
        _, kind, label, score = row.split(",")
        assert kind == ("good" if label == "good" else "defect")
        by_label[label].append(float(score))
    assert len(by_label["defect"]) == m["n_defect"]
    assert min(by_label["defect"]) > max(by_label["good"])  # image AUROC 1.0, as reported

    # operating points: every good test image below the lowest defect, so 0 of 2 rejected
    assert "FR@R100" in printed and "FR@zero_miss" in printed and "(0/2)" in printed
    points = m["operating_points"]
    assert set(points) == {"recall_100", "recall_95", "policy"}
    r100 = points["recall_100"]
    assert r100["threshold"] == pytest.approx(min(by_label["defect"]), rel=1e-5)
    assert (r100["false_rejects"], r100["n_good"], r100["caught"]) == (0, 2, 2)
    assert r100["false_reject_rate"] == 0.0 == m["fr_recall_100"]
    assert r100["ci_low"] == 0.0 and r100["ci_high"] == pytest.approx(1 - 0.025**0.5)
    assert points["policy"]["label"].startswith("policy zero_miss on the test set (optimistic")
    assert points["policy"]["threshold"] == r100["threshold"]
    assert res["mean"]["patchcore"]["fr_recall_95"] == 0.0
    assert res["operating_points"]["policy"] == {"name": "zero_miss"}
    md = (out / "results.md").read_text()
    assert "| cat_a | patchcore |" in md and "0.000 (0/2) [0.000, 0.842]" in md
    assert "FR@zero_miss†: policy zero_miss on the test set (optimistic" in md
    assert res["data_checks"]["cat_a"]["copies_of_training"] == {"good": 0, "defect": 0}
    assert "byte copies" not in printed

    # a test split holding a training image and a flat one: counted, and said with the figures
    shutil.copy(cat / "train" / "good" / "g1.png", cat / "test" / "good" / "t_copy.png")
    write_png(cat / "test" / "good" / "t_flat.png", np.full((SIZE, SIZE), 255, np.uint8))
    assert run(["evaluate", "--recipe", recipe, "--dataset", str(cat), "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    checks = json.loads((out / "results.json").read_text())["data_checks"]["cat_a"]
    assert checks == {"n": {"good": 4, "defect": 2}, "copies_of_training": {"good": 1, "defect": 0},
                      "flat": {"good": 1, "defect": 0}, "without_mask": {"defect": 0}}  # fmt: skip
    said = ("cat_a: of 4 good / 2 defective test images, 1 / 0 are byte copies of training "
            "images and 1 / 0 are one flat value (an image not decoded as its maker meant looks "
            "so too); the figures count them")  # fmt: skip
    assert f"warning: {said}" in printed and said in (out / "results.md").read_text()


def test_train_says_what_its_images_look_misread(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flat training image and one of 12-bit data in a 16-bit file (it reads nearly black:
    its high byte is kept) are each said before training."""
    recipe = make_recipe(station_home, "tiny")
    cat = make_category(station_home / "ds" / "cat_c", n_train=2)
    write_png(cat / "train" / "good" / "g_flat.png", np.full((SIZE, SIZE), 128, np.uint8))
    twelve = (weave(7).astype(np.uint16) * 16)  # 0-4080: 12 bits in 16
    cv2.imwrite(str(cat / "train" / "good" / "g_12bit.png"), twelve)
    assert run(["train", "--recipe", recipe, "--data", str(cat), "--threads", "2"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: 1 of 4 training images are one flat value" in said
    assert "warning: 1 of 4 training images read no brighter than grey 15" in said


def test_evaluate_reads_a_new_materials_layout(
    station_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another maker's MVTec layout: the good folder `ok` (BTAD), a ground-truth folder and
    mask suffix in other case, 16-bit masks of 0/1, a mask drawn at twice its image's size,
    the same file name under two defect kinds, a defect without a mask. Every image is
    scored once under its own kind; pixel metrics count the defects that have masks, and the
    missing mask is said."""
    recipe = make_recipe(station_home, "tiny")
    cat = make_category(station_home / "ds" / "cat_b", n_train=3)
    (cat / "test" / "good").rename(cat / "test" / "ok")
    gt = cat / "ground_truth"
    (gt / "defect").rename(gt / "Defect")
    for i in range(2):
        mask = cv2.imread(str(gt / "Defect" / f"d{i}_mask.png"), cv2.IMREAD_UNCHANGED)
        (gt / "Defect" / f"d{i}_mask.png").unlink()
        big = cv2.resize((mask > 0).astype(np.uint16), None, fx=2, fy=2,
                         interpolation=cv2.INTER_NEAREST)  # 0/1 in 16 bits, twice the size
        cv2.imwrite(str(gt / "Defect" / f"d{i}_mask.PNG"), big)
    other = weave(300)
    other[8:14, 8:40] = 240
    write_png(cat / "test" / "scratch" / "d0.png", other)  # MVTec names repeat across kinds
    out = station_home / "eval_b"
    from station.calibration import evaluation

    # as if the set were too large for its pixel metrics at full size: every 2nd row, column
    monkeypatch.setattr(evaluation, "MAX_PIXEL_METRIC_PIXELS", 4 * SIZE * SIZE // 3)
    assert run(["evaluate", "-r", recipe, "--dataset", str(cat), "--out", str(out), "--train"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    res = json.loads((out / "results.json").read_text())
    m = res["categories"]["cat_b"]["patchcore"]
    assert (m["n_test"], m["n_defect"]) == (5, 3) and m["pixel_auroc"] > 0.9
    rows = (out / "cat_b" / "patchcore" / "scores.csv").read_text().splitlines()[1:]
    assert sorted(r.rsplit(",", 1)[0] for r in rows) == [
        "d0,defect,defect", "d0,scratch,defect", "d1,defect,defect", "t0,ok,good", "t1,ok,good"]
    assert res["data_checks"]["cat_b"]["without_mask"] == {"defect": 1}
    assert "cat_b: 1 of 3 defective test images have no mask" in printed
    assert m["pixel_metrics_step"] == 2 and "every 2th row and column" not in printed
    assert "cat_b: pixel metrics on every 2nd row and column" in printed


def test_evaluate_with_training_per_category(station_home: Path) -> None:
    recipe = make_recipe(station_home, "tiny")
    root = station_home / "bench"
    make_category(root / "c1", n_train=3, seed=10)
    make_category(root / "c2", n_train=3, seed=20)
    out = station_home / "eval"
    assert (
        run(["evaluate", "-r", recipe, "--dataset", str(root), "--out", str(out), "--train"]) == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert set(res["categories"]) == {"c1", "c2"} and res["complete"] is True
    assert set(res["mean"]["patchcore"]) >= {"image_auroc", "pixel_auroc", "aupro"}
    for key in ("image_auroc", "pixel_auroc", "aupro", "fr_recall_100"):
        per_cat = [res["categories"][c]["patchcore"][key] for c in ("c1", "c2")]
        assert res["mean"]["patchcore"][key] == pytest.approx(sum(per_cat) / 2), key
    # each model learnt from its category's train/good and nothing else
    for cat in ("c1", "c2"):
        assert res["categories"][cat]["patchcore"]["model"]["n_train"] == 3
        meta = read_artifact(out / cat / "patchcore.pt")["meta"]
        train = sorted((root / cat / "train" / "good").glob("*.png"))
        assert meta["train_data_sha256"] == data_sha256(train)
    assert (out / "c1" / "patchcore.pt").is_file()
    assert not (station_home / "data" / "tiny" / "models").exists()  # recipe models untouched


def test_evaluate_with_seeds_reports_the_spread(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = make_recipe(station_home, "tiny")
    root = station_home / "bench"
    make_category(root / "c1", n_train=4, seed=10)
    make_category(root / "c2", n_train=4, seed=20)
    out = station_home / "eval"
    argv = ["evaluate", "-r", recipe, "--dataset", str(root), "--out", str(out), "--train"]
    assert run([*argv, "--seeds", "0,3"]) == 0
    printed = capsys.readouterr().out
    assert "trained with seeds 0, 3" in printed and "seeds.md" in printed
    runs = {n: json.loads((out / f"seed-{n}" / "results.json").read_text()) for n in (0, 3)}
    for n, res in runs.items():
        assert res["complete"] and res["detectors"]["patchcore"]["params"]["seed"] == n
    # the seed reached training: each holds out another one of the four good images
    good = [res["categories"]["c1"]["patchcore"]["model"]["good_scores"] for res in runs.values()]
    assert good[0] != good[1]
    spread = json.loads((out / "seeds.json").read_text())
    assert spread["seeds"] == spread["requested"] == [0, 3] and spread["complete"] is True
    for cat in ("c1", "c2"):
        cell = spread["spread"]["categories"][cat]["patchcore"]["image_auroc"]
        per_seed = [res["categories"][cat]["patchcore"]["image_auroc"] for res in runs.values()]
        assert cell["values"] == per_seed
        assert cell["mean"] == pytest.approx(sum(per_seed) / 2)
        assert cell["sd"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    means = spread["spread"]["mean"]["patchcore"]["fr_recall_100"]["values"]
    assert means == [res["mean"]["patchcore"]["fr_recall_100"] for res in runs.values()]
    worst = spread["spread"]["worst"]["patchcore"]["image_auroc"]["values"]
    assert worst == [
        min(per["patchcore"]["image_auroc"] for per in res["categories"].values())
        for res in runs.values()
    ]
    md = (out / "seeds.md").read_text()
    assert "| **mean** | patchcore |" in md and "+-" in md
    # refused before any work: seeds without training, and a malformed list
    assert run(["evaluate", "-r", recipe, "--dataset", str(root), "--seeds", "0,1"]) == 2
    assert "add --train" in capsys.readouterr().err
    for bad in ("1", "0,x", "2,2"):
        assert run([*argv, "--seeds", bad]) == 2
        err = capsys.readouterr().err
        assert f"--seeds '{bad}'" in err and "Traceback" not in err


def test_model_from_another_recipe_is_refused(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = make_recipe(station_home, "first"), make_recipe(station_home, "second")
    cat = make_category(station_home / "ds" / "cat", n_train=2)
    assert run(["train", "-r", first, "--data", str(cat), "--no-db"]) == 0
    src = next((station_home / "data" / "first" / "models" / "patchcore").glob("*.pt"))
    dst = station_home / "data" / "second" / "models" / "patchcore" / src.name
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    capsys.readouterr()
    assert run(["evaluate", "-r", second, "--dataset", str(cat)]) == 2
    err = capsys.readouterr().err
    assert "'first'" in err and "'second'" in err and "Traceback" not in err


def test_model_trained_before_the_recipe_changed_is_refused(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = make_recipe(station_home, "tiny")
    cat = make_category(station_home / "ds" / "cat", n_train=2)
    assert run(["train", "-r", recipe, "--data", str(cat), "--no-db"]) == 0
    path = station_home / "recipes" / "tiny.yaml"
    trained = path.read_text()
    edits = [
        ("max_bank: 200", "max_bank: 300", "max_bank 200 -> 300"),
        ("params:\n", "params:\n      mirror_pad: 0\n", "mirror_pad 32 -> 0"),
        ("backbone: efficientnet_lite0", "backbone: efficientnet_lite1", "efficientnet_lite1"),
        ("crop: null", "crop: [0, 0, 64, 64]", "crop None -> [0, 0, 64, 64]"),
        ("grey_to_rgb: true", "grey_to_rgb: false", "grey_to_rgb True -> False"),
    ]
    for old, new, said in edits:
        assert old in trained
        path.write_text(trained.replace(old, new, 1))
        capsys.readouterr()
        assert run(["evaluate", "-r", recipe, "--dataset", str(cat)]) == 2, said
        err = capsys.readouterr().err
        assert said in err and "station train --recipe tiny" in err, err
        assert "Traceback" not in err
    # the device is not a setting of the model: changing it needs no retraining
    path.write_text(trained.replace("device: cpu", "device: auto"))
    assert run(["evaluate", "-r", recipe, "--dataset", str(cat)]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_on_the_cpu_says_so_once(
    station_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`device: auto` without a GPU: one warning per command, though the detector and the
    material check each resolve the device (it was printed twice)."""
    from station.detectors import backbones

    monkeypatch.setattr(backbones, "_cpu_announced", False)  # as in a new process
    recipe = make_recipe(station_home, "tiny", RECIPE_PATCH.replace("device: cpu", "device: auto"))
    cat = make_category(station_home / "ds" / "cat", n_train=6)  # 5 for the material check
    assert run(["train", "-r", recipe, "--data", str(cat), "--no-db"]) == 0
    out = capsys.readouterr()
    assert "material check: threshold" in out.out, out.out  # both were built on the CPU
    assert out.err.count("WARNING: no CUDA GPU found; detectors run on the CPU") == 1, out.err


def test_clear_errors(station_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = make_recipe(station_home, "tiny")
    empty = station_home / "empty"
    empty.mkdir()
    assert run(["train", "-r", recipe, "--data", str(empty)]) == 2
    assert "no training images" in capsys.readouterr().err
    for bad in ("gpu", ""):  # the device is checked before any image is looked at
        assert run(["train", "-r", recipe, "--data", str(empty), "--device", bad]) == 2
        assert "device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert run(["train", "-r", recipe]) == 2  # nothing captured yet
    assert "does not exist" in capsys.readouterr().err
    assert run(["train", "-r", recipe, "--data", str(empty), "-d", "simplenet"]) == 2
    assert "has no detector 'simplenet'" in capsys.readouterr().err
    assert run(["evaluate", "-r", recipe, "--dataset", str(empty)]) == 2
    assert "neither an MVTec-layout folder" in capsys.readouterr().err
    cat = make_category(station_home / "ds" / "cat", n_train=2)
    assert run(["evaluate", "-r", recipe, "--dataset", str(cat)]) == 2
    assert "run station train" in capsys.readouterr().err
    # an output folder that cannot be made (under a file; as root, permissions do not stop it)
    afile = station_home / "afile"
    afile.write_text("")
    argv = ["evaluate", "-r", recipe, "--dataset", str(cat), "--out", str(afile / "sub")]
    assert run([*argv, "--train"]) == 2
    err = capsys.readouterr().err
    assert "cannot write results folder" in err and "Traceback" not in err
    assert run([*argv, "--batch", "0"]) == 2  # a usage error, before any work
    assert "--batch" in capsys.readouterr().err
    # text in brackets is printed as it is, never read as markup
    assert run(["train", "-r", recipe, "--data", str(station_home / "run[/x]")]) == 2
    assert "run[/x]" in capsys.readouterr().err
    (cat / "train" / "good" / "g0.png").write_bytes(b"\x89PNG broken")
    assert run(["train", "-r", recipe, "--data", str(cat)]) == 2
    assert "g0.png" in capsys.readouterr().err


def test_a_dataset_that_is_a_file_is_named_as_one(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.datasets import MVTecFolder
    from station.errors import StationError

    recipe = make_recipe(station_home, "tiny")
    afile = station_home / "afile"
    afile.write_text("")
    capsys.readouterr()
    assert run(["evaluate", "-r", recipe, "--dataset", str(afile)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines()[0] == (
        f"error: dataset {afile} is a file, not a dataset folder"
    ), out.err
    with pytest.raises(StationError, match="is a file, not a dataset folder"):
        MVTecFolder(afile)
    with pytest.raises(StationError, match="does not exist"):
        MVTecFolder(station_home / "nowhere")


def test_aitex_clean_goods_include_two_digit_defect_free_codes() -> None:
    import numpy as np

    from station.calibration.evaluation import clean_good_mask

    stems = ["0018_00_01_t00", "0004_002_01_t01", "0001_000_00_t03", "0004_002_01_t05"]
    mask = clean_good_mask(stems, np.array([0, 0, 0, 1]))
    assert mask is not None and mask.tolist() == [True, False, True, True]
    assert clean_good_mask(["p000001_left"], np.array([0])) is None


def test_a_failed_train_adds_no_model_of_any_detector(
    station_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    from station.detectors import training
    from station.errors import StationError

    body = RECIPE_PATCH + "  - name: simplenet\n    backbone: efficientnet_lite0\n    device: cpu\n"
    recipe = make_recipe(station_home, "two", body)
    cat = make_category(station_home / "ds" / "cat", n_train=2)
    models = station_home / "data" / "two" / "models"

    def train_and_save(rcp, det_cfg, files, images, out_path=None, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if det_cfg.name == "simplenet":  # the second detector: as save_artifact on a full disk
            raise StationError("cannot write model file: No space left on device")
        version = training.new_version(det_cfg.name)
        path = out_path or rcp.models_dir / det_cfg.name / f"{version}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a whole model")
        return SimpleNamespace(version=version, path=path, meta={"detector": det_cfg.name})

    monkeypatch.setattr(training, "train_and_save", train_and_save)
    assert run(["train", "-r", recipe, "--data", str(cat), "--no-db"]) != 0
    assert not models.exists() or [p for p in models.rglob("*") if p.is_file()] == []


def test_a_dataset_without_its_test_split_says_what_to_give(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = make_recipe(station_home, "tiny")
    cat = make_category(station_home / "ds" / "cat", n_train=2)
    assert run(["train", "-r", recipe, "--data", str(cat), "--no-db"]) == 0
    shutil.rmtree(cat / "test")
    capsys.readouterr()
    assert run(["evaluate", "-r", recipe, "--dataset", str(cat)]) == 2
    err = capsys.readouterr().err
    assert f"no test images in {cat / 'test'}" in err and "hint: give --dataset" in err, err
    nope = station_home / "nope"
    assert run(["calibrate-threshold", "-r", recipe, "--dataset", str(nope)]) == 2
    err = capsys.readouterr().err
    assert f"--dataset {nope} is not a folder" in err and "Traceback" not in err, err
