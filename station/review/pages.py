"""The pages an operator reads: the queue (`/`), the next part to review (`/next`), a part
page (`/parts/{id}`), the images under the data root (`/files/...`) and `/healthz`."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from sqlalchemy import text

from station.review import store
from station.review.filters import filter_query, parse_filter
from station.review.security import IMAGE_TYPES, safe_data_path
from station.review.sheet import parse_defect, sheet_view
from station.review.web import Refused, check_id, render, settings
from station.storage.models import ReviewLabel

router = APIRouter()


@router.get("/healthz", response_class=PlainTextResponse)
def healthz(request: Request) -> str:
    with settings(request).db.reading() as s:  # a database that is down is not healthy
        s.execute(text("SELECT 1"))
    return "ok"


@router.get("/", response_class=HTMLResponse)
def queue(request: Request) -> Response:
    cfg = settings(request)
    flt, problems = parse_filter(request.query_params, cfg.recipe_name)
    with cfg.db.reading() as s:
        page = store.queue_page(s, flt, cfg.page_size)
        recipes = store.recipes_in_queue(s)
    flt = dataclasses.replace(flt, page=page.page)
    links = {
        "prev": filter_query(flt, page=page.page - 1) if page.page > 1 else None,
        "next": filter_query(flt, page=page.page + 1) if page.page < page.pages else None,
        "part": filter_query(flt),
        "export": filter_query(flt, page=None, verdict=None, reviewed=None),
        "review_next": filter_query(flt, page=None, reviewed=None),  # keeps an audit
    }
    return render(
        request,
        "queue.html",
        flt=flt,
        page=page,
        recipes=recipes,
        problems=problems,
        links=links,
        tab=lambda **kw: filter_query(flt, page=None, **kw),
        reviewed_choices=store.REVIEWED_CHOICES,
    )


@router.get("/next")
def next_unreviewed(request: Request) -> Response:
    """The newest part still to review under the queue's filters."""
    cfg = settings(request)
    flt, _ = parse_filter(request.query_params, cfg.recipe_name)
    flt = dataclasses.replace(flt, reviewed="no", page=1)
    with cfg.db.reading() as s:
        page = store.queue_page(s, flt, page_size=1)
    q = filter_query(flt)
    if not page.rows:
        request.state.session["flash"] = "Nothing left to review here."
        request.state.session_dirty = True
        return RedirectResponse(f"/?{q}", status_code=303)
    return RedirectResponse(f"/parts/{page.rows[0].part.id}?{q}", status_code=303)


@router.get("/parts/{part_id}", response_class=HTMLResponse)
def part_page(request: Request, part_id: int) -> Response:
    cfg = settings(request)
    flt, _ = parse_filter(request.query_params, cfg.recipe_name)
    check_id(part_id)
    with cfg.db.reading() as s:
        part = store.load_part(s, part_id)
        if part is None:
            raise Refused(404, f"part {part_id} is not in the database")
        prev_id, next_id = store.neighbours(s, part, flt)
        calibration = store.load_calibration(s, part.calibration_id)
    shots, detectors = _shots_view(cfg.root, part)
    sheet = sheet_view(cfg.root, part, parse_defect(request.query_params.get("defect")))
    seeing = sheet.selected["shots"] if sheet and sheet.selected else []
    reviews = list(part.reviews)  # oldest first (the relationship's order)
    q = filter_query(flt)
    return render(
        request,
        "part.html",
        part=part,
        shots=shots,
        detectors=detectors,
        sheet=sheet,
        defect_shots=[item for item in shots if item["shot"].pose_name in seeing],
        reviews=list(reversed(reviews)),
        latest=part.newest_review,
        calibration=calibration,
        q=q,
        prev_url=f"/parts/{prev_id}?{q}" if prev_id else None,
        next_url=f"/parts/{next_id}?{q}" if next_id else None,
        labels=[ReviewLabel.DEFECT_CONFIRMED.value, ReviewLabel.FALSE_REJECT.value],
    )


def _shots_view(root: Any, part: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Each shot with its detections and whether their files can be served; detector names."""
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
    return shots, detectors


@router.get("/files/{rel:path}")
def files(request: Request, rel: str) -> Response:
    target = safe_data_path(settings(request).root, rel)
    if target is None:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(target, media_type=IMAGE_TYPES[target.suffix.lower()])
