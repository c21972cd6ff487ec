"""The shared conformance suite every store backend and composite must pass.

Subclass :class:`StoreTests` (also importable from :mod:`storekeeper.testing`) in a test
module and implement :meth:`StoreTests.create_store`; pytest then runs every documented
behaviour of the store API against the store::

    class TestMyStore(StoreTests):
        def create_store(self, tmp_path, event_manager):
            return MyStore(tmp_path / "db", event_manager=event_manager)

The tests here cover the store API itself: connection, get/set/delete and their
multi-key forms, partial writes, streaming, persistence and events. :class:`StoreTests`
also mixes in:

- :class:`~storekeeper.testing.queries.QueryTests`: partial reads, metadata queries
  and ``glob``;
- :class:`~storekeeper.testing.transactions.TransactionTests`: versions, conditional
  writes and transactions;
- :class:`~storekeeper.testing.listing.ListingTests`: ``list_keys`` by prefix and
  delimiter, against a model;
- :class:`~storekeeper.testing.arguments.ArgumentTests` and
  :class:`~storekeeper.testing.waiting.NoWaitTests`: batch and buffer arguments, and
  ``transaction(wait=False)``;

- :class:`~storekeeper.testing.events.EventConformance`: which events each write
  emits, and when (after the commit; held back by a transaction);
- :class:`~storekeeper.testing.isolation.IsolationTests`: transactions belong to one
  thread or asyncio task, and read-modify-write transactions lose no update;
- :class:`~storekeeper.testing.versions.ValueVersionTests`: a value or stream read
  before an overwrite keeps its data, and concurrent readers see whole versions;
- :class:`~storekeeper.testing.strict.StrictInputTests`: wrong argument types and
  hostile keys, metadata and query values are refused before anything is written;
- :class:`~storekeeper.testing.model.ModelTests`: a Hypothesis state machine comparing
  the store with a dict (short in ``make test``, long in ``make soak``);
- :class:`~storekeeper.testing.crossprocess.CrossProcessTests`: readers in other
  processes never see half of a transaction, while a writer is frozen or killed;
- :class:`~storekeeper.testing.raw.RawStorageTests`: what ``set`` writes is found in
  the store's storage read without the store, and the other way round, so that a bug
  symmetric in ``set`` and ``get`` cannot pass.

What applies is decided by the store's declared ``capabilities``
(:class:`~storekeeper.store.StoreCapabilities`): a ``persistent`` store must survive
:meth:`StoreTests.reopen_store`, and a ``cross_process`` one the multi-process checks.

Hooks and settings a subclass may override:

- :meth:`StoreTests.create_store` (required): a new, empty, unconnected store;
- :meth:`StoreTests.reopen_store` (required for a ``persistent`` store): a new
  instance on the same data;
- :meth:`~storekeeper.testing.raw.RawStorageTests.raw_write` and ``raw_read``
  (required), or ``raw_unavailable`` set to the reason for a store with no storage
  outside the store object;
- :meth:`~storekeeper.testing.crossprocess.CrossProcessTests.store_url` or
  :meth:`~storekeeper.testing.crossprocess.CrossProcessTests.process_opener`: how
  another process opens the same data (for a ``cross_process`` store);
- ``large_value_size`` and ``kept_value_size``: the sizes of the large-value checks;
- ``versions_before_commit`` (see :class:`~storekeeper.testing.transactions.TransactionTests`):
  ``False`` for a store whose ``set`` returns ``None`` inside a transaction;
- :meth:`~storekeeper.testing.model.ModelTests.create_model_store` and
  ``model_examples`` / ``model_steps`` (``soak_model_examples`` / ``soak_model_steps``):
  the store and the length of the model runs.

The fixtures ``store`` (connected, disconnected afterwards), ``event_manager`` (a fresh
:class:`~storekeeper.events.EventManager` per test) and ``events`` (a recorder of the
store events on it) are available to a subclass's own tests.
"""

from __future__ import annotations

