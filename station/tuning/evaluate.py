"""Fit one candidate on the fit images and score it on held-out good and defect images.

Fitting is the station's own training path (`station.detectors.training.train_and_save`: the
recipe's tiling, the detector's own validation split), the model saved under the tune folder.
Scoring is the station's scoring engine (`ScoringEngine`), so tiles or whole shots follow the
recipe. An ensemble reuses its members' fitted models when their settings match what the
ensemble would build (same detector, params, validation split and seed), and fits them
afresh otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from station.calibration.operating_point import operating_points
from station.calibration.policies import Policy
from station.calibration.roc import auroc
from station.detectors.artifact import load_artifact
from station.detectors.base import Detector, ProgressFn
from station.detectors.engine import CountFn, ScoringEngine
from station.detectors.ensemble import Ensemble
from station.detectors.registry import create_detector, detector_kwargs
from station.detectors.training import train_and_save
from station.errors import DetectorError
from station.recipe import DetectorConfig, Recipe
from station.tuning.candidates import Candidate
from station.tuning.data import TuneData

SCORE_BATCH = 8  # images (tiled: tiles) per scoring batch


def metrics(scores: dict[str, list[float]], kinds: Sequence[str]) -> dict[str, Any]:
    """Synthetic and real AUROC, per-kind AUROC and the false-reject rate at 100 % recall on the
    synthetic defects, from a candidate's score lists."""
    good, syn, real = scores["good"], scores["synthetic"], scores["real"]
    per_kind = {
        k: auroc(good, [s for s, kk in zip(syn, kinds, strict=True) if kk == k])
        for k in dict.fromkeys(kinds)
    }
    labels = np.r_[np.zeros(len(good)), np.ones(len(syn))]
    point = operating_points(np.r_[good, syn], labels, Policy("zero_miss"))["recall_100"]
    return {
        "auroc": auroc(good, syn),
        "real_auroc": auroc(good, real),
        "per_kind": per_kind,
        "fr100": point.as_dict(),
    }


def fit_single(
    recipe: Recipe,
    c: Candidate,
    data: TuneData,
    model_path: Path,
    progress: ProgressFn | None,
    device: str | None = None,
) -> tuple[Detector, dict[str, Any]]:
    """Train candidate `c` on the fit images (on `device` when given, else the entry's);
    (detector, what the journal keeps of the fit)."""
    trained = train_and_save(
        recipe,
        c.config(),
        data.fit_files,
        data.fit_images,
        out_path=model_path,
        device=device,
        progress=progress,
        train_hash=data.train_hash,
    )
    fit = {
        "fit_s": round(trained.report.seconds, 3),
        "val_good_scores": [float(v) for v in trained.report.good_scores],
        "n_fit_units": int(
            (trained.meta["tiling"] or {}).get("n_train_tiles") or len(data.fit_images)
        ),
        "model": str(model_path),
    }
    return trained.detector, fit


def _member(done: dict[str, Detector], record: dict[str, Any], device: str | None) -> Detector:
    """A member's fitted detector: kept from this run, else loaded from its saved model."""
    cid = record["id"]
    if cid in done:
        return done[cid]
    return load_artifact(record["fit"]["model"], device=device).detector


def assemble_ensemble(
    entry: DetectorConfig,
    members: Sequence[dict[str, Any]],
    done: dict[str, Detector],
    device: str | None = None,
) -> Ensemble:
    """The ensemble `entry` from its members' journal records: their fitted models (kept in
    `done`, else loaded) standardised by their held-out good scores, as `Ensemble.fit` would
    leave it. DetectorError when a member's settings differ from what the ensemble builds."""
    ens = create_detector(entry.name, **detector_kwargs(entry, device))
    assert isinstance(ens, Ensemble)
    fitted = [_member(done, m, device) for m in members]
    ens.assemble(fitted, [m["fit"]["val_good_scores"] for m in members])
    return ens


def fit_ensemble(
    c: Candidate,
    members: Sequence[dict[str, Any]],
    done: dict[str, Detector],
    recipe: Recipe,
    data: TuneData,
    model_path: Path,
    progress: ProgressFn | None,
    device: str | None = None,
) -> tuple[Detector, dict[str, Any]]:
    """The ensemble of `members` (their journal records): their fitted models standardised by
    their own held-out good scores, as `Ensemble.fit` would; refitted when a member's
    settings differ from what the ensemble builds."""
    try:
        ens: Detector = assemble_ensemble(c.config(), members, done, device)
    except (DetectorError, OSError) as exc:
        ens, fit = fit_single(recipe, c, data, model_path, progress, device)
        return ens, {**fit, "members_reused": False, "note": f"members refitted: {exc}"}
    fit_s = sum(float(m["fit"]["fit_s"]) for m in members)
    return ens, {"fit_s": round(fit_s, 3), "members_reused": True, "model": None}


def _timed_pass(
    recipe: Recipe, name: str, detector: Detector, data: TuneData, progress: CountFn | None
) -> tuple[list[float], float]:
    """The scoring set's scores through the scoring engine, and images per second of the
    detector's predict time over the whole set, after one untimed batch that pays the one-off
    costs (thread pools, kernels for the shapes)."""
    engine = ScoringEngine({name: detector}, recipe.preprocess, batch_size=SCORE_BATCH)
    images = data.scoring_set()
    engine.score(images[:SCORE_BATCH], keep_maps=False)
    t0 = time.perf_counter()
    result = engine.score(images, keep_maps=False, progress=progress)[name]
    seconds = result.latency_ms / 1000.0 or (time.perf_counter() - t0)
    speed = len(images) / seconds if seconds > 0 else float("nan")
    return [float(v) for v in result.scores], speed


def score(
    recipe: Recipe, name: str, detector: Detector, data: TuneData, progress: CountFn | None
) -> tuple[dict[str, list[float]], float]:
    """Scores of held-out good, synthetic and real images, and the throughput (`_timed_pass`)."""
    s, speed = _timed_pass(recipe, name, detector, data, progress)
    n_good, n_syn = len(data.good), len(data.synthetic)
    scores = {
        "good": s[:n_good],
        "synthetic": s[n_good : n_good + n_syn],
        "real": s[n_good + n_syn :],
    }
    return scores, speed


def throughput(
    recipe: Recipe, name: str, detector: Detector, data: TuneData, progress: CountFn | None
) -> float:
    """One more timed pass over the scoring set, timed as `score` times it (images per s)."""
    return _timed_pass(recipe, name, detector, data, progress)[1]


def load_candidate(
    record: dict[str, Any],
    records: dict[str, dict[str, Any]],
    done: dict[str, Detector],
    device: str | None = None,
) -> Detector:
    """A finished candidate's fitted detector from its journal record: kept from this run
    (`done`), else loaded from its saved model; an ensemble that reused its members' models is
    assembled from theirs (`records`: the journal's records by id)."""
    if record["id"] in done or record["fit"].get("model"):
        return _member(done, record, device)
    members = [records[m] for m in record["members"]]
    return assemble_ensemble(DetectorConfig(**record["entry"]), members, done, device)
