"""K-means for detectors: k-means++ seeding, Lloyd iterations in chunks (CPU or CUDA), and k by
the inertia elbow (DFDA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from station.detectors.common import nearest_neighbours
from station.errors import DetectorError


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
    if not ks:  # too few points for any candidate
        return 1, {}
    inertias = {k: kmeans(x, k, max_iter, seed).inertia for k in ks}
    return elbow_k(ks, [inertias[k] for k in ks]), inertias
