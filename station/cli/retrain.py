"""`station retrain` (a candidate model from operator reviews) and `station models list |
promote` (which models exist, which is live, making a candidate live on evidence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from station.calibration.recipes import load_recipe
from station.errors import StationError


def _db(rcp: Any) -> Any:
    from station.storage.db import open_database

    return open_database(rcp.storage.resolved_database_url())


def retrain_cmd(
    recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        "--data",
        help="Labelled MVTec-layout folder for the candidate's calibration "
        "(default: the recipe's captured dataset).",
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    resamples: int = typer.Option(2000, "--resamples", min=100, help="Bootstrap resamples."),
    full: bool = typer.Option(
        False,
        "--full",
        help="Train PatchCore from scratch on the good data plus the reviewed shots, instead "
        "of extending the live model's memory bank with them.",
    ),
) -> None:
    """Build a candidate model that learns the reviewed false rejects; the live one stays.

    The candidate is trained on the good data plus the shots of reviewed false rejects (the
    recipe's retrain: rule; PatchCore: the live bank extended by their patches), calibrated
    so that confirmed defects the live model rejects stay rejected, and judged against the
    live model on the reviewed parts. Make it live with station models promote."""
    from station.cli.progress import make_progress
    from station.cli.train import check_device, set_threads
    from station.retrain.run import run_retrain

    rcp = load_recipe(recipe)
    check_device(device, rcp.detectors)
    set_threads(threads)
    db = _db(rcp)
    try:
        with make_progress() as progress:
            tasks: dict[str, Any] = {}

            def cb(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            res = run_retrain(
                rcp, db, dataset=dataset, device=device, resamples=resamples, full=full,
                progress=cb,
            )  # fmt: skip
    finally:
        db.dispose()
    _print_result(res, recipe)


def _print_result(res: Any, recipe: str) -> None:
    """What `station retrain` made, its shadow evaluation and what to do next."""
    from rich.markup import escape
    from rich.table import Table

    from station.cli.app import console
    from station.retrain.run import constraint_line, report_rows

    sel = res.selection
    console.print(
        f"trained on {res.n_base_images} good images + {len(res.extra_files)} shots of "
        f"{len(sel.parts)} reviewed false rejects: "
        + ", ".join(f"p{p.sequence} ({p.why})" for p in sel.parts),
        highlight=False,
    )
    for why, n in sel.skipped.items():
        console.print(f"left out: {n} part(s): {why}", highlight=False)
    level = res.evidence["level"]
    table = Table(
        title=f"shadow evaluation on the reviewed parts ({level:.0%} Clopper-Pearson)",
        title_justify="left",
    )
    for col in ("parts", "model", "false rejects", "misses"):
        table.add_column(col)
    for row in report_rows(res.evidence):
        table.add_row(*(c.replace("[", "\\[") for c in row))
    console.print(table)
    for name, v in res.versions.items():
        console.print(f"candidate {name}: {v} (live: {res.live.get(name)})", highlight=False)
    console.print(f"candidate: {res.method}", highlight=False)
    console.print(f"candidate thresholds: {res.thresholds}  ({res.calibration_path})")
    console.print(escape(constraint_line(res.evidence)), highlight=False)
    ok, why = res.verdict
    console.print(
        f"{'[green]promotable[/]' if ok else '[red]not promotable[/]'}: {why}", highlight=False
    )
    console.print(f"report: {res.report_path}")
    if ok:
        first = next(iter(res.versions.items()))
        console.print(
            f"next: station inspect --recipe {recipe} --shadow {first[1]} (shadow mode), "
            f"then station models promote --recipe {recipe} --detector {first[0]} "
            f"--version {first[1]} --by NAME"
        )


def list_cmd(
    recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
) -> None:
    """Every recorded model version (live, candidate, old) and every promotion."""
    from rich.table import Table

    from station.cli.app import console
    from station.retrain.candidates import live_versions
    from station.storage.promotions import model_versions, promotions

    rcp = load_recipe(recipe)
    try:
        live = live_versions(rcp)
    except StationError:  # no model trained yet: list what the database has
        live = {}
    db = _db(rcp)
    try:
        rows = model_versions(db, rcp.name)
        proms = promotions(db, rcp.name)
    finally:
        db.dispose()
    table = Table(title=f"models of recipe {rcp.name}", title_justify="left")
    for col in ("detector", "version", "role", "trained", "images", "shadow evaluation"):
        table.add_column(col, overflow="fold", no_wrap=col == "version")
    for r in rows:
        metrics = r.metrics or {}
        role = {"live": "was live", "candidate": "candidate"}.get(
            str(metrics.get("role")), "trained"
        )
        if live.get(r.detector) == r.version:
            role = "live"
        ev = ((metrics.get("retrain") or {}).get("shadow_evaluation") or {}).get("splits")
        summary = ""
        if ev:
            cm, lm = ev["all"]["candidate"]["misses"], ev["all"]["live"]["misses"]
            cf, lf = ev["all"]["candidate"]["false_rejects"], ev["all"]["live"]["false_rejects"]
            summary = (
                f"FR {cf['count']}/{cf['n']} (live {lf['count']}), misses "
                f"{cm['count']}/{cm['n']} (live {lm['count']})"
            )
        table.add_row(
            r.detector,
            r.version,
            role,
            f"{r.trained_at:%Y-%m-%d %H:%M}",
            str(r.n_train_images),
            summary,
        )
    console.print(table)
    for p in proms:
        console.print(
            f"promotion {p.id}: {p.detector} {p.from_version} -> {p.to_version} by "
            f"{p.promoted_by} at {p.promoted_at:%Y-%m-%d %H:%M} ({p.evidence.get('rule', '')})"
            + (f": {p.note}" if p.note else ""),
            highlight=False,
        )


def promote_cmd(
    recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
    detector: str = typer.Option(..., "--detector", "-d", help="The detector."),
    version: str = typer.Option(..., "--version", help="The candidate version to make live."),
    by: str = typer.Option(..., "--by", help="Who promotes (recorded)."),
    note: str = typer.Option("", "--note", help="Why (recorded)."),
    accept_false_rejects: bool = typer.Option(
        False, "--accept-false-rejects",
        help="Promote although its thresholds reject more good labelled parts than the "
        "recipe's false-reject budget (recorded).",
    ),
) -> None:
    """Make a candidate live when it is not worse on confirmed defects.

    The promotion is recorded with its evidence. The candidate's own calibration becomes
    live when it was made for exactly the live models."""
    from rich.markup import escape

    from station.cli.app import console
    from station.retrain.promote import promote

    rcp = load_recipe(recipe)
    db = _db(rcp)
    try:
        done = promote(rcp, db, detector, version, by, note, accept_false_rejects)
    finally:
        db.dispose()
    console.print(
        f"[green]promoted[/] {done.detector} {done.from_version} -> {done.to_version} "
        f"(promotion {done.promotion_id}: {done.reason})",
        highlight=False,
    )
    if done.calibration is not None:
        console.print(f"live calibration: the candidate's own, now {done.calibration}")
    for line in done.notes:  # no fitting calibration; reviewed parts left out of training
        console.print(escape(line), highlight=False, soft_wrap=True)
    if done.added_shots:
        console.print(f"{done.added_shots} reviewed shots added to {rcp.dataset_dir}/train/good")


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_cmd)
    group = typer.Typer(
        help="Trained models: list them, promote a candidate.", no_args_is_help=True
    )
    app.add_typer(group, name="models")
    group.command("list")(list_cmd)
    group.command("promote")(promote_cmd)
