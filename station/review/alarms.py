"""`/alarms`: the drift alarms (stored by `station inspect`'s drift charts), newest first, each
with a chart of its signal around it (inline SVG), and a form to clear an open one."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from station.review.web import Refused, check_id, read_form, render, settings, text_field
from station.storage.alarms import (
    CPK_CHART,
    AlarmRow,
    clear_alarm,
    get_alarm,
    list_alarms,
    signal_series,
)

router = APIRouter()
CHARTED = 20  # the newest alarms get a chart
W, H, PAD = 560, 150, 28
Scale = Callable[[float], float]


def svg_chart(points: list[tuple[int, float]], alarm: AlarmRow) -> Markup:
    """The signal's values by part, its baseline (grey), the shift (orange, from the run's
    start), the EWMA limit it crossed (red, dashed) and the raising part (red dot). A
    placement alarm: the window's mean (grey), mean + 3 sd (orange) and the tolerance (red)."""
    if not points:
        return Markup('<p class="muted">no stored points for this signal</p>')
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    lines = [v for v in (alarm.baseline,) if v is not None]
    shifted = alarm.baseline + alarm.shift if (
        alarm.baseline is not None and alarm.shift is not None) else None
    # in the signal's units: the EWMA's limit, the placement tolerance (a CUSUM's is not)
    limit = alarm.limit if alarm.chart in ("ewma", CPK_CHART) else None
    extra = [v for v in (*lines, shifted, limit) if v is not None]
    lo, hi = min(ys + extra), max(ys + extra)
    span = (hi - lo) or 1.0
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)

    def px(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD)

    def py(y: float) -> float:
        return H - PAD + 8 - (y - lo) / span * (H - 2 * PAD)

    out = [f'<svg class="alarm-chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="signal values by part">']
    if alarm.baseline is not None:
        out.append(_hline(alarm.baseline, x0, x1, px, py, "#888", ""))
    if limit is not None:
        out.append(_hline(limit, x0, x1, px, py, "#c22", ' stroke-dasharray="4 3"'))
    if shifted is not None and alarm.since_sequence is not None:
        out.append(_hline(shifted, alarm.since_sequence, x1, px, py, "#e80", ""))
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
    out.append(f'<polyline fill="none" stroke="#236" stroke-width="1.2" points="{path}"/>')
    for x, y in points:
        if x == alarm.part_sequence:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="#c22"/>')
    out.append(f'<text x="{PAD}" y="{H - 4}" font-size="11">part {x0}</text>')
    out.append(f'<text x="{W - PAD}" y="{H - 4}" font-size="11" text-anchor="end">part {x1}'
               "</text>")
    out.append(f'<text x="2" y="12" font-size="11">{hi:.4g}</text>')
    out.append(f'<text x="2" y="{H - 18}" font-size="11">{lo:.4g}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _hline(y: float, xa: float, xb: float, px: Scale, py: Scale, colour: str, dash: str) -> str:
    return (f'<line x1="{px(xa):.1f}" x2="{px(xb):.1f}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'stroke="{colour}" stroke-width="1"{dash}/>')


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(request: Request) -> Response:
    cfg = settings(request)
    recipe = request.query_params.get("recipe") or cfg.recipe_name
    rows = list_alarms(cfg.db, recipe or None)
    charts = {a.id: svg_chart(signal_series(cfg.db, a), a) for a in rows[:CHARTED]}
    return render(request, "alarms.html", rows=rows, charts=charts, recipe=recipe or "",
                  n_open=sum(a.open for a in rows))


@router.post("/alarms/{alarm_id}/clear")
async def clear(request: Request, alarm_id: int) -> Response:
    """An operator has dealt with the cause: the alarm closes, its chart starts again."""
    cfg = settings(request)
    form = await read_form(request)
    check_id(alarm_id)
    if cfg.require_auth:
        operator = str(request.state.session.get("operator") or "")
    else:
        operator = text_field(form, "operator").strip()
    if not operator or len(operator) > 128:
        raise Refused(400, "enter the operator's name (at most 128 characters) to clear it")
    if get_alarm(cfg.db, alarm_id) is None:
        raise Refused(404, f"alarm {alarm_id} is not in the database")
    clear_alarm(cfg.db, alarm_id, operator)
    return RedirectResponse("/alarms", status_code=303)
