"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Fit: a frozen backbone's two mid-level stages (stride 8 and 16), each averaged over a 3 x 3
neighbourhood, brought to a common channel count per stage (equal weight per stage), the deeper
one upsampled to the stride-8 grid and concatenated: one feature per patch. Two additions to the
paper, both for woven fabric and both on by default (measured on AITEX, README):
- `mirror_pad` (32 px): the backbone sees the image with mirrored context around it and the
  maps are cropped back, so edge patches are not scored on the network's zero padding (which
  made a frame of high scores round every image, as high as a small defect).
- `center_features`: each image's mean feature (per stage) is subtracted from its patches, so a
  sheet whose weave is shifted or scaled as a whole is not anomalous everywhere, while a local
  fault still stands out from its own sheet.
A third, off by default: `train_flips` (the bank also learns each good image mirrored three
ways, the patch budget shared among the views); it lowered the five-material mean
(docs/materials.md).

Patches of all good images form a memory bank, thinned by a greedy k-center coreset (~10 %)
chosen in a random low-dimensional projection. Memory stays bounded: features stream in
batches, at most `max_train_patches` patches are kept (a seeded per-image subsample) and the
bank never exceeds `max_bank` rows.

Predict: each patch's distance to its nearest bank feature is its anomaly score. The image
score (`image_score`, default `weighted_max`) is the paper's: the highest patch score times the
re-weighting factor w in (0, 1] (how isolated the nearest bank feature of that patch is among its
`num_neighbors` bank neighbours); `max` leaves w out, `smoothed_peak` takes the smoothed map's
peak (version 2).
The map is the patch scores upsampled to the input size, Gaussian-smoothed (sigma 4) and scaled
so that its peak equals the image score: smoothing alone would lower a one-patch fault's peak
far more than a broad one's (version 2 scored images by the smoothed peak; AITEX, README).

Devices: CPU or CUDA. The nearest-neighbour search is the `knn` param (station.detectors.knn:
exact torch search on either device, faiss on the CPU; `auto` takes faiss's exact index on the
CPU when it is installed, docs/knn.md). `amp=True` runs the
backbone in fp16 on CUDA (features and distances stay fp32); it is off by default until its
tolerance test (tests/test_patchcore.py, GPU only) has passed on the target GPU.

Validation: `fit` holds out `val_fraction` of the good images (seeded) and reports their scores
as FitReport.good_scores; the bank is built from the rest.

