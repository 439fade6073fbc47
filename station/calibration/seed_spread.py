"""`station evaluate --train --seeds 0,1,2`: the same evaluation trained once per seed.

A detector's `seed` draws its held-out good images and, depending on the detector, its patch
subsample, coreset start, projection, initial weights or synthetic faults. One training is one
draw; a figure that moves by more between seeds than between two settings does not tell the
settings apart. Each seed's run is a plain evaluation in `<out>/seed-<N>/` (its own
results.json, results.md and scores.csv files); `seeds.json` and `seeds.md` beside them hold, per
category and detector, each metric's value per seed with the mean and the sample standard
deviation, and the same for the mean over categories and the worst category.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.calibration.evaluation import COLUMNS, POINT_LABELS, Evaluation, ProgressFn, evaluate
from station.errors import StationError
from station.files import atomic_write, writing

if TYPE_CHECKING:
    from station.recipe import DetectorConfig, Recipe

# The metrics whose spread is reported, labelled as in every evaluation table.
METRICS = [c for c in COLUMNS if c[0] in ("image_auroc", "pixel_auroc", "aupro")] + [
    ("fr_recall_100", POINT_LABELS["recall_100"])
]


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]; StationError naming the option for anything else."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise StationError(
            f"--seeds {text!r} is not a list of two or more different seeds",
            hint="write them comma-separated, e.g. --seeds 0,1,2",
        )
    return seeds


def with_seed(targets: Sequence[DetectorConfig], seed: int) -> list[DetectorConfig]:
    """Copies of the detector entries with `params.seed` set (an ensemble passes it on)."""
    return [d.model_copy(update={"params": {**d.params, "seed": seed}}) for d in targets]


@dataclass
class SeedSpread:
    """One evaluation per seed and their spread."""

    seeds: list[int]
    runs: list[Evaluation] = field(default_factory=list)
    path: Path | None = None  # seeds.json once written

    @property
    def done(self) -> list[int]:
        """The seeds whose runs are finished (a partial report lists only those)."""
        return self.seeds[: len(self.runs)]

    def values(self, category: str | None, detector: str, key: str) -> list[float]:
        """`key` per seed: of one category, or (None) of the mean over categories."""
        out = []
        for run in self.runs:
            m = run.means[detector] if category is None else run.results[category][detector]
            out.append(_number(m.get(key)))
        return out

    def worst(self, detector: str) -> list[float]:
        """The lowest category image AUROC, per seed."""
        out = []
        for run in self.runs:
            aurocs = [_number(per[detector].get("image_auroc")) for per in run.results.values()]
            out.append(min((v for v in aurocs if not math.isnan(v)), default=math.nan))
        return out

    def summary(self) -> dict[str, Any]:
        """{'categories': {category: {detector: {metric: spread}}}, 'mean': {detector: ...},
        'worst': {detector: {'image_auroc': spread}}}; spread: values, mean, sd."""
        first = self.runs[0]
        names = [d.name for d in first.targets]

        def metrics(cat: str | None, name: str) -> dict[str, Any]:
            return {k: spread(self.values(cat, name, k)) for k, _ in METRICS}

        return {
            "categories": {c: {n: metrics(c, n) for n in names} for c in first.results},
            "mean": {n: metrics(None, n) for n in names},
            "worst": {n: {"image_auroc": spread(self.worst(n))} for n in names},
        }

    def rows(self) -> list[tuple[str, bool, str, dict[str, Any]]]:
        """(label, is a summary row, detector, metrics): the categories, then mean and worst."""
        summary = self.summary()
        out = [(c, False, n, m) for c, per in summary["categories"].items() for n, m in per.items()]
        for label in ("mean", "worst"):
            out += [(label, True, n, m) for n, m in summary[label].items()]
        return out

    def markdown(self) -> str:
        first = self.runs[0]
        seeds = " / ".join(str(s) for s in self.done)
        head = ["category", "detector", *[label for _, label in METRICS]]
        lines = [
            f"# {first.dataset.name}: trained per category with seeds {seeds}",
            "",
            f"recipe `{first.recipe.name}`; each cell: the value per seed ({seeds}), then "
            "mean +- sample standard deviation. Runs: `seed-<N>/results.md`.",
            "",
            "| " + " | ".join(head) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for label, total, name, metrics in self.rows():
            cells = [f"**{label}**" if total else label, name]
            cells += [_cell(metrics.get(k)) for k, _ in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "- mean: the mean over categories of each seed's run; worst: the lowest category "
            "image AUROC of each seed's run",
            "- FR@R100: false-reject rate at 100 % recall (see each run's results.md)",
        ]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> Path:
        report = {
            "seeds": self.done,
            "requested": self.seeds,
            "complete": self.done == self.seeds,
            "runs": [str(r.path) for r in self.runs],
            "spread": self.summary(),
            "created": datetime.now(UTC).strftime("%Y%m%dT%H%M%S"),
        }
        path = out_dir / "seeds.json"
        with writing(path):
            atomic_write(path, json.dumps(report, indent=2, allow_nan=False).encode("utf-8"))
        md = out_dir / "seeds.md"
        with writing(md):
            atomic_write(md, self.markdown().encode("utf-8"))
        self.path = path
        return path


def spread(values: list[float]) -> dict[str, Any]:
    """Values per seed, their mean and sample standard deviation (None where a run has none)."""
    if any(math.isnan(v) for v in values):
        return {"values": [None if math.isnan(v) else v for v in values], "mean": None, "sd": None}
    return {"values": values, "mean": statistics.mean(values), "sd": statistics.stdev(values)}


def evaluate_seeds(
    recipe: Recipe,
    targets: Sequence[DetectorConfig],
    dataset: Path,
    categories: Sequence[Path],
    seeds: Sequence[int],
    out: Path | None = None,
    progress: ProgressFn | None = None,
    **kwargs: Any,
) -> SeedSpread:
    """`evaluate(..., train=True)` once per seed into `<out>/seed-<N>/`, then the spread."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out_dir = out or recipe.data_dir / "eval" / f"{dataset.resolve().name}-seeds-{stamp}"
    result = SeedSpread(list(seeds))
    for seed in seeds:
        step = None if progress is None else _prefixed(progress, f"seed {seed}")
        run = evaluate(
            recipe,
            with_seed(targets, seed),
            dataset,
            categories,
            out=out_dir / f"seed-{seed}",
            train=True,
            progress=step,
            **kwargs,
        )
        result.runs.append(run)
        if len(result.runs) > 1:  # rewritten after every seed: a partial run leaves a spread
            result.write(out_dir)
    return result


def _prefixed(progress: ProgressFn, prefix: str) -> ProgressFn:
    return lambda task, done, total: progress(f"{prefix}: {task}", done, total)


def _number(v: Any) -> float:
    return math.nan if v is None else float(v)


def _cell(m: dict[str, Any] | None) -> str:
    if not m or m["mean"] is None:
        return "n/a"
    per = " / ".join(f"{v:.3f}" for v in m["values"])
    return f"{per} ({m['mean']:.3f} +- {m['sd']:.3f})"