import abc
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper.errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidValueError,
    KeyNotFoundError,
    NotConnectedError,
)
from storekeeper.events import BaseEvent, EventManager
from storekeeper.store import (
    AbstractStore,
    BytesValue,
    StoreDeleteEvent,
    StoreEvent,
    StoreModificationEvent,
    StoreProgressEndEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.testing.arguments import ArgumentTests
from storekeeper.testing.crossprocess import CrossProcessTests
from storekeeper.testing.events import EventConformance
from storekeeper.testing.head import HeadTests
from storekeeper.testing.isolation import IsolationTests
from storekeeper.testing.listing import ListingTests
from storekeeper.testing.model import ModelTests
from storekeeper.testing.queries import QueryTests
from storekeeper.testing.raw import RawStorageTests
from storekeeper.testing.strict import StrictInputTests
from storekeeper.testing.transactions import TransactionTests
from storekeeper.testing.versions import ValueVersionTests
from storekeeper.testing.waiting import NoWaitTests

__all__ = ["WEIRD_KEYS", "StoreTests"]

#: Keys every backend must store and list faithfully, however it maps them.
WEIRD_KEYS = [
    "../x",
    "/abs",
    "a/../../b",
    ".",
    "..",
    ".hidden",
    "CON",
    "con",
    "nul.txt",
    "a" * 300,
    "é" * 200,
    "日本語/キー",
    "with space",
    "back\\slash",
    "%41%2F",
    "a:b*c?d<e>f|g\"h'",
    "trailing.",
    "trailing ",
    "line\nbreak",
    "tab\tkey",
    "emoji 🎉",
    "Upper",
    "upper",
    "x.data",
    "x.metadata",
]

BAD_KEYS: list[Any] = ["", "a\x00b", 123, None, b"bytes", ("t",)]


def _circular() -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "loop"}
    metadata["self"] = [metadata]
    return metadata


BAD_METADATA: list[Any] = [
    _circular(),
    {1: "int key"},
    {"a": object()},
    {"a": float("nan")},
    {"a": float("inf")},
    {"a": b"bytes"},
    {"a": {1, 2}},
    "not a dict",
    ["a", 1],
]


class _Recorder:
    """Collects the store events a manager emits, in order."""

    def __init__(self, manager: EventManager, cls: type[BaseEvent] = StoreEvent) -> None:
        self.events: list[BaseEvent] = []
        manager.connect(cls, self.events.append)

    def of(self, cls: type[BaseEvent]) -> list[Any]:
        return [event for event in self.events if isinstance(event, cls)]

    def clear(self) -> None:
        self.events.clear()


class _FailingReader(io.RawIOBase):
    """A binary stream that yields some bytes and then raises."""

    def __init__(self, good: bytes) -> None:
        super().__init__()
        self._good = good

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._good:
            chunk, self._good = self._good, b""
            return chunk
        raise OSError("the source failed mid-read")


