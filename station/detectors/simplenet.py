"""SimpleNet (Liu et al., CVPR 2023): a discriminator on adapted frozen-backbone features.

Pipeline, following the paper and its reference settings:
- frozen ImageNet backbone, two mid-level stages (stride 8 and 16);
- each stage's 3x3 neighbourhood is unfolded per position (C x 9 values), the deeper map is
  bilinearly upsampled to the shallower grid, each stage's vector is reduced to `embed_dim`
  by adaptive average pooling, and the stages' vectors are pooled once more to `embed_dim`;
- one linear feature adaptor; synthetic anomalies = adapted features + N(0, noise_std^2);
- discriminator Linear(d, hidden) + BatchNorm + LeakyReLU(0.2) + Linear(hidden, 1);
- truncated L1 loss: true scores pushed above +margin, noisy ones below -margin;
- adaptor AdamW (lr 1e-4), discriminator Adam (lr 2e-4, weight decay 1e-5);
- anomaly map = softplus(-D) per position (positive, same order as -D), upsampled to the input
  size, Gaussian-smoothed (sigma 4) before the softplus;
  image score = max of the map.

Differences from the reference code, on purpose: backbone features are computed once and
cached (float16) and the epochs run over the cache with features shuffled across images; the
checkpoint is chosen on held-out GOOD training images (lowest validation loss: the same
truncated L1 loss on held-out features and their noisy copies), never on test data. With
fewer than `min_split_images` training images nothing is held out and the last epoch is kept.
An epoch is one pass over the cache but at least `min_steps_per_epoch` optimiser steps, so
that two training images still train a usable model. The noise sigma only means something
relative to the feature scale, which differs per backbone: with `feature_std` set, the cached
features are multiplied by one scalar so that their mean per-dimension standard deviation is
`feature_std` (0.02: the noise is ~0.75 of the features' own spread; on efficientnet_lite0
raw features the paper's 0.015 is ~0.6 % of it and the discriminator never learns). None
keeps raw features, as the reference does with WideResNet50.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.backbones import check_identity, create_backbone, resolve_device
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import (
    predict_in_batches,
    split_validation,
    to_batch,
    upsample_smooth,
)
from station.detectors.registry import CheckedConfig, bound_problems, register
from station.errors import DetectorError


def aggregate_features(stages: Sequence[torch.Tensor], embed_dim: int) -> torch.Tensor:
    """Locally aware patch features: N x h x w x embed_dim on the first stage's grid.

    Per stage: unfold 3x3 neighbourhoods (C*9 values per position, channel-major), upsample
    to the first stage's grid, adaptive-average-pool to `embed_dim`; then pool the stages'
    concatenation to `embed_dim`.
    """
    n, _, h, w = stages[0].shape
    pooled = []
    for feat in stages:
        c, fh, fw = feat.shape[1], feat.shape[2], feat.shape[3]
        patches = F.unfold(feat, kernel_size=3, padding=1).view(n, c * 9, fh, fw)
        if (fh, fw) != (h, w):
            patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
        flat = patches.permute(0, 2, 3, 1).reshape(n * h * w, 1, c * 9)
        pooled.append(F.adaptive_avg_pool1d(flat, embed_dim))
    stacked = torch.cat(pooled, dim=2)  # (n*h*w, 1, n_stages*embed_dim)
    return F.adaptive_avg_pool1d(stacked, embed_dim).view(n, h, w, embed_dim)


class Discriminator(nn.Module):
    """Two-layer MLP normality scorer: positive for normal features, negative for anomalous."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x)).squeeze(-1)


def truncated_l1(
    true_scores: torch.Tensor, fake_scores: torch.Tensor, margin: float
) -> torch.Tensor:
    """max(0, margin - D(true)) + max(0, margin + D(fake)), each averaged."""
    return (
        torch.clamp(margin - true_scores, min=0).mean()
        + torch.clamp(margin + fake_scores, min=0).mean()
    )


