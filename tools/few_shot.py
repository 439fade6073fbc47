"""Few good images (issue #20 point 5): image AUROC and FR@R100 with 2, 10, 50 and all images.

    nice -n 19 .venv/bin/python tools/few_shot.py                  # all five materials
    nice -n 19 .venv/bin/python tools/few_shot.py --sizes 2 10 --materials fabric00
    .venv/bin/python tools/few_shot.py --report-only               # tables from finished runs

For each development material and each N it builds an MVTec folder under `--scratch`
(<scratch>/<material>/n<N>-s<seed>/<material>/) whose train/good holds symlinks to N images of
the original train/good, drawn without replacement by a seeded generator, and whose test/ and
ground_truth/ are symlinks to the original's. It then runs

    nice -n 19 station evaluate --recipe R --dataset <that folder> --train --threads 1
        --heatmaps 0 --out <scratch>/<material>/n<N>-s<seed>/eval

one run at a time. N up to `--multi-seed-upto` (default 10) is drawn with every seed of
`--seeds`; larger N with the first seed only. N = all runs on the original folder unless
`--full-results material=results.json` names a finished full-data evaluation to reuse. A run
whose results.json is complete is not repeated (`--force` repeats it), so the tool resumes.

Recipes: the fabrics use `glassfiber` as shipped (256 px tiles; each AITEX image is one tile).
Half the magnetic tiles are narrower or lower than a tile, so they use the README's variant: a
recipe that `extends:` the given one with `preprocess.tiling.enabled: false` (written to the
scratch folder).

Prints one table per material and writes them to <scratch>/summary.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DEFAULT_MATERIALS = {
    "fabric00": SHARED / "aitex" / "fabric00",
    "fabric01": SHARED / "aitex" / "fabric01",
    "fabric04": SHARED / "aitex" / "fabric04",
    "fabric06": SHARED / "aitex" / "fabric06",
    "magnetic_tile": SHARED / "magnetic_tile",
}
# Materials whose images are smaller than the recipe's 256 px tile: evaluated resized whole.
UNTILED = {"magnetic_tile"}
UNTILED_RECIPE = """\
# the base recipe with whole images resized to its preprocess.size, as in the README
extends: {base}
name: few-shot-untiled
preprocess:
  tiling: {{enabled: false}}
