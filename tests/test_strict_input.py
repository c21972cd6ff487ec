"""Regression tests for strict input (issue 14, items 9, 10, 12, 13, 15 and 19).

Each test reproduces one reported case exactly. Wrong argument types are asserted as
``TypeError`` (``InvalidArgumentError`` is one), so that every test also runs, and
fails for the reported reason, against a version without the fixes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import atomic_store
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import (
    CachedStore,
    JoinedStore,
    MountedStore,
    SimpleAuthStore,
    make_encoder,
)
from storekeeper.errors import InvalidKeyError, InvalidMetadataError
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, In, Prefix, Range, StoreUpdateEvent
from storekeeper.testing.children import child


class _Alice(SimpleAuthStore):
    def connect(self, credentials: Any = None) -> None:
        super().connect(credentials or {"username": "alice", "password": "pw"})


def _auth(tmp_path: Path) -> AbstractStore:
    inner = child("sqlite", tmp_path, "auth")
    store = _Alice(inner, make_encoder(b"pepper", n=2))
    with inner:  # user tools need the user store connected
        store.add_user("alice", "pw")
    return store


#: One factory per backend and composite kind the items name.
FACTORIES: dict[str, Callable[[Path], AbstractStore]] = {
    "memory": lambda tmp: child("memory", tmp, "m"),
    "file": lambda tmp: child("file", tmp, "f"),
    "sqlite": lambda tmp: child("sqlite", tmp, "s"),
    "sqlite-memory": lambda tmp: SqliteStore(":memory:"),
    "joined": lambda tmp: JoinedStore([child("sqlite", tmp, "j1"), child("memory", tmp, "j2")]),
    "mounted": lambda tmp: MountedStore("", child("memory", tmp, "m1"), child("file", tmp, "m2")),
    "cached": lambda tmp: CachedStore(child("sqlite", tmp, "src"), child("memory", tmp, "c")),
    "auth": _auth,
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    with FACTORIES[request.param](tmp_path) as opened:
        yield opened


def _snapshot(store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any], str | None]:
    value = store.get(key)
    return value.data.read(), value.metadata, value.version


# -- item 9: preconditions of the wrong type -----------------------------------------------
@pytest.mark.parametrize("if_exists", [0, 1, "no", "", 1.0, []])
def test_if_exists_of_the_wrong_type_writes_nothing(store: AbstractStore, if_exists: Any) -> None:
    store.set("k", (b"old", {"n": 1}))
    before = _snapshot(store, "k")
    writes: list[Callable[[], object]] = [
        lambda: store.set("k", (b"new", {}), if_exists=if_exists),
        lambda: store.set("new", (b"new", {}), if_exists=if_exists),
        lambda: store.set_data("k", b"new", if_exists=if_exists),
        lambda: store.set_metadata("k", {"n": 2}, if_exists=if_exists),
    ]
    for write in writes:
        with pytest.raises(TypeError, match="if_exists"):
            write()
    assert _snapshot(store, "k") == before
    assert not store.exists("new")


@pytest.mark.parametrize("if_version", [3, b"v", 0, False])
def test_if_version_of_the_wrong_type_writes_nothing(store: AbstractStore, if_version: Any) -> None:
    store.set("k", (b"old", {"n": 1}))
    before = _snapshot(store, "k")
    writes: list[Callable[[], object]] = [
        lambda: store.set("k", (b"new", {}), if_version=if_version),
        lambda: store.set_data("k", b"new", if_version=if_version),
        lambda: store.set_metadata("k", {"n": 2}, if_version=if_version),
        lambda: store.update_metadata("k", {"n": 2}, if_version=if_version),
        lambda: store.delete("k", if_version=if_version),
    ]
    for write in writes:
        with pytest.raises(TypeError, match="if_version"):
            write()
    assert _snapshot(store, "k") == before


def test_sqlite_refuses_if_exists_zero_on_both_write_paths(tmp_path: Path) -> None:
    """The one-statement path (nobody listening) and the full one (a listener) agree."""
    manager = EventManager()
    with SqliteStore(tmp_path / "s.db", event_manager=manager) as store:
        store.set("k", (b"old", {}))
        with pytest.raises(TypeError):
            store.set("k", (b"quick", {}), if_exists=0)
        manager.connect(StoreUpdateEvent, lambda event: None)
        with pytest.raises(TypeError):
            store.set("k", (b"full", {}), if_exists=0)
        assert store.to_bytes("k") == b"old"


def test_sqlite_large_value_with_a_bad_precondition_leaves_no_value_file(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db", inline_limit=16) as store:
        with pytest.raises(TypeError):
            store.set("k", (b"x" * 100_000, {}), if_exists="no")
        assert not store.exists("k")
    files = tmp_path / "s.db-values"
    assert not files.exists() or not [path for path in files.rglob("*") if path.is_file()]


# -- item 10: SQLite queries give Python's answers -----------------------------------------
@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "q.db") as store:
        yield store


def test_sqlite_query_on_strings_with_nul(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.set("nul", (b"", {"s": "a\x00b"}))
    store.set("plain", (b"", {"s": "a"}))
    assert store.query_keys(s="a\x00b") == ["nul"]
    assert store.query_keys(s="a") == ["plain"]
    assert [key for key, _ in store.query(s="a\x00b")] == ["nul"]
    assert store.query_keys(s=In(["a\x00b"])) == ["nul"]
    assert sorted(store.query_keys(s=Prefix("a\x00"))) == ["nul"]
    assert store.query_keys(s=Range("a\x00a", "a\x00c")) == ["nul"]
    assert store.query_keys(s=Range("a", "a\x00c", include_low=False)) == ["nul"]


def test_sqlite_query_on_big_integers(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.set("big", (b"", {"n": 2**64 + 1}))
    store.set("float", (b"", {"n": float(2**64)}))
    assert store.query_keys(n=Range(0, 2**70)) == ["big", "float"]
    assert store.query_keys(n=float(2**64)) == ["float"]
    assert store.query_keys(n=2**64 + 1) == ["big"]
    assert store.query_keys(n=Range(2**64, 2**64 + 1)) == ["float"]
    assert store.query_keys(n=Range(2**64, 2**64 + 1, include_low=False, include_high=True)) == [
        "big"
    ]


def test_query_compares_booleans_as_python_does(store: AbstractStore) -> None:
    """``True == 1 == 1.0`` in exact matches; Range never takes a boolean for a number."""
    store.multiset(["t", "i", "f"], [(b"", {"v": True}), (b"", {"v": 1}), (b"", {"v": 1.0})])
    assert sorted(store.query_keys(v=1)) == ["f", "i", "t"]
    assert sorted(store.query_keys(v=True)) == ["f", "i", "t"]
    assert sorted(store.query_keys(v=Range(0, 2))) == ["f", "i"]


# -- item 12: metadata with non-str keys below the top -------------------------------------
@pytest.mark.parametrize(
    "metadata",
    [{"a": {1: "x"}}, {"a": {1: "x", "1": "y"}}, {"a": [{"b": {None: 1}}]}, {"a": {(1,): 2}}],
)
def test_nested_non_str_metadata_keys_are_refused(
    store: AbstractStore, metadata: dict[str, Any]
) -> None:
    store.set("k", (b"old", {"n": 1}))
    before = _snapshot(store, "k")
    with pytest.raises(InvalidMetadataError):
        store.set("k", (b"new", metadata))
    with pytest.raises(InvalidMetadataError):
        store.set_metadata("k", metadata)
    with pytest.raises(InvalidMetadataError):
        store.update_metadata("k", metadata)
    assert _snapshot(store, "k") == before


# -- item 13: select, query values, any metadata name ---------------------------------------
def test_select_given_as_a_str_is_refused(store: AbstractStore) -> None:
    store.set("k", (b"", {"abc": 1, "a": 2}))
    with pytest.raises(TypeError, match="select"):
        store.query("abc")
    with pytest.raises(TypeError, match="select"):
        store.get_metadata("k", "abc")
    with pytest.raises(TypeError, match="select"):
        store.multiget_metadata(["k"], "abc")


@pytest.mark.parametrize("value", [{1, 2}, b"x", lambda: 1, float("nan"), "\udc80"])
def test_query_values_that_are_not_json_are_refused(store: AbstractStore, value: Any) -> None:
    store.set("k", (b"", {"v": 1}))
    with pytest.raises(InvalidMetadataError):
        store.query_keys(v=value)
    with pytest.raises(InvalidMetadataError):
        store.query(v=value)


def test_any_metadata_name_can_be_queried(store: AbstractStore) -> None:
    store.set("k", (b"", {"select": 1, "self": 2, "two words": 3}))
    store.set("other", (b"", {"select": 0}))
    assert store.query_keys(select=1) == ["k"]
    assert store.query_keys({"select": 1, "self": 2}) == ["k"]
    assert store.query(["self"], {"select": 1}) == [("k", {"self": 2})]
    assert store.query(None, {"two words": 3}) == [("k", {"select": 1, "self": 2, "two words": 3})]
    assert store.query_keys({"self": 2}, select=1) == ["k"]
    with pytest.raises(TypeError, match="twice"):
        store.query_keys({"select": 1}, select=1)


# -- item 15: lone surrogates ------------------------------------------------------------
def test_lone_surrogates_in_keys_are_invalid_keys(store: AbstractStore) -> None:
    store.set("k", (b"old", {}))
    with pytest.raises(InvalidKeyError):
        store.set("\udc80", (b"", {}))
    with pytest.raises(InvalidKeyError):
        store.get("\udc80")
    with pytest.raises(InvalidKeyError):
        store.multiset(["k", "x\udc80"], [(b"new", {}), (b"", {})])
    assert store.to_bytes("k") == b"old"


@pytest.mark.parametrize("metadata", [{"a": "\udc80"}, {"\udc80": 1}, {"a": {"\ud800": [1]}}])
def test_lone_surrogates_in_metadata_are_invalid_metadata(
    store: AbstractStore, metadata: dict[str, Any]
) -> None:
    with pytest.raises(InvalidMetadataError):
        store.set("k", (b"", metadata))
    assert not store.exists("k")


# -- item 19: atomic_store's folder, glob's pattern ---------------------------------------
def test_atomic_store_names_a_missing_folder_at_open(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "s.json"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_store.open(path, default={})
    assert caught.value.filename == str(tmp_path / "missing" / "dir")
    assert "folder" in str(caught.value)


def test_glob_says_that_a_pattern_is_a_str(store: AbstractStore) -> None:
    with pytest.raises(TypeError, match="pattern is a str"):
        store.glob(5)  # type: ignore[arg-type]


def test_filesystem_metadata_surrogate_is_not_a_unicode_error(tmp_path: Path) -> None:
    """The reported case: FileSystemStore raised UnicodeEncodeError from deep inside."""
    init_shared_store(tmp_path / "fs")
    store = FileSystemStore(tmp_path / "fs")
    with store, pytest.raises(InvalidMetadataError):
        store.set("k", (b"", {"a": "\udc80"}))


def test_sqlite_key_surrogate_is_not_a_unicode_error() -> None:
    with SqliteStore(":memory:") as store, pytest.raises(InvalidKeyError):
        store.set("\udc80", (b"", {}))


def test_memory_store_refuses_what_other_backends_cannot_hold() -> None:
    with DictMemoryStore() as store, pytest.raises(InvalidMetadataError):
        store.set("k", (b"", {"a": "\udc80"}))


def test_sqlite_rows_with_nul_strings_keep_indexed_queries_exact(tmp_path: Path) -> None:
    """A second path: the rows as raw SQLite holds them, and a fresh store's answer."""
    path = tmp_path / "idx.db"
    with SqliteStore(path) as store:
        store.multiset(
            ["a", "b", "c"],
            [(b"", {"s": "x\x00y"}), (b"", {"s": "x"}), (b"", {"s": "x\x00"})],
        )
    conn = sqlite3.connect(path)
    texts = [json.loads(text)["s"] for (text,) in conn.execute("SELECT metadata FROM store")]
    conn.close()
    assert sorted(texts) == ["x", "x\x00", "x\x00y"]
    with SqliteStore(path) as fresh:
        assert fresh.query_keys(s="x") == ["b"]
        assert fresh.query_keys(s="x\x00") == ["c"]
        assert sorted(fresh.query_keys(s=Range("x", "x\x00z"))) == ["a", "b", "c"]
        assert fresh.query_keys(s=Range("x\x00", "x\x00z", include_low=False)) == ["a"]
