"""Detector registry: detector classes register by name; `create_detector` builds one.

Detector modules are listed in `DETECTOR_MODULES` and imported on first use, so importing this
module stays cheap (no torch). A listed module whose file exists but fails to import is a bug
and the ImportError propagates; a listed module that is not in the package yet is skipped.
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import inspect
import types
import typing
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


def _fits(value: Any, hint: Any) -> bool:
    """Whether a recipe value fits a constructor annotation (plain YAML types only; any hint
    this does not know is taken as fitting)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and float(value).is_integer()
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
          type(None): "null"}


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(h) for h in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint in _WORDS:
        return _WORDS[hint]
    origin = typing.get_origin(hint) or hint
    return "a list" if origin in (list, tuple, collections.abc.Sequence) else str(hint)


def settings(name: str) -> dict[str, inspect.Parameter]:
    """A detector's settings: its constructor's named parameters (defaults and annotations)."""
    params = inspect.signature(detector_class(name).__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def config_problems(name: str, cfg: dict[str, Any]) -> list[str]:
    """What is wrong with `cfg` for detector `name`, judged from its constructor's annotated
    parameters (unknown names, a text where a number belongs, ...): one line each."""
    known = settings(name)
    hints = typing.get_type_hints(detector_class(name).__init__)
    problems = []
    for key, value in cfg.items():
        if key not in known:
            listed = ", ".join(sorted(known))
            problems.append(f"{name}: unknown parameter {key!r} (known: {listed})")
        elif key in hints and not _fits(value, hints[key]):
            want = _describe(hints[key])
            problems.append(f"{name}: parameter {key!r} must be {want}, not {value!r}")
    return problems


def create_detector(name: str, **cfg: Any) -> Detector:
    """A new, untrained detector `name` built from its config (see `Detector.config()`)."""
    cls = detector_class(name)
    problems = config_problems(name, cfg)
    if problems:
        raise DetectorError(
            "; ".join(problems), hint="fix the detector's params in the recipe"
        )
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise DetectorError(f"detector {name!r}: bad configuration: {exc}") from None
