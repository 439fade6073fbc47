"""The one scoring engine: images through a set of fitted detectors, maps and scores out.

Every place that scores images uses it: inspection (one shot at a time, `DetectorSet`),
threshold calibration on labelled folders (`calibration.scores.score_folder`), `station
evaluate` (`calibration.evaluation`) and training (`load_images`). So an image is read,
preprocessed and batched the same way wherever it is scored.

- `load_images` / `load_masks`: files read and preprocessed as the recipe says, all one size.
- `load_models`: the newest trained artifact of each (or the named) detectors of a recipe.
- `ScoringEngine(detectors, preprocess, batch_size)`: `score(images)` for preprocessed
  images, `score_files(paths)` reads and preprocesses batch by batch (bounded memory),
  `prepare(image)` preprocesses one raw image. Results per detector: image scores, maps (when
  kept) and the wall time of its predict calls.

With `fault_hint` (inspection), any failure of a detector becomes one DetectorError naming it,
and a map that is not N x H x W is refused; without it errors pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from station.detectors.artifact import LoadedModel, latest_artifact, load_artifact
from station.errors import DetectorError, StationError
from station.imaging import check_like, preprocess, preprocess_mask, read_image

if TYPE_CHECKING:
    from station.datasets import DatasetItem
    from station.detectors.base import Detector
    from station.recipe import PreprocessConfig, Recipe

CountFn = Callable[[int, int], None]  # (done, total)


@dataclass
class DetectorScores:
    """One detector's results for a set of images, in input order."""

    scores: np.ndarray  # N image scores, as the detector returned them
    maps: np.ndarray | None  # N x H x W anomaly maps; None when not kept
    latency_ms: float  # wall time of this detector's predict calls, all batches together

    def map(self, i: int) -> np.ndarray:
        """Image i's anomaly map (the maps must have been kept)."""
        if self.maps is None:
            raise ValueError("maps were not kept: score with keep_maps=True")
        return self.maps[i]


def load_images(
    files: Sequence[Path], cfg: PreprocessConfig, progress: CountFn | None = None
) -> list[np.ndarray]:
    """Read and preprocess `files`; they must all come out one size and kind."""
    out: list[np.ndarray] = []
    for i, f in enumerate(files):
        out.append(preprocess(read_image(f), cfg))
        check_like(out[-1], f, out[0], files[0])
        if progress:
            progress(i + 1, len(files))
    return out


def load_masks(
    items: Sequence[DatasetItem], cfg: PreprocessConfig, hw: tuple[int, int]
) -> np.ndarray:
    """N x H x W uint8 ground-truth masks of test items, preprocessed like their images;
    all zero for an item without a mask (a good image)."""
    masks = np.zeros((len(items), *hw), np.uint8)
    for i, it in enumerate(items):
        if it.mask_path is not None:
            masks[i] = preprocess_mask(read_image(it.mask_path), cfg)
    return masks


def load_models(
    recipe: Recipe, names: Sequence[str] | None = None, device: str | None = None
) -> dict[str, LoadedModel]:
    """The newest trained model of each recipe detector (or of `names`), checked against the
    recipe; a clear error when one is untrained or stale."""
    wanted = list(names) if names is not None else [d.name for d in recipe.detectors]
    return {
        name: load_artifact(latest_artifact(recipe, name), recipe=recipe, device=device)
        for name in wanted
    }


