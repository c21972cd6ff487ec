"""SqliteStore against the conformance suite, plus what only it promises."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import ConflictError
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, Range, open_store
from storekeeper.store.events import StoreKeyEvent
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.model import SMALL_INLINE_LIMIT
from storekeeper.testing.raw import sqlite_read, sqlite_write
from storekeeper.testing.store import StoreTests


class _SqliteRaw(StoreTests):
    """Raw access: a plain sqlite3 connection on the store's table."""

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, SqliteStore)
        return sqlite_read(str(store.location), store.table, key)

    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, SqliteStore)
        sqlite_write(str(store.location), store.table, key, data, metadata)


class TestSqliteFileStore(_SqliteRaw):
    def create_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(tmp_path / "store.db", event_manager=event_manager)

    reopen_store = create_store

    def store_url(self, tmp_path: Path) -> str:
        # Four slashes: an absolute path, whichever URL convention is in force.
        return f"sqlite:///{tmp_path / 'store.db'}"

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(
            tmp_path / "model.db",
            durable=False,
            inline_limit=SMALL_INLINE_LIMIT,
            event_manager=event_manager,
        )


class TestSqliteNotDurableStore(_SqliteRaw):
    """``durable=False``: ``synchronous=NORMAL`` and background checkpoints, which the
    cross-process checks run in several processes at once."""

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(tmp_path / "store.db", durable=False, event_manager=event_manager)

    reopen_store = create_store

    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}?durable=false"


class TestSqliteChunkedStore(_SqliteRaw):
    """Tiny inline limit and chunks, so every code path of large values is exercised."""

    large_value_size = 100_003

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(
            tmp_path / "store.db", inline_limit=4, chunk_size=7, event_manager=event_manager
        )

    reopen_store = create_store

    def process_opener(self, tmp_path: Path) -> Opener:
        return same_store(self, tmp_path)


class TestSqliteMemoryStore(StoreTests):
    raw_unavailable = "an in-memory database exists only inside the store's connection"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(event_manager=event_manager)

    def create_model_store(self, tmp_path: Path, event_manager: EventManager) -> SqliteStore:
        return SqliteStore(
            inline_limit=SMALL_INLINE_LIMIT, chunk_size=5, event_manager=event_manager
        )


def test_open_store_urls(tmp_path: Path) -> None:
    path = tmp_path / "url.db"
    with open_store(f"sqlite:///{path}?table=things&durable=false") as store:
        assert isinstance(store, SqliteStore)
        assert (store.table, store.durable, store.location) == ("things", False, str(path))
        assert store.info()["background_checkpoints"] is True
        store.set("k", (b"v", {}))
    with open_store(f"sqlite:///{path}?table=things&durable=false&background_checkpoints=0") as s:
        assert isinstance(s, SqliteStore)
        assert (s.durable, s.background_checkpoints) == (False, False)
        assert s.to_bytes("k") == b"v"
    with open_store("sqlite://") as memory:
        assert isinstance(memory, SqliteStore) and memory.location == ":memory:"
    with pytest.raises(ValueError, match="no host"):
        open_store("sqlite://host/x.db")


def test_create_false_opens_only_an_existing_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(FileNotFoundError, match=r"typo\.db"):
        open_store(f"sqlite:///{missing}?create=false")
    with pytest.raises(FileNotFoundError):
        SqliteStore(missing, create=False).connect()
    assert sorted(os.listdir(tmp_path)) == []
    with open_store(f"sqlite:///{missing}") as store:  # create=true is the default
        store.set("k", (b"v", {}))
    with open_store(f"sqlite:///{missing}?create=false") as again:
        assert again.to_bytes("k") == b"v"
    with open_store("sqlite://", create=False) as memory:  # nothing to find in memory
        assert list(memory.list_keys()) == []


