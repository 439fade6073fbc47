"""Ensemble: several detectors combined by standardised scores.

Each member is a registered detector trained on the same good images. Its scores are put on a
common scale from its own held-out good images: z = (score - mean) / std of the validation
split's scores (every member holds out the same images: the ensemble passes its `val_fraction`
and `seed` to all of them). The ensemble's image score is the mean of the members' z-scores;
its map is the mean of the members' z-maps (each map standardised with its member's score
statistics), shifted so that its peak equals the image score, so a heatmap reads on the
threshold's scale as every detector's does.

A recipe entry:

    - name: ensemble
      backbone: efficientnet_lite0      # the members' default backbone and weights
      device: auto                      # every member runs here
      params:
        members:
          - {name: patchcore, params: {coreset_ratio: 0.03, mirror_pad: 32}}
          - {name: dfda}
        val_fraction: 0.1               # shared by all members (not set per member)

PatchCore members on the same backbone weights (and mirrored context, patch size, precision and
device) share one backbone pass per batch at predict: it runs to the deepest layer any of them
reads, and each scores from its own layers, as its own `predict` would. An ensemble of such
PatchCores alone exports to ONNX Runtime and OpenVINO as one graph (runtimes/graphs.py); any
other ensemble runs on torch only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import to_batch
from station.detectors.registry import (
    config_problems,
    create_detector,
    raise_problems,
    register,
)
from station.errors import DetectorError

MEMBER_KEYS = {"name", "backbone", "weights", "params"}
SHARED_PARAMS = ("val_fraction", "seed")  # set on the ensemble so all members hold out alike
MIN_HELD_OUT = 2  # good images a member must hold out to give a standard deviation


@dataclass
class EnsembleConfig:
    """The ensemble's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    device: str = "auto"
    members: Sequence[dict[str, Any]] = field(default_factory=list)
    val_fraction: float = 0.1
    seed: int = 0
    min_std: float = 1e-6  # floor on a member's good-score std (as a share of |mean| + 1)

    def problems(self) -> list[str]:
        """A malformed member list, else every member's bad params: one line each."""
        try:
            specs = _member_specs(self)
        except DetectorError as exc:
            return [exc.message]
        shared = {"val_fraction": self.val_fraction, "seed": self.seed}
        out: list[str] = []
        for i, s in enumerate(specs):
            cfg = {"backbone": s["backbone"], "weights": s["weights"], **s["params"], **shared}
            where = f"ensemble: member {i + 1} ({s['name']})"
            out += [f"{where}: {p}" for p in config_problems(s["name"], cfg)]
        return out

    def check(self) -> None:
        """DetectorError for a malformed member list or the members' bad params."""
        _member_specs(self)  # raises with its own hint
        hint = "fix that member's params under the ensemble's params.members"
        raise_problems(self.problems(), hint=hint)


