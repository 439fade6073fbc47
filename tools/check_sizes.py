"""List station/ files over 600 lines and functions over 80 lines; exit 1 when any exist.

A function's size is its def's lines, decorators and docstring included (nested defs count
inside their parent too).
Usage: python tools/check_sizes.py [ROOT] [--max-file N] [--max-func N]  (CI: .ci/run)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def function_sizes(source: str, filename: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, line count) of every def in one module."""
    tree = ast.parse(source, filename=filename)
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((name, start, child.end_lineno - start + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def offenders(root: Path, max_file: int, max_func: int) -> tuple[list[str], list[tuple[int, str]]]:
    """Over-long files, and (size, line) for over-long functions largest first, as lines to
    print."""
    files: list[str] = []
    functions: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > max_file:
            files.append(f"{path}: {lines} lines (max {max_file})")
        try:
            sizes = function_sizes(source, str(path))
        except SyntaxError as exc:
            files.append(f"{path}:{exc.lineno}: cannot be parsed ({exc.msg})")
            continue
        for name, start, size in sizes:
            if size > max_func:
                functions.append((size, f"{path}:{start}: {name} is {size} lines (max {max_func})"))
    functions.sort(key=lambda item: -item[0])
    return files, functions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="station", type=Path)
    parser.add_argument("--max-file", type=int, default=MAX_FILE_LINES)
    parser.add_argument("--max-func", type=int, default=MAX_FUNCTION_LINES)
    args = parser.parse_args(argv)
    files, functions = offenders(args.root, args.max_file, args.max_func)
    for line in files:
        print(line)
    for _, line in functions:
        print(line)
    if files or functions:
        print(f"{len(files)} files and {len(functions)} functions over the limits")
        return 1
    print(f"no file over {args.max_file} lines, no function over {args.max_func} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
