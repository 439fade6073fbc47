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

Patches of all good images form a memory bank, thinned by a greedy k-center coreset (~10 %)
chosen in a random low-dimensional projection. Memory stays bounded: features stream in
batches, at most `max_train_patches` patches are kept (a seeded per-image subsample) and the
bank never exceeds `max_bank` rows.

Predict: each patch's distance to its nearest bank feature is its anomaly score. The image
score is the paper's: the highest patch score times the re-weighting factor w in (0, 1] (how
isolated the nearest bank feature of that patch is among its `num_neighbors` bank neighbours).
The map is the patch scores upsampled to the input size, Gaussian-smoothed (sigma 4) and scaled
so that its peak equals the image score: smoothing alone would lower a one-patch fault's peak
far more than a broad one's (version 2 scored images by the smoothed peak; AITEX, README).

Devices: CPU or CUDA (nearest-neighbour search in chunks on either). `amp=True` runs the
backbone in fp16 on CUDA (features and distances stay fp32); it is off by default until its
tolerance test (tests/test_patchcore.py, GPU only) has passed on the target GPU.

Validation: `fit` holds out `val_fraction` of the good images (seeded) and reports their scores
as FitReport.good_scores; the bank is built from the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from station.detectors.backbones import check_identity, create_backbone, resolve_device
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import (
    center_per_image,
    mirrored_stage_maps,
    nearest_neighbours,
    predict_in_batches,
    sample_per_image,
    split_validation,
    to_batch,
    upsample_smooth,
)
from station.detectors.registry import register
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


