"""The conformance suite of a read-only store: every read of the API, on published values.

A read-only store cannot be filled through itself, so the test class says how values
get into its storage: :meth:`ReadOnlyStoreTests.publish` returns a new, unconnected
store showing exactly the given values (an export served by a web server, files
written by another program...), and :meth:`ReadOnlyStoreTests.republish` replaces what
an open store shows and makes it see the change. Keys the storage cannot hold at all
are declared by :meth:`ReadOnlyStoreTests.holds` and left out of the checks.

The query checks are :class:`~storekeeper.testing.queries.QueryTests`' own, run on
:data:`~storekeeper.testing.queries.QUERY_VALUES`; listings are compared with
:func:`~storekeeper.testing.listing.model_listing`; keys come from
:data:`~storekeeper.testing.store.WEIRD_KEYS` and
:data:`~storekeeper.testing.listing.TRICKY_KEYS`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from storekeeper.errors import InvalidKeyError, KeyNotFoundError, NotConnectedError
from storekeeper.events import EventManager
from storekeeper.store import (
    AbstractReadOnlyStore,
    AbstractStore,
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.testing.listing import TRICKY_KEYS, model_listing
from storekeeper.testing.queries import QUERY_VALUES, QueryTests
from storekeeper.testing.store import BAD_KEYS, WEIRD_KEYS

__all__ = ["ReadOnlyStoreTests", "Values"]

#: What a read-only store is published with: key -> (data, metadata).
Values = Mapping[str, tuple[bytes, dict[str, Any]]]

_BYTES = bytes(range(256))


class ReadOnlyStoreTests(QueryTests, abc.ABC):
    """Conformance tests of a read-only store; subclass and implement :meth:`publish`."""

    #: Size of the large value read back whole and in ranges.
    large_value_size = 1024 * 1024 + 17

    # -- hooks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def publish(
        self, tmp_path: Path, event_manager: EventManager, values: Values
    ) -> AbstractReadOnlyStore:
        """A new, *unconnected* store on *event_manager* that shows exactly *values*."""

    def republish(self, store: AbstractReadOnlyStore, values: Values) -> None:
        """Make the connected *store* (from :meth:`publish`) show exactly *values* now,
        emitting the events of the change. Default: the store cannot, checks skip."""
        pytest.skip(f"{type(self).__name__} does not republish")

    def holds(self, key: str) -> bool:
        """Whether the storage can hold *key* at all (default: every valid key)."""
        return True

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture
    def event_manager(self) -> EventManager:
        return EventManager()

    @pytest.fixture
    def open_store(
        self, tmp_path: Path, event_manager: EventManager
    ) -> Iterator[Callable[[Values], AbstractReadOnlyStore]]:
        opened: list[AbstractReadOnlyStore] = []

        def open_with(values: Values) -> AbstractReadOnlyStore:
            store = self.publish(tmp_path / f"published-{len(opened)}", event_manager, values)
            store.connect()
            opened.append(store)
            return store

        yield open_with
        for store in opened:
            store.disconnect()

    @pytest.fixture
    def store(self, open_store: Callable[[Values], AbstractReadOnlyStore]) -> AbstractReadOnlyStore:
        """A connected store showing :data:`QUERY_VALUES` (what the query checks read)."""
        return open_store(QUERY_VALUES)

    def _populate(self, store: AbstractStore) -> None:
        """The ``store`` fixture is published with the query values already."""

    # -- the read API -----------------------------------------------------------------------
    def test_is_read_only(self, store: AbstractReadOnlyStore) -> None:
        assert not isinstance(store, AbstractStore)
        assert store.info()["readonly"] is True
        assert not hasattr(store, "set")

    def test_operations_need_a_connection(
        self, tmp_path: Path, event_manager: EventManager
    ) -> None:
        store = self.publish(tmp_path, event_manager, {"k": (b"x", {})})
        calls: list[Callable[[], object]] = [
            lambda: store.get("k"),
            lambda: store.get_metadata("k"),
            lambda: store.exists("k"),
            store.query,
            lambda: list(store.list_keys()),
        ]
        for call in calls:
            with pytest.raises(NotConnectedError):
                call()
        with store:
            assert store.to_bytes("k") == b"x"
        for call in calls:
            with pytest.raises(NotConnectedError):
                call()

    def test_values_read_back(self, open_store: Callable[[Values], AbstractReadOnlyStore]) -> None:
        large = _BYTES * (self.large_value_size // 256) + b"end"
        values: dict[str, tuple[bytes, dict[str, Any]]] = {
            "empty": (b"", {}),
            "bytes": (_BYTES, {"s": "é\u2028日本", "n": [1, 2.5, None, True], "d": {"k": []}}),
            "dir/large": (large, {"size": len(large)}),
        }
        store = open_store(values)
        for key, (data, metadata) in values.items():
            value = store.get(key)
            assert value.size == len(data)
            assert value.metadata == metadata
            with value.data as stream:
                assert stream.read() == data
            assert store.to_bytes(key) == data
            with store.get_data(key) as stream:
                assert stream.read() == data
            assert store.get_metadata(key) == metadata
            assert store.exists(key)
        assert store.get_metadata("bytes", ["s", "missing"]) == {"s": "é\u2028日本"}
        order = ["dir/large", "empty", "bytes", "empty"]
        assert [v.metadata for v in store.multiget(order)] == [values[k][1] for k in order]
        assert store.multiget_metadata(iter(order), ["size"]) == [{"size": len(large)}, {}, {}, {}]
        streams = store.multiget_data(order)
        assert [s.read() for s in streams] == [values[k][0] for k in order]
        for stream in streams:
            stream.close()

    def test_metadata_returned_is_a_copy(
        self, open_store: Callable[[Values], AbstractReadOnlyStore]
    ) -> None:
        store = open_store({"k": (b"", {"list": [1], "d": {"x": 1}})})
        for metadata in (store.get_metadata("k"), store.get("k").metadata, store.query()[0][1]):
            metadata["list"].append(2)
            metadata["d"]["x"] = 2
        assert store.get_metadata("k") == {"list": [1], "d": {"x": 1}}

    def test_missing_keys(self, open_store: Callable[[Values], AbstractReadOnlyStore]) -> None:
        store = open_store({"k": (b"x", {})})
        for call in (store.get, store.get_data, store.get_metadata, store.to_bytes):
            with pytest.raises(KeyNotFoundError):
                call("missing")
        assert not store.exists("missing")
        assert not store.exists("k/deeper")
        with pytest.raises(KeyError):
            store.multiget(["k", "missing"])

    def test_bad_keys_are_refused(
        self, open_store: Callable[[Values], AbstractReadOnlyStore]
    ) -> None:
        store = open_store({"k": (b"x", {})})
        for key in BAD_KEYS:
            for call in (store.get, store.exists, store.get_metadata, store.get_data):
                with pytest.raises(InvalidKeyError):
                    call(key)

    def test_ranges_are_end_exclusive(
        self, open_store: Callable[[Values], AbstractReadOnlyStore]
    ) -> None:
        data = bytes(range(200)) * 3
        store = open_store({"k": (data, {}), "empty": (b"", {})})
        bounds = [(None, None), (0, 1), (5, 17), (17, 5), (590, None), (599, 600), (600, 700)]
        bounds += [(None, 10), (10, None), (0, 600), (-10, None), (-10, -3), (1000, None)]
        for start, end in bounds:
            with store.get_data_range("k", start, end) as stream:
                assert stream.read() == data[start:end], (start, end)
        with store.get_data_range("empty", 0, 5) as stream:
            assert stream.read() == b""
        with pytest.raises(KeyNotFoundError):
            store.get_data_range("missing", 0, 1)

    def test_weird_keys(self, open_store: Callable[[Values], AbstractReadOnlyStore]) -> None:
        keys = [key for key in WEIRD_KEYS if self.holds(key)]
        store = open_store({key: (key.encode(), {"i": i}) for i, key in enumerate(keys)})
        assert sorted(store.query_keys()) == sorted(keys)
        for index, key in enumerate(keys):
            assert store.to_bytes(key) == key.encode(), key
            assert store.get_metadata(key) == {"i": index}, key

    def test_list_keys(self, open_store: Callable[[Values], AbstractReadOnlyStore]) -> None:
        keys = [key for key in TRICKY_KEYS if self.holds(key)]
        keys = [key for key in keys if not any(o.startswith(key + "/") for o in keys)]
        store = open_store({key: (b"", {}) for key in keys})
        prefixes = {key[:end] for key in keys for end in range(len(key) + 1)}
        for prefix in sorted(prefixes | {"zz", "\x7f"}):
            for delimiter in (None, "/", "::"):
                listed = store.list_keys(prefix, delimiter)
                assert isinstance(listed, Iterator)
                assert list(listed) == model_listing(keys, prefix, delimiter), prefix

    # Replaces QueryTests' test_glob, which sets its keys through the store.
    def test_glob(  # type: ignore[override]
        self, open_store: Callable[[Values], AbstractReadOnlyStore]
    ) -> None:
        keys = ["a.jpg", "b.jpg", "c.png", "dir/d.jpg", ".hidden.jpg", "A.JPG"]
        store = open_store({key: (b"", {}) for key in keys})
        assert sorted(store.glob("*.jpg")) == [".hidden.jpg", "a.jpg", "b.jpg", "dir/d.jpg"]
        assert store.glob("?.png") == ["c.png"]
        assert store.glob("*.JPG") == ["A.JPG"]

    def test_to_file(
        self, open_store: Callable[[Values], AbstractReadOnlyStore], tmp_path: Path
    ) -> None:
        store = open_store({"k": (b"file data", {})})
        store.to_file("k", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == b"file data"

    # -- changes published while the store is open --------------------------------------------
    def test_republish_emits_the_changes(
        self, open_store: Callable[[Values], AbstractReadOnlyStore], event_manager: EventManager
    ) -> None:
        store = open_store({"same": (b"1", {"a": 1}), "meta": (b"2", {"v": 1}), "gone": (b"3", {})})
        seen: list[StoreModificationEvent] = []
        event_manager.connect(StoreModificationEvent, seen.append)
        self.republish(
            store, {"same": (b"1", {"a": 1}), "meta": (b"2", {"v": 2}), "new": (b"n", {})}
        )
        changes = sorted((type(e).__name__, e.key, e.metadata) for e in seen)
        assert changes == [
            (StoreDeleteEvent.__name__, "gone", {}),
            (StoreSetEvent.__name__, "new", {}),
            (StoreUpdateEvent.__name__, "meta", {"v": 2}),
        ]
        assert all(event.source is store for event in seen)
        assert sorted(store.query_keys()) == ["meta", "new", "same"]
        assert store.to_bytes("new") == b"n"
        assert not store.exists("gone")

    def test_readers_see_whole_versions_while_republished(
        self, open_store: Callable[[Values], AbstractReadOnlyStore]
    ) -> None:
        def values(number: int) -> dict[str, tuple[bytes, dict[str, Any]]]:
            return {f"k{i}": (b"%d" % number * 50, {"gen": number}) for i in range(20)}

        store = open_store(values(0))
        stop = threading.Event()
        failures: list[str] = []

        def read() -> None:
            while not stop.is_set():
                answer = store.query()
                generations = {metadata["gen"] for _, metadata in answer}
                if len(answer) != 20 or len(generations) != 1:
                    failures.append(f"a query mixed or lost keys: {answer}")

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        try:
            for number in range(1, 5):
                self.republish(store, values(number))
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=60)
        assert not failures, failures[:3]
        assert {m["gen"] for _, m in store.query()} == {4}
