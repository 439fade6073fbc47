"""DFDA-AD: dual feature extraction, dual attention, K-means of good patch features.

After the second seed paper (DFDA-AD). Two frozen backbones give a stride-8 map (branch A,
CBAM-style channel and spatial attention computed in parallel) and a stride-16 map (branch B,
query-key self-attention that reweights positions); B is resized to A's grid, each branch is
scaled by 1 / its RMS patch norm on reference training images, and the two are concatenated.
The attention is trained on seeded synthetic faults made from the good images
(`dfda_faults`); K-means centres of good patch features (`kmeans`) are the model, and a
patch's anomaly is its distance to the nearest centre (map: upsampled, Gaussian-smoothed;
image score: max of the map). `k="auto"` picks k by the synthetic faults on held-out images.
Design choices and the AITEX ablations behind the defaults: docs/dfda.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from station.detectors.backbones import check_identity, create_backbone, resolve_device
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import split_validation
from station.detectors.dfda_faults import SYNTHETIC_KINDS
from station.detectors.dfda_fit import Branches, DFDAFitting, rounded
from station.detectors.dfda_net import (
    ChannelSpatialAttention,
    DFDAModel,
    DualBackbone,
    QueryKeyAttention,
)
from station.detectors.kmeans import kmeans
from station.detectors.registry import CheckedConfig, bound_problems, register
from station.errors import DetectorError


@dataclass
class DFDAConfig(CheckedConfig):
    """DFDA's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    device: str = "auto"
    layers: Sequence[str] | None = ("blocks.2",)
    backbone2: str = "mobilenet_v2"
    weights2: str = "auto"
    layers2: Sequence[str] | None = ("13",)
    patch_size: int = 3
    use_cbam: bool = True
    use_query_key: bool = True
    cbam_reduction: int = 4
    cbam_standardize: bool = False
    qk_dim: int = 64
    attention_init: str = "random"
    k: int | str = "auto"
    k_candidates: Sequence[int] = (16, 32, 64, 128, 256, 512)
    k_tolerance: float = 0.005
    k_select_patches: int = 8000
    kmeans_iters: int = 100
    max_train_patches: int = 40_000
    attention_epochs: int = 8
    attention_lr: float = 3e-3
    attention_batch: int = 10
    attention_margin: float = 1.0
    synthetic_kinds: Sequence[str] = SYNTHETIC_KINDS
    sigma: float = 4.0
    batch_size: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    amp: bool = True

    def problems(self) -> list[str]:
        """Every value out of range or choice not offered, one line each."""
        out: list[str] = []
        k_int = isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1
        if not (self.k in ("auto", "elbow") or k_int):
            out.append(f"dfda: k must be 'auto', 'elbow' or an integer >= 1, not {self.k!r}")
        sizes = ("kmeans_iters", "max_train_patches", "batch_size", "attention_batch")
        out += bound_problems("dfda", self, ">= 1", *sizes)
        out += bound_problems("dfda", self, ">= 0", "attention_epochs")
        out += bound_problems("dfda", self, "> 0", "attention_lr")
        if not 0 <= self.val_fraction < 1:
            out.append(f"dfda: val_fraction must be in [0, 1), not {self.val_fraction}")
        if self.attention_init not in ("neutral", "random"):
            out.append(
                f"dfda: attention_init must be 'neutral' or 'random', not {self.attention_init!r}"
            )
        bad = [s for s in self.synthetic_kinds if s not in SYNTHETIC_KINDS]
        if bad or not self.synthetic_kinds:
            out.append(
                f"dfda: synthetic_kinds {list(self.synthetic_kinds)} invalid; "
                f"choose from {', '.join(SYNTHETIC_KINDS)}"
            )
        return out


