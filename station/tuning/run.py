"""The tune loop: candidates in order until the time budget is spent, each fitted, scored and
journalled; then the ensemble of the two best; then the candidates the choice is made among
timed again in turns (`retime`); then the ranking and the files.

The budget counts from the first candidate (reading images and drawing defects come before).
A candidate starts only while budget is left; the one running when it runs out finishes.
A candidate that fails with an expected error (a DetectorError: settings that do not fit the
images, ...) or gives non-finite scores is journalled as failed and the loop goes on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from station.detectors.base import Detector, ProgressFn
from station.detectors.engine import CountFn
from station.detectors.ensemble import MIN_HELD_OUT
from station.errors import StationError
from station.files import atomic_write
from station.recipe import Recipe
from station.tuning.candidates import (
    ENSEMBLE,
    Candidate,
    ensemble_candidate,
    ensemble_val_fraction,
    with_size,
)
from station.tuning.data import TuneData
from station.tuning.evaluate import (
    fit_ensemble,
    fit_single,
    load_candidate,
    metrics,
    score,
    throughput,
)
from station.tuning.journal import Journal
from station.tuning.report import (
    AUROC_MARGIN,
    near_best,
    rank,
    variant_text,
    write_histogram,
    write_report,
)

# Timed passes over the scoring set added to each candidate the choice is made among, in
# turns; its fastest pass counts. One pass each (while it was scored) left the order of
# near-equal candidates to whatever else the machine did at the time (docs/tune.md).
RETIME_PASSES = 2


@dataclass
class Hooks:
    """What the caller shows: a line, a candidate starting and finishing, progress."""

    say: Callable[[str], None] = lambda _line: None  # plain text, not markup
    started: Callable[[Candidate], None] = lambda _c: None
    finished: Callable[[dict[str, Any]], None] = lambda _r: None
    fit_progress: Callable[[Candidate], ProgressFn | None] = lambda _c: None
    score_progress: Callable[[Candidate], CountFn | None] = lambda _c: None


@dataclass
class Plan:
    """One tune run's inputs."""

    recipe: Recipe
    data: TuneData
    singles: list[Candidate]
    ensemble: bool  # whether the ensemble slot runs
    budget_s: float
    out: Path
    choose_on: str = "synthetic"
    device: str | None = None  # --device: overrides the entries' device while tuning
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, why) not run
    failed: list[tuple[str, str]] = field(default_factory=list)


def model_path(out: Path, cid: str) -> Path:
    return out / "models" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", cid).strip("_") + ".pt")


def _identity(c: Candidate) -> dict[str, Any]:
    """What every journal record says of its candidate."""
    size = list(c.size) if c.size else None
    return {"id": c.id, "entry": c.entry, "members": c.members, "size": size}


def _failed(c: Candidate, why: str) -> dict[str, Any]:
    return {**_identity(c), "status": "failed", "error": why}


def candidate_of(record: dict[str, Any]) -> Candidate:
    """A finished candidate's journal record as a Candidate (its entry and input size)."""
    size = record.get("size")
    return Candidate(record["id"], record["entry"], size=(size[0], size[1]) if size else None)


def run_one(
    plan: Plan,
    c: Candidate,
    journal: Journal,
    kept: dict[str, Detector],
    hooks: Hooks,
) -> dict[str, Any]:
    """Fit and score one candidate; its journal record (status done or failed)."""
    path = model_path(plan.out, c.id)
    rcp, data = with_size(plan.recipe, c.size), plan.data.resized(c.size)
    try:
        if c.members:
            members = [journal.records[m] for m in c.members]
            det, fit = fit_ensemble(
                c, members, kept, rcp, data, path, hooks.fit_progress(c), plan.device
            )
        else:
            det, fit = fit_single(rcp, c, data, path, hooks.fit_progress(c), plan.device)
        scores, speed = score(rcp, c.id, det, data, hooks.score_progress(c))
    except StationError as exc:
        return _failed(c, exc.message)
    every = np.asarray([v for part in scores.values() for v in part], np.float64)
    if not np.all(np.isfinite(every)):
        return _failed(c, "non-finite image scores")
    kept[c.id] = det
    return {
        **_identity(c),
        "status": "done",
        **metrics(scores, plan.data.synthetic_kinds),
        "throughput": speed,
        "fit": fit,
        "scores": scores,
    }


def _run(
    plan: Plan, c: Candidate, journal: Journal, kept: dict[str, Detector], hooks: Hooks, t0: float
) -> None:
    """One candidate if it is not done yet and budget is left."""
    if journal.records.get(c.id, {}).get("status") == "done":  # a failed one is tried again
        return
    if time.monotonic() - t0 >= plan.budget_s:
        plan.skipped.append((c.id, "time budget spent"))
        return
    hooks.started(c)
    record = run_one(plan, c, journal, kept, hooks)
    journal.add(record)
    hooks.finished(record)


