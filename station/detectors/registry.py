"""Detector registry: the one list of detector names; `create_detector` builds one.

`DETECTOR_MODULES` maps each name to the module under station.detectors that defines it; the
module is imported on first use of that name, so importing this module stays cheap (no torch).
A detector class registers itself with `@register` (its `name` must be listed here). Recipes
are checked against these names by `load_recipe` / `parse_recipe` below (the recipe layer does
not import detectors); commands load recipes through station.calibration.recipes, which adds
the calibration policies' names.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from station import recipe as recipes
from station.errors import DetectorError

if TYPE_CHECKING:
    from station.detectors.base import Detector
    from station.recipe import DetectorConfig, Recipe

# Detector name -> module under station.detectors that defines it: the list of detectors.
DETECTOR_MODULES: dict[str, str] = {
    "patchcore": "patchcore",
    "simplenet": "simplenet",
    "efficientad": "efficientad",
    "ast_mfr": "ast_mfr",
    "dfda": "dfda",
    "ensemble": "ensemble",
}
KNOWN_DETECTORS = tuple(DETECTOR_MODULES)

_REGISTRY: dict[str, type[Detector]] = {}

D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator: make `cls` available under `cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to register")
    if name not in DETECTOR_MODULES:
        raise TypeError(f"detector name {name!r} is not listed in registry.DETECTOR_MODULES")
    other = _REGISTRY.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"detector name {name!r} already registered by {other.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available_detectors() -> list[str]:
    """Names of the detectors, sorted."""
    return sorted(DETECTOR_MODULES)


def detector_class(name: str) -> type[Detector]:
    if name not in DETECTOR_MODULES:
        known = ", ".join(sorted(DETECTOR_MODULES))
        raise DetectorError(
            f"unknown detector {name!r}; known detectors: {known}",
            hint="fix the detector name in the recipe or on the command line",
        )
    if name not in _REGISTRY:  # a listed module that fails to import is a bug: it propagates
        importlib.import_module(f"station.detectors.{DETECTOR_MODULES[name]}")
    return _REGISTRY[name]


def load_recipe(
    name_or_path: str, policy_names: Collection[str] | None = None, planning: bool = False
) -> Recipe:
    """`station.recipe.load_recipe` with the detector names checked against this registry
    (and decision.policy against `policy_names`, when given)."""
    return recipes.load_recipe(name_or_path, KNOWN_DETECTORS, planning, policy_names=policy_names)


def parse_recipe(
    text: str,
    source: str = "<string>",
    policy_names: Collection[str] | None = None,
    planning: bool = False,
) -> Recipe:
    """`station.recipe.parse_recipe` with the detector names checked against this registry
    (and decision.policy against `policy_names`, when given)."""
    return recipes.parse_recipe(
        text, source, KNOWN_DETECTORS, planning, policy_names=policy_names
    )


def detector_kwargs(cfg: DetectorConfig, device: str | None = None) -> dict[str, Any]:
    """Constructor arguments of a recipe's detector entry."""
    return {
        "backbone": cfg.backbone,
        "weights": cfg.weights,
        "device": device or cfg.device,
        **cfg.params,
    }


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


_WORDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    type(None): "null",
}


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(h) for h in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint in _WORDS:
        return _WORDS[hint]
    origin = typing.get_origin(hint) or hint
    return "a list" if origin in (list, tuple, collections.abc.Sequence) else str(hint)


def _settings_type(name: str) -> Any:
    """What declares a detector's settings: its `Config` dataclass, else its constructor."""
    cls = detector_class(name)
    return cls.Config if cls.Config is not None else cls.__init__


def settings(name: str) -> dict[str, inspect.Parameter]:
    """A detector's settings: its config's named fields (defaults and annotations)."""
    params = inspect.signature(_settings_type(name)).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


_BOUNDS: dict[str, Callable[[Any], bool]] = {
    ">= 1": lambda v: v >= 1,
    ">= 0": lambda v: v >= 0,
    "> 0": lambda v: v > 0,
}


def bound_problems(detector: str, config: object, bound: str, *fields: str) -> list[str]:
    """One line for each of `fields` (of `config`) whose value breaks `bound` (">= 1", ">= 0"
    or "> 0"), with its value; empty when every one keeps it."""
    keeps = _BOUNDS[bound]
    return [
        f"{detector}: {f} must be {bound}, not {getattr(config, f)!r}"
        for f in fields
        if not keeps(getattr(config, f))
    ]


def raise_problems(problems: list[str], hint: str | None = None) -> None:
    """DetectorError joining `problems` with "; "; nothing when there are none."""
    if problems:
        raise DetectorError("; ".join(problems), hint=hint)


class CheckedConfig:
    """Base of a detector's `Config` dataclass: `problems()` lists every value out of range,
    one line each; `check()` raises them as one DetectorError (training, loading)."""

    def problems(self) -> list[str]:
        return []

    def check(self) -> None:
        raise_problems(self.problems())


def config_problems(name: str, cfg: dict[str, Any]) -> list[str]:
    """What is wrong with `cfg` for detector `name`, judged from its config's annotated fields
    (unknown names, a text where a number belongs, ...) and, when those are right, its
    `Config.problems()` (every value out of range): one line each."""
    known = settings(name)
    hints = typing.get_type_hints(_settings_type(name))
    problems: list[str] = []
    for key, value in cfg.items():
        if key not in known:
            listed = ", ".join(sorted(known))
            problems.append(f"{name}: unknown parameter {key!r} (known: {listed})")
        elif key in hints and not _fits(value, hints[key]):
            want = _describe(hints[key])
            problems.append(f"{name}: parameter {key!r} must be {want}, not {value!r}")
    config = detector_class(name).Config
    if problems or config is None:
        return problems
    try:  # an ensemble's member may name an unknown detector: DetectorError
        if hasattr(config, "problems"):
            problems += config(**cfg).problems()
        elif hasattr(config, "check"):
            config(**cfg).check()
    except DetectorError as exc:
        problems.append(exc.message)
    return problems


def create_detector(name: str, **cfg: Any) -> Detector:
    """A new, untrained detector `name` built from its config (see `Detector.config()`); the
    params are checked against its `Config` (names, types, ranges) first."""
    cls = detector_class(name)
    problems = config_problems(name, cfg)
    if problems:
        raise DetectorError("; ".join(problems), hint="fix the detector's params in the recipe")
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise DetectorError(f"detector {name!r}: bad configuration: {exc}") from None
