"""Detector throughput benchmark: images/s per detector, batch sizes 1 and 8, CPU and CUDA.

    .venv/bin/python tools/bench_detectors.py                  # CPU (+ CUDA when present)
    .venv/bin/python tools/bench_detectors.py --devices cuda --detectors patchcore,simplenet
    .venv/bin/python tools/bench_detectors.py --devices cpu --runtimes torch,onnxruntime,openvino

Each detector is fitted on a few synthetic 256 x 256 weave images (short training settings,
see FAST_PARAMS; override with --param det.key=value), then `predict` is timed on fresh images.
The baseline, measured in the same run on the same device, is the detector's backbone forward
alone (default layers); the table shows each detector's throughput as a ratio of it.
With --runtimes, each fitted detector is also exported (station.detectors.runtimes) and served
by ONNX Runtime / OpenVINO on the same device; "x torch" is its throughput as a ratio of the
same detector on eager torch in this run, and "verdicts" whether score > threshold agrees
with torch on every test image (threshold: between the two middle torch scores; |d score|
the largest score difference as a share of the largest torch score). docs/runtimes.md has
the figures.

PatchCore's memory bank: 8 training images give ~700 rows; the shipped recipe's ~4 500.
`--patchcore-bank 4500` trains PatchCore on enough images (and a pool cap) for about that
many rows. `--rounds R` repeats the timings R times, runtimes interleaved, and reports each
one's median (the machine's load average is printed before and after: compare runs only when
it is low, other processes slow eager torch more than the runtimes).

    .venv/bin/python tools/bench_detectors.py --devices cpu --detectors patchcore \
        --runtimes torch,onnxruntime,openvino --patchcore-bank 4500 --rounds 5

`--recipes glassfiber,glassfiber-ensemble` also times each recipe's detector entry as the recipe
gives it (its backbone and params, FAST_PARAMS not applied), fitted on `--train-images` images:
an ensemble recipe against a single detector in one run (docs/runtimes.md).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Short training for benchmarking only (throughput does not depend on training length).
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "simplenet": {"epochs": 1},
    "dfda": {"attention_epochs": 1},
    "efficientad": {"steps": 2, "distill_steps": 2, "teacher_cache": False},
    "ast_mfr": {"epochs": 1, "train_student": False},
}


def weave(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 40 * np.sin(2 * np.pi * x / 8 + px) * np.sin(2 * np.pi * y / 8 + py)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--param detector.key=value` items (value as JSON, else as text) per detector."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        det, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--param must look like detector.key=value, not {item!r}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(det, {})[name] = parsed
    return out


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of this process)


def _time(fn: Any, iters: int, sync: Any) -> float:
    fn()  # warm-up (allocations, cudnn autotuning)
    sync()
    t0 = CLOCK()
    for _ in range(iters):
        fn()
    sync()
    return CLOCK() - t0


def shot_tiles(recipe_name: str) -> int:
    """Inputs one shot of `recipe_name` gives its detectors (tiles, or 1 resized shot): the
    live cycle scores a shot's tiles in one predict call, so that batch is the shot latency."""
    from station.detectors.engine import tiles_of
    from station.detectors.registry import load_recipe

    r = load_recipe(recipe_name)
    if not r.preprocess.tiling.enabled:
        return 1
    w, h = r.shot_wh
    return len(tiles_of((h, w), r.preprocess, f"a shot of recipe {r.name}"))


def print_shot_latency(console: Any, rows: list[dict[str, Any]], shot: int, recipe: str) -> None:
    """ms per shot (one predict call on a shot's `shot` inputs) per detector and runtime."""
    from rich.table import Table

    title = f"per-shot latency: one predict call on {shot} input(s), a shot of {recipe}"
    table = Table(title=title)
    for col in ("device", "model", "runtime", "ms/shot", "x torch"):
        table.add_column(col, justify="left" if col in ("device", "model", "runtime") else "right")
    for r in rows:
        if r.get("batch") == shot and "x_torch" in r:
            ms = f"{shot * 1000 / r['images_per_s']:.1f}"
            table.add_row(r["device"], r["model"], r["runtime"], ms, f"{r['x_torch']:.2f}")
    console.print(table)


def recipe_detector(entry: Any, device: str) -> Any:
    """A recipe's detector entry, unfitted, on `device`."""
    from station.detectors.registry import create_detector, detector_kwargs

    return create_detector(entry.name, **detector_kwargs(entry, device))


