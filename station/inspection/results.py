"""What the inspection cycle reports: per-activity timings, acquired shots, part results,
events for the live view, and the summary of a run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from station.decision import Verdict
from station.geometry.sheet_map import SheetDefect
from station.inspection.faults import Fault
from station.inspection.recorder import DetectionRecord, RecoveryReport, ShotRecord

# starved: the inference thread idle between a part's shots, waiting for motion and exposure
TIMING_KEYS = ("motion", "exposure", "inference", "starved", "logging", "line", "wait", "cycle")


class Timings:
    """Summed milliseconds per activity; safe to add to from the inference thread."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)
        self._lock = threading.Lock()
        self._shot_done: float | None = None  # when inference last finished a shot

    def shot_started(self) -> None:
        """Inference starts a shot: the time since the last one ended counts as starved."""
        now = time.perf_counter()
        if self._shot_done is not None:
            self.add("starved", (now - self._shot_done) * 1000.0)

    def shot_done(self) -> None:
        self._shot_done = time.perf_counter()

    def add(self, key: str, ms: float) -> None:
        with self._lock:
            self.ms[key] = self.ms.get(key, 0.0) + ms

    @contextlib.contextmanager
    def measure(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, (time.perf_counter() - t0) * 1000.0)

    def rounded(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 2) for k, v in self.ms.items()}


@dataclass
class Acquired:
    """One shot as it leaves the camera (or the disk, offline)."""

    pose_index: int
    pose_name: str
    image: np.ndarray
    camera_settings: dict[str, Any] = field(default_factory=dict)
    robot_pose: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None
    defects: list[dict[str, Any]] | None = None  # None: no ground truth
    sheet_defects: list[dict[str, Any]] | None = None  # the whole sheet's (twin), seen or not
    # the drift reference card (monitoring.drift.reference): handed to the hooks only, never a
    # shot of the part; `error` says why it was not taken (image then empty)
    reference: bool = False
    error: str | None = None


@dataclass
class ShotScores:
    shot: ShotRecord
    scores: dict[str, float]
    detections: list[DetectionRecord]


@dataclass(frozen=True)
class SheetOutcome:
    """A part's sheet map in short: what the decision used and what it found."""

    peaks: dict[str, float]  # detector -> raw peak of its fused map
    defects: list[SheetDefect]  # regions at or over threshold, largest peak first
    unseen_mm2: float  # area of the region no shot saw (a coverage gap)
    blind_mm2: float  # area of the region seen only on saturated pixels (under the limit)
    camera_source: str  # the camera model used: exact (twin), calibrated or nominal


@dataclass
class PartResult:
    sequence: int | None
    part_id: int | None
    mode: str
    verdict: Verdict
    reason: str
    part_score: float | None
    # per detector: its raw score combined over poses, its threshold, and the ratio
    scores: dict[str, float]
    thresholds: dict[str, float]
    normalized: dict[str, float]
    timings_ms: dict[str, float]
    ground_truth: str | None
    fault: Fault | None = None
    stored: bool = True  # False: held in the journal until the database answers
    line_part_id: str | None = None
    sheet: SheetOutcome | None = None  # None: no sheet map (the part faulted before it)


@dataclass
class Event:
    kind: str  # "waiting" | "part_started" | "part_finished" | "message" | "operator"
    text: str = ""
    result: PartResult | None = None
    level: str = "info"  # info | warning | error


@dataclass
class RunSummary:
    counts: Counter[str] = field(default_factory=Counter)
    parts: int = 0
    elapsed_s: float = 0.0
    timing_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    last: PartResult | None = None
    results: list[PartResult] = field(default_factory=list)  # the most recent KEEP_RESULTS
    stopped_reason: str = ""
    operator_fault: Fault | None = None  # set when stopped waiting for an operator
    recovery: RecoveryReport | None = None

    KEEP_RESULTS = 1000

    def add(self, result: PartResult) -> None:
        self.parts += 1
        self.counts[result.verdict.value] += 1
        for k, v in result.timings_ms.items():
            self.timing_sums[k] += v
        self.last = result
        self.results.append(result)
        del self.results[: -self.KEEP_RESULTS]

    def mean_timings(self) -> dict[str, float]:
        n = max(self.parts, 1)
        return {k: v / n for k, v in self.timing_sums.items()}

    @property
    def throughput_per_hour(self) -> float:
        return 3600.0 * self.parts / self.elapsed_s if self.elapsed_s > 0 else 0.0


def recovery_messages(rec: RecoveryReport, refused_dir: Path) -> list[tuple[str, str]]:
    """(text, level) lines telling the operator what start-up recovery did."""
    out = [(line, "error") for line in rec.refused]
    if rec.unconfirmed:
        out.append((
            f"part(s) {', '.join(map(str, rec.unconfirmed))}: passed, but the station stopped "
            "before the line confirmed it; the line rejected those sheets unless the result "
            "had gone out (the PLC's log says which)",
            "warning",
        ))
    if not (rec.journal_replayed or rec.interrupted or rec.set_aside):
        return out
    refused = (
        f", {rec.set_aside} refused by the database and kept in {refused_dir}"
        if rec.set_aside
        else ""
    )
    out.append((
        f"recovered: {rec.journal_replayed} held record(s) written{refused}, "
        f"{len(rec.interrupted)} part(s) marked interrupted "
        f"({', '.join(map(str, rec.interrupted)) or '-'})",
        "warning",
    ))
    return out


OperatorFn = Callable[[Fault], bool]  # True: the operator fixed it, resume; False: stop
EventFn = Callable[[Event], None]
