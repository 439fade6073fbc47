"""Benchmark: recall by defect size at the calibrated threshold, native tiles against whole-shot
resize, and the false rejects of the fused sheet map (max / mean / min) against the per-shot max
(issue #18, points 4 and 6).

It runs in a fresh station home (a temp folder, or `--home`):

1. Capture through `station capture` (run in-process, as `station demo` does), with
   `recipes/bench-data.yaml` (`extends: glassfiber`, twin time scale 0): G good sheets
   (training) and L labelled sheets (calibration) at the shipped recipe's own twin defect rate
   and size range; with `recipes/bench-test.yaml` (the twin's `defect_rate` and
   `defect_size_mm` from `--test-rate` / `--test-sizes`): T labelled test sheets, plus
   `--test-good` good sheets for the false-reject counts. Each set has its own seed; every
   variant sees the SAME shots. `--sheet W H` changes the sheet size (the poses are planned for
   it by `station plan-poses` into `recipes/bench.poses.yaml`); `--glare G` sets
   `twin.params.glare` (0: off); `--exposure-us E` sets `camera.exposure_us`.
2. Per variant (`recipes/bench-<variant>.yaml`): `tiles` (native tiles) or `resize` (the whole
   shot resized to 256 x 256), trained once (`station train`). Then ONE scoring pass
   (tools/_bench_fusion.py): every shot of every part scored once by the station's scoring
   engine with its maps kept, and from the same maps each part's score under every rule:
   per-shot max (`combine_poses: max`) and the sheet-map peak fused by max, mean and min
   (`combine_poses: sheet_map`, `sheet_fusion`), built with `station.geometry.sheet_map` through
   `inspection_camera` (exact on the twin) as calibration and inspection build it.
3. Per rule: the zero_miss threshold on the labelled sheets, then on the test sheets the false
   rejects (good) and misses (defective) with Clopper-Pearson 95 % intervals, the AUROC, an
   exact McNemar test of its false rejects against the per-shot max's on the same good parts,
   and recall per defect-size bin (`--size-by`: the twin's nominal `size_mm`, or the drawn
   extent, the longest side of the box around what the twin drew): a defect is FOUND when its
   part is rejected AND one of the rule's sheet-map regions at the threshold has its centre
   within the defect's ground-truth box grown by `--tolerance-mm`; the per-shot max rule has no
   map and is counted per part only ("part rejected").

    .venv/bin/python tools/bench_recall_by_size.py --good 12 --labelled 40 --test 40 \
        --test-good 30 --sheet 280 220 --out data/recall_by_size

Ground truth: the twin's defects in base-frame mm (`world.describe()["truth"]`: centre_mm,
size_mm, bbox_mm), which `station capture` keeps in each labelled sheet's meta file. Results
and the command of a run: docs/recall_by_size.md.

Writes `<out>.json` (with every part's score under every rule) and `<out>.md`, and prints the
tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_RECIPE = "glassfiber"
DEFAULT_BINS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0)
VARIANTS: dict[str, dict[str, Any]] = {
    "tiles": {"preprocess": {"tiling": {"enabled": True}}},
    "resize": {"preprocess": {"size": [256, 256], "tiling": {"enabled": False}}},
}
REJECTED = ("fail", "fault")


# -- pure helpers (tests/test_bench_recall_by_size.py) -------------------------------------------
def parse_bins(text: str) -> tuple[float, ...]:
    """Bin edges in mm from "0,1,2,3,5,10,25": at least two, strictly increasing, >= 0."""
    try:
        edges = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--bins {text!r}: expected comma-separated numbers in mm") from None
    if (
        len(edges) < 2
        or edges[0] < 0
        or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
    ):
        raise ValueError(f"--bins {text!r}: give two or more increasing edges >= 0, e.g. 0,1,2,5")
    return edges


def bin_labels(edges: Sequence[float]) -> list[str]:
    """ "<1", "1-2", ... for edges (0, 1, 2, ...); the first bin is "<b" when it starts at 0."""
    out = []
    for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        out.append(f"<{b:g}" if i == 0 and a == 0 else f"{a:g}-{b:g}")
    return out


def bin_index(size_mm: float, edges: Sequence[float]) -> int | None:
    """The bin of a size: [a, b) each, the last one [a, b]; None outside the edges."""
    if not edges[0] <= size_mm <= edges[-1]:
        return None
    for i in range(len(edges) - 1):
        if size_mm < edges[i + 1]:
            return i
    return len(edges) - 2


def _log_binom_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))  # fmt: skip


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_binom_pmf(i, n, p)) for i in range(k + 1)))


def _bisect(f: Callable[[float], float], target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials (n = 0: (0, 1)).

    Lower: the p with P(X >= k | p) = alpha/2; upper: the p with P(X <= k | p) = alpha/2
    (the beta quantiles, found by bisection on the binomial tail: no scipy needed)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else _bisect(lambda p: 1 - binom_cdf(k - 1, n, p), a, increasing=True)
    hi = 1.0 if k == n else _bisect(lambda p: binom_cdf(k, n, p), a, increasing=False)
    return lo, hi


SIZES = ("nominal", "drawn")  # what a defect's size is: see TruthDefect.size


@dataclass(frozen=True)
class TruthDefect:
    """One twin defect: its nominal size (twin `size_mm`), centre and extent in base-frame mm."""

    kind: str
    size_mm: float
    centre_mm: tuple[float, float]
    extent_mm: tuple[float, float, float, float]  # x0, y0, x1, y1

    def size(self, by: str = "nominal") -> float:
        """`nominal`: the twin's `size_mm`, the parameter its drawing grows with; `drawn`: the
        longest side of the box around the twin's id layer for it, shading and shadow included
        (a broken roving of nominal size 11 mm is drawn 3.8 mm long, a 2 mm fold about 5 mm,
        and no defect under 2 mm). Neither is what an inspector would measure; the bench
        reports by either."""
        if by == "nominal":
            return self.size_mm
        x0, y0, x1, y1 = self.extent_mm
        return max(x1 - x0, y1 - y0)


def truth_defect(d: dict[str, Any]) -> TruthDefect:
    """One entry of the twin's base-frame truth (`world.describe()["truth"]`, stored in the
    capture's meta file): kind, centre_mm [x, y], size_mm and bbox_mm [x0, y0, x1, y1] around
    its drawn footprint (without a box: a square of side size_mm around the centre)."""
    try:
        cx, cy = (float(v) for v in d["centre_mm"])
        size = float(d["size_mm"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"twin truth entry {d!r}: needs centre_mm [x, y] and size_mm") from None
    box = d.get("bbox_mm")
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
    else:
        x0, y0, x1, y1 = cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2
    return TruthDefect(str(d.get("kind", "?")), size, (cx, cy), (x0, y0, x1, y1))


def located(truth: TruthDefect, centres: Iterable[tuple[float, float]], tol_mm: float) -> bool:
    """Whether a region centre lies within the defect's extent grown by `tol_mm`."""
    from station.geometry.sheet_map import within_box

    return within_box(truth.extent_mm, centres, tol_mm)


