"""Diagnosis: where a good sheet's highest anomaly lies, and which defects score like good sheets.

Reads a station home made by `tools/bench_recall_by_size.py --home H` (its captured sets under
`data/bench/` and its trained `bench-tiles` recipe) and scores every part once with the
station's scoring engine, maps kept (as the bench does). Then, per part, the peak of its shot
maps is placed on the table (the twin's exact camera, `inspection_camera`): how far inside the
nominal sheet edge it lies (mm; negative: on the table in the region's edge margin) and how far
from the image border (px). It reports:

1. where the good sheets' peaks lie;
2. a what-if per part score: the map max over pixels at least K mm inside the nominal sheet
   edge. Diagnostic only: leaving out an edge band loses coverage, which the station refuses;
3. a what-if normalisation by distance to the sheet edge: each distance band's 99.9th
   percentile on the calibration set's good sheets is taken as that band's good level, and a
   pixel's score is lowered by how far its band's level lies above the interior's;
4. the defective test parts whose score lies within the good test sheets' range: kind, size.

Each part score in 2 and 3 is judged at its own zero-miss threshold on the calibration parts
(the lowest defective part's score), then on the test parts: false rejects, misses, AUROC.

    .venv/bin/python tools/false_alarm_sites.py --home /tmp/rbs --out /tmp/rbs/false_alarm_sites
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = ("labelled", "test", "test-good")  # calibration, then test
INSIDE_MM = (0.0, 1.0, 2.0, 3.0)
BANDS_MM = (-9.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 1e9)  # distance to the nominal edge


def pixel_table_xy(scorer: Any, pose: str, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) base-frame mm on the table of every map pixel of a pose's shot."""
    from station.geometry.sheet_map import back_project, shot_view

    h, w = shape
    vv, uu = np.mgrid[0:h, 0:w]
    view = shot_view(scorer.camera, pose, scorer.tcp[pose], scorer.recipe.preprocess.crop)
    uv = np.c_[uu.ravel(), vv.ravel()].astype(np.float64)
    return back_project(view, uv, scorer.camera.table_to_base).reshape(h, w, 2)


