"""`station models promote`: make a candidate model live, on evidence, and say so in the database.

The candidate must not be worse on confirmed defects: on the reviewed parts its retrain judged
(and on the parts it saw in shadow mode, when reviewed), it may miss no more defects that an
operator confirmed than the live model did. The promotion is recorded (who, when, from which
version, the evidence) before the LIVE pointer moves; the pointer is pinned to the old version
first, so a failure half way leaves the old model live. A promoted model needs thresholds made
for it: the candidate's own calibration becomes the live one when station inspect would accept
it (made for exactly the models now live and the recipe's decision rule); otherwise the
promotion says why and `station calibrate-threshold` must run before `station inspect`. Shadow
verdicts count from every set run with the promoted version; none is said in the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from station.detectors.artifact import (
    artifact_path,
    candidate_path,
    find_artifact,
    latest_artifact,
    write_live,
)
from station.errors import StationError
from station.files import atomic_write_all
from station.paths import resolve
from station.retrain.candidates import candidate_id, candidates_dir, live_versions
from station.retrain.evaluate import false_reject_cost, not_worse_on_defects
from station.storage.models import ReviewLabel, Verdict
from station.storage.promotions import model_version, record_promotion, update_model_version
from station.storage.shadow import REJECTING, shadow_rows

if TYPE_CHECKING:
    from station.recipe import Recipe
    from station.storage.db import Database


@dataclass
class Promoted:
    promotion_id: int
    detector: str
    from_version: str
    to_version: str
    reason: str
    calibration: Path | None  # the calibration installed as live, None: calibrate again
    added_shots: int  # reviewed shots copied into the good training data
    left_out: dict[str, int] = field(default_factory=dict)  # why -> trained-on parts not copied
    calibration_note: str = ""  # why no calibration was installed (None above)

    @property
    def notes(self) -> list[str]:
        """What the promotion output says beside the verdict: calibration, training data."""
        out = []
        if self.calibration is None:
            out.append(f"{self.calibration_note}: run station calibrate-threshold before "
                       "station inspect")  # fmt: skip
        if self.left_out:
            why = "; ".join(f"{n} part(s): {r}" for r, n in self.left_out.items())
            out.append(f"reviewed parts not added to the good training data ({why})")
        return out


def _shadow_candidates(db: Database, recipe: str, detector: str, version: str) -> list[str]:
    """Every candidate set run in shadow mode with `version` as its `detector` (the whole
    retrained set, or `--shadow` of this version alone beside the other live models)."""
    from sqlalchemy import select

    from station.storage.models import Part, ShadowVerdict

    with db.session() as s:
        names = s.scalars(
            select(ShadowVerdict.candidate)
            .join(Part, Part.id == ShadowVerdict.part_id)
            .where(Part.recipe == recipe)
            .distinct()
        ).all()
        out = []
        for name in names:  # a set's id is made from its versions: one row says them
            row = s.scalars(select(ShadowVerdict).where(ShadowVerdict.candidate == name)).first()
            if row is not None and (row.model_versions or {}).get(detector) == version:
                out.append(name)
    return sorted(out)


def shadow_evidence(db: Database, recipe: str, detector: str, version: str) -> dict[str, Any]:
    """Reviewed parts the candidate judged in shadow mode: confirmed defects it passed while
    the live model rejected them, and the reverse (each part once, over every set with it)."""
    names = _shadow_candidates(db, recipe, detector, version)
    with db.session() as s:
        rows = [r for name in names for r in shadow_rows(s, recipe, name, limit=100_000)]
    bad = [r for r in rows if r.label == ReviewLabel.DEFECT_CONFIRMED]
    good = [r for r in rows if r.label == ReviewLabel.FALSE_REJECT]
    return {
        "candidates": names,
        "parts": len({r.part_id for r in rows}),
        "disagreements": len({r.part_id for r in rows if r.disagree}),
        "confirmed_defects": len({r.part_id for r in bad}),
        "missed_by_candidate_only": sorted(
            {r.sequence for r in bad if r.shadow == Verdict.PASS and r.live in REJECTING}
        ),
        "false_rejects_reviewed": len({r.part_id for r in good}),
        "false_rejects_kept_by_candidate": len({r.part_id for r in good if r.shadow in REJECTING}),
    }


def _evidence(
    recipe: Recipe, db: Database, detector: str, version: str, current: str,
    accept_false_rejects: bool = False,
) -> tuple[dict[str, Any], str, str]:
    """(evidence, candidate id, why it is enough); StationError when it is not, or when its
    false-reject cost passes the budget and was not accepted by name."""
    row = model_version(db, recipe.name, detector, version)
    info = (row.metrics or {}).get("retrain") if row is not None else None
    ev = (info or {}).get("shadow_evaluation")
    fix = f"run station retrain --recipe {recipe.name}"
    if not ev:
        raise StationError(
            f"{detector} model {version} has no shadow evaluation in the database (only "
            "candidates of station retrain have one)",
            hint=f"{fix}, then promote its candidate",
        )
    judged_against = ev.get("live", {}).get(detector)
    if judged_against != current:
        raise StationError(
            f"{version} was judged against {detector} {judged_against}, but {current} is live now",
            hint=f"{fix} to judge a candidate against the live model",
        )
    ok, why = not_worse_on_defects(ev)
    cand = str(info.get("candidate") or candidate_id(ev.get("candidate", {})))
    shadow = shadow_evidence(db, recipe.name, detector, version)
    if ok and shadow["missed_by_candidate_only"]:
        ok = False
        missed = ", ".join(f"p{s}" for s in shadow["missed_by_candidate_only"])
        why = f"in shadow mode it passed confirmed defects the live model rejected ({missed})"
    elif ok and not shadow["parts"]:  # shadow mode is optional: said, never passed silently
        why += f"; no shadow verdicts for {version} (shadow mode did not run it)"
    elif ok and not shadow["confirmed_defects"]:
        why += f"; shadow mode judged {shadow['parts']} parts, none a reviewed confirmed defect"
    if not ok:
        raise StationError(
            f"not promoting {version}: it is worse on confirmed defects: {why}",
            hint="keep the live model; review more parts or retrain",
        )
    cost = false_reject_cost(ev, recipe.decision.false_reject_budget)
    if cost and not accept_false_rejects:
        raise StationError(
            f"not promoting {version} unasked: {cost}",
            hint="keep the live model, or promote again with --accept-false-rejects if the "
            "line can carry that rate",
        )
    if cost:
        why += f"; false-reject cost accepted: {cost}"
    compact = {k: v for k, v in ev.items() if k != "per_part"}
    return {"shadow_evaluation": compact, "shadow_mode": shadow, "rule": why}, cand, why


def _fitting_calibration(recipe: Recipe) -> tuple[tuple[Path, dict[str, Any]] | None, str]:
    """The newest candidate calibration that station inspect will accept for the live models
    (the live calibration's own check), else None and why the newest made for them does not."""
    from station.calibration.store import calibration_mismatch

    versions = live_versions(recipe)
    folder = candidates_dir(recipe)
    fits, stale = [], []
    for path in sorted(folder.glob(f"{recipe.name}-*.yaml")) if folder.is_dir() else []:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("model_versions"), dict):
            continue
        if not isinstance(doc.get("thresholds"), dict):
            continue
        got = {str(k): str(v) for k, v in doc["model_versions"].items()}
        # no camera model: sheet_map recipes are never retrained
        why = calibration_mismatch(doc, recipe, versions, None)
        if not why:
            fits.append((str(doc.get("created_at")), path, doc))
        elif got == versions:  # made for these models, not for today's decision rule
            stale.append((str(doc.get("created_at")), path, "; ".join(why)))
    if fits:
        _, src, doc = max(fits)
        return (src, doc), ""
    if stale:
        _, src, why = max(stale)
        return None, f"the candidate's calibration {src.name} does not fit: {why}"
    return None, "no calibration was made for exactly the live models"


