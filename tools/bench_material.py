"""The material check on the development materials: every ordered pair, written to a table.

    .venv/bin/python tools/bench_material.py            # writes docs/material_check.md

For each material A (AITEX fabric00, 01, 04, 06 and the magnetic tiles): the material model is
fitted on A's train/good exactly as `station train` fits it for `--recipe` (station.monitoring.
material: shots resized to 256 x 256, the recipe's first backbone up to its first default stage
averaged per channel, nearest training shot in standardised features, threshold at the 99 %
quantile of 5-fold held-out distances, folds by AITEX strip: a strip's 16 tiles are held out
together, as a new sheet would be). Then, at that threshold:
- the false-alarm rate on A's own test/good images (AITEX: the defect-free strips, code 000;
  and all test/good tiles, which include defect-strip tiles and whole-strip shifts);
- the detection rate of every other material B's test/good images (AITEX: defect-free strips,
  all their tiles; and only the fabric tiles t05-t15, without the selvedge/background ones);
- the share of A's defective test images, per defect kind, that the check itself faults (the
  station rejects those whatever the detectors say).

`--scores A=DIR/A/<detector>/scores.csv` (from `station evaluate`) adds the station's verdict
on A's test split, check and detector together: a shot the check faults is rejected, the others
by the detector's threshold; the false-reject rate at 100 % recall with and without the check.

`--compare` adds the alternatives the check was chosen against (same folds and threshold
rule): Mahalanobis with Ledoit-Wolf shrinkage, deeper stages, mean+std pooling.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from station.calibration.bootstrap import clopper_pearson
from station.datasets import MVTecFolder
from station.detectors.backbones import create_backbone
from station.detectors.common import to_batch
from station.imaging import preprocess, read_image
from station.monitoring.material import FOLDS, MaterialFeatures, MaterialModel, recipe_backbone
from station.recipe import PreprocessConfig, load_recipe

REPO = Path(__file__).resolve().parents[1]
FABRICS = ("fabric00", "fabric01", "fabric04", "fabric06")
FALSE_ALARM = 0.01


class Material:
    """One material's images: train/good, test/good, and which test tiles count where."""

    def __init__(self, name: str, root: Path) -> None:
        folder = MVTecFolder(root)
        self.name = name
        self.train = folder.train_good()
        items = folder.test_items()
        self.test = [it.path for it in items if it.label == 0]
        self.defects = [it.path for it in items if it.label == 1]
        self.kinds = [it.defect_type for it in items if it.label == 1]
        self.good_kinds = [it.defect_type for it in items if it.label == 0]  # good, or ok
        # the "part" of a training tile: its AITEX strip (held-out folds keep a strip together)
        fab = name.startswith("fabric")
        self.groups = [p.stem.rsplit("_t", 1)[0] if fab else p.stem for p in self.train]
        names = [p.stem for p in self.test]
        fabric = name.startswith("fabric")
        # AITEX tile names: NNNN_DDD_FF_tKK (DDD 000: a defect-free strip; KK: tile along it)
        self.clean = np.array([not fabric or n.split("_")[1] == "000" for n in names])
        self.inner = self.clean & np.array(
            [not fabric or int(n.rsplit("_t", 1)[1]) >= 5 for n in names]
        )


def load(args: argparse.Namespace) -> list[Material]:
    mats = [Material(f, args.aitex / f) for f in FABRICS]
    return [*mats, Material("magnetic_tile", args.magnetic_tile)]


def features(
    fn: Callable[[list[np.ndarray]], np.ndarray], files: list[Path], cfg: PreprocessConfig
) -> np.ndarray:
    rows = []
    for s in range(0, len(files), 32):
        rows.append(fn([preprocess(read_image(f), cfg) for f in files[s : s + 32]]))
    return np.concatenate(rows)


def rate(d: np.ndarray, t: float) -> tuple[int, int]:
    return int((d > t).sum()), len(d)