def test_hostile_table_and_metadata_names_cannot_inject_sql(tmp_path: Path) -> None:
    table = 'x"; DROP TABLE victim; --'
    db = tmp_path / "inject.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE victim (a)")
    names = ['a"b', "c'); DROP TABLE victim; --", "$.x", "d\\e", "[f]"]
    with SqliteStore(db, table=table) as store:
        for index, name in enumerate(names):
            store.set(f"k{index}", (b"", {name: index}))
        for index, name in enumerate(names):
            assert store.query_keys(**{name: index}) == [f"k{index}"]
            assert store.query_keys(**{name: Range(index, index + 1)}) == [f"k{index}"]
    with sqlite3.connect(db) as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert "victim" in tables and table in tables


def test_dynamic_indexes_are_used_and_survive_reconnect(tmp_path: Path) -> None:
    db = tmp_path / "idx.db"
    with SqliteStore(db) as store:
        store.set("a", (b"", {"year": 2000}))
    with SqliteStore(db) as store:
        store.set("b", (b"", {"year": 2001}))  # no "duplicate column" on reconnect
        store.set_metadata("a", {"year": 2005})  # index never goes stale
        assert store.query_keys(year=2005) == ["a"]
        assert store.query_keys(year=2000) == []
    with sqlite3.connect(db) as raw:
        plan = raw.execute(
            'EXPLAIN QUERY PLAN SELECT key FROM "store" '
            "WHERE json_extract(metadata, '$.\"year\"') = 2001"
        ).fetchall()
    assert any("INDEX" in str(row) for row in plan), plan


def test_static_index_creates_its_columns(tmp_path: Path) -> None:
    db = tmp_path / "static.db"
    with SqliteStore(db, index="static", index_columns=["kind"]) as store:
        store.set("a", (b"", {"kind": "x", "other": 1}))
        assert store.query_keys(kind="x") == ["a"]
    with sqlite3.connect(db) as raw:
        indexes = [
            row[0] for row in raw.execute("SELECT sql FROM sqlite_master WHERE type='index'")
        ]
    assert sum("kind" in (sql or "") for sql in indexes) == 1
    assert not any("other" in (sql or "") for sql in indexes)


def test_large_values_are_chunked_and_old_chunks_removed(tmp_path: Path) -> None:
    db = tmp_path / "chunks.db"
    with SqliteStore(db, inline_limit=10, chunk_size=16) as store:
        store.set("big", (b"x" * 100, {}))
        store.set("big", (b"y" * 50, {}))
        assert store.to_bytes("big") == b"y" * 50
        with store.get_data_range("big", 14, 40) as stream:
            assert stream.read() == b"y" * 26
        store.set("big", (b"small", {}))
        store.set("gone", (b"z" * 40, {}))
        store.delete("gone")
    with sqlite3.connect(db) as raw:
        assert raw.execute('SELECT COUNT(*) FROM "store__chunks"').fetchone() == (0,)


def test_a_reader_of_chunks_keeps_its_version_in_memory() -> None:
    # In memory, large values are chunks in the database: a reader keeps the chunk set
    # it started on, and the obsolete set goes once the reader is gone.
    with SqliteStore(inline_limit=1, chunk_size=4) as store:
        store.set("k", (b"a" * 40, {}))
        stream = store.get_data("k")
        assert stream.read(4) == b"aaaa"
        store.set("k", (b"b" * 40, {}))
        assert stream.read() == b"a" * 36
        stream.close()
        del stream
        store.set("other", (b"c" * 40, {}))  # a later write drops the released set
        chunks = store._conn().execute('SELECT count(*) FROM "store__chunks"').fetchone()
        assert chunks == (20,)  # 10 chunks of "k" and 10 of "other"
        assert store.to_bytes("k") == b"b" * 40


def test_a_reader_of_a_value_file_keeps_its_version(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "files.db", inline_limit=10) as store:
        store.set("k", (b"a" * 40, {}))
        stream = store.get_data("k")
        assert stream.read(4) == b"aaaa"
        store.set("k", (b"b" * 40, {}))
        assert stream.read() == b"a" * 36  # the old file stays readable while open
        stream.close()
        assert store.to_bytes("k") == b"b" * 40
        assert len(os.listdir(tmp_path / "files.db-values" / "store")) == 1  # the old one is gone