@dataclass
class PartOutcome:
    """One inspected test part: verdict, ground truth, stored regions, twin defects."""

    key: str
    verdict: str
    ground_truth: str | None
    part_score: float | None
    regions: list[tuple[float, float]]
    truth: list[TruthDefect] = field(default_factory=list)
    has_sheet_map: bool = False
    fusion: str | None = None

    @property
    def rejected(self) -> bool:
        return self.verdict in REJECTED


def rate(k: int, n: int, level: float = 0.95) -> dict[str, Any]:
    lo, hi = clopper_pearson(k, n, level)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci": [lo, hi]}


def recall_by_bin(
    parts: Sequence[PartOutcome],
    edges: Sequence[float],
    tol_mm: float,
    smallest_mm: float,
    size_by: str = "nominal",
) -> dict[str, Any]:
    """Per size bin (of `TruthDefect.size(size_by)`): defects, found (rejected and located),
    part rejected; with intervals."""
    labels = bin_labels(edges)
    n = [0] * len(labels)
    found = [0] * len(labels)
    rejected = [0] * len(labels)
    big = {"n": 0, "found": 0, "rejected": 0}
    outside = 0
    for p in parts:
        for t in p.truth:
            size = t.size(size_by)
            i = bin_index(size, edges)
            hit = p.rejected and located(t, p.regions, tol_mm)
            if size >= smallest_mm:
                big["n"] += 1
                big["found"] += hit
                big["rejected"] += p.rejected
            if i is None:
                outside += 1
                continue
            n[i] += 1
            found[i] += hit
            rejected[i] += p.rejected
    bins = [
        {"bin": lab, "lo_mm": edges[i], "hi_mm": edges[i + 1],
         "at_or_above_smallest": edges[i] >= smallest_mm,
         "found": rate(found[i], n[i]), "part_rejected": rate(rejected[i], n[i])}
        for i, lab in enumerate(labels)
    ]  # fmt: skip
    return {
        "bins": bins,
        "at_or_above_smallest": {"smallest_mm": smallest_mm,
                                 "found": rate(big["found"], big["n"]),
                                 "part_rejected": rate(big["rejected"], big["n"])},
        "outside_bins": outside,
    }  # fmt: skip