def bank_rows(det: Any) -> str:
    """PatchCore's memory-bank rows ('a+b' over an ensemble's members); '' for others."""
    members = getattr(det, "members", None)
    if members is not None:
        return "+".join(filter(None, (bank_rows(m) for m in members)))
    rows = getattr(getattr(det, "bank", None), "shape", [None])[0]
    return "" if rows is None else str(rows)


def runtime_of(det: Any, runtime: str, device: str) -> Any:
    """`det` itself (torch), or served by `runtime` from an export in a scratch folder; the
    reason as text when it cannot be exported."""
    if runtime == "torch":
        return det
    import tempfile

    from station.detectors.runtimes.export import serve_detector
    from station.detectors.runtimes.sidecar import RUNTIME_FORMAT
    from station.errors import DetectorError

    if runtime not in RUNTIME_FORMAT:
        raise SystemExit(f"--runtimes: unknown runtime {runtime!r}")
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # exports are scratch
    try:
        return serve_detector(det, RUNTIME_FORMAT[runtime], folder, device)
    except DetectorError as exc:
        return exc.message


def agreement(det: Any, served: Any, images: np.ndarray) -> tuple[bool, float]:
    """(same verdicts as torch at a threshold between the two middle torch scores, so that no
    image sits exactly on it; largest |d score| / max score)."""
    want, got = det.predict(images).scores, served.predict(images).scores
    s = np.sort(want)
    thr = float(s[len(s) // 2 - 1] + s[len(s) // 2]) / 2 if len(s) > 1 else float(s[0])
    same = bool(np.array_equal(want > thr, got > thr))
    return same, float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--detectors", default="patchcore,simplenet,dfda,ast_mfr,efficientad")
    ap.add_argument(
        "--recipes", default="", help="also time these recipes' detector entries (comma list)"
    )
    ap.add_argument("--devices", default="auto", help="auto (cpu + cuda if present), cpu, cuda")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=5, help="timed predict calls per batch size")
    ap.add_argument("--train-images", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--param", action="append", default=[], help="detector.key=value")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--runtimes", default="torch", help="torch,onnxruntime,openvino")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats (median)")
    ap.add_argument(
        "--patchcore-bank",
        type=int,
        default=0,
        help="about this many PatchCore bank rows (more training images; 0: --train-images)",
    )
    ap.add_argument(
        "--shot-recipe",
        default="glassfiber",
        help="recipe whose shot is timed as one predict call (its tiles per shot; 1 when it "
        "resizes whole shots); '' to skip the per-shot row",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, a loaded "
        "machine slows it little; with more threads spinning counts as work)",
    )
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import torch
    from rich.console import Console
    from rich.table import Table

    from station.detectors.backbones import create_backbone
    from station.detectors.registry import available_detectors, create_detector, load_recipe
    from station.errors import StationError

    torch.set_num_threads(args.threads)
    console = Console(width=160)  # the whole table, also when piped to a file
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.devices.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    shot = shot_tiles(args.shot_recipe) if args.shot_recipe else 0
    if shot:
        batches = sorted({*batches, shot})
    names = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = [n for n in names if n not in available_detectors()]
    if unknown:
        console.print(f"[red]unknown detector(s) {unknown}; known: {available_detectors()}")
        return 2
    params = FAST_PARAMS | parse_params(args.param)
    n_train = {name: args.train_images for name in names}
    try:
        recipe_entries = [
            (f"{r.name} ({r.detectors[0].name})", r.detectors[0])
            for r in (load_recipe(n.strip()) for n in args.recipes.split(",") if n.strip())
        ]
    except StationError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    n_train |= {label: args.train_images for label, _ in recipe_entries}
    if args.patchcore_bank > 0:  # coreset 0.1 of a pool capped at 10x the rows wanted
        per_image = (args.size // 8) ** 2  # patches per image on the stride-8 grid
        pool = 10 * args.patchcore_bank
        # + the validation image(s) fit holds out (val_fraction 0.1)
        n_train["patchcore"] = max(args.train_images, math.ceil(pool / per_image / 0.9) + 1)
        params["patchcore"] = {"max_train_patches": pool, **params.get("patchcore", {})}
    runtimes = ["torch"] + [r.strip() for r in args.runtimes.split(",") if r.strip() != "torch"]
    load_before = os.getloadavg()
    train_all = [weave(i, args.size) for i in range(max(n_train.values(), default=0))]
    test = np.stack([weave(1000 + i, args.size) for i in range(max(batches))])
    rows: list[dict[str, Any]] = []
    try:
        for device in devices:
            dev = torch.device(device)

            def sync(dev: torch.device = dev) -> None:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            backbone = create_backbone(args.backbone).to(dev)
            base: dict[int, float] = {}
            for b in batches:
                x = torch.from_numpy(test[:b]).permute(0, 3, 1, 2).float().div(255).to(dev)

                def fwd(x: torch.Tensor = x, net: torch.nn.Module = backbone) -> None:
                    with torch.no_grad():
                        net(x)

                base[b] = b * args.iters / _time(fwd, args.iters, sync)
                rows.append(
                    {
                        "device": device,
                        "model": f"backbone {args.backbone}",
                        "batch": b,
                        "images_per_s": base[b],
                        "ratio": 1.0,
                    }
                )
            models = [
                (n, partial(create_detector, n, backbone=args.backbone, **params.get(n, {})))
                for n in names
            ] + [
                (label, partial(recipe_detector, e)) for label, e in recipe_entries
            ]
            for name, make in models:
                det = make(device=device)
                t0 = time.perf_counter()
                det.fit(train_all[: n_train[name]])
                fit_s = time.perf_counter() - t0
                served_by: dict[str, Any] = {}
                for runtime in runtimes:
                    served = runtime_of(det, runtime, device)
                    if isinstance(served, str):  # not exportable: say so
                        rows.append(
                            {
                                "device": device,
                                "model": name,
                                "runtime": runtime,
                                "batch": 0,
                                "images_per_s": 0.0,
                                "ratio": 0.0,
                                "error": served,
                            }
                        )
                        continue
                    served_by[runtime] = (served, *agreement(det, served, test))
                # rounds x runtimes x batches, interleaved: slow spells hit all runtimes
                times: dict[tuple[str, int], list[float]] = {}
                for _ in range(max(1, args.rounds)):
                    for runtime, (served, _same, _d) in served_by.items():
                        for b in batches:
                            fn = partial(served.predict, test[:b])
                            secs = _time(fn, args.iters, sync)
                            times.setdefault((runtime, b), []).append(b * args.iters / secs)
                bank = bank_rows(det)
                for runtime, (_served, same, dscore) in served_by.items():
                    for b in batches:
                        ips = statistics.median(times[(runtime, b)])
                        eager = statistics.median(times[("torch", b)])
                        rows.append(
                            {
                                "device": device,
                                "model": name,
                                "runtime": runtime,
                                "batch": b,
                                "images_per_s": ips,
                                "all_images_per_s": times[(runtime, b)],
                                "ratio": ips / base[b],
                                "x_torch": ips / eager,
                                "same_verdicts": same,
                                "score_diff": dscore,
                                "fit_s": fit_s,
                                "bank": bank,
                            }
                        )
                del det, served_by
    except StationError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2

    load_after = os.getloadavg()
    table = Table(
        title=f"predict throughput, {args.size} x {args.size} px, torch threads {args.threads}"
        f", median of {max(1, args.rounds)} round(s), {args.clock} clock"
    )
    cols = (
        "device",
        "model",
        "runtime",
        "bank",
        "batch",
        "images/s",
        "ms/image",
        "x backbone",
        "x torch",
        "verdicts",
        "|d score|",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("device", "model", "runtime") else "right")
    for r in rows:
        if r.get("error"):
            table.add_row(
                r["device"],
                r["model"],
                r["runtime"],
                "",
                "-",
                "not exportable:",
                r["error"][:60],
                "",
                "",
                "",
                "",
            )
            continue
        table.add_row(
            r["device"],
            r["model"],
            r.get("runtime", "torch"),
            r.get("bank") or "",
            str(r["batch"]),
            f"{r['images_per_s']:.2f}",
            f"{1000 / r['images_per_s']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['x_torch']:.2f}" if "x_torch" in r else "",
            ("same" if r["same_verdicts"] else "DIFFER") if "same_verdicts" in r else "",
            f"{r['score_diff']:.1e}" if "score_diff" in r else "",
        )
    console.print(table)
    if shot:
        print_shot_latency(console, rows, shot, args.shot_recipe)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    console.print(f"torch {torch.__version__}, GPU: {gpu}")
    console.print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{v:.2f}" for v in load_before)
        + "; after "
        + ", ".join(f"{v:.2f}" for v in load_after)
    )
    if args.json:
        doc = {
            "rows": rows,
            "gpu": gpu,
            "args": vars(args),
            "load_before": load_before,
            "load_after": load_after,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
