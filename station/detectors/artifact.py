"""Trained-model files: save, load with checks, and find the latest one of a recipe.

An artifact is one `torch.save` file holding a dict
    format_version, detector (name), detector_version, config, state_dict, meta
written atomically to `<recipe.models_dir>/<detector>/<version>.pt`, where the version string
is `<detector>-<UTC yyyymmddThhmmssmmm>-<8 hex>` (sorts by time). `meta` records the recipe,
backbone and weights identity, training-data hash, image size, good-score statistics, etc.
The payload's layout and its checks (format, detector version, settings) belong to
`Detector.state()` / `Detector.load_state()` (station.detectors.base); this module adds the file,
the meta and the recipe. Loading refuses a file of another format, another detector version,
another recipe, another image size or preprocessing, or detector settings the recipe no longer
has (backbone, weights, params; not the device), with a one-line DetectorError naming both sides.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.detectors.registry import create_detector, detector_class, detector_kwargs, settings
from station.detectors.types import FORMAT_VERSION as FORMAT_VERSION
from station.detectors.types import check_payload, load_failure, plain
from station.errors import DetectorError, StationError
from station.files import atomic_write, file_sha256, writing

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import Recipe

SUFFIX = ".pt"


@dataclass
class LoadedModel:
    detector: Detector
    meta: dict[str, Any]
    version: str
    path: Path
    sha256: str


def new_version(detector_name: str, now: datetime | None = None) -> str:
    """A fresh version string, e.g. `patchcore-20261124T210512345-1a2b3c4d` (UTC, to the
    millisecond, so that two models trained in the same second still sort by time)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{detector_name}-{stamp}-{secrets.token_hex(4)}"


def artifact_path(recipe: Recipe, detector_name: str, version: str) -> Path:
    return recipe.models_dir / detector_name / f"{version}{SUFFIX}"


