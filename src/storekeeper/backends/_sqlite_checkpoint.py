"""Large commits of a file-backed :class:`SqliteStore` leave their checkpoint to a thread.

SQLite appends each commit to the write-ahead log, and the commit that takes the log
past 1,000 pages also copies the log back into the database file (a *checkpoint*):
that commit waits for the copy and for two fsyncs. For ordinary commits that is what we
want (it keeps the log small and lets the next writer restart it from the beginning,
which keeps fsyncs cheap). For a large transaction, though, the copy costs as much again
as writing it. So a transaction that wrote more than 1,000 pages' worth of data commits
with automatic checkpoints off (:meth:`Checkpointer.deferred`) and pokes a
:class:`Checkpointer`, whose daemon thread runs the checkpoint right after.

Durability does not change: a commit returns once the log holds it as ``synchronous``
requires, and a checkpoint only copies committed pages (after a crash at any point the
next open recovers from the log, as it always does). Checkpoints are ``PASSIVE``: they
never wait for, or block, readers and writers; a later commit's automatic checkpoint
finishes what they could not copy. SQLite lets one checkpoint run at a time, and one
that finds another running leaves the work to it.

In *background* mode (what a ``durable=False`` store runs) every commit leaves its
checkpoint to the thread: connections run with automatic checkpoints off, and after each
commit :meth:`Checkpointer.after_commit` reads the wal-index (one ``pread``) and wakes
the thread once the log holds 1,000 pages not yet copied. With ``synchronous=NORMAL``
the checkpoint is the only time a writer would wait for the disk, so writes no longer
wait at all. A log only restarts from its beginning when a checkpoint has copied all of
it, which a thread racing a steady writer never does; so once the log has grown to
*cap* pages the committing thread checkpoints itself (copying what the thread has not),
the next commit restarts the log, and it stays bounded. (A durable store does not use
this mode: there every commit fsyncs the log, and a log that keeps growing makes each of
those fsyncs extend the file.)

The wal-index is read through one descriptor per file and process (:func:`_wal_index`),
which stays open as long as the file exists: SQLite coordinates processes with POSIX
locks on that file, and closing *any* descriptor of a file drops every such lock its
process holds, those of SQLite's connections included (https://sqlite.org/howtocorrupt.html,
section 2.2). A checkpoint thread that opened and closed the file to read it made
another process's writer or checkpoint ignore this process's readers and writer, and
several processes writing one ``durable=False`` database reported it malformed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import threading
import weakref
from collections.abc import Iterator

__all__ = ["Checkpointer"]

_log = logging.getLogger(__name__)
_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
_SQLITE_DEFAULT_PAGES = 1000
_PAGE_SIZE_GUESS = 4096  # SQLite's default page size; only sizes the threshold

# The wal-index (the -shm file, https://www.sqlite.org/walformat.html) begins with two
# copies of a 48-byte header, then the checkpoint information. In native byte order:
# iVersion (u32) at 0, isInit (u8) at 12, mxFrame (u32, the last valid frame) at 16,
# and nBackfill (u32, frames already copied into the database) at 96.
_WAL_INDEX_READ = 100
_WAL_INDEX_VERSION = 3007000
_HEADER = 48
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _frames(header: bytes) -> tuple[int, int] | None:
    """``(mxFrame, nBackfill)`` from the start of a wal-index: frames in the log and
    frames already copied; ``None`` if it is not one this code understands or was caught
    mid-update (the two header copies differ)."""
    if len(header) < _WAL_INDEX_READ or header[:_HEADER] != header[_HEADER : 2 * _HEADER]:
        return None
    (version,) = struct.unpack_from("=I", header, 0)
    if version != _WAL_INDEX_VERSION or header[12] != 1:
        return None
    (last_frame,) = struct.unpack_from("=I", header, 16)
    (backfilled,) = struct.unpack_from("=I", header, 96)
    return int(last_frame), int(backfilled)


# path of a wal-index -> the descriptor _wal_index() keeps open on it (see the module
# documentation: never closed while its file exists, since that would drop SQLite's locks).
_indexes: dict[str, int] = {}
_indexes_lock = threading.Lock()


def _wal_index(path: str) -> int:
    """A read-only descriptor of the wal-index file *path*, shared by the process.

    It is never closed while the file exists. SQLite deletes the file when the last
    connection of every process closes, and only then is a descriptor of it closed (at
    a later call), so a deleted and re-created wal-index gets a new descriptor. Raises
    :class:`OSError` if the file cannot be opened.
    """
    with _indexes_lock:
        index = _indexes.get(path)
        if index is not None and os.path.samestat(os.fstat(index), os.stat(path)):
            return index
        for name, stale in list(_indexes.items()):
            if os.fstat(stale).st_nlink == 0:  # deleted: no connection has it open
                del _indexes[name]
                os.close(stale)
        index = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        # A descriptor of a file that was renamed (not deleted) stays open.
        _indexes[path] = index
        return index


def _pending(header: bytes, unknown: int) -> int:
    """``mxFrame - nBackfill`` from the start of a wal-index, or *unknown* (see
    :func:`_frames`)."""
    frames = _frames(header)
    return unknown if frames is None else max(0, frames[0] - frames[1])


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
    """Runs checkpoints of the database at *path* on a daemon thread, when poked.

    :meth:`is_large` says whether a transaction wrote enough to defer its checkpoint,
    :meth:`deferred` wraps its COMMIT, and :meth:`poke` then wakes the thread (started
    at the first poke), which waits *delay* seconds and checkpoints on its own
    connection, opened with *synchronous*, if the log holds *threshold* or more pages
    not yet copied. :meth:`stop` ends the thread; a later poke starts a new one. After
    ``fork`` the child starts its own thread at its first poke. With *background*,
    commits run without SQLite's automatic checkpoint (:attr:`autocheckpoint` is 0) and
    call :meth:`after_commit` (see the module documentation); *cap* defaults to four
    times *threshold*.
    """

    def __init__(
        self,
        path: str,
        synchronous: str,
        timeout: float,
        delay: float = 0.0,
        threshold: int = _SQLITE_DEFAULT_PAGES,
        *,
        background: bool = False,
        cap: int | None = None,
    ) -> None:
        self.path = path
        self.background = background
        self.cap = 4 * threshold if cap is None else cap
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
        self._failed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # The wal-index descriptor (_wal_index()), for after_commit's one pread; forgotten
        # by stop(): SQLite may delete and re-create the file once every connection closed.
        self._index: int | None = None
        _live.add(self)

    @property
    def autocheckpoint(self) -> int:
        """The ``wal_autocheckpoint`` setting of a committing connection: 0 (never) in
        background mode, else SQLite's default."""
        return 0 if self.background else self.threshold

    def is_large(self, data_bytes: int) -> bool:
        """Whether a transaction that wrote *data_bytes* of row data would take the log
        past the automatic checkpoint's threshold by itself."""
        return data_bytes >= self.threshold * _PAGE_SIZE_GUESS

    @contextlib.contextmanager
    def deferred(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Context: *conn* commits without running SQLite's automatic checkpoint."""
        conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Background mode: *conn* committed. Wake the thread once the log holds
        :attr:`threshold` pages not copied yet; checkpoint through *conn* now once the
        log has grown to :attr:`cap` pages (the thread copies behind a steady writer but
        never all of the log, so the log would never restart)."""
        try:
            index = self._index if self._index is not None else self._open_index()
            frames = _frames(os.pread(index, _WAL_INDEX_READ, 0))
        except OSError:
            frames = None
        if frames is None:
            self.poke(conn)  # unknown: the thread checkpoints (pending_frames says so)
        elif frames[0] >= self.cap:
            self._checkpoint(conn)
        elif frames[0] - frames[1] >= self.threshold:
            self.poke(conn)

    def poke(self, conn: sqlite3.Connection) -> None:
        """*conn* committed a large transaction: have the thread checkpoint it.

        If the thread could not open the database, *conn* checkpoints now instead, so
        the log is never left large.
        """
        if self._failed and self._pid == os.getpid():
            self._checkpoint(conn)
            return
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
            self._index = None
            if thread is None or self._pid != os.getpid():
                return
            stop, wake = self._stop, self._wake
            self._stop, self._wake = threading.Event(), threading.Event()
        self._failed = False
        stop.set()
        wake.set()
        thread.join(self.timeout if timeout is None else timeout)

    def pending_frames(self) -> int:
        """Frames (pages) in the log not copied into the database yet, as the shared
        wal-index says; :attr:`threshold` when it cannot be read, so that a checkpoint
        runs rather than never."""
        try:
            header = os.pread(_wal_index(self.path + "-shm"), _WAL_INDEX_READ, 0)
        except OSError:
            return self.threshold
        return _pending(header, self.threshold)

    def _open_index(self) -> int:
        self._index = _wal_index(self.path + "-shm")
        return self._index

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
                if self.pending_frames() >= self.threshold:
                    conn = conn or self._connect()
                    self._checkpoint(conn)
        except sqlite3.Error:
            # Opening the database failed: later pokes checkpoint in the committing
            # thread until stop() (a disconnect) resets this.
            _log.exception("background checkpoints of %s stopped", self.path)
            self._failed = True
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
