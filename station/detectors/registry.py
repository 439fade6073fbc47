"""Detector registry: detector classes register by name; `create_detector` builds one.

Detector modules are listed in `DETECTOR_MODULES` and imported on first use, so importing this
module stays cheap (no torch). A listed module whose file exists but fails to import is a bug
and the ImportError propagates; a listed module that is not in the package yet is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, TypeVar

from station.errors import DetectorError

if TYPE_CHECKING:
    from station.detectors.base import Detector

# Modules under station.detectors that hold registered detectors.
DETECTOR_MODULES = ("patchcore", "simplenet", "ast_mfr", "dfda", "efficientad")

_REGISTRY: dict[str, type[Detector]] = {}
_loaded = False

D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator: make `cls` available under `cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to register")
    other = _REGISTRY.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"detector name {name!r} already registered by {other.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for mod in DETECTOR_MODULES:
        full = f"station.detectors.{mod}"
        if importlib.util.find_spec(full) is None:
            continue  # not written yet; everything that exists must import cleanly
        importlib.import_module(full)
    _loaded = True


def available_detectors() -> list[str]:
    """Names of the registered detectors, sorted."""
    _load_modules()
    return sorted(_REGISTRY)


def detector_class(name: str) -> type[Detector]:
    _load_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise DetectorError(
            f"unknown detector {name!r}; known detectors: {known}",
            hint="fix the detector name in the recipe or on the command line",
        ) from None


def create_detector(name: str, **cfg: Any) -> Detector:
    """A new, untrained detector `name` built from its config (see `Detector.config()`)."""
    cls = detector_class(name)
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise DetectorError(f"detector {name!r}: bad configuration: {exc}") from None
