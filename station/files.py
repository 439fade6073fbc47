"""Writing files so that a crash or a full disk never leaves a partial one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from station.errors import StationError


@contextlib.contextmanager
def writing(what: str | Path) -> Iterator[None]:
    """An OSError inside (full disk, read-only or missing folder) becomes a StationError
    naming `what`."""
    try:
        yield
    except OSError as exc:
        raise StationError(
            f"cannot write {what}: {exc.strerror or exc}",
            hint="check free disk space and write permission",
        ) from None


def default_file_mode() -> int:
    """Permissions of an ordinary new file (temporary files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_aside(path: Path, data: bytes, durable: bool) -> str:
    """Write `data` to a new temporary file beside `path`; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | Path, data: bytes, *, durable: bool = False) -> str:
    """Write `data` to `path` through a temporary file and a rename; return its sha256.

    Readers see the old file or the whole new one. `durable` also syncs the file and its folder
    to disk before returning (for records that must survive a power cut). Raises OSError.
    """
    path = Path(path)
    tmp = _write_aside(path, data, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def atomic_write_all(files: Mapping[Path, bytes], *, durable: bool = False) -> None:
    """Write several files that belong together: every one is written beside its target first
    and the renames (which need no disk space) come last, in order, so that a failure while
    writing leaves all of them as they were. Raises OSError."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_write_aside(Path(path), data, durable), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)  # gone once renamed
    if durable:
        for folder in {path.parent for _, path in staged}:
            _fsync_dir(folder)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
