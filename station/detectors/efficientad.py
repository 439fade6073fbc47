"""EfficientAD (Batzner et al., WACV 2024): a fast student-teacher + autoencoder detector.

Networks, as in the paper:
- patch description network (PDN) teacher, "small" (4 convs) or "medium" (6 convs), no
  padding, two 2x2 average pools: every output cell sees a 33 x 33 px patch, output stride 4
  (a 256 x 256 image gives a 56 x 56 x 384 map);
- student: the same PDN with twice the output channels (768);
- autoencoder: 5 strided convs + a bottleneck conv down to 1 x 1 x 64, then 7 bilinear
  upsampling + conv steps (dropout 0.2) back to the PDN's grid, 384 channels;
- training step (batch 1): teacher output normalised by its channel mean / std over the
  training images; student loss = mean of the squared differences at or above their 0.999
  quantile (hard-feature mining); autoencoder and student's second half both see an image
  with random brightness, contrast or saturation (factor 0.8..1.2) and learn the teacher's and
  the autoencoder's output respectively; Adam, weight decay 1e-5; lr schedule "paper"
  (constant, x0.1 at 95 % of the steps; the paper's lr is 1e-4) or "cosine" (the default: 5 %
  linear warm-up, cosine decay to 1 %), the same for the teacher's distillation;
- maps: student-teacher = mean over channels of (T - S[:384])^2, autoencoder = mean of
  (A - S[384:])^2; each mapped by 0.1 * (m - q_a) / (q_b - q_a) with q_a, q_b its 0.9 and 0.995
  quantiles over a validation split of good training images (q_b - q_a at least 1 % of q_b);
  combined = their average, padded by 4 cells (edge cells replicated; the paper pads zeros,
  which after normalisation are often the maximum), bilinearly upsampled to the input size;
  image score = max of the map.

Teacher (paper: distilled from WideResNet101 features on ImageNet, 60k steps). Neither is
available here, so the teacher is distilled, as a separate cached step, from a frozen backbone
that is (default efficientnet_lite0 from its registry package) on the training images with
augmentation (random resized crop 0.6..1 of the side, flips, 90-degree rotations, brightness and
contrast jitter). Target: the backbone's two default stages (stride 8 and 16), each averaged
over 3x3 neighbourhoods, concatenated (PatchCore-style) and sampled bilinearly at the centre
of each PDN cell's 33 px patch, standardised per channel. The PDN's 384 outputs go through a
learned 1x1 head onto the target channels (the head is dropped after distillation); loss MSE.
The distilled teacher is cached in <station home>/data/weights/efficientad_teacher_<key>.pt,
keyed by backbone weights sha256, layers, the distillation images' bytes and the settings, and
reused by later fits; it is stored in the artifact too, so inference needs no backbone.

Not done: the paper's ImageNet penalty on the student (no ImageNet images here).

Defaults are a short CPU schedule (distillation 250 x 4 and 450 training steps, lr 5e-4,
cosine); on a GPU set `steps` / `distill_steps` far higher. Step costs, why the schedule is
what it is, and the AITEX measurements: docs/efficientad.md. GPU inference: channels-last
modules and inputs, bf16 autocast (amp); CPU runs fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from station.detectors.backbones import (
    create_backbone,
    resolve_device,
    weights_dir,
)
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import (
    local_aggregate,
    predict_in_batches,
    split_validation,
    to_batch,
)
from station.detectors.efficientad_net import (
    PDN_OFFSET,
    TEACHER_CHANNELS,
    AutoEncoder,
    EfficientADModel,
    distill_augment,
    hard_mse,
    imagenet_normalise,
    jitter,
    lr_schedule,
    pdn_out_size,
)
from station.detectors.registry import CheckedConfig, bound_problems, register
from station.errors import DetectorError
from station.files import atomic_write

MIN_SIZE = 64


def _sd(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class EfficientADConfig(CheckedConfig):
    """EfficientAD's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    device: str = "auto"
    layers: Sequence[str] | None = None
    model_size: str = "small"
    steps: int = 450
    lr: float = 5e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    distill_steps: int = 250
    distill_batch: int = 4
    distill_lr: float = 5e-4
    schedule: str = "cosine"
    teacher_cache: bool = True
    val_fraction: float = 0.1
    min_split_images: int = 5
    q_low: float = 0.9
    q_high: float = 0.995
    batch_size: int = 8
    amp: bool = True
    seed: int = 0

    def problems(self) -> list[str]:
        """Every value out of range or choice not offered, one line each."""
        out: list[str] = []
        if self.model_size not in ("small", "medium"):
            out.append(
                f"efficientad: model_size must be small or medium, not {self.model_size!r}"
            )
        if self.schedule not in ("cosine", "paper"):
            out.append(f"efficientad: schedule must be cosine or paper, not {self.schedule!r}")
        sizes = ("steps", "distill_steps", "distill_batch", "batch_size")
        out += bound_problems("efficientad", self, ">= 1", *sizes)
        if not 0.0 <= self.val_fraction < 1.0:
            out.append(f"efficientad: val_fraction must be in [0, 1), not {self.val_fraction}")
        if not 0.0 < self.q_low < self.q_high < 1.0 or not 0.0 < self.hard_quantile < 1.0:
            out.append("efficientad: need 0 < q_low < q_high < 1 and 0 < hard_quantile < 1")
        out += bound_problems("efficientad", self, "> 0", "lr", "distill_lr")
        out += bound_problems("efficientad", self, ">= 0", "weight_decay")
        return out


