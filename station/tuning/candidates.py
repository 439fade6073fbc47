"""The detector configurations `station tune` tries: one list, cheapest first.

A candidate is a recipe detector entry (name, backbone, weights, device, params). PatchCore
candidates start from the recipe's own patchcore params when it has a patchcore entry (memory
bounds, coreset ratio) and change backbone, mirrored context, centring and neighbours; SimpleNet
and DFDA run at their defaults. The last candidate is an ensemble of the two best single
candidates finished so far (`ensemble_candidate`), built when its turn comes.

A candidate whose backbone weights are not installed is skipped, and said so: the station
never downloads weights nor falls back to random ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from station.detectors.backbones import find_weights
from station.detectors.ensemble import MIN_HELD_OUT
from station.errors import StationError
from station.recipe import DetectorConfig, Recipe

ENSEMBLE = "ensemble"
# (id, backbone, mirror_pad, center_features, num_neighbors), cheapest backbone first; the
# first is the shipped recipe's setting.
PATCHCORE_GRID: tuple[tuple[str, str, int, bool, int], ...] = (
    ("patchcore-lite0", "efficientnet_lite0", 32, True, 9),
    ("patchcore-lite0-pad0", "efficientnet_lite0", 0, True, 9),
    ("patchcore-lite0-nocenter", "efficientnet_lite0", 32, False, 9),
    ("patchcore-lite0-pad0-nocenter", "efficientnet_lite0", 0, False, 9),
    ("patchcore-lite0-k3", "efficientnet_lite0", 32, True, 3),
    ("patchcore-lite1", "efficientnet_lite1", 32, True, 9),
    ("patchcore-lite1-pad0-nocenter", "efficientnet_lite1", 0, False, 9),
    ("patchcore-lite2", "efficientnet_lite2", 32, True, 9),
    ("patchcore-lite2-pad0-nocenter", "efficientnet_lite2", 0, False, 9),
)
# Set on the ensemble, not on its members: single candidates must leave them at the
# detectors' defaults so the ensemble can reuse their fitted models.
SHARED = ("val_fraction", "seed")


@dataclass
class Candidate:
    """One configuration to try."""

    id: str
    entry: dict[str, Any]  # a recipe `detectors:` entry
    members: list[str] = field(default_factory=list)  # ensemble: the member candidates' ids

    @property
    def detector(self) -> str:
        return str(self.entry["name"])

    def config(self) -> DetectorConfig:
        return DetectorConfig(**self.entry)


def _entry(name: str, backbone: str, device: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "backbone": backbone,
        "weights": "auto",
        "device": device,
        "params": params,
    }


def _recipe_params(recipe: Recipe, name: str) -> dict[str, Any]:
    """The recipe's params for detector `name` (none when it has no such entry), without the
    settings the candidates vary or the ensemble shares."""
    varied = {"mirror_pad", "center_features", "num_neighbors", "layers", *SHARED}
    for d in recipe.detectors:
        if d.name == name:
            return {k: v for k, v in d.params.items() if k not in varied}
    return {}


def single_candidates(recipe: Recipe, device: str) -> list[Candidate]:
    """The single-detector candidates, cheapest first."""
    base = _recipe_params(recipe, "patchcore")
    out = [
        Candidate(
            cid,
            _entry(
                "patchcore",
                backbone,
                device,
                {**base, "mirror_pad": pad, "center_features": centre, "num_neighbors": k},
            ),
        )
        for cid, backbone, pad, centre, k in PATCHCORE_GRID
    ]
    out.append(Candidate("simplenet", _entry("simplenet", "efficientnet_lite0", device, {})))
    out.append(Candidate("dfda", _entry("dfda", "efficientnet_lite0", device, {})))
    return out


def backbones_of(c: Candidate) -> list[str]:
    """Every backbone the candidate loads (DFDA has a second one)."""
    names = [str(c.entry["backbone"])]
    if c.detector == "dfda":
        names.append(str(c.entry["params"].get("backbone2", "mobilenet_v2")))
    return names


def missing_weights(candidates: Iterable[Candidate]) -> dict[str, str]:
    """Backbone name -> why its weights are missing, for the candidates' backbones."""
    missing: dict[str, str] = {}
    for name in dict.fromkeys(b for c in candidates for b in backbones_of(c)):
        try:
            find_weights(name, "auto")
        except StationError as exc:
            missing[name] = exc.message
    return missing


def select(candidates: Sequence[Candidate], only: str | None) -> list[Candidate]:
    """The candidates `--only` keeps: a comma-separated list of detector names or candidate
    ids (`ensemble` keeps the ensemble slot). TuneError-free: the caller checks emptiness."""
    if not only:
        return list(candidates)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    return [c for c in candidates if c.id in wanted or c.detector in wanted]


def ensemble_val_fraction(n_fit_units: int) -> float | None:
    """The ensemble's val_fraction when the detectors' default (0.1) would hold out fewer than
    MIN_HELD_OUT of `n_fit_units` fit images (tiles), else None (the default: members reused)."""
    if math.floor(n_fit_units * 0.1 + 0.5) >= MIN_HELD_OUT or n_fit_units < 2 * MIN_HELD_OUT:
        return None
    return round(MIN_HELD_OUT / n_fit_units, 4)


def ensemble_candidate(
    members: Sequence[Candidate], device: str, val_fraction: float | None = None
) -> Candidate:
    """The ensemble of `members` (single candidates), standardised and averaged."""
    specs = [
        {"name": m.detector, "backbone": m.entry["backbone"], "params": dict(m.entry["params"])}
        for m in members
    ]
    params: dict[str, Any] = {"members": specs}
    if val_fraction is not None:  # too few fit images for the default: members refitted
        params["val_fraction"] = val_fraction
    entry = _entry(ENSEMBLE, str(members[0].entry["backbone"]), device, params)
    return Candidate(f"ensemble({'+'.join(m.id for m in members)})", entry, [m.id for m in members])


def known_ids(candidates: Sequence[Candidate]) -> str:
    return ", ".join([*(c.id for c in candidates), ENSEMBLE])
