"""PostgresStore when its server crashes or restarts, on a private server of the tests.

Writers keep writing while the server is killed (``pg_ctl stop -m immediate``: no
checkpoint, the restart recovers from the write-ahead log) and started again. Every
write a call acknowledged must then be in the table, as a fresh connection reads it;
calls during the outage raise :class:`~storekeeper.errors.BackendUnavailableError` (and
nothing else); the same store objects work again once the server is back, and a
listening store delivers every acknowledged change, once, having caught up from the
change log. A transaction cut short by the crash applies nothing. The long version
(several crashes, writers in other processes) runs under ``make soak``.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from private_servers import PrivatePostgres
from storekeeper.backends.postgres import PostgresStore
from storekeeper.errors import BackendUnavailableError, InvalidKeyError
from storekeeper.events import EventManager
from storekeeper.store import StoreModificationEvent
from storekeeper.testing.plugin import require_service

pytestmark = [pytest.mark.service, pytest.mark.postgres]

WRITERS = 3


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        if pg.library("pg_stat_statements"):  # lets tests count the statements a call runs
            pg.settings = {
                "shared_preload_libraries": "pg_stat_statements",
                "pg_stat_statements.track": "all",
            }
        pg.start()
        yield pg
    finally:
        pg.close()


@pytest.fixture
def table() -> str:
    return "t_" + secrets.token_hex(6)


def _store(server: PrivatePostgres, table: str, **options: Any) -> PostgresStore:
    store = PostgresStore(server.url, table, timeout=1.0, event_manager=EventManager(), **options)
    store.connect()
    return store


def _rows(server: PrivatePostgres, table: str) -> dict[str, tuple[bytes | None, str]]:
    """Every row of *table* as a fresh connection reads it: key -> (inline data, or
    ``None`` for a chunked value; metadata)."""
    with psycopg.connect(server.url) as conn:
        statement = sql.SQL("SELECT key, data, metadata FROM {}").format(sql.Identifier(table))
        return {
            key: (None if data is None else bytes(data), metadata)
            for key, data, metadata in conn.execute(statement)
        }


def _wait(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _reads(store: PostgresStore, key: str) -> bytes | None:
    """*key*'s data, or ``None`` while the store finds no connection."""
    try:
        return store.to_bytes(key)
    except BackendUnavailableError:
        return None


