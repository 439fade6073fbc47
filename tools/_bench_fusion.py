"""One scoring pass for every part rule of tools/bench_recall_by_size.py.

Each shot of each part is scored ONCE by the station's scoring engine
(`station.detectors.engine`: `load_models`, `ScoringEngine.from_models(...).score_files(paths,
keep_maps=True)`), and from the same maps the part gets one score per rule:

- `per-shot max`: the max of its shots' image scores (`decision.combine_poses: max`);
- `sheet map max|mean|min`: the raw peak of its sheet map (`combine_poses: sheet_map`), the shot
  maps projected through `station.cellcal.store.inspection_camera` (exact on the twin) from the
  recipe pose of each shot's name onto `station.geometry.coverage.region_rect` at
  `decision.sheet_map_mm_per_px`, views fused by that rule: what calibration
  (`station.calibration.scores.sheet_map_peaks`) and inspection (`station.inspection.sheet`)
  build.

Per rule: the zero_miss threshold on the calibration parts (`choose_threshold` with the
`zero_miss` policy: the lowest defective part's score), then on the test parts false rejects
and misses, and, for the sheet-map rules, the part's defect regions at that threshold
(`SheetMap.defects`), from which a defect is "located". The per-shot max rule has no map of
its own: it is judged per part only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RULES: dict[str, str | None] = {  # rule -> sheet fusion (None: per-shot max, no sheet map)
    "per-shot max": None,
    "sheet map max": "max",
    "sheet map mean": "mean",
    "sheet map min": "min",
}
BASE_RULE = "per-shot max"


@dataclass
class ScoredPart:
    """One part, scored once: its ground truth and a raw score per rule."""

    key: str
    label: int  # 1: defective (any twin defect), 0: good
    truth: list[Any]  # TruthDefect entries (base-frame mm)
    scores: dict[str, float]  # rule -> part score (raw detector units)
    # sheet-map rule -> centres (mm) of the map's regions at the rule's threshold (test parts)
    regions: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    blind_mm: float = 0.0  # the extent of the sheet map's longest region seen only saturated


@dataclass(frozen=True)
class PartFiles:
    """A captured part: key, label, (pose, image) in the recipe's pose order, twin truth."""

    key: str
    label: int
    shots: list[tuple[str, Path]]
    truth: list[dict[str, Any]]


# -- pure helpers (tests/test_bench_recall_by_size.py) -------------------------------------------
def zero_miss_threshold(scores: Sequence[float], labels: Sequence[int], what: str) -> float:
    """The station's zero_miss threshold (no labelled defect missed, fewest false rejects):
    the lowest defective score. A part is rejected at score >= threshold."""
    from station.calibration.policies import Policy, choose_threshold

    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    if not (y == 1).any():
        raise SystemExit(f"{what}: no defective calibration part; capture more --labelled sheets")
    return choose_threshold(s[y == 0], s[y == 1], Policy("zero_miss"), what=what).threshold


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test of two paired decisions on the same parts: the parts only
    `a` flags, those only `b` flags, and p = P(a split at least this uneven | equal rates)."""
    from bench_recall_by_size import binom_cdf

    if len(a) != len(b):
        raise ValueError("paired decisions need the same parts")
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b, strict=True))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * binom_cdf(min(only_a, only_b), n, 0.5))
    return {"only_a": only_a, "only_b": only_b, "p": p}


def rule_outcomes(parts: Sequence[ScoredPart], rule: str, threshold: float) -> list[Any]:
    """Each part as a PartOutcome of the rule: rejected at score >= threshold, with the
    rule's regions (none for the per-shot max rule)."""
    from bench_recall_by_size import PartOutcome

    return [
        PartOutcome(
            key=p.key,
            verdict="fail" if p.scores[rule] >= threshold else "pass",
            ground_truth="defect" if p.label else "good",
            part_score=p.scores[rule],
            regions=list(p.regions.get(rule, [])),
            truth=list(p.truth),
            has_sheet_map=RULES[rule] is not None,
            fusion=RULES[rule],
        )
        for p in parts
    ]