def score_parts(home: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every part of the bench's sets scored once: maps, shot scores, label, truth."""
    from _bench_fusion import PassScorer, read_parts

    from station.detectors.registry import load_recipe
    from station.geometry.coverage import sheet_rect

    recipe = load_recipe(str(home / "recipes" / "bench-tiles.yaml"))
    scorer = PassScorer(recipe)
    poses = [p.name for p in recipe.robot.poses]
    x0, y0, x1, y1 = sheet_rect(recipe)
    inside: dict[str, np.ndarray] = {}
    parts = []
    for set_name in SETS:
        root = home / "data" / "bench" / set_name
        if not root.exists():
            continue
        for pf in read_parts(root, poses):
            res = scorer.engine.score_files([p for _, p in pf.shots], keep_maps=True)
            res = res[scorer.detector]
            maps = [np.asarray(res.map(i), np.float32) for i in range(len(poses))]
            for pose, m in zip(poses, maps, strict=True):
                if pose not in inside:
                    xy = pixel_table_xy(scorer, pose, m.shape)
                    inside[pose] = np.minimum.reduce(
                        [xy[..., 0] - x0, x1 - xy[..., 0], xy[..., 1] - y0, y1 - xy[..., 1]]
                    )
            parts.append({"set": set_name, "key": pf.key, "label": pf.label,
                          "truth": pf.truth, "maps": maps, "poses": poses,
                          "shot_scores": [float(s) for s in res.scores]})  # fmt: skip
            print(f"  {set_name}/{pf.key} scored", flush=True)
    return parts, inside


def peak_site(part: dict[str, Any], inside: dict[str, np.ndarray]) -> dict[str, Any]:
    """The part's map peak: shot, pixel, mm inside the nominal sheet edge, px to the border."""
    best = max(range(len(part["maps"])), key=lambda i: float(part["maps"][i].max()))
    m = part["maps"][best]
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    pose = part["poses"][best]
    h, w = m.shape
    return {"pose": pose, "px": [int(x), int(y)], "peak": float(m[y, x]),
            "mm_inside_sheet": round(float(inside[pose][y, x]), 2),
            "px_to_border": int(min(x, y, w - 1 - x, h - 1 - y))}  # fmt: skip


def judge(scores: list[float], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Zero-miss threshold on the calibration parts, then false rejects, misses and AUROC on
    the test parts."""
    from _bench_fusion import zero_miss_threshold

    from station.calibration.roc import auroc

    cal = [(s, p) for s, p in zip(scores, parts, strict=True) if p["set"] == "labelled"]
    test = [(s, p) for s, p in zip(scores, parts, strict=True) if p["set"] != "labelled"]
    th = zero_miss_threshold([s for s, _ in cal], [p["label"] for _, p in cal], "calibration")
    good = [s for s, p in test if p["label"] == 0]
    bad = [s for s, p in test if p["label"] == 1]
    missed = [p for s, p in test if p["label"] == 1 and s < th]
    return {"threshold": round(th, 2), "false_rejects": [sum(s >= th for s in good), len(good)],
            "misses": [len(missed), len(bad)],
            "missed": [[(t["kind"], round(t["size_mm"], 1)) for t in p["truth"]] for p in missed],
            "auroc": round(float(auroc(good, bad) or 0.0), 3)}  # fmt: skip


def band_of(inside: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {pose: np.digitize(d, BANDS_MM) for pose, d in inside.items()}


def edge_levels(parts: list[dict[str, Any]], bands: dict[str, np.ndarray]) -> np.ndarray:
    """Each distance band's 99.9th percentile of map values on the calibration good sheets."""
    levels = np.zeros(len(BANDS_MM) + 1)
    cal_good = [p for p in parts if p["set"] == "labelled" and p["label"] == 0]
    for b in range(len(levels)):
        vals = [m[bands[pose] == b] for p in cal_good
                for pose, m in zip(p["poses"], p["maps"], strict=True)]  # fmt: skip
        vals = np.concatenate(vals) if vals else np.zeros(0)
        levels[b] = float(np.percentile(vals, 99.9)) if vals.size else np.nan
    return levels


def part_max(part: dict[str, Any], value: Any) -> float:
    """The max over a part's shots of `value(pose, map)`."""
    return max(float(value(pose, m)) for pose, m in zip(part["poses"], part["maps"], strict=True))


def analyse(parts: list[dict[str, Any]], inside: dict[str, np.ndarray]) -> dict[str, Any]:
    sites = [dict(peak_site(p, inside), set=p["set"], key=p["key"]) for p in parts
             if p["label"] == 0]  # fmt: skip
    where = Counter(
        "table (edge margin)" if s["mm_inside_sheet"] < 0
        else "sheet, within 3 mm of its edge" if s["mm_inside_sheet"] < 3
        else "sheet interior" for s in sites
    )  # fmt: skip
    out: dict[str, Any] = {
        "good_peaks": {
            "where": dict(where),
            "at_image_border_2px": sum(s["px_to_border"] <= 2 for s in sites),
            "n": len(sites),
            "sites": sites,
        },  # fmt: skip
        "part_score_map_max": judge(
            [max(float(m.max()) for m in p["maps"]) for p in parts], parts
        ),  # fmt: skip
        "part_score_detector": judge([max(p["shot_scores"]) for p in parts], parts),
        "inside_only": {},
    }
    for k in INSIDE_MM:
        scores = [part_max(p, lambda pose, m, k=k: m[inside[pose] >= k].max(initial=-np.inf))
                  for p in parts]  # fmt: skip
        out["inside_only"][f"{k:g}"] = judge(scores, parts)
    bands = band_of(inside)
    levels = edge_levels(parts, bands)
    interior = levels[-2]
    lift = np.nan_to_num(levels - interior, nan=0.0).clip(min=0.0)
    scores = [part_max(p, lambda pose, m: (m - lift[bands[pose]]).max()) for p in parts]
    out["edge_normalised"] = dict(judge(scores, parts), bands_mm=list(BANDS_MM[1:-1]),
                                  levels=[round(float(v), 2) for v in levels[1:-1]])  # fmt: skip
    good = [max(p["shot_scores"]) for p in parts if p["set"] != "labelled" and p["label"] == 0]
    lo, hi = min(good), sorted(good)[-2] if len(good) > 1 else max(good)
    out["defects_scoring_like_good"] = {
        "good_range_without_top": [round(lo, 2), round(hi, 2)],
        "parts": [{"key": p["key"], "score": round(max(p["shot_scores"]), 2),
                   "defects": [(t["kind"], round(t["size_mm"], 1)) for t in p["truth"]]}
                  for p in parts if p["set"] != "labelled" and p["label"] == 1
                  and max(p["shot_scores"]) <= hi],
    }  # fmt: skip
    return out


def markdown(res: dict[str, Any], home: Path) -> str:
    gp = res["good_peaks"]
    lines = [f"# Where good sheets peak ({home})", "",
             f"Good sheets: {gp['n']}; their map peak lies: "
             + ", ".join(f"{k} {v}" for k, v in gp["where"].items())
             + f"; within 2 px of the image border: {gp['at_image_border_2px']}.", "",
             "| part score | threshold | false rejects (test good) | misses (test) | AUROC |",
             "|---|---|---|---|---|"]  # fmt: skip

    def row(name: str, j: dict[str, Any]) -> str:
        fr, ms = j["false_rejects"], j["misses"]
        return f"| {name} | {j['threshold']} | {fr[0]}/{fr[1]} | {ms[0]}/{ms[1]} | {j['auroc']} |"

    lines.append(row("detector score, per-shot max (shipped)", res["part_score_detector"]))
    lines.append(row("map max, whole region", res["part_score_map_max"]))
    for k, j in res["inside_only"].items():
        lines.append(row(f"map max, >= {k} mm inside the sheet (loses coverage)", j))
    lines.append(row("map max, normalised by distance to the edge", res["edge_normalised"]))
    d = res["defects_scoring_like_good"]
    lines += ["", f"Defective test parts scoring within the good test sheets' range "
              f"{d['good_range_without_top']} (without the highest good sheet):", ""]  # fmt: skip
    lines += [f"- {p['key']}: {p['score']}: {p['defects']}" for p in d["parts"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="home of a tools/bench_recall_by_size.py run")
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    home = Path(args.home).resolve()
    if not (home / "recipes" / "bench-tiles.yaml").exists():
        ap.error(f"--home {home}: no recipes/bench-tiles.yaml; run tools/bench_recall_by_size.py"
                 " --variants tiles --home there first")  # fmt: skip
    os.environ["STATION_HOME"] = str(home)
    sys.path[:0] = [str(REPO / "tools"), str(REPO)]
    import bench_recall_by_size  # noqa: F401  (_bench_fusion imports it)
    import torch

    torch.set_num_threads(args.threads)
    parts, inside = score_parts(home)
    res = analyse(parts, inside)
    text = markdown(res, home)
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1), encoding="utf-8")
        out.with_suffix(".md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