def pairwise(
    mats: list[Material], feats: dict[str, tuple[np.ndarray, np.ndarray]], fit: Callable
) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """(A, B) -> {'all', 'clean', 'inner'}: (images over A's threshold, images)."""
    return rates(mats, feats, {a.name: fit(feats[a.name][0], a.groups) for a in mats})


def rates(
    mats: list[Material], feats: dict[str, tuple[np.ndarray, ...]], models: dict
) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """`pairwise` for models already fitted, one per material A."""
    out = {}
    for a in mats:
        model = models[a.name]
        for b in mats:
            d = model.distance(feats[b.name][1])
            t = model.threshold
            out[a.name, b.name] = {
                "all": rate(d, t),
                "clean": rate(d[b.clean], t),
                "inner": rate(d[b.inner], t),
            }
    return out


def fmt(k: int, n: int) -> str:
    return f"{k / n:.3f} ({k}/{n})" if n else "-"


def matrix(mats: list[Material], res: dict, key: str) -> list[str]:
    head = "| trained \\ presented | " + " | ".join(m.name for m in mats) + " |"
    lines = [head, "|---" * (len(mats) + 1) + "|"]
    for a in mats:
        cells = []
        for b in mats:
            cell = fmt(*res[a.name, b.name][key if a is not b else "clean"])
            cells.append(f"**{cell}**" if a is b else cell)
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    return lines


# -- alternatives (--compare) -------------------------------------------------------------------


class Mahalanobis:
    """Distance to the training mean with a Ledoit-Wolf shrunk covariance; same folds/quantile."""

    def __init__(self, feats: np.ndarray) -> None:
        n, d = feats.shape
        self.mu = feats.mean(0)
        x = feats - self.mu
        s = x.T @ x / n
        m = np.trace(s) / d
        d2 = ((s - m * np.eye(d)) ** 2).sum()
        b2 = ((x**2).sum(1) ** 2 - 2 * np.einsum("ij,jk,ik->i", x, s, x) + (s**2).sum()).sum()
        shrink = min(b2 / n**2, d2) / d2 if d2 > 0 else 1.0
        self.precision = np.linalg.inv(shrink * m * np.eye(d) + (1 - shrink) * s)
        self.threshold = float("inf")

    def distance(self, feats: np.ndarray) -> np.ndarray:
        z = feats - self.mu
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0))

    @classmethod
    def fit(cls, feats: np.ndarray, groups: list[str], seed: int = 0) -> Mahalanobis:
        names, index = np.unique(groups, return_inverse=True)
        order = np.random.default_rng(seed).permutation(len(names))
        held = np.zeros(len(feats))
        for fold in np.array_split(order, FOLDS):
            out = np.isin(index, fold)
            held[out] = cls(feats[~out]).distance(feats[out])
        model = cls(feats)
        model.threshold = float(np.quantile(held, 1 - FALSE_ALARM))
        return model


STAGES = ("blocks.2", "blocks.4", "blocks.6")
VARIANTS = {  # name: (stages, with std)
    "blocks.2 mean": ((0,), False),
    "blocks.2+4 mean": ((0, 1), False),
    "blocks.2+4 mean+std": ((0, 1), True),
    "blocks.6 mean": ((2,), False),
    "blocks.2+4+6 mean+std": ((0, 1, 2), True),
}


