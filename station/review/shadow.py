"""`/shadow`: where a candidate model running in shadow mode disagrees with the live one
(shadow verdicts are stored by `station inspect --shadow`, never drive the line)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from station.review.web import render, settings
from station.storage.shadow import shadow_rows

router = APIRouter()


@router.get("/shadow", response_class=HTMLResponse)
def shadow_page(request: Request) -> Response:
    cfg = settings(request)
    show_all = request.query_params.get("all") == "1"
    recipe = request.query_params.get("recipe") or cfg.recipe_name
    candidate = request.query_params.get("candidate") or None
    with cfg.db.session() as s:
        rows = shadow_rows(s, recipe, candidate, disagree_only=False, limit=2000)
    shown = rows if show_all else [r for r in rows if r.disagree]
    return render(
        request,
        "shadow.html",
        rows=shown,
        total=len(rows),
        n_disagree=sum(r.disagree for r in rows),
        show_all=show_all,
        recipe=recipe or "",
        candidate=candidate or "",
    )
