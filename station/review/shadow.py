"""`/shadow`: where a candidate model running in shadow mode disagrees with the live one
(shadow verdicts are stored by `station inspect --shadow`, never drive the line)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from station.review.web import render, settings
from station.storage.shadow import shadow_rows

router = APIRouter()
PAGE_ROWS = 2000  # the newest rows of the kind shown; the counts take every verdict


@router.get("/shadow", response_class=HTMLResponse)
def shadow_page(request: Request) -> Response:
    cfg = settings(request)
    show_all = request.query_params.get("all") == "1"
    recipe = request.query_params.get("recipe") or cfg.recipe_name
    candidate = request.query_params.get("candidate") or None
    with cfg.db.reading() as s:  # every verdict: an old disagreement is never dropped
        rows = shadow_rows(s, recipe, candidate, disagree_only=False, limit=10**9)
    kind = rows if show_all else [r for r in rows if r.disagree]
    return render(
        request,
        "shadow.html",
        rows=kind[:PAGE_ROWS],
        cut=len(kind) - PAGE_ROWS if len(kind) > PAGE_ROWS else 0,
        total=len(rows),
        n_disagree=sum(r.disagree for r in rows),
        show_all=show_all,
        recipe=recipe or "",
        candidate=candidate or "",
    )