def _run_ensemble(
    plan: Plan, journal: Journal, kept: dict[str, Detector], hooks: Hooks, t0: float
) -> None:
    """The ensemble of the two best single candidates finished (this run or before) that run
    at one input size: the best, and the best of those at its size."""
    done = [r for r in journal.records.values() if r["entry"]["name"] != ENSEMBLE]
    singles = rank(done, plan.choose_on)  # not an ensemble itself (the recipe's own may be)
    best = [r for r in singles if r.get("size") == singles[0].get("size")][:2] if singles else []
    if len(best) < 2:
        plan.skipped.append((ENSEMBLE, "needs two finished single candidates of one input size"))
        return
    n_fit = int(best[0]["fit"].get("n_fit_units") or 0)
    if n_fit < 2 * MIN_HELD_OUT:
        plan.skipped.append((ENSEMBLE, f"{n_fit} fit images: too few to standardise members"))
        return
    members = [candidate_of(r) for r in best]
    device = str(members[0].entry.get("device", "auto"))
    c = ensemble_candidate(members, device, ensemble_val_fraction(n_fit))
    _run(plan, c, journal, kept, hooks, t0)


def retime(plan: Plan, journal: Journal, kept: dict[str, Detector], hooks: Hooks) -> None:
    """Time each candidate within AUROC_MARGIN of the best RETIME_PASSES more times, in turns
    (forward, then backward), and journal the passes: its throughput becomes its fastest pass.
    Candidates timed so before (a resumed run) are not timed again."""
    near = near_best(list(journal.records.values()), plan.choose_on)
    todo = [candidate_of(r) for r in near if not r.get("throughput_passes")]
    if len(near) < 2 or not todo:
        return
    try:
        dets = {c.id: load_candidate(journal.records[c.id], journal.records, kept, plan.device)
                for c in todo}  # fmt: skip
    except (StationError, OSError) as exc:
        hooks.say(f"not timed again (each candidate keeps its one pass): {exc}")
        return
    hooks.say(
        f"timing the {len(todo)} candidate(s) within {AUROC_MARGIN} of the best again: "
        f"{RETIME_PASSES} passes each, in turns; the fastest pass counts"
    )
    inputs = {c.id: (with_size(plan.recipe, c.size), plan.data.resized(c.size)) for c in todo}
    passes: dict[str, list[float]] = {c.id: [] for c in todo}
    for k in range(RETIME_PASSES):
        for c in todo if k % 2 == 0 else todo[::-1]:
            rcp, data = inputs[c.id]
            passes[c.id].append(throughput(rcp, c.id, dets[c.id], data, hooks.score_progress(c)))
    for cid, extra in passes.items():
        journal.add_passes(cid, extra)


def run_all(plan: Plan, journal: Journal, hooks: Hooks) -> list[dict[str, Any]]:
    """Every candidate in order within the budget, then the ensemble, then `retime`; the
    ranking."""
    kept: dict[str, Detector] = {}
    t0 = time.monotonic()
    for c in plan.singles:
        _run(plan, c, journal, kept, hooks, t0)
    if plan.ensemble:
        _run_ensemble(plan, journal, kept, hooks, t0)
    retime(plan, journal, kept, hooks)
    plan.failed = [
        (r["id"], r.get("error", ""))
        for r in journal.records.values()
        if r.get("status") == "failed"
    ]
    return rank(list(journal.records.values()), plan.choose_on)


def write_outputs(
    plan: Plan, ranked: list[dict[str, Any]], facts: dict[str, Any], write_recipe: bool
) -> dict[str, Path]:
    """tune.md, the histogram PNG and the recipe variant(s); the paths written. `facts` holds
    the header, the guess line, the recipe's own candidate, the choice's gain over it
    (`report.own_gain`) and the plan's skipped and failed candidates (the CLI's console line
    reads the same dict)."""
    written: dict[str, Path] = {}
    rcp = plan.recipe
    text, variant = "", plan.out / f"{rcp.name}-tuned.yaml"
    if ranked:
        best = ranked[0]
        note = f"chosen {best['id']} on {plan.choose_on} defects; report {plan.out / 'tune.md'}"
        if facts.get("guess"):
            note += " (a guess: too few images to choose)"
        gain = facts.get("gain")
        if gain is not None:
            note += f"; its gain over the recipe's own {facts['own']}: {gain.describe()}"
        text = variant_text(rcp, best, note)
        written["histogram"] = write_histogram(plan.out / "chosen_histogram.png", best)
    facts = {
        **facts,
        "variant": variant if text else "",
        "choose_on": plan.choose_on,
        "budget_min": plan.budget_s / 60,
    }
    written["report"] = write_report(plan.out, facts, ranked)
    if text:  # the variants last: a new one never stands beside an old report
        atomic_write(variant, text.encode())
        written["variant"] = variant
        if write_recipe:
            beside = Path(rcp.source).resolve().parent / f"{rcp.name}-tuned.yaml"
            atomic_write(beside, text.encode())
            written["recipe"] = beside
    return written