def _install_calibration(recipe: Recipe, db: Database, by: str) -> tuple[Path | None, str]:
    """The candidate calibration made for exactly the live models and the recipe's decision
    rule, as the live calibration; (None, why) when there is none."""
    from station.storage.models import Calibration

    found, why = _fitting_calibration(recipe)
    if found is None:
        return None, why
    src, doc = found
    with db.session() as s:
        row = Calibration(
            recipe=recipe.name,
            created_at=datetime.fromisoformat(str(doc["created_at"])),
            policy=str((doc.get("policy") or {}).get("name", "")),
            source=str(doc.get("source", "capture")),
            thresholds=dict(doc["thresholds"]),
            rates={"counts": doc.get("counts"), "combined": doc.get("combined")},
            model_versions=dict(doc["model_versions"]),
            data_sha256=str(doc.get("data_sha256", "")),
            file_path=str(src),
        )
        s.add(row)
        s.flush()
        doc["id"] = int(row.id)
        doc["promoted"] = {"by": by, "at": datetime.now(UTC).isoformat(), "from": str(src)}
        text = "# Promoted candidate calibration (station models promote); do not edit by hand.\n"
        text += yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        history = recipe.calibration_path.parent / "history" / f"{recipe.name}-{stamp}.yaml"
        try:  # both files or neither, and no row without them (the session rolls back)
            atomic_write_all({history: text.encode(), recipe.calibration_path: text.encode()})
        except OSError as exc:
            raise StationError(
                f"the model is live, but its calibration {src.name} was not installed as "
                f"{recipe.calibration_path}: {exc.strerror or exc}",
                hint=f"free disk space, then station calibrate-threshold --recipe {recipe.name} "
                "(inspection refuses the old calibration for the new model meanwhile)",
            ) from None
    return recipe.calibration_path, ""


