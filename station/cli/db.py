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
        _check_sqlite_folder(target)
        now = upgrade(target, revision)
        console.print(f"[green]ok[/]: database {target} is at revision {now}")


def _check_sqlite_folder(url: str) -> None:
    """Refuse a SQLite path under a regular file: creating its folder would fail with a bare
    "File exists" / "Not a directory"."""
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from station.errors import StorageError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # upgrade() reports the bad URL
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    folder = Path(parsed.database).parent
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                raise StorageError(
                    f"database {parsed.database}: {above} is a file, not a folder",
                    hint="fix --url or the recipe's storage.database_url",
                )
            return