def test_value_files_follow_transactions(tmp_path: Path) -> None:
    values = tmp_path / "t.db-values" / "store"
    with SqliteStore(tmp_path / "t.db", inline_limit=10) as store:
        store.set("keep", (b"k" * 50, {}))
        with pytest.raises(RuntimeError), store.transaction("rolled back"):
            store.set("new", (b"n" * 50, {}))
            store.set("keep", (b"x" * 50, {}))
            assert len(os.listdir(values)) == 3
            raise RuntimeError
        assert sorted(store.query_keys()) == ["keep"]
        assert store.to_bytes("keep") == b"k" * 50
        assert len(os.listdir(values)) == 1
        with store.transaction("outer"):
            store.set("a", (b"a" * 50, {}))
            with pytest.raises(RuntimeError), store.transaction("inner, rolled back"):
                store.set("b", (b"b" * 50, {}))
                store.delete("keep")
                raise RuntimeError
            store.delete("keep")
            assert len(os.listdir(values)) == 2  # keep's file waits for the commit
        assert store.query_keys() == ["a"]
        assert len(os.listdir(values)) == 1
        ranged = store.get("a").range(10, 20)
        assert ranged.read() == b"a" * 10
        ranged.close()


def test_unreferenced_value_files_are_swept_when_old(tmp_path: Path) -> None:
    values = tmp_path / "s.db-values" / "store"
    with SqliteStore(tmp_path / "s.db", inline_limit=10) as store:
        store.set("k", (b"k" * 50, {}))
    (values / "orphan-old").write_bytes(b"left by a crash")
    (values / "orphan-new.tmp").write_bytes(b"a writer may still commit this")
    os.utime(values / "orphan-old", (0, 0))
    with SqliteStore(tmp_path / "s.db", inline_limit=10) as store:
        assert store.to_bytes("k") == b"k" * 50
    assert sorted(os.listdir(values)) != [] and "orphan-old" not in os.listdir(values)
    assert "orphan-new.tmp" in os.listdir(values)


@pytest.mark.parametrize(("secure", "expected"), [(False, 2), (True, 1)])
def test_secure_delete_setting(tmp_path: Path, secure: bool, expected: int) -> None:
    store = SqliteStore(tmp_path / "s.db", secure_delete=secure)
    with store:
        store.set("k", (b"x" * 100_000, {}))
        store.delete("k")
        assert store._conn().execute("PRAGMA secure_delete").fetchone()[0] == expected


def test_multiset_over_large_values_removes_them(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "m.db", inline_limit=10) as store:
        store.set("big", (b"b" * 50, {}))
        assert len(os.listdir(tmp_path / "m.db-values" / "store")) == 1
        store.multiset(["big", "small"], [(b"1", {}), (b"2", {})])
        assert store.to_bytes("big") == b"1"
        assert os.listdir(tmp_path / "m.db-values" / "store") == []
    with SqliteStore(inline_limit=10, chunk_size=8) as memory:
        memory.set("big", (b"b" * 50, {}))
        memory.multiset(["big"], [(b"1", {})])
        chunks = memory._conn().execute('SELECT count(*) FROM "store__chunks"').fetchone()
        assert chunks == (0,)


