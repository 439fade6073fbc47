"""DFDA's fitting code: cached branch maps, synthetic-fault separation, the choice of k and the
attention training. `DFDAFitting` is a mixin of the `DFDA` detector (station.detectors.dfda),
which supplies the network (`branch_maps`, `attend`, `fuse`, `cbam`, `qk`) and the settings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from station.detectors.base import ProgressFn
from station.detectors.common import sample_per_image, to_batch, upsample_smooth
from station.detectors.dfda_faults import (
    patch_labels,
    separation_auroc,
    separation_loss,
    synthetic_defect,
)
from station.detectors.dfda_net import ChannelSpatialAttention, QueryKeyAttention
from station.detectors.kmeans import choose_k, kmeans


def rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


@dataclass
class Branches:
    """Cached frozen branch maps of some images (float16 on the CPU), optional fault labels."""

    a: torch.Tensor
    b: torch.Tensor
    defect: torch.Tensor | None = None  # N x h x w, fault patches
    good: torch.Tensor | None = None  # N x h x w, patches away from any fault

    def __len__(self) -> int:
        return int(self.a.shape[0])


class DFDAFitting:
    """The training half of DFDA (see the module docstring)."""

    _cfg: dict[str, Any]
    device: torch.device
    image_hw: tuple[int, int] | None
    scales: torch.Tensor
    cbam: ChannelSpatialAttention
    qk: QueryKeyAttention

    def branch_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # the detector's network

    def attend(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fuse(
        self, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def _ref_scales(self, ref: Branches) -> torch.Tensor:
        """Per-branch 1 / RMS patch norm of the attended reference images (differentiable):
        both branches get an equal say, and shrinking or growing a whole branch changes
        nothing downstream, so the attention cannot game the distances by scale."""
        a, b = self.attend(ref.a.to(self.device).float(), ref.b.to(self.device).float())
        ms = torch.stack([(a * a).sum(1).mean(), (b * b).sum(1).mean()])
        return ms.clamp_min(1e-12).rsqrt()

    def _branches(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray] | None = None,
        progress: ProgressFn | None = None,
        stage: str = "features",
    ) -> Branches:
        """Frozen branch maps of `images` once (float16 on the CPU keeps the cache small)."""
        bs = self._cfg["batch_size"]
        out_a, out_b = [], []
        for s in range(0, len(images), bs):
            a, b = self.branch_maps(to_batch(list(images[s : s + bs]), self.image_hw, "dfda"))
            out_a.append(a.half().cpu())
            out_b.append(b.half().cpu())
            if progress:
                progress(stage, min(s + bs, len(images)), len(images))
        br = Branches(torch.cat(out_a), torch.cat(out_b))
        if masks is not None:
            m = torch.from_numpy(np.stack([np.asarray(x, dtype=bool) for x in masks]))
            br.defect, br.good = patch_labels(m, tuple(br.a.shape[-2:]))
        return br

    def _fused(
        self, br: Branches, idx: torch.Tensor | slice, scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        a = br.a[idx].to(self.device).float()
        b = br.b[idx].to(self.device).float()
        return self.fuse(a, b, scales)

    def _sample(self, br: Branches, per_image: int, rng: np.random.Generator) -> torch.Tensor:
        """Seeded subsample of fused good patches (no grad), `per_image` from each image."""
        out = []
        bs = self._cfg["batch_size"]
        with torch.no_grad():
            for s in range(0, len(br), bs):
                z = self._fused(br, slice(s, s + bs))
                n, d, h, w = z.shape
                z = sample_per_image(z.permute(0, 2, 3, 1).reshape(n, h * w, d), per_image, rng)
                out.append(z.reshape(-1, d))
        return torch.cat(out)

    @staticmethod
    def _nearest(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Differentiable distance of each N x D x h x w patch to its nearest centre: N x h x w."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        d2 = (flat * flat).sum(1, keepdim=True) + (centres**2).sum(1)[None]
        d2 = d2 - 2.0 * flat @ centres.T
        return d2.amin(1).clamp_min(1e-8).sqrt().view(n, h, w)

    @torch.no_grad()
    def _separation(self, centres: torch.Tensor, good: Branches, bad: Branches) -> dict:
        """Synthetic-fault AUROCs (patch and image) of held-out images for these centres."""
        bs = self._cfg["batch_size"]
        dg: list[torch.Tensor] = []
        db: list[torch.Tensor] = []
        ig: list[torch.Tensor] = []
        ib: list[torch.Tensor] = []
        for br, dists, imgs in ((good, dg, ig), (bad, db, ib)):
            for s in range(0, len(br), bs):
                d = self._nearest(self._fused(br, slice(s, s + bs)), centres)
                dists.append(d)
                hw = self.image_hw or tuple(d.shape[-2:])
                maps = upsample_smooth(d[:, None], hw, self._cfg["sigma"])
                imgs.append(maps.flatten(1).amax(1))
        d_good, d_bad = torch.cat(dg), torch.cat(db)
        assert bad.defect is not None and bad.good is not None
        goods = torch.cat([d_good.flatten(), d_bad[bad.good]])
        return separation_auroc(goods, d_bad[bad.defect], torch.cat(ig), torch.cat(ib))

    def _choose_k(
        self, pool: torch.Tensor, val: Branches, val_bad: Branches
    ) -> tuple[int | None, dict[int, dict[str, float]]]:
        """k from the data: the smallest candidate whose synthetic-fault separation on the
        held-out images is within `k_tolerance` of the best candidate's. None when no
        candidate could be judged (the synthetic faults covered no held-out patch)."""
        ks = sorted({c for c in self._cfg["k_candidates"] if 1 <= c < pool.shape[0]})
        if not ks:  # too few points for any candidate
            return 1, {}
        seps = {}
        for k in ks:
            res = kmeans(pool, k, min(20, self._cfg["kmeans_iters"]), self._cfg["seed"])
            seps[k] = self._separation(res.centres, val, val_bad)

        def score(s: dict[str, float]) -> float:  # the image AUROC alone when patches are absent
            return s["mean"] if math.isfinite(s["mean"]) else s["image_auroc"]

        judged = [k for k in ks if math.isfinite(score(seps[k]))]
        if not judged:
            return None, seps
        best = max(score(seps[k]) for k in judged)
        chosen = next(k for k in judged if score(seps[k]) >= best - self._cfg["k_tolerance"])
        return chosen, seps

    def _epoch_centres(
        self, clean: Branches, ref: Branches, k: int, per_image: int, rng: np.random.Generator
    ) -> torch.Tensor:
        """Scales and K-means centres for the current attention (no grad)."""
        with torch.no_grad():
            self.scales = self._ref_scales(ref)
        pool = self._sample(clean, per_image, rng)
        return kmeans(pool, k, min(20, self._cfg["kmeans_iters"]), self._cfg["seed"]).centres

    @torch.no_grad()
    def _objective(self, clean: Branches, bad: Branches, centres: torch.Tensor) -> list[float]:
        """[loss, margin] of the separation objective over the whole training set."""
        assert bad.defect is not None and bad.good is not None
        bs = self._cfg["batch_size"]
        goods, defects = [], []
        for s in range(0, len(clean), bs):
            sl = slice(s, s + bs)
            d_bad = self._nearest(self._fused(bad, sl), centres)
            goods += [self._nearest(self._fused(clean, sl), centres).flatten()]
            goods += [d_bad[bad.good[sl].to(self.device)]]
            defects.append(d_bad[bad.defect[sl].to(self.device)])
        loss, margin = separation_loss(
            torch.cat(goods), torch.cat(defects), self._cfg["attention_margin"]
        )
        return [float(loss), margin]

    def _attention_step(
        self,
        clean: Branches,
        bad: Branches,
        ref: Branches,
        idx: torch.Tensor,
        centres: torch.Tensor,
        opt: torch.optim.Optimizer,
    ) -> float | None:
        """One optimiser step on images `idx` (clean and faulty); None when no fault patch."""
        assert bad.defect is not None and bad.good is not None
        defect = bad.defect[idx].to(self.device)
        if not bool(defect.any()):
            return None
        scales = self._ref_scales(ref)  # moves with the attention, keeps scale out
        d_clean = self._nearest(self._fused(clean, idx, scales), centres)
        d_bad = self._nearest(self._fused(bad, idx, scales), centres)
        goods = torch.cat([d_clean.flatten(), d_bad[bad.good[idx].to(self.device)]])
        loss, _ = separation_loss(goods, d_bad[defect], self._cfg["attention_margin"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _train_attention(
        self,
        clean: Branches,
        bad: Branches,
        ref: Branches,
        k: int,
        per_image: int,
        rng: np.random.Generator,
        progress: ProgressFn | None,
    ) -> tuple[list[float], list[float]]:
        """Train the attention on synthetic faults. Returns the objective's loss and margin over
        the whole training set, with fresh centres, before training and after each epoch."""
        params = []
        if self._cfg["use_cbam"]:
            params += list(self.cbam.parameters())
        if self._cfg["use_query_key"]:
            params += list(self.qk.parameters())
        epochs = self._cfg["attention_epochs"]
        if not params or epochs == 0:
            return [], []
        n = len(clean)
        opt = torch.optim.Adam(params, lr=self._cfg["attention_lr"])
        gen = torch.Generator(device="cpu").manual_seed(self._cfg["seed"] + 1)
        bs = self._cfg["attention_batch"]
        assert bad.defect is not None and bad.good is not None
        # Centres for the objective: a subsample large enough for about 40 patches per centre.
        small = max(1, min(per_image, max(self._cfg["k_select_patches"], 40 * k) // n))
        centres = self._epoch_centres(clean, ref, k, small, rng)
        history = [self._objective(clean, bad, centres)]
        for epoch in range(epochs):
            self.cbam.train()
            self.qk.train()
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, bs):
                self._attention_step(clean, bad, ref, order[s : s + bs], centres, opt)
            self.cbam.eval()
            self.qk.eval()
            # Re-cluster with the updated attention (alternating, as in deep clustering).
            centres = self._epoch_centres(clean, ref, k, small, rng)
            history.append(self._objective(clean, bad, centres))
            if progress:
                progress("attention", epoch + 1, epochs)
        return [h[0] for h in history], [h[1] for h in history]

    def _faults(
        self, images: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """One synthetic fault per image (seeded); donors for pasted patches from the same set."""
        out, masks = [], []
        for img in images:
            donor = images[int(rng.integers(len(images)))]
            bad, mask = synthetic_defect(img, rng, donor, self._cfg["synthetic_kinds"])
            out.append(bad)
            masks.append(mask)
        return out, masks

    def _pick_k(
        self,
        clean: Branches,
        val: Branches | None,
        val_bad: Branches | None,
        per_image: int,
        rng: np.random.Generator,
    ) -> tuple[int, str, dict[int, dict[str, float]], dict[int, float]]:
        """(k, where it came from, separation per candidate, inertia per candidate)."""
        seed = self._cfg["seed"]
        k_sep: dict[int, dict[str, float]] = {}
        k_inertias: dict[int, float] = {}
        if self._cfg["k"] not in ("auto", "elbow"):
            return int(self._cfg["k"]), "config", k_sep, k_inertias
        pool = self._sample(clean, per_image, rng)
        judged, k_from = None, "elbow"
        if self._cfg["k"] == "auto" and val is not None and val_bad is not None:
            judged, k_sep = self._choose_k(pool, val, val_bad)
            k_from = (
                "synthetic-fault validation"
                if judged is not None
                else "elbow (the synthetic faults covered no held-out patch)"
            )
        if judged is not None:
            return judged, k_from, k_sep, k_inertias
        if pool.shape[0] > self._cfg["k_select_patches"]:
            g = torch.Generator(device="cpu").manual_seed(seed)
            pick = torch.randperm(pool.shape[0], generator=g)
            pool = pool[pick[: self._cfg["k_select_patches"]].to(pool.device)]
        k, k_inertias = choose_k(pool, self._cfg["k_candidates"], seed)
        return k, k_from, k_sep, k_inertias

    def _fit_sets(
        self,
        images: Sequence[np.ndarray],
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        progress: ProgressFn | None,
    ) -> tuple[Branches, Branches | None, Branches | None, Branches | None]:
        """Branch maps of (clean training images, their synthetic faults, held-out images,
        their synthetic faults); fault sets only where attention training or k needs them."""
        seed = self._cfg["seed"]
        fault_rng = np.random.default_rng(seed + 17)
        val_fault_rng = np.random.default_rng(seed + 18)  # the same faults for every variant
        train_imgs = [images[i] for i in train_idx]
        val_imgs = [images[i] for i in val_idx]
        need_faults = self._cfg["attention_epochs"] > 0 and (
            self._cfg["use_cbam"] or self._cfg["use_query_key"]
        )
        clean = self._branches(train_imgs, progress=progress)
        bad = None
        if need_faults:
            bad = self._branches(*self._faults(train_imgs, fault_rng), progress, "faults")
        val = val_bad = None
        if val_imgs:
            val = self._branches(val_imgs)
            if need_faults or self._cfg["k"] == "auto":
                val_bad = self._branches(*self._faults(val_imgs, val_fault_rng))
        return clean, bad, val, val_bad
