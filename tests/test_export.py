"""`station export` and the ONNX Runtime / OpenVINO runtimes: same answers as eager torch.

Tiny models of all five detectors are trained (`station train`) on digital-twin shots of good
sheets at 64 x 64 px, exported, and served through `load_models` with `runtime:` set in the
recipe. Tolerance (also docs/runtimes.md): every map value and score within
TOL = 1e-5 x the largest |map value| of eager torch on the same shots; shot and part verdicts
(score > threshold) identical. A stale or missing export, a missing runtime package and an
unavailable device are refused with one line naming the fix.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_train_evaluate_cli import run  # the CLI in-process: exit code

from station.errors import DetectorError

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # of the largest |map value| of eager torch (export.MAX_REL_DIFF)
DETECTORS: dict[str, dict[str, Any]] = {
    "patchcore": {"max_bank": 300, "batch_size": 4},
    "simplenet": {"embed_dim": 96, "hidden_dim": 96, "epochs": 2, "min_steps_per_epoch": 5},
    "efficientad": {"distill_steps": 8, "distill_batch": 2, "steps": 8, "teacher_cache": False},
    "dfda": {"k_candidates": [2, 4, 8], "attention_epochs": 1, "attention_batch": 4},
    "ast_mfr": {"epochs": 2, "batch_size": 4, "min_steps_per_epoch": 2},
}
GOOD_PARTS, TEST_PARTS = (1, 2), {3: False, 4: True, 5: True}
AITEX = Path("/work/shared/datasets/aitex/fabric00")


def write_recipe(home: Path, runtime: str = "torch", device: str = "cpu") -> Path:
    """Recipe `exp`: the shipped one at 64 x 64 px, untiled, five tiny detectors."""
    data = yaml.safe_load((REPO / "recipes/glassfiber.yaml").read_text())
    data["name"] = "exp"
    data["preprocess"] = {"crop": None, "size": [64, 64], "grey_to_rgb": True}
    data["detectors"] = [
        {"name": n, "weights": "package", "device": device, "runtime": runtime, "params": p}
        for n, p in DETECTORS.items()
    ]
    path = home / "recipes" / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(home: Path, runtime: str = "torch", device: str = "cpu") -> Any:
    from station.calibration.recipes import load_recipe

    return load_recipe(str(write_recipe(home, runtime, device)))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A station home with recipe `exp` trained on twin shots of good sheets, exported to
    both formats; test shots of one good and two defective sheets in home/test."""
    import shutil

    import torch

    from station.imaging import write_png
    from station.twin import render_part_shots

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("export_home")
    shutil.copytree(REPO / "recipes", home / "recipes")
    mp.setenv("STATION_HOME", str(home))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recipe = load(home)
    for seed in GOOD_PARTS:
        for pose, image, _ in render_part_shots(recipe, seed, defective=False):
            write_png(home / "train" / f"p{seed}_{pose}.png", image)
    for seed, defective in TEST_PARTS.items():
        for pose, image, _ in render_part_shots(recipe, seed, defective=defective)[:4]:
            write_png(home / "test" / f"p{seed}_{pose}.png", image)
    assert run(["train", "-r", "exp", "--data", str(home / "train"), "--no-db"]) == 0
    for fmt in ("onnx", "openvino"):
        assert run(["export", "-r", "exp", "--format", fmt]) == 0
    yield home
    torch.set_num_threads(threads)
    mp.undo()


def shots(home: Path, recipe: Any) -> tuple[list[str], np.ndarray]:
    from station.detectors.engine import load_images

    files = sorted((home / "test").glob("*.png"))
    return [f.stem for f in files], np.stack(load_images(files, recipe.preprocess))


def scored(recipe: Any, images: np.ndarray) -> dict[str, Any]:
    from station.detectors.engine import ScoringEngine, load_models

    models = load_models(recipe)
    return ScoringEngine.from_models(models, recipe.preprocess, batch_size=8).score(images)