def test_tables_with_text_version_tokens_keep_working(tmp_path: Path) -> None:
    """Tables made before versions became integers hold text tokens; both kinds coexist."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            'CREATE TABLE "store" (key TEXT PRIMARY KEY NOT NULL, metadata TEXT NOT NULL, '
            "created REAL NOT NULL, modified REAL NOT NULL, version TEXT NOT NULL, "
            "size INTEGER NOT NULL, blob TEXT, data BLOB)"
        )
        db.execute(
            'INSERT INTO "store" VALUES (?, ?, ?, ?, ?, ?, NULL, ?)',
            ("old", '{"m": 1}', 1.0, 2.0, "0123abcd-1f", 3, b"old"),
        )
    with SqliteStore(path) as store:
        assert store.get("old").version == "0123abcd-1f"
        with pytest.raises(ConflictError):
            store.set("old", (b"x", {}), if_version="1f")
        store.set("old", (b"new", {}), if_version="0123abcd-1f")
        store.multiset(["a", "b"], [(b"1", {}), (b"2", {})])
        versions = [store.get(key).version for key in ("old", "a", "b")]
        assert all(isinstance(v, str) for v in versions) and len(set(versions)) == 3
        store.update_metadata("a", {"n": 1}, if_version=versions[1])
        with pytest.raises(ConflictError):
            store.delete("b", if_version=versions[1])
        store.delete("b", if_version=versions[2])


def test_versions_are_stored_as_integers_and_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore(path) as store:
        store.set("k", (b"v", {}))
        version = store.get("k").version
    with sqlite3.connect(path) as db:
        stored = db.execute('SELECT version FROM "store" WHERE key=?', ("k",)).fetchone()[0]
    assert isinstance(stored, int) and str(stored) == version


def _traced(store: SqliteStore) -> list[str]:
    """The statements the calling thread's connection runs from now on."""
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    return statements


def _verbs(statements: list[str]) -> list[str]:
    return [sql.split()[0] for sql in statements]


def test_a_plain_write_is_one_statement(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "q.db", event_manager=EventManager()) as store:
        # The first write of "n" creates its index; 'odd"name' can have none.
        store.set("a", (b"old", {"n": 1, 'odd"name': 0}))
        before = store.get("a")
        statements = _traced(store)
        store.set("a", (b"new", {"n": 2, 'odd"name': 0}))
        store.set("b", (b"", {}))
        store.delete("b")
        assert _verbs(statements) == ["INSERT", "INSERT", "DELETE"]
        after = store.get("a")
        assert (after.created, store.to_bytes("a"), after.metadata) == (
            before.created,
            b"new",
            {"n": 2, 'odd"name': 0},
        )
        assert after.version != before.version and after.size == 3
        assert after.modified >= before.modified
        assert not store.exists("b")


def test_writes_take_the_full_path_when_one_statement_cannot_do_it(tmp_path: Path) -> None:
    manager = EventManager()
    with SqliteStore(tmp_path / "f.db", event_manager=manager) as store:
        statements = _traced(store)
        store.set("a", (b"1", {"new name": 1}))  # an index to create
        assert _verbs(statements)[0] == "BEGIN"
        with store.transaction("t"):
            inside = _traced(store)  # a transaction has a connection of its own
            store.set("a", (b"2", {}))
            store.delete("a")
            assert "BEGIN" not in _verbs(inside) and "SAVEPOINT" in _verbs(inside)
        heard: list[object] = []
        manager.connect(StoreKeyEvent, heard.append)
        statements.clear()
        store.set("b", (b"1", {}))
        store.delete("b")
        assert _verbs(statements).count("BEGIN") == 2 and len(heard) == 2


@pytest.mark.parametrize("location", ["file", "memory"])
def test_plain_writes_over_values_stored_outside_their_row_clean_them_up(
    tmp_path: Path, location: str
) -> None:
    path = str(tmp_path / "o.db") if location == "file" else ":memory:"
    with SqliteStore(path, inline_limit=10, chunk_size=8, event_manager=EventManager()) as store:
        conn = store._conn()
        store.set("big", (b"b" * 50, {"n": 1}))
        store.set("gone", (b"g" * 50, {}))
        statements = _traced(store)
        store.set("big", (b"small", {}))
        store.delete("gone")
        # The one statement changed nothing; the full path ran and cleaned up.
        assert _verbs(statements).count("BEGIN") == 2
        assert store.to_bytes("big") == b"small" and store.get_metadata("big") == {}
        assert not store.exists("gone")
        assert conn.execute('SELECT count(*) FROM "store__chunks"').fetchone() == (0,)
        if location == "file":
            assert os.listdir(tmp_path / "o.db-values" / "store") == []
        with pytest.raises(KeyError):
            store.delete("gone")


