"""What an operator sends: a review of a part (`POST /parts/{id}/review`), and the CSV
export of reviews under the queue's filters (`/export.csv`)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from station.review import store
from station.review.filters import QueryDict, filter_query, parse_filter
from station.review.security import csv_line
from station.review.web import LABEL_TEXT, Refused, check_id, read_form, settings, text_field
from station.storage.models import ReviewLabel, Verdict

router = APIRouter()


@router.post("/parts/{part_id}/review")
async def review(request: Request, part_id: int) -> Response:
    cfg = settings(request)
    form = await read_form(request)
    check_id(part_id)
    session = request.state.session
    label_raw = text_field(form, "label")
    if label_raw not in LABEL_TEXT or label_raw == "none":
        raise Refused(400, "label must be defect_confirmed or false_reject")
    if cfg.require_auth:
        operator = str(session.get("operator") or "")
    else:
        operator = text_field(form, "operator").strip()
    if not operator:
        raise Refused(400, "enter the operator's name before marking a part")
    # browsers count a line break as one character (maxlength) and send it as two
    comment = text_field(form, "comment").replace("\r\n", "\n").strip()
    if len(comment) > store.MAX_COMMENT or len(operator) > store.MAX_OPERATOR:
        raise Refused(
            400,
            f"comment (max {store.MAX_COMMENT}) or operator name "
            f"(max {store.MAX_OPERATOR} characters) too long",
        )
    flt, _ = parse_filter(QueryDict(text_field(form, "q")), cfg.recipe_name)

    def write() -> tuple[int | None, Verdict]:
        with cfg.db.session() as s:
            part = store.load_part(s, part_id)
            if part is None:
                raise Refused(404, f"part {part_id} is not in the database")
            store.add_review(s, part_id, ReviewLabel(label_raw), operator, comment)
            return store.neighbours(s, part, flt)[1], part.verdict

    next_id, verdict = await asyncio.to_thread(write)
    session["operator"] = operator
    session["flash"] = f"Part {part_id} marked: {store.label_text(label_raw, verdict)}."
    request.state.session_dirty = True
    q = filter_query(flt)
    target = f"/parts/{next_id}?{q}" if next_id else f"/?{q}"
    return RedirectResponse(target, status_code=303)


@router.get("/export.csv")
def export(request: Request) -> Response:
    cfg = settings(request)
    flt, _ = parse_filter(request.query_params, cfg.recipe_name)

    # The session opens and the first rows arrive before the response starts: a database
    # that fails is an error page, not an empty "successful" download.
    stack = contextlib.ExitStack()
    s = stack.enter_context(cfg.db.reading())  # streamed at the client's pace
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
