"""Detector metrics on labelled MVTec-layout data: the harness behind `station evaluate`.

Each category's test images run through the recipe's preprocessing and detectors (the scoring
engine): the recipe's trained models, or with `train` a model fitted on that category's
train/good first (saved under the output folder, not in the recipe's models). Writes
`results.json` (rewritten after every category, so a partial run leaves results), each
image's score (`<category>/<detector>/scores.csv`: image, kind, label, score; for failure analysis
and threshold studies) and a few heatmap overlays.

Per category and detector it also reports false-reject rates at fixed operating points (100 %
and 95 % recall, and the recipe's calibration policy applied to the test set itself), with
Clopper-Pearson intervals: `operating_point.py`. `results.md` holds the same table in markdown.

AITEX tiles (stems `NNNN_DDD_FF_tKK`, DDD = defect code): image AUROC is also reported
against the good tiles of defect-free strips only (DDD == 000), see the dataset README.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from station.calibration.operating_point import (
    POINTS,
    cell,
    operating_points,
    point_notes,
    policy_label,
)
from station.calibration.policies import Policy, resolve_policy
from station.datasets import MVTecFolder, copies_of_training
from station.detectors.engine import ScoringEngine, load_images, load_masks, load_models
from station.detectors.training import train_and_save
from station.errors import StationError
from station.files import atomic_write, writing
from station.imaging import flat_images, write_png
from station.metrics import evaluate_all, image_auroc

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import DetectorConfig, PreprocessConfig, Recipe

ProgressFn = Callable[[str, int, int], None]  # (task, done, total); one task per name

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
# false-reject rate at each operating point (results.json: `fr_<point>` and `operating_points`)
POINT_LABELS = {"recall_100": "FR@R100", "recall_95": "FR@R95", "policy": "FR@{policy}†"}
MAX_PIXEL_METRIC_PIXELS = 100_000_000  # about 5 GB for the pixel metrics' sort


def pixel_step(pixels: int) -> int:
    """Every how many rows and columns the pixel metrics read so that at most
    MAX_PIXEL_METRIC_PIXELS take part (1: all)."""
    return max(1, math.ceil(math.sqrt(pixels / MAX_PIXEL_METRIC_PIXELS)))


@dataclass
class LabelledSet:
    """One category's test images, preprocessed, with labels and ground-truth masks."""

    stems: list[str]
    images: list[np.ndarray]
    labels: np.ndarray  # N, 1 = defect
    masks: np.ndarray  # N x H x W uint8; all zero without mask files
    masked: np.ndarray  # N bool: good, or a defect with its mask file (pixel metrics' images)
    clean: np.ndarray | None  # AITEX: defects plus good tiles of defect-free strips
    copies: np.ndarray | None = None  # N bool: the file is a train/good image's copy
    kinds: list[str] = field(default_factory=list)  # N: test sub-folder (good, or defect kind)

    @property
    def has_masks(self) -> bool:
        """Some defect has a mask: pixel metrics are computed over the `masked` images."""
        return bool((self.masked & (self.labels == 1)).any())

    def data_checks(self) -> dict[str, dict[str, int]]:
        """Test images a cell would not see as such, by label: copies of training images, and
        flat ones (one grey value: nothing of the material in view)."""
        flat = flat_images(self.images)
        copies = self.copies if self.copies is not None else np.zeros(len(self.images), bool)
        by = {"good": self.labels == 0, "defect": self.labels == 1}
        return {
            "n": {k: int(m.sum()) for k, m in by.items()},
            "copies_of_training": {k: int((copies & m).sum()) for k, m in by.items()},
            "flat": {k: int((flat & m).sum()) for k, m in by.items()},
            "without_mask": {"defect": int((~self.masked & by["defect"]).sum())},
        }