class ScoringEngine:
    """Fitted detectors (by name, in order) and the preprocessing their inputs need."""

    def __init__(
        self,
        detectors: Mapping[str, Detector],
        preprocess_cfg: PreprocessConfig,
        batch_size: int = 16,
        fault_hint: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise StationError(f"batch size must be >= 1, not {batch_size}")
        self.detectors = dict(detectors)
        self.preprocess_cfg = preprocess_cfg
        self.batch_size = batch_size
        self.fault_hint = fault_hint

    @classmethod
    def from_models(
        cls,
        models: Mapping[str, LoadedModel],
        preprocess_cfg: PreprocessConfig,
        batch_size: int = 16,
        fault_hint: str | None = None,
    ) -> ScoringEngine:
        """An engine over loaded artifacts (`load_models`)."""
        detectors = {n: m.detector for n, m in models.items()}
        return cls(detectors, preprocess_cfg, batch_size, fault_hint)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One raw image preprocessed as in training."""
        return preprocess(image, self.preprocess_cfg)

    def score(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        keep_maps: bool = True,
        progress: CountFn | None = None,
    ) -> dict[str, DetectorScores]:
        """Score preprocessed images (all one size) in batches of `batch_size`."""
        total = len(images)
        stack = np.asarray if isinstance(images, np.ndarray) else np.stack  # an array: no copy
        batches = (stack(images[s : s + self.batch_size]) for s in range(0, total, self.batch_size))
        return self._run(batches, total, keep_maps, progress)

    def score_files(
        self, files: Sequence[Path], keep_maps: bool = False, progress: CountFn | None = None
    ) -> dict[str, DetectorScores]:
        """Read, preprocess and score image files a batch at a time (all must match the first)."""
        total = len(files)

        def batches() -> Iterator[np.ndarray]:
            first: np.ndarray | None = None
            for start in range(0, total, self.batch_size):
                chunk = files[start : start + self.batch_size]
                images = [self.prepare(read_image(f)) for f in chunk]
                first = images[0] if first is None else first
                for f, img in zip(chunk, images, strict=True):
                    check_like(img, f, first, files[0])
                yield np.stack(images)

        return self._run(batches(), total, keep_maps, progress)

    def _run(
        self,
        batches: Iterable[np.ndarray],
        total: int,
        keep_maps: bool,
        progress: CountFn | None,
    ) -> dict[str, DetectorScores]:
        scores: dict[str, list[np.ndarray]] = {n: [] for n in self.detectors}
        maps: dict[str, list[np.ndarray]] = {n: [] for n in self.detectors}
        seconds = dict.fromkeys(self.detectors, 0.0)
        done = 0
        for batch in batches:
            for name, det in self.detectors.items():
                t0 = time.perf_counter()
                batch_maps, batch_scores = self._predict(name, det, batch)
                seconds[name] += time.perf_counter() - t0
                scores[name].append(batch_scores)
                if keep_maps:
                    maps[name].append(batch_maps)
            done += len(batch)
            if progress:
                progress(min(done, total), total)
        return {
            n: DetectorScores(
                scores=_joined(scores[n]),
                maps=_joined(maps[n]) if keep_maps else None,
                latency_ms=seconds[n] * 1000.0,
            )
            for n in self.detectors
        }

    def _predict(
        self, name: str, det: Detector, batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One detector on one batch: (maps, scores)."""
        if self.fault_hint is None:
            pred = det.predict(batch)
            return np.asarray(pred.maps), np.asarray(pred.scores).reshape(-1)
        try:
            pred = det.predict(batch)
            maps = np.asarray(pred.maps, dtype=np.float32)
            scores = np.asarray(pred.scores).reshape(-1)
        except StationError as exc:
            raise DetectorError(f"detector {name} failed: {exc.message}", exc.hint) from None
        except Exception as exc:  # noqa: BLE001 (a detector bug must fault the part, not crash)
            raise DetectorError(
                f"detector {name} failed: {type(exc).__name__}: {exc}", hint=self.fault_hint
            ) from None
        if maps.ndim != 3:
            raise DetectorError(f"detector {name} returned a map of shape {maps.shape[1:]}")
        if len(maps) != len(batch) or len(scores) != len(batch):
            raise DetectorError(
                f"detector {name} returned {len(maps)} maps and {len(scores)} scores for "
                f"{len(batch)} images",
                hint=self.fault_hint,
            )
        return maps, scores


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
