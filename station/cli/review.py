"""`station review`: serve the operator review pages (queue, part pages, CSV export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from station.recipe import Recipe
    from station.review.disk import DiskBanner

TOKEN_ENV = "STATION_REVIEW_TOKEN"
KEY_PASSWORD_ENV = "STATION_TLS_KEY_PASSWORD"  # an encrypted key's pass phrase: never an option


def register(app: typer.Typer) -> None:
    app.command("review")(review_cmd)


def review_cmd(
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        "-r",
        help="Show only this recipe's parts (its settings give the database and data dir). "
        "Default: all recipes, settings from glassfiber.",
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on. Anything beyond localhost needs a token."
    ),
    port: int = typer.Option(8080, min=1, max=65535, help="TCP port."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data root holding the images (overrides the recipe)."
    ),
    db_url: str | None = typer.Option(
        None, "--db-url", help="Database URL (overrides the recipe)."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help=f"Operator access token (or set {TOKEN_ENV}); required beyond localhost.",
        show_default=False,
    ),
    ssl_certfile: Path | None = typer.Option(None, help="TLS certificate (PEM) for HTTPS."),
    ssl_keyfile: Path | None = typer.Option(
        None,
        help=f"TLS private key (PEM) for HTTPS; encrypted: pass phrase in {KEY_PASSWORD_ENV}.",
    ),
) -> None:
    """Serve the review pages: operators confirm or overrule rejected parts."""
    from station.calibration.recipes import load_recipe
    from station.cli.app import console
    from station.errors import StationError
    from station.paths import resolve
    from station.review.app import create_app
    from station.review.security import LOCAL_HOST_NAMES, is_loopback
    from station.review.server import serve

    token = token or os.environ.get(TOKEN_ENV) or None
    local = is_loopback(host)
    _check_access(host, local, token, ssl_certfile, ssl_keyfile)
    cfg = load_recipe(recipe or "glassfiber")
    url = db_url or cfg.storage.resolved_database_url()
    root = resolve(data_dir) if data_dir else resolve(cfg.storage.data_dir)
    if root.exists() and not root.is_dir():
        raise StationError(
            f"data directory {root} is a file, not a folder",
            hint="pass --data-dir the folder that holds the station's data",
        )
    if not root.is_dir():
        raise StationError(
            f"data directory {root} does not exist",
            hint="run station inspect first, or pass --data-dir",
        )
    tls = ssl_certfile is not None
    app = create_app(
        url,
        root,
        recipe_name=cfg.name if recipe else None,
        token=token,
        require_auth=bool(token) or not local,
        # a loopback bind other than the usual names (127.0.0.2) must still be reachable
        allowed_hosts=None if not local else [*LOCAL_HOST_NAMES, host.strip("[]").lower()],
        secure_cookies=tls,
        disk=_disk_banner(cfg, root, url),
    )
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    banner = (
        f"review pages on [bold]{scheme}://{shown}:{port}/[/] "
        f"(data {root}, {'login required' if token else 'localhost only, no login'})"
    )
    extra: dict[str, object] = {}
    if tls:
        extra = {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)}
        if os.environ.get(KEY_PASSWORD_ENV):
            extra["ssl_keyfile_password"] = os.environ[KEY_PASSWORD_ENV]
    serve(app, host, port, on_bound=lambda: console.print(banner), **extra)


def _check_access(
    host: str, local: bool, token: str | None, certfile: Path | None, keyfile: Path | None
) -> None:
    """Refuse a bind beyond localhost without a token, a weak token, and half a TLS setup."""
    from station.errors import StationError
    from station.review.security import MAKE_TOKEN, MIN_TOKEN_CHARS, check_token

    if not local and not token:
        raise StationError(
            f"refusing to serve the review pages on {host} without an access token",
            hint=f"pass --token or set {TOKEN_ENV} (at least {MIN_TOKEN_CHARS} characters,"
            f" e.g. {MAKE_TOKEN}), or bind to 127.0.0.1",
        )
    if token:
        check_token(token, f"--token or {TOKEN_ENV}")
    if (certfile is None) != (keyfile is None):
        raise StationError(
            "HTTPS needs both --ssl-certfile and --ssl-keyfile", hint="give both or neither"
        )
    if certfile is not None and keyfile is not None:
        _check_tls_files(certfile, keyfile)


def _check_tls_files(certfile: Path, keyfile: Path) -> None:
    """Load the certificate and key now: uvicorn would fail on them with a traceback."""
    import ssl

    from station.errors import StationError

    password = os.environ.get(KEY_PASSWORD_ENV, "")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:  # a callable: an encrypted key never makes OpenSSL prompt on the terminal
        context.load_cert_chain(certfile, keyfile, password=lambda: password)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StationError(
            f"cannot use --ssl-certfile {certfile} with --ssl-keyfile {keyfile}: {why}",
            hint="give a PEM certificate and its PEM private key; an encrypted key's pass "
            f"phrase goes in {KEY_PASSWORD_ENV}",
        ) from None


def _disk_banner(recipe: Recipe, root: Path, url: str) -> DiskBanner | None:
    """Warnings before the station's disks fill, on every page (`monitoring.disk`): the data
    root served, the recipe's journal folder and the SQLite file's folder."""
    from station.monitoring.disk import station_paths
    from station.review.disk import DiskBanner

    if not recipe.monitoring.disk.enabled:
        return None
    return DiskBanner(recipe, station_paths(recipe, root, url))
