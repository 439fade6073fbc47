"""PatchCore's network: the plain torch module that scores images (what an export takes).

`PatchCoreModel(x)` maps an N x 3 x H x W batch (RGB in [0, 1], on the module's device) to
anomaly maps (N x H x W) and image scores (N). The frozen backbone is a submodule and the fitted
memory bank a buffer, so `state_dict()` holds everything a forward needs. Fitting (the coreset)
lives in station.detectors.patchcore.

The nearest-neighbour search over the bank goes through a `knn` index (station.detectors.knn,
method `knn`: torch, faiss or faiss_ivf), built once per bank: on first use after the bank is
set, replaced, changed in place or moved to another device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.backbones import Backbone
from station.detectors.common import (
    autocast_for,
    center_per_image,
    mirrored_stage_maps,
    upsample_smooth,
)
from station.detectors.knn import KnnIndex, build_index

# How an image's score is read from its patches: the paper's re-weighted distance of the most
# anomalous patch, that distance alone, or the peak of the smoothed map (PatchCore version 2).
IMAGE_SCORES = ("weighted_max", "max", "smoothed_peak")


class PatchCoreModel(nn.Module):
    """Backbone features -> nearest memory-bank distances -> map and image score."""

    memory_bank: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        layer_dim: int,
        patch_size: int = 3,
        mirror_pad: int = 32,
        center_features: bool = True,
        num_neighbors: int = 9,
        sigma: float = 4.0,
        knn: str = "torch",
        image_score: str = "weighted_max",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer_dim = int(layer_dim)
        self.patch_size = int(patch_size)
        self.mirror_pad = int(mirror_pad)
        self.center_features = bool(center_features)
        self.num_neighbors = int(num_neighbors)
        self.sigma = float(sigma)
        self.knn = str(knn)  # a concrete method: knn.resolve_knn turns "auto" into one
        self.image_score = str(image_score)  # one of IMAGE_SCORES
        # Empty until fitted or loaded: one row per kept patch feature.
        self.register_buffer("memory_bank", torch.zeros(0, self.feature_dim))
        self._index: KnnIndex | None = None
        self._index_of: tuple[torch.Tensor, int, str] | None = None  # bank, version, method

    @property
    def feature_dim(self) -> int:
        return self.layer_dim * len(self.backbone.layers)

    @property
    def fitted(self) -> bool:
        return self.memory_bank.shape[0] > 0

    def knn_index(self) -> KnnIndex:
        """The search index over the current memory bank, built when the bank (the tensor,
        its in-place version or its device) or the method changed since the last build."""
        bank = self.memory_bank
        key = self._index_of
        if (
            self._index is None
            or key is None
            or key[0] is not bank
            or key[1] != bank._version
            or key[2] != self.knn
        ):
            self._index = build_index(bank, self.knn)
            self._index_of = (bank, bank._version, self.knn)
        return self._index

    def patch_features(
        self, x: torch.Tensor, amp: bool = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) float32 patch features of a batch, and the grid (h, w). `amp`: the
        backbone in fp16 on CUDA (features stay fp32)."""
        return self.features_of(self.stage_maps(x, self.backbone, amp))

    def stage_maps(
        self, x: torch.Tensor, backbone: Backbone, amp: bool = False
    ) -> dict[str, torch.Tensor]:
        """`backbone`'s mirrored, patch-averaged stage maps of a batch by layer name, as this
        model reads its own; `backbone` may tap more layers than its own."""
        with autocast_for(x.device, amp):
            maps = mirrored_stage_maps(backbone, x, self.mirror_pad, self.patch_size)
        return dict(zip(backbone.layers, maps, strict=True))

    def features_of(
        self, maps: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) patch features and the grid (h, w) from `stage_maps`, read at this
        model's own layers."""
        feats = [maps[layer] for layer in self.backbone.layers]
        grid = feats[0].shape[-2:]
        parts = []
        for f in feats:
            if self.center_features:
                f = center_per_image(f)
            if f.shape[-2:] != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            n, c, h, w = f.shape
            f = f.permute(0, 2, 3, 1).reshape(-1, c)
            if c != self.layer_dim:  # equal share of dimensions per stage
                f = F.adaptive_avg_pool1d(f[:, None], self.layer_dim)[:, 0]
            parts.append(f)
        return torch.cat(parts, dim=1), (int(grid[0]), int(grid[1]))

    def score(
        self, feats: torch.Tensor, n: int, grid: tuple[int, int], image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps N x H x W, scores N) from the patch features of n images on grid (h, w)."""
        h, w = grid
        bank = self.memory_bank
        index = self.knn_index()
        dist, idx = index.search(feats, 1)
        dist, idx = dist[:, 0].view(n, h * w), idx[:, 0].view(n, h * w)
        # Re-weighting (paper, eq. 7) from the most anomalous patch of each image.
        top = torch.argmax(dist, dim=1)
        ar = torch.arange(n, device=dist.device)
        m_test = feats.view(n, h * w, -1)[ar, top]
        m_star = bank[idx[ar, top]]
        maps = upsample_smooth(dist.view(n, 1, h, w), image_hw, self.sigma)
        scores = self._image_scores(index, dist[ar, top], m_test, m_star, maps)
        return self._scaled(maps, scores), scores

    def _image_scores(
        self,
        index: KnnIndex,
        d_top: torch.Tensor,
        m_test: torch.Tensor,
        m_star: torch.Tensor,
        smoothed: torch.Tensor,
    ) -> torch.Tensor:
        """Image scores by `image_score` from each image's top patch (`m_test`, at distance
        `d_top` from its nearest bank row `m_star`) and its smoothed map. The default is the
        paper's (eq. 6-7): the top patch's distance times its re-weighting factor."""
        if self.image_score == "smoothed_peak":
            return smoothed.flatten(1).amax(1)
        if self.image_score == "max":
            return d_top
        return d_top * self._weight(index, m_test, m_star)

    def _weight(self, index: KnnIndex, m_test: torch.Tensor, m_star: torch.Tensor) -> torch.Tensor:
        """Re-weighting factor (paper, eq. 7) of each image's top patch `m_test`, whose nearest
        bank feature is `m_star`: how isolated m_star is among its bank neighbours."""
        bank = self.memory_bank
        k = min(self.num_neighbors, bank.shape[0])
        if k <= 1:
            return torch.ones(m_test.shape[0], device=m_test.device)
        _, support = index.search(m_star, k)  # includes m_star itself
        d_support = torch.cdist(m_test[:, None], bank[support])[:, 0]  # n x k
        return 1.0 - torch.softmax(d_support, dim=1)[:, 0]

    @staticmethod
    def _scaled(maps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The smoothed maps scaled so each peak is its image score: a one-patch fault keeps
        its height, and the heatmap's peak reads on the image score's (threshold's) scale."""
        peak = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
        return maps * (scores / peak)[:, None, None]

    def score_from_distances(
        self, feats: torch.Tensor, dist: torch.Tensor, smoothed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`score` for an exported graph that already gives each patch's distance to its
        nearest bank row (`dist`, N x h*w) and the upsampled, smoothed map of those distances
        (`smoothed`, N x H x W), beside the patch features (N*h*w x D). Only each image's top
        patch is searched here (the `knn` index: exact distance, nearest row, re-weighting)."""
        n = int(dist.shape[0])
        top = torch.argmax(dist, dim=1)
        m_test = feats.view(n, dist.shape[1], -1)[torch.arange(n), top]
        index = self.knn_index()
        d_top, i_top = index.search(m_test, 1)
        m_star = self.memory_bank[i_top[:, 0]]
        scores = self._image_scores(index, d_top[:, 0], m_test, m_star, smoothed)
        return self._scaled(smoothed, scores), scores

    def forward(self, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps N x H x W, image scores N) of a fitted model."""
        feats, grid = self.patch_features(x, amp)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        return self.score(feats, int(x.shape[0]), grid, hw)
