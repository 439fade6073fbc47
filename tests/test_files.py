"""station/files.py: files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from station import files


def test_files_that_belong_together_are_written_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.png"
    files.atomic_write_all({a: b"old a", b: b"old b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    real = os.fdopen

    def full_on_b(fd: int, *args: object, **kw: object):  # noqa: ANN202
        handle = real(fd, *args, **kw)
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == b.parent:
            handle.close()
            raise OSError(28, "No space left on device")
        return handle

    monkeypatch.setattr(files.os, "fdopen", full_on_b)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_all({a: b"new a", b: b"new b"})
    monkeypatch.undo()
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")  # the first one too
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.yaml", "b.png"]
    files.atomic_write_all({a: b"new a", b: b"new b"}, durable=True)
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
