"""DFDA-AD: dual feature extraction, dual attention, K-means of good patch features.

After the second seed paper (DFDA-AD, MVTec AD: 99.5 % image AUROC). Pipeline:

- Two frozen ImageNet backbones. The paper uses DenseNet121 (dense block 2, stride 8) and
  ResNet50 (block 3, stride 16). Their weights cannot be installed here, so the default pair is
  EfficientNet-Lite0 `blocks.2` (stride 8, 40 ch) for the attention-A branch and the MobileNetV2
  features `13` (stride 16, 96 ch) for the attention-B branch: two different families, one
  stride-8 and one stride-16 map, as in the paper. Any pair from `backbones.BACKBONES` can be
  configured (`backbone`, `backbone2`, `layers`, `layers2`); the artifact records both weights
  identities (`DualBackbone.identity`). Each branch averages every position's 3 x 3
  neighbourhood first (`patch_size`, as PatchCore does; the paper does not aggregate).
- Branch A: CBAM-style attention with channel and spatial parts computed IN PARALLEL from the
  same input (the paper's change to CBAM, which runs them one after the other). Channel: max-
  and mean-pooled descriptors through one shared three-layer MLP (C -> C/r -> C/r -> C),
  summed, sigmoid. Spatial: channel-wise max and mean maps, 7 x 7 convolution, sigmoid. Output
  = X * Mc * Ms.
- Branch B: query-key self-attention. Query = 1x1 projection of the 3 x 3 max-pooled map, key =
  1x1 projection of the 3 x 3 mean-pooled map (both d-dimensional per position);
  S = sigmoid(Q K^T / sqrt(d)) is the position-by-position affinity; each position is
  reweighted by its mean affinity to the image (w_p = mean_q S_pq, output = X * w). It
  reweights and does not mix positions, so a defect is not smeared over the map.
- Branch B is resized to branch A's grid (28 x 28 at 224 px input, 32 x 32 at 256 px), each
  branch is scaled so that its mean squared patch norm on the training set is 1 (equal say),
  and the two are concatenated: one feature per patch.
- K-means (torch, k-means++ init, seeded, at most `kmeans_iters` = 100 Lloyd iterations,
  chunked distances; CPU and CUDA) on a bounded, seeded subsample of good patch features.
  Anomaly = Euclidean distance of each patch to its nearest centre, upsampled to the input
  size and Gaussian-smoothed (sigma 4); image score = max of the map.

Choices for what the paper leaves open (measured on AITEX by tools/ablate_dfda.py):
- k: `k="auto"` picks it from the data by the elbow of the K-means inertia curve over
  `k_candidates` (doubling steps) on a subsample of `k_select_patches` patches: the candidate
  farthest below the chord joining the first and last points of the normalised
  (log2 k, inertia) curve. An integer k fixes it.
- Attention training without labels: the attention modules are initialised from `seed` and
  then trained self-supervised on good features only, with the paper's optimiser settings
  (Adam, lr 2e-4, batch 10 images) for `attention_epochs` epochs. The objective is cluster
  compactness: the mean squared distance of each good patch to its nearest K-means centre,
  divided by the batch's total patch variance (scale-free, so shrinking all features does not
  help). Centres are recomputed from the current attention at the start of every epoch
  (alternating as in deep clustering); k is chosen once, before training, and kept.
  `attention_epochs=0` keeps the seeded initial attention (a fixed random reweighting).
- Validation: `val_fraction` of the good images (seeded) is held out; their scores are
  FitReport.good_scores; the centres come from the rest.

Measured (AITEX fabric01, 256 px, CPU; tools/ablate_dfda.py; I-AUROC / P-AUROC / AUPRO):
full 0.774 / 0.944 / 0.653; without CBAM 0.753 / 0.946 / 0.667; without the query-key
attention 0.731 / 0.928 / 0.626; without both attentions 0.795 / 0.947 / 0.670; untrained
(seeded) attention 0.710 / 0.924 / 0.597. Training the attention matters (it recovers most of
what a random reweighting loses), but on this fabric the attention-free variant is as good or
better: the paper's attention does not earn its place here. The defaults stay the paper's
architecture; set `use_cbam: false` and `use_query_key: false` in the recipe's params for the
stronger AITEX variant. k sweep (untrained attention, re-clustering only): k = 8 / 16 / 32 /
64 / 128 / 256 / 512 -> I-AUROC 0.680 / 0.708 / 0.697 / 0.739 / 0.738 / 0.746 / 0.751,
P-AUROC 0.900 / 0.915 / 0.925 / 0.934 / 0.934 / 0.937 / 0.939: more centres help, with
diminishing returns past 64; the elbow rule picks 32 or 64 on the AITEX fabrics, which is
cheaper but not the best k.
"""

