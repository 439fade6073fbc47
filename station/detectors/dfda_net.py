"""DFDA's network: the two attention modules, the pair of frozen backbones, the per-branch stage
concatenation, and `DFDAModel`, the plain torch module that scores images (what an export
takes). Fitting lives in station.detectors.dfda_fit and station.detectors.dfda."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.common import (
    autocast_for,
    local_aggregate,
    nearest_neighbours,
    upsample_smooth,
)


class ChannelSpatialAttention(nn.Module):
    """CBAM-style attention, channel and spatial parts computed in parallel from the input."""

    def __init__(
        self, channels: int, reduction: int = 4, kernel: int = 7, standardize: bool = False
    ) -> None:
        super().__init__()
        self.standardize = standardize
        hidden = max(8, channels // reduction)
        self.mlp = nn.Sequential(  # three fully connected layers, shared by max and mean
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx = x.amax(dim=(2, 3))
        mean = x.mean(dim=(2, 3))
        mc = torch.sigmoid(self.mlp(mx) + self.mlp(mean))[:, :, None, None]
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        if self.standardize:  # each map relative to its own image: a local contrast
            mu = pooled.mean(dim=(2, 3), keepdim=True)
            sd = pooled.std(dim=(2, 3), keepdim=True)
            pooled = (pooled - mu) / (sd + 1e-6)
        ms = torch.sigmoid(self.spatial(pooled))
        return x * mc * ms


class QueryKeyAttention(nn.Module):
    """Query (max-pooled) x key (mean-pooled) affinity; sigmoid; positions reweighted."""

    def __init__(self, channels: int, dim: int = 64) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, dim, 1)
        self.key = nn.Conv2d(channels, dim, 1)
        self.dim = dim

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1 x H x W: each position's mean sigmoid affinity to all positions."""
        n, _, h, w = x.shape
        q = self.query(F.max_pool2d(x, 3, stride=1, padding=1)).flatten(2)  # N x d x HW
        k = self.key(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)).flatten(2)
        s = torch.sigmoid(torch.bmm(q.transpose(1, 2), k) / math.sqrt(self.dim))  # N x HW x HW
        return s.mean(dim=2).view(n, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class DualBackbone(nn.Module):
    """Both frozen backbones; `identity` records both (what the artifact stores)."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = b
        ida, idb = dict(a.identity), dict(b.identity)  # type: ignore[arg-type]
        self.identity: dict[str, Any] = {
            "backbone": f"{ida['backbone']}+{idb['backbone']}",
            "weights_sha256": f"{ida['weights_sha256']}+{idb['weights_sha256']}",
            "weights_source": f"{ida['weights_source']}+{idb['weights_source']}",
            "branches": {"cbam": ida, "query_key": idb},
        }


def concat_stages(feats: Sequence[torch.Tensor], patch_size: int) -> torch.Tensor:
    """Stage maps, each averaged over `patch_size` neighbourhoods, on the first one's grid."""
    grid = feats[0].shape[-2:]
    out = []
    for f in feats:
        f = local_aggregate(f.float(), patch_size)
        if f.shape[-2:] != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, 1)


# -- the detector -----------------------------------------------------------------------------


class DFDAModel(nn.Module):
    """DFDA's exportable forward: an N x 3 x H x W batch (RGB in [0, 1]) -> both backbones'
    maps -> attention -> per-branch scaling -> concatenation -> distance of each patch to its
    nearest K-means centre -> anomaly maps (N x H x W, smoothed) and image scores (max).
    The branch scales and the centres are buffers (empty centres: not fitted)."""

    scales: torch.Tensor
    centres: torch.Tensor

    def __init__(
        self,
        backbone: DualBackbone,
        cbam: ChannelSpatialAttention,
        qk: QueryKeyAttention,
        patch_size: int = 3,
        use_cbam: bool = True,
        use_query_key: bool = True,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.cbam = cbam
        self.qk = qk
        self.patch_size = int(patch_size)
        self.use_cbam = bool(use_cbam)
        self.use_query_key = bool(use_query_key)
        self.sigma = float(sigma)
        dim = sum(backbone.a.channels) + sum(backbone.b.channels)  # type: ignore[arg-type]
        self.register_buffer("scales", torch.ones(2))
        self.register_buffer("centres", torch.zeros(0, dim))

    @property
    def fitted(self) -> bool:
        return self.centres.shape[0] > 0

    def branch_maps(self, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features of a batch: (branch A map, branch B map), float32."""
        with autocast_for(x.device, amp):
            fa = self.backbone.a(x)
            fb = self.backbone.b(x)
        return concat_stages(fa, self.patch_size), concat_stages(fb, self.patch_size)

    def attend(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend each branch and resize B to A's grid (not scaled)."""
        if self.use_cbam:
            a = self.cbam(a)
        if self.use_query_key:
            b = self.qk(b)
        if b.shape[-2:] != a.shape[-2:]:
            b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return a, b

    def fuse(
        self, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend, scale each branch (`scales`, else the fitted ones), concatenate."""
        a, b = self.attend(a, b)
        s = (self.scales if scales is None else scales).to(a.device)
        return torch.cat([a * s[0], b * s[1]], 1)

    def score_branches(
        self, a: torch.Tensor, b: torch.Tensor, image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps N x H x W, scores N) from branch maps, for images of size `image_hw`."""
        z = self.fuse(a, b)
        n, d, h, w = z.shape
        dist, _ = nearest_neighbours(z.permute(0, 2, 3, 1).reshape(-1, d), self.centres, k=1)
        maps = upsample_smooth(dist[:, 0].view(n, 1, h, w), image_hw, self.sigma)
        return maps, maps.flatten(1).amax(1)

    def forward(self, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps, image scores) of a fitted model."""
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        return self.score_branches(*self.branch_maps(x, amp), hw)
