"""A switch of material mid-run: from a given part on, the line brings another cloth.

`twin.params.material_switch: {at_part: 5, weave: twill, roving_pitch_mm: 4.0}` makes sheet 5
on the twin's line (its number goes on between live runs), and every one after it, of that
weave and roving pitch (either may be left out: the recipe's own is kept). Unlike `variant` (a
share of good sheets), this is the wrong material: the material check must fault the first
switched part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from station.twin.sheet import WEAVES, SheetSpec, param_mapping

KEYS = ("at_part", "weave", "roving_pitch_mm")


@dataclass(frozen=True)
class MaterialSwitch:
    at_part: int | None = None  # 1-based count of sheets presented; None: no switch
    weave: str | None = None
    roving_pitch_mm: float | None = None

    @staticmethod
    def from_params(params: dict[str, Any]) -> MaterialSwitch:
        """From twin.params.material_switch; ValueError naming the field when it is wrong."""
        raw = param_mapping(params, "material_switch", KEYS)
        if raw is None:
            return MaterialSwitch()
        at = raw.get("at_part")
        if not isinstance(at, int) or isinstance(at, bool) or at < 1:
            raise ValueError(f"material_switch.at_part must be a part number >= 1, not {at!r}")
        weave = raw.get("weave")
        if weave is not None and weave not in WEAVES:
            raise ValueError(
                f"material_switch.weave must be one of {', '.join(WEAVES)}, not {weave!r}"
            )
        pitch = raw.get("roving_pitch_mm")
        if pitch is not None and not (isinstance(pitch, int | float) and 0.3 <= pitch <= 50):
            raise ValueError(
                f"material_switch.roving_pitch_mm must be within 0.3..50, not {pitch!r}"
            )
        return MaterialSwitch(at, weave, None if pitch is None else float(pitch))

    def apply(self, spec: SheetSpec, part: int, recipe_pitch_mm: float) -> SheetSpec:
        """`spec` as the new material when `part` (1-based) is at or after the switch."""
        if self.at_part is None or part < self.at_part:
            return spec
        scale = (self.roving_pitch_mm or recipe_pitch_mm) / recipe_pitch_mm
        px, py = spec.pitch_mm
        return dataclasses.replace(
            spec,
            weave=self.weave or spec.weave,
            pitch_mm=(px * scale, py * scale),  # the sheet's own small pitch jitter is kept
            waviness_mm=spec.waviness_mm * scale,
        )