"""


def val_variant(base: Path, fraction: float, target: Path) -> Path:
    """A recipe extending `base` whose detectors hold out `fraction` of the good images for
    validation (the list replaces the base's whole, so it is copied with the one param set)."""
    data = yaml.safe_load(base.read_text())
    dets = data.get("detectors") if isinstance(data, dict) else None
    if not dets:
        raise SystemExit(f"few_shot: {base} lists no detectors to set val_fraction on")
    for det in dets:
        det.setdefault("params", {})["val_fraction"] = fraction
    text = yaml.safe_dump(
        {"extends": str(base.resolve()), "name": f"{base.stem}-val", "detectors": dets},
        sort_keys=False,
    )
    target.write_text(f"# {base.name} with val_fraction {fraction} (tools/few_shot.py)\n{text}")
    return target


def good_images(category: Path) -> list[Path]:
    """The image files of category/train/good, sorted by name."""
    folder = category / "train" / "good"
    if not folder.is_dir():
        raise SystemExit(f"few_shot: {folder} is not a folder (expected an MVTec category)")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def draw(images: list[Path], n: int, seed: int) -> list[Path]:
    """`n` of `images` without replacement, by a generator seeded with `seed` (sorted by name)."""
    if n < 1:
        raise SystemExit(f"few_shot: N must be >= 1, not {n}")
    if n > len(images):
        raise SystemExit(f"few_shot: N = {n} but only {len(images)} training images")
    idx = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return sorted(images[int(i)] for i in idx)


def build_subset(source: Path, target: Path, n: int, seed: int) -> list[Path]:
    """Make `target` an MVTec category with `n` drawn train/good images of `source` (symlinks)
    and `source`'s test/ and ground_truth/ (symlinked folders). Replaces an older `target`.
    Returns the drawn source images."""
    chosen = draw(good_images(source), n, seed)
    if target.is_symlink() or target.is_file():
        raise SystemExit(f"few_shot: {target} exists and is not a folder the tool made")
    if target.exists():
        shutil.rmtree(target)  # only symlinks and folders of symlinks: the sources stay
    (target / "train" / "good").mkdir(parents=True)
    for img in chosen:
        (target / "train" / "good" / img.name).symlink_to(img.resolve())
    for sub in ("test", "ground_truth"):
        if (source / sub).is_dir():
            (target / sub).symlink_to((source / sub).resolve(), target_is_directory=True)
    return chosen


@dataclass
class Run:
    material: str
    n: int | None  # None: all training images
    seed: int | None
    results: Path  # results.json of the evaluation
    n_images: int = 0


@dataclass
class Score:
    i_auroc: float
    p_auroc: float
    false_rejects: int
    n_good: int
    ci: tuple[float, float]
    n_images: int
    n_val: int

    @property
    def fr(self) -> float:
        return self.false_rejects / self.n_good


def read_score(results: Path, category: str) -> Score:
    """Image/pixel AUROC and FR@R100 of PatchCore on `category` from a results.json."""
    data = json.loads(results.read_text())
    if not data.get("complete"):
        raise SystemExit(f"few_shot: {results} is from an unfinished evaluation")
    det = data["categories"][category]["patchcore"]
    op = det["operating_points"]["recall_100"]
    model = det.get("model") or {}
    return Score(
        i_auroc=float(det["image_auroc"]),
        p_auroc=float(det["pixel_auroc"]),
        false_rejects=int(op["false_rejects"]),
        n_good=int(op["n_good"]),
        ci=(float(op["ci_low"]), float(op["ci_high"])),
        n_images=int(model.get("n_train", 0)),
        n_val=int((model.get("good_scores") or {}).get("n", 0)),
    )


def is_complete(results: Path) -> bool:
    try:
        return bool(json.loads(results.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def evaluate(recipe: str, category: Path, out: Path, station: Path) -> None:
    """One `station evaluate --train` run at the lowest CPU priority, one torch thread."""
    cmd = [
        "nice", "-n", "19", str(station), "evaluate", "--recipe", recipe,
        "--dataset", str(category), "--train", "--threads", "1", "--heatmaps", "0",
        "--out", str(out),
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (out.parent / "evaluate.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise SystemExit(
            f"few_shot: station evaluate failed ({done.returncode}):\n" + "\n".join(tail)
        )


def fmt_fr(s: Score) -> str:
    return f"{s.fr:.3f} ({s.false_rejects}/{s.n_good}) [{s.ci[0]:.3f}, {s.ci[1]:.3f}]"


def table(material: str, rows: list[tuple[str, list[Score], str]]) -> str:
    """Markdown table of one material: per N, mean and range over the draws, and each draw."""
    out = [
        f"**{material}**",
        "",
        "| N | bank / val images | draws | I-AUROC mean (range) | P-AUROC mean | "
        "FR@R100 mean (range) | FR@R100 per draw (rejected/good) [95 % CI] |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for label, scores, note in rows:
        ia = [s.i_auroc for s in scores]
        fr = [s.fr for s in scores]
        split = ", ".join(sorted({f"{s.n_images - s.n_val} / {s.n_val}" for s in scores}))
        if len(scores) > 1:
            ia_s = f"{np.mean(ia):.3f} ({min(ia):.3f}-{max(ia):.3f})"
            fr_s = f"{np.mean(fr):.3f} ({min(fr):.3f}-{max(fr):.3f})"
        else:
            ia_s, fr_s = f"{ia[0]:.3f}", f"{fr[0]:.3f}"
        per = "; ".join(fmt_fr(s) for s in scores)
        out.append(
            f"| {label}{note} | {split} | {len(scores)} | {ia_s} | "
            f"{np.mean([s.p_auroc for s in scores]):.3f} | {fr_s} | {per} |"
        )
    return "\n".join(out)


def parse_pairs(items: list[str], what: str) -> dict[str, Path]:
    pairs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"few_shot: {what} expects name=path, not {item!r}")
        pairs[name] = Path(path)
    return pairs


def plan_runs(
    materials: list[str], sizes: list[int | None], seeds: list[int], multi_seed_upto: int,
    scratch: Path, tag: str, reuse: dict[str, Path],
) -> list[Run]:
    """Every evaluation, the cheap sizes of every material first: N up to `multi_seed_upto`
    once per seed, larger N with the first seed, all images (None) once (a reused result
    in place of its own folder, unless `tag` marks a variant)."""
    plan: list[Run] = []
    for n in sizes:
        for name in materials:
            if n is None:
                path = scratch / name / f"all{tag}" / "eval" / "results.json"
                plan.append(Run(name, None, None, reuse.get(name, path) if not tag else path))
                continue
            for seed in seeds if n <= multi_seed_upto else seeds[:1]:
                res = scratch / name / f"n{n}-s{seed}{tag}" / "eval" / "results.json"
                plan.append(Run(name, n, seed, res))
    return plan  # fmt: skip


def table_rows(
    plan: list[Run], material: str, sizes: list[int | None], reuse: dict[str, Path]
) -> list[tuple[str, list[Score], str]]:
    """One row per N of `material`, in `sizes` order, over its finished runs (a size with none
    is left out): label, scores, note."""
    rows = []
    for n in sizes:
        runs = [r for r in plan if r.material == material and r.n == n]
        scores = [read_score(r.results, material) for r in runs if is_complete(r.results)]
        if scores:
            note = " (reused)" if n is None and material in reuse else ""
            rows.append(("all" if n is None else str(n), scores, note))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--materials",
        nargs="+",
        default=list(DEFAULT_MATERIALS),
        help="materials to run (names of the default set, or name=path)",
    )
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=["2", "10", "50", "all"],
        help="training-set sizes N, or 'all'",
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--multi-seed-upto",
        type=int,
        default=10,
        help="N up to this are drawn once per seed, larger N with the first seed",
    )
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/few_shot"))
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument(
        "--full-results",
        nargs="*",
        default=[],
        help="material=results.json of a finished full-data evaluation to reuse",
    )
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="override the detectors' val_fraction (runs go to *-val<F> folders)",
    )
    ap.add_argument("--force", action="store_true", help="repeat finished runs")
    ap.add_argument("--report-only", action="store_true", help="no new runs: tables only")
    args = ap.parse_args()  # fmt: skip

    materials: dict[str, Path] = {}
    for item in args.materials:
        if "=" in item:
            materials.update(parse_pairs([item], "--materials"))
        elif item in DEFAULT_MATERIALS:
            materials[item] = DEFAULT_MATERIALS[item]
        else:
            raise SystemExit(f"few_shot: unknown material {item!r}; give name=path")
    reuse = parse_pairs(args.full_results, "--full-results")
    station = REPO / ".venv" / "bin" / "station"
    args.scratch.mkdir(parents=True, exist_ok=True)
    base = Path(args.recipe)
    base = base if base.is_file() else REPO / "recipes" / f"{args.recipe}.yaml"
    recipe, tag = args.recipe, ""
    if args.val_fraction is not None:
        tag = f"-val{args.val_fraction:g}"
        base = val_variant(base, args.val_fraction, args.scratch / f"few-shot{tag}.yaml")
        recipe = str(base)
    untiled_recipe = args.scratch / f"few-shot-untiled{tag}.yaml"
    untiled_recipe.write_text(UNTILED_RECIPE.format(base=base.resolve()))

    sizes: list[int | None] = [None if s == "all" else int(s) for s in args.sizes]
    plan = plan_runs(list(materials), sizes, args.seeds, args.multi_seed_upto, args.scratch,
                     tag, reuse)  # fmt: skip

    for run in plan:
        if args.report_only or (is_complete(run.results) and not args.force):
            continue
        if run.n is None and run.material in reuse:
            raise SystemExit(f"few_shot: {run.results} (--full-results) is not a finished run")
        source = materials[run.material]
        run_recipe = str(untiled_recipe) if run.material in UNTILED else recipe
        if run.n is None:
            category = source
        else:
            category = run.results.parent.parent / run.material
            build_subset(source, category, run.n, run.seed or 0)
        run.results.parent.mkdir(parents=True, exist_ok=True)
        evaluate(run_recipe, category, run.results.parent, station)
        s = read_score(run.results, run.material)
        print(f"  {run.material} N={run.n or 'all'} seed={run.seed}: I-AUROC {s.i_auroc:.3f}, "
              f"FR@R100 {fmt_fr(s)}", flush=True)  # fmt: skip

    parts = []
    for name in materials:
        if rows := table_rows(plan, name, sizes, reuse):
            parts.append(table(name, rows))
    text = "\n\n".join(parts) + "\n"
    (args.scratch / f"summary{tag}.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
