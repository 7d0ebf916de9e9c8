"""A file lock its holder may delete: a download leaves no ``.lock`` behind, and stays exclusive.

A plain flock lock file must stay after release: a waiter that opened the old file would lock it
after the holder unlinked it, while a newcomer locks a new file under the same name, and both
would hold "the" lock (filelock keeps its Unix lock files for that reason). Here every acquirer
checks, once it holds the lock, that the path still names the file it locked, and starts over
if not; so the holder may unlink the path *before* it unlocks, and whoever waited on the old
file notices and takes the new one. Every zoo process that locks a download uses this class;
other code may lock the same file with filelock (both are flock locks) but must not delete it.
Ground floor: no zoo import but the errors.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["RemovableLock", "LockTimeout"]


class LockTimeout(TimeoutError):
    """The lock was not free within the time given."""


class RemovableLock:
    """An exclusive lock on `path` (created when missing); ``release(remove=True)`` deletes the file.

    >>> lock = RemovableLock("model.bin.lock")
    >>> lock.acquire(timeout=10)       # doctest: +SKIP
    >>> lock.release(remove=True)      # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, poll: float = 0.05) -> None:
        self.path = Path(path)
        self.poll = poll
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock; wait at most `timeout` seconds (None: as long as it takes, 0: not at all).

        Raises:
            LockTimeout: another process still holds it when the time is up.
        """
        import fcntl

        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise LockTimeout(f"{self.path} is held by another process") from None
                        time.sleep(self.poll)
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                if current is not None and os.path.samestat(current, os.fstat(fd)):
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed (or replaced) the file while we waited: lock the new one

    def release(self, remove: bool = False) -> None:
        """Give the lock up; with `remove`, delete the lock file first (while still holding it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if remove:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the descriptor drops the flock
