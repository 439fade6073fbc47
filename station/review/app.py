"""The operator review web app (FastAPI + Jinja2, server-rendered, local static files only).

`create_app(database_url, data_root, ...)` builds it. Pages (station.review.pages): the queue
of parts to look at (rejected, fault, interrupted, stale pending; `/`), a part page
(`/parts/{id}`) with shots, heatmap overlays, scores against thresholds and the review form,
and images under the data root (`/files/<relative path>`). The review POST and the CSV export
of reviews (`/export.csv`) are in station.review.reviews; `/login` and `/logout`, when login is
required, in station.review.login.

Security (station.review.guard): every POST carries the session's CSRF token; when login is
required (any bind beyond localhost) every page and file needs a logged-in session, or for GET
requests an `Authorization: Bearer <token>` header; on localhost-only binds the Host header
must name localhost (blocks DNS rebinding). Failed logins and Bearer guesses are throttled per
client address (429 + Retry-After); request bodies are capped per route (413). Responses carry
CSP `default-src 'self'`, frame-ancestors 'none' and nosniff; Jinja2 autoescapes all output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from station.review import alarms, guard, login, pages, reviews, shadow, store
from station.review.disk import DiskBanner
from station.review.guard import COOKIE
from station.review.security import LOCAL_HOST_NAMES, AuthThrottle, SessionSigner, check_token
from station.review.web import HERE, ReviewSettings, templates_for
from station.storage.db import open_database

__all__ = ["COOKIE", "create_app"]


def create_app(
    database_url: str,
    data_root: str | Path,
    recipe_name: str | None = None,
    token: str | None = None,
    require_auth: bool | None = None,
    *,
    allowed_hosts: list[str] | None = None,
    secret_key: bytes | None = None,
    secure_cookies: bool = False,
    page_size: int = store.PAGE_SIZE,
    throttle: AuthThrottle | None = None,
    disk: DiskBanner | None = None,
) -> FastAPI:
    """Build the review app.

    `require_auth` defaults to True when a token is given; it must be True for any bind
    beyond localhost (the CLI enforces that). `allowed_hosts` defaults to the localhost names
    when no login is required (DNS-rebinding guard) and to any host otherwise. `throttle`
    limits failed logins and Bearer guesses per client address (default: AuthThrottle()).
    `disk`: free-space warnings shown on every page (None: none).
    """
    if require_auth is None:
        require_auth = token is not None
    if require_auth:
        check_token(token)
    db = open_database(database_url)
    if allowed_hosts is None and not require_auth:
        allowed_hosts = list(LOCAL_HOST_NAMES)
    signer = SessionSigner(secret_key or os.urandom(32))
    cfg = ReviewSettings(
        db=db,
        root=Path(data_root).resolve(),
        recipe_name=recipe_name,
        token=token,
        token_fp=signer.fingerprint(token) if token else "",
        require_auth=require_auth,
        hosts={h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts else None,
        signer=signer,
        secure_cookies=secure_cookies,
        page_size=page_size,
        throttle=AuthThrottle() if throttle is None else throttle,
        templates=templates_for(require_auth),
        disk=disk,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="station review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.review = cfg
    app.state.db = db
    app.state.data_root = cfg.root
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for routes in (pages.router, reviews.router, login.router, shadow.router, alarms.router):
        app.include_router(routes)
    guard.install(app)
    return app