def evaluate(
    cal: Sequence[ScoredPart],
    test: Sequence[ScoredPart],
    thresholds: dict[str, float],
    edges: Sequence[float],
    tol_mm: float,
    smallest_mm: float,
    size_by: str = "nominal",
) -> dict[str, Any]:
    """Per rule: calibration counts, test false rejects / misses / recall by size / AUROC, and
    the paired comparison of its false rejects with the per-shot max's (McNemar)."""
    from bench_recall_by_size import part_rates, rate, recall_by_bin

    from station.calibration.roc import auroc

    out: dict[str, Any] = {}
    good = [p for p in test if p.label == 0]
    base = [p.scores[BASE_RULE] >= thresholds[BASE_RULE] for p in good]
    for rule, th in thresholds.items():
        parts = rule_outcomes(test, rule, th)
        rates = part_rates(parts, tol_mm)
        cal_good = [p.scores[rule] for p in cal if p.label == 0]
        sc_good = [p.scores[rule] for p in test if p.label == 0]
        sc_bad = [p.scores[rule] for p in test if p.label == 1]
        out[rule] = {
            "threshold": th,
            "calibration_false_rejects": rate(sum(v >= th for v in cal_good), len(cal_good)),
            "false_rejects": rates["false_rejects"],
            "misses": rate(rates["recall"]["n"] - rates["recall"]["k"], rates["recall"]["n"]),
            "regions": rates["regions"],
            "regions_on_no_defect": rates["regions_on_no_defect"],
            "located": RULES[rule] is not None,
            "recall": recall_by_bin(parts, edges, tol_mm, smallest_mm, size_by),
            "auroc_test": auroc(np.asarray(sc_good), np.asarray(sc_bad)),
            "vs_per_shot_max": mcnemar_exact([p.scores[rule] >= th for p in good], base),
        }
    return out


# -- reading and scoring -------------------------------------------------------------------------
def read_parts(root: Path, poses: Sequence[str]) -> list[PartFiles]:
    """The parts of a capture folder from its meta files, shots in the recipe's pose order."""
    files = {p.name: p for p in root.rglob("*.png") if "ground_truth" not in p.parts}
    out = []
    for meta in sorted((root / "meta").glob("p*.json")):
        doc = json.loads(meta.read_text(encoding="utf-8"))
        by_pose = {sh["pose_name"]: files[Path(sh["image_path"]).name] for sh in doc["shots"]}
        missing = [p for p in poses if p not in by_pose]
        if missing:
            raise SystemExit(f"{meta}: no shot of pose {', '.join(missing)}")
        truth = (doc.get("twin") or {}).get("truth") or []
        label = 1 if doc.get("ground_truth") == "defect" else 0
        out.append(PartFiles(meta.stem, label, [(p, by_pose[p]) for p in poses], truth))
    return out