def part_rates(parts: Sequence[PartOutcome], tol_mm: float = 2.0) -> dict[str, Any]:
    """Part-level recall (defect parts rejected) and false rejects (good parts rejected); the
    stored regions, and those on no twin defect (their extent + `tol_mm`): a flood of regions
    would make "located" easy, so it is counted."""
    bad = [p for p in parts if p.ground_truth == "defect"]
    good = [p for p in parts if p.ground_truth == "good"]
    stray = sum(not any(located(t, [c], tol_mm) for t in p.truth) for p in parts for c in p.regions)
    return {
        "recall": rate(sum(p.rejected for p in bad), len(bad)),
        "false_rejects": rate(sum(p.rejected for p in good), len(good)),
        "faults": sum(p.verdict == "fault" for p in parts),
        "with_sheet_map": sum(p.has_sheet_map for p in parts),
        "regions": sum(len(p.regions) for p in parts),
        "regions_on_no_defect": stray,
    }


def fmt_rate(r: dict[str, Any]) -> str:
    """ "k/n = 50% [19%, 81%]" (n = 0: "-")."""
    if not r["n"]:
        return "-"
    lo, hi = r["ci"]
    return f"{r['k']}/{r['n']} = {r['rate']:.0%} [{lo:.0%}, {hi:.0%}]"


# -- the run: station commands in a scratch home -------------------------------------------
def station(*args: str) -> None:
    """One `station` command, in-process (as `station demo` runs them); errors propagate."""
    from station.cli.app import app as root

    shown = " ".join(args[:6]) + (f" ... ({len(args) - 6} more)" if len(args) > 8 else
                                  " " + " ".join(args[6:]))  # fmt: skip
    print(f"\n$ station {shown.strip()}", flush=True)
    code = root(args=list(args), standalone_mode=False)
    if isinstance(code, int) and code:
        raise RuntimeError(f"station {args[0]} exited with {code}")


def write_recipe(home: Path, file_stem: str, fields: dict[str, Any]) -> Path:
    """recipes/<file_stem>.yaml in the home, from `fields` (which hold `extends` and `name`)."""
    path = home / "recipes" / f"{file_stem}.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return path


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def setup_home(args: argparse.Namespace) -> Path:
    """A fresh station home with the shipped recipes (and their pose files), set as the home."""
    home = Path(args.home).resolve() if args.home else Path(tempfile.mkdtemp(prefix="recall-"))
    if (home / "data").exists() and not args.keep:
        shutil.rmtree(home / "data")
        shutil.rmtree(home / "calibration", ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "recipes", home / "recipes", dirs_exist_ok=True)
    (home / "calibration").mkdir(exist_ok=True)
    os.environ["STATION_HOME"] = str(home)
    return home


@dataclass
class Sets:
    """The captured folders (MVTec layout) and the twin settings they were made with."""

    good: Path
    labelled: Path
    test: Path
    test_good: Path | None
    notes: dict[str, Any]


