"""The journal: part records the database did not take yet, one fsynced file each.

Space for it is reserved ahead of time: `.reserve` is a file of real (not sparse) blocks. When
the disk is full, the journal gives part of it back and writes again, so a disk filled by
shots or by the database itself still takes the records of the parts it faulted. The reserve
is taken again when the held records have reached the database. Records that must not be
replayed (unreadable, another recipe's, not matching their row) are moved to `refused/`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from station.errors import StorageError
from station.files import atomic_write
from station.paths import resolve
from station.recipe import Recipe

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
FULL = (errno.ENOSPC, errno.EDQUOT)


def journal_folder(recipe: Recipe) -> Path:
    """Where the recipe's held part records go (`storage.journal_dir`, else the data folder)."""
    jdir = recipe.storage.journal_dir
    return resolve(jdir) / recipe.name if jdir else recipe.data_dir / "journal"


class Journal:
    def __init__(self, folder: Path, reserve_bytes: int) -> None:
        self.folder = folder
        self.refused_dir = folder / "refused"
        self.reserve_path = folder / ".reserve"
        self.reserve_bytes = reserve_bytes - reserve_bytes % CHUNK

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def reserved(self) -> int:
        try:
            return self.reserve_path.stat().st_size
        except OSError:
            return 0

    def write(self, key: str, data: bytes) -> Path:
        """Write the record and fsync it; on a full disk, use the reserve. StorageError if the
        bytes could not be made durable."""
        path = self.path(key)
        while True:
            try:
                atomic_write(path, data, durable=True)
                return path
            except OSError as exc:
                if exc.errno in FULL and self._give_back(2 * len(data) + CHUNK):
                    continue
                what = "disk full" if exc.errno in FULL else (exc.strerror or str(exc))
                raise StorageError(f"journal {self.folder}: {what}") from None

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink(missing_ok=True)

    def refuse(self, path: Path, data: bytes | None = None) -> Path:
        """Move a record file to refused/ (or write `data` there when there is no file)."""
        dest = self.refused_dir / path.name
        try:
            self.refused_dir.mkdir(parents=True, exist_ok=True)
            if path.exists():
                os.replace(path, dest)  # a rename: needs no free space
            elif data is not None:
                self._write_refused(dest, data)
        except OSError as exc:
            raise StorageError(f"cannot move {path} to {self.refused_dir}: {exc}") from None
        return dest

    def _write_refused(self, dest: Path, data: bytes) -> None:
        while True:
            try:
                atomic_write(dest, data, durable=True)
                return
            except OSError as exc:
                if not (exc.errno in FULL and self._give_back(2 * len(data) + CHUNK)):
                    raise

    def top_up(self) -> None:
        """Take the reserve back up to its size, as far as the disk allows (zeros, synced)."""
        have = self.reserved()
        if have >= self.reserve_bytes:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.refused_dir.mkdir(exist_ok=True)
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("journal reserve %s not taken: %s", self.reserve_path, exc)
            return
        try:
            have -= have % CHUNK
            zeros = bytes(CHUNK)
            while have < self.reserve_bytes:
                os.pwrite(fd, zeros, have)
                have += CHUNK
            os.fsync(fd)
        except OSError as exc:  # keep the chunks written whole
            with contextlib.suppress(OSError):
                os.ftruncate(fd, max(have, 0))
            log.warning("journal reserve %s: %d bytes taken (%s)", self.reserve_path, have, exc)
        finally:
            os.close(fd)

    def _give_back(self, nbytes: int) -> bool:
        """Shrink the reserve by at least `nbytes`; False when nothing is left to give."""
        have = self.reserved()
        if have <= 0:
            return False
        keep = max(have - max(nbytes, CHUNK), 0)
        try:
            os.truncate(self.reserve_path, keep)
        except OSError:
            return False
        log.warning("journal: disk full, %d reserved bytes given to the journal", have - keep)
        return True
