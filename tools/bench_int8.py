"""INT8 PatchCore backbone (OpenVINO + NNCF post-training quantisation): AUROC and speed.

    .venv/bin/python tools/bench_int8.py                       # AITEX 00/01/04/06 + magnetic_tile
    .venv/bin/python tools/bench_int8.py --sets fabric00 --train 60 --test 80 --json out.json

Needs the packages openvino and nncf (not station dependencies: measurement only). Per data
set (MVTec layout under --root; images resized to 256 x 256 when they are not): PatchCore with
the shipped recipe's settings (recipes/glassfiber.yaml) is fitted in torch on --train good
training tiles, as `station train` does. Its feature graph (station export's PatchCore graph:
images -> patch features) is converted to OpenVINO and run in f32, and quantised to INT8 by
NNCF on --calib other good training tiles. Both score the test tiles (at most --test, all
defect tiles first, then good ones, in name order) through the same memory bank and score step
(`PatchCoreModel.score`); image AUROC of each and the OpenVINO feature forward's
images/s (batch 1 and 8, best of --reps interleaved, --threads CPU threads) are reported, with
the INT8 / f32 ratio. Adoption rule (issue 21): an image AUROC loss of 0.005 at most.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_knn import interleaved  # noqa: E402 (tools/ is on the path of a script run)

SETS = {
    "fabric00": "aitex/fabric00",
    "fabric01": "aitex/fabric01",
    "fabric04": "aitex/fabric04",
    "fabric06": "aitex/fabric06",
    "magnetic_tile": "magnetic_tile",
}
RECIPE_PARAMS: dict[str, Any] = {
    "max_train_patches": 150000,
    "coreset_ratio": 0.03,
    "num_neighbors": 9,
    "mirror_pad": 32,
    "center_features": True,
}
SIZE = 256


def images(folder: Path, names: list[Path] | None = None) -> list[np.ndarray]:
    import cv2

    from station.imaging import read_image

    out = []
    for p in names if names is not None else sorted(folder.iterdir()):
        img = read_image(p)
        if img.shape[:2] != (SIZE, SIZE):
            img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        out.append(img)
    return out


def test_split(root: Path, limit: int) -> tuple[list[Path], np.ndarray]:
    """Defect tiles first (all, up to `limit`), then good ones: paths and labels (1: defect)."""
    test = root / "test"
    defect = sorted(p for d in sorted(test.iterdir()) if d.name != "good" for p in d.iterdir())
    good = sorted((test / "good").iterdir())
    defect = defect[: limit // 2] if len(defect) > limit // 2 else defect
    good = good[: limit - len(defect)]
    return defect + good, np.array([1] * len(defect) + [0] * len(good))


def ov_features(compiled: Any, batch: np.ndarray, chunk: int = 8) -> np.ndarray:
    outs = [compiled(batch[s : s + chunk])[0] for s in range(0, len(batch), chunk)]
    return np.concatenate(outs)


def run_set(name: str, root: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import nncf
    import openvino as ov
    import torch

    from station.detectors.common import to_batch
    from station.detectors.patchcore import PatchCore
    from station.detectors.runtimes.graphs import export_net, export_onnx
    from station.metrics import image_auroc

    good = sorted((root / "train" / "good").iterdir())
    step = max(1, len(good) // (args.train + args.calib))
    spread = good[::step]  # along the whole training set
    train, calib = spread[: args.train], spread[args.train : args.train + args.calib]
    det = PatchCore(device="cpu", knn="auto", **RECIPE_PARAMS)
    t0 = time.perf_counter()
    det.fit(images(root, train))
    fit_s = time.perf_counter() - t0
    onnx = work / f"{name}.onnx"
    export_onnx(export_net(det), onnx)
    core = ov.Core()
    model = core.read_model(str(onnx))
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    calib_x = to_batch(images(root, calib)).numpy()
    q_model = nncf.quantize(
        model,
        nncf.Dataset([calib_x[i : i + 1] for i in range(len(calib_x))]),
        subset_size=len(calib_x),
        ignored_scope=nncf.IgnoredScope(types=args.keep_f32, validate=False),
    )
    nets = {
        "f32": core.compile_model(model, "CPU", cfg),
        "int8": core.compile_model(q_model, "CPU", cfg),
    }
    paths, labels = test_split(root, args.test)
    x = to_batch(images(root, paths)).numpy()
    grid = (SIZE // 8, SIZE // 8)
    res: dict[str, Any] = {
        "train": len(train),
        "calib": len(calib),
        "test_defect": int(labels.sum()),
        "test_good": int((labels == 0).sum()),
        "bank": int(det.model.memory_bank.shape[0]),
        "fit_s": round(fit_s, 1),
    }
    scores = {}
    for k, net in nets.items():
        s = []
        for start in range(0, len(x), 8):
            xb = x[start : start + 8]
            f = torch.from_numpy(ov_features(net, xb))
            with torch.no_grad():
                s.append(det.model.score(f, len(xb), grid, (SIZE, SIZE))[1].numpy())
        scores[k] = np.concatenate(s)
        res[f"auroc_{k}"] = image_auroc(scores[k], labels)
    res["auroc_change"] = res["auroc_int8"] - res["auroc_f32"]
    res["max_rel_score_diff"] = float(
        np.max(np.abs(scores["int8"] - scores["f32"]) / scores["f32"])
    )
    for b in (1, 8):
        xb = x[:b]
        t = interleaved({k: (lambda n=n, xb=xb: n(xb)) for k, n in nets.items()}, args.reps)
        res[f"images_per_s_b{b}"] = {k: b / v for k, v in t.items()}
        res[f"int8_speedup_b{b}"] = t["f32"] / t["int8"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/work/shared/datasets"))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--train", type=int, default=80, help="good training tiles for the bank")
    ap.add_argument("--calib", type=int, default=32, help="other good tiles to calibrate INT8")
    ap.add_argument("--test", type=int, default=120, help="test tiles per set (defects first)")
    ap.add_argument(
        "--keep-f32",
        default="MatMul,AvgPool,Interpolate,ReduceMean",
        help="OpenVINO op types left in f32 (the feature head after the backbone); '' for none",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.keep_f32 = [t.strip() for t in args.keep_f32.split(",") if t.strip()]
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"error: {exc.name} is not installed (pip install openvino nncf)"
        ) from None
    import torch

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            r = run_set(name, args.root / SETS[name], args, Path(tmp))
            out["sets"][name] = r
            print(
                f"{name}: train {r['train']} calib {r['calib']} test {r['test_defect']} defect + "
                f"{r['test_good']} good; AUROC f32 {r['auroc_f32']:.4f} int8 "
                f"{r['auroc_int8']:.4f} (change {r['auroc_change']:+.4f}); max rel score diff "
                f"{r['max_rel_score_diff']:.3f}; backbone int8 x{r['int8_speedup_b1']:.2f} "
                f"(batch 1), x{r['int8_speedup_b8']:.2f} (batch 8)",
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(out, indent=2))
    worst = min(r["auroc_change"] for r in out["sets"].values())
    verdict = "adopt" if worst >= -0.005 else "do not adopt"
    print(f"worst image AUROC change {worst:+.4f}: {verdict} (rule: loss <= 0.005)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
