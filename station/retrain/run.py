"""`station retrain` end to end: select reviewed false rejects, train a candidate per detector
on the good data plus their shots, calibrate it on the live calibration's policy, and judge it
against the live models on the reviewed history.

The candidate's files go to `<models_dir>/<detector>/candidates/` (never picked as live), its
calibration to `calibration/candidates/`, its ModelVersion rows are marked `role: candidate`
with the evaluation, and a Markdown report goes to `<data>/<recipe>/retrain/`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from station.calibration.bootstrap import clopper_pearson
from station.detectors.artifact import candidate_path
from station.errors import StationError
from station.files import atomic_write, writing
from station.paths import resolve
from station.retrain.candidates import (
    candidate_id,
    live_versions,
    save_candidate_calibration,
)
from station.retrain.evaluate import evidence, not_worse_on_defects
from station.retrain.reviews import complete, reviewed_parts, select_false_rejects
from station.storage.models import ReviewLabel, Verdict
from station.storage.promotions import record_trained_models

if TYPE_CHECKING:
    from station.detectors.training import TrainedModel
    from station.recipe import Recipe
    from station.retrain.reviews import Selection
    from station.storage.db import Database

ProgressFn = Callable[[str, int, int], None]


@dataclass
class RetrainResult:
    selection: Selection
    trained: list[TrainedModel]
    versions: dict[str, str]  # the candidate set (detector -> version)
    live: dict[str, str]
    calibration_path: Path
    thresholds: dict[str, float]
    calibration_rates: dict[str, Any]  # the candidate calibration's combined rates
    evidence: dict[str, Any]
    verdict: tuple[bool, str]  # not worse on confirmed defects, and why
    report_path: Path
    n_base_images: int
    extra_files: list[Path] = field(default_factory=list)
    method: str = ""  # "extended live bank" or "trained from scratch"

    @property
    def candidate(self) -> str:
        return candidate_id(self.versions)


def live_policy(recipe: Recipe) -> Any:
    """The policy of the live calibration (what the candidate is calibrated on), else the
    recipe's."""
    from station.calibration.policies import Policy, resolve_policy
    from station.calibration.store import load_active_calibration

    active = load_active_calibration(recipe, live_versions(recipe))
    doc = yaml.safe_load(active.path.read_text(encoding="utf-8"))
    pol = (doc or {}).get("policy")
    if isinstance(pol, dict) and pol.get("name"):
        return Policy(**pol), active
    return resolve_policy(recipe.decision, None, {}), active


def _train(
    recipe: Recipe,
    files: list[Path],
    device: str | None,
    progress: ProgressFn | None,
) -> list[TrainedModel]:
    """One candidate per recipe detector, trained afresh on `files`, saved under candidates/."""
    from station.detectors.engine import load_images
    from station.detectors.training import data_sha256, train_and_save

    images = load_images(files, recipe.preprocess)
    train_hash = data_sha256(files)
    out = []
    for det in recipe.detectors:
        tmp = candidate_path(recipe, det.name, f"training-{secrets.token_hex(6)}")
        cb = (lambda s, d, n, _p=det.name: progress(f"{_p} {s}", d, n)) if progress else None
        t = train_and_save(recipe, det, files, images, tmp, device, cb, train_hash)
        final = candidate_path(recipe, det.name, t.version)
        os.replace(tmp, final)  # the version is known once trained
        t.path = final
        out.append(t)
    return out