@dataclass
class Evaluation:
    """What a run measured: metrics per category and detector, and their means."""

    recipe: Recipe
    targets: list[DetectorConfig]
    dataset: Path
    train: bool
    out_dir: Path
    stamp: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    means: dict[str, dict[str, float]] = field(default_factory=dict)
    path: Path | None = None  # results.json once written
    data: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # per category
    policy: Policy | None = None  # the operating point `policy` (default: the recipe's)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = resolve_policy(self.recipe.decision, None, {})

    def columns(self) -> list[tuple[str, str]]:
        """The COLUMNS some result has (I-AUROC* only on AITEX, pixel metrics with masks)."""
        return [
            (k, label)
            for k, label in COLUMNS
            if any(k in per[d.name] for per in self.results.values() for d in self.targets)
        ]

    def point_columns(self) -> list[tuple[str, str]]:
        """(operating point, column label), in table order."""
        name = self.policy.name if self.policy else "policy"
        return [(k, POINT_LABELS[k].format(policy=name)) for k in POINTS]

    def legend(self) -> list[str]:
        """What the table's abbreviated columns mean."""
        policy = self.policy or Policy("zero_miss")
        lines = [
            "FR@R100 / FR@R95: false-reject rate (good test images with score >= threshold) at "
            "the highest threshold that keeps all / at least 95 % of defective test images at "
            "or above it: rate (rejected/good) [95 % Clopper-Pearson interval]; n/a: no "
            "defective or no good test images; mean rows: mean rate",
            f"FR@{policy.name}†: {policy_label(policy)}",
        ]
        if any(k == "image_auroc_clean" for k, _ in self.columns()):
            lines.append("I-AUROC*: good tiles of defect-free strips only (AITEX)")
        return lines + self.data_notes()

    def data_notes(self) -> list[str]:
        """A line per category whose test split holds copies of training images or flat
        images: the figures count them, a cell would not."""
        out = []
        for cat, d in self.data.items():
            n, cp, flat = d["n"], d["copies_of_training"], d["flat"]
            if sum(cp.values()) or sum(flat.values()):
                out.append(
                    f"{cat}: of {n['good']} good / {n['defect']} defective test images, "
                    f"{cp['good']} / {cp['defect']} are byte copies of training images and "
                    f"{flat['good']} / {flat['defect']} are one flat value (an image not decoded "
                    "as its maker meant looks so too); the figures count them"
                )
            bare = d.get("without_mask", {}).get("defect", 0)
            if bare:
                out.append(
                    f"{cat}: {bare} of {n['defect']} defective test images have no mask "
                    "(ground_truth/<kind>/<stem>[_mask].<image suffix>); pixel metrics count "
                    + ("the others" if bare < n["defect"] else "none: no pixel figures")
                )
            if not n["good"]:
                out.append(f"{cat}: no good test images (test/good or test/ok): no AUROC or "
                           "false-reject rate")
        steps = {c: per[d.name]["pixel_metrics_step"] for c, per in self.results.items()
                 for d in self.targets if per[d.name].get("pixel_metrics_step")}
        for cat, step in steps.items():
            nth = {2: "2nd", 3: "3rd"}.get(step, f"{step}th")
            out.append(f"{cat}: pixel metrics on every {nth} row and column of the maps and "
                       f"masks (more than {MAX_PIXEL_METRIC_PIXELS:,} pixels at full size)")
        pixel = [c for c, per in self.results.items()
                 if any("pixel_auroc" in per[d.name] for d in self.targets)]
        if pixel and len(pixel) < len(self.results):
            out.append(f"mean pixel figures: over {len(pixel)} of {len(self.results)} categories "
                       "(the others have no masks)")
        return out

    def markdown(self) -> str:
        """The results table in markdown (`results.md`), legend below."""
        cols, points = self.columns(), self.point_columns()
        head = ["category", "detector", *[lab for _, lab in cols + points], "n"]
        lines = [
            f"# {self.dataset.name}: {'trained per category' if self.train else 'recipe models'}",
            "",
            f"recipe `{self.recipe.name}`, detectors "
            f"{', '.join(d.name for d in self.targets)}, created {self.stamp}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * 2 + "---:|" * (len(head) - 2),
        ]
        for c, per in self.results.items():
            for name, m in per.items():
                cells = [fmt_metric(m.get(k)) for k, _ in cols]
                cells += [cell(m.get("operating_points", {}).get(k)) for k, _ in points]
                lines.append("| " + " | ".join([c, name, *cells, str(m["n_test"])]) + " |")
        for name, m in self.means.items():
            cells = [fmt_metric(m.get(k)) for k, _ in cols]
            cells += [fmt_metric(m.get(f"fr_{k}")) for k, _ in points]
            lines.append("| " + " | ".join(["**mean**", name, *cells, ""]) + " |")
        lines += ["", *[f"- {line}" for line in self.legend()]]
        return "\n".join(lines) + "\n"

    def write_report(self, complete: bool) -> Path:
        """results.json and results.md, rewritten after every category so partial runs leave
        results."""
        report = {
            "dataset": str(self.dataset.resolve()),
            "recipe": self.recipe.name,
            "mode": "train-per-category" if self.train else "recipe-models",
            "complete": complete,
            "detectors": {d.name: d.model_dump() for d in self.targets},
            "preprocess": self.recipe.preprocess.model_dump(),
            "categories": self.results,
            "data_checks": self.data,
            "mean": self.means,
            "operating_points": {
                "rule": "defective when score >= threshold",
                "interval": "Clopper-Pearson, exact, two-sided",
                "points": point_notes(self.policy or Policy("zero_miss")),
                "policy": self.policy.as_dict() if self.policy else None,
            },
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "created": self.stamp,
        }
        path = self.out_dir / "results.json"
        text = json.dumps(_no_nan(report), indent=2, default=_json_default, allow_nan=False)
        with writing(path):
            atomic_write(path, text.encode("utf-8"))
        md = self.out_dir / "results.md"
        with writing(md):
            atomic_write(md, self.markdown().encode("utf-8"))
        self.path = path
        return path