class SimpleNetModel(nn.Module):
    """SimpleNet's exportable forward: an N x 3 x H x W batch (RGB in [0, 1]) -> backbone
    features -> adaptor -> discriminator -> anomaly maps (N x H x W) and image scores (max).
    `feature_scale` is the fitted feature scaling (a constant of the forward)."""

    def __init__(
        self,
        backbone: nn.Module,
        adaptor: nn.Linear,
        discriminator: Discriminator,
        embed_dim: int,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor
        self.discriminator = discriminator
        self.embed_dim = int(embed_dim)
        self.sigma = float(sigma)
        self.feature_scale = 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x h x w x embed_dim aggregated, scaled backbone features."""
        return aggregate_features(self.backbone(x), self.embed_dim) * self.feature_scale

    def maps_from_features(self, feats: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """Anomaly maps N x H x W (`image_hw`) from N x h x w x d features."""
        n, h, w, d = feats.shape
        flat = feats.reshape(-1, d).float()
        patch = -self.discriminator(self.adaptor(flat)).view(n, 1, h, w)
        # -D can be negative; softplus keeps the order of every pixel and image score (so
        # all metrics are unchanged) and makes scores positive, as thresholds need.
        return F.softplus(upsample_smooth(patch, image_hw, self.sigma))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps, image scores) of a fitted model in eval mode."""
        maps = self.maps_from_features(self.features(x), (int(x.shape[-2]), int(x.shape[-1])))
        return maps, maps.flatten(1).amax(1)


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass
class SimpleNetConfig(CheckedConfig):
    """SimpleNet's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    device: str = "auto"
    layers: Sequence[str] | None = None
    embed_dim: int = 1536
    hidden_dim: int = 1024
    noise_std: float = 0.015
    margin: float = 0.5
    adaptor_lr: float = 1e-4
    discriminator_lr: float = 2e-4
    epochs: int = 16
    batch_size: int = 8
    min_steps_per_epoch: int = 8
    val_fraction: float = 0.1
    min_split_images: int = 5
    smoothing_sigma: float = 4.0
    feature_std: float | None = 0.02
    seed: int = 0

    def problems(self) -> list[str]:
        """Every value out of range, one line each."""
        sizes = ("embed_dim", "hidden_dim", "epochs", "batch_size", "min_steps_per_epoch")
        out = bound_problems("simplenet", self, ">= 1", *sizes)
        out += bound_problems("simplenet", self, "> 0", "noise_std", "margin")
        if not 0.0 <= self.val_fraction < 1.0:
            out.append(f"simplenet: val_fraction must be in [0, 1), not {self.val_fraction}")
        out += bound_problems("simplenet", self, "> 0", "adaptor_lr", "discriminator_lr")
        out += bound_problems("simplenet", self, ">= 0", "smoothing_sigma")
        return out


@register
class SimpleNet(Detector):
    """SimpleNet detector; every constructor argument is part of `config()`.

    backbone/weights/device/layers: see station.detectors.backbones (layers: two stages,
    default the backbone's stride-8 and stride-16 stages). embed_dim: feature size after
    aggregation (1536 in the paper; smaller is much faster on a CPU). batch_size: images per
    backbone batch; a training step uses the features of that many images.
    """

    name = "simplenet"
    version = 1
    size_key = "image_size"  # the saved state's name for image_hw
    Config = SimpleNetConfig

    def __init__(self, **params: Any) -> None:
        c = SimpleNetConfig(**params)
        c.check()
        self.backbone_name = c.backbone
        self.weights = c.weights
        self.device_spec = c.device
        self.device = resolve_device(c.device)
        backbone = create_backbone(c.backbone, c.weights, c.layers).to(self.device)
        if len(backbone.layers) != 2:
            raise DetectorError(
                f"simplenet uses two backbone stages, got {backbone.layers}",
                hint="give two layers (a stride-8 and a stride-16 stage) or leave layers unset",
            )
        self.layers = list(backbone.layers)
        self.embed_dim = int(c.embed_dim)
        self.hidden_dim = int(c.hidden_dim)
        self.noise_std = float(c.noise_std)
        self.margin = float(c.margin)
        self.adaptor_lr = float(c.adaptor_lr)
        self.discriminator_lr = float(c.discriminator_lr)
        self.epochs = int(c.epochs)
        self.batch_size = int(c.batch_size)
        self.min_steps_per_epoch = int(c.min_steps_per_epoch)
        self.val_fraction = float(c.val_fraction)
        self.min_split_images = int(c.min_split_images)
        self.smoothing_sigma = float(c.smoothing_sigma)
        self.feature_std = None if c.feature_std is None else float(c.feature_std)
        self.seed = int(c.seed)
        adaptor, discriminator = self._new_heads()
        self.model = SimpleNetModel(
            backbone, adaptor, discriminator, self.embed_dim, self.smoothing_sigma
        )
        self.image_hw: tuple[int, int] | None = None

    # -- the network (SimpleNetModel) -------------------------------------------------------

    @property
    def backbone(self) -> Any:  # the frozen feature extractor (a Backbone)
        return self.model.backbone

    @property
    def adaptor(self) -> nn.Linear:
        return self.model.adaptor

    @adaptor.setter
    def adaptor(self, module: nn.Linear) -> None:
        self.model.adaptor = module

    @property
    def discriminator(self) -> Discriminator:
        return self.model.discriminator

    @discriminator.setter
    def discriminator(self, module: Discriminator) -> None:
        self.model.discriminator = module

    @property
    def feature_scale(self) -> float:
        return self.model.feature_scale

    @feature_scale.setter
    def feature_scale(self, value: float) -> None:
        self.model.feature_scale = value

    # -- construction and state -----------------------------------------------------------

    def _new_heads(self) -> tuple[nn.Linear, Discriminator]:
        """A fresh adaptor and discriminator on the device, initialised from the seed alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            adaptor = nn.Linear(self.embed_dim, self.embed_dim)
            discriminator = Discriminator(self.embed_dim, self.hidden_dim)
            _xavier(adaptor)
            _xavier(discriminator)
        return adaptor.to(self.device), discriminator.to(self.device)

    def _build_heads(self) -> None:
        self.adaptor, self.discriminator = self._new_heads()

    def config(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_name,
            "weights": self.weights,
            "device": self.device_spec,
            "layers": list(self.layers),
            "embed_dim": self.embed_dim,
            "hidden_dim": self.hidden_dim,
            "noise_std": self.noise_std,
            "margin": self.margin,
            "adaptor_lr": self.adaptor_lr,
            "discriminator_lr": self.discriminator_lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "min_steps_per_epoch": self.min_steps_per_epoch,
            "val_fraction": self.val_fraction,
            "min_split_images": self.min_split_images,
            "smoothing_sigma": self.smoothing_sigma,
            "feature_std": self.feature_std,
            "seed": self.seed,
        }

    def _fitted_state(self) -> dict[str, Any]:
        return {
            "adaptor": self.adaptor.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "feature_scale": self.feature_scale,
            "backbone_identity": dict(self.backbone.identity),
        }

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        check_identity(state.get("backbone_identity", {}), self.backbone.identity)
        self.load_module(self.adaptor, state["adaptor"])
        self.load_module(self.discriminator, state["discriminator"])
        self.feature_scale = float(state.get("feature_scale", 1.0))

    # -- features -------------------------------------------------------------------------

    @torch.no_grad()
    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """N x h x w x embed_dim aggregated backbone features of a [0,1] image batch."""
        return self.model.features(batch.to(self.device))

    def _cache(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressFn | None,
        done: int,
        total: int,
    ) -> torch.Tensor:
        """Features of all `images` stacked: N x h x w x d, float16, on the device."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = to_batch(chunk, self.image_hw, "simplenet")
            out.append(self._features(batch).to(torch.float16))
            if progress:
                progress("features", done + start + len(chunk), total)
        return torch.cat(out)

    def _scores_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Anomaly maps N x H x W (input size) from N x h x w x d features (eval mode)."""
        assert self.image_hw is not None
        self.adaptor.eval()
        self.discriminator.eval()
        with torch.no_grad():
            return self.model.maps_from_features(feats, self.image_hw)

    # -- training ---------------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise DetectorError("simplenet: no training images", hint="capture good parts first")
        first = np.asarray(images[0])
        self.image_hw = (int(first.shape[0]), int(first.shape[1]))
        self.feature_scale = 1.0
        n = len(images)
        if n >= self.min_split_images and self.val_fraction > 0:
            train_idx, val_idx = split_validation(n, self.val_fraction, self.seed)
        else:
            train_idx, val_idx = list(range(n)), []
        train_feats = self._cache([images[i] for i in train_idx], progress, 0, n)
        val_feats = (
            self._cache([images[i] for i in val_idx], progress, len(train_idx), n)
            if val_idx
            else None
        )
        if self.feature_std is not None:
            self._rescale(train_feats, val_feats)
        self._build_heads()
        history, val_history, best_epoch = self._train(train_feats, val_feats, progress)
        good_feats = val_feats if val_feats is not None else train_feats
        good_scores = [float(m.max()) for m in self._maps_in_chunks(good_feats)]
        selection = (
            f"epoch {best_epoch} of {self.epochs} by lowest validation loss on "
            f"{len(val_idx)} held-out good images"
            if val_idx
            else f"fixed {self.epochs} epochs (only {n} images: none held out)"
        )
        return FitReport(
            n_images=n,
            seconds=time.perf_counter() - t0,
            good_scores=good_scores,
            extra={
                "n_train": len(train_idx),
                "n_validation": len(val_idx),
                "good_scores_from": "validation" if val_idx else "training",
                "selected_epoch": best_epoch,
                "selection": selection,
                "loss_history": history,
                "val_loss_history": val_history,
                "grid": list(train_feats.shape[1:3]),
            },
        )

    def _rescale(self, train_feats: torch.Tensor, val_feats: torch.Tensor | None) -> None:
        """One scalar so that the training features' mean per-dimension std is feature_std."""
        assert self.feature_std is not None
        flat = train_feats.reshape(-1, self.embed_dim)
        std = float(flat[:: max(1, flat.shape[0] // 50000)].float().std(0).mean())
        self.feature_scale = self.feature_std / max(std, 1e-12)
        train_feats.mul_(self.feature_scale)
        if val_feats is not None:
            val_feats.mul_(self.feature_scale)

    def _maps_in_chunks(self, feats: torch.Tensor) -> list[np.ndarray]:
        return [
            m.cpu().numpy()
            for start in range(0, feats.shape[0], self.batch_size)
            for m in self._scores_from_features(feats[start : start + self.batch_size])
        ]

    def _train(
        self,
        train_feats: torch.Tensor,
        val_feats: torch.Tensor | None,
        progress: ProgressFn | None,
    ) -> tuple[list[float], list[float], int]:
        d = self.embed_dim
        data = train_feats.reshape(-1, d)
        m = data.shape[0]
        per_image = train_feats.shape[1] * train_feats.shape[2]
        batch = min(m, self.batch_size * per_image)
        steps = max(math.ceil(m / batch), self.min_steps_per_epoch)
        cpu_gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        adaptor_opt = torch.optim.AdamW(self.adaptor.parameters(), lr=self.adaptor_lr)
        disc_opt = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.discriminator_lr, weight_decay=1e-5
        )
        val = None
        if val_feats is not None:
            # A fixed subset of held-out features and fixed noise, so epochs compare fairly.
            vflat = val_feats.reshape(-1, d)
            vgen = torch.Generator().manual_seed(self.seed + 2)
            pick = torch.randperm(vflat.shape[0], generator=vgen)[:20000].to(vflat.device)
            vsel = vflat[pick].float()
            vnoise = torch.randn(vsel.shape, generator=vgen).to(self.device) * self.noise_std
            val = (vsel, vnoise)
        history: list[float] = []
        val_history: list[float] = []
        best = (math.inf, self.epochs, None)
        for epoch in range(1, self.epochs + 1):
            self.adaptor.train()
            self.discriminator.train()
            order = torch.cat(
                [torch.randperm(m, generator=cpu_gen) for _ in range(math.ceil(steps * batch / m))]
            )
            total = torch.zeros((), device=self.device)  # summed on the device: no sync per step
            for step in range(steps):
                idx = order[step * batch : (step + 1) * batch].to(data.device)
                true = self.adaptor(data[idx].float())
                noise = (
                    torch.randn(true.shape, generator=noise_gen, device=self.device)
                    * self.noise_std
                )
                scores = self.discriminator(torch.cat([true, true + noise]))
                loss = truncated_l1(scores[: len(idx)], scores[len(idx) :], self.margin)
                adaptor_opt.zero_grad(set_to_none=True)
                disc_opt.zero_grad(set_to_none=True)
                loss.backward()
                adaptor_opt.step()
                disc_opt.step()
                total += loss.detach()
            history.append(float(total) / steps)
            if val is not None:
                vloss = self._val_loss(*val)
                val_history.append(vloss)
                if vloss < best[0]:
                    best = (vloss, epoch, self._heads_state())
            if progress:
                progress("train", epoch, self.epochs)
        if val is not None and best[2] is not None:
            self.adaptor.load_state_dict(best[2][0])
            self.discriminator.load_state_dict(best[2][1])
            return history, val_history, best[1]
        return history, val_history, self.epochs

    def _val_loss(self, feats: torch.Tensor, noise: torch.Tensor) -> float:
        self.adaptor.eval()
        self.discriminator.eval()
        with torch.no_grad():
            true = self.adaptor(feats)
            loss = truncated_l1(
                self.discriminator(true), self.discriminator(true + noise), self.margin
            )
        return float(loss)

    def _heads_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return (
            copy.deepcopy(self.adaptor.state_dict()),
            copy.deepcopy(self.discriminator.state_dict()),
        )

    # -- inference --------------------------------------------------------------------------

    def predict(self, images: np.ndarray) -> Prediction:
        if self.image_hw is None:
            raise DetectorError("simplenet: predict before fit", hint="train or load a model")
        return predict_in_batches(
            images, self.image_hw, "simplenet", self.batch_size, self._predict_tensor
        )

    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps = self._scores_from_features(self._features(batch)).float().cpu().numpy()
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)
