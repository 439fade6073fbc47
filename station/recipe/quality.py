"""Recipe sections for quality over time: drift charts, the material check, retraining from
reviews and shadow models (`monitoring:`, `retrain:`)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator

from station.recipe.base import Pose, Strict

CARD = "card"  # the reference card's pose name and signal suffix (`mean card`, ...)


class ReferenceCardConfig(Strict):
    """A fixed grey reference card on the table beside the sheet, outside the inspected region,
    shot from its own pose (`card`: straight above its centre) after the part's shots. The card
    is `size_mm` (x, y) around `centre_mm`: its half at lower x is a flat matte grey patch, the
    other half a printed checker with edges slanted 5 degrees. Its charts (`mean card`: the
    patch; `contrast card`, `sharpness card`: the print) follow the lamp and the focus whatever
    sheet is on the table. The shot never joins the part (no shot row, no detector, no
    coverage); a failed grab is a warning in the live view. Limits: docs/monitoring.md."""

    enabled: bool = False
    centre_mm: tuple[float, float] = (473.1, 230.0)  # robot base frame, on the table (z = 0)
    size_mm: tuple[float, float] = Field((80.0, 40.0))  # x, y
    # camera height above the card; None: the first shot pose's height (the focus distance
    # the lens is set for, so the print's sharpness watches the inspection's focus)
    height_mm: float | None = Field(None, gt=50, le=1500)
    every_parts: int = Field(1, ge=1, le=1000)  # shoot the card once every this many parts
    inset_mm: float = Field(4.0, ge=0, le=50)  # measured area: each half shrunk by this
    # the card's charts: tighter than the sheet charts, since the card does not vary from
    # part to part (designed with tools/design_drift_limits.py, docs/monitoring.md)
    ewma_lambda: float = Field(0.2, gt=0, le=1)
    ewma_l: float = Field(6.0, gt=0, le=10)
    cusum_k: float = Field(1.0, ge=0, le=5)
    cusum_h: float = Field(12.0, gt=0, le=50)
    # its first this many charted shots after a calibration set its limits (its values are
    # steady and near-normal: a short warm-up suffices)
    warmup_parts: int = Field(30, ge=2, le=10000)

    @field_validator("size_mm")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) < 10 or max(v) > 400:
            raise ValueError(f"each side must be 10..400 mm, not {list(v)}")
        return v


def card_pose(recipe: Any) -> Pose:
    """The pose the card is shot from: straight above its centre, at `height_mm` (default: the
    first shot pose's height), looking as the first shot pose does."""
    ref = recipe.monitoring.drift.reference
    poses = recipe.robot.poses
    first = poses[0] if poses else None
    z = ref.height_mm if ref.height_mm is not None else (
        first.position_mm[2] if first is not None else 579.0)
    rot = first.rotvec_rad if first is not None else (math.pi, 0.0, 0.0)
    return Pose(name=CARD, position_mm=(ref.centre_mm[0], ref.centre_mm[1], z), rotvec_rad=rot)


def card_problem(recipe: Any) -> str | None:
    """Why the recipe's reference card cannot be used (None: it can, or it is off): it must lie
    wholly outside the sheet grown by the coverage's edge margin and a further 5 mm, so that no
    part of it is ever inspected and no sheet ever covers it."""
    ref = recipe.monitoring.drift.reference
    if not ref.enabled:
        return None
    if any(p.name == CARD for p in recipe.robot.poses):
        return (f"robot.poses: a shot pose is named {CARD!r}, the reference card's pose name; "
                "rename it (monitoring.drift.reference)")
    sh, grow = recipe.sheet, recipe.coverage.edge_margin_mm + 5.0
    (cx, cy), (w, h) = ref.centre_mm, ref.size_mm
    apart_x = abs(cx - sh.center_mm[0]) >= (sh.width_mm + w) / 2 + grow
    apart_y = abs(cy - sh.center_mm[1]) >= (sh.height_mm + h) / 2 + grow
    if not (apart_x or apart_y):
        return (f"monitoring.drift.reference.centre_mm: the {w:g} x {h:g} mm card at "
                f"{[cx, cy]} overlaps the sheet ({sh.width_mm:g} x {sh.height_mm:g} mm at "
                f"{list(sh.center_mm)}, grown by edge_margin_mm + 5 mm); mount it beside the "
                "sheet")
    return None


class PlacementWatchConfig(Strict):
    """Whether the line still puts sheets well inside the inspected region (with
    sheet.check_placement): per side of the region, the capability index of the last
    `window_parts` found sheets against the placement tolerance (station.monitoring.placement).
    Defaults by design: docs/monitoring.md, tools/design_placement_watch.py."""

    enabled: bool = True
    window_parts: int = Field(50, ge=10, le=10000)  # sheets judged together, per side
    min_cpk: float = Field(1.0, gt=0, le=10)  # an alarm below this: (tolerance - mean) / 3 sd


class DriftConfig(Strict):
    """EWMA and CUSUM charts on passed parts' scores and on per-pose image statistics, with
    limits from the calibration's good parts; and on the reference card (`reference`)."""

    # Limits by design (docs/monitoring.md, tools/design_drift_limits.py): a recipe charts
    # ~3 statistics x poses + detectors + 3 card signals (31 with 9 poses); the family-wise
    # target is a 5 % chance of any false alarm in 1000 stable parts, with centres and sigmas
    # estimated from 60 parts (the sheet statistics are skewed: 30 was too few) and the
    # card's from 30. These sheet-image and score charts are wide: the card carries the lamp
    # and the focus.
    enabled: bool = True
    ewma_lambda: float = Field(0.3, gt=0, le=1)  # weight of the newest point
    ewma_l: float = Field(7.0, gt=0, le=10)  # limit in standard deviations of the EWMA
    cusum_k: float = Field(1.0, ge=0, le=5)  # allowance, in standard deviations
    cusum_h: float = Field(14.0, gt=0, le=50)  # decision interval, in standard deviations
    clip: float = Field(4.0, gt=0, le=50)  # each point clipped to +-clip sigma (robust charts)
    # a signal needs this many of the calibration's passed good parts for its limits ...
    min_baseline_parts: int = Field(60, ge=2, le=10000)
    # ... else its first this many inspected parts set them (a warm-up; the card has its own,
    # reference.warmup_parts)
    warmup_parts: int = Field(60, ge=2, le=10000)
    reference: ReferenceCardConfig = ReferenceCardConfig()
    placement: PlacementWatchConfig = PlacementWatchConfig()


class MaterialCheckConfig(Strict):
    """Each shot against the training material's pooled-feature distribution, before the
    detectors: a shot beyond the threshold faults the part. `station train` fits its model
    (station.monitoring.material, docs/material_check.md); when enabled, inspection needs one."""

    enabled: bool = True
    false_alarm: float = Field(0.01, gt=0, lt=1)  # on held-out good images, sets the threshold


class DiskConfig(Strict):
    """Warnings before the data, journal or database disk fills (station.monitoring.disk)."""

    enabled: bool = True
    warn_free_gb: float = Field(5.0, ge=0, le=1e6)  # below this much free space
    warn_hours: float = Field(8.0, ge=0, le=1e4)  # or full within this at the run's rate


class MonitoringConfig(Strict):
    drift: DriftConfig = DriftConfig()
    material_check: MaterialCheckConfig = MaterialCheckConfig()
    disk: DiskConfig = DiskConfig()


class RetrainConfig(Strict):
    """Which operator reviews may add a false-rejected part's shots to the good training data."""

    agreeing_reviews: int = Field(2, ge=1, le=10)  # reviews that must agree ("false reject")
    supervisors: list[str] = Field(default_factory=list)  # one review by one of them suffices
    # candidate model versions (station retrain) that `station inspect` runs beside the live
    # models: their verdicts are stored (shadow_verdicts), never drive the reject output, and
    # each shot is scored twice (inference time doubles for a full candidate set)
    shadow: list[str] = Field(default_factory=list)
