"""EfficientAD's networks and training pieces: the patch description network (teacher and
student), the autoencoder, hard-feature mining, augmentations, the lr schedule, and
`EfficientADModel`, the plain torch module that scores images (what an export takes)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.backbones import IMAGENET_MEAN, IMAGENET_STD
from station.detectors.common import autocast_for
from station.errors import DetectorError

TEACHER_CHANNELS = 384
PDN_OFFSET = 16  # px from a cell's patch corner to its centre (33 px patch, stride 4)
MAP_PAD = 4  # cells: PDN_OFFSET / stride, so the padded map lines up with the image


def pdn(size: str, out_channels: int) -> nn.Sequential:
    """Patch description network (no padding): 33 x 33 px receptive field, stride 4."""
    if size == "small":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, out_channels, 4),
        )
    if size == "medium":
        return nn.Sequential(
            nn.Conv2d(3, 256, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 512, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(512, 512, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, out_channels, 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
    raise DetectorError(f"efficientad: model_size must be small or medium, not {size!r}")


def pdn_out_size(n: int) -> int:
    """PDN output side for an input side n (both sizes: convs 4, pool, 4, pool, 3, 4)."""
    return (((n - 3) // 2) - 3) // 2 - 5


class AutoEncoder(nn.Module):
    """Encoder to a 1 x 1 x 64 code, decoder back to the PDN grid (out_hw) with 384 channels."""

    BASE = (3, 8, 15, 32, 63, 127)  # the paper's upsampling sizes for a 56-cell output

    def __init__(self, image_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        k = (max(1, image_hw[0] // 32), max(1, image_hw[1] // 32))
        chans = [3, 32, 32, 64, 64, 64]
        enc: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        enc.append(nn.Conv2d(64, 64, k))
        self.encoder = nn.Sequential(*enc)
        self.sizes = [
            (max(1, round(b * out_hw[0] / 56)), max(1, round(b * out_hw[1] / 56)))
            for b in self.BASE
        ]
        self.out_hw = out_hw
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for _ in self.sizes
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, TEACHER_CHANNELS, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for size, block in zip(self.sizes, self.up, strict=True):
            z = block(F.interpolate(z, size=size, mode="bilinear", align_corners=False))
        z = F.interpolate(z, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.head(z)


def hard_mse(diff_sq: torch.Tensor, q: float) -> torch.Tensor:
    """Mean of the squared differences at or above their q-quantile (hard-feature loss)."""
    flat = diff_sq.flatten()
    # Same threshold as linear-interpolation torch.quantile, without its 16M-element limit.
    k = min(flat.numel(), int(math.ceil(q * (flat.numel() - 1))) + 1)
    thr = torch.kthvalue(flat.detach().float(), k).values
    return flat[flat >= thr].mean()


def jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast or saturation (one, at random) by a factor in [0.8, 1.2]."""
    kind = int(torch.randint(3, (1,), generator=gen))
    f = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
    if kind == 0:
        return (x * f).clamp(0, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    if kind == 1:
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + f * (x - mean)).clamp(0, 1)
    return (grey + f * (x - grey)).clamp(0, 1)


def distill_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop (0.6..1 of the side), flips, 90-degree turn, brightness/contrast."""
    n, _, h, w = x.shape
    out = []
    for i in range(n):
        img = x[i : i + 1]
        s = float(torch.empty(1).uniform_(0.6, 1.0, generator=gen))
        ch, cw = max(8, int(h * s)), max(8, int(w * s))
        y0 = int(torch.randint(h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(w - cw + 1, (1,), generator=gen))
        img = img[:, :, y0 : y0 + ch, x0 : x0 + cw]
        if (ch, cw) != (h, w):
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        if bool(torch.randint(2, (1,), generator=gen)):
            img = img.flip(3)
        if bool(torch.randint(2, (1,), generator=gen)):
            img = img.flip(2)
        if h == w:
            img = torch.rot90(img, int(torch.randint(4, (1,), generator=gen)), dims=(2, 3))
        b = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
        c = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
        mean = img.mean()
        out.append(((img - mean) * c + mean * b).clamp(0, 1))
    return torch.cat(out)


def lr_schedule(
    opt: torch.optim.Optimizer, steps: int, kind: str
) -> torch.optim.lr_scheduler.LRScheduler:
    """ "paper": constant, x0.1 at 95 % of the steps; "cosine": linear warm-up over the first
    5 % of the steps, then cosine decay to 1 % of the lr (learns more in a short run)."""
    if kind == "paper":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(0.95 * steps)), gamma=0.1)
    warm = max(1, int(0.05 * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, steps - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def imagenet_normalise(x01: torch.Tensor) -> torch.Tensor:
    """[0,1] images -> ImageNet-normalised input (channels-last on CUDA)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device).view(1, 3, 1, 1)
    x = (x01 - mean) / std
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def spread(qa: float, qb: float) -> float:
    """q_b - q_a, but at least 1 % of q_b: validation maps that are nearly constant (e.g. many
    identical blank tiles) would otherwise make the normalisation explode."""
    return max(qb - qa, 0.01 * abs(qb), 1e-8)