@pytest.mark.slow
def test_sidecar_records_identity(home: Path) -> None:
    from station.detectors.artifact import latest_artifact
    from station.detectors.runtimes.sidecar import file_sha256, model_digest

    recipe = load(home)
    artifact = latest_artifact(recipe, "patchcore")
    doc = json.loads(artifact.with_suffix(".onnx.json").read_text())
    assert doc["artifact"] == {
        "file": artifact.name,
        "version": artifact.stem,
        "sha256": file_sha256(artifact),
    }
    assert doc["recipe"]["name"] == "exp" and doc["recipe"]["sha256"] == recipe.sha256
    assert doc["recipe"]["model_sha256"] == model_digest(recipe, "patchcore")
    assert doc["format"] == "onnx" and doc["opset"] == 17
    assert doc["graph"]["input"]["shape"] == ["batch", 3, 64, 64]
    assert doc["graph"]["kind"] == "patch_scores" and doc["graph"]["grid"] == [8, 8]
    assert doc["graph"]["outputs"] == ["features", "distances", "smoothed"]
    assert doc["beside_graph"]["memory_bank"]["rows"] <= 300
    assert doc["check"]["max_rel_diff"] <= TOL
    assert artifact.with_suffix(".xml").is_file() and artifact.with_suffix(".bin").is_file()
    other = json.loads(
        latest_artifact(recipe, "efficientad").with_suffix(".openvino.json").read_text()
    )
    assert other["graph"]["kind"] == "maps_scores" and other["graph"]["outputs"] == [
        "maps",
        "scores",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_same_maps_scores_and_verdicts_as_torch(home: Path, runtime: str) -> None:
    recipe = load(home)
    names, images = shots(home, recipe)
    want = scored(recipe, images)
    rt_recipe = load(home, runtime)
    from station.detectors.engine import load_models

    models = load_models(rt_recipe)
    for m in models.values():
        assert m.detector.runtime == runtime and m.version == m.path.stem  # type: ignore[attr-defined]
        assert m.meta["runtime"] == runtime and "CPU" in m.meta["runtime_description"]
    got = scored(rt_recipe, images)
    parts = sorted({n.split("_")[0] for n in names})
    for name in DETECTORS:
        w, g = want[name], got[name]
        assert w.maps is not None and g.maps is not None
        tol = TOL * float(np.abs(w.maps).max())
        np.testing.assert_allclose(g.maps, w.maps, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(g.scores, w.scores, rtol=0, atol=tol, err_msg=name)
        # a threshold between two middle scores: about half the shots pass, half fail
        s = np.sort(w.scores)
        thr = 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])
        assert list(g.scores > thr) == list(w.scores > thr), name
        for p in parts:
            idx = [i for i, n in enumerate(names) if n.startswith(p + "_")]
            assert (g.scores[idx] > thr).any() == (w.scores[idx] > thr).any(), (name, p)


@pytest.mark.slow
def test_runtime_or_device_change_keeps_export_valid(home: Path) -> None:
    from station.detectors.engine import load_models

    models = load_models(load(home, "onnxruntime", device="auto"), ["patchcore"])
    assert "device auto" in models["patchcore"].meta["runtime_description"]