def stage_pool(backbone: torch.nn.Module) -> Callable[[list[np.ndarray]], np.ndarray]:
    def fn(images: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            maps = backbone(to_batch(images))
        cols = [f.mean((2, 3)) for f in maps] + [f.std((2, 3)) for f in maps]
        return torch.cat(cols, 1).double().numpy()

    return fn


def compare(mats: list[Material], cfg: PreprocessConfig, recipe: str) -> list[str]:
    backbone = create_backbone(load_recipe(recipe).detectors[0].backbone, "auto", list(STAGES))
    chans = backbone.channels
    raw = {
        m.name: (
            features(stage_pool(backbone), m.train, cfg),
            features(stage_pool(backbone), m.test, cfg),
        )
        for m in mats
    }
    lines = [
        "| features | distance | worst pair (fabric tiles) | mean detection | "
        "mean false alarm | highest false alarm |",
        "|---|---|---|---|---|---|",
    ]
    for vname, (stages, std) in VARIANTS.items():
        offs = np.cumsum([0, *chans])
        idx = [np.arange(offs[s], offs[s + 1]) for s in stages]
        if std:
            idx += [i + offs[-1] for i in idx]
        cols = np.concatenate(idx)
        sub = {k: (tr[:, cols], te[:, cols]) for k, (tr, te) in raw.items()}
        for dname, fit in (
            ("nearest neighbour", lambda f, g: MaterialModel.fit(f, FALSE_ALARM, g)),
            ("Mahalanobis (Ledoit-Wolf)", Mahalanobis.fit),
        ):
            res = pairwise(mats, sub, fit)
            det = [res[a.name, b.name]["inner"] for a in mats for b in mats if a is not b]
            fa = [res[a.name, a.name]["clean"] for a in mats]
            worst = min(det, key=lambda kn: kn[0] / kn[1])
            lines.append(
                f"| {vname} | {dname} | {fmt(*worst)} | "
                f"{np.mean([k / n for k, n in det]):.3f} | "
                f"{np.mean([k / n for k, n in fa]):.3f} | {max(k / n for k, n in fa):.3f} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="glassfiber", help="whose backbone the check uses")
    ap.add_argument("--aitex", type=Path, default=REPO.parent / "shared/datasets/aitex")
    ap.add_argument(
        "--magnetic-tile", type=Path, default=REPO.parent / "shared/datasets/magnetic_tile"
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "material_check.md")
    ap.add_argument("--compare", action="store_true", help="also measure the alternatives")
    ap.add_argument(
        "--scores", action="append", default=[], metavar="MATERIAL=CSV",
        help="a station evaluate scores.csv of that material: adds the station's verdict",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PreprocessConfig(size=(256, 256))
    mats = load(args)
    backbone, _ = recipe_backbone(load_recipe(args.recipe), "cpu")
    pooled = MaterialFeatures(backbone, cfg, torch.device("cpu"))
    t0 = time.perf_counter()
    feats = {
        m.name: tuple(features(pooled, files, cfg) for files in (m.train, m.test, m.defects))
        for m in mats
    }
    seconds = time.perf_counter() - t0
    n_images = sum(len(m.train) + len(m.test) + len(m.defects) for m in mats)
    models = {m.name: MaterialModel.fit(feats[m.name][0], FALSE_ALARM, m.groups) for m in mats}
    res = rates(mats, feats, models)
    lines = [
        f"Backbone `{backbone.identity.get('backbone')}`, stage `{backbone.layers[0]}` "
        f"(the first detector of recipe `{args.recipe}`).",
        "",
        "### Detection rate of B's good test images (AITEX: defect-free strips, all tiles)",
        "",
        *matrix(mats, res, "clean"),
        "",
        "### ... only the fabric tiles t05-t15 (no selvedge or background beyond the edge)",
        "",
        *matrix(mats, res, "inner"),
        "",
        "### False alarms on A's own test/good",
        "",
        "| material | defect-free strips (code 000) | all test/good tiles |",
        "|---|---|---|",
        *[
            f"| {m.name} | {fmt(*res[m.name, m.name]['clean'])} | "
            f"{fmt(*res[m.name, m.name]['all'])} |"
            for m in mats
        ],
        "",
        "### A's defective test images that A's check faults, per defect kind",
        "",
        *defect_table(mats, feats, models),
        "",
        f"Features of {n_images} images (read, resized, backbone, pooled) took {seconds:.0f} s "
        f"on {args.threads} CPU thread(s): {1000 * seconds / n_images:.0f} ms an image.",
    ]
    if args.scores:
        csvs = dict(a.split("=", 1) for a in args.scores)
        lines += ["", *verdict_table(mats, feats, models, csvs)]
    if args.compare:
        lines += [
            "",
            "### Alternatives (worst pair: lowest detection rate over ordered pairs, "
            "fabric tiles; false alarms: defect-free strips)",
            "",
            *compare(mats, cfg, args.recipe),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_doc(args.out, text)


def defect_table(mats: list[Material], feats: dict, models: dict) -> list[str]:
    kinds = sorted({k for m in mats for k in m.kinds})
    lines = ["| material | " + " | ".join([*kinds, "all"]) + " |", "|---" * (len(kinds) + 2) + "|"]
    for m in mats:
        model = models[m.name]
        over = model.distance(feats[m.name][2]) > model.threshold
        kind = np.array(m.kinds)
        cells = [fmt(int(over[kind == k].sum()), int((kind == k).sum())) for k in kinds]
        cells.append(fmt(int(over.sum()), len(over)))
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    return lines


def fr_at_full_recall(
    scores: np.ndarray, labels: np.ndarray, faulted: np.ndarray
) -> tuple[int, int]:
    """False rejects when the threshold passes no defect the check left to the detector."""
    missed = (labels == 1) & ~faulted
    t = scores[missed].min() if missed.any() else np.inf
    rejected = faulted | (scores >= t)
    return int(rejected[labels == 0].sum()), int((labels == 0).sum())


def verdict_table(mats: list[Material], feats: dict, models: dict, csvs: dict) -> list[str]:
    lines = [
        "### The station's verdict: check and detector together",
        "",
        "Each test image a shot; a shot the check faults is rejected, the others by the "
        "detector's score at the threshold that passes no defect (100 % recall). "
        "False-reject rate with 95 % Clopper-Pearson interval.",
        "",
        "| material | detector | defects the check faults | FR@R100 detector alone | "
        "FR@R100 with the check |",
        "|---|---|---|---|---|",
    ]
    for m in mats:
        if m.name not in csvs:
            continue
        model = models[m.name]
        paths = [*m.test, *m.defects]
        dist = model.distance(np.concatenate([feats[m.name][1], feats[m.name][2]]))
        with open(csvs[m.name], newline="") as fh:
            rows = list(csv.DictReader(fh))
        kinds = [*m.good_kinds, *m.kinds]  # scores.csv names the kind since 2026-12-07
        by_kind = bool(rows) and "kind" in rows[0]
        faulted_by = {(k if by_kind else "", p.stem): d > model.threshold
                      for p, k, d in zip(paths, kinds, dist, strict=True)}
        labels = np.array([r["label"] != "good" for r in rows], int)
        scores = np.array([float(r["score"]) for r in rows])
        faulted = np.array([faulted_by[(r.get("kind", ""), r["image"])] for r in rows])
        alone = fr_at_full_recall(scores, labels, np.zeros_like(faulted))
        both = fr_at_full_recall(scores, labels, faulted)
        caught = fmt(int(faulted[labels == 1].sum()), int(labels.sum()))
        lines.append(
            f"| {m.name} | {Path(csvs[m.name]).parent.name} | {caught} | {fr_cell(*alone)} | "
            f"{fr_cell(*both)} |"
        )
    return lines


def fr_cell(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k / n:.3f} ({k}/{n}) [{lo:.3f}, {hi:.3f}]"


def write_doc(path: Path, tables: str) -> None:
    """Replace the generated part of the doc (between the markers), keep the prose."""
    start, end = "<!-- bench_material:start -->", "<!-- bench_material:end -->"
    doc = path.read_text() if path.is_file() else f"# The material check\n\n{start}\n{end}\n"
    if start not in doc or end not in doc:
        doc = doc.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    path.write_text(f"{head}{start}\n{tables}{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
