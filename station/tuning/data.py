"""The images `station tune` works on: good images split into fit and held-out, the synthetic
defects made from the held-out ones, optional real defects, and the digest a resume checks.

Limits (docs/tune.md): fewer than MIN_IMAGES good images is refused; fewer than MIN_CHOOSE
still runs, but the choice is marked as a guess. The held-out share is HELD_OUT_FRACTION of the
good images, at least MIN_HELD_OUT_CHOOSE of them when there are enough, and never more than
half.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from station.errors import StationError
from station.imaging import resize
from station.tuning.faults import KINDS, synthetic_set

MIN_IMAGES = 4  # 2 to fit (one of them the detector's own validation image), 2 held out
MIN_CHOOSE = 20  # below this the ranking is a guess: said on the console and in the report
MIN_HELD_OUT_CHOOSE = 10
HELD_OUT_FRACTION = 0.25
SYNTHETIC_PER_HELD_OUT = 2  # synthetic defects per held-out good image ...
MIN_SYNTHETIC_PER_KIND = 3  # ... but at least this many of each kind
MAX_SYNTHETIC = 240  # memory and time bound (native-size tiled shots are large)
FORMAT = 3  # bump when the digest's contents, the split or how a record is measured change


class TuneError(StationError):
    """`station tune` cannot run as asked (too few images, bad options, no candidates)."""


@dataclass
class Split:
    """Indices of the good files used to fit candidates and held out for scoring them."""

    fit: list[int]
    held: list[int]

    @property
    def too_few_to_choose(self) -> bool:
        return len(self.fit) + len(self.held) < MIN_CHOOSE


def split_good(n: int, seed: int, where: str) -> Split:
    """A seeded split of `n` good images; TuneError (one line) below MIN_IMAGES."""
    if n < MIN_IMAGES:
        raise TuneError(
            f"too few good images to tune: {n} in {where}; tune needs at least {MIN_IMAGES} "
            f"(2 to fit, 2 held out) and {MIN_CHOOSE} to choose",
            hint="capture more good parts (station capture --label good) or give --data a "
            "folder with more good images",
        )
    held = max(2, round(HELD_OUT_FRACTION * n), min(MIN_HELD_OUT_CHOOSE, n // 2))
    held = min(held, n // 2)
    order = np.random.default_rng(seed).permutation(n)
    return Split(
        fit=sorted(int(i) for i in order[held:]), held=sorted(int(i) for i in order[:held])
    )


def too_few_line(split: Split) -> str | None:
    """The one line that says the choice is a guess, or None when there are enough images."""
    if not split.too_few_to_choose:
        return None
    n = len(split.fit) + len(split.held)
    return (
        f"too few images to choose: {n} good images ({len(split.fit)} to fit, "
        f"{len(split.held)} held out); the ranking needs at least {MIN_CHOOSE} good images, so "
        "the chosen configuration is a guess: capture more good parts and tune again"
    )


def n_synthetic(n_held: int, kinds: Sequence[str] = tuple(KINDS)) -> int:
    """How many synthetic defects to make from `n_held` held-out good images."""
    want = max(SYNTHETIC_PER_HELD_OUT * n_held, MIN_SYNTHETIC_PER_KIND * len(kinds))
    return min(want, MAX_SYNTHETIC)


@dataclass
class TuneData:
    """Everything a candidate is fitted on and scored on (preprocessed images)."""

    fit_files: list[Path]
    fit_images: list[np.ndarray]
    good: list[np.ndarray]  # held-out good images
    synthetic: list[np.ndarray]
    synthetic_kinds: list[str]
    real: list[np.ndarray] = field(default_factory=list)  # labelled real defects (--defects)
    train_hash: str = ""

    def scoring_set(self) -> list[np.ndarray]:
        """Held-out good, then synthetic, then real defects: the order of every score list."""
        return [*self.good, *self.synthetic, *self.real]

    def resized(self, size: tuple[int, int] | None) -> TuneData:
        """The same images at another input size (width, height); self for None. The
        synthetic defects are the ones drawn at the recipe's size, resized with their image."""
        if size is None:
            return self

        def each(images: list[np.ndarray]) -> list[np.ndarray]:
            return [resize(img, size) for img in images]

        return replace(
            self,
            fit_images=each(self.fit_images),
            good=each(self.good),
            synthetic=each(self.synthetic),
            real=each(self.real),
        )


def build_data(
    files: Sequence[Path],
    images: Sequence[np.ndarray],
    split: Split,
    scale: float,
    seed: int,
    real: Sequence[np.ndarray] = (),
    train_hash: str = "",
) -> TuneData:
    """Split the loaded good images and draw the synthetic defects from the held-out ones."""
    good = [images[i] for i in split.held]
    syn, kinds, _ = synthetic_set(good, n_synthetic(len(good)), scale, seed)
    return TuneData(
        fit_files=[Path(files[i]) for i in split.fit],
        fit_images=[images[i] for i in split.fit],
        good=good,
        synthetic=syn,
        synthetic_kinds=kinds,
        real=list(real),
        train_hash=train_hash,
    )


def run_digest(recipe_sha: str, data_sha: str, defects_sha: str | None, seed: int) -> str:
    """What a tune.jsonl is valid for: the recipe (with its bases), the good images, the real
    defects, the seed and this module's split and synthetic rules."""
    payload = {
        "format": FORMAT,
        "recipe": recipe_sha,
        "data": data_sha,
        "defects": defects_sha,
        "seed": seed,
        "held_out": [HELD_OUT_FRACTION, MIN_HELD_OUT_CHOOSE],
        "synthetic": [SYNTHETIC_PER_HELD_OUT, MIN_SYNTHETIC_PER_KIND, MAX_SYNTHETIC, list(KINDS)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def describe(data: TuneData) -> dict[str, Any]:
    """Counts for the journal's header and the report."""
    per_kind = {k: data.synthetic_kinds.count(k) for k in dict.fromkeys(data.synthetic_kinds)}
    return {
        "n_fit": len(data.fit_images),
        "n_held_out": len(data.good),
        "n_synthetic": len(data.synthetic),
        "synthetic_per_kind": per_kind,
        "n_real": len(data.real),
    }