def common_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What every bench recipe changes in the shipped one: no twin waiting, and with --sheet
    the sheet size and its own planned poses, with --glare the twin's glare scale, with
    --view-margin the planner's view margin, with --exposure-us the camera's exposure."""
    out: dict[str, Any] = {"extends": BASE_RECIPE, "twin": {"time_scale": 0.0}}
    if args.sheet:
        out["sheet"] = {"width_mm": args.sheet[0], "height_mm": args.sheet[1]}
        out["robot"] = {"poses_file": "bench.poses.yaml"}
    if args.glare is not None:
        out["twin"]["params"] = {"glare": args.glare}
    if args.view_margin is not None:
        out["coverage"] = {"view_margin_mm": args.view_margin}
    if args.exposure_us is not None:
        out["camera"] = {"exposure_us": args.exposure_us}
    return out


def capture_sets(home: Path, args: argparse.Namespace) -> Sets:
    """Good, labelled (calibration) and test sheets, each with its own seed, shared by all."""
    from station.detectors.registry import load_recipe

    common = common_fields(args)
    data = write_recipe(home, "bench-data", _merge(common, {"name": "bench-data"}))
    if args.sheet:  # the poses that cover the bench's sheet, shared by every bench recipe
        (home / "recipes" / "bench.poses.yaml").unlink(missing_ok=True)
        station("plan-poses", "--recipe", str(data), "--out", str(home / "plan-poses.png"))
    lo, hi = args.test_sizes
    test = write_recipe(home, "bench-test", _merge(common, {
        "name": "bench-test",
        "twin": {"defect_rate": args.test_rate, "defect_size_mm": [lo, hi]}}))  # fmt: skip
    base = load_recipe(str(data))
    root = home / "data" / "bench"
    sets = Sets(root / "good", root / "labelled", root / "test",
                root / "test-good" if args.test_good else None, {})  # fmt: skip
    s = args.seed
    station("capture", "--recipe", str(data), "--count", str(args.good), "--label", "good",
            "--seed", str(s), "--out", str(sets.good))  # fmt: skip
    station("capture", "--recipe", str(data), "--count", str(args.labelled), "--label",
            "labelled", "--seed", str(s + 10_000), "--out", str(sets.labelled))  # fmt: skip
    station("capture", "--recipe", str(test), "--count", str(args.test), "--label", "labelled",
            "--seed", str(s + 20_000), "--out", str(sets.test))  # fmt: skip
    if sets.test_good is not None:
        station("capture", "--recipe", str(test), "--count", str(args.test_good), "--label",
                "good", "--seed", str(s + 30_000), "--out", str(sets.test_good))  # fmt: skip
    sets.notes = {
        "poses": len(base.robot.poses),
        "sheet_mm": [base.sheet.width_mm, base.sheet.height_mm],
        "glare": (base.twin.params or {}).get("glare", 1.0),
        "exposure_us": base.camera.exposure_us,
        "calibration_twin": {"defect_rate": base.twin.defect_rate,
                             "defect_size_mm": list(base.twin.defect_size_mm)},
        "test_twin": {"defect_rate": args.test_rate, "defect_size_mm": [lo, hi]},
        "smallest_defect_mm": base.coverage.smallest_defect_mm,
        "seeds": {"good": s, "labelled": s + 10_000, "test": s + 20_000, "test_good": s + 30_000},
    }  # fmt: skip
    return sets


def variant_recipe(home: Path, variant: str, args: argparse.Namespace) -> Path:
    """recipes/bench-<variant>.yaml: the bench recipe with the variant's preprocessing."""
    name = f"bench-{variant}"
    fields = _merge(_merge(common_fields(args), {"name": name}), VARIANTS[variant])
    return write_recipe(home, name, fields)


def run_variant(home: Path, variant: str, sets: Sets, args: argparse.Namespace) -> dict[str, Any]:
    """Train the variant once (`station train`), then score every part once (_bench_fusion)
    and evaluate every rule from those scores and maps."""
    from _bench_fusion import run_pass

    from station.detectors.registry import load_recipe

    recipe = variant_recipe(home, variant, args)
    rcp = load_recipe(str(recipe))
    t0 = time.perf_counter()
    station("train", "--recipe", str(recipe), "--data", str(sets.good),
            "--threads", str(args.threads))  # fmt: skip
    train_s = time.perf_counter() - t0
    print(f"\nscoring every part once ({variant})", flush=True)
    tests = [sets.test] + ([sets.test_good] if sets.test_good else [])
    out = run_pass(rcp, [sets.labelled], tests, args.edges, args.tolerance_mm,
                   size_by=args.size_by)
    out["variant"] = variant
    out["preprocess"] = rcp.preprocess.model_dump(mode="json")
    out["seconds"]["train"] = round(train_s, 1)
    return out


