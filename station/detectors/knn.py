"""Nearest-neighbour search over a fixed set of rows (PatchCore's memory bank).

An index is built once over the bank (`build_index`) and then answers `search(queries, k)`:
Euclidean distances and row indices of the k nearest bank rows, as torch tensors on the
queries' device. Methods (the PatchCore param `knn`):

- `torch`: exact, chunked matrix product + top-k in torch (`common.nearest_neighbours`);
  runs on the CPU or CUDA, wherever the bank is.
- `faiss`: exact, faiss `IndexFlatL2` (CPU). Same neighbours as `torch` up to float rounding.
- `faiss_ivf`: approximate, faiss `IndexIVFFlat`: the bank is split into `nlist` k-means cells
  (at most 64, at least 39 rows per cell) and each query scans the `nprobe` (16) nearest
  cells. Recall against exact search: docs/knn.md.
- `auto`: `faiss` when the device is the CPU and faiss is installed, else `torch`. It depends on
  nothing but those two facts; both are exact, so `auto` changes speed, not answers.

faiss runs on the CPU only here: asking for it with a CUDA device is an error, never a silent
move of the search to the CPU. faiss is an optional package (`pip install station[fast]`).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, Protocol

import numpy as np
import torch

from station.detectors.common import nearest_neighbours
from station.errors import DetectorError

KnnMethod = Literal["auto", "torch", "faiss", "faiss_ivf"]
KNN_METHODS: tuple[str, ...] = ("auto", "torch", "faiss", "faiss_ivf")

IVF_MAX_LISTS = 64  # k-means cells of the approximate index ...
IVF_MIN_ROWS_PER_LIST = 39  # ... with at least this many bank rows each (faiss's own floor)
IVF_NPROBE = 16  # cells scanned per query (a quarter of 64; docs/knn.md)
IVF_SEED = 1234  # k-means seed: the same bank gives the same index

FAISS_HINT = "pip install 'station[fast]' (faiss-cpu), or set the detector's knn param to torch"


def faiss_module() -> Any:
    """The faiss module; DetectorError naming the extra when it is not installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        raise DetectorError(
            "nearest-neighbour search 'faiss' needs the faiss package, which is not installed",
            hint=FAISS_HINT,
        ) from None


def faiss_available() -> bool:
    try:
        faiss_module()
    except DetectorError:
        return False
    return True


def resolve_knn(method: str, device: torch.device) -> str:
    """The concrete method (`torch`, `faiss` or `faiss_ivf`) for `method` on `device`."""
    if method not in KNN_METHODS:
        raise DetectorError(
            f"unknown nearest-neighbour search {method!r}; choose one of {', '.join(KNN_METHODS)}"
        )
    if method == "auto":
        return "faiss" if device.type == "cpu" and faiss_available() else "torch"
    if method != "torch":
        if device.type != "cpu":
            raise DetectorError(
                f"nearest-neighbour search {method!r} runs on the CPU, the detector's device "
                f"is {device}",
                hint="set knn: torch (or auto) to search on the GPU, or device: cpu",
            )
        faiss_module()
    return method


class KnnIndex(Protocol):
    method: str
    exact: bool
    size: int

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances, indices), each len(queries) x min(k, size), nearest first."""
        ...


class TorchIndex:
    """Exact search in torch on the bank's device (CPU or CUDA)."""

    method = "torch"
    exact = True

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank
        self.size = int(bank.shape[0])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return nearest_neighbours(queries, self.bank, k)


class FaissIndex:
    """faiss search (CPU): `IndexFlatL2` (exact) or `IndexIVFFlat` (approximate)."""

    def __init__(self, bank: torch.Tensor, approximate: bool = False) -> None:
        if bank.device.type != "cpu":
            raise DetectorError(f"faiss search needs the bank on the CPU, it is on {bank.device}")
        faiss = faiss_module()
        self._faiss = faiss
        x = _as_f32(bank)
        self._rows = x  # the bank as faiss reads it
        self.size, dim = x.shape
        self.exact = not approximate
        self.method = "faiss_ivf" if approximate else "faiss"
        nlist = max(1, min(IVF_MAX_LISTS, self.size // IVF_MIN_ROWS_PER_LIST))
        if approximate and nlist > 1:
            self._quantizer = faiss.IndexFlatL2(dim)  # kept: the IVF index refers to it
            index = faiss.IndexIVFFlat(self._quantizer, dim, nlist)
            index.cp.seed = IVF_SEED
            self._set_threads()
            index.train(x)
            index.nprobe = min(IVF_NPROBE, nlist)
        else:  # exact, or a bank too small to split into cells
            index = faiss.IndexFlatL2(dim)
        index.add(x)
        self.nlist = nlist if approximate else 0
        self.index = index

    def _set_threads(self) -> None:
        """faiss's OpenMP threads follow torch's thread count (the station sets that)."""
        self._faiss.omp_set_num_threads(max(1, torch.get_num_threads()))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if queries.device.type != "cpu":
            raise DetectorError(
                f"faiss search runs on the CPU, the queries are on {queries.device}"
            )
        k = min(int(k), self.size)
        wide = min(k + RERANK_EXTRA, self.size)
        self._set_threads()
        q = _as_f32(queries)
        d2, idx = self.index.search(q, wide)
        missing = (idx < 0).any(axis=1)  # IVF: fewer than `wide` rows in the scanned cells
        if missing.any():
            d2[missing], idx[missing] = self._exact(q[missing], wide)
        # faiss proposes the rows; their distances are recomputed one by one and re-ranked.
        # faiss's BLAS path (|q|^2 + |b|^2 - 2 q.b) rounds differently with the number of
        # queries, so a shot scored alone (inspection) and in a batch (calibration) could
        # differ in the last bits, or pick the other row of a near tie: enough to flip a
        # part that sits exactly at a zero-miss threshold.
        found = torch.from_numpy(idx)
        rows = torch.from_numpy(self._rows)[found]  # len(q) x wide x dim
        dist = (torch.from_numpy(q)[:, None, :] - rows).norm(dim=-1)
        dist, order = torch.sort(dist, dim=1, stable=True)
        return dist[:, :k].contiguous(), torch.gather(found, 1, order)[:, :k].contiguous()

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and indices by brute force (the rows IVF left short)."""
        flat = self._faiss.IndexFlatL2(self._rows.shape[1])
        flat.add(self._rows)
        return flat.search(q, k)


# faiss's candidates beyond k, re-ranked by exact distance (see FaissIndex.search)
RERANK_EXTRA = 4


def _as_f32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).numpy())


def build_index(bank: torch.Tensor, method: str) -> KnnIndex:
    """An index over `bank` for a concrete method (see `resolve_knn`)."""
    if method == "torch":
        return TorchIndex(bank)
    if method in ("faiss", "faiss_ivf"):
        return FaissIndex(bank, approximate=method == "faiss_ivf")
    raise DetectorError(f"no nearest-neighbour index {method!r}; resolve 'auto' first")
