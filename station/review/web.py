"""What every review route shares: the app's settings, page rendering, refusals and forms.

`create_app` stores a `ReviewSettings` on `app.state.review`; routes read it with
`settings(request)`. A route refuses a request by raising `Refused(status, message)`, which the
app renders as a small page (or plain text for non-browser clients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates

from station.errors import StationError
from station.review import store
from station.review.disk import DiskBanner
from station.review.security import AuthThrottle, SessionSigner, tokens_equal
from station.storage.alarms import count_open
from station.storage.db import Database
from station.storage.models import ReviewLabel

HERE = Path(__file__).parent
MAX_ID = 2**31 - 1  # database integer ids
LABEL_TEXT = {
    ReviewLabel.DEFECT_CONFIRMED.value: "defect confirmed",
    ReviewLabel.FALSE_REJECT.value: "false reject",
    "none": "not reviewed",
}


@dataclass(frozen=True)
class ReviewSettings:
    """One review app's configuration, fixed when `create_app` builds it."""

    db: Database
    root: Path  # the data root, resolved: images are served from under it only
    recipe_name: str | None  # the queue's default recipe filter
    token: str | None
    token_fp: str  # the token's fingerprint, kept in a logged-in session
    require_auth: bool
    hosts: set[str] | None  # allowed Host names; None: any
    signer: SessionSigner
    secure_cookies: bool
    page_size: int
    throttle: AuthThrottle
    templates: Jinja2Templates
    disk: DiskBanner | None = None  # free-space warnings on every page (station review)


def settings(request: Request) -> ReviewSettings:
    return request.app.state.review


class Refused(Exception):
    """An HTTP refusal rendered as a small page (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def fmt_time(dt: Any) -> str:
    if dt is None:
        return ""
    return store.as_utc(dt).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def templates_for(require_auth: bool) -> Jinja2Templates:
    """The page templates, autoescaped, with the formatting helpers they use."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True  # every template, whatever its file name
    templates.env.globals.update(
        fmt_time=fmt_time,
        fmt_num=fmt_num,
        label_text=LABEL_TEXT,
        label_for=store.label_text,
        require_auth=require_auth,
    )
    return templates


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    session = request.state.session
    flash = session.pop("flash", None)
    if flash:
        request.state.session_dirty = True
    cfg = settings(request)
    ctx.update(
        csrf=session["csrf"],
        operator=session.get("operator", ""),
        logged_in=bool(session.get("auth")),
        flash=flash,
        disk_lines=cfg.disk.lines(cfg.db) if cfg.disk is not None else [],
        open_alarms=_open_alarms(cfg),
    )
    return cfg.templates.TemplateResponse(request, name, ctx, status_code=status)


def _open_alarms(cfg: Any) -> int:
    """Open drift alarms for the banner; 0 when the database cannot say (that page is then
    the database's error, which says so)."""
    try:
        return count_open(cfg.db, cfg.recipe_name)
    except StationError:
        return 0


def refusal(request: Request, exc: Refused) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return render(request, "error.html", status=exc.status, message=exc.message)
    return PlainTextResponse(exc.message, status_code=exc.status)


def unavailable(request: Request, exc: StationError) -> Refused:
    """The database is down or locked: say so, and whether anything was saved."""
    saved = " Nothing was saved: go back and submit again." if request.method == "POST" else ""
    return Refused(503, f"{exc}.{saved}")


async def read_form(request: Request) -> Any:
    """The posted form, after the same-origin and CSRF checks."""
    form = await request.form()
    origin = request.headers.get("origin")
    if origin and origin != "null":
        # Same-origin check on top of the token: a foreign page must not post here.
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin.rstrip("/") != expected:
            raise Refused(403, "request from another site refused (Origin mismatch)")
    if not tokens_equal(str(form.get("csrf") or ""), request.state.session.get("csrf")):
        raise Refused(
            403, "form expired or forged (CSRF check failed): reload the page and try again"
        )
    return form


def text_field(form: Any, name: str) -> str:
    """A form field as text: a file upload is not one, and NUL cannot be stored."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(400, f"form field {name} must be text")
    return value.replace("\x00", "")


def check_id(part_id: int) -> None:
    if not 1 <= part_id <= MAX_ID:
        raise Refused(404, f"part {part_id} is not in the database")


def client(request: Request) -> str | None:
    return request.client.host if request.client else None


def too_many(wait: float) -> Response:
    seconds = str(math.ceil(wait))
    return PlainTextResponse(
        f"too many failed logins from this address: try again in {seconds} s",
        status_code=429,
        headers={"Retry-After": seconds},
    )
