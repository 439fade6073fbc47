"""Writing files so that a crash or a full disk never leaves a partial one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from station.errors import StationError


@contextlib.contextmanager
def writing(what: str | Path) -> Iterator[None]:
    """An OSError inside (full disk, read-only or missing folder, a file where a folder
    should be) becomes a StationError naming `what`."""
    try:
        yield
    except OSError as exc:
        if (blocking := _file_for_folder(exc)) is not None:
            raise StationError(
                f"cannot write {what}: {blocking} is a file, not a folder",
                hint="give a path in a folder, or move that file away",
            ) from None
        raise StationError(
            f"cannot write {what}: {exc.strerror or exc}",
            hint="check free disk space and write permission",
        ) from None


def _file_for_folder(exc: OSError) -> Path | None:
    """The file that stands where `exc`'s path needs a folder: mkdir(exist_ok=True) of it
    raises FileExistsError, opening a path under it NotADirectoryError. None otherwise."""
    if not isinstance(exc, FileExistsError | NotADirectoryError) or exc.filename is None:
        return None
    path = Path(os.fsdecode(exc.filename))
    around = [path] if isinstance(exc, FileExistsError) else []
    return next((p for p in (*around, *path.parents) if p.exists() and not p.is_dir()), None)


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


def atomic_write_all(
    files: Mapping[Path, bytes], *, durable: bool = False, names: Mapping[Path, str] | None = None
) -> None:
    """Write several files that belong together: every one is written beside its target first
    and the renames (which need no disk space) come last, in order, so that a failure while
    writing leaves all of them as they were. Raises OSError; with `names` (what each file is,
    e.g. "picture p.png"), `writing()`'s StationError naming the file it failed on."""
    labels = {Path(p): what for p, what in (names or {}).items()}

    def guard(path: Path) -> contextlib.AbstractContextManager[None]:
        return writing(labels[path]) if path in labels else contextlib.nullcontext()

    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            with guard(Path(path)):
                staged.append((_write_aside(Path(path), data, durable), Path(path)))
        for tmp, path in staged:
            with guard(path):
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


def _swap_in(new: Path, target: Path) -> None:
    """Put folder `new` at `target`: the old `target` goes aside, then is deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside.rmdir()  # a free name beside it
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)  # the old one back
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def replacing_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a new, empty folder beside `folder` to fill; when the block ends without error it
    takes `folder`'s place (renamed in, the old one renamed aside and deleted), otherwise it is
    removed and `folder` stays as it was. Readers see the old set of files or the whole new
    one (for a moment between the renames, no folder). A symlink's target is what is replaced;
    a mount point cannot be. Raises OSError."""
    target = Path(folder).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        yield new
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~_umask()
        os.chmod(new, mode)  # mkdtemp's folder is owner-only
        _swap_in(new, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # gone once swapped in


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
