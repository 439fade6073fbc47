"""What every request passes through: the Host check, the signed session cookie, login (or a
Bearer token for GET), security headers, body limits, and refusals rendered as small pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from station.errors import StationError
from station.review.security import BodyLimit, host_without_port, new_csrf_token, tokens_equal
from station.review.web import Refused, client, refusal, settings, too_many, unavailable

COOKIE = "station_review"
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
# Request body limits in bytes. A review holds a comment of up to 2000 characters (12 bytes
# each at most, UTF-8 and URL-encoded) and the queue state; no other route reads a body.
FORM_BODY_LIMIT = 8 * 1024
REVIEW_BODY_LIMIT = 32 * 1024
OTHER_BODY_LIMIT = 1024

CallNext = Callable[[Request], Awaitable[Response]]


def body_limit(method: str, path: str) -> int:
    if path in ("/login", "/logout"):
        return FORM_BODY_LIMIT
    if path.startswith("/parts/") and path.endswith("/review"):
        return REVIEW_BODY_LIMIT
    return OTHER_BODY_LIMIT


def install(app: FastAPI) -> None:
    """Add the guard middleware, the refusal handlers and the body limit to `app`."""
    app.middleware("http")(guard)
    app.exception_handler(Refused)(refused)
    app.exception_handler(StationError)(database_unavailable)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(RequestValidationError)(bad_request)
    app.add_middleware(BodyLimit, limit=body_limit)  # outermost: before anything reads a body


async def guard(request: Request, call_next: CallNext) -> Response:
    """Host check, session, login; then the route, with its refusals rendered."""
    cfg = settings(request)
    if cfg.hosts is not None:
        host = host_without_port(request.headers.get("host", ""))
        if host not in cfg.hosts:
            return with_headers(PlainTextResponse("unknown Host header", status_code=400))
    session = cfg.signer.loads(request.cookies.get(COOKIE))
    fresh = session is None or "csrf" not in session
    if fresh:
        session = {"csrf": new_csrf_token()}
    request.state.session = session
    request.state.session_dirty = fresh
    if cfg.require_auth and not request.url.path.startswith(PUBLIC_PREFIXES):
        refusal_ = _authenticate(request, session)
        if refusal_ is not None:
            return finish(request, refusal_)
    try:
        response = await call_next(request)
    except Refused as exc:  # raised inside a sync endpoint
        response = refusal(request, exc)
    except StationError as exc:
        response = refusal(request, unavailable(request, exc))
    return finish(request, response)


def _authenticate(request: Request, session: dict) -> Response | None:
    """None when the session is logged in (or a GET carries the token); else the refusal."""
    cfg = settings(request)
    authed = tokens_equal(session.get("auth"), cfg.token_fp)
    if not authed and request.method in ("GET", "HEAD"):
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            wait = cfg.throttle.acquire(client(request))
            if wait:
                return too_many(wait)
            authed = tokens_equal(header[7:].strip(), cfg.token)
            if authed:
                cfg.throttle.succeeded(client(request))
            request.state.bearer = authed
    if authed:
        return None
    accepts_html = "text/html" in request.headers.get("accept", "")
    if request.method == "GET" and accepts_html:
        path = request.url.path
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    return PlainTextResponse("login required", status_code=401)


def finish(request: Request, response: Response) -> Response:
    """Set the session cookie when the session changed, and the security headers."""
    if getattr(request.state, "session_dirty", False):
        cfg = settings(request)
        response.set_cookie(
            COOKIE,
            cfg.signer.dumps(request.state.session),
            max_age=cfg.signer.max_age_s,
            httponly=True,
            samesite="strict",
            secure=cfg.secure_cookies,
            path="/",
        )
    return with_headers(response)


def with_headers(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if response.media_type in ("text/html", "text/csv"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def refused(request: Request, exc: Refused) -> Response:
    return refusal(request, exc)


async def database_unavailable(request: Request, exc: StationError) -> Response:
    return refusal(request, unavailable(request, exc))


# The framework's own refusals (no such page, a part id that is not a number) get the same
# small page as the app's, not FastAPI's JSON.
async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = "no such page" if exc.status_code == 404 else str(exc.detail)
    return refusal(request, Refused(exc.status_code, message))


async def bad_request(request: Request, exc: RequestValidationError) -> Response:
    where = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors()) or "request"
    return refusal(request, Refused(400, f"malformed request ({where})"))
