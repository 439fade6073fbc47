"""The drift monitor of one recipe: an EWMA and a CUSUM chart per signal, and its alarms.

Signals: `score <detector>` (a passed part's score over its threshold; passed parts only),
`<stat> <pose>` (image statistics of each pose, station.monitoring.imagestats) and `<stat>
card` (the reference card, station.monitoring.reference; its own chart settings); the last two
from passed and failed parts, not faulted ones; and `placement <side>` (how far each part's
found sheet reaches past the region, every verdict), judged against the placement tolerance by
`PlacementWatch` (station.monitoring.placement), not by these charts. A signal's centre and
sigma come from the calibration's good parts (station.monitoring.baseline); a signal without
one (the card's always) takes them from its first `warmup_parts` points (the card:
`reference.warmup_parts`; a warm-up, said in its `source`).

An alarm is raised when a chart leaves its limits and no alarm of that signal and chart is
open; it stays open (no new alarm from that chart) until an operator clears it, which resets
the chart. `replay` runs the charts over the stored history, applying each clear before the
first part charted at or after it (`PartPoint.at`, the part's finish), as the live hook does,
so a restarted station resumes where it stopped and never raises an alarm twice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from station.monitoring.charts import ChartPair, Cusum, Ewma, Signal
from station.monitoring.placement import PlacementWatch
from station.recipe import CARD
from station.storage.alarms import CPK_CHART, AlarmRow, NewAlarm, PartPoint

if TYPE_CHECKING:
    from station.recipe.quality import DriftConfig

SCORE_PREFIX = "score "
CARD_SUFFIX = f" {CARD}"  # the reference card's signals: `mean card`, `contrast card`, ...


def is_card(name: str) -> bool:
    return name.endswith(CARD_SUFFIX)

KEEP_POINTS = 200  # per signal, for `station monitor`


@dataclass(frozen=True)
class Baseline:
    centre: float
    sigma: float
    n: int
    source: str  # e.g. "calibration 12: 18 good parts", "warm-up: parts 1-30"


@dataclass
class SignalState:
    name: str
    baseline: Baseline | None = None
    pair: ChartPair | None = None
    warmup: list[tuple[int, float]] = field(default_factory=list)  # (sequence, value)
    alarmed: set[str] = field(default_factory=set)  # charts with an open alarm
    last: deque[tuple[int, float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=KEEP_POINTS)
    )  # (sequence, value, u, ewma z, larger cusum sum)
    ewma: Signal | None = None
    cusum: Signal | None = None


def _sigma_floor(centre: float, sigma: float) -> float:
    return max(sigma, 1e-9 * max(1.0, abs(centre)))


class DriftMonitor:
    def __init__(
        self, recipe: str, cfg: DriftConfig, baselines: dict[str, Baseline],
        placement: PlacementWatch | None = None,
    ) -> None:
        self.recipe = recipe
        self.cfg = cfg
        self.placement = placement  # the placement watch (its own signals, any verdict)
        self.signals: dict[str, SignalState] = {}
        self._parts: dict[int, tuple[int, datetime]] = {}  # part id -> (sequence, time)
        self.parts_seen = 0
        for name, b in baselines.items():
            self._state(name).baseline = b

    def _state(self, name: str) -> SignalState:
        st = self.signals.get(name)
        if st is None:
            st = self.signals[name] = SignalState(name)
        return st

    def settings(self, name: str) -> tuple[float, float, float, float]:
        """(EWMA lambda, L, CUSUM k, h) of a signal: the reference card's own for its signals,
        else the recipe's (scores and sheet images)."""
        c: Any = self.cfg.reference if is_card(name) else self.cfg
        return c.ewma_lambda, c.ewma_l, c.cusum_k, c.cusum_h

    def _warmup(self, name: str) -> int:
        """Points that set a signal's limits when it has no baseline: the card's own count."""
        return self.cfg.reference.warmup_parts if is_card(name) else self.cfg.warmup_parts

    def _pair(self, name: str, b: Baseline) -> ChartPair:
        lam, big_l, k, h = self.settings(name)
        return ChartPair(b.centre, _sigma_floor(b.centre, b.sigma), Ewma(lam, big_l),
                         Cusum(k, h), self.cfg.clip)

    # -- points ------------------------------------------------------------------------
    def add(self, point: PartPoint) -> list[NewAlarm]:
        """Feed one part's values; the alarms it raises (not yet stored)."""
        out = self.placement.add(point) if self.placement is not None else []
        if point.verdict not in ("pass", "fail"):
            return out
        self.parts_seen += 1
        self._parts[point.part_id] = (point.sequence, point.at)
        if len(self._parts) > 20 * KEEP_POINTS:  # keep the map bounded (oldest first out)
            for pid in list(self._parts)[: KEEP_POINTS]:
                del self._parts[pid]
        for name, x in sorted(point.values.items()):
            if not math.isfinite(x) or PlacementWatch.owns(name):
                continue
            if name.startswith(SCORE_PREFIX) and point.verdict != "pass":
                continue
            out.extend(self._add_value(self._state(name), point, x))
        return out

    def _add_value(self, st: SignalState, point: PartPoint, x: float) -> list[NewAlarm]:
        if st.pair is None:
            if st.baseline is None:
                st.warmup.append((point.sequence, x))
                if len(st.warmup) < self._warmup(st.name):
                    return []
                vals = [v for _, v in st.warmup]
                mean = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                st.baseline = Baseline(mean, sd, len(vals), f"warm-up: parts "
                                       f"{st.warmup[0][0]}-{st.warmup[-1][0]}")
                st.warmup.clear()
                st.pair = self._pair(st.name, st.baseline)
                return []  # the warm-up points set the limits; charting starts after them
            st.pair = self._pair(st.name, st.baseline)
        u, ew, cu = st.pair.update(x, point.part_id)
        st.ewma, st.cusum = ew, cu
        st.last.append((point.sequence, x, u, ew.value, cu.value))
        raised = []
        for sig in (ew, cu):
            if sig.out and sig.chart not in st.alarmed:
                st.alarmed.add(sig.chart)
                raised.append(self._alarm(st, sig, point))
        return raised

    def _alarm(self, st: SignalState, sig: Signal, point: PartPoint) -> NewAlarm:
        assert st.pair is not None and st.baseline is not None
        centre, sigma = st.pair.centre, st.pair.sigma
        since_seq, since_at = self._parts.get(sig.since, (point.sequence, point.at))
        shift = sig.shift_sigma * sigma
        pct = 100.0 * shift / abs(centre) if centre else float("nan")
        where = "above" if sig.side > 0 else "below"
        if sig.chart == "ewma":
            value, limit = centre + sig.value * sigma, centre + sig.side * sig.limit * sigma
        else:
            value, limit = sig.value, sig.limit
        msg = (f"{st.name}: {sig.chart.upper()} {where} its limit since part {since_seq}; "
               f"moved {shift:+.4g} ({pct:+.1f} % of its baseline {centre:.4g}, "
               f"{sig.shift_sigma:+.1f} sigma) by part {point.sequence}")
        return NewAlarm(self.recipe, st.name, sig.chart, sig.since if sig.since >= 0 else None,
                        since_at, point.part_id, value, centre, limit, shift, msg)

    # -- clears and restarts -------------------------------------------------------------
    def clear(self, signal: str, chart: str) -> None:
        """An operator cleared the alarm: the chart starts again from its baseline."""
        if chart == CPK_CHART:
            if self.placement is not None:
                self.placement.clear(signal)
            return
        st = self.signals.get(signal)
        if st is None or chart not in st.alarmed:
            return
        st.alarmed.discard(chart)
        if st.pair is not None:
            (st.pair.ewma if chart == "ewma" else st.pair.cusum).reset()

    def sync(self, open_alarms: list[AlarmRow]) -> None:
        """Apply clears made elsewhere (review page, `station monitor --clear`)."""
        still = {(a.signal, a.chart) for a in open_alarms}
        for name in self.placement.alarmed() if self.placement is not None else ():
            if (name, CPK_CHART) not in still:
                self.clear(name, CPK_CHART)
        for name, st in self.signals.items():
            for chart in list(st.alarmed):
                if (name, chart) not in still:
                    self.clear(name, chart)

    def replay(self, history: list[PartPoint], alarms: list[AlarmRow]) -> list[NewAlarm]:
        """Run the charts over the stored history (clears applied where they happened).
        Returns the alarms the history raises; `add_alarm` keeps only those not stored."""
        clears = sorted((a for a in alarms if a.cleared_at is not None),
                        key=lambda a: a.cleared_at)  # type: ignore[arg-type,return-value]
        still = [a for a in alarms if a.cleared_at is None]
        self._hold(still)
        raised: list[NewAlarm] = []
        k = 0
        for p in history:  # a clear made by a part's charting time counts before it, as live
            while k < len(clears) and clears[k].cleared_at <= p.at:  # type: ignore[operator]
                self.clear(clears[k].signal, clears[k].chart)
                k += 1
            raised.extend(self.add(p))
        for a in clears[k:]:
            self.clear(a.signal, a.chart)
        # an open alarm still holds its chart: a clear of an older alarm of that chart seen
        # in another order than live (a clear racing a part's record) never raises it again
        self._hold(still)
        held = {(a.signal, a.chart) for a in still}
        return [a for a in raised if (a.signal, a.chart) not in held]

    def _hold(self, open_alarms: list[AlarmRow]) -> None:
        """Each open alarm holds its chart, whichever part raised it."""
        for a in open_alarms:
            if a.chart != CPK_CHART:
                self._state(a.signal).alarmed.add(a.chart)
            elif self.placement is not None:
                self.placement.hold(a.signal)
