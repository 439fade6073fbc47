"""station/files.py: files written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from station import files


def disk_full_at(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make the atomic write of `path` (its temporary file beside it) fail as a full disk
    does; other files are written as usual."""
    import errno
    import tempfile

    mkstemp = tempfile.mkstemp

    def full(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if kw.get("prefix") == f".{path.name}.":
            raise OSError(errno.ENOSPC, "No space left on device")
        return mkstemp(*args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", full)


def test_files_that_belong_together_are_written_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.png"
    files.atomic_write_all({a: b"old a", b: b"old b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    disk_full_at(monkeypatch, b)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_all({a: b"new a", b: b"new b"})
    monkeypatch.undo()
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")  # the first one too
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.yaml", "b.png"]
    files.atomic_write_all({a: b"new a", b: b"new b"}, durable=True)
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
