"""tools/check_sizes.py: the file and function size limits that CI enforces on station/."""

from __future__ import annotations

from pathlib import Path

from tool_module import load_tool

REPO = Path(__file__).resolve().parents[1]


def _tool():  # noqa: ANN202 (a module loaded from tools/)
    return load_tool("check_sizes")


def test_counts_each_def_with_its_decorators_and_nested_defs() -> None:
    source = "\n".join(
        [
            "import functools",  # 1
            "@functools.cache",  # 2
            "def outer():",  # 3
            "    def inner():",  # 4
            "        return 1",  # 5
            "    return inner",  # 6
            "class C:",  # 7
            "    async def method(self):",  # 8
            "        pass",  # 9
        ]
    )
    sizes = {name: (start, n) for name, start, n in _tool().function_sizes(source, "x.py")}
    assert sizes == {"outer": (2, 5), "outer.inner": (4, 2), "C.method": (8, 2)}


def test_fails_on_a_long_file_or_function_and_passes_otherwise(tmp_path: Path) -> None:
    tool = _tool()
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert tool.main([str(tmp_path), "--max-func", "6", "--max-file", "6"]) == 0
    assert tool.main([str(tmp_path), "--max-func", "5"]) == 1
    assert tool.main([str(tmp_path), "--max-file", "5"]) == 1
