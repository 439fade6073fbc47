"""`station evaluate`: detector metrics on labelled MVTec-layout data.

`--dataset` is one category (train/, test/, ground_truth/) or a folder of categories. The
harness is `station.calibration.evaluation` (what is scored, what is written); this command
parses the options, shows progress and prints a table per category and detector plus the mean,
then the false-reject rates at the operating points (100 % and 95 % recall, the recipe's policy
on the test set). With `--train --seeds 0,1,2` it trains once per seed and prints each metric's
mean and standard deviation instead (`station.calibration.seed_spread`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from station.calibration.evaluation import Evaluation
    from station.recipe import DetectorConfig, Recipe


def _table(title: str, caption: str | None, labels: list[str], last: str | None) -> Any:
    """A results table: category, detector, one right-aligned column per label, then `last`
    (if any)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, title=title, caption=caption)
    table.add_column("category", no_wrap=True)
    table.add_column("detector", no_wrap=True)
    for label in [*labels, last] if last else labels:
        table.add_column(label, justify="right", no_wrap=True)
    return table


def print_table(run: Evaluation) -> None:
    """One row per category and detector, then each detector's mean; then the operating
    points."""
    from rich.markup import escape

    from station.calibration.evaluation import fmt_metric as _fmt
    from station.cli.app import console

    cols = run.columns()
    table = _table(
        f"{run.dataset.name}: {'trained per category' if run.train else 'recipe models'}",
        "I-AUROC*: good tiles of defect-free strips only (AITEX)"
        if any(k == "image_auroc_clean" for k, _ in cols)
        else None,
        [label for _, label in cols],
        "n",
    )
    for c, per in run.results.items():
        for name, m in per.items():
            table.add_row(c, name, *[_fmt(m.get(k)) for k, _ in cols], str(m["n_test"]))
    for name, m in run.means.items():
        table.add_row("[bold]mean[/]", name, *[_fmt(m.get(k)) for k, _ in cols], "")
    console.print(table)
    print_points(run)
    for note in run.data_notes():
        console.print(f"[bold yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def print_points(run: Evaluation) -> None:
    """False-reject rate at each operating point, per category and detector, then the means."""
    from station.calibration.evaluation import fmt_metric
    from station.calibration.operating_point import cell
    from station.cli.app import console

    cols = run.point_columns()
    table = _table(
        "false rejects at the operating points",
        "\n".join(run.legend()[:2]),
        [label for _, label in cols],
        "defects",
    )
    for c, per in run.results.items():
        for name, m in per.items():
            points: dict[str, Any] = m.get("operating_points", {})
            cells = [cell(points.get(k), compact=True) for k, _ in cols]
            table.add_row(c, name, *cells, str(m.get("n_defect", "")))
    for name, m in run.means.items():
        means = [fmt_metric(m.get(f"fr_{k}")) for k, _ in cols]
        table.add_row("[bold]mean[/]", name, *means, "")
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        dataset: Path = typer.Option(
            ...,
            "--dataset",
            "--data",
            help="MVTec-layout category folder, or a folder of categories.",
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
        batch: int = typer.Option(
            16, "--batch-size", "--batch", min=1, help="Images per predict call."
        ),
        seeds: str | None = typer.Option(
            None,
            "--seeds",
            help="With --train: train once per seed (e.g. 0,1,2) and report each metric's "
            "spread (seeds.md).",
        ),
    ) -> None:
        """Measure detectors on labelled data: image/pixel AUROC, AUPRO, AP, F1-max."""
        from station.calibration.evaluation import evaluate
        from station.calibration.recipes import load_recipe
        from station.calibration.seed_spread import parse_seeds
        from station.cli.app import console
        from station.cli.progress import make_progress
        from station.cli.train import check_device, selected_detectors, set_threads, stage_callback
        from station.datasets import category_dirs
        from station.errors import StationError

        seed_list = None if seeds is None else parse_seeds(seeds)
        if seed_list is not None and not train:
            raise StationError(
                "--seeds changes training, and without --train the recipe's models are scored",
                hint="add --train",
            )
        rcp = load_recipe(recipe)
        targets = selected_detectors(rcp, detector)
        check_device(device, targets)
        cats = category_dirs(dataset)
        set_threads(threads)
        if seed_list is not None:
            _evaluate_seeds(rcp, targets, dataset, cats, seed_list, out, device, heatmaps, batch)
            return
        with make_progress() as progress:
            run = evaluate(
                rcp,
                targets,
                dataset,
                cats,
                out=out,
                train=train,
                device=device,
                heatmaps=heatmaps,
                batch=batch,
                progress=stage_callback(progress, ""),
            )
        print_table(run)
        console.print(f"results: {run.path} (markdown table: results.md)")


def _evaluate_seeds(
    rcp: Recipe,
    targets: list[DetectorConfig],
    dataset: Path,
    cats: list[Path],
    seeds: list[int],
    out: Path | None,
    device: str | None,
    heatmaps: int,
    batch: int,
) -> None:
    from station.calibration.seed_spread import METRICS, evaluate_seeds
    from station.cli.app import console
    from station.cli.progress import make_progress
    from station.cli.train import stage_callback

    with make_progress() as progress:
        spread = evaluate_seeds(
            rcp,
            targets,
            dataset,
            cats,
            seeds,
            out=out,
            progress=stage_callback(progress, ""),
            device=device,
            heatmaps=heatmaps,
            batch=batch,
        )
    table = _table(
        f"{dataset.name}: trained with seeds {', '.join(map(str, seeds))}",
        "each cell: mean ± sample standard deviation over the seeds; per seed: seeds.md",
        [label for _, label in METRICS],
        None,
    )
    for label, total, name, metrics in spread.rows():
        cells = [_mean_sd(metrics.get(k)) for k, _ in METRICS]
        table.add_row(f"[bold]{label}[/]" if total else label, name, *cells)
    console.print(table)
    console.print(f"spread: {spread.path} (markdown: seeds.md; each seed's run: seed-<N>/)")


def _mean_sd(m: dict[str, Any] | None) -> str:
    return "n/a" if not m or m["mean"] is None else f"{m['mean']:.3f}±{m['sd']:.3f}"
