"""What the inspection cycle reports: per-activity timings, acquired shots, part results,
events for the live view, and the summary of a run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from station.decision import Verdict
from station.inspection.faults import Fault
from station.inspection.recorder import DetectionRecord, RecoveryReport, ShotRecord

TIMING_KEYS = ("motion", "exposure", "inference", "logging", "line", "wait", "cycle")


class Timings:
    """Summed milliseconds per activity; safe to add to from the inference thread."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)
        self._lock = threading.Lock()

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


@dataclass
class ShotScores:
    shot: ShotRecord
    scores: dict[str, float]
    detections: list[DetectionRecord]


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


OperatorFn = Callable[[Fault], bool]  # True: the operator fixed it, resume; False: stop
EventFn = Callable[[Event], None]