class _Writer(threading.Thread):
    """Writes new keys until told to stop, recording what was acknowledged and what
    raised."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.tag = name
        self.acknowledged: list[str] = []
        self.attempted: list[str] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            key = f"{self.tag}/{i}"
            self.attempted.append(key)
            try:
                self.store.set(key, (key.encode(), {"i": i}))
            except Exception as exc:  # every kind is recorded, and checked by the test
                self.errors.append(exc)
                time.sleep(0.05)
                continue
            self.acknowledged.append(key)


def _each_gets(writers: list[_Writer], what: str, more: int) -> None:
    """Wait until every writer's list *what* (``acknowledged``, ``errors``) has grown
    by *more*."""
    before = [len(getattr(w, what)) for w in writers]
    _wait(
        lambda: all(
            len(getattr(w, what)) >= n + more for w, n in zip(writers, before, strict=True)
        ),
        what=f"{more} more {what} from each writer",
    )


def _crash_and_restart(server: PrivatePostgres, writers: list[_Writer]) -> None:
    """Let each writer get 10 writes acknowledged, crash the server, keep it down until
    every writer has failed, start it, and wait for 10 more acknowledged writes each."""
    _each_gets(writers, "acknowledged", 10)
    server.stop("immediate")
    _each_gets(writers, "errors", 1)
    server.start()
    _each_gets(writers, "acknowledged", 10)


def test_a_crash_loses_nothing_acknowledged_and_the_store_recovers(
    server: PrivatePostgres, table: str
) -> None:
    writer = _store(server, table, listen=False)
    listener = _store(server, table)
    events: list[Any] = []
    listener.event_manager.connect(StoreModificationEvent, events.append)
    writers = [_Writer(writer, f"w{n}") for n in range(WRITERS)]
    try:
        for thread in writers:
            thread.start()
        _crash_and_restart(server, writers)
    finally:
        for thread in writers:
            thread.stop.set()
        for thread in writers:
            thread.join(30)
    try:
        # Every error was the clear one, from a call made while the server was away.
        for thread in writers:
            assert thread.errors
            for error in thread.errors:
                assert isinstance(error, BackendUnavailableError), repr(error)
                assert "PostgreSQL" in str(error)
        # Every acknowledged write is there, as a fresh connection reads it.
        rows = _rows(server, table)
        acknowledged = [key for thread in writers for key in thread.acknowledged]
        for key in acknowledged:
            assert key in rows, f"{key} was acknowledged, then lost in the crash"
            assert rows[key][0] == key.encode()
        # The listener caught up: every acknowledged change arrives, once.
        _wait(
            lambda: set(acknowledged) <= {e.key for e in events},
            what="the events of every acknowledged write",
        )
        ids = [e.change_id for e in events]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        attempted = {key for thread in writers for key in thread.attempted}
        assert {e.key for e in events} <= attempted
        # And the same store objects go on working.
        writer.set("after", (b"after", {}))
        _wait(lambda: _reads(listener, "after") == b"after", what="the listener's store")
    finally:
        writer.disconnect()
        listener.disconnect()


def test_a_crash_inside_a_transaction_applies_none_of_it(
    server: PrivatePostgres, table: str
) -> None:
    store = _store(server, table, listen=False, inline_limit=64, chunk_size=4096)
    try:
        store.set("a", (b"old", {"v": 1}))
        with store.transaction():  # committed before the crash: all of it stays
            store.set("kept", (b"k" * 10_000, {}))
            store.set("a", (b"committed", {"v": 2}))
        with pytest.raises(BackendUnavailableError), store.transaction():
            store.set("a", (b"new", {"v": 3}))
            store.set("b", (b"x" * 100_000, {}))  # chunked: several statements
            server.stop("immediate")
            store.set("c", (b"during the outage", {}))
        server.start()
        rows = _rows(server, table)
        assert rows["a"] == (b"committed", '{"v":2}')
        assert "kept" in rows and "b" not in rows and "c" not in rows
        with psycopg.connect(server.url) as conn:  # no chunk of the rolled-back value
            statement = sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table + "__chunks")
            )
            assert conn.execute(statement).fetchone() == (3,)  # kept's 10,000 bytes
        # The store works again once its pool has reconnected (it backs off while the
        # server was away, so the first call may still find no connection).
        _wait(lambda: _reads(store, "kept") == b"k" * 10_000, what="the store to work again")
    finally:
        store.disconnect()


def test_a_killed_session_fails_the_commit_and_applies_nothing(
    server: PrivatePostgres, table: str
) -> None:
    store = _store(server, table, listen=False)
    try:
        store.set("a", (b"old", {}))
        with pytest.raises(BackendUnavailableError), store.transaction():
            store.set("a", (b"new", {}))
            store.set("b", (b"b", {}))
            txn = store._connections.transaction()
            assert txn is not None
            with psycopg.connect(server.url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [txn.conn.info.backend_pid])
            # nothing more: the commit itself finds the session gone
        assert _rows(server, table) == {"a": (b"old", "{}")}
    finally:
        store.disconnect()


def test_a_write_is_one_statement_on_the_server(server: PrivatePostgres, table: str) -> None:
    """A plain set is one round trip running one statement (no trigger statements, no
    BEGIN/COMMIT), and so is a conditional one; the change log still gets each change
    once."""
    if "pg_stat_statements" not in server.settings.get("shared_preload_libraries", ""):
        require_service("pg_stat_statements", "not installed with this PostgreSQL")
    store = _store(server, table, listen=False)
    try:
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            store.set("warm", (b"", {}))
            admin.execute("SELECT pg_stat_statements_reset()")
            version = ""
            for i in range(20):
                version = store.set(f"k{i % 5}", (b"x" * 100, {"i": i}))
            store.set("k4", (b"y", {}), if_version=version)
            rows = admin.execute(
                "SELECT calls, toplevel, query FROM pg_stat_statements "
                "WHERE query NOT LIKE '%%pg_stat_statements%%' ORDER BY calls DESC"
            ).fetchall()
            logged = admin.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table + "__changes"))
            ).fetchone()
    finally:
        store.disconnect()
    assert sum(calls for calls, _, _ in rows) == 21, rows
    assert all(toplevel for _, toplevel, _ in rows), rows  # nothing ran nested
    assert logged == (22,)  # the warm-up, 20 sets, the conditional one


# -- the long version: several crashes, writers in other processes ----------------------------
def _process_writer(url: str, table: str, name: str, stop: Any, out: Any) -> None:
    store = PostgresStore(url, table, timeout=2.0, listen=False)
    store.connect()
    i = 0
    while not stop.is_set():
        i += 1
        key = f"{name}/{i}"
        try:
            store.set(key, (key.encode(), {"i": i}))
        except BackendUnavailableError:
            time.sleep(0.05)
            continue
        out.put(key)
    store.disconnect()


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("STOREKEEPER_SOAK") != "1", reason="only under make soak")
def test_repeated_crashes_under_writer_processes_lose_nothing(
    server: PrivatePostgres, table: str
) -> None:
    _store(server, table).disconnect()  # the tables exist before the writers start
    context = multiprocessing.get_context("forkserver")
    stop = context.Event()
    out = context.Queue()
    processes = [
        context.Process(target=_process_writer, args=(server.url, table, f"p{n}", stop, out))
        for n in range(4)
    ]
    for process in processes:
        process.start()
    acknowledged: list[str] = []

    def drain(at_least: int) -> None:
        deadline = time.monotonic() + 60
        while len(acknowledged) < at_least and time.monotonic() < deadline:
            try:
                acknowledged.append(out.get(timeout=1))
            except queue.Empty:
                continue
        assert len(acknowledged) >= at_least

    try:
        for round_ in range(5):
            drain(len(acknowledged) + 200)
            server.stop("immediate")
            time.sleep(1 + round_ % 2)
            server.start()
        drain(len(acknowledged) + 200)
    finally:
        stop.set()
        for process in processes:
            process.join(60)
    while not out.empty():
        acknowledged.append(out.get())
    rows = _rows(server, table)
    missing = [key for key in acknowledged if key not in rows]
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"


# -- a server speaking German ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def german() -> Iterator[PrivatePostgres]:
    """A private server whose messages are German (``lc_messages``), also those it sends
    while refusing a connection."""
    pg = PrivatePostgres()
    try:
        if shutil.which("localedef") is None or not pg.add_locale("de_DE.UTF-8"):
            require_service("a German locale", "localedef cannot make de_DE.UTF-8")
        pg.settings = {"lc_messages": "de_DE.UTF-8"}
        pg.start()
        yield pg
    finally:
        pg.close()


def test_errors_are_classified_in_any_language(german: PrivatePostgres, table: str) -> None:
    """The errors storekeeper tells apart by their meaning, on a server that words them
    in German: a key too long for the key index is an InvalidKeyError (nothing written),
    and a database that does not exist is refused at once, not retried to the timeout."""
    with psycopg.connect(german.url) as conn:  # the server does speak German
        with pytest.raises(psycopg.Error, match="existiert nicht"):
            conn.execute("SELECT * FROM no_such_table")
    store = PostgresStore(german.url, table, listen=False)
    store.connect()
    try:
        for size in (3_000, 9_000):  # refused by the btree, and by any index entry
            key = secrets.token_hex(size)[:size]
            with pytest.raises(InvalidKeyError):
                store.set(key, (b"", {}))
        assert list(store.list_keys()) == []
    finally:
        store.disconnect()
    missing = german.url.rsplit("/", 1)[0] + "/no_such_database"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="no_such_database"):
        PostgresStore(missing, table, timeout=20.0).connect()
    assert time.monotonic() - started < 10, "retried a refusal that cannot go away"
