"""Reading a recipe: find it by name or path, read its YAML safely, follow `extends:` and the
poses file, validate, and say every problem by its field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from station.errors import RecipeError
from station.paths import resolve, station_home
from station.recipe.base import BOUND_ERRORS, field_ranges
from station.recipe.devices import device_of, plain_loc
from station.recipe.model import Recipe
from station.recipe.yaml_io import read_mapping, read_text


def _format_error(err: dict[str, Any]) -> str:
    loc = plain_loc(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    dev = device_of(str(loc[0])) if len(loc) == 1 else None
    if kind == "union_tag_invalid" and dev is not None:
        names = [repr(n) for n in dev.driver_names()]
        allowed = f"{', '.join(names[:-1])} or {names[-1]}"
        tag = err["input"].get("driver") if isinstance(err["input"], dict) else None
        got = "" if isinstance(tag, dict | list) else f" (got {tag!r})"
        return f"{where}.driver: Input should be {allowed}{got}"
    if kind in BOUND_ERRORS:
        ranges = field_ranges(Recipe, [], "", {})
        for key in (where, re.sub(r"\.\d+(?=\.|$)", ".*", where)):
            if key in ranges:
                return f"{where}: must be {ranges[key]} (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (typo?)"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and re.match(r"[a-z_]+\.[a-z_.]+: ", msg):
        return msg  # a whole-recipe check that names its field
    got = err.get("input")
    if kind not in ("missing",) and not isinstance(got, dict | list) and got is not None:
        return f"{where}: {msg} (got {got!r})"
    return f"{where}: {msg}"


def find_recipe(name_or_path: str) -> Path:
    """A recipe path from a name (`recipes/<name>.yaml` under the station home) or a path (a
    relative one from the current folder when it is there, else from the station home).

    A bare word without .yaml/.yml is always a name, whatever the current folder holds (a
    data folder named after its recipe, say)."""
    p = Path(name_or_path).expanduser()
    not_a_path = "/" not in name_or_path and name_or_path not in (".", "..", "~")
    if p.suffix not in (".yaml", ".yml") and not_a_path:
        path = station_home() / "recipes" / f"{name_or_path}.yaml"
    elif p.exists():
        path = p.resolve()
    else:
        path = resolve(p)
    if path.is_dir():
        raise RecipeError(str(path), ["is a folder, not a recipe file; give a recipe .yaml file"])
    if not path.is_file():
        raise RecipeError(
            str(path),
            [f"file not found; give a recipe name from {station_home() / 'recipes'} or a path"],
        )
    return path


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _declares_poses_file(data: dict[str, Any]) -> bool:
    robot = data.get("robot")
    return isinstance(robot, dict) and "poses_file" in robot


def _resolve_extends(
    data: dict[str, Any], source: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], list[str], str]:
    """The recipe's fields with its `extends:` chain applied, the texts of the bases, and the
    recipe of the chain that declares robot.poses_file (this one when none does)."""
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, [], source
    if not isinstance(base_name, str) or not base_name:
        raise RecipeError(source, ["extends: expected the name or path of another recipe"])
    if "name" not in data:
        raise RecipeError(
            source, ["name: required in a recipe that extends another (their data would mix)"]
        )
    base_path = find_recipe(base_name)
    key = str(base_path.resolve())
    if key in seen:
        raise RecipeError(source, [f"extends: {base_name!r} extends this recipe again (a loop)"])
    base_text = read_text(base_path)
    base, texts, poses_source = _resolve_extends(
        read_mapping(base_text, str(base_path)), str(base_path), (*seen, key)
    )
    if _declares_poses_file(data):
        poses_source = source
    return _overlay(base, data), [*texts, base_text], poses_source


def poses_path(poses_file: str, source: str) -> Path:
    """Where `robot.poses_file` points: relative to the recipe's folder (or, when the recipe
    was not read from a file, the station home, else its `recipes/` folder where it is)."""
    p = Path(poses_file).expanduser()
    if p.is_absolute():
        return p
    src = Path(source)
    if src.is_file():
        return src.parent / p
    in_recipes = resolve(Path("recipes") / p)
    return in_recipes if not resolve(p).is_file() and in_recipes.is_file() else resolve(p)


def _read_poses_file(data: dict[str, Any], source: str, planning: bool = False) -> str | None:
    """Fill `robot.poses` from `robot.poses_file`; the file's text (for the digest) or None.
    `planning` (station plan-poses, which writes the file): a missing file leaves the home
    pose as the only pose."""
    robot = data.get("robot")
    if not isinstance(robot, dict) or robot.get("poses_file") is None:
        return None
    name = robot["poses_file"]
    if not isinstance(name, str) or not name:
        raise RecipeError(source, ["robot.poses_file: expected a file name, e.g. poses.yaml"])
    if "poses" in robot:
        raise RecipeError(source, [
            "robot.poses: give the poses inline or in robot.poses_file, not both"])
    path = poses_path(name, source)
    if planning and not path.is_file():
        robot["poses"] = [robot.get("home")]
        return None
    if not path.is_file():
        raise RecipeError(source, [
            f"robot.poses_file: {path} not found; write it with station plan-poses"])
    text = read_text(path)
    loaded = read_mapping(text, str(path))
    poses = loaded.get("poses")
    if not isinstance(poses, list):
        raise RecipeError(str(path), ["poses: expected a list of poses (station plan-poses)"])
    robot["poses"] = poses
    return text


def parse_recipe(
    text: str,
    source: str = "<string>",
    detector_names: Collection[str] | None = None,
    planning: bool = False,
    *,
    policy_names: Collection[str] | None = None,
) -> Recipe:
    """A validated recipe from YAML text. `extends: <recipe>` starts from another recipe's
    fields: nested sections merge key by key, lists (poses, detectors) are replaced whole.
    Detector names are checked against `detector_names`, decision.policy against
    `policy_names`, each when given."""
    seen = (str(Path(source).resolve()),) if Path(source).is_file() else ()
    data, base_texts, poses_source = _resolve_extends(read_mapping(text, source), source, seen)
    poses_text = _read_poses_file(data, poses_source, planning)
    if poses_text is not None:
        base_texts.append(poses_text)
    try:
        names = {"detector_names": detector_names, "policy_names": policy_names}
        context = {k: tuple(v) for k, v in names.items() if v is not None} or None
        recipe = Recipe.model_validate(data, context=context)
    except ValidationError as exc:
        raise RecipeError(source, [_format_error(e) for e in exc.errors()]) from None
    # The effective recipe changes when a base does: the digest covers the whole chain.
    digest = hashlib.sha256("\0".join([*base_texts, text]).encode()).hexdigest()
    return recipe.model_copy(
        update={"source": source, "sha256": digest, "poses_source": poses_source}
    )


def load_recipe(
    name_or_path: str,
    detector_names: Collection[str] | None = None,
    planning: bool = False,
    *,
    policy_names: Collection[str] | None = None,
) -> Recipe:
    """`planning`: a missing robot.poses_file is no error (see `_read_poses_file`)."""
    path = find_recipe(name_or_path)
    text = read_text(path)
    return parse_recipe(text, str(path), detector_names, planning, policy_names=policy_names)
