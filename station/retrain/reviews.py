"""Which reviewed parts a retrain may learn from, and the reviewed history it is judged on.

The recipe's rule (`retrain:`): a rejected part's shots join the good training data when at
least `agreeing_reviews` different operators marked it "false reject" and nobody confirmed a
defect on it, or when the newest review by one of the named `supervisors` says "false
reject" and no "defect confirmed" came after it (a supervisor's word overrides an earlier
"defect confirmed", never a later one: evaluation counts the newest review). Only parts the
station rejected (`fail`) with every shot on disk qualify: a fault or an interrupted part may
lack shots. Nor do parts shot under another exposure or gain than the recipe's camera has now:
a model learns the cell's images as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from station.paths import resolve
from station.storage.models import Part, ReviewLabel, Verdict

if TYPE_CHECKING:
    from station.recipe import Recipe
    from station.storage.db import Database


@dataclass
class ReviewedPart:
    """A reviewed part with its shots (in pose order) and what the reviews say."""

    part_id: int
    sequence: int
    verdict: Verdict  # what the station decided live
    label: ReviewLabel  # the newest review's
    shots: list[tuple[str, Path]]  # (pose name, image file)
    reviews: list[tuple[str, ReviewLabel]]  # (operator, label), oldest first
    ground_truth: str | None = None
    why: str = ""  # why it may (or may not) join the training data
    imaging: list[dict[str, Any]] = field(default_factory=list)  # each shot's camera_settings


@dataclass
class Selection:
    parts: list[ReviewedPart] = field(default_factory=list)  # qualify for training
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> parts

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def qualifies(
    reviews: list[tuple[str, ReviewLabel]], agreeing: int, supervisors: list[str]
) -> tuple[bool, str]:
    """The recipe's rule on one part's reviews (operator, label), oldest first."""
    chiefs = {s.strip().casefold() for s in supervisors if s.strip()}
    by_chief = [i for i, (who, _) in enumerate(reviews) if who.strip().casefold() in chiefs]
    if by_chief:
        last = by_chief[-1]
        if reviews[last][1] != ReviewLabel.FALSE_REJECT:
            return False, "a supervisor confirmed the defect"
        # a later "defect confirmed" is the newest word evaluation counts: never good data
        if any(lab == ReviewLabel.DEFECT_CONFIRMED for _, lab in reviews[last + 1 :]):
            return False, "a review after the supervisor's confirmed a defect"
        return True, "false reject by a supervisor"
    if any(lab == ReviewLabel.DEFECT_CONFIRMED for _, lab in reviews):
        return False, "a review confirmed a defect"
    who = {w.strip().casefold() for w, lab in reviews if lab == ReviewLabel.FALSE_REJECT}
    if len(who) >= agreeing:
        return True, f"false reject by {len(who)} operators"
    return False, f"false reject by {len(who)} of the {agreeing} operators needed"


def reviewed_parts(recipe: Recipe, db: Database) -> list[ReviewedPart]:
    """Every reviewed part of the recipe with all its shots on disk, oldest first."""
    root = resolve(recipe.storage.data_dir)
    out: list[ReviewedPart] = []
    with db.session() as s:
        parts = s.scalars(
            select(Part)
            .where(Part.recipe == recipe.name, Part.reviews.any())
            .options(selectinload(Part.reviews), selectinload(Part.shots))
            .order_by(Part.sequence)
        ).unique()
        for part in parts:
            reviews = part.reviews  # oldest first: the last one's label counts
            out.append(
                ReviewedPart(
                    part_id=part.id,
                    sequence=part.sequence,
                    verdict=Verdict(part.verdict),
                    label=ReviewLabel(reviews[-1].label),  # the newest counts
                    shots=[
                        (sh.pose_name, root / sh.image_path)
                        for sh in sorted(part.shots, key=lambda sh: sh.pose_index)
                    ],
                    reviews=[(r.operator, ReviewLabel(r.label)) for r in reviews],
                    ground_truth=part.ground_truth,
                    imaging=[dict(sh.camera_settings or {}) for sh in part.shots],
                )
            )
    return out


def same_imaging(recipe: Recipe, part: ReviewedPart) -> bool:
    """Every shot taken at the recipe's exposure (within 1 %) and gain (within 0.1 dB); a
    shot that did not record one is taken as it is."""
    cam = recipe.camera
    for shot in part.imaging:
        exposure, gain = shot.get("exposure_us"), shot.get("gain_db")
        if isinstance(exposure, int | float) and abs(exposure / cam.exposure_us - 1) > 0.01:
            return False
        if isinstance(gain, int | float) and abs(gain - cam.gain_db) > 0.1:
            return False
    return True


def complete(recipe: Recipe, part: ReviewedPart) -> bool:
    """Every pose of the recipe shot once, and every shot's file on disk."""
    poses = [p.name for p in recipe.robot.poses]
    return sorted(n for n, _ in part.shots) == sorted(poses) and all(
        f.is_file() for _, f in part.shots
    )


def select_false_rejects(recipe: Recipe, parts: list[ReviewedPart]) -> Selection:
    """The parts whose shots may join the good training data under the recipe's rule."""
    rule = recipe.retrain
    sel = Selection()
    for part in parts:
        if part.verdict != Verdict.FAIL:
            if any(lab == ReviewLabel.FALSE_REJECT for _, lab in part.reviews):
                sel.skip(f"not rejected by the station ({part.verdict.value})")
            continue
        ok, why = qualifies(part.reviews, rule.agreeing_reviews, rule.supervisors)
        part.why = why
        if not ok:
            if any(lab == ReviewLabel.FALSE_REJECT for _, lab in part.reviews):
                sel.skip(why)
            continue
        if not complete(recipe, part):
            sel.skip("shots missing on disk or not every pose")
            continue
        if not same_imaging(recipe, part):
            sel.skip("shot under another exposure or gain than the recipe's camera now")
            continue
        sel.parts.append(part)
    return sel
