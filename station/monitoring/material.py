"""The material check: is a shot of the material the models were trained on?

Features: a shot is prepared as the detectors prepare it (`station.imaging.preprocess`: resized
to `preprocess.size`, or with tiling kept native and cut into the engine's tiles, at most
`MAX_TILES` of them spread evenly over the shot); it goes through the recipe's first detector's
backbone up to its first default stage (stride 8: `blocks.2` of EfficientNet-Lite, `layer2`
of a ResNet), and that feature map is averaged per channel over the whole shot (all its tiles):
one vector per shot.

Model: the training shots' vectors, each channel standardised by the training mean and standard
deviation; a shot's distance is the Euclidean distance to its nearest training shot there.
Threshold: the (1 - false_alarm) quantile of held-out distances. The good training parts are
split in `FOLDS` seeded folds (all shots of a part in one fold; shots, when there are fewer
parts than folds); each shot's distance is measured to the shots of the other folds (4/5 of
the set), so every training shot is held out once; the model kept holds all of them.
Why this stage, pooling and distance: docs/material_check.md (measured on the AITEX fabrics
and the magnetic tiles against Mahalanobis with shrinkage and deeper stages).

The model file `<models_dir>/material/material-<stamp>-<hex>.npz` records the recipe, the
preprocessing, the backbone and its weights; a file that no longer fits the recipe is refused.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from station.errors import MaterialError, StationError
from station.files import atomic_write, writing

if TYPE_CHECKING:
    from station.detectors.backbones import Backbone
    from station.recipe import PreprocessConfig, Recipe

FORMAT = 1
FOLDS = 5
MAX_TILES = 8  # tiles of a tiled shot that are pooled (evenly spread): bounds the check's cost
BATCH = 16
FOLDER = "material"


class MaterialFeatures:
    """Pooled backbone features of raw or prepared shots (see the module docstring)."""

    def __init__(self, backbone: Backbone, preprocess_cfg: PreprocessConfig, device: Any) -> None:
        self.backbone = backbone.to(device)
        self.cfg = preprocess_cfg
        self.device = device

    def prepare(self, image: np.ndarray) -> np.ndarray:
        from station.imaging import preprocess

        return preprocess(image, self.cfg)

    def pieces(self, prepared: np.ndarray) -> list[np.ndarray]:
        """The prepared shot itself, or its tiles (at most MAX_TILES, evenly spread)."""
        if not self.cfg.tiling.enabled:
            return [prepared]
        from station.detectors.engine import tiles_of

        grid = tiles_of(prepared.shape, self.cfg, "the shot")
        origins = grid.origins
        pick = np.unique(np.linspace(0, len(origins) - 1, min(MAX_TILES, len(origins))).round())
        return [
            prepared[y : y + grid.tile_h, x : x + grid.tile_w]
            for y, x in (origins[int(k)] for k in pick)
        ]

    def __call__(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """N x C pooled features of N prepared shots."""
        import torch

        from station.detectors.common import to_batch

        sums = np.zeros((len(prepared), self.backbone.channels[0]), np.float64)
        counts = np.zeros(len(prepared), np.float64)
        pieces = [(i, p) for i, shot in enumerate(prepared) for p in self.pieces(shot)]
        for s in range(0, len(pieces), BATCH):  # pieces of equal size share a batch
            chunk = pieces[s : s + BATCH]
            for shape in dict.fromkeys(p.shape for _, p in chunk):
                owners = [i for i, p in chunk if p.shape == shape]
                x = to_batch([p for _, p in chunk if p.shape == shape], what="material check")
                with torch.no_grad():
                    fmap = self.backbone(x.to(self.device))[0].double()  # n x C x h x w
                np.add.at(sums, owners, fmap.sum(dim=(2, 3)).cpu().numpy())
                np.add.at(counts, owners, fmap.shape[2] * fmap.shape[3])
        return sums / counts[:, None]  # the mean over every position of every piece


@dataclass
class MaterialModel:
    """Standardised training features and the threshold on nearest-neighbour distance."""

    bank: np.ndarray  # N x C, standardised
    mean: np.ndarray  # C
    scale: np.ndarray  # C
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        feats: np.ndarray,
        false_alarm: float,
        groups: Sequence[str] | None = None,
        seed: int = 0,
    ) -> MaterialModel:
        """Fit on N x C good-shot features; the threshold from `FOLDS`-fold held-out distances.

        `groups` (one per shot: its part) keeps a part's shots in one fold, so a held-out shot
        is measured against other parts only, as a new part is at inspection; with fewer than
        `FOLDS` parts the folds split shots (and the threshold is optimistic: said in meta)."""
        feats = np.asarray(feats, np.float64)
        n = len(feats)
        if n < FOLDS:
            raise StationError(
                f"the material check needs at least {FOLDS} good training images, got {n}",
                hint="capture more good parts, or set monitoring.material_check.enabled: false",
            )
        keys = list(groups) if groups is not None else [str(i) for i in range(n)]
        names, index = np.unique(keys, return_inverse=True)
        by_part = groups is not None and len(names) >= FOLDS
        if not by_part:
            index = np.arange(n)
        order = np.random.default_rng(seed).permutation(int(index.max()) + 1)
        held = np.zeros(n)
        for fold in np.array_split(order, FOLDS):
            out = np.isin(index, fold)
            held[out] = cls._standardised(feats[~out]).distance(feats[out])
        model = cls._standardised(feats)
        model.threshold = float(np.quantile(held, 1.0 - false_alarm))
        model.meta = {
            "false_alarm": false_alarm,
            "folds": FOLDS,
            "folds_by": "part" if by_part else "shot",
            "seed": seed,
            "n_train": n,
            "n_parts": len(names),
            "held_out": {
                "median": float(np.median(held)),
                "max": float(held.max()),
                "quantile": 1.0 - false_alarm,
            },
        }
        return model

    @classmethod
    def _standardised(cls, feats: np.ndarray) -> MaterialModel:
        mean = feats.mean(axis=0)
        scale = feats.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)  # a constant channel carries no spread
        return cls((feats - mean) / scale, mean, scale, float("inf"))

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """Distance of each of N x C features to its nearest training shot (standardised)."""
        z = (np.atleast_2d(np.asarray(feats, np.float64)) - self.mean) / self.scale
        d2 = (z**2).sum(1)[:, None] + (self.bank**2).sum(1)[None, :] - 2.0 * z @ self.bank.T
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


# -- identity, files ----------------------------------------------------------------------------


def identity(recipe: Recipe, backbone: Backbone) -> dict[str, Any]:
    """What a material model depends on: recipe, preprocessing, backbone and weights."""
    from station.detectors.artifact import preprocess_meta

    ident = backbone.identity
    return {
        "recipe": recipe.name,
        "preprocess": {**preprocess_meta(recipe), "size": list(recipe.preprocess.size)},
        "max_tiles": MAX_TILES if recipe.preprocess.tiling.enabled else None,
        "backbone": ident.get("backbone"),
        "weights_sha256": ident.get("weights_sha256"),
        "layers": list(backbone.layers),
    }


def save_model(model: MaterialModel, path: Path) -> str:
    """Write the model atomically (npz: arrays plus the meta as JSON); returns its sha256."""
    buf = io.BytesIO()
    np.savez(
        buf,
        bank=model.bank,
        mean=model.mean,
        scale=model.scale,
        threshold=np.float64(model.threshold),
        meta=np.array(json.dumps({"format": FORMAT, **model.meta})),
    )
    with writing(f"material model {path}"):
        return atomic_write(path, buf.getvalue())


def read_model(path: Path, recipe_name: str = "<recipe>") -> MaterialModel:
    fix = f"retrain: station train --recipe {recipe_name}"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            model = MaterialModel(z["bank"], z["mean"], z["scale"], float(z["threshold"]), meta)
    except (OSError, ValueError, KeyError) as exc:
        # numpy's text for a pickle suggests loading it unsafely: never that
        why = "not a material model (damaged or another file)" if "pickle" in str(exc) else (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'empty'}"
        )
        raise StationError(f"material model {path} cannot be read ({why})", hint=fix) from None
    if meta.get("format") != FORMAT:
        raise StationError(
            f"material model {path} has format {meta.get('format')!r}, this station reads {FORMAT}",
            hint=fix,
        )
    return model


def latest_model(recipe: Recipe) -> Path:
    """The newest material model of the recipe; a one-line StationError with the fix if none."""
    folder = recipe.models_dir / FOLDER
    files = sorted(folder.glob(f"{FOLDER}-*.npz")) if folder.is_dir() else []
    if not files:
        raise StationError(
            f"no material model for recipe {recipe.name} in {folder} "
            "(monitoring.material_check is enabled)",
            hint=f"run station train --recipe {recipe.name}, or set "
            "monitoring.material_check.enabled: false in the recipe",
        )
    return files[-1]


def recipe_backbone(recipe: Recipe, device: str | None = None) -> tuple[Backbone, Any]:
    """The recipe's first detector's backbone, cut at its first default stage, and the device."""
    from station.detectors.backbones import BACKBONES, create_backbone, resolve_device

    det = recipe.detectors[0]
    spec = BACKBONES.get(det.backbone)
    layers = [spec.default_layers[0]] if spec is not None else None
    backbone = create_backbone(det.backbone, det.weights, layers)
    return backbone, resolve_device(device or det.device)


# -- training and the check ---------------------------------------------------------------------


@dataclass
class FittedMaterial:
    model: MaterialModel
    path: Path
    sha256: str


def part_of(path: str | Path) -> str:
    """The part a training file belongs to: `p000012` of a captured `p000012_<pose>.png` and of
    a reviewed shot promotion copied, `review-p000012_<pose>.png` (one sequence per recipe and
    station; where two sheets share a number they share a fold, never one sheet split in two),
    else the file itself."""
    stem = Path(path).stem
    head = stem.split("_", 1)[0].removeprefix("review-")
    return head if len(head) > 1 and head[0] == "p" and head[1:].isdigit() else stem


def fit_material(
    recipe: Recipe,
    images: Sequence[np.ndarray],
    train_hash: str = "",
    device: str | None = None,
    groups: Sequence[str] | None = None,
) -> FittedMaterial:
    """Fit the material model on prepared good images (as `station train` reads them; `groups`:
    each image's part, see `part_of`), save it under the recipe's models dir."""
    from station.detectors.artifact import new_version

    backbone, dev = recipe_backbone(recipe, device)
    feats = MaterialFeatures(backbone, recipe.preprocess, dev)(images)
    model = MaterialModel.fit(feats, recipe.monitoring.material_check.false_alarm, groups)
    version = new_version(FOLDER)
    model.meta.update(
        version=version,
        **identity(recipe, backbone),
        train_data_sha256=train_hash,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = recipe.models_dir / FOLDER / f"{version}.npz"
    return FittedMaterial(model, path, save_model(model, path))


class MaterialCheck:
    """One run's material check: `check(image)` measures a raw shot and raises MaterialError
    beyond the threshold (the cycle hook: station.inspection.material_hook)."""

    def __init__(self, model: MaterialModel, features: MaterialFeatures, path: Path) -> None:
        self.model = model
        self.features = features
        self.path = path

    @classmethod
    def load(cls, recipe: Recipe, device: str | None = None) -> MaterialCheck:
        """The recipe's newest material model, refused when it does not fit the recipe."""
        path = latest_model(recipe)
        model = read_model(path, recipe.name)
        backbone, dev = recipe_backbone(recipe, device)
        now = identity(recipe, backbone)
        changed = [
            f"{k} {model.meta.get(k)!r} -> {v!r}" for k, v in now.items() if model.meta.get(k) != v
        ]
        if changed:
            raise StationError(
                f"material model {path} does not fit recipe {recipe.name} now: "
                + ", ".join(changed),
                hint=f"retrain: station train --recipe {recipe.name}",
            )
        return cls(model, MaterialFeatures(backbone, recipe.preprocess, dev), path)

    def measure(self, image: np.ndarray) -> float:
        feats = self.features([self.features.prepare(image)])
        return float(self.model.distance(feats)[0])

    def check(self, image: np.ndarray, what: str = "shot") -> dict[str, Any]:
        d, t = self.measure(image), self.model.threshold
        if not d <= t:  # NaN included
            raise MaterialError(
                f"material differs from training: {what} at distance {d:.3g}, threshold "
                f"{t:.3g} ({d / t:.2f}x)",
                hint="check that the sheet is the recipe's product and lot, else retrain",
            )
        return {"distance": round(d, 4), "threshold": round(t, 4)}