from __future__ import annotations

import contextlib
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
    local_aggregate,
    nearest_neighbours,
    predict_in_batches,
    split_validation,
    to_batch,
    upsample_smooth,
)
from station.detectors.registry import register
from station.errors import DetectorError

# -- K-means ----------------------------------------------------------------------------------


@dataclass
class KMeansResult:
    centres: torch.Tensor  # k x D
    labels: torch.Tensor  # n, index of the nearest centre
    inertia: float  # sum of squared distances to the nearest centre
    n_iter: int
    converged: bool
    history: list[float]  # inertia after each iteration


def _min_sq_dist(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, i = nearest_neighbours(x, centres, k=1, max_elements=1 << 24)
    return d[:, 0] ** 2, i[:, 0]


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen).item())
    centres = [x[first]]
    d2, _ = _min_sq_dist(x, x[first : first + 1])
    for _ in range(1, k):
        weights = d2.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # every point coincides with a centre: take any
            idx = int(torch.randint(n, (1,), generator=gen).item())
        else:
            idx = int(torch.multinomial(weights / total, 1, generator=gen).item())
        centres.append(x[idx])
        nd2, _ = _min_sq_dist(x, x[idx : idx + 1])
        d2 = torch.minimum(d2, nd2)
    return torch.stack(centres)


