"""`station evaluate`: detector metrics on labelled MVTec-layout data.

`--dataset` is one category (train/, test/, ground_truth/) or a folder of categories. Each
category's test images run through the recipe's preprocessing and detectors: the recipe's
trained models, or with `--train` a model fitted on that category's train/good first (saved
under the output folder, not in the recipe's models). Prints a table per category and
detector plus the mean, writes `results.json`, each image's score (`<category>/<detector>/
scores.csv`: image, label, score; for failure analysis and threshold studies) and a few heatmap
overlays.

AITEX tiles (stems `NNNN_DDD_FF_tKK`, DDD = defect code): image AUROC is also reported
against the good tiles of defect-free strips only (DDD == 000), see the dataset README.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import typer

from station.files import atomic_write, writing

# Some defect-free AITEX strips carry a two-digit code ("0018_00_01"): any all-zero code counts.
AITEX_STEM = re.compile(r"^\d{4}_(\d{2,3})_\d{2}_t\d{2}$")
COLUMNS = [
    ("image_auroc", "I-AUROC"),
    ("image_auroc_clean", "I-AUROC*"),
    ("pixel_auroc", "P-AUROC"),
    ("aupro", "AUPRO"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1"),
]  # results.json also holds image AP, image F1-max and its threshold


def clean_good_mask(stems: list[str], labels: np.ndarray) -> np.ndarray | None:
    """AITEX only: defects plus good tiles of defect-free strips; None for other datasets."""
    codes = [AITEX_STEM.match(s) for s in stems]
    if not stems or not all(codes):
        return None
    return np.array(
        [lab == 1 or int(m.group(1)) == 0 for m, lab in zip(codes, labels, strict=True)]  # type: ignore[union-attr]
    )


def overlay_panel(
    image: np.ndarray, amap: np.ndarray, vmax: float, mask: np.ndarray | None, title: str
) -> np.ndarray:
    """Image | heatmap overlay (jet, 0..vmax) with the ground-truth outline in green."""
    import cv2

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    scaled = np.clip(amap / max(vmax, 1e-12), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    over = (0.55 * rgb + 0.45 * heat).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        over = np.ascontiguousarray(over)
        cv2.drawContours(over, contours, -1, (0, 255, 0), 1)
    panel = np.concatenate([rgb, np.full((rgb.shape[0], 4, 3), 255, np.uint8), over], axis=1)
    bar = np.zeros((18, panel.shape[1], 3), np.uint8)
    cv2.putText(bar, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return np.concatenate([bar, panel], axis=0)


def pick_examples(scores: np.ndarray, labels: np.ndarray, n: int) -> list[tuple[int, str]]:
    """A few telling examples: top-scored defects, top-scored goods, the weakest defect."""
    order = np.argsort(-scores)
    defects = [int(i) for i in order if labels[i] == 1]
    goods = [int(i) for i in order if labels[i] == 0]
    picks: list[tuple[int, str]] = []
    picks += [(i, "defect") for i in defects[: max(1, n // 2)]]
    picks += [(i, "good-highest") for i in goods[: max(1, n // 4)]]
    if defects and defects[-1] not in [p[0] for p in picks]:
        picks.append((defects[-1], "defect-lowest"))
    return picks[: max(n, 0)]


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        dataset: Path = typer.Option(
            ..., "--dataset", help="MVTec-layout category folder, or a folder of categories."
        ),
        detector: str | None = typer.Option(
            None, "--detector", "-d", help="Evaluate only this detector of the recipe."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Output folder (default <data>/<recipe>/eval/<dataset>-<time>)."
        ),
        train: bool = typer.Option(
            False, "--train", help="Train each detector on each category's train/good first."
        ),
        device: str | None = typer.Option(None, "--device", help="Override the recipe's device."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
        heatmaps: int = typer.Option(
            4, "--heatmaps", min=0, help="Overlay PNGs per category/detector."
        ),
        batch: int = typer.Option(16, "--batch", min=1, help="Images per predict call."),
    ) -> None:
        """Measure detectors on labelled data: image/pixel AUROC, AUPRO, AP, F1-max."""
        from rich import box
        from rich.table import Table

        from station.cli.app import console
        from station.cli.progress import make_progress
        from station.cli.train import check_device, selected_detectors, set_threads, stage_callback
        from station.datasets import MVTecFolder, category_dirs
        from station.detectors.artifact import latest_artifact, load_artifact
        from station.detectors.training import load_images, load_masks, train_and_save
        from station.errors import StationError
        from station.imaging import write_png
        from station.metrics import evaluate_all, image_auroc
        from station.recipe import load_recipe

        rcp = load_recipe(recipe)
        targets = selected_detectors(rcp, detector)
        check_device(device)
        cats = category_dirs(dataset)
        set_threads(threads)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        out_dir = out or rcp.data_dir / "eval" / f"{dataset.resolve().name}-{stamp}"
        with writing(f"results folder {out_dir}"):
            out_dir.mkdir(parents=True, exist_ok=True)

        loaded: dict[str, Any] = {}
        if not train:
            for d in targets:
                loaded[d.name] = load_artifact(latest_artifact(rcp, d.name), rcp, device)

        results: dict[str, dict[str, Any]] = {}

        def write_report(means: dict[str, Any], complete: bool) -> Path:
            """results.json, rewritten after every category so partial runs leave results."""
            import torch

            report = {
                "dataset": str(dataset.resolve()),
                "recipe": rcp.name,
                "mode": "train-per-category" if train else "recipe-models",
                "complete": complete,
                "detectors": {d.name: d.model_dump() for d in targets},
                "preprocess": rcp.preprocess.model_dump(),
                "categories": results,
                "mean": means,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "created": stamp,
            }
            path = out_dir / "results.json"
            text = json.dumps(_no_nan(report), indent=2, default=_json_default, allow_nan=False)
            with writing(path):
                atomic_write(path, text.encode("utf-8"))
            return path

        with make_progress() as progress:
            for cat in cats:
                folder = MVTecFolder(cat)
                items = folder.test_items()
                if not items:
                    raise StationError(f"no test images in {cat / 'test'}")
                t_read = progress.add_task(f"{cat.name} reading test", total=len(items))
                images = load_images(
                    [it.path for it in items],
                    rcp.preprocess,
                    lambda d, n, t=t_read: progress.update(t, completed=d),
                )
                labels = np.array([it.label for it in items], dtype=np.int64)
                has_masks = all(it.mask_path is not None for it in items if it.label == 1)
                h, w = images[0].shape[:2]
                masks = (
                    load_masks(items, rcp.preprocess, (h, w))
                    if has_masks
                    else np.zeros((len(items), h, w), np.uint8)
                )
                stems = [it.stem for it in items]
                clean = clean_good_mask(stems, labels)
                results[cat.name] = {}
                for d in targets:
                    model_info: dict[str, Any]
                    if train:
                        files = folder.train_good()
                        if not files:
                            raise StationError(f"no training images in {cat / 'train' / 'good'}")
                        t_tr = progress.add_task(f"{cat.name} reading train", total=len(files))
                        train_imgs = load_images(
                            files,
                            rcp.preprocess,
                            lambda dd, n, t=t_tr: progress.update(t, completed=dd),
                        )
                        tm = train_and_save(
                            rcp,
                            d,
                            files,
                            train_imgs,
                            out_path=out_dir / cat.name / f"{d.name}.pt",
                            device=device,
                            progress=stage_callback(progress, f"{cat.name} {d.name}"),
                        )
                        del train_imgs
                        det = tm.detector
                        model_info = {
                            "version": tm.version,
                            "artifact": str(tm.path),
                            "fit_seconds": round(tm.report.seconds, 2),
                            "n_train": len(files),
                            "good_scores": tm.meta["good_scores"],
                        }
                    else:
                        lm = loaded[d.name]
                        det = lm.detector
                        model_info = {"version": lm.version, "artifact": str(lm.path)}
                    t_pr = progress.add_task(f"{cat.name} {d.name} predict", total=len(items))
                    t0 = time.perf_counter()
                    maps, scores = [], []
                    for s in range(0, len(images), batch):
                        pred = det.predict(np.stack(images[s : s + batch]))
                        maps.append(pred.maps)
                        scores.append(pred.scores)
                        progress.update(t_pr, completed=min(len(images), s + batch))
                    seconds = time.perf_counter() - t0
                    all_maps = np.concatenate(maps)
                    all_scores = np.concatenate(scores)
                    metrics = evaluate_all(
                        all_scores,
                        labels,
                        all_maps if has_masks else None,
                        masks if has_masks else None,
                    )
                    if clean is not None:
                        metrics["image_auroc_clean"] = image_auroc(all_scores[clean], labels[clean])
                    metrics.update(
                        n_test=len(items),
                        n_defect=int(labels.sum()),
                        predict_seconds=round(seconds, 2),
                        images_per_s=round(len(items) / seconds, 2),
                        model=model_info,
                    )
                    results[cat.name][d.name] = metrics
                    write_scores_csv(
                        out_dir / cat.name / d.name / "scores.csv", stems, labels, all_scores
                    )
                    vmax = (
                        float(np.quantile(all_scores[labels == 0], 0.99))
                        if (labels == 0).any()
                        else float(all_scores.max())
                    )
                    vmax = max(vmax, float(all_scores.max()) * 0.5, 1e-9)
                    for i, kind in pick_examples(all_scores, labels, heatmaps):
                        title = f"{stems[i]} {kind} score {all_scores[i]:.3g}"
                        panel = overlay_panel(images[i], all_maps[i], vmax, masks[i], title)
                        write_png(out_dir / cat.name / d.name / f"{kind}_{stems[i]}.png", panel)
                    del maps, all_maps
                write_report({}, complete=False)

        means: dict[str, dict[str, float]] = {}
        for d in targets:
            means[d.name] = {
                key: _mean([results[c][d.name].get(key, math.nan) for c in results])
                for key, _ in COLUMNS
            }
        cols = [
            (k, label)
            for k, label in COLUMNS
            if any(k in per[d.name] for per in results.values() for d in targets)
        ]
        table = Table(
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
            title=f"{dataset.name}: {'trained per category' if train else 'recipe models'}",
            caption="I-AUROC*: good tiles of defect-free strips only (AITEX)"
            if any(k == "image_auroc_clean" for k, _ in cols)
            else None,
        )
        table.add_column("category", no_wrap=True)
        table.add_column("detector", no_wrap=True)
        for _, label in cols:
            table.add_column(label, justify="right", no_wrap=True)
        table.add_column("n", justify="right", no_wrap=True)
        for c, per in results.items():
            for name, m in per.items():
                table.add_row(c, name, *[_fmt(m.get(k)) for k, _ in cols], str(m["n_test"]))
        for name, m in means.items():
            table.add_row("[bold]mean[/]", name, *[_fmt(m.get(k)) for k, _ in cols], "")
        console.print(table)
        path = write_report(means, complete=True)
        console.print(f"results: {path}")


def write_scores_csv(
    path: Path, stems: list[str], labels: np.ndarray, scores: np.ndarray
) -> None:
    lines = ["image,label,score"]
    lines += [
        f"{stem},{'defect' if lab else 'good'},{float(sc):.6g}"
        for stem, lab, sc in zip(stems, labels, scores, strict=True)
    ]
    with writing(path):
        atomic_write(path, ("\n".join(lines) + "\n").encode())


def _no_nan(v: Any) -> Any:
    """NaN (undefined metric) becomes null so results.json is strict JSON."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_no_nan(x) for x in v]
    if isinstance(v, float | np.floating) and math.isnan(v):
        return None
    return v


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)
