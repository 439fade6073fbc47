"""The queue filter carried in query strings: parsed (bad values dropped and reported) and
written back, so that the queue, part pages, reviews and export keep the operator's view."""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlencode

from station.review import store
from station.storage.models import Verdict

RECIPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # as the recipe schema allows


def parse_filter(params: Any, default_recipe: str | None) -> tuple[store.QueueFilter, list[str]]:
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


def filter_query(flt: store.QueueFilter, page: int | None = None, **over: Any) -> str:
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


class QueryDict(dict):
    """Parses a stored query string (the queue state carried through the review form)."""

    def __init__(self, query: str) -> None:
        super().__init__(parse_qsl(query, keep_blank_values=True))
