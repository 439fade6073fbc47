"""AST-MFR ablation on labelled MVTec-layout data (the paper's Tables 4 and 6, small scale).

Variants, each trained on the category's train/good and measured by `station evaluate --train`
(so the metrics are exactly the ones of the main tables):
  full        asymmetric pair + MFR blocks (the detector as shipped)
  no_mfr      asymmetric pair, 1x1 projections instead of MFR blocks, no masking
  symmetric   the teacher as its own student (same architecture and weights) + MFR blocks

Each variant gets a recipe derived from a base recipe (default glassfiber) with one ast_mfr
detector; results land under --out/<variant>/ and a Markdown table is printed at the end.

    .venv/bin/python tools/ablate_ast_mfr.py --dataset ../shared/datasets/aitex/fabric01 \
        --teacher efficientnet_lite1 --epochs 4 --train-student false --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

VARIANTS = ("full", "no_mfr", "symmetric")
COLUMNS = [
    ("image_auroc", "I-AUROC"),
    ("pixel_auroc", "P-AUROC"),
    ("aupro", "AUPRO"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    ("image_f1_max", "I-F1max"),
]


def variant_params(variant: str, teacher: str, student: str) -> dict[str, Any]:
    if variant == "full":
        return {"student": student, "mfr": True}
    if variant == "no_mfr":
        return {"student": student, "mfr": False}
    if variant == "symmetric":
        return {"student": teacher, "mfr": True}
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def write_recipe(base: Path, out: Path, variant: str, args: argparse.Namespace) -> Path:
    data = yaml.safe_load(base.read_text(encoding="utf-8"))
    params = variant_params(variant, args.teacher, args.student)
    params.update(
        epochs=args.epochs,
        train_student=args.train_student,
        mask_rate=args.mask_rate,
        batch_size=args.batch_size,
    )
    data["name"] = f"astmfr_{variant}"
    data["detectors"] = [
        {"name": "ast_mfr", "backbone": args.teacher, "device": args.device, "params": params}
    ]
    data.setdefault("storage", {})["data_dir"] = str((out / "data").resolve())
    path = out / f"astmfr_{variant}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="MVTec category folder")
    ap.add_argument("--base-recipe", type=Path, default=Path("recipes/glassfiber.yaml"))
    ap.add_argument("--teacher", default="efficientnet_lite1")
    ap.add_argument("--student", default="mobilenet_v2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--train-student", type=lambda s: s.lower() in ("1", "true", "yes"), default=False
    )
    ap.add_argument("--mask-rate", type=float, default=0.4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("data/ablation_ast_mfr"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        recipe = write_recipe(args.base_recipe, args.out, variant, args)
        dest = args.out / variant
        cmd = [
            sys.executable, "-m", "station", "evaluate", "--recipe", str(recipe),
            "--dataset", str(args.dataset), "--train", "--out", str(dest),
            "--threads", str(args.threads), "--heatmaps", "2",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            print(f"variant {variant}: evaluate failed ({proc.returncode})", file=sys.stderr)
            return proc.returncode
        results = json.loads((dest / "results.json").read_text(encoding="utf-8"))
        per_cat = results.get("categories", results)
        for cat, per in per_cat.items():
            if isinstance(per, dict) and "ast_mfr" in per:
                rows.append((f"{variant} ({cat})", per["ast_mfr"]))
        print(f"variant {variant}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("| variant | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in rows:
        print(f"| {name} | " + " | ".join(fmt(m.get(k)) for k, _ in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
