"""The operator review web app (FastAPI + Jinja2, server-rendered, local static files only).

`create_app(database_url, data_root, ...)` builds it. Pages: the queue of parts to look at
(rejected, fault, interrupted, stale pending; `/`), a part page (`/parts/{id}`) with shots,
heatmap overlays, scores against thresholds and the review form, the CSV export of reviews
(`/export.csv`), images under the data root (`/files/<relative path>`) and, when login is
required, `/login` and `/logout`.

Security: every POST carries the session's CSRF token; when login is required (any bind
beyond localhost) every page and file needs a logged-in session, or for GET requests an
`Authorization: Bearer <token>` header; on localhost-only binds the Host header must name
localhost (blocks DNS rebinding). Failed logins and Bearer guesses are throttled per client
address (429 + Retry-After); request bodies are capped per route (413). Responses carry CSP
`default-src 'self'`, frame-ancestors 'none' and nosniff; Jinja2 autoescapes all output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from station.errors import StationError
from station.review import store
from station.review.security import (
    IMAGE_TYPES,
    LOCAL_HOST_NAMES,
    AuthThrottle,
    BodyLimit,
    SessionSigner,
    check_token,
    csv_line,
    host_without_port,
    new_csrf_token,
    safe_data_path,
    safe_next,
    tokens_equal,
)
from station.storage.db import open_database
from station.storage.models import ReviewLabel, Verdict

HERE = Path(__file__).parent
COOKIE = "station_review"
RECIPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # as the recipe schema allows
MAX_ID = 2**31 - 1  # database integer ids
PUBLIC_PREFIXES = ("/static/", "/login", "/healthz", "/favicon.ico")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LABEL_TEXT = {
    ReviewLabel.DEFECT_CONFIRMED.value: "defect confirmed",
    ReviewLabel.FALSE_REJECT.value: "false reject",
    "none": "not reviewed",
}
# Request body limits in bytes. A review holds a comment of up to 2000 characters (12 bytes
# each at most, UTF-8 and URL-encoded) and the queue state; no other route reads a body.
FORM_BODY_LIMIT = 8 * 1024
REVIEW_BODY_LIMIT = 32 * 1024
OTHER_BODY_LIMIT = 1024


def body_limit(method: str, path: str) -> int:
    if path in ("/login", "/logout"):
        return FORM_BODY_LIMIT
    if path.startswith("/parts/") and path.endswith("/review"):
        return REVIEW_BODY_LIMIT
    return OTHER_BODY_LIMIT


class _Refused(Exception):
    """An HTTP refusal rendered as a small page (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_filter(params: Any, default_recipe: str | None) -> tuple[store.QueueFilter, list[str]]:
    """The queue filter from query/form parameters; bad values are dropped and reported."""
    problems: list[str] = []

    def day(name: str) -> date | None:
        raw = (params.get(name) or "").strip()
        if not raw:
            return None
        try:
            value = date.fromisoformat(raw)
        except ValueError:
            problems.append(f"{name.replace('_', ' ')} {raw!r} is not a date (YYYY-MM-DD)")
            return None
        if not 1900 <= value.year <= 9998:  # local midnight of the next day must exist
            problems.append(f"{name.replace('_', ' ')} {raw!r} is outside 1900-9998")
            return None
        return value

    recipe = params.get("recipe")
    recipe = default_recipe if recipe is None else (recipe.strip() or None)
    if recipe is not None and not RECIPE_NAME.fullmatch(recipe):
        problems.append(f"recipe {recipe!r} is not a recipe name")
        recipe = default_recipe
    verdict_raw = (params.get("verdict") or "").strip()
    verdict = None
    if verdict_raw:
        if verdict_raw in {v.value for v in store.FILTER_VERDICTS}:
            verdict = Verdict(verdict_raw)
        else:
            choices = ", ".join(v.value for v in store.FILTER_VERDICTS)
            problems.append(f"verdict {verdict_raw!r} is not one of {choices}")
    reviewed = (params.get("reviewed") or "").strip() or None
    if reviewed and reviewed not in store.REVIEWED_CHOICES:
        problems.append(f"reviewed {reviewed!r} is not one of {', '.join(store.REVIEWED_CHOICES)}")
        reviewed = None
    try:
        page = max(1, int(params.get("page") or 1))
    except ValueError:
        page = 1
    flt = store.QueueFilter(
        recipe=recipe,
        date_from=day("date_from"),
        date_to=day("date_to"),
        verdict=verdict,
        reviewed=reviewed,
        page=page,
    )
    return flt, problems


def _filter_query(flt: store.QueueFilter, page: int | None = None, **over: Any) -> str:
    """The query string that reproduces `flt` (recipe always present, '' meaning all)."""
    values: dict[str, Any] = {
        "recipe": flt.recipe or "",
        "date_from": flt.date_from.isoformat() if flt.date_from else None,
        "date_to": flt.date_to.isoformat() if flt.date_to else None,
        "verdict": flt.verdict.value if flt.verdict else None,
        "reviewed": flt.reviewed,
        "page": page if page is not None else (flt.page if flt.page > 1 else None),
    }
    values.update(over)
    return urlencode({k: v for k, v in values.items() if v is not None})


def _fmt_time(dt: Any) -> str:
    if dt is None:
        return ""
    return store.as_utc(dt).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


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
) -> FastAPI:
    """Build the review app.

    `require_auth` defaults to True when a token is given; it must be True for any bind
    beyond localhost (the CLI enforces that). `allowed_hosts` defaults to the localhost names
    when no login is required (DNS-rebinding guard) and to any host otherwise. `throttle`
    limits failed logins and Bearer guesses per client address (default: AuthThrottle()).
    """
    if require_auth is None:
        require_auth = token is not None
    if require_auth:
        check_token(token)
    throttle = AuthThrottle() if throttle is None else throttle
    root = Path(data_root).resolve()
    db = open_database(database_url)
    if allowed_hosts is None and not require_auth:
        allowed_hosts = list(LOCAL_HOST_NAMES)
    hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts else None
    signer = SessionSigner(secret_key or os.urandom(32))
    token_fp = signer.fingerprint(token) if token else ""

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True  # every template, whatever its file name
    templates.env.globals.update(
        fmt_time=_fmt_time,
        fmt_num=_fmt_num,
        label_text=LABEL_TEXT,
        label_for=store.label_text,
        require_auth=require_auth,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="station review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.db = db
    app.state.data_root = root
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- middleware: host check, session, auth, security headers ----------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202 (starlette types)
        if hosts is not None:
            host = host_without_port(request.headers.get("host", ""))
            if host not in hosts:
                return _headers(PlainTextResponse("unknown Host header", status_code=400))
        session = signer.loads(request.cookies.get(COOKIE))
        fresh = session is None or "csrf" not in session
        if fresh:
            session = {"csrf": new_csrf_token()}
        request.state.session = session
        request.state.session_dirty = fresh
        path = request.url.path
        if require_auth and not path.startswith(PUBLIC_PREFIXES):
            authed = tokens_equal(session.get("auth"), token_fp)
            if not authed and request.method in ("GET", "HEAD"):
                header = request.headers.get("authorization", "")
                if header.lower().startswith("bearer "):
                    wait = throttle.acquire(_client(request))
                    if wait:
                        return _finish(request, _too_many(wait))
                    authed = tokens_equal(header[7:].strip(), token)
                    if authed:
                        throttle.succeeded(_client(request))
                    request.state.bearer = authed
            if not authed:
                accepts_html = "text/html" in request.headers.get("accept", "")
                if request.method == "GET" and accepts_html:
                    target = path + (f"?{request.url.query}" if request.url.query else "")
                    resp: Response = RedirectResponse(
                        "/login?" + urlencode({"next": target}), status_code=303
                    )
                else:
                    resp = PlainTextResponse("login required", status_code=401)
                return _finish(request, resp)
        try:
            response = await call_next(request)
        except _Refused as exc:  # raised inside a sync endpoint
            response = _refusal(request, exc)
        except StationError as exc:
            response = _refusal(request, _unavailable(request, exc))
        return _finish(request, response)

    def _finish(request: Request, response: Response) -> Response:
        if getattr(request.state, "session_dirty", False):
            response.set_cookie(
                COOKIE,
                signer.dumps(request.state.session),
                max_age=signer.max_age_s,
                httponly=True,
                samesite="strict",
                secure=secure_cookies,
                path="/",
            )
        return _headers(response)

    def _headers(response: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if response.media_type in ("text/html", "text/csv"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def _render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session = request.state.session
        flash = session.pop("flash", None)
        if flash:
            request.state.session_dirty = True
        ctx.update(
            csrf=session["csrf"],
            operator=session.get("operator", ""),
            logged_in=bool(session.get("auth")),
            flash=flash,
        )
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def _refusal(request: Request, exc: _Refused) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return _render(request, "error.html", status=exc.status, message=exc.message)
        return PlainTextResponse(exc.message, status_code=exc.status)

    async def _form(request: Request) -> Any:
        form = await request.form()
        origin = request.headers.get("origin")
        if origin and origin != "null":
            # Same-origin check on top of the token: a foreign page must not post here.
            expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin.rstrip("/") != expected:
                raise _Refused(403, "request from another site refused (Origin mismatch)")
        if not tokens_equal(str(form.get("csrf") or ""), request.state.session.get("csrf")):
            raise _Refused(
                403, "form expired or forged (CSRF check failed): reload the page and try again"
            )
        return form

    # -- pages ------------------------------------------------------------------------------
    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        with db.session() as s:  # a database that is down is not healthy
            s.execute(text("SELECT 1"))
        return "ok"

    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request) -> Response:
        flt, problems = _parse_filter(request.query_params, recipe_name)
        with db.session() as s:
            page = store.queue_page(s, flt, page_size)
            recipes = store.recipes_in_queue(s)
        flt = dataclasses.replace(flt, page=page.page)
        links = {
            "prev": _filter_query(flt, page=page.page - 1) if page.page > 1 else None,
            "next": _filter_query(flt, page=page.page + 1) if page.page < page.pages else None,
            "part": _filter_query(flt),
            "export": _filter_query(flt, page=None, verdict=None, reviewed=None),
            "review_next": _filter_query(flt, page=None, reviewed=None),  # keeps an audit
        }
        return _render(
            request,
            "queue.html",
            flt=flt,
            page=page,
            recipes=recipes,
            problems=problems,
            links=links,
            tab=lambda **kw: _filter_query(flt, page=None, **kw),
            reviewed_choices=store.REVIEWED_CHOICES,
        )

    @app.get("/next")
    def next_unreviewed(request: Request) -> Response:
        """The newest part still to review under the queue's filters."""
        flt, _ = _parse_filter(request.query_params, recipe_name)
        flt = dataclasses.replace(flt, reviewed="no", page=1)
        with db.session() as s:
            page = store.queue_page(s, flt, page_size=1)
        q = _filter_query(flt)
        if not page.rows:
            request.state.session["flash"] = "Nothing left to review here."
            request.state.session_dirty = True
            return RedirectResponse(f"/?{q}", status_code=303)
        return RedirectResponse(f"/parts/{page.rows[0].part.id}?{q}", status_code=303)

    @app.get("/parts/{part_id}", response_class=HTMLResponse)
    def part_page(request: Request, part_id: int) -> Response:
        flt, _ = _parse_filter(request.query_params, recipe_name)
        _check_id(part_id)
        with db.session() as s:
            part = store.load_part(s, part_id)
            if part is None:
                raise _Refused(404, f"part {part_id} is not in the database")
            prev_id, next_id = store.neighbours(s, part, flt)
            calibration = store.load_calibration(s, part.calibration_id)
        detectors: list[str] = []
        shots = []
        for shot in part.shots:
            image_ok = safe_data_path(root, shot.image_path) is not None
            dets = []
            for det in shot.detections:
                if det.detector not in detectors:
                    detectors.append(det.detector)
                heat_ok = bool(det.heatmap_path) and safe_data_path(root, det.heatmap_path or "")
                dets.append({"det": det, "heatmap_ok": bool(heat_ok)})
            shots.append({"shot": shot, "image_ok": image_ok, "dets": dets})
        reviews = sorted(part.reviews, key=lambda r: (store.as_utc(r.created_at), r.id))
        q = _filter_query(flt)
        return _render(
            request,
            "part.html",
            part=part,
            shots=shots,
            detectors=detectors,
            reviews=list(reversed(reviews)),
            latest=reviews[-1] if reviews else None,
            calibration=calibration,
            q=q,
            prev_url=f"/parts/{prev_id}?{q}" if prev_id else None,
            next_url=f"/parts/{next_id}?{q}" if next_id else None,
            labels=[ReviewLabel.DEFECT_CONFIRMED.value, ReviewLabel.FALSE_REJECT.value],
        )

    @app.post("/parts/{part_id}/review")
    async def review(request: Request, part_id: int) -> Response:
        form = await _form(request)
        _check_id(part_id)
        session = request.state.session
        label_raw = _text(form, "label")
        if label_raw not in LABEL_TEXT or label_raw == "none":
            raise _Refused(400, "label must be defect_confirmed or false_reject")
        if require_auth:
            operator = str(session.get("operator") or "")
        else:
            operator = _text(form, "operator").strip()
        if not operator:
            raise _Refused(400, "enter the operator's name before marking a part")
        # browsers count a line break as one character (maxlength) and send it as two
        comment = _text(form, "comment").replace("\r\n", "\n").strip()
        if len(comment) > store.MAX_COMMENT or len(operator) > store.MAX_OPERATOR:
            raise _Refused(
                400,
                f"comment (max {store.MAX_COMMENT}) or operator name "
                f"(max {store.MAX_OPERATOR} characters) too long",
            )
        flt, _ = _parse_filter(_QueryDict(_text(form, "q")), recipe_name)

        def write() -> tuple[int | None, Verdict]:
            with db.session() as s:
                part = store.load_part(s, part_id)
                if part is None:
                    raise _Refused(404, f"part {part_id} is not in the database")
                store.add_review(s, part_id, ReviewLabel(label_raw), operator, comment)
                return store.neighbours(s, part, flt)[1], part.verdict

        next_id, verdict = await asyncio.to_thread(write)
        session["operator"] = operator
        session["flash"] = f"Part {part_id} marked: {store.label_text(label_raw, verdict)}."
        request.state.session_dirty = True
        q = _filter_query(flt)
        target = f"/parts/{next_id}?{q}" if next_id else f"/?{q}"
        return RedirectResponse(target, status_code=303)

    @app.get("/export.csv")
    def export(request: Request) -> Response:
        flt, _ = _parse_filter(request.query_params, recipe_name)

        # The session opens and the first rows arrive before the response starts: a database
        # that fails is an error page, not an empty "successful" download.
        stack = contextlib.ExitStack()
        s = stack.enter_context(db.session())
        try:
            found = store.export_rows(s, flt)
            first = next(found, None)
        except BaseException as exc:  # the session turns a database error into a StationError
            if not stack.__exit__(type(exc), exc, exc.__traceback__):
                raise

        def rows() -> Iterator[str]:
            with stack:
                buf = io.StringIO()
                buf.write(",".join(store.EXPORT_HEADER) + "\r\n")
                if first is not None:
                    buf.write(csv_line(first))
                for row in found:
                    buf.write(csv_line(row))
                    if buf.tell() > 64 * 1024:
                        yield buf.getvalue()
                        buf.seek(0)
                        buf.truncate()
                yield buf.getvalue()

        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"reviews-{flt.recipe or 'all'}-{stamp}.csv"  # a checked recipe name
        return StreamingResponse(
            rows(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/files/{rel:path}")
    def files(rel: str) -> Response:
        target = safe_data_path(root, rel)
        if target is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(target, media_type=IMAGE_TYPES[target.suffix.lower()])

    # -- login ------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002
        if not require_auth:
            return RedirectResponse("/", status_code=303)
        return _render(request, "login.html", next=safe_next(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        if not require_auth:
            return RedirectResponse("/", status_code=303)
        form = await _form(request)
        name = str(form.get("operator") or "").strip()[: store.MAX_OPERATOR]
        given = str(form.get("token") or "")
        target = safe_next(str(form.get("next") or "/"))
        wait = throttle.acquire(_client(request))  # no await from here to the check
        if wait:
            seconds = math.ceil(wait)
            resp = _render(
                request,
                "login.html",
                status=429,
                next=target,
                error=f"Too many failed logins from this address: try again in {seconds} s.",
            )
            resp.headers["Retry-After"] = str(seconds)
            return resp
        if not name or not tokens_equal(given, token):
            return _render(
                request,
                "login.html",
                status=401,
                next=target,
                error="Wrong access token or missing name.",
            )
        throttle.succeeded(_client(request))
        session = request.state.session
        session.clear()
        session.update(csrf=new_csrf_token(), auth=token_fp, operator=name)
        request.state.session_dirty = True
        return RedirectResponse(target, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await _form(request)
        request.state.session = {"csrf": new_csrf_token()}
        request.state.session_dirty = True
        return RedirectResponse("/login" if require_auth else "/", status_code=303)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        return _refusal(request, exc)

    @app.exception_handler(StationError)
    async def unavailable(request: Request, exc: StationError) -> Response:
        return _refusal(request, _unavailable(request, exc))

    # The framework's own refusals (no such page, a part id that is not a number) get the
    # same small page as the app's, not FastAPI's JSON.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return _refusal(request, _Refused(exc.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors()) or "request"
        return _refusal(request, _Refused(400, f"malformed request ({where})"))

    app.add_middleware(BodyLimit, limit=body_limit)  # outermost: before anything reads a body
    return app


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _too_many(wait: float) -> Response:
    seconds = str(math.ceil(wait))
    return PlainTextResponse(
        f"too many failed logins from this address: try again in {seconds} s",
        status_code=429,
        headers={"Retry-After": seconds},
    )


def _unavailable(request: Request, exc: StationError) -> _Refused:
    """The database is down or locked: say so, and whether anything was saved."""
    saved = " Nothing was saved: go back and submit again." if request.method == "POST" else ""
    return _Refused(503, f"{exc}.{saved}")


def _check_id(part_id: int) -> None:
    if not 1 <= part_id <= MAX_ID:
        raise _Refused(404, f"part {part_id} is not in the database")


def _text(form: Any, name: str) -> str:
    """A form field as text: a file upload is not one, and NUL cannot be stored."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Refused(400, f"form field {name} must be text")
    return value.replace("\x00", "")


class _QueryDict(dict):
    """Parses a stored query string (the queue state carried through the review form)."""

    def __init__(self, query: str) -> None:
        from urllib.parse import parse_qsl

        super().__init__(parse_qsl(query, keep_blank_values=True))