@runtime_checkable
class SharesBackbonePass(Protocol):
    """A member that can score from a backbone pass shared with others (PatchCore)."""

    backbone: Any

    def config(self) -> dict[str, Any]: ...

    def shared_pass_key(self) -> tuple[Any, ...]: ...

    def stage_maps(self, batch: torch.Tensor, trunk: Any) -> dict[str, torch.Tensor]: ...

    def predict_stage_maps(
        self, maps: dict[str, torch.Tensor], image_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SharedPass:
    """One backbone pass serving several members: `trunk` taps every layer they read, on
    the stages of `runner`'s backbone (the deepest of theirs)."""

    runner: int
    members: tuple[int, ...]
    trunk: Any


def shared_passes(members: Sequence[Detector]) -> list[SharedPass]:
    """The passes that serve two or more members with equal `shared_pass_key`s."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, det in enumerate(members):
        if isinstance(det, SharesBackbonePass):
            groups.setdefault(det.shared_pass_key(), []).append(i)
    passes = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        nets = {i: members[i].backbone for i in idx}  # type: ignore[attr-defined]
        runner = max(idx, key=lambda i: len(nets[i].stage_names))
        layers = sorted({layer for i in idx for layer in nets[i].layers})
        passes.append(SharedPass(runner, tuple(idx), nets[runner].tapping(layers)))
    return passes


def _member_specs(c: EnsembleConfig) -> list[dict[str, Any]]:
    """The members as {name, backbone, weights, params}, checked; DetectorError names the
    member and the fix."""
    if len(c.members) < 2:
        raise DetectorError(
            f"ensemble: needs at least two members, not {len(c.members)}",
            hint="list two or more detectors under the ensemble's params.members",
        )
    if not 0 < c.val_fraction < 1:
        raise DetectorError(
            f"ensemble: val_fraction must be in (0, 1), not {c.val_fraction}: the members'"
            " scores are standardised on held-out good images",
            hint="set the ensemble's val_fraction to e.g. 0.1",
        )
    specs = []
    for i, m in enumerate(c.members):
        if not isinstance(m, Mapping) or "name" not in m:
            raise DetectorError(
                f"ensemble: member {i + 1} must be a mapping with a detector name, not {m!r}",
                hint="write each member as {name: patchcore, params: {...}}",
            )
        unknown = sorted(set(m) - MEMBER_KEYS)
        name = str(m["name"])
        if unknown:
            raise DetectorError(
                f"ensemble: member {i + 1} ({name}) has unknown keys {unknown}",
                hint=f"a member takes {sorted(MEMBER_KEYS)}",
            )
        if name == "ensemble":
            raise DetectorError("ensemble: a member cannot be an ensemble itself")
        params = dict(m.get("params") or {})
        shared = [k for k in SHARED_PARAMS if k in params]
        if shared:
            raise DetectorError(
                f"ensemble: member {name} sets {shared}; all members must hold out the same "
                "good images",
                hint="set val_fraction and seed on the ensemble's params, not on a member",
            )
        specs.append(
            {
                "name": name,
                "backbone": str(m.get("backbone") or c.backbone),
                "weights": str(m.get("weights") or c.weights),
                "params": params,
            }
        )
    return specs


@register
class Ensemble(Detector):
    name = "ensemble"
    version = 1
    Config = EnsembleConfig
    size_key = "image_hw"

    def __init__(self, **params: Any) -> None:
        c = EnsembleConfig(**params)
        c.check()
        self.specs = _member_specs(c)
        shared = {"val_fraction": float(c.val_fraction), "seed": int(c.seed)}
        self.members: list[Detector] = [
            create_detector(
                s["name"], backbone=s["backbone"], weights=s["weights"], device=c.device,
                **s["params"], **shared,
            )  # fmt: skip
            for s in self.specs
        ]
        self.device = self.members[0].device
        # members as the recipe gives them: a saved model is compared with the recipe's entry
        members = [dict(m) for m in c.members]
        self._cfg: dict[str, Any] = {**asdict(c), "members": members, **shared}
        self._cfg["min_std"] = float(c.min_std)
        self.stats: list[tuple[float, float]] = []  # (mean, std) of each member's good scores
        self.image_hw: tuple[int, int] | None = None
        self.passes = shared_passes(self.members)

    @property
    def fitted(self) -> bool:
        return self.image_hw is not None and len(self.stats) == len(self.members)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _label(self, i: int) -> str:
        return f"{self.specs[i]['name']} ({i + 1}/{len(self.members)})"

    def _standardiser(self, i: int, good: Sequence[float]) -> tuple[float, float]:
        g = np.asarray(good, dtype=np.float64)
        if g.size < MIN_HELD_OUT or not np.all(np.isfinite(g)):
            frac = float(self._cfg["val_fraction"])
            need = math.ceil((MIN_HELD_OUT - 0.5) / frac) if frac > 0 else "more"
            raise DetectorError(
                f"ensemble: member {self._label(i)} scored {g.size} held-out good images "
                f"(finite: {bool(np.all(np.isfinite(g)))}); standardising needs at least "
                f"{MIN_HELD_OUT}",
                hint=f"at val_fraction {frac:g} that takes at least {need} good training images "
                "(tiles, when the recipe tiles); give more, or raise the ensemble's val_fraction",
            )
        mean, std = float(g.mean()), float(g.std(ddof=1))
        return mean, max(std, self._cfg["min_std"] * (abs(mean) + 1.0))

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        stats, reports = [], []
        for i, det in enumerate(self.members):
            label = self._label(i)

            def member_progress(stage: str, done: int, total: int, label: str = label) -> None:
                if progress:
                    progress(f"{label} {stage}", done, total)

            rep = det.fit(images, member_progress)
            stats.append(self._standardiser(i, rep.good_scores))
            reports.append(rep)
        counts = {len(r.good_scores) for r in reports}
        if len(counts) != 1:  # same split by construction: a member that differs is a bug
            raise DetectorError(f"ensemble: members scored different held-out sets {counts}")
        self.stats = stats
        self.image_hw = self.members[0].image_hw
        z = np.mean([self._z(i, np.asarray(r.good_scores)) for i, r in enumerate(reports)], 0)
        return FitReport(
            n_images=len(images),
            seconds=time.perf_counter() - t0,
            good_scores=[float(v) for v in z],
            extra={
                "members": [
                    {"name": s["name"], "good_mean": m, "good_std": sd, "fit_s": r.seconds}
                    for s, (m, sd), r in zip(self.specs, stats, reports, strict=True)
                ],
                "good_scores_from": "validation split, standardised in-sample",
            },
        )

    def assemble(self, members: Sequence[Detector], good_scores: Sequence[Sequence[float]]) -> None:
        """This ensemble from members fitted elsewhere (with the settings it builds: checked)
        and their held-out good scores, as `fit` would leave it, without training again."""
        state = {
            "members": [d.state() for d in members],
            "stats": [list(self._standardiser(i, g)) for i, g in enumerate(good_scores)],
            self.size_key: list(members[0].image_hw or ()),
        }
        self.load_state_dict(state)

    def _z(self, i: int, values: np.ndarray) -> np.ndarray:
        mean, std = self.stats[i]
        return ((values.astype(np.float64) - mean) / std).astype(np.float32)

    def predict(self, images: np.ndarray) -> Prediction:
        self.require_fitted()
        t0 = time.perf_counter()
        shared = self._shared_outputs(images)
        outputs = []
        for i, det in enumerate(self.members):
            if i not in shared:
                p = det.predict(images)
                shared[i] = np.asarray(p.maps), np.asarray(p.scores)
            outputs.append(shared[i])
        maps, scores = self.combine(outputs)
        return Prediction(maps, scores, latency_ms=(time.perf_counter() - t0) * 1000.0)

    def combine(
        self, outputs: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's (maps, scores) from each member's (maps, scores), in member order:
        the mean of their standardised values, the map shifted so its peak is the score."""
        z = [(self._z(i, m), self._z(i, s)) for i, (m, s) in enumerate(outputs)]
        maps = np.mean([zm for zm, _ in z], axis=0, dtype=np.float32)
        scores = np.mean([zs for _, zs in z], axis=0, dtype=np.float32)
        peak = maps.reshape(len(maps), -1).max(1)
        maps += (scores - peak)[:, None, None]  # the map's peak is the image score
        return maps, scores

    def _shared_outputs(self, images: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """(maps, scores) of the members served by a shared backbone pass, by member."""
        if not self.passes:
            return {}
        assert self.image_hw is not None
        batch = to_batch(images, self.image_hw, self.name)
        out: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for sp in self.passes:
            served = [self.members[i] for i in sp.members]
            runner = self.members[sp.runner]
            assert isinstance(runner, SharesBackbonePass)
            size = min(int(det.config()["batch_size"]) for det in served)
            for start in range(0, batch.shape[0], size):
                maps = runner.stage_maps(batch[start : start + size], sp.trunk)
                for i, det in zip(sp.members, served, strict=True):
                    assert isinstance(det, SharesBackbonePass)
                    m, s = det.predict_stage_maps(maps, self.image_hw)
                    out.setdefault(i, ([], []))[0].append(m)
                    out[i][1].append(s)
        return {i: (np.concatenate(m), np.concatenate(s)) for i, (m, s) in out.items()}

    def _fitted_state(self) -> dict[str, Any]:
        return {
            "members": [det.state() for det in self.members],
            "stats": [list(s) for s in self.stats],
        }

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        payloads, stats = state["members"], state["stats"]
        if len(payloads) != len(self.members) or len(stats) != len(self.members):
            raise DetectorError(
                f"ensemble: saved state holds {len(payloads)} members, this ensemble has "
                f"{len(self.members)}"
            )
        for det, payload in zip(self.members, payloads, strict=True):
            det.load_state(payload)
        self.stats = [(float(m), float(s)) for m, s in stats]