@register
class EfficientAD(Detector):
    """EfficientAD detector; every constructor argument is part of `config()`.

    backbone/weights/layers: the frozen backbone the teacher is distilled from (only used
    while distilling). model_size: small | medium. steps: student/autoencoder training steps
    (paper 70 000), distill_steps / distill_batch: teacher distillation (paper 60 000 x 16).
    amp: bf16 autocast on CUDA for inference; channels_last on CUDA always; CPU runs fp32.
    """

    name = "efficientad"
    version = 1
    size_key = "image_size"  # the saved state's name for image_hw
    Config = EfficientADConfig

    def __init__(self, **params: Any) -> None:
        c = EfficientADConfig(**params)
        c.check()
        self.device_spec = c.device
        self.device = resolve_device(c.device)
        self._cfg: dict[str, Any] = {
            "backbone": c.backbone,
            "weights": c.weights,
            "device": c.device,
            "layers": list(c.layers) if c.layers else None,
            "model_size": c.model_size,
            "steps": int(c.steps),
            "lr": float(c.lr),
            "weight_decay": float(c.weight_decay),
            "hard_quantile": float(c.hard_quantile),
            "distill_steps": int(c.distill_steps),
            "distill_batch": int(c.distill_batch),
            "distill_lr": float(c.distill_lr),
            "schedule": c.schedule,
            "teacher_cache": bool(c.teacher_cache),
            "val_fraction": float(c.val_fraction),
            "min_split_images": int(c.min_split_images),
            "q_low": float(c.q_low),
            "q_high": float(c.q_high),
            "batch_size": int(c.batch_size),
            "amp": bool(c.amp),
            "seed": int(c.seed),
        }
        self.backbone: Any = None  # created by fit() only when a teacher must be distilled
        self.backbone_identity: dict[str, Any] = {}
        self.teacher_key = ""
        self.image_hw: tuple[int, int] | None = None
        # The scoring network: built by fit (for the images' size) or by loading a state.
        self.model: EfficientADModel | None = None

    # -- the network (EfficientADModel) ------------------------------------------------------

    @property
    def teacher(self) -> nn.Module | None:
        return None if self.model is None else self.model.teacher

    @property
    def student(self) -> nn.Module | None:
        return None if self.model is None else self.model.student

    @property
    def autoencoder(self) -> AutoEncoder | None:
        return None if self.model is None else self.model.autoencoder

    @property
    def t_mean(self) -> torch.Tensor:
        assert self.model is not None
        return self.model.t_mean

    @t_mean.setter
    def t_mean(self, value: torch.Tensor) -> None:
        assert self.model is not None
        self.model.t_mean = value

    @property
    def t_std(self) -> torch.Tensor:
        assert self.model is not None
        return self.model.t_std

    @t_std.setter
    def t_std(self, value: torch.Tensor) -> None:
        assert self.model is not None
        self.model.t_std = value

    @property
    def quantiles(self) -> dict[str, float]:
        """The map quantiles (st_a, st_b, ae_a, ae_b); empty before fit."""
        return {} if self.model is None else self.model.quantiles

    @property
    def fitted(self) -> bool:
        return self.image_hw is not None and self.model is not None and self.model.fitted

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) the model was fitted on (`image_hw`), or None before fit."""
        return self.image_hw

    # -- construction and state -----------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _build(self, image_hw: tuple[int, int]) -> EfficientADModel:
        """A fresh, seeded scoring network for `image_hw` images, held as `self.model`."""
        h, w = image_hw
        if min(h, w) < MIN_SIZE:
            raise DetectorError(
                f"efficientad: images of {w} x {h} px are too small (at least {MIN_SIZE} px)",
                hint="set preprocess.size to 64 px or more",
            )
        self.image_hw = (int(h), int(w))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._cfg["seed"])
            model = EfficientADModel(self._cfg["model_size"], self.image_hw)
        model.eval()  # training switches modes itself; inference never uses dropout
        model.to(self.device)
        if self.device.type == "cuda":
            for m in (model.teacher, model.student, model.autoencoder):
                m.to(memory_format=torch.channels_last)
        self.model = model
        return model

    @property
    def out_hw(self) -> tuple[int, int]:
        assert self.image_hw is not None
        return pdn_out_size(self.image_hw[0]), pdn_out_size(self.image_hw[1])

    def _fitted_state(self) -> dict[str, Any]:
        assert self.model is not None
        m = self.model
        return {
            "teacher": m.teacher.state_dict(),
            "student": m.student.state_dict(),
            "autoencoder": m.autoencoder.state_dict(),
            "teacher_mean": m.t_mean,
            "teacher_std": m.t_std,
            "quantiles": m.quantiles,
            "teacher_key": self.teacher_key,
            "backbone_identity": dict(self.backbone_identity),
        }

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        parts = {k: state[k] for k in ("teacher", "student", "autoencoder")}
        t_mean, t_std = state["teacher_mean"], state["teacher_std"]
        quantiles = {k: float(v) for k, v in state["quantiles"].items()}
        model = self._build(image_hw)
        for key, part in parts.items():
            self.load_module(getattr(model, key), part)
        model.t_mean = t_mean.to(self.device)
        model.t_std = t_std.to(self.device)
        try:
            model.quantiles = quantiles
        except KeyError as exc:
            raise DetectorError(f"efficientad: saved quantiles lack {exc.args[0]!r}") from None
        self.teacher_key = str(state.get("teacher_key", ""))
        self.backbone_identity = dict(state.get("backbone_identity", {}))

    # -- tensors ----------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] images -> ImageNet-normalised input on the device (channels-last on CUDA)."""
        return imagenet_normalise(x.to(self.device, non_blocking=True))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self._cfg["amp"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _teacher_out(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return (self.teacher(x) - self.t_mean) / self.t_std

    # -- teacher distillation ---------------------------------------------------------------

    def _targets(self, x01: torch.Tensor) -> torch.Tensor:
        """Backbone features sampled at every PDN cell centre: N x C x oh x ow (unnormalised)."""
        assert self.backbone is not None
        with torch.no_grad():
            feats = self.backbone(x01.to(self.device))
            grid = feats[0].shape[-2:]
            parts = []
            for f in feats:
                f = local_aggregate(f.float(), 3)
                if f.shape[-2:] != grid:
                    f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                parts.append(f)
            cat = torch.cat(parts, dim=1)
            h, w = x01.shape[-2:]
            oh, ow = pdn_out_size(h), pdn_out_size(w)
            cy = (torch.arange(oh, device=cat.device) * 4 + PDN_OFFSET + 0.5) / h * 2 - 1
            cx = (torch.arange(ow, device=cat.device) * 4 + PDN_OFFSET + 0.5) / w * 2 - 1
            gy, gx = torch.meshgrid(cy, cx, indexing="ij")
            g = torch.stack([gx, gy], dim=-1)[None].expand(cat.shape[0], -1, -1, -1)
            return F.grid_sample(cat, g, mode="bilinear", align_corners=False)

    def _teacher_key(self, images: torch.Tensor) -> str:
        assert self.backbone is not None
        h = hashlib.sha256()
        ident = self.backbone.identity
        settings = {
            "backbone": ident.get("backbone"),
            "weights_sha256": ident.get("weights_sha256"),
            "layers": list(self.backbone.layers),
            "model_size": self._cfg["model_size"],
            "distill_steps": self._cfg["distill_steps"],
            "distill_batch": self._cfg["distill_batch"],
            "distill_lr": self._cfg["distill_lr"],
            "schedule": self._cfg["schedule"],
            "seed": self._cfg["seed"],
            "shape": list(images.shape),
            "code": 1,
        }
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(images.mul(255).round().to(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:20]

    def _distill(
        self, train: torch.Tensor, progress: ProgressFn | None
    ) -> tuple[list[float], bool, float]:
        """Fit (or load from the cache) the teacher; (loss history, from cache, seconds)."""
        t0 = time.perf_counter()
        cfg = self._cfg
        self.backbone = create_backbone(cfg["backbone"], cfg["weights"], cfg["layers"]).to(
            self.device
        )
        self.backbone_identity = dict(self.backbone.identity)
        self.teacher_key = self._teacher_key(train)
        path = weights_dir() / f"efficientad_teacher_{self.teacher_key}.pt"
        assert self.teacher is not None
        if cfg["teacher_cache"] and path.is_file():
            with contextlib.suppress(Exception):  # unreadable cache: distil again
                saved = torch.load(str(path), map_location="cpu", weights_only=True)
                self.teacher.load_state_dict(saved["teacher"])
                return [float(v) for v in saved.get("history", [])], True, 0.0
        gen = torch.Generator().manual_seed(cfg["seed"] + 11)
        n = train.shape[0]
        stat_gen = torch.Generator().manual_seed(cfg["seed"] + 13)
        with torch.no_grad():  # channel statistics of the targets on augmented images
            picks = [torch.randint(n, (4,), generator=stat_gen) for _ in range(4)]
            sample = torch.cat([self._targets(distill_augment(train[p], stat_gen)) for p in picks])
            tmean = sample.mean(dim=(0, 2, 3), keepdim=True)
            tstd = sample.std(dim=(0, 2, 3), keepdim=True)
            tstd = tstd.clamp_min(0.1 * float(tstd.mean()))  # near-constant channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"] + 12)
            head = nn.Conv2d(TEACHER_CHANNELS, sample.shape[1], 1).to(self.device)
        self.teacher.train()
        params = list(self.teacher.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=cfg["distill_lr"], weight_decay=1e-5)
        steps = cfg["distill_steps"]
        sched = lr_schedule(opt, steps, cfg["schedule"])
        history: list[float] = []
        for step in range(steps):
            idx = torch.randint(n, (cfg["distill_batch"],), generator=gen)
            x = distill_augment(train[idx], gen)
            target = (self._targets(x) - tmean) / tstd
            loss = F.mse_loss(head(self.teacher(self._norm(x))), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.append(float(loss.detach()))
            if progress and (step + 1) % 10 == 0:
                progress("distill", step + 1, steps)
        self.teacher.eval()
        if cfg["teacher_cache"]:
            _save_atomic(path, {"teacher": _sd(self.teacher), "history": history})
        return history, False, time.perf_counter() - t0

    # -- training ---------------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise DetectorError("efficientad: no training images", hint="capture good parts first")
        first = np.asarray(images[0])
        model = self._build((int(first.shape[0]), int(first.shape[1])))
        cfg = self._cfg
        n = len(images)
        if n >= cfg["min_split_images"] and cfg["val_fraction"] > 0:
            train_idx, val_idx = split_validation(n, cfg["val_fraction"], cfg["seed"])
        else:
            train_idx, val_idx = list(range(n)), []
        train = to_batch([images[i] for i in train_idx], self.image_hw, "efficientad")
        val = (
            to_batch([images[i] for i in val_idx], self.image_hw, "efficientad")
            if val_idx
            else None
        )
        d_hist, cached, d_sec = self._distill(train, progress)
        for p in model.teacher.parameters():
            p.requires_grad_(False)
        model.teacher.eval()
        with torch.no_grad():  # teacher channel statistics over the training images
            outs = [model.teacher(self._norm(train[i : i + 4])) for i in range(0, len(train), 4)]
            allo = torch.cat(outs)
            model.t_mean = allo.mean(dim=(0, 2, 3), keepdim=True)
            model.t_std = allo.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            del outs, allo
        history = self._train(train, progress)
        good = val if val is not None else train
        st, ae = self.raw_maps(good)
        qa_st, qb_st = _quantiles(st, cfg["q_low"], cfg["q_high"])
        qa_ae, qb_ae = _quantiles(ae, cfg["q_low"], cfg["q_high"])
        model.quantiles = {"st_a": qa_st, "st_b": qb_st, "ae_a": qa_ae, "ae_b": qb_ae}
        good_scores = self.predict(
            (good.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        ).scores.tolist()
        return FitReport(
            n_images=n,
            seconds=time.perf_counter() - t0,
            good_scores=[float(s) for s in good_scores],
            extra={
                "n_train": len(train_idx),
                "n_validation": len(val_idx),
                "good_scores_from": "validation" if val_idx else "training",
                "teacher_key": self.teacher_key,
                "teacher_from_cache": cached,
                "distill_seconds": round(d_sec, 2),
                "distill_loss_first": d_hist[0] if d_hist else None,
                "distill_loss_last": d_hist[-1] if d_hist else None,
                "distill_history": d_hist,
                "loss_history": history,
                "steps": cfg["steps"],
                "quantiles": dict(self.quantiles),
                "grid": list(self.out_hw),
            },
        )

    def _train(self, train: torch.Tensor, progress: ProgressFn | None) -> list[float]:
        cfg = self._cfg
        assert self.student is not None and self.autoencoder is not None
        gen = torch.Generator().manual_seed(cfg["seed"] + 21)
        params = list(self.student.parameters()) + list(self.autoencoder.parameters())
        opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        steps = cfg["steps"]
        sched = lr_schedule(opt, steps, cfg["schedule"])
        self.student.train()
        self.autoencoder.train()
        c = TEACHER_CHANNELS
        history: list[float] = []
        with torch.random.fork_rng(devices=[]):  # dropout draws
            torch.manual_seed(cfg["seed"] + 22)
            for step in range(steps):
                i = int(torch.randint(train.shape[0], (1,), generator=gen))
                x = train[i : i + 1]
                xa = jitter(x, gen)
                xn, xan = self._norm(x), self._norm(xa)
                with torch.no_grad():
                    t = self._teacher_out(xn)
                    ta = self._teacher_out(xan)
                s = self.student(xn)[:, :c]
                loss_st = hard_mse((t - s) ** 2, cfg["hard_quantile"])
                a = self.autoencoder(xan)
                sa = self.student(xan)[:, c:]
                loss_ae = ((ta - a) ** 2).mean()
                loss_stae = ((a - sa) ** 2).mean()
                loss = loss_st + loss_ae + loss_stae
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                history.append(float(loss.detach()))
                if progress and (step + 1) % 10 == 0:
                    progress("train", step + 1, steps)
        self.student.eval()
        self.autoencoder.eval()
        return history

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def raw_maps(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised student-teacher and autoencoder maps on the PDN grid (N x oh x ow)."""
        assert self.model is not None
        model, amp = self.model, bool(self._cfg["amp"])
        sts, aes = [], []
        bs = self._cfg["batch_size"]
        for start in range(0, x01.shape[0], bs):
            st, ae = model.raw_maps(self._norm(x01[start : start + bs]), amp)
            sts.append(st)
            aes.append(ae)
        return torch.cat(sts), torch.cat(aes)

    def predict(self, images: np.ndarray) -> Prediction:
        if not self.fitted:
            raise DetectorError("efficientad: predict before fit", hint="train or load a model")
        assert self.model is not None and self.image_hw is not None
        return predict_in_batches(
            images, self.image_hw, "efficientad", self._cfg["batch_size"], self._predict_tensor
        )

    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        assert self.model is not None and self.image_hw is not None
        st, ae = self.raw_maps(batch)
        maps = self.model.combine(st, ae, self.image_hw).float().cpu().numpy()
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)


def _quantiles(maps: torch.Tensor, lo: float, hi: float) -> tuple[float, float]:
    v = maps.flatten().float().cpu().numpy()
    a, b = np.quantile(v, [lo, hi])
    return float(a), float(b)


def _save_atomic(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file then rename; a cache that cannot be written is only skipped."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    with contextlib.suppress(OSError):
        atomic_write(path, buf.getvalue())