def _add_training_shots(
    recipe: Recipe, db: Database, detector: str, version: str
) -> tuple[int, dict[str, int]]:
    """Copy the reviewed shots the candidate learnt from into the recipe's good training
    data, so that a later `station train` keeps them: only parts that still qualify under
    the recipe's rule now (a review since the retrain may have confirmed a defect).
    (shots copied, reason -> parts left out)."""
    from station.retrain.reviews import reviewed_parts, select_false_rejects

    row = model_version(db, recipe.name, detector, version)
    seqs = set(((row.metrics or {}).get("retrain") or {}).get("parts", [])) if row else set()
    parts = [p for p in reviewed_parts(recipe, db) if p.sequence in seqs]
    sel = select_false_rejects(recipe, parts)  # the rule retrain used, on today's reviews
    left_out = dict(sel.skipped)  # every part here has a "false reject", so each is counted
    if len(parts) < len(seqs):
        left_out["no longer in the database"] = len(seqs) - len(parts)
    dest = recipe.dataset_dir / "train" / "good"
    n = 0
    for part in sel.parts:
        for pose, src in part.shots:
            target = dest / f"review-p{part.sequence:06d}_{pose}{src.suffix}"
            if src.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
                n += 1
    return n, left_out


def promote(
    recipe: Recipe, db: Database, detector: str, version: str, by: str, note: str = "",
    accept_false_rejects: bool = False,
) -> Promoted:
    if not by.strip():
        raise StationError("--by must name who promotes", hint="e.g. --by 'A. Supervisor'")
    if detector not in [d.name for d in recipe.detectors]:
        raise StationError(
            f"recipe {recipe.name} has no detector {detector!r}",
            hint="pick one of: " + ", ".join(d.name for d in recipe.detectors),
        )
    if not version.startswith(f"{detector}-"):
        raise StationError(
            f"{version} is not a {detector} model version (they start {detector}-)",
            hint=f"station models list --recipe {recipe.name} lists them",
        )
    src = find_artifact(recipe, detector, version)
    current = latest_artifact(recipe, detector).stem  # named after its version
    if current == version:
        raise StationError(f"{detector} {version} is already live")
    evidence, _, why = _evidence(recipe, db, detector, version, current, accept_false_rejects)
    write_live(recipe, detector, current)  # pin the old model while the file moves
    dest = artifact_path(recipe, detector, version)
    if src == candidate_path(recipe, detector, version):
        os.replace(src, dest)
        rel = os.path.relpath(dest, resolve(recipe.storage.data_dir))
        update_model_version(db, recipe.name, detector, version, artifact_path=Path(rel).as_posix())
    pid = record_promotion(db, recipe.name, detector, current, version, by.strip(), evidence, note)
    write_live(recipe, detector, version)
    row = model_version(db, recipe.name, detector, version)
    if row is not None:
        metrics = dict(row.metrics or {})
        metrics["role"] = "live"
        update_model_version(db, recipe.name, detector, version, metrics=metrics)
    cal, cal_note = _install_calibration(recipe, db, by.strip())
    added, left_out = _add_training_shots(recipe, db, detector, version)
    return Promoted(pid, detector, current, version, why, cal, added, left_out, cal_note)