def _extend(
    recipe: Recipe,
    base: list[Path],
    extra: list[Path],
    device: str | None,
    progress: ProgressFn | None,
) -> list[TrainedModel] | None:
    """One candidate per detector: the live PatchCore model with its bank extended by the
    reviewed shots (station.retrain.bank). None when a live model is not PatchCore run by
    torch (then `_train` retrains from scratch)."""
    import numpy as np

    from station.detectors.artifact import (
        latest_artifact,
        load_artifact,
        new_version,
        save_artifact,
    )
    from station.detectors.common import split_validation
    from station.detectors.engine import load_images, training_tiles
    from station.detectors.patchcore import PatchCore
    from station.detectors.training import TrainedModel, data_sha256, score_stats
    from station.detectors.types import FitReport
    from station.retrain.bank import extend_bank

    if any(d.runtime != "torch" for d in recipe.detectors):
        return None
    loaded = {
        d.name: load_artifact(latest_artifact(recipe, d.name), recipe=recipe, device=device)
        for d in recipe.detectors
    }
    if not all(isinstance(m.detector, PatchCore) for m in loaded.values()):
        return None
    fitted = _fitted_files(base, [m.meta for m in loaded.values()])
    if fitted is None:  # the live model's own training images are gone: train afresh
        return None
    base_images = load_images(fitted, recipe.preprocess)
    extra_images = load_images(extra, recipe.preprocess)
    tiling = recipe.preprocess.tiling
    train_hash = data_sha256([*base, *extra])
    out = []
    for name, live in loaded.items():
        det = live.detector
        assert isinstance(det, PatchCore)
        seed = int(det.config().get("seed", 0) or 0)
        fit_base, fit_extra = base_images, extra_images
        if tiling.enabled:
            fit_base = list(training_tiles(base_images, recipe.preprocess, seed))
            fit_extra = list(training_tiles(extra_images, recipe.preprocess, seed))
        cb = (lambda s, d, n, _p=name: progress(f"{_p} {s}", d, n)) if progress else None
        info = extend_bank(det, fit_base, fit_extra, cb)
        _, val = split_validation(len(fit_base), det.config()["val_fraction"], seed)
        good = det.predict(np.stack([fit_base[i] for i in val])).scores if val else []
        version = new_version(name)
        meta = dict(live.meta)
        meta.update(
            version=version,
            recipe_sha256=recipe.sha256,
            config=det.config(),
            train_data_sha256=train_hash,
            n_train_images=len(base) + len(extra),
            good_scores=score_stats([float(s) for s in good]),
            fit={**dict(meta.get("fit") or {}), **info, "extended_from": live.version},
            fit_seconds=info["extend_seconds"],
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        path = candidate_path(recipe, name, version)
        sha = save_artifact(det, path, meta)
        report = FitReport(len(base) + len(extra), info["extend_seconds"], list(good), info)
        out.append(TrainedModel(det, report, version, path, sha, meta))
    return out


def _fitted_files(base: list[Path], metas: list[dict[str, Any]]) -> list[Path] | None:
    """The files each live model was fit on, in its fit's order (the bank's coverage is
    measured on that fit's own split, whatever train/good has gained since, e.g. a promotion's
    review shots); None when some are gone or the models differ. Models that did not record
    them: `base` as it is."""
    lists = {tuple(m.get("fit_files_sha256") or ()) for m in metas}
    if lists == {()}:
        return base
    if len(lists) != 1:
        return None
    from station.files import file_sha256

    by_sha = {file_sha256(p): p for p in base}
    (want,) = lists
    return [by_sha[h] for h in want] if all(h in by_sha for h in want) else None


def _record(
    recipe: Recipe, db: Database, trained: list[TrainedModel], info: dict[str, Any]
) -> None:
    root = resolve(recipe.storage.data_dir)
    record_trained_models(db, recipe.name, root, trained, {"role": "candidate", "retrain": info})


def _check_rule(recipe: Recipe) -> None:
    if recipe.decision.combine_poses == "sheet_map":
        raise StationError(
            "station retrain judges parts on their shot scores; combine_poses sheet_map "
            "decides on the sheet map, which it does not rebuild",
            hint="retrain with decision.combine_poses max or mean",
        )


def _check_selection(recipe: Recipe, sel: Selection) -> None:
    if sel.parts:
        return
    why = "; ".join(f"{n} part(s): {r}" for r, n in sel.skipped.items()) or "no reviews"
    rule = recipe.retrain
    raise StationError(
        f"no reviewed part of recipe {recipe.name} qualifies for retraining ({why})",
        hint=f"a rejected part needs {rule.agreeing_reviews} agreeing 'false reject' reviews"
        + (f" or one by {', '.join(rule.supervisors)}" if rule.supervisors else "")
        + " (recipe retrain:)",
    )


def _rescore(
    recipe: Recipe, parts: list[Any], candidate: dict[str, Any]
) -> tuple[dict[str, str], list[Any], list[Any]]:
    """(live model versions, live scores, candidate scores) of the reviewed `parts`."""
    from station.detectors.engine import load_models
    from station.retrain.evaluate import score_parts

    live_models = load_models(recipe)
    live = {n: str(m.version) for n, m in live_models.items()}
    return live, score_parts(recipe, parts, live_models), score_parts(recipe, parts, candidate)


def _keep_confirmed_rejected(
    recipe: Recipe,
    parts: list[Any],
    live: tuple[list[Any], Any],
    cand_scores: list[Any],
    result: Any,
    data: Any,
) -> tuple[Any, dict[str, Any]]:
    """The candidate calibration `result`, lowered when needed so that every confirmed defect
    the live model (scores, thresholds) rejects is rejected too; and the record of it."""
    from station.decision import decide
    from station.retrain.calibrate import constraint_record, needed_scale, rescaled

    live_scores, live_thresholds = live
    keep: list[tuple[int, float]] = []
    for p, ls, cs in zip(parts, live_scores, cand_scores, strict=True):
        if p.label != ReviewLabel.DEFECT_CONFIRMED:
            continue
        poses = [n for n, _ in p.shots]
        live_says = decide(ls, live_thresholds, recipe.decision, poses)
        ps = decide(cs, result.thresholds, recipe.decision, poses).part_score
        if live_says.verdict == Verdict.FAIL and ps is not None:  # a fault has no score
            keep.append((p.sequence, float(ps)))
    scale = needed_scale([ps for _, ps in keep])
    before = result.combined.choice
    if scale < 1.0:
        result = rescaled(result, data, scale)
    record = constraint_record(
        [s for s, _ in keep], [ps for _, ps in keep], scale, before, result.combined.choice
    )
    return result, record


def _candidate(
    recipe: Recipe,
    base: list[Path],
    extra: list[Path],
    device: str | None,
    full: bool,
    progress: ProgressFn | None,
) -> tuple[list[Any], str]:
    """The candidate's trained models and how they were made: PatchCore's live bank extended
    by the reviewed shots (`_extend`), or, with `full` or another detector, trained from
    scratch on the good data plus the shots."""
    trained = None if full else _extend(recipe, base, extra, device, progress)
    if trained is not None:
        return trained, "extended live bank"
    return _train(recipe, [*base, *extra], device, progress), "trained from scratch"


def run_retrain(
    recipe: Recipe,
    db: Database,
    *,
    dataset: Path | None = None,
    device: str | None = None,
    resamples: int = 2000,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> RetrainResult:
    """Build (`_candidate`), calibrate (the live policy on the labelled captures, then
    `_keep_confirmed_rejected`) and judge a candidate model set from the recipe's reviews."""
    from station.calibration.run import calibrate_recipe, labelled_folder
    from station.calibration.scores import score_folder
    from station.datasets import training_images
    from station.retrain.candidates import load_versions
    from station.retrain.evaluate import judge_scores

    _check_rule(recipe)
    policy, active = live_policy(recipe)  # refused now when the live models lack thresholds
    labelled = labelled_folder(recipe, dataset)
    history = reviewed_parts(recipe, db)
    sel = select_false_rejects(recipe, history)
    _check_selection(recipe, sel)
    base = training_images(recipe.dataset_dir)
    extra = [f for p in sel.parts for _, f in p.shots]
    trained, method = _candidate(recipe, base, extra, device, full, progress)
    versions = {t.meta["detector"]: t.version for t in trained}
    models = load_versions(recipe, versions)  # as inspection loads them (checks included)

    if progress:
        progress("calibrating", 0, 1)
    data = score_folder(recipe, labelled, "capture", models=models)
    result = calibrate_recipe(recipe, data, policy, resamples=resamples, oob_resamples=0)

    if progress:
        progress("shadow evaluation", 0, 1)
    judged_parts = [p for p in history if complete(recipe, p)]
    live, live_scores, cand_scores = _rescore(recipe, judged_parts, models)
    result, constraint = _keep_confirmed_rejected(
        recipe, judged_parts, (live_scores, active.thresholds), cand_scores, result, data
    )
    cal_path, cal_doc = save_candidate_calibration(
        recipe, result, str(labelled), {"confirmed_defects": constraint}
    )
    judged = judge_scores(
        recipe,
        judged_parts,
        (live_scores, dict(active.thresholds)),
        (cand_scores, dict(result.thresholds)),
        {p.part_id for p in sel.parts},
    )
    ev = evidence(judged, live, versions)
    ev.update(
        calibration={"path": str(cal_path), "combined": cal_doc["combined"]},
        live_thresholds=dict(active.thresholds),
        candidate_thresholds=dict(result.thresholds),
        confirmed_defects_constraint=constraint,
        method=method,
    )
    verdict = not_worse_on_defects(ev)
    info = {
        "candidate": candidate_id(versions),
        "method": method,
        "parts": [p.sequence for p in sel.parts],
        "extra_shots": len(extra),
        "base_images": len(base),
        "rule": recipe.retrain.model_dump(),
        "shadow_evaluation": ev,
    }  # fmt: skip
    _record(recipe, db, trained, info)
    res = RetrainResult(
        selection=sel, trained=trained, versions=versions, live=live, calibration_path=cal_path,
        thresholds=dict(result.thresholds), calibration_rates=dict(cal_doc["combined"]),
        evidence=ev, verdict=verdict, report_path=Path(), n_base_images=len(base),
        extra_files=extra, method=method,
    )  # fmt: skip
    res.report_path = write_report(recipe, res)
    return res


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "n/a (no parts)"
    lo, hi = r["ci"]
    return f"{r['count']}/{r['n']} = {r['rate']:.1%} [{lo:.1%}, {hi:.1%}]"


def report_rows(ev: dict[str, Any]) -> list[list[str]]:
    """(split, model, false rejects, misses) rows of the shadow evaluation."""
    names = {"all": "all reviewed", "held_out": "not trained on", "trained_on": "trained on"}
    rows = []
    for split, label in names.items():
        for which in ("live", "candidate"):
            r = ev["splits"][split][which]
            rows.append([label, which, _pct(r["false_rejects"]), _pct(r["misses"])])
    return rows


def constraint_line(ev: dict[str, Any]) -> str:
    """The confirmed-defect constraint of the candidate's thresholds, in words."""
    c = ev.get("confirmed_defects_constraint")
    if not c:
        return "no confirmed-defect constraint recorded"
    n = len(c["confirmed_defects"])
    fr0, fr1, n_good = c["labelled_false_rejects"]
    loo = c["leave_one_out_missed"]
    lo, hi = clopper_pearson(len(loo), n) if n else (0.0, 0.0)
    return (
        f"confirmed defects the live model rejects: {n}; the candidate's thresholds "
        + (
            f"were lowered to {c['scale']:.4f} x the policy's to reject them all "
            f"(in-sample: they chose it; labelled false rejects {fr0} -> {fr1} of {n_good})"
            if c["scale"] < 1.0
            else "reject them all at the policy's thresholds"
        )
        + (
            f"; out of sample (leave one out): {len(loo)}/{n} missed [{lo:.1%}, {hi:.1%}]"
            + (f" ({', '.join(f'p{s}' for s in loo)})" if loo else "")
            if n
            else ""
        )
    )


def write_report(recipe: Recipe, res: RetrainResult) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = recipe.data_dir / "retrain" / f"{stamp}.md"
    level = res.evidence["level"]
    lines = [
        f"# retrain of recipe {recipe.name}, {stamp}",
        "",
        f"- candidate: {res.candidate}",
        f"- live: {candidate_id(res.live)}",
        f"- trained on {res.n_base_images} good images + {len(res.extra_files)} shots of "
        f"{len(res.selection.parts)} reviewed false rejects (parts "
        + ", ".join(f"p{p.sequence}" for p in res.selection.parts)
        + ")",
        f"- candidate: {res.method}",
        f"- candidate calibration: {res.calibration_path} (thresholds {res.thresholds})",
        f"- {constraint_line(res.evidence)}",
        f"- promotion rule (not worse on confirmed defects): "
        f"{'met' if res.verdict[0] else 'NOT met'}: {res.verdict[1]}",
        "",
        f"| parts | model | false rejects ({level:.0%} CI) | misses ({level:.0%} CI) |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in report_rows(res.evidence)),
        "",
    ]
    if res.selection.skipped:
        lines.append("Parts with false-reject reviews left out:")
        lines += [f"- {n}: {why}" for why, n in res.selection.skipped.items()]
    with writing(path):  # whole or not at all
        atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path