@register
class PatchCore(Detector):
    name = "patchcore"
    version = 3  # 2: mirror_pad and center_features; 3: image score = weighted max patch score

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str = "auto",
        device: str = "auto",
        layers: Sequence[str] | None = None,
        patch_size: int = 3,
        mirror_pad: int = 32,
        center_features: bool = True,
        layer_dim: int | None = None,
        coreset_ratio: float = 0.1,
        max_bank: int = 10_000,
        max_train_patches: int = 40_000,
        proj_dim: int = 128,
        num_neighbors: int = 9,
        sigma: float = 4.0,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        seed: int = 0,
        amp: bool = False,  # fp16 backbone on CUDA; see tests (GPU only) for its tolerance
    ) -> None:
        if not 0 < coreset_ratio <= 1:
            raise DetectorError(f"patchcore: coreset_ratio must be in (0, 1], not {coreset_ratio}")
        if max_bank < 1 or max_train_patches < 1 or batch_size < 1 or num_neighbors < 1:
            raise DetectorError(
                "patchcore: max_bank, max_train_patches, batch_size, num_neighbors must be >= 1"
            )
        if not 0 <= val_fraction < 1:
            raise DetectorError(f"patchcore: val_fraction must be in [0, 1), not {val_fraction}")
        self.device = resolve_device(device)
        self.backbone = create_backbone(backbone, weights, layers).to(self.device)
        if mirror_pad < 0 or any(mirror_pad % s for s in self.backbone.strides):
            raise DetectorError(
                f"patchcore: mirror_pad must be >= 0 and a multiple of the layers' strides "
                f"{self.backbone.strides}, not {mirror_pad}"
            )
        self._cfg: dict[str, Any] = {
            "backbone": backbone,
            "weights": weights,
            "device": device,
            "layers": list(self.backbone.layers),
            "patch_size": int(patch_size),
            "mirror_pad": int(mirror_pad),
            "center_features": bool(center_features),
            "layer_dim": layer_dim,
            "coreset_ratio": float(coreset_ratio),
            "max_bank": int(max_bank),
            "max_train_patches": int(max_train_patches),
            "proj_dim": int(proj_dim),
            "num_neighbors": int(num_neighbors),
            "sigma": float(sigma),
            "batch_size": int(batch_size),
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            "amp": bool(amp),
        }
        channels = self.backbone.channels
        self.layer_dim = int(layer_dim) if layer_dim else min(max(channels), 512)
        self.bank: torch.Tensor | None = None
        self.image_hw: tuple[int, int] | None = None

    # -- features --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self._cfg["amp"]:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) float32 patch features of a batch in [0, 1], and the grid (h, w)."""
        x = x.to(self.device, non_blocking=True)
        with self._autocast():
            feats = mirrored_stage_maps(
                self.backbone, x, self._cfg["mirror_pad"], self._cfg["patch_size"]
            )
        grid = feats[0].shape[-2:]
        parts = []
        for f in feats:
            if self._cfg["center_features"]:
                f = center_per_image(f)
            if f.shape[-2:] != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            n, c, h, w = f.shape
            f = f.permute(0, 2, 3, 1).reshape(-1, c)
            if c != self.layer_dim:  # equal share of dimensions per stage
                f = F.adaptive_avg_pool1d(f[:, None], self.layer_dim)[:, 0]
            parts.append(f)
        return torch.cat(parts, dim=1), (int(grid[0]), int(grid[1]))

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
        for count, batch in self._batches(images, train_idx):
            feats, (h, w) = self.patch_features(batch)
            if per_image_cap is None:
                per_image = h * w
                per_image_cap = max(
                    1, min(per_image, self._cfg["max_train_patches"] // len(train_idx))
                )
            # Bounded memory: a seeded subsample of each image.
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
        self.bank = pool[sel].contiguous()
        del pool
        t2 = time.perf_counter()
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
                "bank_size": int(self.bank.shape[0]),
                "feature_dim": int(self.bank.shape[1]),
                "coreset_seconds": round(t2 - t1, 3),
            },
        )

    # -- predict ---------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.bank is None or self.image_hw is None:
            raise DetectorError("patchcore: not fitted", hint="run station train first")
        n = batch.shape[0]
        feats, (h, w) = self.patch_features(batch)
        bank = self.bank
        dist, idx = nearest_neighbours(feats, bank, k=1)
        dist, idx = dist[:, 0].view(n, h * w), idx[:, 0].view(n, h * w)
        # Re-weighting (paper, eq. 7) from the most anomalous patch of each image.
        top = torch.argmax(dist, dim=1)
        ar = torch.arange(n, device=dist.device)
        m_test = feats.view(n, h * w, -1)[ar, top]
        m_star = bank[idx[ar, top]]
        k = min(self._cfg["num_neighbors"], bank.shape[0])
        if k > 1:
            _, support = nearest_neighbours(m_star, bank, k=k)  # includes m_star itself
            d_support = torch.cdist(m_test[:, None], bank[support])[:, 0]  # n x k
            weight = 1.0 - torch.softmax(d_support, dim=1)[:, 0]
        else:
            weight = torch.ones(n, device=dist.device)
        # Image score (paper, eq. 6-7): the weighted distance of the most anomalous patch. The
        # smoothed map is scaled so its peak is that score: a one-patch fault keeps its height,
        # and the heatmap's peak reads on the same scale as the image score and its threshold.
        scores = dist[ar, top] * weight
        maps = upsample_smooth(dist.view(n, 1, h, w), self.image_hw, self._cfg["sigma"])
        peak = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
        maps = maps * (scores / peak)[:, None, None]
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    def predict(self, images: np.ndarray) -> Prediction:
        if self.bank is None or self.image_hw is None:
            raise DetectorError("patchcore: not fitted", hint="run station train first")
        return predict_in_batches(
            images, self.image_hw, "patchcore", self._cfg["batch_size"], self._predict_tensor
        )

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def state_dict(self) -> dict[str, Any]:
        if self.bank is None or self.image_hw is None:
            raise DetectorError("patchcore: nothing to save, the detector is not fitted")
        return {
            "memory_bank": self.bank.detach().cpu(),
            "image_hw": list(self.image_hw),
            "layer_dim": self.layer_dim,
            "backbone_identity": dict(self.backbone.identity),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            bank = state["memory_bank"]
            hw = state["image_hw"]
            identity = state["backbone_identity"]
            layer_dim = int(state["layer_dim"])
        except KeyError as exc:
            raise DetectorError(f"patchcore: saved state lacks {exc.args[0]!r}") from None
        check_identity(identity, self.backbone.identity)
        if layer_dim != self.layer_dim or bank.shape[1] != layer_dim * len(self.backbone.layers):
            raise DetectorError(
                f"patchcore: saved memory bank has {bank.shape[1]} dims, the configured "
                f"features have {self.layer_dim * len(self.backbone.layers)}"
            )
        self.bank = bank.to(self.device, torch.float32).contiguous()
        self.image_hw = (int(hw[0]), int(hw[1]))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) the model was fitted on, or None before fit."""
        return None if self.image_hw is None else (self.image_hw[1], self.image_hw[0])