@pytest.mark.slow
def test_missing_and_stale_exports_are_refused(home: Path) -> None:
    from station.detectors.artifact import latest_artifact
    from station.detectors.engine import load_models

    recipe = load(home, "onnxruntime")
    side = latest_artifact(recipe, "dfda").with_suffix(".onnx.json")
    kept = side.read_text()
    try:
        doc = json.loads(kept)
        doc["artifact"]["sha256"] = "0" * 64
        side.write_text(json.dumps(doc))
        with pytest.raises(DetectorError, match="stale: it was made from another model") as e:
            load_models(recipe, ["dfda"])
        assert e.value.hint == "station export --recipe exp --format onnx"
        side.unlink()
        with pytest.raises(DetectorError, match="has no onnx export") as e:
            load_models(recipe, ["dfda"])
        assert e.value.hint == "station export --recipe exp --format onnx"
    finally:
        side.write_text(kept)
    try:  # an export made before PatchCore's k-NN moved into the graph (sidecar version 1)
        doc = json.loads(kept)
        doc["sidecar_version"] = 1
        side.write_text(json.dumps(doc))
        with pytest.raises(DetectorError, match="is stale: it holds format 'onnx', version 1"):
            load_models(recipe, ["dfda"])
    finally:
        side.write_text(kept)
    graph = side.with_name(side.name.replace(".onnx.json", ".onnx"))
    graph_bytes = graph.read_bytes()
    try:
        graph.write_bytes(graph_bytes + b"\0")
        with pytest.raises(DetectorError, match="is stale: its graph"):
            load_models(recipe, ["dfda"])
    finally:
        graph.write_bytes(graph_bytes)
    # OpenVINO's .bin holds every weight (and PatchCore's bank): another one of the same size,
    # or one changed in place, is refused as the graph always was (it was served)
    ov = load(home, "openvino")
    weights = latest_artifact(ov, "efficientad").with_suffix(".bin")
    weights_bytes = weights.read_bytes()
    try:
        changed = bytearray(weights_bytes)
        changed[len(changed) // 2] ^= 0xFF
        weights.write_bytes(bytes(changed))
        with pytest.raises(DetectorError, match="stale: its weights .*bin are missing or changed"):
            load_models(ov, ["efficientad"])
    finally:
        weights.write_bytes(weights_bytes)
    ov_side = weights.with_suffix(".openvino.json")
    ov_kept = ov_side.read_text()
    try:  # a sidecar that lost a field: one line, not a KeyError
        doc = json.loads(ov_kept)
        del doc["graph"]["kind"]
        ov_side.write_text(json.dumps(doc))
        with pytest.raises(DetectorError, match="cannot be read"):
            load_models(ov, ["efficientad"])
    finally:
        ov_side.write_text(ov_kept)
    data = yaml.safe_load((home / "recipes" / "exp.yaml").read_text())
    data["preprocess"]["crop"] = [0, 0, 600, 500]  # another input: the model itself is stale
    (home / "recipes" / "exp.yaml").write_text(yaml.safe_dump(data))
    from station.calibration.recipes import load_recipe

    with pytest.raises(DetectorError, match="other preprocessing"):
        load_models(load_recipe(str(home / "recipes" / "exp.yaml")), ["dfda"])


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "runtime"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_failed_export_leaves_the_previous_one_working(
    home: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, runtime: str
) -> None:
    from station.detectors.artifact import latest_artifact
    from station.detectors.engine import load_models
    from station.detectors.runtimes import export, sidecar
    from station.detectors.runtimes.graphs import ExportError

    recipe = load(home)
    files = sidecar.export_files(latest_artifact(recipe, "patchcore"), fmt)
    before = {f: f.read_bytes() for f in files}
    with pytest.raises(ExportError, match="opset"):  # fails while writing the graph
        export.export_model(recipe, "patchcore", fmt, opset=0)
    real = export.open_session
    monkeypatch.setattr(  # fails its check against torch
        export, "open_session", lambda *a: type("Off", (), {"run": lambda _, x: [
            o * 1.01 for o in real(*a).run(x)]})())  # fmt: skip
    with pytest.raises(ExportError, match="differs from torch"):
        export.export_model(recipe, "patchcore", fmt)
    monkeypatch.undo()
    assert {f: f.read_bytes() for f in files} == before
    assert not list(files[0].parent.glob(".export-*"))  # nothing left aside
    assert load_models(load(home, runtime), ["patchcore"])["patchcore"].meta["runtime_description"]


@pytest.mark.slow
def test_missing_runtime_package_names_the_extra(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.detectors.engine import load_models

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    for runtime, extra in (("onnxruntime", "station[onnx]"), ("openvino", "station[openvino]")):
        with pytest.raises(DetectorError, match=f"runtime {runtime} is not installed") as e:
            load_models(load(home, runtime), ["patchcore"])
        assert extra in str(e.value.hint)


def test_devices_map_to_providers_and_never_fall_back() -> None:
    from station.detectors.runtimes.ort_runtime import providers_for
    from station.detectors.runtimes.ov_runtime import device_for

    cpu_only = ["CPUExecutionProvider"]
    assert providers_for("cpu", cpu_only) == ["CPUExecutionProvider"]
    assert providers_for("auto", cpu_only) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    # CUDA's TF32 (on by default) is switched off: its rounding is past the export's check
    assert providers_for("cuda:1", gpu) == [
        ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": "0"})
    ]
    assert providers_for("auto", gpu, tensorrt=True)[0] == (
        "TensorrtExecutionProvider",
        {"device_id": 0},
    )
    with pytest.raises(DetectorError, match="needs CUDAExecutionProvider"):
        providers_for("cuda", cpu_only)
    with pytest.raises(DetectorError, match="needs TensorrtExecutionProvider"):
        providers_for("cuda", ["CUDAExecutionProvider"], tensorrt=True)
    assert device_for("cpu", ["CPU"]) == "CPU" and device_for("auto", ["CPU"]) == "CPU"
    assert device_for("auto", ["CPU", "GPU"]) == "GPU"
    assert device_for("cuda:1", ["CPU", "GPU.1"]) == "GPU.1"
    with pytest.raises(DetectorError, match="needs an OpenVINO GPU"):
        device_for("cuda", ["CPU"])


def test_a_session_that_drops_the_gpu_provider_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ONNX Runtime lists the CUDA provider, then starts on the CPU when the CUDA libraries
    cannot load (its warning hidden at log level 3): the station refuses that session."""
    import onnxruntime

    from station.detectors.runtimes import ort_runtime

    class CpuOnlyInside:
        def __init__(self, *args: object, providers: list, **kwargs: object) -> None:
            self.asked = providers

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    class FakeOrt:
        __version__ = onnxruntime.__version__
        SessionOptions = onnxruntime.SessionOptions
        InferenceSession = CpuOnlyInside

        @staticmethod
        def get_available_providers() -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort_runtime, "ort_module", lambda: FakeOrt)
    with pytest.raises(DetectorError, match="started CPUExecutionProvider instead of CUDA"):
        ort_runtime.OrtSession(tmp_path / "g.onnx", "cuda", 1)
    with pytest.raises(DetectorError, match="instead of"):
        ort_runtime.OrtSession(tmp_path / "g.onnx", "auto", 1)  # auto chose the GPU here


@pytest.mark.slow
def test_cli_names_a_detector_it_cannot_export(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.detectors.runtimes import graphs

    def refuse(*_: Any, **__: Any) -> None:
        raise graphs.ExportError("ONNX export failed: RuntimeError: unsupported operator")

    load(home)
    monkeypatch.setattr(graphs, "export_onnx", refuse)
    capsys.readouterr()
    assert run(["export", "-r", "exp", "--format", "onnx", "--detector", "ast_mfr"]) == 2
    err = capsys.readouterr().err
    assert "detector ast_mfr cannot be exported to onnx: ONNX export failed" in err
    assert run(["export", "-r", "exp", "--format", "tflite"]) != 0
    assert "--format must be one of onnx, openvino" in capsys.readouterr().err


@pytest.fixture
def tiny_home(station_home: Path) -> Path:
    """Recipe `tiny` (test_train_evaluate_cli's: one PatchCore at 64 x 64 px) trained on two
    generated weave images: a model to export in seconds."""
    from test_train_evaluate_cli import make_category, make_recipe

    make_recipe(station_home, "tiny")
    data = make_category(station_home / "ds", n_train=2)
    assert run(["train", "-r", "tiny", "--data", str(data), "--no-db", "--threads", "1"]) == 0
    return station_home


def test_cli_export_into_an_unwritable_models_folder_is_one_line(
    tiny_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder beside the model could not be written: a PermissionError traceback."""
    from test_pose_plan import unwritable

    folder = tiny_home / "data" / "tiny" / "models" / "patchcore"
    capsys.readouterr()
    with unwritable(folder):
        assert run(["export", "-r", "tiny", "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write onnx export of detector patchcore in {folder}: ")
    assert "Traceback" not in err and not list(folder.glob("*.onnx*"))
    assert run(["export", "-r", "tiny", "--format", "onnx"]) == 0  # writable again: exported
    assert len(list(folder.glob("*.onnx*"))) == 2


def test_cli_refuses_an_opset_torch_cannot_export_before_loading_models(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--opset 3 failed only after the model was loaded (here: there is none to load)."""
    from torch.onnx import _constants

    from station.detectors.runtimes.export import OPSETS

    assert (OPSETS[0], OPSETS[-1]) == (
        _constants.ONNX_MIN_OPSET,
        _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET,
    )  # the range torch's own table gives
    for bad in ("3", "21"):
        assert run(["export", "--format", "onnx", "--opset", bad]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: --opset must be 7 to 20 (the ONNX opsets torch exports), not {bad}",
            "  hint: leave it out for opset 17",
        ]


def test_cli_exit_code_of_an_unexportable_detector_is_2(
    station_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expected failure, like every other (README: exit code 2)."""
    from station.detectors.runtimes import export, graphs

    def refuse(*_: Any, **__: Any) -> None:
        raise graphs.ExportError("opset 7 is too old for this network")

    monkeypatch.setattr(export, "export_model", refuse)
    assert run(["export", "--format", "onnx", "--opset", "7"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "cannot be exported to onnx: opset 7 is too old" in out.err


def served(detector: Any, fmt: str, folder: Path) -> Any:
    from station.detectors.runtimes.export import serve_detector

    return serve_detector(detector, fmt, folder)


def agree(torch_det: Any, runtime_det: Any, images: np.ndarray) -> None:
    want, got = torch_det.predict(images), runtime_det.predict(images)
    tol = TOL * float(np.abs(want.maps).max())
    np.testing.assert_allclose(got.maps, want.maps, rtol=0, atol=tol)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=tol)


@pytest.mark.slow
def test_patchcore_features_graph_matches_torch(tmp_path: Path, one_thread: None) -> None:
    """Fast check: a tiny PatchCore on textures, both runtimes, maps and scores."""
    import textures

    from station.detectors.registry import create_detector

    rng = np.random.default_rng(0)
    det = create_detector("patchcore", device="cpu", weights="package", max_bank=200)
    det.fit(list(textures.weave(rng, 6, 64)))
    test = textures.weave(rng, 3, 64)
    test[0, 20:28, 16:40] = 20  # a dark strip
    for fmt in ("onnx", "openvino"):
        rt = served(det, fmt, tmp_path)
        agree(det, rt, test)
        assert rt.predict(test[:1]).maps.shape == (1, 64, 64)  # any batch size
    with pytest.raises(DetectorError, match="export and cannot be trained"):
        rt.fit(list(test))


def test_a_graph_that_differs_from_torch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """1 % off torch (ten times the export's limit) is refused, not served."""
    import textures

    from station.detectors.registry import create_detector
    from station.detectors.runtimes import export
    from station.detectors.runtimes.graphs import ExportError

    det = create_detector("patchcore", device="cpu", weights="package", max_bank=200)
    det.fit(list(textures.weave(np.random.default_rng(0), 6, 64)))
    real = export.open_session

    class OffByOnePercent:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, x: np.ndarray) -> list[np.ndarray]:
            return [o * 1.01 for o in self.session.run(x)]

    monkeypatch.setattr(export, "open_session", lambda *a: OffByOnePercent(real(*a)))
    for fmt in ("onnx", "openvino"):
        with pytest.raises(ExportError, match="differs from torch by 0.01"):
            export.serve_detector(det, fmt, tmp_path)


@pytest.mark.slow
def test_two_scale_patchcore_ensemble_graph_matches_torch(tmp_path: Path, one_thread: None) -> None:
    """PatchCore at two scales (glassfiber-ensemble's members, tiny banks): one graph with
    one backbone pass, both runtimes, the ensemble's maps and scores."""
    import textures

    from station.detectors.registry import create_detector

    rng = np.random.default_rng(0)
    coarse = {"max_bank": 200, "layers": ["blocks.4", "blocks.5"]}
    det = create_detector(
        "ensemble", device="cpu", weights="package", val_fraction=0.34,
        members=[{"name": "patchcore", "params": {"max_bank": 200}},
                 {"name": "patchcore", "params": coarse}],
    )  # fmt: skip
    det.fit(list(textures.weave(rng, 6, 64)))
    test = textures.weave(rng, 3, 64)
    test[0, 20:28, 16:40] = 20  # a dark strip
    for fmt in ("onnx", "openvino"):
        rt = served(det, fmt, tmp_path)
        assert rt.kind == "ensemble_patch_scores" and rt.grids == [(8, 8), (4, 4)]
        agree(det, rt, test)
    assert int(np.argmax(rt.predict(test).scores)) == 0


@pytest.mark.slow
@pytest.mark.skipif(not AITEX.is_dir(), reason="AITEX dataset not present")
def test_aitex_tiles_match_torch(tmp_path: Path, one_thread: None) -> None:
    """PatchCore as shipped (Lite0, 256 px, mirrored context) on real AITEX tiles."""
    from station.detectors.registry import create_detector
    from station.imaging import read_image

    def tiles(folder: Path, n: int) -> np.ndarray:
        return np.stack([read_image(f) for f in sorted(folder.glob("*.png"))[:n]])

    det = create_detector("patchcore", device="cpu", weights="package", max_bank=1000)
    det.fit(list(tiles(AITEX / "train/good", 8)))
    test = np.concatenate([tiles(AITEX / "test/defect", 3), tiles(AITEX / "test/good", 2)])
    assert test.shape[1:3] == (256, 256)
    for fmt in ("onnx", "openvino"):
        agree(det, served(det, fmt, tmp_path), test)


def test_a_failed_export_prints_no_ir_graph(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """torch's exporter printed its whole IR graph (hundreds of lines) to stdout from C++ when
    an export failed, e.g. at --opset 0; the error is one line and stdout stays empty."""
    import torch

    from station.detectors.runtimes import graphs

    net = graphs.ExportNet(torch.nn.Conv2d(3, 1, 1), "maps_scores", ("maps",), (8, 8))
    with pytest.raises(graphs.ExportError, match="opset") as err:
        graphs.export_onnx(net, tmp_path / "m.onnx", opset=0)
    assert "\n" not in err.value.message and not (tmp_path / "m.onnx").exists()
    out, _ = capfd.readouterr()
    assert "graph" not in out and out == ""
    print("stdout works again")
    assert capfd.readouterr().out == "stdout works again\n"


def test_smoothing_matrices_equal_upsample_smooth() -> None:
    """PatchCore's graph upsamples and smooths the distance grid as R @ d @ C.T."""
    import torch

    from station.detectors.common import upsample_smooth
    from station.detectors.runtimes.graphs import smoothing_matrices

    d = torch.rand(3, 1, 8, 6, generator=torch.Generator().manual_seed(0)) * 5
    for sigma in (4.0, 1.5, 0.0):
        rows, cols = smoothing_matrices((8, 6), (64, 48), sigma)
        assert rows.shape == (64, 8) and cols.shape == (48, 6)
        want = upsample_smooth(d, (64, 48), sigma)
        got = rows @ d[:, 0] @ cols.T
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("image_score", ["weighted_max", "max", "smoothed_peak"])
def test_patch_scores_module_gives_eager_maps_and_scores(
    one_thread: None, image_score: str
) -> None:
    """PatchCore's exported module (distances and smoothing as matmuls) followed by
    `score_from_distances` gives eager PatchCore's maps and scores, in torch: the graph's
    maths, apart from the runtimes; for each image score."""
    import textures
    import torch

    from station.detectors.common import to_batch
    from station.detectors.registry import create_detector
    from station.detectors.runtimes.graphs import export_net

    rng = np.random.default_rng(2)
    det = create_detector(
        "patchcore", device="cpu", weights="package", max_bank=120, image_score=image_score
    )
    det.fit(list(textures.weave(rng, 4, 64)))
    test = textures.weave(rng, 3, 64)
    test[1, 30:36, 10:50] = 15  # a dark strip: one image with a clear top patch
    net = export_net(det)
    assert net.kind == "patch_scores" and net.outputs == ("features", "distances", "smoothed")
    want = det.predict(test)
    with torch.no_grad():
        feats, dist, smoothed = net.module(to_batch(test, (64, 64)))
        maps, scores = det.model.score_from_distances(feats, dist, smoothed)
    assert dist.shape == (3, 64) and smoothed.shape == (3, 64, 64)
    tol = 1e-5 * float(np.abs(want.maps).max())
    np.testing.assert_allclose(scores.numpy(), want.scores, rtol=0, atol=tol)
    np.testing.assert_allclose(maps.numpy(), want.maps, rtol=0, atol=tol)
    assert int(np.argmax(want.scores)) == 1


def test_distance_basis_keeps_distances_in_fewer_dims() -> None:
    """A stage widened by the channel pooling (40 -> 112) is searched in its 40 dims, a stage
    pooled down (600 -> 112) or kept (112) in all: distances unchanged."""
    import torch
    import torch.nn.functional as F

    from station.detectors.runtimes.graphs import distance_basis

    g = torch.Generator().manual_seed(0)

    def features(n: int) -> torch.Tensor:
        parts = [torch.randn(n, c, generator=g) for c in (40, 112, 600)]
        return torch.cat([F.adaptive_avg_pool1d(p[:, None], 112)[:, 0] for p in parts], 1)

    basis = distance_basis([40, 112, 600], 112)
    assert basis.shape == (336, 40 + 112 + 112)
    q, b = features(20), features(30)
    want = torch.cdist(q.double(), b.double())
    got = torch.cdist((q @ basis).double(), (b @ basis).double())
    assert float((got - want).abs().max() / want.max()) < 1e-6
