"""The connections of a :class:`SqliteStore` and who may use them when.

- **Plain calls** run on one connection per thread, opened on first use and opened
  again after ``connect()``, ``disconnect()`` or ``fork`` (a child never uses its
  parent's connections).
- **A transaction** runs on a connection of its own, leased from a pool, so other tasks
  of its thread read committed data meanwhile. Its owner is recorded (:attr:`holder`)
  once it holds the write lock: a write or transaction of another task of that thread,
  which would have to wait for it and so block the event loop, raises
  :class:`~storekeeper.errors.TransactionError` at once.
- **An in-memory database** exists only inside its one connection: every thread shares
  it and takes turns through :attr:`Connections.serial`, and any call of another task
  of the transaction's thread is refused.
- **The database file** is watched (:class:`DatabaseFile`): a write does not commit once
  the file was deleted or replaced while open.
- **Checkpoints** of a file database are run by its :class:`Checkpointer`.

sqlite3 errors leave this layer as :class:`~storekeeper.errors.BackendError`
(:func:`translate`).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

from storekeeper.backends._sqlite_checkpoint import Checkpointer
from storekeeper.backends._sqlite_files import DatabaseFile
from storekeeper.backends._sqlite_schema import begin_without_waiting
from storekeeper.errors import (
    BackendError,
    InvalidKeyError,
    LockTimeoutError,
    StorekeeperError,
    TransactionError,
)
from storekeeper.store.backend import Claim, OwnedVar
from storekeeper.store.owners import busy, may_wait

__all__ = [
    "MEMORY",
    "Connections",
    "Lease",
    "Using",
    "Writing",
    "backend_error",
    "translate",
    "unencodable",
]

MEMORY = ":memory:"
_MMAP_SIZE = 32 * 1024 * 1024
_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
_NO_CONNECTION: tuple[object, None] = (None, None)

# Every Connections object, so that a forked child opens connections of its own.
_live: weakref.WeakSet[Connections] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for connections in list(_live):
        connections.renew()


os.register_at_fork(after_in_child=_forget_connections_after_fork)


@dataclass(frozen=True, slots=True)
class Lease:
    """A connection reserved for transactions, with the generation and process it is for."""

    conn: sqlite3.Connection
    generation: int
    pid: int


class Connections:
    """The connections of one store to the database at *location* (see the module
    documentation); *owner* is the store, named in refusals.

    *durable* picks ``synchronous=FULL`` (else ``NORMAL``); *secure_delete* zeroes every
    freed page; *background_checkpoints* leaves every checkpoint of a file database to
    the checkpointer's thread.
    """

    def __init__(
        self,
        location: str,
        owner: object,
        *,
        timeout: float,
        durable: bool,
        secure_delete: bool,
        background_checkpoints: bool,
    ) -> None:
        self.location = location
        self.timeout = timeout
        self.synchronous = "FULL" if durable else "NORMAL"
        self.secure_delete = secure_delete
        self.memory = location == MEMORY
        self.background_checkpoints = background_checkpoints and not self.memory
        #: The lock an in-memory database's one connection is used under (else ``None``).
        self.serial = threading.RLock() if self.memory else None
        self.database = None if self.memory else DatabaseFile(location)
        self.checkpointer = (
            None
            if self.memory
            else Checkpointer(
                location, self.synchronous, timeout, background=self.background_checkpoints
            )
        )
        #: The open transaction's owner, set once it holds the write lock.
        self.holder: Claim | None = None
        self._owner = weakref.ref(owner)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0
        # Matches the thread-local connections that are still valid; replaced when they
        # are not (connect, disconnect, fork).
        self._token = object()
        self._shared: sqlite3.Connection | None = None
        self._leased: OwnedVar[Lease] = OwnedVar(f"sqlite-{id(self):x}-transaction")
        self._idle: list[Lease] = []
        self._savepoints = itertools.count()
        _live.add(self)

    # -- opening and closing -----------------------------------------------------------
    def renew(self) -> None:
        """Make every thread open a new connection at its next call (at connect)."""
        with self._lock:
            self._generation += 1
            self._token = object()

    def attach(self) -> None:
        """Start watching the database file (once it is open)."""
        if self.database is not None:
            self.database.attach()

    def close(self) -> None:
        """Stop the checkpointer and close every connection opened (in any thread)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        with self._lock:
            opened, self._opened = self._opened, []
            self._generation += 1
            self._token = object()
            self._shared = None
            self._idle = []
        for conn in opened:
            conn.close()
        if self.database is not None:
            self.database.close()  # only now: closing it drops the connections' locks

    def conn(self) -> sqlite3.Connection:
        """The connection for a call now: the transaction's, the thread's, or the
        in-memory database's one."""
        if self.serial is not None:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        lease = self._leased.get()
        if lease is not None:
            return lease.conn
        state: tuple[object, sqlite3.Connection | None] = getattr(
            self._local, "state", _NO_CONNECTION
        )
        if state[0] is self._token and state[1] is not None:
            return state[1]
        token = self._token
        conn = self._open()
        self._local.state = (token, conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.database is not None:
            # Connecting to a path whose file was deleted would create a new, empty database.
            self.database.check()
        conn = sqlite3.connect(
            self.location, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        if not self.memory:
            _enter_wal(conn, self.timeout)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        # Reads through a memory map skip a read() system call per page.
        conn.execute(f"PRAGMA mmap_size={_MMAP_SIZE}")
        # Some builds (Debian's among them) zero every freed page, which makes deleting
        # or replacing a large value write it again; FAST zeroes only what is written
        # anyway. secure_delete=True asks for the zeroing.
        conn.execute(f"PRAGMA secure_delete={'ON' if self.secure_delete else 'FAST'}")
        if self.background_checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        with self._lock:
            self._opened.append(conn)
        return conn

    # -- plain calls -------------------------------------------------------------------
    def check_turn(self) -> None:
        """Refuse a call that would wait for another task's transaction in this thread."""
        holder = self.holder
        if holder is not None and holder.blocks_here():
            raise holder.refusal(self._owner())

    def using(self) -> Using:
        """Context: the connection for a call, under the in-memory lock if there is one."""
        return Using(self)

    def writing(self, nested: bool) -> Writing:
        """Context: a write in its own transaction, or in a savepoint when *nested* (in
        the caller's transaction); committed on success, rolled back on error."""
        return Writing(self, nested)

    def fetch_one(self, sql: str, params: tuple[object, ...]) -> tuple[object, ...] | None:
        """The first row of the read statement *sql* (``None`` if there is none)."""
        if self.serial is not None:
            with self.using() as conn:
                row: tuple[object, ...] | None = conn.execute(sql, params).fetchone()
                return row
        # A file database's reads take no lock: Using's work, without its object.
        try:
            conn = self.conn()
        except sqlite3.Error as exc:
            raise backend_error(exc, "connecting") from exc
        try:
            row = conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise backend_error(exc, "running a statement") from exc
        except UnicodeEncodeError as exc:
            raise unencodable(exc) from exc
        return row

    def autocommit(self, sql: str, params: tuple[object, ...]) -> bool:
        """Run one write statement as its own transaction; whether it changed a row."""
        self.check_turn()
        with self.using() as conn:
            if self.database is not None:
                self.database.check()
            if conn.execute(sql, params).rowcount == 0:
                return False
            if self.background_checkpoints:
                self.after_commit(conn)
        return True

    def commit(self, conn: sqlite3.Connection) -> None:
        """COMMIT, unless the database file is gone; rolls back when that or the commit
        itself fails (disk full, I/O error)."""
        try:
            if self.database is not None:
                self.database.check()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """*conn* committed: in background-checkpoint mode, tell the checkpointer."""
        assert self.checkpointer is not None  # background checkpoints need a file
        self.checkpointer.after_commit(conn)

    def checkpoint(self) -> tuple[int, int]:
        """Checkpoint now: ``(pages in the log, pages copied)``, ``(0, 0)`` in memory."""
        if self.checkpointer is None:
            return 0, 0
        with self.using() as conn, translate(f"checkpointing {self.location!r}"):
            return self.checkpointer.checkpoint_now(conn)

    # -- transactions ------------------------------------------------------------------
    def begin(self) -> None:
        """Begin a transaction (``BEGIN IMMEDIATE``) on a connection of its own (the
        shared one, under the lock, in memory) and record its owner."""
        self.check_turn()
        wait = may_wait()  # false: a transaction(wait=False) raises busy instead of waiting
        if self.serial is not None and not self.serial.acquire(blocking=wait):
            raise busy(self._owner())
        try:
            self.check_turn()
            with translate("beginning a transaction"):
                if self.serial is None:
                    self._leased.set(self._lease())
                self._begin_immediate(wait)
        except BaseException:
            self.end()
            raise
        # Only once the write lock is held: this clears it only before letting it go.
        self.holder = Claim.take()

    def _begin_immediate(self, wait: bool) -> None:
        """``BEGIN IMMEDIATE`` on the transaction's connection; without *wait*, ``busy``
        at once if another connection holds the write lock."""
        if wait:
            self.conn().execute("BEGIN IMMEDIATE")
        elif not begin_without_waiting(self.conn(), self.timeout):
            raise busy(self._owner())

    def end(self) -> None:
        """Give back what the transaction held: its connection, the in-memory lock."""
        lease = self._leased.get()
        if lease is not None:
            self._leased.set(None)
            self._give_back(lease)
        if self.serial is not None:
            self.serial.release()

    def rollback(self) -> sqlite3.Connection:
        """Roll the transaction back (if it began); its connection, still held."""
        self.holder = None
        with translate("rolling back"):
            conn = self.conn()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return conn

    def savepoint(self) -> str:
        """Open a savepoint in the transaction; its name."""
        name = f"storekeeper_{next(self._savepoints)}"
        with translate("creating a savepoint"):
            self.conn().execute(f"SAVEPOINT {name}")
        return name

    def rollback_to(self, name: str) -> sqlite3.Connection:
        """Undo what followed savepoint *name* and close it; the connection."""
        with translate("rolling back to a savepoint"):
            conn = self.conn()
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        return conn

    def release(self, name: str) -> None:
        """Close savepoint *name*, keeping what followed it."""
        with translate("releasing a savepoint"):
            self.conn().execute(f"RELEASE {name}")

    def _lease(self) -> Lease:
        """An idle connection of this generation and process, or a new one."""
        with self._lock:
            while self._idle:
                lease = self._idle.pop()
                if lease.generation == self._generation and lease.pid == os.getpid():
                    return lease
            generation = self._generation
        return Lease(self._open(), generation, os.getpid())

    def _give_back(self, lease: Lease) -> None:
        with self._lock:
            if lease.generation == self._generation and lease.pid == os.getpid():
                self._idle.append(lease)


class Using:
    """:meth:`Connections.using` (a class, not a generator: it wraps every call)."""

    __slots__ = ("_connections",)

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def __enter__(self) -> sqlite3.Connection:
        connections = self._connections
        serial = connections.serial
        if serial is not None:
            serial.acquire()
            try:
                connections.check_turn()
            except TransactionError:
                serial.release()
                raise
        try:
            return connections.conn()
        except sqlite3.Error as exc:
            if serial is not None:
                serial.release()
            raise backend_error(exc, "connecting") from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        serial = self._connections.serial
        if serial is not None:
            serial.release()
        if isinstance(exc, sqlite3.Error):
            raise backend_error(exc, "running a statement") from exc
        if isinstance(exc, UnicodeEncodeError):
            raise unencodable(exc) from exc


class Writing(Using):
    """:meth:`Connections.writing`."""

    __slots__ = ("_conn", "_nested")

    def __init__(self, connections: Connections, nested: bool) -> None:
        super().__init__(connections)
        self._nested = nested

    def __enter__(self) -> sqlite3.Connection:
        if not self._nested:
            self._connections.check_turn()
        conn = super().__enter__()
        self._conn = conn
        try:
            conn.execute("SAVEPOINT storekeeper_write" if self._nested else "BEGIN IMMEDIATE")
        except BaseException as exc:
            super().__exit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._finish(exc is None)
        except BaseException as failure:
            super().__exit__(type(failure), failure, failure.__traceback__)
            raise
        super().__exit__(exc_type, exc, tb)

    def _finish(self, succeeded: bool) -> None:
        conn = self._conn
        if self._nested:
            if not succeeded:
                conn.execute("ROLLBACK TO storekeeper_write")
            conn.execute("RELEASE storekeeper_write")
        elif not succeeded:
            conn.execute("ROLLBACK")
        else:
            connections = self._connections
            connections.commit(conn)
            if connections.background_checkpoints:
                connections.after_commit(conn)


@contextmanager
def translate(action: str) -> Iterator[None]:
    """Context: sqlite3 errors become :class:`~storekeeper.errors.BackendError` naming
    *action*, unencodable text an :class:`~storekeeper.errors.InvalidKeyError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise backend_error(exc, action) from exc
    except UnicodeEncodeError as exc:
        raise unencodable(exc) from exc


def _enter_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode. While another connection switches the same new
    database, SQLite refuses at once ("database is locked") without waiting for its
    busy timeout, so processes opening a new store together retry, up to *timeout*."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in _LOCK_CODES or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def backend_error(exc: sqlite3.Error, action: str) -> StorekeeperError:
    """The error for an sqlite3 failure while doing *action*."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _LOCK_CODES:
        # Another connection kept the database locked past the timeout, or (PROTOCOL) a
        # process stopped while it updated the shared WAL index, which readers must then
        # wait for: a lock that was not granted, not a failed engine.
        return LockTimeoutError(
            f"SQLite could not get a lock while {action} ({exc}): another process holds "
            "the database locked, or stopped in the middle of a commit; try again"
        )
    return BackendError(f"SQLite failed while {action}: {exc}")


def unencodable(exc: UnicodeEncodeError) -> StorekeeperError:
    """The error for text SQLite cannot take: a lone surrogate has no UTF-8 form.

    Keys and metadata are checked before they get here; this names what slipped past.
    """
    return InvalidKeyError(
        f"text holding a lone surrogate cannot be stored ({exc.reason}): {exc.object!r}"
    )
