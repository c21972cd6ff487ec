"""FileSystemStore with a damaged record file (written through the file system, not the
store), and input no record can hold (lone surrogates), on every embedded backend."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from storekeeper.backends._fs_names import encode_key
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.errors import CorruptFileError, InvalidKeyError, InvalidMetadataError
from storekeeper.store import AbstractStore
from storekeeper.testing.children import KINDS, child

LONG = "long/" + "k" * 300  # stored under a hashed file name


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileSystemStore]:
    init_shared_store(tmp_path / "s")
    with FileSystemStore(tmp_path / "s", durable=False, inline_limit=10) as store:
        for key in ("a", "b", "c", LONG):
            store.set(key, (f"data of {key}".encode(), {"n": 1, "key": key}))
        yield store


def _damage(store: FileSystemStore, key: str) -> None:
    record = Path(store.path, "keys", encode_key(key))
    content = bytearray(record.read_bytes())
    content[-3] ^= 0xFF  # one flipped byte in the metadata: the checksum fails
    record.write_bytes(bytes(content))


def test_queries_go_on_past_a_damaged_record(
    store: FileSystemStore, caplog: pytest.LogCaptureFixture
) -> None:
    _damage(store, "b")
    with caplog.at_level(logging.WARNING):
        assert sorted(key for key, _ in store.query(n=1)) == sorted(["a", "c", LONG])
        assert sorted(store.query_keys(n=1)) == sorted(["a", "c", LONG])
    assert "'b'" in caplog.text and "damaged" in caplog.text
    assert store.info()["damaged_keys"] == ["b"]
    with pytest.raises(CorruptFileError, match="key 'b'"):
        store.get("b")
    assert store.to_bytes("a") == b"data of a"


def test_set_replaces_a_damaged_record(store: FileSystemStore) -> None:
    _damage(store, "b")
    _damage(store, LONG)
    store.set("b", (b"new", {"n": 2}))
    store.set(LONG, (b"new long", {"n": 2}))
    assert store.get("b").metadata == {"n": 2} and store.to_bytes(LONG) == b"new long"
    assert store.info()["damaged_keys"] == []
    with FileSystemStore(store.path) as again:
        assert again.to_bytes("b") == b"new"


def test_delete_removes_a_damaged_record(store: FileSystemStore) -> None:
    _damage(store, "b")
    store.delete("b")
    assert not store.exists("b") and "b" not in store.query_keys()
    assert store.info()["damaged_keys"] == []


def test_a_transaction_repairs_damaged_records(store: FileSystemStore) -> None:
    _damage(store, "a")
    _damage(store, "b")
    with store.transaction():
        store.set("a", (b"fixed", {}))
        store.delete("b")
        store.set("c", (b"also", {}))
    assert store.to_bytes("a") == b"fixed" and not store.exists("b")
    assert store.info()["damaged_keys"] == []


def test_writes_that_keep_part_of_a_damaged_record_refuse(store: FileSystemStore) -> None:
    _damage(store, "b")
    damaged = Path(store.path, "keys", "b").read_bytes()
    for write in (
        lambda: store.set_metadata("b", {"x": 1}),
        lambda: store.set_data("b", b"x"),
        lambda: store.update_metadata("b", {"x": 1}),
    ):
        with pytest.raises(CorruptFileError, match="key 'b'"):
            write()
    assert Path(store.path, "keys", "b").read_bytes() == damaged


# -- lone surrogates (issue 14, item 15) ---------------------------------------------------
@pytest.fixture(params=KINDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    with child(request.param, tmp_path, "s") as store:
        store.set("k", (b"kept", {"a": 1}))
        yield store


@pytest.mark.parametrize(
    "metadata", [{"a": "\udc80"}, {"\ud800": 1}, {"a": ["ok", {"b": "x\udfff"}]}]
)
def test_metadata_with_lone_surrogates_is_refused(
    any_store: AbstractStore, metadata: dict[str, object]
) -> None:
    for write in (
        lambda: any_store.set("k", (b"new", metadata)),
        lambda: any_store.set_metadata("k", metadata),
        lambda: any_store.update_metadata("k", metadata),
        lambda: any_store.multiset(["k", "other"], [(b"", {}), (b"", metadata)]),
    ):
        with pytest.raises(InvalidMetadataError, match="surrogate"):
            write()
    assert any_store.get("k").metadata == {"a": 1} and any_store.to_bytes("k") == b"kept"
    assert any_store.query_keys() == ["k"]


@pytest.mark.parametrize("key", ["\udc80", "a\ud800b", "ok/\udfff"])
def test_keys_with_lone_surrogates_are_refused(any_store: AbstractStore, key: str) -> None:
    for call in (
        lambda: any_store.set(key, (b"", {})),
        lambda: any_store.get(key),
        lambda: any_store.exists(key),
        lambda: any_store.delete(key),
        lambda: any_store.multiset(["fine", key], [(b"", {}), (b"", {})]),
        lambda: any_store.multiget(["k", key]),
    ):
        with pytest.raises(InvalidKeyError, match="surrogate"):
            call()
    assert any_store.query_keys() == ["k"]
