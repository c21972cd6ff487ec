"""Write-ahead-log checkpoints of a file-backed :class:`SqliteStore`, off the commit path.

SQLite appends each commit to the write-ahead log, and by default the commit that takes
the log past 1,000 pages also copies the log back into the database file (a
*checkpoint*): that one commit waits for the copy and for two fsyncs, which for a large
batch costs as much again as writing it. A store's connections turn automatic
checkpoints off (``wal_autocheckpoint=0``) and a :class:`Checkpointer` daemon thread
runs them instead, shortly after a commit that leaves 1,000 or more pages in the log
(SQLite's own threshold, read from the shared wal-index); a commit only pokes it.

Durability does not change: a commit returns once the log holds it as ``synchronous``
requires, as before, and a checkpoint only copies committed pages (after a crash at
any point the next open recovers from the log, as it always does). Checkpoints are
``PASSIVE``: they never wait for, or block, readers and writers; pages a reader still
needs stay in the log until a later checkpoint. Each process (and each store object)
has its own checkpointer; SQLite lets one checkpoint run at a time, and one that finds
another running simply leaves the work to it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import weakref

__all__ = ["Checkpointer"]

_log = logging.getLogger(__name__)
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
_SQLITE_DEFAULT_PAGES = 1000

# The wal-index (the -shm file, https://www.sqlite.org/walformat.html) begins with two
# copies of a 48-byte header, then the checkpoint information. In native byte order:
# iVersion (u32) at 0, isInit (u8) at 12, mxFrame (u32, the last valid frame) at 16,
# and nBackfill (u32, frames already copied into the database) at 96.
_WAL_INDEX_READ = 100
_WAL_INDEX_VERSION = 3007000
_HEADER = 48


def _pending(header: bytes, unknown: int) -> int:
    """``mxFrame - nBackfill`` from the start of a wal-index, or *unknown* if it is not
    one this code understands or was caught mid-update (the two header copies differ)."""
    if len(header) < _WAL_INDEX_READ or header[:_HEADER] != header[_HEADER : 2 * _HEADER]:
        return unknown
    (version,) = struct.unpack_from("=I", header, 0)
    if version != _WAL_INDEX_VERSION or header[12] != 1:
        return unknown
    (last_frame,) = struct.unpack_from("=I", header, 16)
    (backfilled,) = struct.unpack_from("=I", header, 96)
    return max(0, int(last_frame) - int(backfilled))


# Every checkpointer, so that fork() waits for checkpoints in progress: SQLite keeps the
# locks a connection holds in per-process tables, and a child forked in the middle of a
# checkpoint would inherit a checkpoint lock that no thread of it will ever release.
_live: weakref.WeakSet[Checkpointer] = weakref.WeakSet()
_held: list[threading.Lock] = []


def _before_fork() -> None:
    for checkpointer in list(_live):
        # _lock too: a child must not inherit it taken by a thread starting the thread.
        for lock in (checkpointer._lock, checkpointer._running):
            lock.acquire()
            _held.append(lock)


def _after_fork() -> None:
    while _held:
        _held.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class Checkpointer:
    """Checkpoints the database at *path* from a daemon thread after commits.

    The thread starts at the first :meth:`poke` and, once poked, waits *delay* seconds
    (so that a burst of commits is copied in one checkpoint), then checkpoints on its
    own connection, opened with *synchronous*, if the log holds *threshold* or more
    pages not yet copied (checkpointing a few pages would cost two fsyncs each time,
    which slows the commits that fsync meanwhile). :meth:`stop` ends it; a later poke
    starts a new one. After ``fork`` the child starts its own thread at its first poke.
    """

    def __init__(
        self,
        path: str,
        synchronous: str,
        timeout: float,
        delay: float = 0.05,
        threshold: int = _SQLITE_DEFAULT_PAGES,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.timeout = timeout
        self.delay = delay
        self.threshold = threshold
        self._lock = threading.Lock()
        # Held while a checkpoint runs, so checkpoint_now() and the thread take turns
        # instead of one finding the other's checkpoint busy.
        self._running = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poked = False
        self._failed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _live.add(self)

    def poke(self, conn: sqlite3.Connection) -> None:
        """Note that *conn* committed: a checkpoint follows within about *delay*.

        If the thread could not open the database, *conn* gets SQLite's automatic
        checkpoints back instead, so the log never grows without bound.
        """
        if self._poked and self._pid == os.getpid():
            if self._failed:
                conn.execute(f"PRAGMA wal_autocheckpoint={_SQLITE_DEFAULT_PAGES}")
            return  # a checkpoint is already due and will include this commit
        self._poked = True
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parent()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"storekeeper-checkpoint:{self.path}", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _forget_parent(self) -> None:
        # The parent's thread did not survive fork (no checkpoint was in progress: see
        # _before_fork): this process starts its own.
        self._pid = os.getpid()
        self._thread = None
        self._failed = False
        self._wake = threading.Event()
        self._stop = threading.Event()

    def stop(self, timeout: float | None = None) -> None:
        """End the thread (after the checkpoint it may be running); idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            stop, wake = self._stop, self._wake
            self._stop, self._wake = threading.Event(), threading.Event()
        self._poked = self._failed = False
        stop.set()
        wake.set()
        thread.join(self.timeout if timeout is None else timeout)

    def pending_frames(self) -> int:
        """Frames (pages) in the log not copied into the database yet, as the shared
        wal-index says; :attr:`threshold` when it cannot be read, so that a checkpoint
        runs rather than never."""
        try:
            with open(self.path + "-shm", "rb", buffering=0) as index:
                header = index.read(_WAL_INDEX_READ)
        except OSError:
            return self.threshold
        return _pending(header, self.threshold)

    def checkpoint_now(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Checkpoint through *conn* now; ``(frames in the log, frames copied)``."""
        with self._running:
            row = conn.execute(_CHECKPOINT).fetchone()
        return int(row[1]), int(row[2])

    def _run(self) -> None:
        wake, stop = self._wake, self._stop
        conn: sqlite3.Connection | None = None
        try:
            while True:
                wake.wait()
                if stop.wait(self.delay):
                    return
                wake.clear()
                self._poked = False
                if self.pending_frames() >= self.threshold:
                    conn = conn or self._connect()
                    self._checkpoint(conn)
        except sqlite3.Error:
            # Opening the database failed. _poked stays set, so every later commit
            # takes poke()'s fallback until stop() (a disconnect) resets this.
            _log.exception("background checkpoints of %s stopped", self.path)
            self._failed = True
            self._poked = True
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            self.checkpoint_now(conn)
        except sqlite3.Error as exc:
            # A full disk or a locked file: the pages stay in the log, which stays
            # valid, and the next poke tries again.
            _log.warning("background checkpoint of %s failed: %s", self.path, exc)