def test_conditional_writes_are_one_statement_and_still_refuse(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "c.db", event_manager=EventManager()) as store:
        statements = _traced(store)
        store.set("a", (b"1", {}), if_exists=False)
        version = store.get("a").version
        store.set("a", (b"2", {}), if_version=version)
        store.set("a", (b"3", {}), if_exists=True)
        current = store.get("a").version
        store.delete("a", if_version=current)
        assert _verbs(statements) == ["INSERT", "SELECT", "UPDATE", "UPDATE", "SELECT", "DELETE"]
        store.set("b", (b"kept", {"n": 1}))
        kept = store.get("b")
        refused = [
            {"if_exists": False},
            {"if_version": version},
            {"if_version": kept.version, "if_exists": False},
        ]
        for conditions in refused:
            with pytest.raises(ConflictError):
                store.set("b", (b"lost", {}), **conditions)
        statements.clear()
        with pytest.raises(ConflictError, match="already exists"):
            store.set("b", (b"lost", {}), if_exists=False)
        assert _verbs(statements) == ["INSERT"]
        with pytest.raises(ConflictError):
            store.set("missing", (b"lost", {}), if_exists=True)
        with pytest.raises(ConflictError):
            store.delete("b", if_version=version)
        after = store.get("b")
        assert (after.version, store.to_bytes("b"), after.metadata) == (
            kept.version,
            b"kept",
            {"n": 1},
        )
        assert not store.exists("missing") and not store.exists("a")


def test_conditional_writes_over_a_value_file_take_the_full_path(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "v.db", inline_limit=10, event_manager=EventManager()) as store:
        store.set("big", (b"b" * 50, {}))
        store.set("big", (b"small", {}), if_version=store.get("big").version)
        store.set("other", (b"o" * 50, {}))
        store.delete("other", if_version=store.get("other").version)
        assert store.to_bytes("big") == b"small" and not store.exists("other")
        assert os.listdir(tmp_path / "v.db-values" / "store") == []


def test_an_index_rolled_back_with_its_transaction_is_created_again(tmp_path: Path) -> None:
    def indexes(store: SqliteStore) -> int:
        sql = "SELECT count(*) FROM sqlite_master WHERE type='index' AND name LIKE 'store__md_%'"
        count: int = store._conn().execute(sql).fetchone()[0]
        return count

    with SqliteStore(tmp_path / "r.db", event_manager=EventManager()) as store:
        with pytest.raises(RuntimeError), store.transaction("rolled back"):
            store.set("a", (b"", {"year": 1}))
            raise RuntimeError
        with store.transaction("outer"):
            with pytest.raises(RuntimeError), store.transaction("savepoint"):
                store.set("b", (b"", {"month": 1}))
                raise RuntimeError
        assert indexes(store) == 0
        store.set("c", (b"", {"year": 2, "month": 2}))
        assert indexes(store) == 2


def _child_calls(
    store: SqliteStore,
    parent_conn: sqlite3.Connection,
    result: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    # The store came through fork with this thread's connection of the parent in it.
    own = store._conn() is not parent_conn
    store.set("child", (b"from the child", {}))
    result.put((own, store.to_bytes("parent")))


def test_a_forked_child_opens_connections_of_its_own(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "f.db") as store:
        store.set("parent", (b"from the parent", {}))
        parent_conn = store._conn()
        context = multiprocessing.get_context("fork")
        result = context.Queue()
        child = context.Process(target=_child_calls, args=(store, parent_conn, result))
        child.start()
        assert result.get(timeout=60) == (True, b"from the parent")
        child.join(60)
        assert child.exitcode == 0
        assert store._conn() is parent_conn
        assert store.to_bytes("child") == b"from the child"