QUANTILE_KEYS = ("st_a", "st_b", "ae_a", "ae_b")


class EfficientADModel(nn.Module):
    """EfficientAD's exportable forward: an N x 3 x H x W batch (RGB in [0, 1]) -> ImageNet
    normalisation -> teacher, student and autoencoder -> student-teacher and autoencoder maps,
    each normalised by its validation quantiles -> their mean, edge-padded and upsampled ->
    anomaly maps (N x H x W) and image scores (max).

    The networks are submodules; the teacher's channel statistics (`t_mean`, `t_std`) and the
    map quantiles (`q`: st_a, st_b, ae_a, ae_b, float64 as measured) are buffers, so the
    module's own `state_dict` is the whole fitted scorer and `torch.jit.trace` exports it.
    Built for one image size (`image_hw`: the autoencoder's decoder depends on it)."""

    t_mean: torch.Tensor
    t_std: torch.Tensor
    q: torch.Tensor

    def __init__(self, model_size: str, image_hw: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_hw
        self.image_hw = (int(h), int(w))
        self.teacher = pdn(model_size, TEACHER_CHANNELS)
        self.student = pdn(model_size, 2 * TEACHER_CHANNELS)
        self.autoencoder = AutoEncoder(self.image_hw, (pdn_out_size(h), pdn_out_size(w)))
        self.register_buffer("t_mean", torch.zeros(1, TEACHER_CHANNELS, 1, 1))
        self.register_buffer("t_std", torch.ones(1, TEACHER_CHANNELS, 1, 1))
        self.register_buffer("q", torch.full((4,), math.nan, dtype=torch.float64))

    @property
    def quantiles(self) -> dict[str, float]:
        """The map quantiles by name; empty before they are measured."""
        if bool(torch.isnan(self.q).any()):
            return {}
        return dict(zip(QUANTILE_KEYS, self.q.tolist(), strict=True))

    @quantiles.setter
    def quantiles(self, values: dict[str, float]) -> None:
        q = [float(values[k]) for k in QUANTILE_KEYS]
        self.q = torch.tensor(q, dtype=torch.float64, device=self.q.device)

    @property
    def fitted(self) -> bool:
        return bool(self.quantiles)

    def raw_maps(self, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised student-teacher and autoencoder maps (N x oh x ow) of a normalised
        batch; `amp`: bf16 autocast on CUDA."""
        c = TEACHER_CHANNELS
        with autocast_for(x.device, amp, torch.bfloat16):
            t = (self.teacher(x) - self.t_mean) / self.t_std
            s = self.student(x)
            a = self.autoencoder(x)
        t, s, a = t.float(), s.float(), a.float()
        return ((t - s[:, :c]) ** 2).mean(1), ((a - s[:, c:]) ** 2).mean(1)

    def _normalised(self, m: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
        """0.1 * (m - q_a) / spread(q_a, q_b), the quantiles (float64) taken to m's dtype as
        Python numbers would be: the same float32 arithmetic as with plain floats."""
        sp = torch.maximum(torch.maximum(qb - qa, 0.01 * qb.abs()), torch.full_like(qb, 1e-8))
        return 0.1 * (m - qa.to(m.dtype)) / sp.to(m.dtype)

    def combine(
        self, st: torch.Tensor, ae: torch.Tensor, image_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Anomaly maps N x H x W from raw maps: quantile-normalised, averaged, upsampled."""
        st = self._normalised(st, self.q[0], self.q[1])
        ae = self._normalised(ae, self.q[2], self.q[3])
        # The paper pads with zeros; after normalisation most cells are negative, so zeros
        # would often be an image's maximum. Replicating the edge cells keeps max meaningful.
        comb = F.pad((0.5 * st + 0.5 * ae)[:, None], (MAP_PAD,) * 4, mode="replicate")
        return F.interpolate(comb, size=image_hw, mode="bilinear", align_corners=False)[:, 0]

    def forward(self, x01: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps, image scores) of a fitted model in eval mode."""
        st, ae = self.raw_maps(imagenet_normalise(x01), amp)
        maps = self.combine(st, ae, (int(x01.shape[-2]), int(x01.shape[-1])))
        return maps, maps.flatten(1).amax(1)
