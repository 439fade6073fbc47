"""The part page's sheet map: the stored map image, with the inspected region, each shot's
footprint and the defect regions (a circle of the region's area, and the box its cells span)
drawn over it as SVG in table millimetres; on a simulated part also the twin's own defects.

The SVG's viewBox is the map's extent [x0, y0, x1, y1] in base-frame mm (image rows run along
+y), so every shape is drawn at its stored coordinates and scales with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from station.review.security import safe_data_path
from station.storage.models import Part


@dataclass
class SheetView:
    """What the template draws; None for a part without a sheet map (older parts)."""

    path: str  # the map image, relative to the data root
    image_ok: bool  # whether /files can serve it
    view_box: str  # "x0 y0 width height" in mm
    width_px: int
    height_px: int
    fusion: str
    camera: str
    mm_per_px: float
    region: tuple[float, float, float, float] | None  # x, y, width, height in mm
    footprints: list[dict[str, Any]] = field(default_factory=list)
    defects: list[dict[str, Any]] = field(default_factory=list)
    selected: dict[str, Any] | None = None
    label_mm: float = 1.0  # text size, in mm, for pose names on the map
    twin: list[dict[str, Any]] = field(default_factory=list)  # the twin's defects: box, label
    placement: str | None = None  # where the sheet was found, in words (None: not checked)
    outline: str | None = None  # its found corners as SVG points


def _box(value: Any) -> tuple[float, float, float, float] | None:
    """[x0, y0, x1, y1] as the SVG's (x, y, width, height); None unless four finite numbers
    with x0 <= x1, y0 <= y1."""
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 < x0 or y1 < y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def parse_defect(raw: str | None) -> int | None:
    """The `defect` query value: a defect's index within its part, or None."""
    if raw is None or not raw.strip().isdigit() or len(raw.strip()) > 6:
        return None
    return int(raw.strip())


def sheet_view(root: Path, part: Part, selected: int | None) -> SheetView | None:
    extent = part.sheet_map_extent_mm
    step = part.sheet_map_mm_per_px
    if not part.sheet_map_path or not extent or len(extent) != 4 or not step:
        return None
    x0, y0, x1, y1 = (float(v) for v in extent)
    w, h = x1 - x0, y1 - y0
    view = SheetView(
        path=part.sheet_map_path,
        image_ok=safe_data_path(root, part.sheet_map_path) is not None,
        view_box=f"{x0:g} {y0:g} {w:g} {h:g}",
        width_px=max(1, round(w / step)),
        height_px=max(1, round(h / step)),
        fusion=part.sheet_map_fusion or "",
        camera=part.sheet_map_camera or "",
        mm_per_px=step,
        region=_box(part.sheet_region_mm),
        label_mm=max(min(w, h) / 14, step),
    )
    for d in part.sheet_defects:
        view.defects.append(
            {
                "row": d,
                "r": max(math.sqrt(max(d.area_mm2, 0.0) / math.pi), min(w, h) / 60),
                "box": _box(d.box_mm),
                "selected": d.index == selected,
            }
        )
        if d.index == selected:
            view.selected = {"row": d, "shots": list(d.shots or [])}
    for t in part.twin_defects or []:  # a simulated part: what the twin drew, for comparison
        box = _box(t.get("bbox_mm")) if isinstance(t, dict) else None
        if box is not None:
            size = t.get("size_mm")
            sized = f" {size:g} mm" if isinstance(size, int | float) else ""
            view.twin.append({"box": box, "label": f"{t.get('kind', 'defect')}{sized}"})
    view.placement, view.outline = _placement(part.sheet_placement)
    seeing = set(view.selected["shots"]) if view.selected else set()
    for shot in part.shots:
        corners = shot.footprint_mm
        if not corners:
            continue
        cx = sum(c[0] for c in corners) / len(corners)
        cy = sum(c[1] for c in corners) / len(corners)
        view.footprints.append(
            {
                "pose": shot.pose_name,
                "points": " ".join(f"{c[0]:g},{c[1]:g}" for c in corners),
                "centre": (cx, cy),
                "sees": shot.pose_name in seeing,
            }
        )
    return view


def _placement(found: Any) -> tuple[str | None, str | None]:
    """The stored placement (station.geometry.placement) in words, and the found outline as SVG
    points; (None, None) for a part whose recipe does not check it."""
    if not isinstance(found, dict):
        return None, None
    problem = found.get("problem")
    try:
        dx, dy = (float(v) for v in found["offset_mm"])
        w, h = (float(v) for v in found["size_mm"])
        angle = float(found["angle_deg"])
        corners = [(float(x), float(y)) for x, y in found["corners_mm"]]
    except (KeyError, TypeError, ValueError):  # not found: only the problem
        return f"sheet not found: {problem or 'no edges stored'}", None
    dx, dy, angle = round(dx, 1) + 0.0, round(dy, 1) + 0.0, round(angle, 2) + 0.0  # no "-0.0"
    text = problem or (
        f"sheet found {dx:+.1f} / {dy:+.1f} mm off its place, {angle:+.2f} deg, "
        f"{w:.1f} x {h:.1f} mm"
    )
    return text, " ".join(f"{x:g},{y:g}" for x, y in corners)
