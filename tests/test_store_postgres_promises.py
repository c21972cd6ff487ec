"""What only PostgresStore promises: URLs, SQL that no user text can change, queries on
indexes, bounded logs and trash, and psycopg's errors in storekeeper's tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg
from psycopg import sql

from _pg_harness import SERVER, database_url, drop_database, table_for
from storekeeper.backends._pg_errors import convert
from storekeeper.backends._pg_query import compile_query
from storekeeper.backends.postgres import PostgresStore
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidURLError,
    LockTimeoutError,
    TransactionError,
)
from storekeeper.events import EventManager
from storekeeper.store import (
    Exists,
    In,
    Prefix,
    Range,
    StoreModificationEvent,
    StoreSetEvent,
    open_store,
)
from storekeeper.store.query import compile_terms

pytestmark = [pytest.mark.service, pytest.mark.postgres]


@pytest.fixture(scope="module", autouse=True)
def _session_database() -> Iterator[None]:
    yield
    drop_database()


@pytest.fixture
def table(tmp_path: Path) -> str:
    return table_for(str(tmp_path))


def test_open_store_urls(table: str) -> None:
    url = database_url()
    with open_store(f"{url}?table={table}&inline_limit=10&chunk_size=7&listen=false") as store:
        assert isinstance(store, PostgresStore)
        assert (store.table, store.inline_limit, store.chunk_size) == (table, 10, 7)
        store.set("k", (b"streamed in chunks", {"a": 1}))
    with open_store(url.replace("postgresql://", "postgres://", 1) + f"?table={table}") as again:
        assert again.to_bytes("k") == b"streamed in chunks"
        info = again.info()
        assert info["table"] == table and info["dbname"] == url.rsplit("/", 1)[1]
    with pytest.raises(InvalidURLError, match=r"valid options: .*inline_limit"):
        open_store(f"{url}?tabel={table}")
    with pytest.raises(InvalidURLError, match="inline_limit"):
        open_store(f"{url}?inline_limit=lots")
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        open_store(url, colour="blue")
    with pytest.raises(InvalidURLError, match="longer than"):
        open_store(f"{url}?table={'x' * 41}")


def test_the_password_is_never_shown() -> None:
    store = PostgresStore("postgresql://someone:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in repr(store) and "s3cret" not in str(store.info())


def test_a_missing_driver_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from storekeeper.errors import MissingDependencyError\n"
        "from storekeeper.store import open_store\n"
        "try:\n    open_store('postgresql://u@h/db')\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'storekeeper[postgres]'" in out.stdout


def test_hostile_names_cannot_inject_sql() -> None:
    table = 'x"; DROP TABLE victim; --'
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS victim (a int)")
    names = ['a"b', "c'); DROP TABLE victim; --", "$.x", "d\\e", "[f]", "$storekeeper_body$"]
    with PostgresStore(database_url(), table) as store:
        for index, name in enumerate(names):
            store.set(f"k{index}", (b"", {name: index, "s": name}))
        for index, name in enumerate(names):
            assert store.query_keys(**{name: index}) == [f"k{index}"]
            assert store.query_keys(**{name: Range(index, index + 1)}) == [f"k{index}"]
            assert store.query_keys(s=Prefix(name)) == [f"k{index}"]
    with psycopg.connect(database_url()) as conn:
        assert conn.execute("SELECT to_regclass('victim')").fetchone() != (None,)
        assert conn.execute("SELECT to_regclass(%s)", [f'"{table.replace(chr(34), 2 * chr(34))}"'])
    with pytest.raises(ValueError, match="invalid table"):
        PostgresStore(database_url(), "x$storekeeper_body$").connect()


@pytest.mark.parametrize(
    ("term", "index"),
    [
        ("author", "__meta"),
        (In(["ali", "bob"]), "__meta"),
        (Exists(), "__meta"),
        (Range(2000, 2010), "__n"),
        (2005, "__n"),
        (Prefix("docs/"), "__s"),
        (Range("a", "b"), "__s"),
    ],
)
def test_queries_run_on_indexes(table: str, term: Any, index: str) -> None:
    name = "year" if isinstance(term, int | Range) and index == "__n" else "m"
    with PostgresStore(database_url(), table) as store:
        store.multiset(
            [f"k{i}" for i in range(2000)],
            [(b"", {"m": f"docs/{i}", "year": 1990 + i % 40}) for i in range(2000)],
        )
        store.query_keys(**{name: term})  # builds the expression indexes it needs
        terms = compile_terms({name: term})
        condition, compiled = compile_query(terms)
        statement = sql.SQL("EXPLAIN SELECT key FROM {} WHERE meta IS NOT NULL AND ({})").format(
            sql.Identifier(table), condition
        )
        with psycopg.connect(database_url()) as conn:
            conn.execute("SET enable_seqscan = off")
            plan = "\n".join(row[0] for row in conn.execute(statement, compiled.params))
    assert f"{table}{index}" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_large_values_of_overwritten_keys_are_reclaimed(table: str) -> None:
    def chunk_sets(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            sql.SQL("SELECT count(DISTINCT blob) FROM {}").format(
                sql.Identifier(table + "__chunks")
            )
        ).fetchone()
        assert row is not None
        return int(row[0])

    options: dict[str, Any] = {"inline_limit": 10, "chunk_size": 100, "reclaim_after": 0.0}
    with PostgresStore(database_url(), table, **options) as store:
        store.set("k", (b"1" * 1000, {}))
        old = store.get("k")
        store.set("k", (b"2" * 1000, {}))
        assert old.data.read() == b"1" * 1000  # still there until the trash is emptied
        store.delete("k")
        with psycopg.connect(database_url()) as conn:
            assert chunk_sets(conn) == 2
        with PostgresStore(database_url(), table, **options):  # connecting tidies up
            with psycopg.connect(database_url()) as conn:
                assert chunk_sets(conn) == 0
        with pytest.raises(BackendError, match="reclaim_after"):
            old.data.read()


def test_the_change_log_is_bounded(table: str) -> None:
    with PostgresStore(database_url(), table, change_log_size=5) as store:
        for i in range(30):
            store.set("k", (b"", {"i": i}))
    with PostgresStore(database_url(), table, change_log_size=5):
        with psycopg.connect(database_url()) as conn:
            statement = sql.SQL("SELECT count(*), max(id) FROM {}")
            row = conn.execute(statement.format(sql.Identifier(table + "__changes"))).fetchone()
    assert row is not None and row[0] <= 5 and row[1] >= 30


def test_local_events_are_not_marked_remote(table: str) -> None:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreSetEvent, seen.append)
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("k", (b"", {}))
        with PostgresStore(database_url(), table, listen=False) as other:
            other.set("r", (b"", {"x": 1}))
        for _ in range(500):
            if len(seen) == 2:
                break
            __import__("time").sleep(0.01)
    assert [(e.key, getattr(e, "remote", False)) for e in seen] == [("k", False), ("r", True)]


def test_events_carry_remote_and_the_version_written(table: str) -> None:
    """Local and remote events alike carry ``remote`` and ``version`` (the version the
    write gave the key, as ``get`` reports it; ``None`` for a delete), whether the remote
    change arrives whole in its notification, by id (large metadata), or from plain SQL."""
    store, seen = _listening(table)
    try:
        mine = store.set("k", (b"", {}))
        store.update_metadata("k", {"u": 1})
        updated = store.get("k").version
        store.delete("k")
        with PostgresStore(database_url(), table, listen=False) as other:
            small = other.set("r", (b"", {"x": 1}))
            large = other.set("big", (b"", {"x": "y" * 20_000}))
            other.multiset(["m1", "m2"], [(b"", {}), (b"", {})])
            batch = [other.get("m1").version, other.get("m2").version]
            other.delete("r")
        _plain_sql(table, "UPDATE {} SET data = 'z' WHERE key = 'big'")
        plain = store.get("big").version
        _settle(seen, 9)
        assert [(e.key, e.action, e.remote, e.version) for e in seen] == [
            ("k", "set", False, mine),
            ("k", "update", False, updated),
            ("k", "delete", False, None),
            ("r", "set", True, small),
            ("big", "set", True, large),
            ("m1", "set", True, batch[0]),
            ("m2", "set", True, batch[1]),
            ("r", "delete", True, None),
            ("big", "set", True, plain),
        ]
        assert len({mine, updated, small, large, plain, *batch}) == 7
    finally:
        store.disconnect()


def test_a_call_refused_inside_a_transaction_undoes_only_itself(table: str) -> None:
    """A read refused by the server (a lock not granted under ``wait=False``) and a
    write refused (a key too long for the index) inside one block: the caller catches
    both, and the commit applies every other write of the block."""
    locked, release = threading.Event(), threading.Event()
    with PostgresStore(database_url(), table, listen=False) as store:
        store.set("busy", (b"old", {}))

        def hold() -> None:
            with store.transaction():
                store.set("busy", (b"held", {}))
                locked.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert locked.wait(10)
            with store.transaction(wait=False):
                store.set("a", (b"1", {}))
                with pytest.raises(LockTimeoutError):
                    store.get("busy")
                store.set("b", (b"2", {}))
                with pytest.raises(InvalidKeyError):
                    store.set(os.urandom(1500).hex(), (b"", {}))
                store.update_metadata("a", {"after": True})
        finally:
            release.set()
            holder.join()
    with PostgresStore(database_url(), table, listen=False) as fresh:
        assert sorted(fresh.list_keys()) == ["a", "b", "busy"]
        assert fresh.get_metadata("a") == {"after": True}
        assert fresh.to_bytes("busy") == b"held"


def _changes(table: str) -> list[tuple[str, str, str | None]]:
    """The change log of *table*: (key, action, origin), oldest first."""
    with psycopg.connect(database_url()) as conn:
        statement = sql.SQL("SELECT key, action, origin FROM {} ORDER BY id")
        return conn.execute(statement.format(sql.Identifier(table + "__changes"))).fetchall()


def test_each_change_is_logged_once_and_other_programs_writes_too(table: str) -> None:
    """The store's statements log their own changes, the trigger those of plain SQL
    (several rows in one statement included); a chunk set a plain-SQL delete orphans
    goes to the trash all the same."""
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    with PostgresStore(database_url(), table, inline_limit=10, chunk_size=100) as writer:
        with PostgresStore(database_url(), table, event_manager=manager) as watcher:
            writer.set("a", (b"a", {}))
            writer.multiset(["b", "c"], [(b"b", {}), (b"c", {})])
            writer.set("big", (b"x" * 1000, {}))
            writer.delete("c")
            with psycopg.connect(database_url()) as conn:
                main = sql.Identifier(table)
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET metadata = '{{\"sql\": 1}}', meta = '{{\"sql\": 1}}', "
                        "version = version + 1 WHERE key IN ('a', 'b')"
                    ).format(main)
                )
                conn.execute(sql.SQL("DELETE FROM {} WHERE key = 'big'").format(main))
            for _ in range(500):
                if len(seen) == 8:
                    break
                time.sleep(0.01)
            assert watcher.origin != writer.origin
    mine = [("a", "set"), ("b", "set"), ("c", "set"), ("big", "set"), ("c", "delete")]
    plain = [("a", "set"), ("b", "set"), ("big", "delete")]
    logged = _changes(table)
    assert [(key, action) for key, action, _ in logged] == mine + plain
    assert {origin for _, _, origin in logged[:5]} == {writer.origin}
    assert [origin for _, _, origin in logged[5:]] == [None, None, None]
    events = [(e.key, type(e).__name__, e.origin) for e in seen]
    assert events[5:] == [
        ("a", "StoreSetEvent", None),
        ("b", "StoreSetEvent", None),
        ("big", "StoreDeleteEvent", None),
    ]
    assert seen[5].metadata == {"sql": 1}
    with psycopg.connect(database_url()) as conn:
        trash = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table + "__trash"))
        assert conn.execute(trash).fetchone() == (1,)


def test_a_table_of_the_earlier_layout_is_upgraded(table: str) -> None:
    """A table whose changes a statement-level trigger logged (the layout before the
    store's statements logged their own) loses that trigger on connect: no change is
    logged twice."""
    with PostgresStore(database_url(), table, listen=False):
        pass
    with psycopg.connect(database_url()) as conn:
        names = {
            "main": sql.Identifier(table),
            "log": sql.Identifier(table + "__log"),
            "old": sql.Identifier(table + "__insert"),
            "changes": sql.Identifier(table + "__changes"),
            "function": sql.Identifier(table + "__earlier"),
        }
        conn.execute(sql.SQL("DROP TRIGGER {log} ON {main}").format(**names))
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO {changes} (key, action, metadata, origin) "
                "SELECT key, action, metadata, NULL FROM new_rows; RETURN NULL; END $$"
            ).format(**names)
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {old} AFTER INSERT ON {main} REFERENCING NEW TABLE AS new_rows "
                "FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            ).format(**names)
        )
    with PostgresStore(database_url(), table, listen=False) as store:
        store.set("k", (b"", {}))
    assert [key for key, _, _ in _changes(table)] == ["k"]


def _plain_sql(table: str, *statements: str) -> None:
    """Run *statements* (``{}`` is the table) as another program would: plain psycopg."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(sql.SQL(statement).format(sql.Identifier(table)))


def _listening(table: str) -> tuple[PostgresStore, list[Any]]:
    manager = EventManager()
    seen: list[Any] = []
    manager.connect(StoreModificationEvent, seen.append)
    store = PostgresStore(database_url(), table, event_manager=manager)
    store.connect()
    return store, seen


def _settle(seen: list[Any], count: int) -> None:
    """Wait for *count* events, then a little more for any duplicate on its way."""
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def test_a_plain_sql_truncate_is_announced_once_per_key(table: str) -> None:
    """``TRUNCATE`` by another program is logged as a delete of every key it removes
    (announced by id, 500 a notification), delivered once each; the store's own writes
    before and after are unaffected."""
    store, seen = _listening(table)
    try:
        keys = [f"k{n:04}" for n in range(1200)]
        store.multiset(keys, [(b"", {"n": n}) for n in range(1200)])
        local = len(seen)
        _plain_sql(table, "TRUNCATE {}")
        _settle(seen, local + 1200)
        deletes = seen[local:]
        assert [(e.key, type(e).__name__, e.remote) for e in deletes] == [
            (key, "StoreDeleteEvent", True) for key in keys
        ]
        assert deletes[7].metadata == {"n": 7}
        assert list(store.list_keys()) == []
        store.set("again", (b"", {}))
        assert store.to_bytes("again") == b""
    finally:
        store.disconnect()


def test_a_plain_sql_key_change_is_a_delete_then_a_set(table: str) -> None:
    store, seen = _listening(table)
    try:
        store.set("old", (b"v", {"n": 1}))
        _plain_sql(table, "UPDATE {} SET key = 'new' WHERE key = 'old'")
        _settle(seen, 3)
        assert [(e.key, type(e).__name__, e.metadata) for e in seen[1:]] == [
            ("old", "StoreDeleteEvent", {"n": 1}),
            ("new", "StoreSetEvent", {"n": 1}),
        ]
        assert store.to_bytes("new") == b"v" and not store.exists("old")
    finally:
        store.disconnect()


def test_a_plain_sql_change_gets_a_new_version_unless_it_sets_one(table: str) -> None:
    """Another program's update that changes a row keeps no stale version (conditional
    writes see it); one that sets a version itself keeps it; one that changes nothing
    keeps the version."""
    with PostgresStore(database_url(), table, listen=False) as store:
        first = store.set("k", (b"mine", {}))
        _plain_sql(table, "UPDATE {} SET key = key WHERE key = 'k'")
        assert store.get("k").version == first
        _plain_sql(table, "UPDATE {} SET metadata = '{{\"x\": 1}}' WHERE key = 'k'")
        second = store.get("k").version
        assert second != first and int(second) > 0
        with pytest.raises(ConflictError):
            store.set("k", (b"lost", {}), if_version=first)
        _plain_sql(table, "UPDATE {} SET data = 'theirs', version = 42 WHERE key = 'k'")
        assert store.get("k").version == "42"
        assert store.to_bytes("k") == b"theirs"
        third = store.set("k", (b"mine again", {}), if_version="42")
        assert store.get("k").version == third


def test_a_table_of_the_previous_layout_gets_the_new_triggers(table: str) -> None:
    """A table made before plain-SQL renames, versions and ``TRUNCATE`` were handled
    (no version or truncate trigger, no version in the change log) gets them on
    connect."""
    with PostgresStore(database_url(), table, listen=False):
        pass
    with psycopg.connect(database_url(), autocommit=True) as conn:
        for name in ("__version", "__truncate"):
            drop = sql.SQL("DROP TRIGGER {} ON {}")
            conn.execute(drop.format(sql.Identifier(table + name), sql.Identifier(table)))
        changes = sql.Identifier(table + "__changes")
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN version").format(changes))
    store, seen = _listening(table)
    try:
        version = store.set("k", (b"", {}))
        _plain_sql(table, "UPDATE {} SET data = 'x' WHERE key = 'k'")
        assert store.get("k").version != version
        _plain_sql(table, "TRUNCATE {}")
        _settle(seen, 3)
        assert [(e.key, type(e).__name__) for e in seen[1:]] == [
            ("k", "StoreSetEvent"),
            ("k", "StoreDeleteEvent"),
        ]
        assert seen[1].version not in (None, version)
    finally:
        store.disconnect()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pg.LockNotAvailable, LockTimeoutError),
        (pg.DeadlockDetected, TransactionError),
        (pg.SerializationFailure, TransactionError),
        (pg.InFailedSqlTransaction, TransactionError),
        (pg.InvalidPassword, AuthenticationError),
        (pg.InsufficientPrivilege, AuthorizationError),
        (pg.AdminShutdown, BackendUnavailableError),
        (pg.ConnectionFailure, BackendUnavailableError),
        (pg.UndefinedTable, BackendError),
        (psycopg.OperationalError, BackendUnavailableError),
    ],
)
def test_psycopg_errors_are_translated(error: type[Exception], expected: type[Exception]) -> None:
    converted = convert(error("the server said no"), "doing something")
    assert type(converted) is expected
    assert "the server said no" in str(converted) and "doing something" in str(converted)


def test_unreachable_and_refusing_servers_raise_clear_errors() -> None:
    database_url()  # the refusing server is the test server: skip (fail in CI) without it
    with pytest.raises(BackendUnavailableError, match="PostgreSQL"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=2.0).connect()
    missing = SERVER.rsplit("/", 1)[0] + "/storekeeper_no_such_database"
    with pytest.raises(BackendError, match="does not exist"):
        PostgresStore(missing, timeout=2.0).connect()
