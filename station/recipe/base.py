"""Building blocks of the recipe schema: the strict base model, poses and finite numbers.

Shared by the other recipe modules; imports nothing else of the station.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Vec3 = tuple[float, float, float]
TimeoutS = Annotated[float, Field(gt=0, le=3600)]  # seconds: at most an hour


def _parsed_database_url(url: str) -> str:
    """`url` when SQLAlchemy can parse it, as every database command must (nothing is
    connected here); else the message those commands give."""
    from sqlalchemy.engine import make_url  # lazily: most recipe loads need no SQLAlchemy
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError(
            f"database URL {url!r} is not valid; use e.g. sqlite:///data/station.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    return url


DatabaseUrl = Annotated[str, AfterValidator(_parsed_database_url)]


def field_ranges(ann: Any, meta: list[Any], path: str, out: dict[str, str]) -> dict[str, str]:
    """`out` filled with the allowed range of every bounded number in `ann`, by field path
    (list items as `*`), e.g. {"camera.width": "at least 16 and at most 16384"}."""
    if get_origin(ann) is Annotated:
        ann, *more = get_args(ann)
        meta = [*meta, *(m for f in more for m in getattr(f, "metadata", [f]))]
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    text = [f"{w} {getattr(m, k)}" for m in meta for k, w in words.items() if hasattr(m, k)]
    if text:
        out[path] = " and ".join(text)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        for name, info in ann.model_fields.items():
            field_ranges(info.annotation, info.metadata, f"{path}.{name}".lstrip("."), out)
    elif get_origin(ann) is list:
        field_ranges(get_args(ann)[0], [], f"{path}.*", out)
    elif get_origin(ann) is tuple:
        for i, item in enumerate(get_args(ann)):
            field_ranges(item, [], f"{path}.{i}", out)
    else:
        for item in get_args(ann):  # X | None
            field_ranges(item, [], path, out)
    return out


# pydantic error types of a number out of its range
BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _non_finite(value: Any, path: str) -> list[str]:
    """Paths of the inf/nan floats in a tree of dicts and lists."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path.lstrip('.')} = {value}"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}.{i}")]
    return []


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def finite_params(params: dict[str, Any]) -> dict[str, Any]:
    bad = _non_finite(params, "")
    if bad:
        raise ValueError(f"{', '.join(bad)}: every number must be finite (not inf or nan)")
    return params


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a field name must not pass silently. Every float
    must be finite (inf/nan are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Pose(Strict):
    """A TCP pose in the robot base frame: position in mm, orientation as a rotation vector."""

    name: str = Field(min_length=1)
    position_mm: Vec3
    rotvec_rad: Vec3 = (math.pi, 0.0, 0.0)  # tool z pointing straight down

    def as_ur(self) -> list[float]:
        """[x, y, z, rx, ry, rz] in metres and radians, as ur_rtde expects."""
        return [v / 1000.0 for v in self.position_mm] + list(self.rotvec_rad)
