"""Connections of a :class:`~storekeeper.backends.postgres.PostgresStore`: its pool, the
transaction of each owner, and what a ``fork`` leaves behind.

- **One pool per store** (:mod:`psycopg_pool`), in autocommit mode: a plain read or write
  borrows a connection for one statement (or one short transaction) and gives it back.
  Connections given back healthy and idle are kept in a small last-in-first-out cache
  in front of the pool, so one thread's calls reuse one warm connection without the
  pool's bookkeeping; anything else goes back to the pool, which resets or replaces it.
- **A transaction per owner** (the asyncio task or thread, see
  :mod:`storekeeper.store.owners`): ``store.transaction()`` borrows a connection for the
  whole block and runs ``BEGIN`` on it; every call of that owner inside the block runs
  on it, nested blocks are savepoints. Other owners use other connections, so they never
  see its uncommitted writes.
- **Waiting**: PostgreSQL makes a writer wait for the row locks of another transaction.
  Waiting for another thread is fine; waiting for another asyncio task of the same
  thread would block the event loop that task needs, so while such a task has a
  transaction open, this thread's statements run with a short ``lock_timeout`` and a
  lock that would make them wait raises :meth:`Claim.refusal` (a ``TransactionError``)
  instead. A transaction begun with ``wait=False`` runs with the same short
  ``lock_timeout`` and raises :func:`busy` (a ``LockTimeoutError``).
- **A refused call undoes only itself**: inside a transaction each call runs under a
  savepoint (``SAVEPOINT``, the call, ``RELEASE``), so an error PostgreSQL raises for
  one call (a key too long for the index, a lock not granted) rolls back that call
  alone; the caller may catch it and go on, and the block commits its other writes, as
  on every other backend. Without the savepoint PostgreSQL would abort the whole
  transaction and its commit would silently apply nothing.
- **After fork** the child must not talk on the parent's sockets: the first call in a
  new process points every inherited socket at ``/dev/null`` (so that freeing the
  connection objects, which tells the server goodbye, cannot end the parent's
  sessions) and opens a pool of its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg
from psycopg.pq import TransactionStatus

from storekeeper.backends._pg_errors import convert, database_refused, lasting_refusal
from storekeeper.backends._pg_schema import LOGGED_SETTING, ORIGIN_SETTING
from storekeeper.errors import BackendUnavailableError, NotConnectedError, TransactionError
from storekeeper.store.backend import Claim, OwnedVar
from storekeeper.store.owners import busy, may_wait

__all__ = ["Connections", "Transaction", "check_alive", "neutralize"]

Connection = psycopg.Connection[Any]

# A lock wait that can never end (another task of this thread holds the lock) or that
# the caller refused (wait=False) gives up after this long instead.
_SHORT_LOCK_TIMEOUT = "'20ms'"
#: Pools whose connections a forked child inherited: kept referenced so that they are
#: never finalised while the child runs (their sockets point at /dev/null by then).
_INHERITED: list[object] = []


def _reason(exc: BaseException) -> str:
    """The last line of *exc*'s message: the server's words, for a failed connection."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def check_alive(conn: Connection) -> None:
    """Raise :class:`psycopg.OperationalError` if *conn*, idle, cannot serve: closed, or
    its socket has something to read (it is then closed). An idle session of the pool
    gets nothing from the server unless the server ends it (a restart,
    ``pg_terminate_backend``: a message, then the end of the stream), so that is one
    test without a round trip, and the first call after the server came back does not
    fail on a dead connection."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    # poll, not select: select refuses descriptors past 1023, which a busy process has.
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        conn.close()  # so that the pool drops it (it would hand it out again)
        raise psycopg.OperationalError("the server ended the session")


def neutralize(conn: Connection) -> None:
    """Point *conn*'s socket at ``/dev/null``: for a connection inherited through
    ``fork``, whose socket is the parent's session."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # already closed: nothing left to protect
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


@dataclass(eq=False)
class Transaction:
    """One owner's open transaction: its connection, who owns it, in which process."""

    conn: Connection
    claim: Claim
    pid: int
    nowait: bool
    short: bool = False
    savepoints: int = 0