def save_artifact(detector: Detector, path: str | Path, meta: dict[str, Any]) -> str:
    """Write the detector's config, state and `meta` to `path` atomically; returns its sha256."""
    import torch

    path = Path(path)
    payload = {**detector.state(), "meta": dict(meta)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    with writing(f"model file {path}"):
        sha = atomic_write(path, buf.getvalue())
    return sha


def read_artifact(path: str | Path) -> dict[str, Any]:
    """The raw payload of an artifact (tensors on the CPU), format-checked."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"model file {path} does not exist", hint="run station train")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not a torch file
        raise DetectorError(
            f"model file {path} cannot be read ({load_failure(exc)})",
            hint="retrain with station train",
        ) from None
    check_payload(payload, what=f"model file {path}")
    return payload


def load_artifact(
    path: str | Path, recipe: Recipe | None = None, device: str | None = None
) -> LoadedModel:
    """Rebuild a trained detector from `path`.

    With `recipe`: the model must come from that recipe and match its image size; the
    detector runs on the recipe's device for it unless `device` is given.
    """
    path = Path(path)
    payload = read_artifact(path)
    name = payload["detector"]
    meta = dict(payload.get("meta") or {})
    try:
        cls = detector_class(name)
    except DetectorError:
        raise DetectorError(
            f"model file {path} holds detector {name!r}, which this station does not have",
            hint="retrain with station train, or use the station version that wrote it",
        ) from None
    check_payload(payload, name, cls.version, what=f"model file {path}")
    config = dict(payload["config"])
    if recipe is not None:
        trained_for = meta.get("recipe")
        if trained_for != recipe.name:
            raise DetectorError(
                f"model file {path} was trained for recipe {trained_for!r}, not for recipe "
                f"{recipe.name!r}",
                hint=f"train one for this recipe: station train --recipe {recipe.name}",
            )
        size = meta.get("image_size")
        want = list(recipe.preprocess.size)
        if size is not None and list(size) != want:
            raise DetectorError(
                f"model file {path} was trained on {size[0]} x {size[1]} px images, recipe "
                f"{recipe.name} feeds {want[0]} x {want[1]} (preprocess.size)",
                hint=f"retrain: station train --recipe {recipe.name}",
            )
        _check_preprocess(path, meta, recipe)
        with contextlib.suppress(KeyError):
            det_cfg = recipe.detector(name)
            want = _check_settings(path, config, det_cfg, recipe.name, cls.runtime_settings)
            # the recipe says where and how it runs: device, PatchCore's knn search
            config.update({k: want[k] for k in cls.runtime_settings if k in want})
    if device is not None:
        config["device"] = device
    detector = create_detector(name, **config)
    try:
        detector.load_state(payload)
    except DetectorError as exc:  # name the file: the state belongs to it
        raise DetectorError(
            f"model file {path}: {exc.message}", hint=exc.hint or "retrain with station train"
        ) from None
    version = str(meta.get("version") or path.stem)
    return LoadedModel(detector, meta, version, path, file_sha256(path))


def _check_settings(
    path: Path,
    config: dict[str, Any],
    det_cfg: Any,
    recipe_name: str,
    runtime: frozenset[str] = frozenset({"device"}),
) -> dict[str, Any]:
    """The recipe's detector settings (its values, else the defaults), which must be the
    model's except the `runtime` ones (Detector.runtime_settings); returned."""
    want = {k: p.default for k, p in settings(det_cfg.name).items() if p.default is not p.empty}
    want.update(detector_kwargs(det_cfg))
    changed = [
        f"{k} {config[k]!r} -> {v!r}"
        for k, v in want.items()
        # None / "auto" are resolved when the model is built; runtime settings may differ
        if k not in runtime
        and k in config
        and v is not None
        and v != "auto"
        and plain(v) != plain(config[k])
    ]
    if changed:
        raise DetectorError(
            f"model file {path} was trained with other {det_cfg.name} settings than recipe "
            f"{recipe_name} has now: {', '.join(changed)}",
            hint=f"retrain: station train --recipe {recipe_name}",
        )
    return want


def _check_preprocess(path: Path, meta: dict[str, Any], recipe: Recipe) -> None:
    trained = meta.get("preprocess")  # absent in files written before it was recorded
    if trained is None:
        return
    now = preprocess_meta(recipe)
    # both ways: "tiling" is stored only when on (absent = off), so a tiled model under a
    # recipe that no longer tiles shows as a key the recipe lacks
    was = {"tiling": False, **trained}
    now = {"tiling": False, **now}
    changed = [f"{k} {was.get(k)!r} -> {v!r}" for k, v in now.items() if was.get(k) != v]
    if changed:
        raise DetectorError(
            f"model file {path} was trained on other preprocessing than recipe {recipe.name} "
            f"has now: {', '.join(changed)}",
            hint=f"retrain: station train --recipe {recipe.name}",
        )


def preprocess_meta(recipe: Recipe) -> dict[str, Any]:
    """The preprocessing a model is trained on, as stored in its meta (size is kept apart)."""
    pre = recipe.preprocess
    meta: dict[str, Any] = {
        "crop": None if pre.crop is None else list(pre.crop),
        "grey_to_rgb": pre.grey_to_rgb,
    }
    if pre.tiling.enabled:  # only then: models trained before tiling existed stay loadable
        meta["tiling"] = True
    return meta


LIVE_FILE = "LIVE"  # <models_dir>/<detector>/LIVE: "<version>\n<UTC stamp of the promotion>"
CANDIDATES = "candidates"  # <models_dir>/<detector>/candidates/: trained, not live


def _stamp(version: str) -> str:
    """The UTC time part of a version string ('' when it has none)."""
    parts = version.rsplit("-", 2)
    return parts[1] if len(parts) == 3 else ""


def candidate_path(recipe: Recipe, detector_name: str, version: str) -> Path:
    """Where a candidate model (station retrain) lives: beside, not among, the live ones."""
    return recipe.models_dir / detector_name / CANDIDATES / f"{version}{SUFFIX}"


def find_artifact(recipe: Recipe, detector_name: str, version: str) -> Path:
    """The file of one model version, live folder or candidates; StationError when absent."""
    for path in (
        artifact_path(recipe, detector_name, version),
        candidate_path(recipe, detector_name, version),
    ):
        if path.is_file():
            return path
    raise StationError(
        f"no {detector_name} model {version} for recipe {recipe.name} in "
        f"{recipe.models_dir / detector_name}",
        hint="station models list shows the versions there",
    )


def read_live(recipe: Recipe, detector_name: str) -> tuple[str, str] | None:
    """(version, promotion stamp) from the LIVE pointer; None when there is none."""
    path = recipe.models_dir / detector_name / LIVE_FILE
    try:
        lines = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StationError(f"cannot read {path}: {exc}", hint="check the file") from None
    if len(lines) != 2:
        raise StationError(
            f"{path} is damaged (want a version and a time)",
            hint=f"promote a model again: station models promote --recipe {recipe.name}",
        )
    return lines[0], lines[1]


def write_live(
    recipe: Recipe, detector_name: str, version: str, now: datetime | None = None
) -> Path:
    """Point LIVE at `version` (its file must be in the live folder), atomically."""
    if not artifact_path(recipe, detector_name, version).is_file():
        raise StationError(
            f"no {detector_name} model {version} in {recipe.models_dir / detector_name}",
            hint="promote a candidate with station models promote",
        )
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")[:-3]
    path = recipe.models_dir / detector_name / LIVE_FILE
    with writing(f"live pointer {path}"):
        atomic_write(path, f"{version}\n{stamp}\n".encode())
    return path


def latest_artifact(recipe: Recipe, detector_name: str) -> Path:
    """The live model file of `detector_name` for `recipe`; StationError when none.

    Live: the version the LIVE pointer names (a promotion), unless `station train` wrote a
    model after that promotion: the newest model file then, as without a pointer. Candidates
    (the candidates/ folder) are never picked.
    """
    folder = recipe.models_dir / detector_name
    files = sorted(folder.glob(f"{detector_name}-*{SUFFIX}")) if folder.is_dir() else []
    if not files:
        raise StationError(
            f"no trained {detector_name} model for recipe {recipe.name} in {folder}",
            hint=f"run station train --recipe {recipe.name}",
        )
    live = read_live(recipe, detector_name)
    if live is None or _stamp(files[-1].stem) > live[1]:
        return files[-1]
    path = artifact_path(recipe, detector_name, live[0])
    if not path.is_file():
        raise StationError(
            f"the live {detector_name} model {live[0]} of recipe {recipe.name} is missing ({path})",
            hint="promote another version: station models promote",
        )
    return path
