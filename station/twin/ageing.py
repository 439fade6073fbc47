"""Slow changes of the twin's cell over the parts it sees, to test the drift charts and the
placement watch.

- `twin.params.lamp_dim: {start_part, parts, to}`: the light falls linearly from 1 at part
  `start_part` to `to` (e.g. 0.85: 15 % dimmer) at part `start_part + parts`, then stays.
  It scales the whole scene's radiance (what an ageing lamp does to the exposure).
- `twin.params.defocus: {start_part, parts, to_px}`: an extra Gaussian blur (sigma in pixels)
  growing linearly from 0 at `start_part` to `to_px` at `start_part + parts`, then stays (the
  lens drifting out of focus).
- `twin.params.stops_creep: {start_part, parts, to_mm}`: the line's stops move, and every
  sheet with them, along base x, linearly from 0 at `start_part` to `to_mm` at
  `start_part + parts`, then stay (worn or knocked stops; the placement watch's case).

Parts are counted as the twin's line numbers its sheets (`TwinWorld.sheets_presented`: a live
run's line goes on after the recipe's last part, so 1 is the first sheet of a fresh station).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ramp:
    start_part: int
    parts: int
    to: float

    def at(self, part: int, start_value: float) -> float:
        done = min(1.0, max(0.0, (part - self.start_part) / self.parts))
        return start_value + (self.to - start_value) * done


def _ramp(params: dict[str, Any], key: str, to_key: str, lo: float, hi: float) -> Ramp | None:
    spec = params.get(key)
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"start_part", "parts", to_key}:
        raise ValueError(f"{key} must be {{start_part, parts, {to_key}}}, not {spec!r}")
    start, parts, to = spec["start_part"], spec["parts"], spec[to_key]
    if not (isinstance(start, int) and start >= 0 and isinstance(parts, int) and parts >= 1):
        raise ValueError(f"{key}: start_part must be an integer >= 0 and parts >= 1")
    if not (isinstance(to, int | float) and lo <= to <= hi):
        raise ValueError(f"{key}.{to_key} must be between {lo} and {hi}, not {to!r}")
    return Ramp(start, parts, float(to))


@dataclass(frozen=True)
class Ageing:
    lamp: Ramp | None = None
    defocus: Ramp | None = None
    stops: Ramp | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Ageing:
        """From twin.params; a ValueError names the bad key."""
        return cls(_ramp(params, "lamp_dim", "to", 0.0, 2.0),
                   _ramp(params, "defocus", "to_px", 0.0, 20.0),
                   _ramp(params, "stops_creep", "to_mm", -50.0, 50.0))

    def stops_offset_mm(self, part: int) -> float:
        """How far the line's stops have moved the sheets along base x at `part`."""
        return self.stops.at(part, 0.0) if self.stops else 0.0

    def light(self, part: int) -> float:
        """The light level at `part` (1.0: as new)."""
        return self.lamp.at(part, 1.0) if self.lamp else 1.0

    def extra_blur_px(self, part: int) -> float:
        return self.defocus.at(part, 0.0) if self.defocus else 0.0