class Connections:
    """The pool and the transactions of one store (see the module documentation)."""

    def __init__(
        self, conninfo: str, origin: str, *, max_size: int, timeout: float, what: str
    ) -> None:
        self.conninfo = conninfo
        self.origin = origin
        self.max_size = max_size
        self.timeout = timeout
        self.what = what
        self._pool: psycopg_pool.ConnectionPool[Connection] | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._opened: weakref.WeakSet[Connection] = weakref.WeakSet()
        # Connections borrowed from the pool and kept for the next call, last in first
        # out: one thread's calls reuse one warm connection and skip the pool's
        # bookkeeping (which cost a third of a point read).
        self._idle: list[Connection] = []
        self._claims: set[Claim] = set()
        self._var: OwnedVar[Transaction] = OwnedVar(f"pg-{id(self):x}-transaction")

    # -- the pool --------------------------------------------------------------------------
    def open(self) -> None:
        """Open the pool (checking that the server answers). A refusal retrying cannot
        cure (no such database, bad credentials) fails at once; a server that does not
        answer yet is retried for up to ``timeout`` seconds."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                return  # open already (its connections may all be lent out: no wait)
        deadline = time.monotonic() + self.timeout
        self._refuse_at_once()
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                return
            self._renew()
            pool = self._pool
        assert pool is not None
        try:
            pool.wait(max(1.0, deadline - time.monotonic()))
        except psycopg_pool.PoolTimeout as exc:
            self.close()
            raise self._why_not(exc) from exc
        except BaseException:
            self.close()
            raise

    def _refuse_at_once(self) -> None:
        """Raise the server's refusal of one connection attempt if it is lasting: the
        pool would retry it until the timeout."""
        wait = max(1, int(self.timeout))
        try:
            psycopg.connect(self.conninfo, connect_timeout=wait).close()
        except psycopg.Error as exc:
            if lasting_refusal(exc) is not None:
                raise convert(exc, f"connecting to {self.what}") from exc
            if database_refused(self.conninfo, wait):
                raise BackendUnavailableError(
                    f"PostgreSQL refused connecting to {self.what}: the database does not "
                    f"exist or takes no connections ({_reason(exc)})"
                ) from exc
            # Anything else (the server is down, starting...): the pool retries it.

    def _why_not(self, exc: psycopg_pool.PoolTimeout) -> BaseException:
        """The error of a pool that opened no connection: the server's own refusal
        (bad credentials, no such database...) when one connection attempt shows it."""
        try:
            psycopg.connect(self.conninfo, connect_timeout=max(1, int(self.timeout))).close()
        except psycopg.Error as refused:
            return convert(refused, f"connecting to {self.what}")
        return convert(exc, f"connecting to {self.what}")

    def close(self) -> None:
        """Close the pool (in this process; a forked child's inherited one is left be)."""
        with self._lock:
            pool, self._pool = self._pool, None
            idle, self._idle = self._idle, []
        if pool is not None and self._pid == os.getpid():
            for conn in idle:
                pool.putconn(conn)
            pool.close(timeout=5.0)

    def pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        """The pool of this process (a new one after ``fork``)."""
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None:
                raise NotConnectedError(f"{self.what} is not connected")
            if self._pid != os.getpid():
                self._renew()
            assert self._pool is not None
            return self._pool

    def _renew(self) -> None:
        """A new pool; in a forked child, the inherited connections are neutralized."""
        if self._pid != os.getpid():
            for conn in list(self._opened):
                neutralize(conn)
            _INHERITED.append(self._pool)  # never finalised in the child
            self._opened = weakref.WeakSet()
            _INHERITED.append(self._idle)
            self._idle = []
            self._claims = set()
            self._pid = os.getpid()
        self._pool = psycopg_pool.ConnectionPool(
            self.conninfo,
            min_size=2,
            max_size=self.max_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=check_alive,
            timeout=self.timeout,
            name=self.what,
            open=True,
        )

    def _configure(self, conn: Connection) -> None:
        # The store's statements log their changes under this origin, and the logging
        # trigger (for other programs' writes) skips the connections that say they do.
        conn.execute(
            "SELECT set_config(%s, %s, false), set_config(%s, 'on', false)",
            [ORIGIN_SETTING, self.origin, LOGGED_SETTING],
        )
        self._opened.add(conn)

    def track(self, conn: Connection) -> None:
        """Count *conn* (opened outside the pool) among the connections a forked child
        must neutralize."""
        self._opened.add(conn)

    # -- using a connection ----------------------------------------------------------------
    def transaction(self) -> Transaction | None:
        """The caller's open transaction, or ``None``."""
        txn = self._var.get()
        if txn is not None and txn.pid != os.getpid():
            raise TransactionError(
                f"a transaction on {self.what} was begun before this process was forked; "
                "it belongs to the parent process"
            )
        return txn

    @contextmanager
    def using(self, doing: str, *, guarded: bool = True) -> Iterator[Connection]:
        """The connection for the caller's next statements: its transaction's, or one
        borrowed from the pool; psycopg's errors in the block are translated. In a
        transaction the block runs under a savepoint that an error rolls back
        (*guarded*; not for the statements managing the savepoints themselves)."""
        txn = self.transaction()
        refusal = self._blocker(txn)
        try:
            if txn is not None:
                if refusal is not None and not txn.short and not txn.nowait:
                    txn.conn.execute(f"SET LOCAL lock_timeout = {_SHORT_LOCK_TIMEOUT}")
                    txn.short = True
                if not guarded:
                    yield txn.conn
                    return
                with _statement_savepoint(txn.conn):
                    yield txn.conn
                return
            conn = self._borrow()
            try:
                if refusal is None:
                    yield conn
                    return
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {_SHORT_LOCK_TIMEOUT}")
                    yield conn
            finally:
                self._give_back(conn)
        except pg.LockNotAvailable as exc:
            if txn is not None and txn.nowait:
                raise busy(self.what) from exc
            if refusal is not None:
                raise refusal.refusal(self.what) from exc
            raise convert(exc, doing) from exc
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            error = convert(exc, doing)
            if isinstance(error, BackendUnavailableError):
                self._drop_broken()
            raise error from exc

    def _drop_broken(self) -> None:
        """After a lost connection (a server restart ends them all): test the idle
        connections, so the pool replaces the broken ones before the next calls get them."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            pool.putconn(conn)
        with contextlib.suppress(psycopg.Error):  # still away: the next call reports it
            pool.check()

    def _borrow(self, timeout: float | None = None) -> Connection:
        """A connection for the caller: the one given back last, or one from the pool."""
        pool = self.pool()
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            try:
                check_alive(conn)
            except psycopg.Error:
                pool.putconn(conn)  # closed: the pool replaces it
                continue
            return conn
        return pool.getconn(timeout=timeout)

    def _give_back(self, conn: Connection) -> None:
        """Keep *conn* for the next call if it is healthy and idle, else return it to
        the pool (which resets or replaces it)."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            conn.close()
            return
        if not conn.broken and conn.pgconn.transaction_status == TransactionStatus.IDLE:
            with self._lock:
                if self._pool is pool and len(self._idle) < self.max_size:
                    self._idle.append(conn)
                    return
        pool.putconn(conn)

    def _blocker(self, txn: Transaction | None) -> Claim | None:
        """Another task of this thread with a transaction open, which this thread's
        statements must not wait for."""
        if not self._claims:
            return None
        with self._lock:
            for claim in self._claims:
                if claim.blocks_here() and (txn is None or claim is not txn.claim):
                    return claim
        return None

    # -- transactions ----------------------------------------------------------------------
    def begin(self) -> None:
        """Begin a transaction for the caller on a connection of its own."""
        nowait = not may_wait()
        try:
            conn = self._borrow(timeout=0.5 if nowait else None)
        except psycopg_pool.PoolTimeout as exc:
            if nowait:
                raise busy(self.what) from exc
            raise convert(exc, "beginning a transaction") from exc
        try:
            statement = "BEGIN"
            if nowait:
                statement += f"; SET LOCAL lock_timeout = {_SHORT_LOCK_TIMEOUT}"
            conn.execute(statement)
        except psycopg.Error as exc:
            self._give_back(conn)
            raise convert(exc, "beginning a transaction") from exc
        txn = Transaction(conn, Claim.take(), os.getpid(), nowait)
        with self._lock:
            self._claims.add(txn.claim)
        self._var.set(txn)

    def commit(self) -> None:
        """Commit the caller's transaction and end it."""
        txn = self.transaction()
        if txn is None:
            raise TransactionError(f"no transaction is open on {self.what}")
        try:
            txn.conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise convert(exc, "committing a transaction") from exc
        self._end(txn)

    def rollback(self) -> None:
        """Roll the caller's transaction back (if any) and end it; a connection that
        broke meanwhile is dropped by the pool."""
        txn = self.transaction()
        if txn is None:
            return
        try:
            if not txn.conn.closed and not txn.conn.broken:
                txn.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the server rolls back a transaction whose session ends
        finally:
            self._end(txn)

    def _end(self, txn: Transaction) -> None:
        self._var.set(None)
        with self._lock:
            self._claims.discard(txn.claim)
        self._give_back(txn.conn)

    def savepoint(self) -> str:
        """Open a savepoint in the caller's transaction; its name."""
        txn = self._require()
        txn.savepoints += 1
        name = f"sk_{txn.savepoints}"
        with self.using("opening a savepoint", guarded=False) as conn:
            conn.execute(f"SAVEPOINT {name}")
        return name

    def rollback_to(self, token: str) -> None:
        """Undo what followed the savepoint *token*."""
        self._require()
        with self.using("rolling back to a savepoint", guarded=False) as conn:
            conn.execute(f"ROLLBACK TO SAVEPOINT {token}")

    def release(self, token: str) -> None:
        """Keep what followed the savepoint *token*."""
        with self.using("releasing a savepoint", guarded=False) as conn:
            conn.execute(f"RELEASE SAVEPOINT {token}")

    def _require(self) -> Transaction:
        txn = self.transaction()
        if txn is None:
            raise TransactionError(f"no transaction is open on {self.what}")
        return txn


@contextmanager
def _statement_savepoint(conn: Connection) -> Iterator[None]:
    """Run the block under a savepoint of its own in *conn*'s open transaction: an
    error rolls back what the block did and leaves the transaction usable."""
    conn.execute(_SAVEPOINT)
    try:
        yield
    except BaseException:
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):  # lost meanwhile: the error says so
                conn.execute(_UNDO)
        raise
    conn.execute(_RELEASE)


# The name is distinct from the nested transactions' savepoints (``sk_<n>``).
_SAVEPOINT = "SAVEPOINT sk_call"
_UNDO = "ROLLBACK TO SAVEPOINT sk_call; RELEASE SAVEPOINT sk_call"
_RELEASE = "RELEASE SAVEPOINT sk_call"
