"""Control charts on one standardised signal: EWMA and two-sided tabular CUSUM (pure).

Every point is standardised against the signal's baseline, u = (x - centre) / sigma, and
clipped to +-clip (a robust chart: one odd part, e.g. a defect in view, moves a chart by at
most `clip`). Then:

- EWMA: z_i = lam * u_i + (1 - lam) * z_{i-1}, z_0 = 0, with the exact time-varying limits
  +-L * sqrt(lam / (2 - lam) * (1 - (1 - lam)^(2 i))) (i counted from the chart's start or
  its last reset). When it signals, its run's start and the shift are estimated as the
  CUSUM's on that side (below).
- CUSUM: C+_i = max(0, u_i - k + C+_{i-1}), C-_i = max(0, -u_i - k + C-_{i-1}); it signals
  when either exceeds h. Its run starts at the first point after the sum was last 0. The
  shift estimate is k + C / N (N points in the run), with the sign of the side.

k, h and L are in standard deviations of the signal (the baseline's sigma).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

RECENT = 2000  # points kept per chart, to estimate a shift over its run


def ewma_sigma_factor(lam: float, i: int) -> float:
    """Standard deviation of the EWMA after i points, in units of the signal's sigma."""
    return math.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * i)))


def standardise(x: float, centre: float, sigma: float, clip: float) -> float:
    u = (x - centre) / sigma
    return max(-clip, min(clip, u))


@dataclass
class Signal:
    """What a chart reports after a point: the statistic, its limit, and whether it is out."""

    chart: str  # ewma | cusum
    value: float  # EWMA z, or the larger CUSUM sum (sigma units)
    limit: float  # the limit it is compared with (sigma units)
    out: bool
    side: int  # +1 above, -1 below, 0 inside
    since: int  # index of the first point of the run / excursion (-1: none)
    shift_sigma: float  # estimated shift of the signal, sigma units


@dataclass
class Ewma:
    lam: float
    big_l: float
    z: float = 0.0
    n: int = 0  # points since start or reset
    since: int = -1  # first point of the current run of z on one side of the centre
    side_sum: float = 0.0  # sum of u over that run (its mean estimates the shift)
    side_n: int = 0

    def reset(self) -> None:
        self.z, self.n, self.since, self.side_sum, self.side_n = 0.0, 0, -1, 0.0, 0

    def update(self, u: float, index: int) -> Signal:
        prev = self.z
        self.z = self.lam * u + (1.0 - self.lam) * self.z
        self.n += 1
        if self.z == 0.0 or (prev != 0.0 and (self.z > 0) != (prev > 0)) or self.since < 0:
            self.since, self.side_sum, self.side_n = index, 0.0, 0
        self.side_sum += u
        self.side_n += 1
        limit = self.big_l * ewma_sigma_factor(self.lam, self.n)
        out = abs(self.z) > limit
        side = (1 if self.z > 0 else -1) if out else 0
        return Signal("ewma", self.z, limit, out, side, self.since,
                      self.side_sum / self.side_n)


@dataclass
class Cusum:
    k: float
    h: float
    hi: float = 0.0
    lo: float = 0.0
    hi_since: int = -1
    lo_since: int = -1
    hi_n: int = 0
    lo_n: int = 0

    def reset(self) -> None:
        self.hi = self.lo = 0.0
        self.hi_since = self.lo_since = -1
        self.hi_n = self.lo_n = 0

    def update(self, u: float, index: int) -> Signal:
        self.hi = max(0.0, u - self.k + self.hi)
        self.lo = max(0.0, -u - self.k + self.lo)
        if self.hi > 0:
            if self.hi_n == 0:
                self.hi_since = index
            self.hi_n += 1
        else:
            self.hi_n, self.hi_since = 0, -1
        if self.lo > 0:
            if self.lo_n == 0:
                self.lo_since = index
            self.lo_n += 1
        else:
            self.lo_n, self.lo_since = 0, -1
        up = self.hi >= self.lo
        value, n, since = (self.hi, self.hi_n, self.hi_since) if up else (
            self.lo, self.lo_n, self.lo_since)
        out = value > self.h
        sign = 1 if up else -1
        shift = sign * (self.k + value / n) if n else 0.0
        return Signal("cusum", value, self.h, out, sign if out else 0, since, shift)


@dataclass
class ChartPair:
    """Both charts on one signal, with its baseline (centre and sigma)."""

    centre: float
    sigma: float
    ewma: Ewma
    cusum: Cusum
    clip: float = 4.0
    count: int = field(default=0)

    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=RECENT))

    def update(self, x: float, index: int) -> tuple[float, Signal, Signal]:
        """(standardised point, EWMA signal, CUSUM signal) after point x.

        An EWMA signal's start and shift are re-estimated as the CUSUM's: the first point
        after the CUSUM sum on its side was last 0, and the mean of the points since (the
        EWMA's own run from the centre line starts at the first chance crossing, too early).
        """
        u = standardise(x, self.centre, self.sigma, self.clip)
        self.count += 1
        self.recent.append((index, u))
        ew, cu = self.ewma.update(u, index), self.cusum.update(u, index)
        if ew.out:
            since = self.cusum.hi_since if ew.side > 0 else self.cusum.lo_since
            since = since if since >= 0 else index
            run = [v for i, v in self.recent if i >= since] if since >= self.recent[0][0] else [
                v for _, v in self.recent]
            ew = replace(ew, since=since, shift_sigma=sum(run) / len(run))
        return u, ew, cu
