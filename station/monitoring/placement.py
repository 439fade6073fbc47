"""The placement watch: does the line still put sheets well inside the inspected region?

Every part whose sheet was found (sheet.check_placement) gives, per side of the region, how far
the sheet reaches past that side (`placement <side>`, mm; negative: the margin left inside).
Over a side's last `window_parts` parts the capability index Cpk = (tolerance - mean) / (3 sd)
says how near the line's placing comes to the tolerance past which a sheet is faulted as
misplaced; below `min_cpk` the side raises one alarm (open until an operator clears it, which
starts that side's window again). Stops and guides creeping, or a margin too tight for the
line's scatter, show here while the sheets are still inspected. Parts of every verdict count:
the misplaced ones are the tail the index is about.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from station.geometry.placement import SIDES
from station.storage.alarms import CPK_CHART, PLACEMENT_PREFIX, NewAlarm, PartPoint

if TYPE_CHECKING:
    from station.recipe.quality import PlacementWatchConfig

SD_FLOOR_MM = 0.05  # below the edge fit's own scatter: a jig-placed sheet is not infinitely capable


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (floored at SD_FLOOR_MM) of two or more reaches."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, max(sd, SD_FLOOR_MM)


@dataclass(frozen=True)
class Capability:
    """One side's placing over a set of sheets, against the tolerance."""

    side: str
    n: int
    mean: float  # mm past the region's side (negative: inside)
    sd: float
    cpk: float
    cpk_low: float  # its one-sided 95 % lower confidence bound (Bissell's approximation)


def capability(side: str, xs: Sequence[float], tolerance_mm: float, extra_mm: float = 0.0
               ) -> Capability:
    """The side's index over `xs` (two or more reaches), with the region grown by `extra_mm`."""
    n = len(xs)
    mean, sd = mean_sd(xs)
    cpk = (tolerance_mm + extra_mm - mean) / (3.0 * sd)
    low = cpk - 1.645 * math.sqrt(1.0 / (9.0 * n) + cpk * cpk / (2.0 * (n - 1)))
    return Capability(side, n, mean, sd, cpk, low)


def margin_verdict(caps: Sequence[Capability], min_cpk: float) -> str:
    """What a set of sheets shows of the margin: "holds" (every side's Cpk at least `min_cpk`
    at 95 % confidence), "likely" (each measured Cpk at least that, too few sheets to be sure)
    or "warning" (a measured Cpk below it)."""
    if min(c.cpk_low for c in caps) >= min_cpk:
        return "holds"
    return "likely" if min(c.cpk for c in caps) >= min_cpk else "warning"


def margin_needed(reaches: dict[str, Sequence[float]], tolerance_mm: float, margin_mm: float,
                  min_cpk: float, step_mm: float = 0.5, most_mm: float = 30.0) -> float | None:
    """The smallest edge margin (from 0 up, in `step_mm`; the sheets measured with
    `margin_mm`) at which every side's Cpk is at least `min_cpk` at 95 % confidence; None when
    even `most_mm` more than `margin_mm` is not enough."""
    extra = -margin_mm
    while extra <= most_mm:
        if all(capability(s, xs, tolerance_mm, extra).cpk_low >= min_cpk
               for s, xs in reaches.items()):
            return margin_mm + extra
        extra += step_mm
    return None


def fault_share(cpk: float) -> float:
    """The share of sheets past the tolerance on one side if its reach is normal with this
    index: P(z > 3 Cpk)."""
    return 0.5 * math.erfc(3.0 * cpk / math.sqrt(2.0))


@dataclass
class SideState:
    side: str
    points: deque[tuple[int, int, datetime, float]]  # (part id, sequence, time, reach mm)
    alarmed: bool = False

    def stats(self) -> tuple[float, float] | None:
        """(mean, sd) of the window's reaches; None with fewer than two."""
        return mean_sd([p[3] for p in self.points]) if len(self.points) >= 2 else None


@dataclass
class PlacementWatch:
    recipe: str
    tolerance_mm: float  # coverage.placement_tolerance_mm: past it a sheet is misplaced
    cfg: PlacementWatchConfig
    sides: dict[str, SideState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side in SIDES:
            self.sides[side] = SideState(side, deque(maxlen=self.cfg.window_parts))

    @staticmethod
    def owns(signal: str) -> bool:
        return signal.startswith(PLACEMENT_PREFIX)

    def window(self, side: str) -> Capability | None:
        """The side's capability over its window (None until the window is full)."""
        st = self.sides[side]
        if len(st.points) < self.cfg.window_parts:  # window_parts >= 10 (station.recipe.quality)
            return None
        return capability(side, [p[3] for p in st.points], self.tolerance_mm)

    def cpk(self, side: str) -> float | None:
        """The side's index over its window (None until the window is full)."""
        got = self.window(side)
        return got.cpk if got is not None else None

    def add(self, point: PartPoint) -> list[NewAlarm]:
        """One part's reaches (any verdict; a part whose sheet was not found has none)."""
        out = []
        for side, st in self.sides.items():
            x = point.values.get(PLACEMENT_PREFIX + side)
            if x is None or not math.isfinite(x):
                continue
            st.points.append((point.part_id, point.sequence, point.at, x))
            cap = self.window(side)
            if cap is not None and cap.cpk < self.cfg.min_cpk and not st.alarmed:
                st.alarmed = True
                out.append(self._alarm(st, cap, point))
        return out

    def _alarm(self, st: SideState, cap: Capability, point: PartPoint) -> NewAlarm:
        mean, sd, cpk = cap.mean, cap.sd, cap.cpk
        first_id, first_seq, first_at, _ = st.points[0]
        where = f"{mean:.1f} mm past" if mean > 0 else f"{-mean:.1f} mm inside"
        msg = (
            f"{PLACEMENT_PREFIX}{st.side}: over parts {first_seq}-{point.sequence} the sheets' "
            f"{st.side} side lies {where} the region's on average (sd {sd:.2f} mm); mean + 3 sd "
            f"is {mean + 3 * sd:+.1f} mm against the tolerance {self.tolerance_mm:.1f} mm (Cpk "
            f"{cpk:.2f} < {self.cfg.min_cpk:g}): about {100 * fault_share(cpk):.2g} % of sheets "
            "will fault as misplaced; check the line's stops and guides against "
            "sheet.center_mm, or widen coverage.edge_margin_mm and plan the poses again"
        )
        return NewAlarm(self.recipe, PLACEMENT_PREFIX + st.side, CPK_CHART, first_id, first_at,
                        point.part_id, mean + 3 * sd, mean, self.tolerance_mm, 3 * sd, msg)

    def alarmed(self) -> set[str]:
        return {PLACEMENT_PREFIX + s for s, st in self.sides.items() if st.alarmed}

    def hold(self, signal: str) -> None:
        """An open alarm of `signal` was stored (a restart): no second one."""
        st = self.sides.get(signal.removeprefix(PLACEMENT_PREFIX))
        if st is not None:
            st.alarmed = True

    def clear(self, signal: str) -> None:
        """An operator cleared the side's alarm: its window starts again."""
        st = self.sides.get(signal.removeprefix(PLACEMENT_PREFIX))
        if st is not None and st.alarmed:
            st.alarmed = False
            st.points.clear()
