"""`station calibrate-threshold`: thresholds from ROC curves on labelled parts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from station.calibration.policies import POLICIES
from station.calibration.recipes import load_recipe

if TYPE_CHECKING:
    from station.calibration.core import CalibrationResult, PartScores
    from station.calibration.store import SavedCalibration
    from station.recipe import Recipe


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _rate_cell(est) -> str:  # noqa: ANN001 (RateEstimate)
    """count/n = rate [bootstrap interval] <= exact upper bound (rich markup escaped)."""
    if est.n == 0:
        return "unknown (no parts)"
    text = f"{est.count}/{est.n} = {_pct(est.rate)}"
    if est.ci_low is not None:
        text += f"\n[{_pct(est.ci_low)}, {_pct(est.ci_high)}]"
    text += f" <= {_pct(est.upper)}"
    return text.replace("[", "\\[")


def calibrate_threshold(
    recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        "--data",
        help="MVTec-layout folder with test/good and test/<defect> images "
        "(default: the recipe's captured dataset).",
    ),
    from_reviews: bool = typer.Option(
        False, "--from-reviews", help="Labels from operator reviews in the database."
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        "-p",
        help=" | ".join(POLICIES) + " (default: the recipe's decision.policy).",
    ),
    false_reject_budget: float | None = typer.Option(
        None, "--false-reject-budget", help="Largest share of good parts rejected, e.g. 0.05."
    ),
    miss_budget: float | None = typer.Option(
        None, "--miss-budget", help="Largest share of defects missed, e.g. 0.01."
    ),
    quantile: float | None = typer.Option(
        None, "--quantile", help="good_quantile policy: quantile of good scores, e.g. 0.99."
    ),
    resamples: int = typer.Option(2000, "--resamples", min=100, help="Bootstrap resamples."),
    oob_resamples: int = typer.Option(
        200,
        "--oob-resamples",
        min=0,
        help="Resamples for the out-of-sample estimate (policy re-run; 0 = skip).",
    ),
    level: float = typer.Option(0.95, "--level", min=0.5, max=0.999, help="Confidence level."),
    seed: int = typer.Option(20261124, "--seed", help="Bootstrap seed (fixed: reproducible)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per detector call."),
    database: str | None = typer.Option(
        None, "--db-url", "--database", help="Database URL (default: the recipe's)."
    ),
) -> None:
    """Choose thresholds from ROC curves on labelled parts, with expected rates and intervals.

    Writes calibration/<recipe>.yaml, its ROC plot and a history copy, and records the
    calibration in the database. `station inspect` uses it while the models are unchanged.
    """
    from station.calibration.policies import resolve_policy
    from station.calibration.run import calibrate_recipe, check_label_source
    from station.calibration.store import save_calibration

    cfg = load_recipe(recipe)
    check_label_source(dataset, from_reviews)
    given = {"false_reject_budget": false_reject_budget, "miss_budget": miss_budget}
    pol = resolve_policy(cfg.decision, policy, {**given, "quantile": quantile})
    db_url = database or cfg.storage.resolved_database_url()
    camera = None
    if cfg.decision.combine_poses == "sheet_map":  # parts scored on their sheet maps
        from station.cellcal.store import inspection_camera

        camera = inspection_camera(cfg)  # as inspection: exact twin, calibrated, or nominal
    data, where = _load_scores(cfg, dataset, from_reviews, db_url, batch_size, camera)
    result = calibrate_recipe(
        cfg, data, pol, resamples=resamples, level=level, seed=seed, oob_resamples=oob_resamples
    )
    saved = save_calibration(
        result,
        cfg,
        dataset=where,
        database_url=db_url,
        camera_source=camera.source if camera is not None else None,
    )
    _print_result(result, where, saved)


def _load_scores(
    cfg: Recipe,
    dataset: Path | None,
    from_reviews: bool,
    db_url: str,
    batch_size: int,
    camera: Any,
) -> tuple[PartScores, str]:
    """Labelled part scores; a spinner while the detectors score a folder."""
    from station.calibration.run import labelled_folder, labelled_scores
    from station.cli.app import console

    if from_reviews:
        return labelled_scores(cfg, from_reviews=True, database_url=db_url)
    labelled_folder(cfg, dataset)  # refused before the spinner starts
    with console.status("scoring labelled images with the trained detectors") as status:

        def progress(stage: str, done: int, total: int) -> None:
            status.update(f"{stage}: {done}/{total} images")

        return labelled_scores(
            cfg,
            dataset=dataset,
            database_url=db_url,
            batch_size=batch_size,
            progress=progress,
            camera=camera,
        )


def _print_result(result: CalibrationResult, where: str, saved: SavedCalibration) -> None:
    """The calibration in words and tables: thresholds, rates, other policies, warnings."""
    from rich.markup import escape
    from rich.table import Table

    from station.cli.app import console, err_console

    pol, level = result.policy, result.level
    console.print(
        f"policy [bold]{pol.name}[/]: {pol.describe()}; {result.n_good} good and "
        f"{result.n_defect} defective parts ({result.n_shots} shots) from {where}",
        highlight=False,
    )
    table = Table(
        title=escape(
            f"thresholds (defective when score >= threshold; rates on these same parts, "
            f"{level:.0%} intervals: bootstrap [low, high], exact upper bound <=)"
        ),
        title_justify="left",
    )
    for col in ("", "threshold", "model", "AUROC", "false rejects", "misses"):
        table.add_column(col)
    for p in [*result.detectors.values(), result.combined]:
        auc = "n/a" if p.auroc is None else f"{p.auroc:.3f}"
        if p.auroc_ci is not None:
            auc += f"\n\\[{p.auroc_ci[0]:.3f}, {p.auroc_ci[1]:.3f}]"
        table.add_row(
            p.name if p.name != "combined" else f"combined\n({result.combine_detectors})",
            f"{p.threshold:.6g}",
            p.model_version or "-",
            auc,
            _rate_cell(p.false_reject),
            _rate_cell(p.miss),
        )
    console.print(table)
    oob = result.out_of_sample
    if oob is not None:

        def span(ci: tuple[float, float] | None) -> str:
            return "" if ci is None else escape(f" [{_pct(ci[0])}, {_pct(ci[1])}]")

        console.print(
            f"expected on new parts (policy re-run on {oob.resamples} bootstrap resamples, "
            f"judged on the parts each left out): false rejects "
            f"{_pct(oob.false_reject_rate)}{span(oob.false_reject_ci)}, misses "
            f"{_pct(oob.miss_rate)}{span(oob.miss_ci)}",
            highlight=False,
            soft_wrap=True,
        )
    if result.alternatives:
        alt = Table(title="other policies on this set (not applied)", title_justify="left")
        for col in ("policy", "thresholds", "false rejects", "misses"):
            alt.add_column(col)
        for a in result.alternatives:
            if a.thresholds is None:
                alt.add_row(a.policy.describe(), "-", a.refused, "")
                continue
            alt.add_row(
                a.policy.describe(),
                ", ".join(f"{k} {v:.6g}" for k, v in a.thresholds.items()),
                f"{a.false_rejects}/{result.n_good}",
                f"{a.misses}/{result.n_defect}",
            )
        console.print(alt)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    id_text = f" (calibration #{saved.id})" if saved.id is not None else ""
    console.print(
        f"[green]wrote[/] {saved.path}, {saved.plot_path} and {saved.history_path}{id_text}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("calibrate-threshold")(calibrate_threshold)
