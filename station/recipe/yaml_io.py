"""Reading recipe YAML safely: size limits, duplicate keys and alias bombs.

`read_text(path)` refuses a file over 1 MiB before reading it; `read_mapping(text, source)`
parses with a safe loader that refuses a key given twice in one mapping (naming both lines), a
document of more than 100 000 values once its aliases are expanded, and nesting deeper than 32.
Every refusal is a `RecipeError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from station.errors import RecipeError

# Input limits. A recipe is a few kB and a few hundred YAML values.
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # after expanding aliases (a "billion laughs" file stops here)
MAX_YAML_DEPTH = 32  # a recipe nests 6 levels; pydantic and the checks recurse


class _TooLarge(yaml.YAMLError):
    pass


def _tree_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of the document with every alias expanded, counted once per node so that
    a bomb is measured without being built. A self-referencing alias counts as too large."""
    too_big = (MAX_YAML_VALUES + 1, MAX_YAML_DEPTH + 1)
    sizes: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        if isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            kids = node.value if isinstance(node, yaml.SequenceNode) else []
        if closing:
            open_.discard(id(node))
            values = 1 + sum(sizes[id(k)][0] for k in kids)
            depth = 1 + max((sizes[id(k)][1] for k in kids), default=0)
            sizes[id(node)] = (min(values, too_big[0]), depth)
        elif id(node) in open_:
            return too_big
        elif id(node) not in sizes:
            if len(sizes) + len(open_) >= MAX_YAML_VALUES:  # too many distinct nodes already
                return too_big
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids)
    return sizes[id(root)]


class _RecipeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that refuses a key given twice in one mapping, and alias bombs."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        values, depth = _tree_size(node)
        if values > MAX_YAML_VALUES:
            raise _TooLarge(
                f"more than {MAX_YAML_VALUES:,} values, counting each alias (*name) expanded"
            )
        if depth > MAX_YAML_DEPTH:
            raise _TooLarge(f"nested more than {MAX_YAML_DEPTH} levels deep")
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (lines {first[key]} and {line}); keep one",
                        key_node.start_mark,
                    )
                first[key] = line
            except TypeError:  # unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep=deep)


def check_size(source: str, size: int) -> None:
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            source,
            [f"file is {size:,} bytes; a recipe may be at most {MAX_RECIPE_BYTES:,} bytes (1 MiB)"],
        )


def read_mapping(text: str, source: str) -> dict[str, Any]:
    check_size(source, len(text.encode("utf-8", "replace")))
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a safe loader)
    except _TooLarge as exc:
        raise RecipeError(source, [f"(top level): {exc}; far more than a recipe needs"]) from None
    except RecursionError:  # the pure-Python parser, without libyaml
        raise RecipeError(source, ["(top level): nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"{where}not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["(top level): expected a mapping of recipe fields"])
    return data


def read_text(path: Path) -> str:
    try:
        check_size(str(path), path.stat().st_size)  # before reading: a huge file is refused
        with path.open("rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since
        check_size(str(path), len(data))
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not a UTF-8 text file (a YAML recipe is text)"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
