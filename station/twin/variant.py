"""A "new but good" texture variant of the twin's sheets, e.g. a new supplier's cloth.

`twin.params.variant: {share: 0.3, pitch_scale: 1.2, weave: twill}` gives a share of the
sheets (drawn per part seed, independent of everything else the sheet draws) another roving
pitch (scaled) and, optionally, another weave. Such a sheet is still good in the ground truth
(its defects, if any, are drawn as for any sheet): what the models learnt as good never saw it,
so they may reject it, and operators mark those rejects "false reject".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from station.twin.sheet import WEAVES, SheetSpec, param_mapping


@dataclass(frozen=True)
class Variant:
    share: float = 0.0  # of the sheets, 0..1
    pitch_scale: float = 1.0  # roving pitch times this
    weave: str | None = None  # None: the sheet's own

    @staticmethod
    def from_params(params: dict[str, Any]) -> Variant:
        """From twin.params.variant; ValueError naming the field when it is wrong."""
        raw = param_mapping(params, "variant", ("share", "pitch_scale", "weave"))
        if raw is None:
            return Variant()
        share = float(raw.get("share", 0.0))
        scale = float(raw.get("pitch_scale", 1.0))
        weave = raw.get("weave")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"variant.share must be within 0..1, not {share}")
        if not 0.5 <= scale <= 2.0:
            raise ValueError(f"variant.pitch_scale must be within 0.5..2, not {scale}")
        if weave is not None and weave not in WEAVES:
            raise ValueError(f"variant.weave must be one of {', '.join(WEAVES)}, not {weave!r}")
        return Variant(share, scale, weave)

    def applies(self, seed: int) -> bool:
        """Whether the sheet of part seed `seed` is of the variant."""
        if self.share <= 0.0:
            return False
        return bool(np.random.default_rng([int(seed), 7_777]).uniform() < self.share)

    def apply(self, spec: SheetSpec) -> SheetSpec:
        """`spec` as the variant, when its seed draws it; else unchanged."""
        if not self.applies(spec.seed):
            return spec
        px, py = spec.pitch_mm
        return dataclasses.replace(
            spec,
            pitch_mm=(px * self.pitch_scale, py * self.pitch_scale),
            weave=self.weave or spec.weave,
            waviness_mm=spec.waviness_mm * self.pitch_scale,
        )
