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

Tiles (`preprocess.tiling.enabled`): prepared images keep their native size; each is cut into
overlapping `preprocess.size` tiles (`station.geometry.tiling`), tiles of several images share a
batch
(`batch_size` counts tiles), each detector's tile maps are stitched per image into one
full-resolution map (blended across the overlaps), and an image's score is the MAX of its
tiles' scores. Results keep the shape contract: N scores and N x H x W maps at native size
(a list of H_i x W_i maps when the images differ in size; each must hold one tile).
`training_tiles` cuts training images the same way.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from station.detectors.artifact import LoadedModel, latest_artifact, load_artifact
from station.errors import DetectorError, StationError
from station.geometry.tiling import TileGrid, pick_tiles, stitch, tile_grid
from station.imaging import check_like, preprocess, preprocess_mask, read_image, read_mask

if TYPE_CHECKING:
    from station.datasets import DatasetItem
    from station.detectors.base import Detector
    from station.recipe import PreprocessConfig, Recipe

CountFn = Callable[[int, int], None]  # (done, total)


@dataclass
class DetectorScores:
    """One detector's results for a set of images, in input order."""

    scores: np.ndarray  # N image scores, as the detector returned them (tiles: their max)
    # N x H x W anomaly maps (a list when tiled images differ in size); None when not kept
    maps: np.ndarray | list[np.ndarray] | None
    latency_ms: float  # wall time of this detector's predict calls, all batches together

    def map(self, i: int) -> np.ndarray:
        """Image i's anomaly map (the maps must have been kept)."""
        if self.maps is None:
            raise ValueError("maps were not kept: score with keep_maps=True")
        return self.maps[i]


def load_images(
    files: Sequence[Path], cfg: PreprocessConfig, progress: CountFn | None = None
) -> list[np.ndarray]:
    """Read and preprocess `files`; they must all come out one size and kind (with tiling:
    one kind, and each large enough for a tile)."""
    out: list[np.ndarray] = []
    for i, f in enumerate(files):
        out.append(preprocess(read_image(f), cfg))
        _check_set(out[-1], f, out[0], files[0], cfg)
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
            hw = read_image(it.path).shape[:2]
            masks[i] = preprocess_mask(read_mask(it.mask_path, hw), cfg)
    return masks


def load_models(
    recipe: Recipe, names: Sequence[str] | None = None, device: str | None = None
) -> dict[str, LoadedModel]:
    """The newest trained model of each recipe detector (or of `names`), checked against the
    recipe; a clear error when one is untrained or stale. A detector whose recipe entry says
    `runtime: onnxruntime | openvino` is served from its export (station.detectors.runtimes)."""
    wanted = list(names) if names is not None else [d.name for d in recipe.detectors]
    return {name: _load_model(recipe, name, device) for name in wanted}


def _load_model(recipe: Recipe, name: str, device: str | None) -> LoadedModel:
    path = latest_artifact(recipe, name)
    runtime = next((d.runtime for d in recipe.detectors if d.name == name), "torch")
    if runtime == "torch":
        return load_artifact(path, recipe=recipe, device=device)
    from station.detectors.runtimes.detector import load_runtime_model

    return load_runtime_model(recipe, name, path, runtime, device)


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
        self.tiled = preprocess_cfg.tiling.enabled

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
        """Score preprocessed images (all one size; tiled: each at least a tile) in batches
        of `batch_size` images (tiled: tiles)."""
        total = len(images)
        if self.tiled:
            return self._run_tiled(iter(images), total, keep_maps, progress)
        stack = np.asarray if isinstance(images, np.ndarray) else np.stack  # an array: no copy
        batches = (stack(images[s : s + self.batch_size]) for s in range(0, total, self.batch_size))
        return self._run(batches, total, keep_maps, progress)

    def score_files(
        self, files: Sequence[Path], keep_maps: bool = False, progress: CountFn | None = None
    ) -> dict[str, DetectorScores]:
        """Read, preprocess and score image files a batch at a time (all must match the first;
        tiled: one kind, any size that holds a tile, read one image at a time)."""
        total = len(files)
        if self.tiled:

            def prepared() -> Iterator[np.ndarray]:
                first: np.ndarray | None = None
                for f in files:
                    image = self.prepare(read_image(f))
                    first = image if first is None else first
                    _check_set(image, f, first, files[0], self.preprocess_cfg)
                    yield image

            return self._run_tiled(prepared(), total, keep_maps, progress)

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

    def _run_tiled(
        self,
        images: Iterator[np.ndarray],
        total: int,
        keep_maps: bool,
        progress: CountFn | None,
    ) -> dict[str, DetectorScores]:
        """Tiles of all images through each detector, `batch_size` tiles a batch; per image the
        max tile score and (kept) the stitched map. Images finish in input order."""
        runs = {n: _TiledRun(keep_maps) for n in self.detectors}
        grids: list[TileGrid] = []  # one per image started, in order
        ends: list[int] = []  # cumulative tile count at the end of each image
        queue: list[np.ndarray] = []  # tiles waiting for a batch (views into their images)
        seen = done = 0

        def flush() -> None:
            nonlocal seen, done
            batch = np.stack(queue)
            queue.clear()
            for name, det in self.detectors.items():
                t0 = time.perf_counter()
                tile_maps, tile_scores = self._predict(name, det, batch)
                if tile_maps.shape[1:] != batch.shape[1:3]:
                    raise DetectorError(
                        f"detector {name} returned {tile_maps.shape[1:]} maps for "
                        f"{batch.shape[1:3]} tiles",
                        hint=self.fault_hint,
                    )
                runs[name].add(tile_maps, tile_scores, grids)
                runs[name].seconds += time.perf_counter() - t0
            seen += len(batch)
            finished = bisect.bisect_right(ends, seen)
            if progress and finished > done:
                progress(finished, total)
            done = finished

        for image in images:
            grid = self.grid(image)
            grids.append(grid)
            ends.append((ends[-1] if ends else 0) + len(grid))
            for y, x in grid.origins:
                queue.append(image[y : y + grid.tile_h, x : x + grid.tile_w])
                if len(queue) == self.batch_size:
                    flush()
        if queue:
            flush()
        return {n: r.result() for n, r in runs.items()}

    def grid(self, image: np.ndarray, what: str | Path = "a prepared image") -> TileGrid:
        """The tile grid of one prepared image; StationError when a tile does not fit."""
        return tiles_of(image.shape[:2], self.preprocess_cfg, what)


