"""Shadow mode: a candidate model set scores every shot beside the live models; its verdict
is stored (shadow_verdicts) and compared, never used for the line.

The candidate decides with its own thresholds and the recipe's decision rule (max or mean
over poses; sheet_map is refused: the sheet map is built for the live models only). Scoring
runs on the inference thread before the live detectors, so a full candidate set doubles the
inference time of a shot. Anything that fails here is reported as a warning event and the
part goes on as if there were no shadow: it never faults a part.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from station.decision import Decision, Verdict, combine_scores, decide
from station.errors import StationError
from station.inspection.hooks import CycleHook
from station.inspection.results import Event
from station.storage.shadow import REJECTING, record_shadow_verdict

if TYPE_CHECKING:
    import numpy as np

    from station.inspection.models import DetectorSet
    from station.inspection.recorder import PartRecord
    from station.inspection.results import PartResult
    from station.recipe import Recipe
    from station.storage.db import Database

MAX_PENDING = 16  # parts scored but not finished (pipelining holds at most two)


class ShadowHook(CycleHook):
    name: ClassVar[str] = "shadow"

    def __init__(self, recipe: Recipe, db: Database, models: DetectorSet, candidate: str) -> None:
        if recipe.decision.combine_poses == "sheet_map":
            raise StationError(
                "shadow mode decides on shot scores; combine_poses sheet_map is not supported",
                hint="leave retrain.shadow empty (or --shadow out) with a sheet_map recipe",
            )
        self.recipe = recipe
        self.db = db
        self.models = models
        self.candidate = candidate
        self.poses = [p.name for p in recipe.robot.poses]
        self._lock = threading.Lock()
        # part key -> (its record, pose -> detector -> score, first error)
        self._pending: dict[str, tuple[PartRecord, dict[str, dict[str, float]], str]] = {}

    def shot(self, part: PartRecord, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        try:
            scores = {o.detector: o.score for o in self.models.score(image)}
            error = ""
        except Exception as exc:  # noqa: BLE001 (a shadow never faults the part)
            scores, error = {}, f"scoring {pose_name} failed: {exc}"
        with self._lock:
            rec = self._pending.setdefault(part.key, (part, {}, ""))
            if scores:
                rec[1][pose_name] = scores
            if error and not rec[2]:
                self._pending[part.key] = (rec[0], rec[1], error)
            while len(self._pending) > MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
        return {"candidate": self.candidate, "scores": scores} if scores else {}

    def _take(self, result: PartResult) -> tuple[dict[str, dict[str, float]], str] | None:
        with self._lock:
            for key, (rec, scores, error) in self._pending.items():
                same_row = result.part_id is not None and rec.db_id == result.part_id
                same_seq = result.sequence is not None and rec.sequence == result.sequence
                if same_row or (result.part_id is None and same_seq):
                    del self._pending[key]
                    return scores, error
        return None

    def part(self, result: PartResult) -> list[Event]:
        taken = self._take(result)
        if taken is None:  # faulted before any shot: nothing was shown to the candidate
            return []
        by_pose, error = taken
        label = result.sequence if result.sequence is not None else "?"
        if result.part_id is None:
            return [
                Event(
                    "message",
                    f"shadow verdict of part {label} not stored: the part is not in the "
                    "database yet",
                    level="warning",
                )
            ]
        names = [d.name for d in self.models.detectors]
        # in the recipe's pose order; a pose the live part never reached is absent, and the
        # rule then faults the candidate's verdict as it faults the live one
        scores = {n: [by_pose[p][n] for p in self.poses if p in by_pose] for n in names}
        thresholds = self.models.thresholds
        if error:
            decision = Decision.fault(error)
        else:
            decision = decide(scores, thresholds, self.recipe.decision, self.poses)
        how = self.recipe.decision.combine_poses
        record_shadow_verdict(
            self.db,
            result.part_id,
            self.candidate,
            self.models.model_versions,
            decision.verdict,
            decision.reason,
            decision.part_score,
            {n: c for n, v in scores.items() if v and math.isfinite(c := combine_scores(v, how))},
            thresholds,
        )
        live_reject = result.verdict in REJECTING
        if live_reject == (decision.verdict != Verdict.PASS):
            return []
        return [
            Event(
                "message",
                f"shadow {self.candidate} disagrees on part {label}: live {result.verdict.value}, "
                f"candidate {decision.verdict.value} ({decision.reason})",
            )
        ]


def shadow_hook(recipe: Recipe, db: Database) -> ShadowHook | None:
    """The recipe's shadow hook (retrain.shadow names the candidate versions), or None."""
    if not recipe.retrain.shadow:
        return None
    from station.inspection.models import DetectorSet, LoadedDetector
    from station.retrain.candidates import (
        candidate_id,
        find_calibration,
        load_versions,
        resolve_versions,
    )

    versions = resolve_versions(recipe, list(recipe.retrain.shadow))
    models = load_versions(recipe, versions)
    cal = find_calibration(recipe, versions)
    dets = [
        LoadedDetector(name, m.detector, str(m.version), cal.thresholds[name])
        for name, m in models.items()
    ]
    dset = DetectorSet(dets, recipe.preprocess, calibration_label=str(cal.path))
    return ShadowHook(recipe, db, dset, candidate_id(versions))