def evaluate(
    recipe: Recipe,
    targets: Sequence[DetectorConfig],
    dataset: Path,
    categories: Sequence[Path],
    out: Path | None = None,
    train: bool = False,
    device: str | None = None,
    heatmaps: int = 4,
    batch: int = 16,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """Measure `targets` on each category folder; writes everything under the output folder
    (default `<data>/<recipe>/eval/<dataset>-<time>`)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out_dir = out or recipe.data_dir / "eval" / f"{dataset.resolve().name}-{stamp}"
    with writing(f"results folder {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
    loaded = {} if train else load_models(recipe, [d.name for d in targets], device)
    run = Evaluation(recipe, list(targets), dataset, train, out_dir, stamp)
    report = progress or _no_progress
    for cat in categories:
        test = read_test_set(cat, recipe.preprocess, report)
        run.data[cat.name] = test.data_checks()
        run.results[cat.name] = {}
        for d in targets:
            if train:
                det, model_info = fit_on_category(recipe, d, cat, out_dir, device, report)
            else:
                lm = loaded[d.name]
                det, model_info = lm.detector, {"version": lm.version, "artifact": str(lm.path)}
            engine = ScoringEngine({d.name: det}, recipe.preprocess, batch)
            metrics = score_test_set(engine, test, out_dir / cat.name, heatmaps, report, run.policy)
            run.results[cat.name][d.name] = {**metrics, "model": model_info}
        run.write_report(complete=False)
    run.means = mean_metrics(run.results, [d.name for d in targets])
    run.write_report(complete=True)
    return run


def read_test_set(cat: Path, cfg: PreprocessConfig, progress: ProgressFn) -> LabelledSet:
    """The category's test images and masks, preprocessed; StationError when there are none."""
    items = MVTecFolder(cat).test_items()
    if not items:
        raise StationError(
            f"no test images in {cat / 'test'}",
            hint="give --dataset an MVTec-layout folder: test/good and test/<defect kind> "
            "images, ground_truth/<defect kind> masks",
        )
    task = f"{cat.name} reading test"
    images = load_images([it.path for it in items], cfg, lambda d, n: progress(task, d, n))
    sizes = {img.shape[:2] for img in images}  # tiled shots keep their own size
    if len(sizes) > 1:
        raise StationError(
            f"the test images of {cat} differ in size after preprocessing ({len(sizes)} sizes); "
            "the metrics compare maps pixel by pixel",
            hint="evaluate one image size per category, or switch preprocess.tiling off",
        )
    labels = np.array([it.label for it in items], dtype=np.int64)
    masked = np.array([it.label == 0 or it.mask_path is not None for it in items])
    h, w = images[0].shape[:2]
    masks = load_masks(items, cfg, (h, w))
    stems = [it.stem for it in items]
    copies = np.array(copies_of_training(cat, items), dtype=bool)
    clean = clean_good_mask(stems, labels)
    kinds = [it.defect_type for it in items]
    return LabelledSet(stems, images, labels, masks, masked, clean, copies, kinds)


def fit_on_category(
    recipe: Recipe,
    det_cfg: DetectorConfig,
    cat: Path,
    out_dir: Path,
    device: str | None,
    progress: ProgressFn,
) -> tuple[Detector, dict[str, Any]]:
    """Train `det_cfg` on the category's train/good; the model is saved under `out_dir`."""
    files = MVTecFolder(cat).train_good()
    if not files:
        raise StationError(f"no training images in {cat / 'train' / 'good'}")
    task = f"{cat.name} reading train"
    images = load_images(files, recipe.preprocess, lambda d, n: progress(task, d, n))
    prefix = f"{cat.name} {det_cfg.name}"
    tm = train_and_save(
        recipe,
        det_cfg,
        files,
        images,
        out_path=out_dir / cat.name / f"{det_cfg.name}.pt",
        device=device,
        progress=lambda stage, d, n: progress(f"{prefix} {stage}", d, n),
    )
    info = {
        "version": tm.version,
        "artifact": str(tm.path),
        "fit_seconds": round(tm.report.seconds, 2),
        "n_train": len(files),
        "good_scores": tm.meta["good_scores"],
    }
    return tm.detector, info


def score_test_set(
    engine: ScoringEngine,
    test: LabelledSet,
    cat_dir: Path,
    heatmaps: int,
    progress: ProgressFn,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Metrics of the engine's one detector on `test`, with its operating points (`policy`:
    default zero_miss); writes scores.csv and overlays."""
    (name,) = engine.detectors
    task = f"{cat_dir.name} {name} predict"
    result = engine.score(test.images, progress=lambda d, n: progress(task, d, n))[name]
    maps, scores, labels = result.maps, result.scores, test.labels
    metrics = evaluate_all(scores, labels)
    if test.has_masks:  # over the good images and the defects that have masks
        whole = (scores, labels, maps, test.masks)
        ps, pl, pm, pg = whole if test.masked.all() else (a[test.masked] for a in whole)
        step = pixel_step(pg.size)
        if step > 1:  # ~50 bytes a pixel: a large set would not fit in memory at full size
            pm, pg = pm[:, ::step, ::step], pg[:, ::step, ::step]
            metrics["pixel_metrics_step"] = step
        pixel = evaluate_all(ps, pl, pm, pg)
        metrics.update({k: v for k, v in pixel.items() if not k.startswith("image_")})
    if test.clean is not None:
        metrics["image_auroc_clean"] = image_auroc(scores[test.clean], labels[test.clean])
    points = operating_points(scores, labels, policy or Policy("zero_miss"))
    metrics["operating_points"] = {k: p.as_dict() for k, p in points.items()}
    metrics.update({f"fr_{k}": p.false_reject_rate for k, p in points.items()})
    seconds = result.latency_ms / 1000.0
    metrics.update(
        n_test=len(test.stems),
        n_defect=int(labels.sum()),
        predict_seconds=round(seconds, 2),
        images_per_s=round(len(test.stems) / seconds, 2),
    )
    write_scores_csv(cat_dir / name / "scores.csv", test.stems, labels, scores, test.kinds)
    write_overlays(cat_dir / name, test, result.map, scores, heatmaps)
    return metrics


def write_overlays(
    folder: Path,
    test: LabelledSet,
    amap: Callable[[int], np.ndarray],
    scores: np.ndarray,
    n: int,
) -> None:
    """About `n` overlay PNGs of telling examples, all on one colour scale."""
    labels = test.labels
    vmax = (
        float(np.quantile(scores[labels == 0], 0.99))
        if (labels == 0).any()
        else float(scores.max())
    )
    vmax = max(vmax, float(scores.max()) * 0.5, 1e-9)
    for i, kind in pick_examples(scores, labels, n):
        sub = test.kinds[i] if test.kinds else ("defect" if labels[i] else "good")
        title = f"{sub}/{test.stems[i]} {kind} score {scores[i]:.3g}"
        panel = overlay_panel(test.images[i], amap(i), vmax, test.masks[i], title)
        write_png(folder / f"{kind}_{sub}_{test.stems[i]}.png", panel)


def mean_metrics(
    results: dict[str, dict[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each detector's mean of every COLUMNS metric and `fr_<point>` rate over the categories
    (NaN and None left out)."""
    keys = [k for k, _ in COLUMNS] + [f"fr_{k}" for k in POINTS]
    return {
        name: {key: _mean([results[c][name].get(key, math.nan) for c in results]) for key in keys}
        for name in names
    }


def fmt_metric(v: Any) -> str:
    """A metric for a table: 3 decimals, "-" when undefined."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


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


def write_scores_csv(
    path: Path, stems: list[str], labels: np.ndarray, scores: np.ndarray, kinds: list[str]
) -> None:
    """image (file stem), kind (its test sub-folder: MVTec names repeat across kinds), label,
    score."""
    lines = ["image,kind,label,score"]
    lines += [
        f"{stem},{kind},{'defect' if lab else 'good'},{float(sc):.6g}"
        for stem, kind, lab, sc in zip(stems, kinds, labels, scores, strict=True)
    ]
    with writing(path):
        atomic_write(path, ("\n".join(lines) + "\n").encode())


def _no_progress(task: str, done: int, total: int) -> None:
    return None


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


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