class PassScorer:
    """A recipe's trained detector, its camera model and sheet grid: parts scored once."""

    def __init__(self, recipe: Any, batch_size: int = 16) -> None:
        from station.cellcal.store import inspection_camera
        from station.detectors.engine import ScoringEngine, load_models

        models = load_models(recipe)
        if len(models) != 1:
            raise SystemExit(f"recipe {recipe.name}: the benchmark needs exactly one detector")
        self.detector = next(iter(models))
        self.engine = ScoringEngine.from_models(models, recipe.preprocess, batch_size)
        self.recipe = recipe
        self.camera = inspection_camera(recipe)
        self.tcp = {p.name: [*p.position_mm, *p.rotvec_rad] for p in recipe.robot.poses}

    def score(self, part: PartFiles, thresholds: dict[str, float] | None = None) -> ScoredPart:
        """Score the part's shots once; every rule's part score (and, given thresholds, each
        sheet-map rule's regions) from the same maps."""
        from bench_recall_by_size import truth_defect

        from station.geometry.sheet_map import recipe_mapper, shot_view
        from station.imaging import read_image, saturated_mask

        res = self.engine.score_files([p for _, p in part.shots], keep_maps=True)[self.detector]
        saturated = [saturated_mask(read_image(p)) for _, p in part.shots]
        blind = 0.0
        scores = {BASE_RULE: float(np.max(np.asarray(res.scores, np.float64)))}
        regions: dict[str, list[tuple[float, float]]] = {}
        views = [shot_view(self.camera, pose, self.tcp[pose], self.recipe.preprocess.crop)
                 for pose, _ in part.shots]  # fmt: skip
        for rule, fusion in RULES.items():
            if fusion is None:
                continue
            mapper = recipe_mapper(self.recipe, self.camera.table_to_base, fusion)
            for i, view in enumerate(views):
                mapper.add(view, {self.detector: res.map(i)}, saturated[i])
            sheet = mapper.result()
            scores[rule] = sheet.peaks()[self.detector]
            blind = max([blind] + [r.extent_mm for r in sheet.blind_regions()])
            if thresholds is not None:
                found = sheet.defects({self.detector: thresholds[rule]})
                regions[rule] = [d.centre_mm for d in found]
        return ScoredPart(part.key, part.label, [truth_defect(d) for d in part.truth],
                          scores, regions, blind)  # fmt: skip


def run_pass(
    recipe: Any,
    cal_roots: Sequence[Path],
    test_roots: Sequence[Path],
    edges: Sequence[float],
    tol_mm: float,
    size_by: str = "nominal",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Calibration parts scored, thresholds per rule, then test parts scored (with their
    regions at those thresholds) and every rule evaluated."""
    from station.inspection.sheet import not_inspected_limit_mm

    poses = [p.name for p in recipe.robot.poses]
    t0 = time.perf_counter()
    scorer = PassScorer(recipe)
    cal_files = [p for r in cal_roots for p in read_parts(r, poses)]
    test_files = [p for r in test_roots for p in read_parts(r, poses)]
    cal = []
    for i, pf in enumerate(cal_files):
        cal.append(scorer.score(pf))
        say(f"  calibration part {i + 1}/{len(cal_files)} scored")
    t_cal = time.perf_counter() - t0
    labels = [p.label for p in cal]
    thresholds = {
        rule: zero_miss_threshold([p.scores[rule] for p in cal], labels, rule) for rule in RULES
    }
    test = []
    for i, pf in enumerate(test_files):
        test.append(scorer.score(pf, thresholds))
        say(f"  test part {i + 1}/{len(test_files)} scored")
    t_all = time.perf_counter() - t0
    n_shots = len(poses) * (len(cal) + len(test))
    limit = not_inspected_limit_mm(recipe)
    return {
        "recipe": recipe.name,
        "detector": scorer.detector,
        "camera_model": scorer.camera.source,
        "sheet_map_mm_per_px": recipe.decision.sheet_map_mm_per_px,
        "calibration": {"good": labels.count(0), "defect": labels.count(1)},
        "test": {"good": sum(p.label == 0 for p in test), "defect": sum(p.label for p in test),
                 "defects": sum(len(p.truth) for p in test)},  # fmt: skip
        "rules": evaluate(cal, test, thresholds, edges, tol_mm,
                          recipe.coverage.smallest_defect_mm, size_by),
        # parts inspection would fault as not inspected (a blind region at the limit or over)
        "not_inspected": {"limit_mm": round(limit, 2), **{
            f"{name}_{kind}": sum(p.blind_mm >= limit for p in parts if p.label == lab)
            for name, parts in (("calibration", cal), ("test", test))
            for kind, lab in (("good", 0), ("defect", 1))}},  # fmt: skip
        "seconds": {"score_calibration": round(t_cal, 1), "score_all": round(t_all, 1),
                    "shots": n_shots, "s_per_shot": round(t_all / max(n_shots, 1), 3)},
        "scores": {"calibration": [(p.key, p.label, p.scores, p.blind_mm) for p in cal],
                   "test": [(p.key, p.label, p.scores, p.blind_mm) for p in test]},
    }  # fmt: skip