# -- report ---------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def rule_rows(v: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per rule: threshold, calibration and test false rejects, misses, recall at or
    above the smallest size, AUROC, and the paired test against the per-shot max."""
    head = ["rule", "threshold", "FR calibration", "FR test (good)", "misses test",
            "located >= smallest", "regions (on no defect)", "AUROC test",
            "vs per-shot max: only this / only max, p"]  # fmt: skip
    rows = []
    for rule, r in v["rules"].items():
        big = r["recall"]["at_or_above_smallest"]
        mc = r["vs_per_shot_max"]
        rows.append([
            rule, f"{r['threshold']:.4g}", fmt_rate(r["calibration_false_rejects"]),
            fmt_rate(r["false_rejects"]), fmt_rate(r["misses"]),
            fmt_rate(big["found"]) if r["located"] else "n/a (part level only)",
            f"{r['regions']} ({r['regions_on_no_defect']})" if r["located"] else "-",
            "-" if r["auroc_test"] is None else f"{r['auroc_test']:.3f}",
            "-" if rule == "per-shot max" else f"{mc['only_a']} / {mc['only_b']}, p {mc['p']:.2g}",
        ])  # fmt: skip
    return head, rows


def recall_rows(v: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Recall by size bin: per sheet-map rule "found", and "part rejected" for every rule."""
    head = ["defect size (mm)"]
    cols: list[tuple[str, str]] = []
    for rule, r in v["rules"].items():
        if r["located"]:
            cols.append((rule, "found"))
        cols.append((rule, "part_rejected"))
    head += [f"{rule}: {'found' if k == 'found' else 'rejected'}" for rule, k in cols]
    rows = []
    first = next(iter(v["rules"].values()))
    for i, b in enumerate(first["recall"]["bins"]):
        rows.append([b["bin"] + (" *" if b["at_or_above_smallest"] else "")] + [
            fmt_rate(v["rules"][rule]["recall"]["bins"][i][k]) for rule, k in cols])  # fmt: skip
    smallest = first["recall"]["at_or_above_smallest"]["smallest_mm"]
    rows.append(
        [f">= {smallest:g} (smallest)"]
        + [fmt_rate(v["rules"][rule]["recall"]["at_or_above_smallest"][k]) for rule, k in cols]
    )
    return head, rows


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"Command: `{result['command']}`", "",
             f"Sheets {s['sheet_mm'][0]:g} x {s['sheet_mm'][1]:g} mm, {s['poses']} shots each, "
             f"twin glare {s['glare']:g}, exposure {s.get('exposure_us', 0):g} us: "
             f"{s['good']} good (training), {s['labelled']} labelled "
             f"(calibration, twin defect rate {s['calibration_twin']['defect_rate']:g}, sizes "
             f"{s['calibration_twin']['defect_size_mm']} mm), {s['test']} test (defect rate "
             f"{s['test_twin']['defect_rate']:g}, sizes {s['test_twin']['defect_size_mm']} mm) "
             f"+ {s['test_good']} good test sheets; policy zero_miss per rule; seeds "
             f"{s['seeds']}.", ""]  # fmt: skip
    for v in result["variants"]:
        lines += [f"### {v['variant']} ({v['detector']}; camera model: {v['camera_model']})", "",
                  f"Calibration parts: {v['calibration']['good']} good, "
                  f"{v['calibration']['defect']} defective; test parts: {v['test']['good']} good, "
                  f"{v['test']['defect']} defective ({v['test']['defects']} defects). Counts with "
                  "Clopper-Pearson 95 % intervals; p: exact McNemar test on the good test parts.",
                  ""]  # fmt: skip
        ni = v.get("not_inspected")
        if ni:
            lines += [f"Parts a live run would fault as not inspected (a region seen only "
                      f"saturated reaching {ni['limit_mm']:g} mm across; scored here all the "
                      f"same): calibration {ni['calibration_good']} good, "
                      f"{ni['calibration_defect']} defective; test {ni['test_good']} good, "
                      f"{ni['test_defect']} defective.", ""]  # fmt: skip
        lines += _table(*rule_rows(v))
        size_by = s.get("size_by", "nominal")  # results written before --size-by: nominal
        what = ("the longest side of the box around its drawing, shading included"
                if size_by == "drawn" else "the twin's nominal size_mm")  # fmt: skip
        lines += ["", f"Recall by defect size ({what}; found: part rejected and a sheet-map "
                      f"region centre within the defect's box + {s['tolerance_mm']:g} mm; * = "
                      "at or above coverage.smallest_defect_mm):", ""]  # fmt: skip
        lines += _table(*recall_rows(v))
        lines += ["", "Seconds: " + json.dumps(v["seconds"]), ""]
    lines += ["Seconds (run): " + json.dumps(result["seconds"])]
    return "\n".join(lines) + "\n"


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    for v in result["variants"]:
        for title, (head, rows) in (
            (f"{v['variant']}: rules at zero miss", rule_rows(v)),
            (f"{v['variant']}: recall by defect size", recall_rows(v)),
        ):
            t = Table(title=title, title_justify="left")
            for h in head:
                t.add_column(h)
            for r in rows:
                t.add_row(*r)
            console.print(t)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--good", type=int, default=6, help="good sheets for training")
    ap.add_argument("--labelled", type=int, default=10, help="labelled sheets (calibration)")
    ap.add_argument("--test", type=int, default=12, help="labelled test sheets")
    ap.add_argument("--test-good", type=int, default=4, help="extra good test sheets (FR)")
    ap.add_argument("--seed", type=int, default=1800, help="base twin seed of the sets")
    ap.add_argument("--variants", default="tiles,resize", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--sheet", type=float, nargs=2, default=None, metavar=("W", "H"),
                    help="sheet width and height in mm (default: the recipe's); the poses "
                    "are planned for it (station plan-poses)")  # fmt: skip
    ap.add_argument("--glare", type=float, default=None,
                    help="twin.params.glare (0: off; default: the twin's, 1)")  # fmt: skip
    ap.add_argument("--exposure-us", type=float, default=None,
                    help="camera.exposure_us (default: the shipped recipe's)")  # fmt: skip
    ap.add_argument("--view-margin", type=float, default=None, metavar="MM",
                    help="coverage.view_margin_mm for the planned poses (default: the "
                    "recipe's); with --sheet only")  # fmt: skip
    ap.add_argument("--test-rate", type=float, default=0.7, help="twin defect rate (test)")
    ap.add_argument("--test-sizes", type=float, nargs=2, default=(0.7, 25.0),
                    metavar=("LO", "HI"), help="twin defect sizes in mm (test)")  # fmt: skip
    ap.add_argument(
        "--bins", default=",".join(f"{b:g}" for b in DEFAULT_BINS), help="size bin edges in mm"
    )
    ap.add_argument(
        "--tolerance-mm",
        type=float,
        default=2.0,
        help="a region centre may lie this far outside the defect's extent",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--home", default=None, help="station home to use (default: a temp folder)")
    ap.add_argument("--size-by", choices=SIZES, default="nominal",
                    help="a defect's size: the twin's nominal size_mm (default) or its drawn "
                    "extent")
    ap.add_argument("--keep", action="store_true", help="keep the home's data from before")
    ap.add_argument("--out", default="data/recall_by_size", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    for name in ("good", "labelled", "test"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.sheet and min(args.sheet) <= 0:
        ap.error("--sheet: give a width and height in mm above 0, e.g. --sheet 280 220")
    if args.view_margin is not None and (args.view_margin < 0 or not args.sheet):
        ap.error("--view-margin: give 0 or more mm, with --sheet (the poses are planned then)")
    if args.glare is not None and args.glare < 0:
        ap.error("--glare must be 0 (off) or positive")
    if args.exposure_us is not None and args.exposure_us <= 0:
        ap.error("--exposure-us must be above 0")
    try:
        args.edges = parse_bins(args.bins)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    sys.modules.setdefault("bench_recall_by_size", sys.modules[__name__])  # for _bench_fusion
    args = parse_args(argv)
    out = Path(args.out).resolve()
    import torch

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    home = setup_home(args)
    t0 = time.perf_counter()
    sets = capture_sets(home, args)
    seconds = {"capture": round(time.perf_counter() - t0, 1)}
    variants = []
    for v in args.variants.split(","):
        t0 = time.perf_counter()
        variants.append(run_variant(home, v, sets, args))
        seconds[v] = round(time.perf_counter() - t0, 1)
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    result = {
        "command": "tools/bench_recall_by_size.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
        "setup": {**sets.notes, "good": args.good, "labelled": args.labelled, "test": args.test,
                  "test_good": args.test_good, "tolerance_mm": args.tolerance_mm,
                  "bins_mm": list(args.edges), "size_by": args.size_by, "home": str(home),
                  "threads": args.threads},
        "variants": variants,
        "seconds": seconds,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print_tables(result)
    print(
        f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} ({seconds['total']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
