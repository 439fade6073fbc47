"""Helpers shared by the detectors: input batches, neighbourhood aggregation, mirrored edge
context, smoothing, validation splits and chunked nearest-neighbour search (CPU and CUDA)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from station.detectors.types import Prediction
from station.errors import DetectorError
from station.imaging import to_uint8

if TYPE_CHECKING:
    from station.detectors.backbones import Backbone


def autocast_for(
    device: torch.device, amp: bool, dtype: torch.dtype = torch.float16
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to `dtype` on CUDA when `amp` is set; nothing otherwise (the CPU runs fp32)."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def image_size_of(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of an H x W or H x W x C image."""
    return int(image.shape[0]), int(image.shape[1])


def to_batch(
    images: np.ndarray | Sequence[np.ndarray],
    expected_hw: tuple[int, int] | None = None,
    what: str = "detector",
) -> torch.Tensor:
    """N x 3 x H x W float32 tensor in [0, 1] from uint8 images (grey is replicated).

    Mixed sizes, a size other than `expected_hw` or a wrong channel count: DetectorError.
    """
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise DetectorError(
            f"{what}: a batch must be N x H x W (grey) or N x H x W x 3, got {images.shape}"
        )
    arrays = list(images)
    if not arrays:
        raise DetectorError(f"{what}: no images given")
    out = []
    for i, img in enumerate(arrays):
        img = _as_uint8(np.asarray(img))
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise DetectorError(
                f"{what}: image {i} has shape {img.shape}; expected H x W (grey) or H x W x 3"
            )
        if expected_hw is not None and image_size_of(img) != tuple(expected_hw):
            h, w = expected_hw
            raise DetectorError(
                f"{what}: image {i} is {img.shape[1]} x {img.shape[0]} px but the model was "
                f"trained on {w} x {h}",
                hint="preprocess images to the training size (recipe preprocess.size)",
            )
        if out and img.shape != out[0].shape:
            raise DetectorError(f"{what}: images in one batch differ in size")
        out.append(img)
    arr = np.stack(out)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def _as_uint8(img: np.ndarray) -> np.ndarray:
    """Each image on its own (never judged by the rest of its batch), as `imaging` reads files;
    floats above 1 are taken as 0-255 values."""
    if np.issubdtype(img.dtype, np.floating) and img.max(initial=0) > 1.0:
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return to_uint8(img)


def predict_in_batches(
    images: np.ndarray | Sequence[np.ndarray],
    image_hw: tuple[int, int],
    name: str,
    batch_size: int,
    predict_tensor: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]],
) -> Prediction:
    """Check and stack `images`, run `predict_tensor` (maps, scores) chunk by chunk."""
    t0 = time.perf_counter()
    imgs = list(images) if not isinstance(images, np.ndarray) else images
    batch = to_batch(imgs, image_hw, name)
    maps, scores = [], []
    for start in range(0, batch.shape[0], batch_size):
        m, s = predict_tensor(batch[start : start + batch_size])
        maps.append(m)
        scores.append(s)
    return Prediction(
        maps=np.concatenate(maps).astype(np.float32),
        scores=np.concatenate(scores).astype(np.float32),
        latency_ms=(time.perf_counter() - t0) * 1000.0,
    )


def sample_per_image(feats: torch.Tensor, per_image: int, rng: np.random.Generator) -> torch.Tensor:
    """N x per_image x D: a seeded subsample of each image's N x P x D patch features (all of
    them, untouched and without drawing from `rng`, when per_image >= P)."""
    n, p, d = feats.shape
    if per_image >= p:
        return feats
    sel = np.stack([rng.choice(p, per_image, replace=False) for _ in range(n)])
    idx = torch.from_numpy(sel).to(feats.device)[..., None].expand(-1, -1, d)
    return torch.gather(feats, 1, idx)


def local_aggregate(feat: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Average each position's `size` x `size` neighbourhood (PatchCore / SimpleNet)."""
    if size <= 1:
        return feat
    return F.avg_pool2d(feat, size, stride=1, padding=size // 2, count_include_pad=False)


def mirrored_stage_maps(
    backbone: Backbone, x: torch.Tensor, pad: int, patch_size: int
) -> list[torch.Tensor]:
    """The backbone's stage maps of `x`, each averaged over `patch_size` neighbourhoods, as
    seen with `pad` px of mirrored image around it: the network runs on the reflect-padded
    batch and every map is cropped back to the cells of `x` itself. Cells at the image edge
    then see fabric-like context instead of the network's zero padding. `pad` must be a
    multiple of every stage's stride (`backbone.strides`) and smaller than the image."""
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    maps = []
    for f, stride in zip(backbone(x), backbone.strides, strict=True):
        c = pad // stride  # 0 without padding: nothing cropped
        f = local_aggregate(f.float(), patch_size)
        maps.append(f[:, :, c : f.shape[-2] - c, c : f.shape[-1] - c])
    return maps


def center_per_image(feat: torch.Tensor) -> torch.Tensor:
    """N x C x h x w stage map minus each image's mean feature (PatchCore)."""
    return feat - feat.mean(dim=(2, 3), keepdim=True)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of N x H x W maps (reflect padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    m = maps[:, None]
    h, w = m.shape[-2:]
    pad_w, pad_h = min(radius, w - 1), min(radius, h - 1)
    kw = k[radius - pad_w : radius + pad_w + 1]
    kh = k[radius - pad_h : radius + pad_h + 1]
    kw, kh = kw / kw.sum(), kh / kh.sum()
    m = F.conv2d(F.pad(m, (pad_w, pad_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, pad_h, pad_h), mode="reflect"), kh.view(1, 1, -1, 1))
    return m[:, 0]


def upsample_smooth(patch_maps: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """N x 1 x h x w patch scores -> N x H x W maps: bilinear upsampling, then Gaussian blur."""
    maps = F.interpolate(patch_maps, size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(maps[:, 0], sigma)


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): a seeded split holding out ~`fraction` of n.

    At least one image is held out when n >= 2 and fraction > 0; none when n == 1.
    """
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, int(math.floor(n * fraction + 0.5))))
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, max_elements: int = 1 << 25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices of the k nearest `bank` rows for each query row.

    Works in query chunks so the distance matrix never exceeds `max_elements` entries.
    """
    k = min(k, bank.shape[0])
    bank_sq = (bank * bank).sum(1)
    chunk = max(1, max_elements // max(1, bank.shape[0]))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        d2 = (q * q).sum(1, keepdim=True) + bank_sq[None] - 2.0 * (q @ bank.T)
        d, i = torch.topk(d2, k, dim=1, largest=False)
        dists.append(d.clamp_min_(0).sqrt_())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)
