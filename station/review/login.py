"""Login and logout, when the app requires them (any bind beyond localhost): the operator's
name and the access token, throttled per client address."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from station.review import store
from station.review.security import new_csrf_token, safe_next, tokens_equal
from station.review.web import client, read_form, render, settings

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002
    if not settings(request).require_auth:
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    cfg = settings(request)
    if not cfg.require_auth:
        return RedirectResponse("/", status_code=303)
    form = await read_form(request)
    name = str(form.get("operator") or "").strip()[: store.MAX_OPERATOR]
    given = str(form.get("token") or "")
    target = safe_next(str(form.get("next") or "/"))
    wait = cfg.throttle.acquire(client(request))  # no await from here to the check
    if wait:
        seconds = math.ceil(wait)
        resp = render(
            request,
            "login.html",
            status=429,
            next=target,
            error=f"Too many failed logins from this address: try again in {seconds} s.",
        )
        resp.headers["Retry-After"] = str(seconds)
        return resp
    if not name or not tokens_equal(given, cfg.token):
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            error="Wrong access token or missing name.",
        )
    cfg.throttle.succeeded(client(request))
    session = request.state.session
    session.clear()
    session.update(csrf=new_csrf_token(), auth=cfg.token_fp, operator=name)
    request.state.session_dirty = True
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    request.state.session = {"csrf": new_csrf_token()}
    request.state.session_dirty = True
    return RedirectResponse("/login" if settings(request).require_auth else "/", status_code=303)