def kmeans(
    x: torch.Tensor, k: int, max_iter: int = 100, seed: int = 0, tol: float = 1e-4
) -> KMeansResult:
    """Lloyd's K-means with k-means++ seeding, on the device of `x` (float32).

    Stops when no label changes or the inertia improves by less than `tol` (relative);
    `converged` says whether that happened within `max_iter` iterations. An empty cluster is
    re-seeded with the point farthest from its centre.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise DetectorError(f"kmeans: need an n x D matrix with n >= 1, got {tuple(x.shape)}")
    x = x.float().contiguous()
    k = max(1, min(int(k), x.shape[0]))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centres = kmeans_pp_init(x, k, gen)
    labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    history: list[float] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter reported after the loop
        d2, new_labels = _min_sq_dist(x, centres)
        inertia = float(d2.sum())
        changed = int((new_labels != labels).sum())
        labels = new_labels
        history.append(inertia)
        if changed == 0 or (
            len(history) > 1 and history[-2] - inertia <= tol * max(history[-2], 1e-12)
        ):
            converged = True
            break
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):
            far = torch.topk(d2, int(empty.sum())).indices
            centres[empty] = x[far]
    return KMeansResult(centres, labels, history[-1], n_iter, converged, history)


def elbow_k(ks: Sequence[int], inertias: Sequence[float]) -> int:
    """The elbow of a decreasing inertia curve: the point farthest below the chord joining the
    first and last points, with log2 k and inertia both normalised to [0, 1]."""
    if len(ks) < 3:
        return int(ks[-1])
    lx = np.log2(np.asarray(ks, dtype=np.float64))
    y = np.asarray(inertias, dtype=np.float64)
    xn = (lx - lx[0]) / max(lx[-1] - lx[0], 1e-12)
    yn = (y - y[-1]) / max(y[0] - y[-1], 1e-12)
    gap = (1.0 - xn) - yn  # chord minus curve
    return int(ks[int(np.argmax(gap))])


def choose_k(
    x: torch.Tensor, candidates: Sequence[int], seed: int = 0, max_iter: int = 20
) -> tuple[int, dict[int, float]]:
    """k by the inertia elbow over `candidates` (those below the number of points)."""
    ks = sorted({int(c) for c in candidates if 1 <= int(c) < x.shape[0]})
    if not ks:
        return max(1, min(x.shape[0], 1)), {}
    inertias = {k: kmeans(x, k, max_iter, seed).inertia for k in ks}
    return elbow_k(ks, [inertias[k] for k in ks]), inertias


# -- attention modules ------------------------------------------------------------------------


class ChannelSpatialAttention(nn.Module):
    """CBAM-style attention, channel and spatial parts computed in parallel from the input."""

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 7) -> None:
        super().__init__()
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
        ms = torch.sigmoid(
            self.spatial(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1))
        )
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


def _concat_stages(feats: Sequence[torch.Tensor], patch_size: int) -> torch.Tensor:
    grid = feats[0].shape[-2:]
    out = []
    for f in feats:
        f = local_aggregate(f.float(), patch_size)
        if f.shape[-2:] != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, 1)


# -- the detector -----------------------------------------------------------------------------


@register
class DFDA(Detector):
    name = "dfda"
    version = 1

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str = "auto",
        device: str = "auto",
        layers: Sequence[str] | None = ("blocks.2",),
        backbone2: str = "mobilenet_v2",
        weights2: str = "auto",
        layers2: Sequence[str] | None = ("13",),
        patch_size: int = 3,
        use_cbam: bool = True,
        use_query_key: bool = True,
        cbam_reduction: int = 4,
        qk_dim: int = 64,
        k: int | str = "auto",
        k_candidates: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        k_select_patches: int = 8000,
        kmeans_iters: int = 100,
        max_train_patches: int = 40_000,
        attention_epochs: int = 5,
        attention_lr: float = 2e-4,
        attention_batch: int = 10,
        sigma: float = 4.0,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        seed: int = 0,
        amp: bool = True,
    ) -> None:
        if not (k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise DetectorError(f"dfda: k must be 'auto' or an integer >= 1, not {k!r}")
        if kmeans_iters < 1 or max_train_patches < 1 or batch_size < 1 or attention_batch < 1:
            raise DetectorError(
                "dfda: kmeans_iters, max_train_patches, batch_size, attention_batch must be >= 1"
            )
        if attention_epochs < 0 or attention_lr <= 0:
            raise DetectorError("dfda: attention_epochs must be >= 0 and attention_lr > 0")
        if not 0 <= val_fraction < 1:
            raise DetectorError(f"dfda: val_fraction must be in [0, 1), not {val_fraction}")
        self.device = resolve_device(device)
        bb_a = create_backbone(backbone, weights, layers)
        bb_b = create_backbone(backbone2, weights2, layers2)
        self.backbone = DualBackbone(bb_a, bb_b).to(self.device)
        self._cfg: dict[str, Any] = {
            "backbone": backbone,
            "weights": weights,
            "device": device,
            "layers": list(bb_a.layers),
            "backbone2": backbone2,
            "weights2": weights2,
            "layers2": list(bb_b.layers),
            "patch_size": int(patch_size),
            "use_cbam": bool(use_cbam),
            "use_query_key": bool(use_query_key),
            "cbam_reduction": int(cbam_reduction),
            "qk_dim": int(qk_dim),
            "k": k,
            "k_candidates": [int(c) for c in k_candidates],
            "k_select_patches": int(k_select_patches),
            "kmeans_iters": int(kmeans_iters),
            "max_train_patches": int(max_train_patches),
            "attention_epochs": int(attention_epochs),
            "attention_lr": float(attention_lr),
            "attention_batch": int(attention_batch),
            "sigma": float(sigma),
            "batch_size": int(batch_size),
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            "amp": bool(amp),
        }
        ca, cb = sum(bb_a.channels), sum(bb_b.channels)
        # Seeded initialisation that leaves the global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cbam = ChannelSpatialAttention(ca, cbam_reduction)
            self.qk = QueryKeyAttention(cb, qk_dim)
        self.cbam.to(self.device).eval()
        self.qk.to(self.device).eval()
        self.scales = torch.ones(2)
        self.centres: torch.Tensor | None = None
        self.image_hw: tuple[int, int] | None = None

    # -- features --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self._cfg["amp"]:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen features of a batch in [0, 1]: (branch A map, branch B map), float32."""
        x = x.to(self.device, non_blocking=True)
        with self._autocast():
            fa = self.backbone.a(x)
            fb = self.backbone.b(x)
        ps = self._cfg["patch_size"]
        return _concat_stages(fa, ps), _concat_stages(fb, ps)

    def fuse(self, a: torch.Tensor, b: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """Attend each branch, resize B to A's grid, scale, concatenate: N x D x h x w."""
        if self._cfg["use_cbam"]:
            a = self.cbam(a)
        if self._cfg["use_query_key"]:
            b = self.qk(b)
        if b.shape[-2:] != a.shape[-2:]:
            b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        if scaled:
            s = self.scales.to(a.device)
            a, b = a * s[0], b * s[1]
        return torch.cat([a, b], 1)

    @torch.no_grad()
    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N*h*w, D) fused patch features of a batch in [0, 1], and the grid (h, w)."""
        z = self.fuse(*self.branch_maps(x))
        n, d, h, w = z.shape
        return z.permute(0, 2, 3, 1).reshape(-1, d), (h, w)

    # -- fit -------------------------------------------------------------------------------
    def _sample(
        self,
        cache_a: torch.Tensor,
        cache_b: torch.Tensor,
        per_image: int,
        rng: np.random.Generator,
        scaled: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded subsample of fused good patches (no grad), and per-branch mean sq norms."""
        out = []
        sq = torch.zeros(2, dtype=torch.float64)
        count = 0
        bs = self._cfg["batch_size"]
        ca = cache_a.shape[1]
        with torch.no_grad():
            for s in range(0, cache_a.shape[0], bs):
                a = cache_a[s : s + bs].to(self.device).float()
                b = cache_b[s : s + bs].to(self.device).float()
                z = self.fuse(a, b, scaled=scaled)
                n, d, h, w = z.shape
                z = z.permute(0, 2, 3, 1).reshape(n, h * w, d)
                sq[0] += float((z[..., :ca] ** 2).sum())
                sq[1] += float((z[..., ca:] ** 2).sum())
                count += n * h * w
                if per_image < h * w:
                    sel = np.stack([rng.choice(h * w, per_image, replace=False) for _ in range(n)])
                    idx = torch.from_numpy(sel).to(z.device)[..., None].expand(-1, -1, d)
                    z = torch.gather(z, 1, idx)
                out.append(z.reshape(-1, d))
        return torch.cat(out), sq / max(count, 1)

    def _train_attention(
        self,
        cache_a: torch.Tensor,
        cache_b: torch.Tensor,
        k: int,
        per_image: int,
        rng: np.random.Generator,
        progress: ProgressFn | None,
    ) -> list[float]:
        params = []
        if self._cfg["use_cbam"]:
            params += list(self.cbam.parameters())
        if self._cfg["use_query_key"]:
            params += list(self.qk.parameters())
        epochs = self._cfg["attention_epochs"]
        if not params or epochs == 0:
            return []
        n = cache_a.shape[0]
        opt = torch.optim.Adam(params, lr=self._cfg["attention_lr"])
        gen = torch.Generator(device="cpu").manual_seed(self._cfg["seed"] + 1)
        bs = self._cfg["attention_batch"]
        losses: list[float] = []
        # Centres for the objective come from a smaller subsample (k_select_patches).
        small = max(1, min(per_image, self._cfg["k_select_patches"] // n))
        for epoch in range(epochs):
            pool, _ = self._sample(cache_a, cache_b, small, rng)
            centres = kmeans(pool, k, min(20, self._cfg["kmeans_iters"]), self._cfg["seed"] + epoch)
            centres_t = centres.centres.detach()
            c_sq = (centres_t**2).sum(1)
            del pool
            self.cbam.train()
            self.qk.train()
            total = 0.0
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                a = cache_a[idx].to(self.device).float()
                b = cache_b[idx].to(self.device).float()
                z = self.fuse(a, b)
                z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                d2 = ((z * z).sum(1, keepdim=True) + c_sq[None] - 2.0 * z @ centres_t.T)
                within = d2.clamp_min(0).amin(1).mean()
                spread = ((z - z.mean(0, keepdim=True)) ** 2).sum(1).mean()
                loss = within / spread.clamp_min(1e-12)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
            self.cbam.eval()
            self.qk.eval()
            losses.append(total / n)
            if progress:
                progress("attention", epoch + 1, epochs)
        return losses

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
        # Frozen features once (float16 on the CPU keeps the cache small).
        cache_a, cache_b = [], []
        bs = self._cfg["batch_size"]
        for s in range(0, len(train_idx), bs):
            chunk = [images[i] for i in train_idx[s : s + bs]]
            a, b = self.branch_maps(to_batch(chunk, self.image_hw, "dfda"))
            cache_a.append(a.half().cpu())
            cache_b.append(b.half().cpu())
            if progress:
                progress("features", min(s + bs, len(train_idx)), len(train_idx))
        ca, cb = torch.cat(cache_a), torch.cat(cache_b)
        del cache_a, cache_b
        h, w = ca.shape[-2:]
        per_image = max(1, min(h * w, self._cfg["max_train_patches"] // len(train_idx)))

        def set_scales(a: torch.Tensor, b: torch.Tensor) -> None:
            _, sq = self._sample(a[:64], b[:64], 1, rng, scaled=False)
            self.scales = (1.0 / sq.clamp_min(1e-12).sqrt()).float()

        # k from the data (before attention training, kept afterwards).
        set_scales(ca, cb)
        k_inertias: dict[int, float] = {}
        if self._cfg["k"] == "auto":
            pool, _ = self._sample(ca, cb, per_image, rng)
            if pool.shape[0] > self._cfg["k_select_patches"]:
                g = torch.Generator(device="cpu").manual_seed(seed)
                pick = torch.randperm(pool.shape[0], generator=g)[: self._cfg["k_select_patches"]]
                pool = pool[pick.to(pool.device)]
            k, k_inertias = choose_k(pool, self._cfg["k_candidates"], seed)
            del pool
        else:
            k = int(self._cfg["k"])
        t1 = time.perf_counter()
        losses = self._train_attention(ca, cb, k, per_image, rng, progress)
        t2 = time.perf_counter()
        set_scales(ca, cb)
        pool, _ = self._sample(ca, cb, per_image, rng)
        del ca, cb
        result = kmeans(pool, k, self._cfg["kmeans_iters"], seed)
        self.centres = result.centres.contiguous()
        t3 = time.perf_counter()
        good_scores: list[float] = []
        for s in range(0, len(val_idx), bs):
            chunk = [images[i] for i in val_idx[s : s + bs]]
            good_scores += self._predict_tensor(to_batch(chunk, self.image_hw, "dfda"))[1].tolist()
            if progress:
                progress("validate", min(s + bs, len(val_idx)), len(val_idx))
        return FitReport(
            n_images=n,
            seconds=time.perf_counter() - t0,
            good_scores=[float(s) for s in good_scores],
            extra={
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "good_scores_from": "validation split" if val_idx else "none (one image)",
                "k": int(self.centres.shape[0]),
                "k_from": "elbow" if self._cfg["k"] == "auto" else "config",
                "k_inertias": {str(kk): round(v, 4) for kk, v in k_inertias.items()},
                "kmeans_iterations": result.n_iter,
                "kmeans_converged": result.converged,
                "patches_pooled": int(pool.shape[0]),
                "feature_dim": int(self.centres.shape[1]),
                "grid": [int(h), int(w)],
                "attention_losses": [round(v, 5) for v in losses],
                "attention_seconds": round(t2 - t1, 3),
                "kmeans_seconds": round(t3 - t2, 3),
                "backbones": self.backbone.identity["backbone"],
            },
        )

    # -- predict ---------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.centres is None or self.image_hw is None:
            raise DetectorError("dfda: not fitted", hint="run station train first")
        n = batch.shape[0]
        feats, (h, w) = self.patch_features(batch)
        dist, _ = nearest_neighbours(feats, self.centres, k=1)
        maps = dist[:, 0].view(n, 1, h, w)
        maps = upsample_smooth(maps, self.image_hw, self._cfg["sigma"])
        scores = maps.flatten(1).amax(1)
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    def predict(self, images: np.ndarray) -> Prediction:
        if self.centres is None or self.image_hw is None:
            raise DetectorError("dfda: not fitted", hint="run station train first")
        return predict_in_batches(
            images, self.image_hw, "dfda", self._cfg["batch_size"], self._predict_tensor
        )

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def state_dict(self) -> dict[str, Any]:
        if self.centres is None or self.image_hw is None:
            raise DetectorError("dfda: nothing to save, the detector is not fitted")
        return {
            "centres": self.centres.detach().cpu(),
            "scales": self.scales.detach().cpu(),
            "cbam": {k: v.detach().cpu() for k, v in self.cbam.state_dict().items()},
            "query_key": {k: v.detach().cpu() for k, v in self.qk.state_dict().items()},
            "image_hw": list(self.image_hw),
            "backbone_identity": {
                "a": dict(self.backbone.a.identity),
                "b": dict(self.backbone.b.identity),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            centres = state["centres"]
            scales = state["scales"]
            cbam, qk = state["cbam"], state["query_key"]
            hw = state["image_hw"]
            identity = state["backbone_identity"]
        except KeyError as exc:
            raise DetectorError(f"dfda: saved state lacks {exc.args[0]!r}") from None
        check_identity(identity["a"], self.backbone.a.identity)
        check_identity(identity["b"], self.backbone.b.identity)
        dim = sum(self.backbone.a.channels) + sum(self.backbone.b.channels)
        if centres.ndim != 2 or centres.shape[1] != dim:
            raise DetectorError(
                f"dfda: saved centres have shape {tuple(centres.shape)}, the configured "
                f"features have {dim} dims"
            )
        try:
            self.cbam.load_state_dict(cbam)
            self.qk.load_state_dict(qk)
        except RuntimeError as exc:
            raise DetectorError(f"dfda: saved attention does not fit: {exc}") from None
        self.centres = centres.to(self.device, torch.float32).contiguous()
        self.scales = scales.float().cpu()
        self.image_hw = (int(hw[0]), int(hw[1]))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) the model was fitted on, or None before fit."""
        return None if self.image_hw is None else (self.image_hw[1], self.image_hw[0])
