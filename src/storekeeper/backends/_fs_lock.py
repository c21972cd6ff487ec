"""The store-wide writer lock of :mod:`storekeeper.backends.filesystem`.

Writers of one store directory exclude each other at two levels: a re-entrant lock
inside the process and a :class:`storekeeper.files.FileLock` between processes
(which tells a lock left by a dead process from a live one). The task or thread that
holds the lock may take it again (a write inside its own transaction); another asyncio
task of its thread is refused with TransactionError rather than block the event loop
(see :mod:`storekeeper.store.owners`). The file lock is taken only by the outermost
acquisition.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from storekeeper.files import FileLock
from storekeeper.store.backend import (
    OwnerLock,
)
from storekeeper.store.owners import may_wait

__all__ = ["StoreLock"]


class StoreLock:
    """A re-entrant writer lock over the file *path*; *on_acquire* runs after each
    outermost acquisition (while locked), e.g. to finish a crashed writer's work.
    """

    def __init__(self, path: str, timeout: float, on_acquire: Callable[[], object]) -> None:
        self._file_lock = FileLock(path, timeout=timeout, keep_open=True)
        self._on_acquire = on_acquire
        self._mutex = OwnerLock(f"the FileSystemStore at {os.path.dirname(path)!r}")
        self._depth = 0  # only changed by the owner holding _mutex

    def acquire(self) -> None:
        """Take the lock (waiting up to the timeout for other processes; inside
        :func:`~storekeeper.store.owners.not_waiting`, LockTimeoutError at once)."""
        self._mutex.acquire()
        try:
            if self._depth == 0:
                self._lock_file()
        except BaseException:
            self._mutex.release()
            raise
        self._depth += 1

    def release(self) -> None:
        """Give back one acquisition; the outermost one unlocks the file."""
        self._depth -= 1
        try:
            if self._depth == 0:
                self._file_lock.release()
        finally:
            self._mutex.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """``with lock.held():`` acquire and release around a block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def _lock_file(self) -> None:
        # A transaction begun with wait=False tries the file lock once (timeout 0).
        self._file_lock.acquire(-1.0 if may_wait() else 0.0)
        try:
            self._on_acquire()
        except BaseException:
            self._file_lock.release()
            raise