class _TiledRun:
    """One detector's tile results gathered into per-image scores and stitched maps."""

    def __init__(self, keep_maps: bool) -> None:
        self.keep_maps = keep_maps
        self.scores: list[float] = []
        self.maps: list[np.ndarray] = []
        self.seconds = 0.0
        self._maps: list[np.ndarray] = []  # tiles of the image being gathered
        self._scores: list[np.ndarray] = []
        self._have = 0

    def add(self, maps: np.ndarray, scores: np.ndarray, grids: Sequence[TileGrid]) -> None:
        """Tile results of one batch, in order; finishes every image whose tiles are all in."""
        start = 0
        while start < len(scores):
            grid = grids[len(self.scores)]
            take = min(len(grid) - self._have, len(scores) - start)
            self._scores.append(scores[start : start + take])
            if self.keep_maps:
                self._maps.append(maps[start : start + take])
            self._have += take
            start += take
            if self._have == len(grid):
                self.scores.append(float(np.concatenate(self._scores).max()))
                if self.keep_maps:
                    self.maps.append(stitch(np.concatenate(self._maps), grid))
                self._maps, self._scores, self._have = [], [], 0

    def result(self) -> DetectorScores:
        maps: np.ndarray | list[np.ndarray] | None = None
        if self.keep_maps:
            same = len({m.shape for m in self.maps}) <= 1
            maps = _joined([m[None] for m in self.maps]) if same else self.maps
        return DetectorScores(
            scores=np.asarray(self.scores, np.float64),
            maps=maps,
            latency_ms=self.seconds * 1000.0,
        )


def tiles_of(hw: tuple[int, ...], cfg: PreprocessConfig, what: str | Path) -> TileGrid:
    """The grid of `cfg.size` tiles over an H x W prepared image, `cfg.tiling.overlap_px`
    apart at least; a one-line StationError when the image is smaller than a tile."""
    (h, w), (tw, th) = hw[:2], cfg.size
    if h < th or w < tw:
        raise StationError(
            f"{what} is {w} x {h} px after preprocessing, smaller than the {tw} x {th} tile",
            hint="lower preprocess.size, or switch preprocess.tiling off to resize whole shots",
        )
    try:
        return tile_grid(h, w, (th, tw), cfg.tiling.overlap_px)
    except ValueError as exc:
        raise StationError(f"preprocess.tiling: {exc}", hint="lower overlap_px") from None


def training_tiles(images: Sequence[np.ndarray], cfg: PreprocessConfig, seed: int) -> np.ndarray:
    """Training images cut as the engine cuts shots: every tile, or `train_tiles_per_image`
    drawn at random per image (seeded, reproducible); N x th x tw (x C), in image order."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for i, image in enumerate(images):
        grid = tiles_of(image.shape, cfg, f"training image {i}")
        origins = grid.origins
        for k in pick_tiles(len(grid), cfg.tiling.train_tiles_per_image, rng):
            y, x = origins[k]
            out.append(image[y : y + grid.tile_h, x : x + grid.tile_w])
    return np.stack(out)


def _check_set(
    image: np.ndarray,
    path: str | Path,
    first: np.ndarray,
    first_path: str | Path,
    cfg: PreprocessConfig,
) -> None:
    """One set, one model input: all one size and kind; tiled, one kind and each >= a tile."""
    if not cfg.tiling.enabled:
        check_like(image, path, first, first_path)
        return
    if image.ndim != first.ndim:
        check_like(image, path, first, first_path)  # names both files and their kinds
    tiles_of(image.shape, cfg, f"image {path}")


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
