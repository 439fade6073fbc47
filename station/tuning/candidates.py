"""The detector configurations `station tune` tries: one list, cheapest first, except that the
candidate which is the recipe's own detector (`recipe_own`) runs first. That is the grid row
its PatchCore entry matches, or else its first detector entry as it stands (`recipe-own`: an
ensemble, or a PatchCore with settings the grid does not vary), so the table always shows
what the recipe has beside what the tune tries.

A candidate is a recipe detector entry (name, backbone, weights, device, params) and, for an
input-size candidate, the `preprocess.size` it runs at. PatchCore candidates start from the
recipe's own PatchCore params (its patchcore entry, else the first PatchCore member of its
ensemble: memory bounds, coreset ratio) and
change backbone, feature layers, mirrored context, centring and neighbours; SimpleNet and DFDA
run at their defaults. A recipe that resizes whole shots also gets PatchCore at 0.75x and 1.25x
its input size (`input_sizes`); with tiles the input keeps the camera's pixels, the scale
the recipe's coverage was planned for, so there is no size to try. The last candidate is an
ensemble of the two best single candidates finished so far (`ensemble_candidate`), built when
its turn comes.

A candidate whose backbone weights are not installed is skipped, and said so: the station
never downloads weights nor falls back to random ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from station.detectors.backbones import default_layers, find_weights
from station.detectors.ensemble import MIN_HELD_OUT
from station.detectors.patchcore import PatchCoreConfig
from station.detectors.registry import config_problems, detector_kwargs
from station.errors import StationError
from station.geometry.coverage import check as coverage_check
from station.recipe import DetectorConfig, Recipe

ENSEMBLE = "ensemble"
OWN = "recipe-own"  # the recipe's own detector entry as it stands, when no grid row is it
LITE0 = "efficientnet_lite0"
# Feature layers of the EfficientNet-Lite backbones besides the default pair (blocks.2 and
# blocks.4: strides 8 and 16), as in the PatchCore paper's layer ablation: one pair a stage
# finer (strides 4 and 8: small faults, 4x the patches) and one coarser (16 and 32: context).
FINE_LAYERS = ("blocks.1", "blocks.2")
COARSE_LAYERS = ("blocks.4", "blocks.5")
# (id, backbone, mirror_pad, center_features, num_neighbors, layers or None for the
# backbone's default), cheapest backbone first; `patchcore-lite1` is the shipped recipe's.
PATCHCORE_GRID: tuple[tuple[str, str, int, bool, int, tuple[str, ...] | None], ...] = (
    ("patchcore-lite0", LITE0, 32, True, 9, None),
    ("patchcore-lite0-pad0", LITE0, 0, True, 9, None),
    ("patchcore-lite0-nocenter", LITE0, 32, False, 9, None),
    ("patchcore-lite0-pad0-nocenter", LITE0, 0, False, 9, None),
    ("patchcore-lite0-k3", LITE0, 32, True, 3, None),
    ("patchcore-lite0-coarse", LITE0, 32, True, 9, COARSE_LAYERS),
    ("patchcore-lite0-fine", LITE0, 32, True, 9, FINE_LAYERS),
    ("patchcore-lite1", "efficientnet_lite1", 32, True, 9, None),
    ("patchcore-lite1-pad0-nocenter", "efficientnet_lite1", 0, False, 9, None),
    ("patchcore-lite2", "efficientnet_lite2", 32, True, 9, None),
    ("patchcore-lite2-pad0-nocenter", "efficientnet_lite2", 0, False, 9, None),
)
# Input sizes tried for a recipe that resizes whole shots, as factors of its preprocess.size;
# sides are rounded to SIZE_STEP px (the coarsest feature stride of the default layers).
SIZE_FACTORS = (0.75, 1.25)
SIZE_STEP = 16
# Set on the ensemble, not on its members: single candidates must leave them at the
# detectors' defaults so the ensemble can reuse their fitted models.
SHARED = ("val_fraction", "seed")


@dataclass
class Candidate:
    """One configuration to try."""

    id: str
    entry: dict[str, Any]  # a recipe `detectors:` entry
    members: list[str] = field(default_factory=list)  # ensemble: the member candidates' ids
    size: tuple[int, int] | None = None  # preprocess.size (width, height); None: the recipe's

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


def _patchcore_entry(recipe: Recipe) -> DetectorConfig | None:
    """The recipe's PatchCore: its first patchcore entry, else the first PatchCore member of
    its first ensemble (with the ensemble's backbone unless the member names one), or None."""
    entry = next((d for d in recipe.detectors if d.name == "patchcore"), None)
    ensemble = next((d for d in recipe.detectors if d.name == ENSEMBLE), None)
    if entry is not None or ensemble is None:
        return entry
    members = ensemble.params.get("members") or []
    m = next((m for m in members if isinstance(m, dict) and m.get("name") == "patchcore"), None)
    if m is None:
        return None
    try:
        return DetectorConfig(
            name="patchcore",
            backbone=m.get("backbone") or ensemble.backbone,
            weights=m.get("weights") or ensemble.weights,
            device=ensemble.device,
            params=dict(m.get("params") or {}),
        )
    except ValueError:  # a malformed member: left for the detector to refuse
        return None


def _recipe_params(recipe: Recipe) -> dict[str, Any]:
    """The recipe's PatchCore params (none without a PatchCore), less the settings the
    candidates vary or the ensemble shares."""
    varied = {"mirror_pad", "center_features", "num_neighbors", "layers", *SHARED}
    entry = _patchcore_entry(recipe)
    return {} if entry is None else {k: v for k, v in entry.params.items() if k not in varied}


def _grid_params(row: tuple[Any, ...]) -> dict[str, Any]:
    """The PatchCore params a grid row sets (no `layers`: the backbone's default pair)."""
    _, _, pad, centre, k, layers = row
    params = {"mirror_pad": pad, "center_features": centre, "num_neighbors": k}
    if layers is not None:
        params["layers"] = list(layers)
    return params


def _patchcore(
    base: dict[str, Any], device: str, grid_row: tuple[Any, ...], size: tuple[int, int] | None
) -> Candidate:
    cid, backbone = grid_row[:2]
    params = {**base, **_grid_params(grid_row)}
    if size is not None:
        cid = f"{cid}-{size[0]}x{size[1]}"
    return Candidate(cid, _entry("patchcore", backbone, device, params), size=size)


def _setting(backbone: str, params: dict[str, Any]) -> tuple[Any, ...]:
    """What a PatchCore grid row varies, with the detector's defaults filled in."""
    d = PatchCoreConfig()
    layers = params.get("layers") or default_layers(backbone)
    return (
        backbone,
        int(params.get("mirror_pad", d.mirror_pad)),
        bool(params.get("center_features", d.center_features)),
        int(params.get("num_neighbors", d.num_neighbors)),
        tuple(layers),
    )


def recipe_own(recipe: Recipe) -> str | None:
    """The id of the candidate that is the recipe's own detector: the grid row its first
    entry is (a PatchCore's backbone, mirrored context, centring, neighbours, layers), else
    OWN (that entry as it stands); None without an entry or with malformed params."""
    if not recipe.detectors:
        return None
    entry = recipe.detectors[0]
    if config_problems(entry.name, detector_kwargs(entry)):
        return None  # left for the detector to refuse
    if entry.name != "patchcore":
        return OWN
    try:
        want = _setting(entry.backbone, entry.params)
        rows = [(r[0], _setting(r[1], _grid_params(r))) for r in PATCHCORE_GRID]
    except (StationError, TypeError, ValueError):  # an unknown backbone
        return None
    return next((cid for cid, got in rows if got == want), OWN)


def own_candidate(recipe: Recipe, device: str) -> Candidate:
    """The recipe's first detector entry as it stands (on `device`), as candidate OWN."""
    e = recipe.detectors[0]
    entry = _entry(e.name, e.backbone, device, dict(e.params))
    return Candidate(OWN, {**entry, "weights": e.weights})


def single_candidates(recipe: Recipe, device: str) -> list[Candidate]:
    """The candidates to try before the best-two ensemble: the recipe's own detector first
    (its grid row, or OWN), then cheapest first: the PatchCore grid, the recipe's PatchCore
    backbone (else Lite0) with the grid's first settings at other input sizes (whole-shot
    recipes only), SimpleNet, DFDA."""
    base = _recipe_params(recipe)
    own_id = recipe_own(recipe)
    grid = sorted(PATCHCORE_GRID, key=lambda row: row[0] != own_id)  # stable: the rest in order
    out = [own_candidate(recipe, device)] if own_id == OWN else []
    out += [_patchcore(base, device, row, None) for row in grid]
    own_entry = _patchcore_entry(recipe)
    own_backbone = own_entry.backbone if own_entry is not None else LITE0
    sized = next((r for r in PATCHCORE_GRID if r[1] == own_backbone), PATCHCORE_GRID[0])
    out += [_patchcore(base, device, sized, s) for s in input_sizes(recipe)]
    out.append(Candidate("simplenet", _entry("simplenet", LITE0, device, {})))
    out.append(Candidate("dfda", _entry("dfda", LITE0, device, {})))
    return out


def input_sizes(recipe: Recipe) -> list[tuple[int, int]]:
    """The other input sizes to try: none with tiles (the camera's own pixels), else
    SIZE_FACTORS x preprocess.size, rounded to SIZE_STEP px (at least one step)."""
    if recipe.preprocess.tiling.enabled:
        return []
    w, h = recipe.preprocess.size
    out: list[tuple[int, int]] = []
    for f in SIZE_FACTORS:
        size = tuple(max(SIZE_STEP, round(v * f / SIZE_STEP) * SIZE_STEP) for v in (w, h))
        if size != (w, h) and size not in out:
            out.append((size[0], size[1]))
    return out


def with_size(recipe: Recipe, size: tuple[int, int] | None) -> Recipe:
    """`recipe` with preprocess.size set to `size` (the recipe itself for None)."""
    if size is None or tuple(size) == tuple(recipe.preprocess.size):
        return recipe
    pre = recipe.preprocess.model_copy(update={"size": (int(size[0]), int(size[1]))})
    return recipe.model_copy(update={"preprocess": pre})


def resolution_problem(recipe: Recipe, c: Candidate) -> str | None:
    """Why the candidate's input size would not resolve the recipe's smallest defect (the
    check `station recipe check` makes), or None."""
    if c.size is None:
        return None
    report = coverage_check(with_size(recipe, c.size))
    if report.detector_mm_px <= report.needed_mm_px * (1 + 1e-9):
        return None
    return (
        f"{c.size[0]} x {c.size[1]} px gives {report.detector_mm_px:.3f} mm/px, coarser than "
        f"the {report.needed_mm_px:.3f} mm/px coverage.smallest_defect_mm needs"
    )


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
    cid = f"ensemble({'+'.join(m.id for m in members)})"
    return Candidate(cid, entry, [m.id for m in members], size=members[0].size)


def known_ids(candidates: Sequence[Candidate]) -> str:
    return ", ".join([*(c.id for c in candidates), ENSEMBLE])