The scoring network (backbone, memory bank as a buffer, forward to map and score) is the plain
torch module `PatchCoreModel` (station.detectors.patchcore_model), held as `detector.model`;
this module is the fitting code around it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from station.detectors.backbones import check_identity, create_backbone, resolve_device
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import sample_per_image, split_validation, to_batch
from station.detectors.knn import KNN_METHODS, KnnMethod, resolve_knn
from station.detectors.patchcore_model import IMAGE_SCORES, PatchCoreModel
from station.detectors.registry import CheckedConfig, bound_problems, register
from station.errors import DetectorError


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    proj_dim: int | None = 128,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Indices of `n_select` rows chosen by greedy k-center selection (farthest point first).

    Distances are measured after a seeded Gaussian random projection to `proj_dim` dimensions
    (Johnson-Lindenstrauss), which keeps selection fast on wide features.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n, device=features.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = features
    if proj_dim and features.shape[1] > proj_dim:
        proj = torch.randn(features.shape[1], proj_dim, generator=gen) / proj_dim**0.5
        x = features @ proj.to(features.device, features.dtype)
    sq = (x * x).sum(1)
    start = int(torch.randint(n, (1,), generator=gen).item())
    selected = torch.empty(n_select, dtype=torch.long, device=features.device)
    selected[0] = start
    step = max(1, n_select // 50)
    # The loop is a chain of small memory-bound matrix-vector products: extra CPU threads only
    # add synchronisation (and spin badly on a loaded machine), so it runs single-threaded.
    threads = torch.get_num_threads()
    if x.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        min_d = torch.addmv(sq, x, x[start], alpha=-2.0).add_(sq[start])
        for i in range(1, n_select):
            idx = torch.argmax(min_d)
            selected[i] = idx
            d = torch.addmv(sq, x, x[idx], alpha=-2.0).add_(sq[idx])
            torch.minimum(min_d, d, out=min_d)
            if progress and (i % step == 0 or i == n_select - 1):
                progress("coreset", i + 1, n_select)
    finally:
        torch.set_num_threads(threads)
    return selected


# train_flips: the image as shot, mirrored left-right, top-bottom, and both (a half turn).
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass(frozen=True)
class PatchCoreConfig(CheckedConfig):
    """PatchCore's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    device: str = "auto"
    layers: Sequence[str] | None = None  # None: the backbone's default stages
    patch_size: int = 3
    mirror_pad: int = 32
    center_features: bool = True
    train_flips: bool = False  # the bank also learns each good image mirrored (3 more views)
    layer_dim: int | None = None  # None: the widest stage's channels, at most 512
    coreset_ratio: float = 0.1
    max_bank: int = 10_000
    max_train_patches: int = 40_000
    proj_dim: int = 128
    num_neighbors: int = 9
    sigma: float = 4.0
    batch_size: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    amp: bool = False  # fp16 backbone on CUDA; see tests (GPU only) for its tolerance
    # Nearest-neighbour search (station.detectors.knn): auto | torch | faiss | faiss_ivf. A
    # runtime setting like the device: changing it needs no retraining (docs/knn.md).
    knn: KnnMethod = "auto"
    image_score: str = "weighted_max"  # weighted_max (the paper's) | max | smoothed_peak

    def problems(self) -> list[str]:
        """Every value out of range, one line each (the strides are checked with the
        backbone)."""
        out: list[str] = []
        if not 0 < self.coreset_ratio <= 1:
            out.append(f"patchcore: coreset_ratio must be in (0, 1], not {self.coreset_ratio}")
        sizes = ("max_bank", "max_train_patches", "batch_size", "num_neighbors", "patch_size")
        out += bound_problems("patchcore", self, ">= 1", *sizes)
        if self.knn not in KNN_METHODS:
            out.append(
                f"patchcore: knn must be one of {', '.join(KNN_METHODS)}, not {self.knn!r}"
            )
        if self.image_score not in IMAGE_SCORES:
            out.append(
                f"patchcore: image_score must be one of {', '.join(IMAGE_SCORES)}, "
                f"not {self.image_score!r}"
            )
        if not 0 <= self.val_fraction < 1:
            out.append(f"patchcore: val_fraction must be in [0, 1), not {self.val_fraction}")
        out += bound_problems("patchcore", self, ">= 0", "sigma", "proj_dim")
        if self.layer_dim is not None and self.layer_dim < 1:
            out.append(f"patchcore: layer_dim must be >= 1, not {self.layer_dim}")
        return out


@register
class PatchCore(Detector):
    name = "patchcore"
    version = 3  # 2: mirror_pad and center_features; 3: image score = weighted max patch score
    Config = PatchCoreConfig
    # batch_size: how many images one forward takes; features are per image (eval mode,
    # per-image centring), so the bank and scores do not depend on it
    runtime_settings = frozenset({"device", "knn", "batch_size"})

    def __init__(self, **params: Any) -> None:
        c = PatchCoreConfig(**params)
        c.check()
        self.device = resolve_device(c.device)
        net = create_backbone(c.backbone, c.weights, c.layers).to(self.device)
        if c.mirror_pad < 0 or any(c.mirror_pad % s for s in net.strides):
            raise DetectorError(
                f"patchcore: mirror_pad must be >= 0 and a multiple of the layers' strides "
                f"{net.strides}, not {c.mirror_pad}"
            )
        # What config() returns and the artifact stores: plain values, the layers resolved.
        self._cfg: dict[str, Any] = {**asdict(c), "layers": list(net.layers)}
        for key, kind in (
            ("patch_size", int),
            ("mirror_pad", int),
            ("center_features", bool),
            ("train_flips", bool),
            ("coreset_ratio", float),
            ("max_bank", int),
            ("max_train_patches", int),
            ("proj_dim", int),
            ("num_neighbors", int),
            ("sigma", float),
            ("batch_size", int),
            ("val_fraction", float),
            ("seed", int),
            ("amp", bool),
        ):
            self._cfg[key] = kind(self._cfg[key])
        self.model = PatchCoreModel(
            net,
            int(c.layer_dim) if c.layer_dim else min(max(net.channels), 512),
            patch_size=c.patch_size,
            mirror_pad=c.mirror_pad,
            center_features=c.center_features,
            num_neighbors=c.num_neighbors,
            sigma=c.sigma,
            knn=resolve_knn(c.knn, self.device),
            image_score=c.image_score,
        ).to(self.device)
        self.image_hw: tuple[int, int] | None = None

    @property
    def backbone(self) -> Any:  # the frozen feature extractor (a Backbone)
        return self.model.backbone

    @property
    def layer_dim(self) -> int:
        return self.model.layer_dim

    @property
    def bank(self) -> torch.Tensor | None:
        """The fitted memory bank (rows: patch features), or None before fit."""
        return self.model.memory_bank if self.model.fitted else None

    @property
    def fitted(self) -> bool:
        return self.model.fitted and self.image_hw is not None

    # -- features --------------------------------------------------------------------------
    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) float32 patch features of a batch in [0, 1], and the grid (h, w)."""
        x = x.to(self.device, non_blocking=True)
        return self.model.patch_features(x, bool(self._cfg["amp"]))

    def _batches(
        self, images: Sequence[np.ndarray], idx: Sequence[int]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        bs = self._cfg["batch_size"]
        for start in range(0, len(idx), bs):
            chunk = [images[i] for i in idx[start : start + bs]]
            yield len(chunk), to_batch(chunk, self.image_hw, "patchcore")

    # -- fit -------------------------------------------------------------------------------
    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        n = len(images)
        if n == 0:
            raise DetectorError("patchcore: no training images")
        first = np.asarray(images[0])
        self.image_hw = (int(first.shape[0]), int(first.shape[1]))
        pad = self._cfg["mirror_pad"]
        if pad >= min(self.image_hw):  # predict takes this size only
            raise DetectorError(
                f"patchcore: mirror_pad {pad} px needs images larger than "
                f"{self.image_hw[1]} x {self.image_hw[0]} px",
                hint="lower the detector's mirror_pad param",
            )
        train_idx, val_idx = split_validation(n, self._cfg["val_fraction"], self._cfg["seed"])
        rng = np.random.default_rng(self._cfg["seed"])
        per_image_cap: int | None = None
        kept: list[torch.Tensor] = []
        done = 0
        total_patches = 0
        views = FLIP_VIEWS if self._cfg["train_flips"] else FLIP_VIEWS[:1]
        for count, batch in self._batches(images, train_idx):
            for dims in views:
                feats, (h, w) = self.patch_features(batch.flip(dims) if dims else batch)
                if per_image_cap is None:
                    per_image_cap = max(
                        1,
                        min(
                            h * w,
                            self._cfg["max_train_patches"] // (len(train_idx) * len(views)),
                        ),
                    )
                # Bounded memory: a seeded subsample of each image (each view).
                feats = sample_per_image(feats.view(count, h * w, -1), per_image_cap, rng)
                kept.append(feats.reshape(-1, feats.shape[-1]))
                total_patches += count * h * w
            done += count
            if progress:
                progress("features", done, len(train_idx))
        pool = torch.cat(kept)
        del kept
        pooled = int(pool.shape[0])
        n_select = max(
            1, min(self._cfg["max_bank"], int(round(pool.shape[0] * self._cfg["coreset_ratio"])))
        )
        t1 = time.perf_counter()
        sel = greedy_coreset(pool, n_select, self._cfg["proj_dim"], self._cfg["seed"], progress)
        self.model.memory_bank = pool[sel].contiguous()
        del pool
        t2 = time.perf_counter()
        self.model.knn_index()  # the search index is built once per bank
        good_scores: list[float] = []
        if val_idx:
            done = 0
            for count, batch in self._batches(images, val_idx):
                good_scores += self._predict_tensor(batch)[1].tolist()
                done += count
                if progress:
                    progress("validate", done, len(val_idx))
        return FitReport(
            n_images=n,
            seconds=time.perf_counter() - t0,
            good_scores=[float(s) for s in good_scores],
            extra={
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "good_scores_from": "validation split" if val_idx else "none (one image)",
                "patches_seen": total_patches,
                "patches_pooled": pooled,
                "bank_size": int(self.model.memory_bank.shape[0]),
                "feature_dim": int(self.model.memory_bank.shape[1]),
                "coreset_seconds": round(t2 - t1, 3),
            },
        )

    # -- predict ---------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        self.require_fitted()
        x = batch.to(self.device, non_blocking=True)
        maps, scores = self.model(x, bool(self._cfg["amp"]))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    def predict(self, images: np.ndarray) -> Prediction:
        return self.predict_batched(images)

    # -- one backbone pass for several PatchCores (the ensemble) ----------------------------
    def shared_pass_key(self) -> tuple[Any, ...]:
        """PatchCores with equal keys read one backbone pass the same way (same weights,
        mirrored context, patch size, precision and device), each from its own layers."""
        ident = self.backbone.identity
        c = self._cfg
        return (ident["backbone"], ident["weights_sha256"], c["mirror_pad"], c["patch_size"],
                c["amp"], str(self.device))  # fmt: skip

    @torch.no_grad()
    def stage_maps(self, batch: torch.Tensor, trunk: Any) -> dict[str, torch.Tensor]:
        """The stage maps of a batch in [0, 1] through `trunk` (this detector's backbone or
        one tapping more of its layers, `Backbone.tapping`), by layer name."""
        x = batch.to(self.device, non_blocking=True)
        return self.model.stage_maps(x, trunk, bool(self._cfg["amp"]))

    @torch.no_grad()
    def predict_stage_maps(
        self, maps: dict[str, torch.Tensor], image_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores) of a batch from `stage_maps` of a pass shared with others: the
        same as `predict` on that batch."""
        self.require_fitted()
        feats, grid = self.model.features_of(maps)
        n = int(next(iter(maps.values())).shape[0])
        heat, scores = self.model.score(feats, n, grid, image_hw)
        return heat.float().cpu().numpy(), scores.float().cpu().numpy()

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _fitted_state(self) -> dict[str, Any]:
        return {
            "memory_bank": self.model.memory_bank,
            "layer_dim": self.layer_dim,
            "backbone_identity": dict(self.backbone.identity),
        }

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        bank, identity = state["memory_bank"], state["backbone_identity"]
        layer_dim = int(state["layer_dim"])
        check_identity(identity, self.backbone.identity)
        if layer_dim != self.layer_dim or bank.shape[1] != self.model.feature_dim:
            raise DetectorError(
                f"patchcore: saved memory bank has {bank.shape[1]} dims, the configured "
                f"features have {self.model.feature_dim}"
            )
        self.model.memory_bank = bank.to(self.device, torch.float32).contiguous()
        self.model.knn_index()

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) the model was fitted on, or None before fit."""
        return None if self.image_hw is None else (self.image_hw[1], self.image_hw[0])
