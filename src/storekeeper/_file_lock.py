"""The inter-process lock of :mod:`storekeeper.files` (:class:`FileLock`) and the process
checks it records owners with; import them from :mod:`storekeeper.files`.

:class:`FileLock` is an exclusive lock between processes (and threads) built on
``flock``: the kernel releases it when the holder dies, so a crashed holder never blocks
others. The lock file also records its owner (pid, host, process start time) for
diagnostics; :meth:`FileLock.owner` reads it and :func:`process_alive` tells a live
owner from a dead one (checking the start time, so a process that reuses a dead
holder's pid is not mistaken for it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

from storekeeper.errors import LockTimeoutError

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "process_alive", "process_start_time"]


def process_start_time(pid: int) -> float | None:
    """The start time of process *pid* (seconds since boot on Linux), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: float | None = None) -> bool:
    """Whether process *pid* exists on this host (and, if given, started at *start_time*)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start_time is None:
        return True
    current = process_start_time(pid)
    return current is None or current == start_time


_owner_cache: tuple[int, bytes] = (-1, b"")


def _owner_record() -> bytes:
    """This process's owner record, computed once per process (pid changes on fork)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache[0] != pid:
        record = {"pid": pid, "host": socket.gethostname(), "start": process_start_time(pid)}
        _owner_cache = (pid, json.dumps(record).encode())
    return _owner_cache[1]


class FileLock:
    """An exclusive inter-process lock on the file *path* (created if missing).

    Use as a context manager or through :meth:`acquire` / :meth:`release`. *timeout* is
    ``None`` (wait forever) or seconds, after which :class:`LockTimeoutError` is raised.
    The lock is held by the object, not re-entrant: acquiring it twice from the same
    object raises ``RuntimeError``. The kernel drops it when the holding process dies.
    With ``keep_open=True`` the lock file stays open between acquisitions (two system
    calls fewer per acquisition); :meth:`close` closes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        timeout: float | None = None,
        poll_interval: float = 0.002,
        *,
        keep_open: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.keep_open = keep_open
        self._fd: int | None = None
        self._guard = threading.Lock()
        # With keep_open, the descriptor kept between acquisitions and the pid that
        # opened it: a forked child must open its own, or it would share the lock.
        self._spare: tuple[int, int] | None = None

    def acquire(self, timeout: float | None = -1.0) -> None:
        """Take the lock, waiting up to *timeout* (default: the constructor's)."""
        wait = self.timeout if timeout == -1.0 else timeout
        deadline = None if wait is None else time.monotonic() + wait
        with self._guard:
            if self._fd is not None:
                raise RuntimeError(f"{self.path} is already held by this FileLock")
            fd = self._descriptor()
        try:
            self._wait(fd, deadline)
        except BaseException:
            self._put_back(fd)
            raise
        self._fd = fd
        self._record_owner(fd)

    def _descriptor(self) -> int:
        """A descriptor of the lock file: the one kept open, or a new one."""
        spare, self._spare = self._spare, None
        if spare is not None and spare[1] == os.getpid():
            return spare[0]
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _put_back(self, fd: int) -> None:
        if self.keep_open:
            self._spare = (fd, os.getpid())
        else:
            os.close(fd)

    def _wait(self, fd: int, deadline: float | None) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    owner = self.owner()
                    raise LockTimeoutError(
                        f"timed out waiting for {self.path} (held by {owner})"
                    ) from None
                time.sleep(self.poll_interval)

    def _record_owner(self, fd: int) -> None:
        payload = _owner_record()
        # Rewriting an unchanged record would dirty the file on every acquisition; a
        # process that takes the lock repeatedly writes its record once.
        if os.pread(fd, len(payload) + 1, 0) != payload:
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)

    def release(self) -> None:
        """Release the lock; ``RuntimeError`` if it is not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"{self.path} is not held by this FileLock")
        if self.keep_open:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._put_back(fd)  # closing drops the flock too

    def close(self) -> None:
        """Close a descriptor kept by ``keep_open`` (the lock must not be held)."""
        spare, self._spare = self._spare, None
        if spare is not None and spare[1] == os.getpid():
            os.close(spare[0])

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def owner(self) -> dict[str, Any] | None:
        """The last recorded owner ``{pid, host, start}`` (informational), or ``None``."""
        try:
            with open(self.path, "rb") as handle:
                record: dict[str, Any] = json.loads(handle.read() or b"null")
        except (OSError, ValueError):
            return None
        return record

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
