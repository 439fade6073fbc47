"""DFDA's synthetic fabric faults (labels for training the attention without real defects), the
patch labels they give, and the separation objective and AUROCs measured on them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from station.errors import DetectorError
from station.metrics import image_auroc

SYNTHETIC_KINDS = ("paste", "line", "blob", "blur")


def _ellipse(
    hw: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> np.ndarray:
    """Boolean H x W mask of a filled, rotated ellipse."""
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / max(radii[1], 0.5)
    v = (-dx * s + dy * c) / max(radii[0], 0.5)
    return u * u + v * v <= 1.0


def _one_fault(
    img: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray
) -> np.ndarray:
    """`img` (H x W x C float32, 0..255) with one fault of `kind` drawn, before masking."""
    h, w = img.shape[:2]
    side = min(h, w)
    out = img.copy()
    if kind == "paste":  # a patch from elsewhere (this or another image), maybe flipped
        ph = int(rng.integers(max(2, side // 16), max(3, side // 5) + 1))
        pw = int(rng.integers(max(2, side // 16), max(3, side // 5) + 1))
        src = donor if rng.random() < 0.5 else img
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = src[sy : sy + ph, sx : sx + pw]
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        dy, dx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        out[dy : dy + ph, dx : dx + pw] = patch
        return out
    if kind == "line":  # a thin dark or bright yarn fault, mostly along or across the weave
        angle = float(rng.choice([0.0, math.pi / 2])) if rng.random() < 0.7 else rng.uniform(0, 6.3)
        width = max(1.0, float(rng.integers(1, 4)) * side / 256)
        length = rng.uniform(0.25, 1.5) * side
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        region = (np.abs(across) <= width / 2) & (np.abs(along) <= length / 2)
        delta = rng.uniform(20, 80) * (1 if rng.random() < 0.5 else -1)
        out[region] += delta
        return out
    centre = (rng.uniform(0, h), rng.uniform(0, w))
    if kind == "blob":  # a stain: a darker or brighter ellipse
        radii = (rng.uniform(side / 40, side / 10), rng.uniform(side / 40, side / 10))
        region = _ellipse((h, w), centre, radii, rng.uniform(0, math.pi))
        out[region] += rng.uniform(15, 60) * (1 if rng.random() < 0.5 else -1)
        return out
    if kind == "blur":  # a smeared, out-of-weave spot
        radii = (rng.uniform(side / 20, side / 7), rng.uniform(side / 20, side / 7))
        region = _ellipse((h, w), centre, radii, rng.uniform(0, math.pi))
        size = int(rng.choice([5, 7, 9]))
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        t = F.pad(t, (size // 2,) * 4, mode="replicate")
        blurred = F.avg_pool2d(t, size, stride=1)[0].numpy().transpose(1, 2, 0)
        out[region] = blurred[region]
        return out
    raise DetectorError(f"dfda: unknown synthetic fault {kind!r}; known: {SYNTHETIC_KINDS}")


def synthetic_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
    kinds: Sequence[str] = SYNTHETIC_KINDS,
    min_change: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of a good uint8 image with one synthetic fabric fault, and its H x W mask.

    The fault (a pasted patch, a thin line, a stain or a blurred spot; drawn from `kinds`) is
    kept only where it changes a pixel by at least `min_change` grey levels; elsewhere the
    original is restored, so the image differs from `image` exactly on the mask.
    """
    src = np.asarray(image)
    if src.ndim not in (2, 3) or src.shape[0] < 8 or src.shape[1] < 8:
        raise DetectorError(f"dfda: synthetic faults need an image of >= 8 x 8 px, got {src.shape}")
    img = (src[:, :, None] if src.ndim == 2 else src).astype(np.float32)
    don = img if donor is None else np.asarray(donor, dtype=np.float32)
    if don.ndim == 2:
        don = don[:, :, None]
    if don.shape[:2] != img.shape[:2]:
        raise DetectorError(f"dfda: donor image {don.shape} differs in size from {img.shape}")
    don = np.broadcast_to(don[:, :, :1], img.shape) if don.shape != img.shape else don
    for attempt in range(6):
        kind = str(rng.choice(list(kinds))) if attempt < 5 else "blob"
        out = np.clip(np.rint(_one_fault(img, kind, rng, don)), 0, 255)
        mask = np.abs(out - img).max(axis=2) >= min_change
        if attempt == 5 and not mask.any():  # a saturated or flat image: force a visible stain
            region = _ellipse(img.shape[:2], (img.shape[0] / 2, img.shape[1] / 2), (3, 3), 0.0)
            out[region] = np.where(img[region] < 128, 255.0, 0.0)
            mask = np.abs(out - img).max(axis=2) >= min_change
        if mask.any():
            break
    out[~mask] = img[~mask]
    out = out.astype(np.uint8)
    return (out[:, :, 0] if src.ndim == 2 else out), mask


def patch_labels(
    masks: torch.Tensor, grid: tuple[int, int], cover: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(defect, good) boolean N x h x w patch labels from N x H x W fault masks: defect where a
    cell is at least `cover` faulty, good where no fault lies within two cells."""
    cov = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]
    near = F.max_pool2d((cov > 0).float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    return cov >= cover, ~near


def separation_loss(
    d_good: torch.Tensor, d_defect: torch.Tensor, margin: float = 1.0, top: float = 0.01
) -> tuple[torch.Tensor, float]:
    """Ranking loss that pushes fault patches' nearest-centre distances above good ones.

    Distances are standardised by the good patches' mean and standard deviation (so scaling the
    features changes nothing); each fault patch pays softplus(hard + margin - its score), hard
    being the mean of the top `top` fraction of good scores (the good tail the image maximum
    sees). Returns (loss, margin achieved: mean fault score minus hard).
    """
    mu, sd = d_good.mean(), d_good.std().clamp_min(1e-6)
    g = (d_good - mu) / sd
    f = (d_defect - mu) / sd
    hard = g.topk(max(1, int(top * g.numel()))).values.mean()
    loss = F.softplus(hard + margin - f).mean()
    return loss, float((f.mean() - hard).detach())


def separation_auroc(
    d_good: torch.Tensor, d_defect: torch.Tensor, img_good: torch.Tensor, img_defect: torch.Tensor
) -> dict[str, float]:
    """Patch and image AUROC of synthetic faults against good (label-free validation)."""

    def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
        if pos.numel() == 0 or neg.numel() == 0:
            return math.nan
        s = torch.cat([pos, neg]).double().cpu().numpy()
        y = np.r_[np.ones(pos.numel()), np.zeros(neg.numel())]
        return image_auroc(s, y)

    patch, image = auc(d_defect, d_good), auc(img_defect, img_good)
    return {"patch_auroc": patch, "image_auroc": image, "mean": (patch + image) / 2}
