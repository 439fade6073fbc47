"""An exclusive lock held for a run: one live inspection per recipe and per cell.

`flock` on a file: the kernel drops it when the process ends, however it ends (kill -9
included), so a stale lock file never blocks a start. The holder's PID is written into the
file for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from pathlib import Path

from station.errors import InUse


class RunLock:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # e.g. "recipe glassfiber", for the refusal message
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None  # closes the file if the lock is dropped

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise InUse naming the file and the PID holding it."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InUse(
                f"cannot open lock file {self.path}: {exc.strerror or exc}",
                hint="check the data folder's permissions",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InUse(
                f"{self.what} is in use by another live run: lock file {self.path} is held by "
                f"PID {holder}",
                hint="stop that run first; one live run per recipe and cell",
            ) from None
        with contextlib.suppress(OSError):  # the PID is for messages only (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)  # a lock dropped unreleased

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            if self._closer is not None:
                self._closer()  # closing drops the flock
            self._fd = None


def held_elsewhere(path: Path) -> bool:
    """Whether an open file other than ours holds the lock on `path` (False: no such file).
    A lock this process took through another RunLock counts as held elsewhere too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
