"""AST-MFR's network: the masked feature regeneration blocks and `ASTMFRModel`, the plain torch
module that scores images (what an export takes). Fitting lives in station.detectors.ast_mfr."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.common import autocast_for, gaussian_blur


def random_mask(
    n: int, h: int, w: int, rate: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """N x 1 x h x w float mask: 0 at each position with probability `rate`, else 1."""
    u = torch.rand((n, 1, h, w), generator=generator, device=device)
    return (u >= rate).float()


def distance_map(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """N x h x w: cosine distance + alpha * 0.5 * |s/|s| - t/|t||^2 per position."""
    s = F.normalize(student.float(), dim=1, eps=1e-6)
    t = F.normalize(teacher.float(), dim=1, eps=1e-6)
    cos = 1.0 - (s * t).sum(1)
    l2 = 0.5 * (s - t).pow(2).sum(1)
    return cos + alpha * l2


class MFRBlock(nn.Module):
    """Random pixel mask (training only) + two-conv feature generation, c_in -> c_out."""

    def __init__(self, c_in: int, c_out: int, mask_rate: float) -> None:
        super().__init__()
        self.mask_rate = float(mask_rate)
        self.generate = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.generator: torch.Generator | None = None  # seeded by the detector for training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mask_rate > 0:
            n, _, h, w = x.shape
            x = x * random_mask(n, h, w, self.mask_rate, x.device, self.generator).to(x.dtype)
        return self.generate(x)


class Projection(nn.Module):
    """The "without MFR" ablation: 1x1 conv to the teacher's channels (identity when equal)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ASTMFRModel(nn.Module):
    """Teacher and student backbones, regeneration heads: an N x 3 x H x W batch (RGB in
    [0, 1]) -> per-stage teacher-vs-regenerated-student distances -> anomaly maps (N x H x W,
    summed over stages, smoothed, box-pooled) and image scores (max)."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        heads: nn.ModuleList,
        alpha: float = 1.0,
        sigma: float = 4.0,
        pool_size: int = 5,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.heads = heads
        self.alpha = float(alpha)
        self.sigma = float(sigma)
        self.pool_size = int(pool_size)

    def regenerate(self, student_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The heads applied to the student's three stage maps (masking only in train mode)."""
        return [head(f.float()) for head, f in zip(self.heads, student_feats, strict=True)]

    def stage_distances(
        self, regen: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        out = []
        for s, t in zip(regen, teacher, strict=True):
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            out.append(distance_map(s, t, self.alpha))
        return out

    def maps(
        self,
        regen: Sequence[torch.Tensor],
        teacher: Sequence[torch.Tensor],
        image_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Anomaly maps N x H x W (`image_hw`) from regenerated and teacher stage maps."""
        total = None
        for d in self.stage_distances(regen, teacher):
            up = F.interpolate(d[:, None], size=image_hw, mode="bilinear", align_corners=False)
            total = up if total is None else total + up
        assert total is not None
        maps = gaussian_blur(total[:, 0], self.sigma)
        k = self.pool_size
        if k > 1:
            maps = F.avg_pool2d(
                maps[:, None], k, stride=1, padding=k // 2, count_include_pad=False
            )[:, 0]
        return maps

    def forward(self, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps, image scores) of a fitted model in eval mode; `amp`: bf16 backbones
        on CUDA."""
        with autocast_for(x.device, amp, torch.bfloat16):
            t = self.teacher(x)
            s = self.student(x)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        maps = self.maps(self.regenerate(s), [f.float() for f in t], hw)
        return maps, maps.flatten(1).amax(1)
