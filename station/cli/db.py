"""`station db ...`: database schema and the archive check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer

from station.calibration.recipes import load_recipe
from station.storage.verify import ArchiveReport

SHOWN = 20  # lines listed per finding; the rest are counted


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Database schema and maintenance.", no_args_is_help=True)
    app.add_typer(group, name="db")

    @group.command("upgrade")
    def upgrade_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe whose database."),
        url: str | None = typer.Option(
            None, "--db-url", "--url", help="Database URL (overrides the recipe)."
        ),
        revision: str = typer.Option("head", help="Target revision."),
    ) -> None:
        """Apply schema migrations to the database (creates it when empty)."""
        from station.cli.app import console
        from station.storage.db import hide_password, upgrade

        target = url or load_recipe(recipe).storage.resolved_database_url()
        now = upgrade(target, revision)
        console.print(f"[green]ok[/]: database {hide_password(target)} is at revision {now}")

    @group.command("verify")
    def verify_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe whose parts."),
        url: str | None = typer.Option(
            None, "--db-url", "--url", help="Database URL (overrides the recipe)."
        ),
        hashes: bool = typer.Option(
            True, "--hashes/--no-hashes", help="Compare each shot file with its stored sha256."
        ),
        days: float = typer.Option(
            0, "--days", min=0, help="Only the parts started in the last N days (0: all)."
        ),
    ) -> None:
        """Check that every part's rows and files agree: shots, masks, heatmaps, sheet maps,
        and the models that decided them.

        Exit code 1 when something decided or captured is not whole (a file missing or
        changed, a record the database refused, a deciding model's file gone or changed); held
        records, undecided parts and files that no row names are reported, not counted."""
        from station.cli.app import console
        from station.cli.progress import make_progress
        from station.storage.db import existing_database
        from station.storage.verify import verify_archive

        rcp = load_recipe(recipe)
        db = existing_database(url or rcp.storage.resolved_database_url())
        since = datetime.now(UTC) - timedelta(days=days) if days else None
        with make_progress(unit="parts") as bar:
            task = bar.add_task("checking parts", total=None)
            report = verify_archive(
                db,
                rcp,
                hashes,
                lambda done, total: bar.update(task, completed=done, total=total),
                since,
            )
        if since is not None:
            console.print(f"parts started since {since:%Y-%m-%d %H:%M} UTC", highlight=False)
        for line, style in report_lines(report, hashes):
            console.print(line, style=style or None, markup=False, highlight=False, soft_wrap=True)
        if report.lost:
            raise typer.Exit(1)


def _listed(title: str, items: list[str]) -> list[str]:
    more = len(items) - SHOWN
    tail = [f"  ... and {more} more"] if more > 0 else []
    return [title] + [f"  {x}" for x in items[:SHOWN]] + tail


def report_lines(r: ArchiveReport, hashes: bool) -> list[tuple[str, str]]:
    """(text, rich style) lines of an archive check, most serious first."""
    out: list[tuple[str, str]] = []
    head = (
        f"recipe {r.recipe}: {r.parts} parts, {r.shots} shots; {r.files} files found"
        + (f", {r.hashed} shots' sha256 compared" if hashes else " (sha256 not compared)")
        + f"; {r.models_checked} deciding model file(s) found"
    )
    out.append((head, ""))
    if r.live:
        out.append(("a run is inspecting: the parts it has not decided yet were skipped", ""))
    lost = [
        (f"{len(r.missing)} file(s) named by a row are missing:", r.missing),
        (f"{len(r.damaged)} shot file(s) changed since they were written:", r.damaged),
        (f"{len(r.models)} model(s) that decided parts cannot be traced:", r.models),
        (
            f"{len(r.refused)} part record(s) the database refused, kept in journal/refused/ "
            "(their verdicts are in no row):",
            r.refused,
        ),
    ]
    notes = [
        (
            f"{len(r.held)} part record(s) held in the journal, not yet in the database (the "
            "next start of an inspection writes them):",
            r.held,
        ),
        (
            f"{len(r.pending)} part(s) left undecided by a stop (the next start marks them "
            "interrupted):",
            [str(s) for s in r.pending],
        ),
        (
            f"{len(r.unnamed)} file(s) in the images folder that no row names (written before "
            "a crash cut their part off; safe to delete once reviewed):",
            r.unnamed,
        ),
    ]
    for title, items in lost:
        if items:
            out += [(line, "red") for line in _listed(title, items)]
    for title, items in notes:
        if items:
            out += [(line, "yellow") for line in _listed(title, items)]
    if r.lost:
        out.append(("not whole: restore the files above from a backup", "bold red"))
    else:
        unchanged = " and unchanged" if hashes else ""
        out.append((f"ok: every row's files are there{unchanged}", "green"))
    return out
