"""`station db ...`: database schema."""

from __future__ import annotations

import typer

from station.calibration.recipes import load_recipe


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Database schema and maintenance.", no_args_is_help=True)
    app.add_typer(group, name="db")

    @group.command("upgrade")
    def upgrade_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe whose database."),
        url: str | None = typer.Option(None, "--url", help="Database URL (overrides the recipe)."),
        revision: str = typer.Option("head", help="Target revision."),
    ) -> None:
        """Apply schema migrations to the database (creates it when empty)."""
        from station.cli.app import console
        from station.storage.db import upgrade

        target = url or load_recipe(recipe).storage.resolved_database_url()
        now = upgrade(target, revision)
        console.print(f"[green]ok[/]: database {target} is at revision {now}")