@register
class DFDA(DFDAFitting, Detector):
    name = "dfda"
    version = 2
    Config = DFDAConfig

    def __init__(self, **params: Any) -> None:
        c = DFDAConfig(**params)
        c.check()
        self.device = resolve_device(c.device)
        bb_a = create_backbone(c.backbone, c.weights, c.layers)
        bb_b = create_backbone(c.backbone2, c.weights2, c.layers2)
        backbone = DualBackbone(bb_a, bb_b)
        self._cfg: dict[str, Any] = {
            "backbone": c.backbone,
            "weights": c.weights,
            "device": c.device,
            "layers": list(bb_a.layers),
            "backbone2": c.backbone2,
            "weights2": c.weights2,
            "layers2": list(bb_b.layers),
            "patch_size": int(c.patch_size),
            "use_cbam": bool(c.use_cbam),
            "use_query_key": bool(c.use_query_key),
            "cbam_reduction": int(c.cbam_reduction),
            "cbam_standardize": bool(c.cbam_standardize),
            "qk_dim": int(c.qk_dim),
            "attention_init": c.attention_init,
            "k": c.k,
            "k_candidates": [int(x) for x in c.k_candidates],
            "k_tolerance": float(c.k_tolerance),
            "k_select_patches": int(c.k_select_patches),
            "kmeans_iters": int(c.kmeans_iters),
            "max_train_patches": int(c.max_train_patches),
            "attention_epochs": int(c.attention_epochs),
            "attention_lr": float(c.attention_lr),
            "attention_batch": int(c.attention_batch),
            "attention_margin": float(c.attention_margin),
            "synthetic_kinds": [str(s) for s in c.synthetic_kinds],
            "sigma": float(c.sigma),
            "batch_size": int(c.batch_size),
            "val_fraction": float(c.val_fraction),
            "seed": int(c.seed),
            "amp": bool(c.amp),
        }
        ca, cb = sum(bb_a.channels), sum(bb_b.channels)
        # Seeded initialisation that leaves the global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            cbam = ChannelSpatialAttention(ca, c.cbam_reduction, standardize=c.cbam_standardize)
            qk = QueryKeyAttention(cb, c.qk_dim)
        self.model = DFDAModel(
            backbone, cbam, qk, c.patch_size, c.use_cbam, c.use_query_key, c.sigma
        ).to(self.device)
        self.backbone, self.cbam, self.qk = self.model.backbone, self.model.cbam, self.model.qk
        if c.attention_init == "neutral":
            # Gates start uniform (sigmoid(0) = 0.5 everywhere): the untrained attention is a
            # constant factor, and training moves it only where the objective asks.
            with torch.no_grad():
                nn.init.zeros_(self.cbam.mlp[-1].weight)
                nn.init.zeros_(self.cbam.mlp[-1].bias)
                nn.init.zeros_(self.cbam.spatial.weight)
                nn.init.zeros_(self.qk.key.weight)  # the query stays random: gradients flow
                nn.init.zeros_(self.qk.key.bias)
        self.cbam.eval()
        self.qk.eval()
        self.image_hw: tuple[int, int] | None = None

    # -- the network (DFDAModel) -----------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        """Per-branch scale factors (fitted; ones before)."""
        return self.model.scales

    @scales.setter
    def scales(self, value: torch.Tensor) -> None:
        self.model.scales = value

    @property
    def centres(self) -> torch.Tensor | None:
        """The K-means centres, or None before fit."""
        return self.model.centres if self.model.fitted else None

    @property
    def fitted(self) -> bool:
        return self.model.fitted and self.image_hw is not None

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features of a batch in [0, 1]: (branch A map, branch B map), float32."""
        x = x.to(self.device, non_blocking=True)
        return self.model.branch_maps(x, bool(self._cfg["amp"]))

    def attend(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend each branch and resize B to A's grid (not scaled)."""
        return self.model.attend(a, b)

    def fuse(
        self, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend, scale each branch (`scales`, else the fitted ones), concatenate."""
        return self.model.fuse(a, b, scales)

    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) fused patch features of a batch in [0, 1], and the grid (h, w)."""
        z = self.fuse(*self.branch_maps(x))
        n, d, h, w = z.shape
        return z.permute(0, 2, 3, 1).reshape(-1, d), (h, w)

    # -- fit -------------------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        n = len(images)
        if n == 0:
            raise DetectorError("dfda: no training images")
        first = np.asarray(images[0])
        self.image_hw = (int(first.shape[0]), int(first.shape[1]))
        seed = self._cfg["seed"]
        train_idx, val_idx = split_validation(n, self._cfg["val_fraction"], seed)
        rng = np.random.default_rng(seed)
        clean, bad, val, val_bad = self._fit_sets(images, train_idx, val_idx, progress)
        h, w = clean.a.shape[-2:]
        per_image = max(1, min(h * w, self._cfg["max_train_patches"] // len(train_idx)))
        # Equal say for both branches, measured on a fixed reference set of training images
        # (the same during attention training, so scales stay consistent with the centres).
        ref = Branches(clean.a[:32], clean.b[:32])
        with torch.no_grad():
            self.scales = self._ref_scales(ref)
        t1 = time.perf_counter()
        k, k_from, k_sep, k_inertias = self._pick_k(clean, val, val_bad, per_image, rng)
        t2 = time.perf_counter()
        sep_before: dict[str, float] = {}
        if bad is not None and val is not None and val_bad is not None:
            pool = self._sample(clean, per_image, rng)
            sep_before = self._separation(
                kmeans(pool, k, self._cfg["kmeans_iters"], seed).centres, val, val_bad
            )
            del pool
        losses, margins = (
            ([], [])
            if bad is None
            else self._train_attention(clean, bad, ref, k, per_image, rng, progress)
        )
        with torch.no_grad():
            self.scales = self._ref_scales(ref)
        t3 = time.perf_counter()
        pool = self._sample(clean, per_image, rng)
        result = kmeans(pool, k, self._cfg["kmeans_iters"], seed)
        self.model.centres = result.centres.contiguous()
        t4 = time.perf_counter()
        good_scores: list[float] = []
        sep_after: dict[str, float] = {}
        if val is not None:
            if val_bad is not None:
                sep_after = self._separation(self.centres, val, val_bad)
            for s in range(0, len(val), self._cfg["batch_size"]):
                sl = slice(s, s + self._cfg["batch_size"])
                _, sc = self._score_branches(val.a[sl].float(), val.b[sl].float())
                good_scores += sc.tolist()
        return FitReport(
            n_images=n,
            seconds=time.perf_counter() - t0,
            good_scores=[float(s) for s in good_scores],
            extra={
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "good_scores_from": "validation split" if val_idx else "none (one image)",
                "k": int(self.centres.shape[0]),
                "k_from": k_from,
                "k_separation": {str(kk): rounded(v) for kk, v in k_sep.items()},
                "k_inertias": {str(kk): round(v, 4) for kk, v in k_inertias.items()},
                "kmeans_iterations": result.n_iter,
                "kmeans_converged": result.converged,
                "patches_pooled": int(pool.shape[0]),
                "feature_dim": int(self.centres.shape[1]),
                "grid": [int(h), int(w)],
                "attention_losses": [round(v, 5) for v in losses],
                "attention_margins": [round(v, 4) for v in margins],
                "synthetic_val_before": rounded(sep_before),
                "synthetic_val": rounded(sep_after),
                "features_seconds": round(t1 - t0, 3),
                "k_seconds": round(t2 - t1, 3),
                "attention_seconds": round(t3 - t2, 3),
                "kmeans_seconds": round(t4 - t3, 3),
                "backbones": self.backbone.identity["backbone"],
            },
        )

    # -- predict ---------------------------------------------------------------------------
    @torch.no_grad()
    def _score_branches(self, a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        self.require_fitted()
        assert self.image_hw is not None
        a, b = a.to(self.device), b.to(self.device)
        maps, scores = self.model.score_branches(a, b, self.image_hw)
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    @torch.no_grad()
    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self._score_branches(*self.branch_maps(batch))

    def predict(self, images: np.ndarray) -> Prediction:
        return self.predict_batched(images)

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _fitted_state(self) -> dict[str, Any]:
        assert self.centres is not None
        return {
            "centres": self.centres,
            "scales": self.scales,
            "cbam": self.cbam.state_dict(),
            "query_key": self.qk.state_dict(),
            "backbone_identity": {
                "a": dict(self.backbone.a.identity),
                "b": dict(self.backbone.b.identity),
            },
        }

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        centres, scales = state["centres"], state["scales"]
        cbam, qk = state["cbam"], state["query_key"]
        identity = state["backbone_identity"]
        check_identity(identity["a"], self.backbone.a.identity)
        check_identity(identity["b"], self.backbone.b.identity)
        dim = sum(self.backbone.a.channels) + sum(self.backbone.b.channels)
        if centres.ndim != 2 or centres.shape[1] != dim:
            raise DetectorError(
                f"dfda: saved centres have shape {tuple(centres.shape)}, the configured "
                f"features have {dim} dims"
            )
        self.load_module(self.cbam, cbam)
        self.load_module(self.qk, qk)
        self.model.centres = centres.to(self.device, torch.float32).contiguous()
        self.scales = scales.float().to(self.device)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) the model was fitted on, or None before fit."""
        return None if self.image_hw is None else (self.image_hw[1], self.image_hw[0])