class StoreTests(
    QueryTests,
    TransactionTests,
    ArgumentTests,
    EventConformance,
    IsolationTests,
    ListingTests,
    CrossProcessTests,
    ValueVersionTests,
    StrictInputTests,
    ModelTests,
    RawStorageTests,
    NoWaitTests,
    HeadTests,
    abc.ABC,
):
    """Conformance tests for a writable store; subclass and implement ``create_store``."""

    #: Size of the "large value" round trip; backends may raise it.
    large_value_size = 3 * 1024 * 1024 + 17

    # -- hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    def create_store(self, tmp_path: Path, event_manager: EventManager) -> AbstractStore:
        """Return a new, empty, *unconnected* store using *event_manager*."""

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> AbstractStore:
        """Return a new unconnected instance on the same data (for stores whose
        capabilities declare ``persistent``)."""
        raise TypeError(f"{type(self).__name__}: the store is persistent; define reopen_store")

    @pytest.fixture
    def event_manager(self) -> EventManager:
        return EventManager()

    @pytest.fixture
    def store(self, tmp_path: Path, event_manager: EventManager) -> Iterator[AbstractStore]:
        store = self.create_store(tmp_path, event_manager)
        store.connect()
        yield store
        store.disconnect()

    @pytest.fixture
    def events(self, event_manager: EventManager) -> _Recorder:
        return _Recorder(event_manager)

    # -- connection --------------------------------------------------------------------
    def test_operations_need_a_connection(
        self, tmp_path: Path, event_manager: EventManager
    ) -> None:
        store = self.create_store(tmp_path, event_manager)
        assert not store.is_connected()
        with pytest.raises(NotConnectedError):
            store.get("a")
        with pytest.raises(NotConnectedError):
            store.head("a")
        with pytest.raises(NotConnectedError):
            store.set("a", (b"x", {}))
        with store:
            assert store.is_connected()
            store.set("a", (b"x", {}))
        assert not store.is_connected()

    def test_reconnect_keeps_working(self, store: AbstractStore) -> None:
        store.set("a", (b"1", {"n": 1}))
        store.disconnect()
        store.connect()
        store.set("b", (b"2", {}))
        assert store.to_bytes("b") == b"2"

    def test_info(self, store: AbstractStore) -> None:
        info = store.info()
        assert info["readonly"] is False
        assert info["type"] == type(store).__name__

    # -- reading and writing -------------------------------------------------------------
    def test_missing_key(self, store: AbstractStore) -> None:
        for call in (store.get, store.get_data, store.get_metadata, store.to_bytes, store.delete):
            with pytest.raises(KeyNotFoundError) as info:
                call("missing")
            assert isinstance(info.value, KeyError)
        assert store.exists("missing") is False

    def test_set_and_get(self, store: AbstractStore) -> None:
        before = time.time()
        store.set("k", (b"hello", {"title": "Greeting", "n": 1, "tags": ["a"], "x": None}))
        value = store.get("k")
        with value.data as stream:
            assert stream.read() == b"hello"
        assert value.metadata == {"title": "Greeting", "n": 1, "tags": ["a"], "x": None}
        assert value.size == 5
        assert value.created is not None and value.modified is not None
        assert before - 1 <= value.created <= value.modified <= time.time() + 1
        assert isinstance(value.version, str) and value.version

    def test_value_unpacks_as_pair_and_streams_are_fresh(self, store: AbstractStore) -> None:
        store.set("k", (b"abc", {"a": 1}))
        value = store.get("k")
        data, metadata = value
        assert data.read() == b"abc"
        data.close()
        assert metadata == {"a": 1}
        assert len(value) == 2 and value[1] == {"a": 1}
        first, second = value.data, value.data
        assert first.read(1) == b"a" and second.read() == b"abc"
        first.close()
        second.close()

    def test_metadata_is_copied_in_and_out(self, store: AbstractStore) -> None:
        given: dict[str, Any] = {"list": [1, 2], "d": {"x": 1}}
        store.set("k", (b"", given))
        given["list"].append(3)
        given["new"] = True
        out = store.get_metadata("k")
        assert out == {"list": [1, 2], "d": {"x": 1}}
        out["list"].append(99)
        out["d"]["x"] = 2
        assert store.get_metadata("k") == {"list": [1, 2], "d": {"x": 1}}
        value = store.get("k")
        value.metadata["list"].append(5)
        assert value.metadata == {"list": [1, 2], "d": {"x": 1}}

    def test_set_accepts_every_data_source(self, store: AbstractStore, tmp_path: Path) -> None:
        sources: dict[str, Any] = {
            "bytes": b"payload",
            "bytearray": bytearray(b"payload"),
            "memoryview": memoryview(b"payload"),
            "stream": io.BytesIO(b"payload"),
            "chunks": [b"pay", b"", b"load"],
            "generator": (part for part in (b"pa", b"yload")),
            "value": BytesValue(b"payload", {}),
        }
        for name, source in sources.items():
            if name == "value":
                store.set(name, source)
            else:
                store.set(name, (source, None))
            assert store.to_bytes(name) == b"payload", name
            assert store.get_metadata(name) == {}, name

    def test_set_copies_a_value_between_keys(self, store: AbstractStore) -> None:
        store.set("a", (b"data", {"m": 1}))
        store.set("b", store.get("a"))
        assert store.to_bytes("b") == b"data"
        assert store.get_metadata("b") == {"m": 1}

    def test_user_stream_is_not_closed(self, store: AbstractStore) -> None:
        stream = io.BytesIO(b"abc")
        store.set("k", (stream, {}))
        assert not stream.closed

    def test_invalid_keys_are_rejected(self, store: AbstractStore) -> None:
        store.set("good", (b"keep", {"a": 1}))
        for key in BAD_KEYS:
            with pytest.raises(InvalidKeyError):
                store.set(key, (b"x", {}))
            with pytest.raises(InvalidKeyError):
                store.get(key)
            with pytest.raises(InvalidKeyError):
                store.exists(key)
            with pytest.raises(InvalidKeyError):
                store.delete(key)
        for bad in ["", "a\x00b", 7, None]:
            with pytest.raises(InvalidKeyError):
                store.multiset(["ok", bad], [(b"1", {}), (b"2", {})])  # type: ignore[list-item]
        with pytest.raises(InvalidMetadataError):
            store.multiset(["ok", "ok2"], [(b"1", {}), (b"2", {"x": object()})])
        assert store.query_keys() == ["good"]

    def test_multiset_gives_each_key_its_own_version_and_times(self, store: AbstractStore) -> None:
        before = time.time()
        store.multiset(["a", "b", "c"], [(b"1", {}), (b"22", None), (b"333", {"m": 1})])
        values = [store.get(key) for key in "abc"]
        assert [v.size for v in values] == [1, 2, 3]
        assert [store.get_metadata(key) for key in "abc"] == [{}, {}, {"m": 1}]
        assert len({v.version for v in values}) == 3
        for value in values:
            assert value.created is not None and value.modified is not None
            assert before - 1 <= value.created <= value.modified <= time.time() + 1
        store.set("a", (b"x", {}), if_version=values[0].version)
        with pytest.raises(ConflictError):
            store.set("b", (b"x", {}), if_version=values[0].version)

    def test_weird_keys_round_trip(self, store: AbstractStore) -> None:
        for index, key in enumerate(WEIRD_KEYS):
            store.set(key, (key.encode(), {"i": index}))
        assert sorted(store.query_keys()) == sorted(WEIRD_KEYS)
        for index, key in enumerate(WEIRD_KEYS):
            assert store.to_bytes(key) == key.encode(), key
            assert store.get_metadata(key) == {"i": index}, key
        assert store.to_bytes("Upper") != store.to_bytes("upper")
        for key in WEIRD_KEYS:
            store.delete(key)
        assert store.query_keys() == []

    def test_bad_metadata_is_rejected_and_old_value_stays(self, store: AbstractStore) -> None:
        store.set("k", (b"old", {"a": 1}))
        for metadata in BAD_METADATA:
            with pytest.raises(InvalidMetadataError):
                store.set("k", (b"new", metadata))
            with pytest.raises(InvalidMetadataError):
                store.set_metadata("k", metadata)
            with pytest.raises(InvalidMetadataError):
                store.set("fresh", (b"new", metadata))
        with pytest.raises(InvalidMetadataError):
            store.update_metadata("k", {"b": object()})
        assert store.to_bytes("k") == b"old"
        assert store.get_metadata("k") == {"a": 1}
        assert not store.exists("fresh")

    def test_bad_data_is_rejected(self, store: AbstractStore) -> None:
        store.set("k", (b"old", {}))
        for data in ("text", 12, io.StringIO("text"), ["ok", b"x"]):
            with pytest.raises(InvalidValueError):
                store.set("k", (data, {}))
        with pytest.raises(InvalidValueError):
            store.set("k", b"not a pair")  # type: ignore[arg-type]
        assert store.to_bytes("k") == b"old"

    def test_failing_source_keeps_old_value(self, store: AbstractStore) -> None:
        store.set("k", (b"old", {"v": 1}))
        with pytest.raises(OSError, match="mid-read"):
            store.set("k", (_FailingReader(b"partial"), {"v": 2}))
        with pytest.raises(OSError, match="mid-read"):
            store.set_data("k", _FailingReader(b"partial"))
        with pytest.raises(OSError, match="mid-read"):
            store.set("new", (_FailingReader(b"partial"), {}))
        assert store.to_bytes("k") == b"old"
        assert store.get_metadata("k") == {"v": 1}
        assert not store.exists("new")

    def test_empty_value(self, store: AbstractStore) -> None:
        store.set("empty", (b"", {}))
        assert store.to_bytes("empty") == b""
        assert store.get("empty").size == 0

    def test_large_value_streams(self, store: AbstractStore) -> None:
        size = self.large_value_size
        chunk = bytes(range(256)) * 4096  # 1 MiB

        def produce() -> Iterator[bytes]:
            left = size
            while left:
                part = chunk[: min(left, len(chunk))]
                left -= len(part)
                yield part

        store.set("big", (produce(), {"size": size}))
        value = store.get("big")
        assert value.size == size
        total = 0
        for part in value.iterdata(buffer_size=65536):
            assert len(part) <= 65536
            total += len(part)
        assert total == size
        with store.get_data_range("big", size - 10, None) as stream:
            assert stream.read() == (chunk * 4)[size - 10 : size]

    # -- partial reads --------------------------------------------------------------------
    def test_get_data_range_is_end_exclusive(self, store: AbstractStore) -> None:
        store.set("k", (b"test2\n", {}))
        cases = {(1, 3): b"es", (None, 2): b"te", (4, None): b"2\n", (None, None): b"test2\n"}
        for (start, end), expected in cases.items():
            with store.get_data_range("k", start, end) as stream:
                assert stream.read() == expected, (start, end)
        with store.get("k").range(-2) as stream:
            assert stream.read() == b"2\n"
        with store.get_data_range("k", 3, 100) as stream:
            assert stream.read() == b"t2\n"
        with store.get_data_range("k", 5, 2) as stream:
            assert stream.read() == b""

    def test_get_metadata_select(self, store: AbstractStore) -> None:
        store.set("k", (b"", {"author": "a", "org": "o", "title": "t"}))
        assert store.get_metadata("k", select=["author", "org"]) == {"author": "a", "org": "o"}
        assert store.get_metadata("k", ["author", "missing"]) == {"author": "a"}
        assert store.get_metadata("k", []) == {}

    def test_multiget_keeps_input_order_and_takes_generators(self, store: AbstractStore) -> None:
        for key in "abc":
            store.set(key, (key.encode() * 2, {"k": key}))
        values = store.multiget(key for key in "cab")
        assert [v.metadata["k"] for v in values] == ["c", "a", "b"]
        datas = store.multiget_data(iter("bca"))
        assert [d.read() for d in datas] == [b"bb", b"cc", b"aa"]
        for stream in datas:
            stream.close()
        metas = store.multiget_metadata((key for key in "ba"), select=iter(["k", "x"]))
        assert metas == [{"k": "b"}, {"k": "a"}]
        with pytest.raises(KeyError):
            store.multiget(["a", "missing"])

    # -- partial writes ------------------------------------------------------------------
    def test_set_data_keeps_metadata(self, store: AbstractStore) -> None:
        store.set("k", (b"old", {"a": 1}))
        store.set_data("k", b"new")
        assert (store.to_bytes("k"), store.get_metadata("k")) == (b"new", {"a": 1})
        store.set_data("fresh", io.BytesIO(b"x"))
        assert (store.to_bytes("fresh"), store.get_metadata("fresh")) == (b"x", {})

    def test_set_metadata_keeps_data(self, store: AbstractStore) -> None:
        store.set("k", (b"data", {"a": 1, "b": 2}))
        store.set_metadata("k", {"c": 3})
        assert (store.to_bytes("k"), store.get_metadata("k")) == (b"data", {"c": 3})
        store.set_metadata("fresh", {"x": 1})
        assert (store.to_bytes("fresh"), store.get_metadata("fresh")) == (b"", {"x": 1})

    def test_update_metadata_merges(self, store: AbstractStore) -> None:
        store.set("k", (b"data", {"a": 1, "b": 2}))
        modified = store.get("k").modified
        store.update_metadata("k", {"b": 3, "c": 4})
        assert store.get_metadata("k") == {"a": 1, "b": 3, "c": 4}
        assert store.to_bytes("k") == b"data"
        assert store.get("k").modified >= modified  # type: ignore[operator]
        with pytest.raises(KeyNotFoundError):
            store.update_metadata("missing", {"a": 1})
        assert not store.exists("missing")

    def test_created_kept_and_modified_advances(self, store: AbstractStore) -> None:
        store.set("k", (b"1", {}))
        first = store.get("k")
        time.sleep(0.01)
        store.set("k", (b"2", {}))
        second = store.get("k")
        assert second.created == pytest.approx(first.created, abs=1e-3)
        assert second.modified > first.modified  # type: ignore[operator]

    def test_from_and_to_bytes_and_files(self, store: AbstractStore, tmp_path: Path) -> None:
        store.set("k", (b"old", {"keep": True}))
        store.from_bytes("k", b"new bytes")
        assert store.to_bytes("k") == b"new bytes"
        assert store.get_metadata("k") == {"keep": True}
        source = tmp_path / "source.bin"
        source.write_bytes(b"from a file" * 1000)
        store.from_file("k", source, buffer_size=7)
        assert store.get_metadata("k") == {"keep": True}
        target = tmp_path / "out.bin"
        store.to_file("k", target, buffer_size=100)
        assert target.read_bytes() == b"from a file" * 1000
        target.write_bytes(b"untouched")
        with pytest.raises(KeyError):
            store.to_file("missing", target)
        assert target.read_bytes() == b"untouched"
        with pytest.raises(KeyError):
            store.to_file("missing", tmp_path / "never.bin")
        assert not (tmp_path / "never.bin").exists()

    def test_delete(self, store: AbstractStore) -> None:
        store.set("k", (b"x", {}))
        store.delete("k")
        assert not store.exists("k")
        with pytest.raises(KeyNotFoundError):
            store.get("k")
        with pytest.raises(KeyNotFoundError):
            store.delete("k")
        store.set("k", (b"again", {}))
        assert store.to_bytes("k") == b"again"

    def test_multi_methods_take_generators_and_zip(self, store: AbstractStore) -> None:
        store.multiset((k for k in ["a", "b", "c"]), ((b"x", {"n": i}) for i in range(2)))
        assert sorted(store.query_keys()) == ["a", "b"]
        store.multiset_data(iter(["a", "b"]), iter([b"1", b"2", b"3"]))
        assert [store.to_bytes(k) for k in "ab"] == [b"1", b"2"]
        store.multiset_metadata((k for k in "ab"), ({"m": k} for k in "ab"))
        assert store.multiget_metadata(["a", "b"]) == [{"m": "a"}, {"m": "b"}]
        store.multiupdate_metadata(iter("ab"), iter([{"u": 1}, {"u": 2}]))
        assert store.multiget_metadata(["a", "b"]) == [{"m": "a", "u": 1}, {"m": "b", "u": 2}]
        assert [store.to_bytes(k) for k in "ab"] == [b"1", b"2"]

    def test_multi_methods_pair_lists_like_zip(self, store: AbstractStore) -> None:
        store.multiset(["a", "b", "c"], [(b"1", {}), (b"2", {})])
        assert sorted(store.query_keys()) == ["a", "b"]
        store.multiset(("a",), [(b"one", {}), (b"ignored", {})])
        assert [store.to_bytes(k) for k in "ab"] == [b"one", b"2"]
        store.multiset(["d", "e"], itertools.repeat((b"same", {"r": 1})))
        assert store.multiget_metadata(["d", "e"]) == [{"r": 1}, {"r": 1}]
        with pytest.raises(InvalidKeyError):
            store.multiset(["f", "g\x00"], [(b"1", {}), (b"2", {})])
        assert not store.exists("f")

    def test_multiset_is_all_or_nothing(self, store: AbstractStore) -> None:
        store.set("a", (b"old", {}))
        with pytest.raises(OSError, match="mid-read"):
            store.multiset(["a", "b", "c"], [(b"new", {}), (b"b", {}), (_FailingReader(b"x"), {})])
        assert store.to_bytes("a") == b"old"
        assert not store.exists("b")

    def test_mapping_view(self, store: AbstractStore) -> None:
        mapping = store.as_mapping()
        mapping["a"] = b"1"
        store.set_metadata("a", {"m": 1})
        mapping["a"] = b"2"
        assert mapping["a"] == b"2"
        assert store.get_metadata("a") == {"m": 1}
        assert "a" in mapping and "b" not in mapping and len(mapping) == 1
        assert dict(mapping) == {"a": b"2"}
        del mapping["a"]
        assert len(mapping) == 0
        with pytest.raises(KeyError):
            mapping["a"]

    # -- events ------------------------------------------------------------------------------
    def test_modification_events(self, store: AbstractStore, events: _Recorder) -> None:
        store.set("k", (b"1", {"a": 1}))
        store.set("k", (b"2", {"a": 2}))
        store.update_metadata("k", {"b": 1})
        store.delete("k")
        mods = events.of(StoreModificationEvent)
        assert [type(e) for e in mods] == [
            StoreSetEvent,
            StoreSetEvent,  # a set is a set, whether the key existed or not
            StoreUpdateEvent,
            StoreDeleteEvent,
        ]
        assert [e.action for e in mods] == ["set", "set", "update", "delete"]
        assert all(e.key == "k" and e.source is store for e in mods)
        assert [e.metadata for e in mods] == [
            {"a": 1},
            {"a": 2},
            {"a": 2, "b": 1},
            {"a": 2, "b": 1},
        ]

    def test_events_go_to_the_stores_own_manager(self, store: AbstractStore) -> None:
        from storekeeper.events import get_event_manager

        global_events = _Recorder(get_event_manager())  # type: ignore[arg-type]
        try:
            store.set("k", (io.BytesIO(b"x" * 10), {}))
            store.delete("k")
            assert [e for e in global_events.events if e.source is store] == []
        finally:
            get_event_manager().disconnect(StoreEvent, global_events.events.append)

    def test_progress_events_for_streamed_writes(
        self, store: AbstractStore, events: _Recorder, tmp_path: Path
    ) -> None:
        store.set("k", (io.BytesIO(b"x" * 100), {}), buffer_size=30)
        starts = events.of(StoreProgressStartEvent)
        ends = events.of(StoreProgressEndEvent)
        assert len(starts) == 1 and len(ends) == 1
        assert starts[0].key == "k" and starts[0].source is store
        steps = [e.step for e in events.of(StoreProgressStepEvent)]
        assert steps and steps == sorted(steps) and steps[-1] == 100
        assert len(steps) == len(set(steps))  # the final step is not repeated
        events.clear()
        store.to_file("k", tmp_path / "out", buffer_size=40)
        assert [e.step for e in events.of(StoreProgressStepEvent)] == [40, 80, 100]
        assert len(events.of(StoreProgressEndEvent)) == 1

    def test_listeners_cannot_change_stored_metadata(
        self, store: AbstractStore, event_manager: EventManager
    ) -> None:
        def vandal(event: Any) -> None:
            event.metadata["vandal"] = True

        event_manager.connect(StoreModificationEvent, vandal)
        store.set("k", (b"", {"a": 1}))
        assert store.get_metadata("k") == {"a": 1}

    # -- persistence -----------------------------------------------------------------------
    def test_data_survives_reopening(self, tmp_path: Path, event_manager: EventManager) -> None:
        with self.create_store(tmp_path, event_manager) as store:
            if not store.capabilities.persistent:
                pytest.skip("the store does not declare persistent")
            store.set("k", (b"durable", {"a": [1]}))
            version = store.get("k").version
        with self.reopen_store(tmp_path, event_manager) as again:
            value = again.get("k")
            assert again.to_bytes("k") == b"durable"
            assert value.metadata == {"a": [1]}
            assert value.version == version
            assert again.query_keys(a=[1]) == ["k"]

    def test_storage_identity_tells_the_same_storage(
        self, tmp_path: Path, event_manager: EventManager
    ) -> None:
        from storekeeper.store.transfer import transfer  # used by this check only

        with self.create_store(tmp_path, event_manager) as store:
            identity = store.storage_identity()
            hash(identity)  # a value to compare and to keep in a set
            if not store.capabilities.persistent:
                pytest.skip("the store does not declare persistent: nothing to reopen")
            store.set("k", (b"one", {}))
            version = store.get("k").version
            with self.reopen_store(tmp_path, event_manager) as again:
                assert again.storage_identity() == identity
                if identity is not None:  # a copy onto the same storage is refused
                    with pytest.raises(InvalidArgumentError):
                        transfer(store, again, delete=True)
                    assert again.get("k").version == version

    def test_storage_paths_are_spared_by_folder_copies(
        self, tmp_path: Path, event_manager: EventManager
    ) -> None:
        import os

        from storekeeper.store.transfer import Folder, transfer  # used by this check only

        with self.create_store(tmp_path, event_manager) as store:
            store.set("k", (b"kept", {}))
            version = store.get("k").version
            paths = store.storage_paths()
            assert all(isinstance(path, str) and os.path.isabs(path) for path in paths)
            for path in paths:
                inside = Folder(os.path.join(path, "sub"))
                for source, target in ((store, inside), (inside, store)):
                    with pytest.raises(InvalidArgumentError):
                        transfer(source, target, delete=True)
                with pytest.raises(InvalidArgumentError):
                    transfer(store, Folder(os.path.dirname(path)), delete=True)
            assert store.get("k").version == version
