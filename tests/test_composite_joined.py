"""JoinedStore: conformance over memory, filesystem and SQLite children, and its own rules."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.composite import JoinedStore
from storekeeper.composite._overlay import WHITEOUT
from storekeeper.errors import ConflictError, InvalidMetadataError, KeyNotFoundError
from storekeeper.events import BaseEvent, BaseEventManager, EventManager
from storekeeper.store import (
    AbstractStore,
    Exists,
    StoreDeleteEvent,
    StoreKeyEvent,
    StoreModificationEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.testing.children import KINDS, child
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.store import StoreTests


class _JoinedConformance(StoreTests):
    kind = "memory"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> JoinedStore:
        stores = [child(self.kind, tmp_path, "top"), child(self.kind, tmp_path, "bottom")]
        return JoinedStore(stores, event_manager=event_manager)

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> JoinedStore:
        return self.create_store(tmp_path, event_manager)

    def process_opener(self, tmp_path: Path) -> Opener | None:
        return None if self.kind == "memory" else same_store(self, tmp_path)

    # Raw access through the children: written to the bottom layer, read from the
    # first layer that holds the key.
    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, JoinedStore)
        bottom = store.stores[-1]
        assert isinstance(bottom, AbstractStore)
        bottom.set(key, (data, metadata))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, JoinedStore)
        for layer in store.stores:
            if layer.exists(key):
                return layer.to_bytes(key), layer.get_metadata(key)
        raise KeyError(key)


class TestJoinedOverMemory(_JoinedConformance):
    kind = "memory"


class TestJoinedOverFiles(_JoinedConformance):
    kind = "file"
    listing_streams = False


class TestJoinedOverSqlite(_JoinedConformance):
    kind = "sqlite"


# -- the joined store's own rules -----------------------------------------------------------
@pytest.fixture(params=KINDS)
def layers(request: pytest.FixtureRequest, tmp_path: Path) -> list[AbstractStore]:
    stores = [child(request.param, tmp_path, name) for name in ("a", "b", "c")]
    for store in stores:
        store.connect()
    stores[1].set("shared", (b"from b", {"who": "b", "t": "yes"}))
    stores[2].set("shared", (b"from c", {"who": "c", "t": "yes"}))
    stores[2].set("only-c", (b"c data", {"who": "c", "t": "yes"}))
    return stores


@pytest.fixture
def joined(layers: list[AbstractStore]) -> Any:
    store = JoinedStore(layers, event_manager=EventManager())
    store.connect()
    yield store
    store.disconnect()


def test_first_store_that_has_a_key_wins(joined: JoinedStore) -> None:
    assert joined.to_bytes("shared") == b"from b"
    assert joined.get_metadata("only-c") == {"who": "c", "t": "yes"}
    assert sorted(joined.query_keys()) == ["only-c", "shared"]


def test_writes_go_to_the_first_store_only(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    joined.set("shared", (b"new", {"who": "joined"}))
    joined.set_data("only-c", b"changed")
    assert layers[0].to_bytes("shared") == b"new"
    assert layers[1].to_bytes("shared") == b"from b"
    assert layers[0].get_metadata("only-c") == {"who": "c", "t": "yes"}  # copied up
    assert layers[2].to_bytes("only-c") == b"c data"


def test_partial_writes_of_lower_keys_keep_the_other_part(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    joined.set_metadata("shared", {"m": 1})
    assert (joined.to_bytes("shared"), joined.get_metadata("shared")) == (b"from b", {"m": 1})
    joined.update_metadata("only-c", {"extra": True})
    assert joined.to_bytes("only-c") == b"c data"
    assert joined.get_metadata("only-c") == {"who": "c", "t": "yes", "extra": True}
    joined.multiset_metadata(["shared", "only-c"], [{"x": 1}, {"y": 2}])
    assert joined.to_bytes("only-c") == b"c data"  # the original's bug gave b""


def test_delete_hides_lower_copies_for_good(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    joined.set("shared", (b"top", {}))
    joined.delete("shared")
    joined.delete("only-c")
    for key in ("shared", "only-c"):
        assert not joined.exists(key)
        with pytest.raises(KeyNotFoundError):
            joined.get(key)
        with pytest.raises(KeyNotFoundError):
            joined.delete(key)
        with pytest.raises(KeyNotFoundError):
            joined.update_metadata(key, {"a": 1})
    assert layers[2].to_bytes("only-c") == b"c data"  # lower stores are never written
    assert joined.query_keys() == []
    assert joined.query() == []
    assert joined.glob("*") == []
    assert joined.query_keys(who=Exists(False)) == []
    joined.set_data("only-c", b"back")
    assert (joined.to_bytes("only-c"), joined.get_metadata("only-c")) == (b"back", {})


def test_queries_never_return_a_shadowed_entry(joined: JoinedStore) -> None:
    joined.set_metadata("shared", {"t": "no"})
    assert joined.query_keys(t="yes") == ["only-c"]
    assert dict(joined.query(select=["who"])) == {"shared": {}, "only-c": {"who": "c"}}
    assert sorted(joined.glob("*")) == ["only-c", "shared"]


def test_conditional_writes_use_the_visible_version(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    lower_version = layers[1].get("shared").version
    assert joined.get("shared").version == lower_version
    with pytest.raises(ConflictError):
        joined.set("shared", (b"x", {}), if_exists=False)
    with pytest.raises(ConflictError):
        joined.delete("shared", if_version="stale")
    joined.set("shared", (b"x", {}), if_version=lower_version)
    with pytest.raises(ConflictError):
        joined.set("shared", (b"y", {}), if_version=lower_version)
    assert joined.to_bytes("shared") == b"x"


def test_disconnect_then_connect_works(joined: JoinedStore, layers: list[AbstractStore]) -> None:
    joined.disconnect()
    assert all(store.is_connected() for store in layers)  # connected by the caller
    joined.connect()
    assert joined.to_bytes("shared") == b"from b"


def test_connect_connects_and_disconnect_disconnects_its_children(tmp_path: Path) -> None:
    stores = [DictMemoryStore(), DictMemoryStore()]
    with JoinedStore(stores) as joined:
        assert all(store.is_connected() for store in stores)
        joined.set("k", (b"v", {}))
    assert not any(store.is_connected() for store in stores)
    with JoinedStore(stores) as joined:
        assert joined.to_bytes("k") == b"v"


def test_events_use_the_joined_key_space_and_kind(joined: JoinedStore) -> None:
    seen: list[Any] = []
    joined.event_manager.connect(StoreModificationEvent, seen.append)
    joined.set("shared", (b"1", {"n": 1}))  # it existed: a set all the same
    joined.set("fresh", (b"1", {}))
    joined.delete("shared")  # leaves a whiteout: still a deletion
    joined.update_metadata("fresh", {"m": 1})
    assert [(type(e), e.key) for e in seen] == [
        (StoreSetEvent, "shared"),
        (StoreSetEvent, "fresh"),
        (StoreDeleteEvent, "shared"),
        (StoreUpdateEvent, "fresh"),
    ]
    assert all(event.source is joined for event in seen)
    assert seen[2].metadata == {"n": 1}


def test_outside_changes_to_children_are_forwarded_unless_shadowed(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    seen: list[Any] = []
    joined.event_manager.connect(StoreModificationEvent, seen.append)
    layers[2].set("shared", (b"hidden by b", {}))
    layers[2].set("new-c", (b"", {"v": 1}))
    layers[0].set("only-c", (b"over", {}))
    layers[0].delete("only-c")
    assert [(type(e).__name__, e.key) for e in seen] == [
        ("StoreSetEvent", "new-c"),
        ("StoreSetEvent", "only-c"),
        ("StoreSetEvent", "only-c"),  # the deletion uncovered c's copy: new data shows
    ]
    assert all(event.source is joined for event in seen)


def test_children_are_listened_to_only_while_someone_listens(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    def composite_listens(child: AbstractStore) -> bool:
        manager = child.event_manager
        assert isinstance(manager, EventManager)
        return manager.may_deliver(StoreKeyEvent)

    assert not any(composite_listens(layer) for layer in layers)
    joined.set("quiet", (b"1", {}))  # nobody listens: nothing to forward
    seen: list[Any] = []
    joined.event_manager.connect(StoreDeleteEvent, seen.append)
    assert all(composite_listens(layer) for layer in layers)
    layers[2].set("late", (b"", {}))
    layers[2].delete("late")
    joined.event_manager.disconnect(StoreDeleteEvent, seen.append)
    assert not any(composite_listens(layer) for layer in layers)
    layers[2].set("later", (b"", {}))
    layers[2].delete("later")
    assert [(type(e).__name__, e.key, e.source) for e in seen] == [
        ("StoreDeleteEvent", "late", joined)
    ]


def test_a_manager_shared_with_the_children_forwards_once(tmp_path: Path) -> None:
    shared = EventManager()
    top, low = DictMemoryStore(event_manager=shared), DictMemoryStore(event_manager=shared)
    with JoinedStore([top, low], event_manager=shared) as joined:
        assert not shared.may_deliver(StoreKeyEvent)  # its own subscription does not count
        seen: list[Any] = []
        shared.connect(StoreSetEvent, seen.append)
        low.set("k", (b"", {}))
        assert [(e.key, e.source) for e in seen] == [("k", low), ("k", joined)]
        shared.disconnect(StoreSetEvent, seen.append)
        assert not shared.may_deliver(StoreKeyEvent)


class _Plain(BaseEventManager):
    """A manager with only the abstract core: it cannot say who listens."""

    def __init__(self) -> None:
        self.inner = EventManager()

    def connect(self, cls: Any, func: Any, filter: Any = None, priority: int = 0) -> None:  # noqa: A002
        self.inner.connect(cls, func, filter, priority)

    def disconnect(self, cls: Any, func: Any) -> None:
        self.inner.disconnect(cls, func)

    def emit(self, event: BaseEvent, block: bool = True) -> Any:
        return self.inner.emit(event, block)

    def enable(self, cls: Any) -> None:
        self.inner.enable(cls)

    def disable(self, cls: Any) -> None:
        self.inner.disable(cls)

    def is_enabled(self, cls: Any) -> bool:
        return self.inner.is_enabled(cls)


def test_a_manager_that_cannot_report_listeners_has_children_followed_always() -> None:
    plain = _Plain()
    low = DictMemoryStore(event_manager=EventManager())
    with JoinedStore([DictMemoryStore(), low], event_manager=plain) as joined:
        assert low.event_manager.may_deliver(StoreKeyEvent)  # subscribed from the start
        seen: list[Any] = []
        plain.connect(StoreSetEvent, seen.append)
        low.set("k", (b"", {}))
        assert [(e.key, e.source) for e in seen] == [("k", joined)]
    assert not low.event_manager.may_deliver(StoreKeyEvent)  # disconnect unsubscribes


def test_progress_events_are_forwarded(joined: JoinedStore) -> None:
    steps: list[Any] = []
    joined.event_manager.connect(StoreProgressStepEvent, steps.append)
    joined.set("big", (io.BytesIO(b"x" * 100), {}), buffer_size=40)
    assert [event.step for event in steps] == [40, 80, 100]
    assert {(event.source, event.key) for event in steps} == {(joined, "big")}


def test_a_write_naming_the_whiteout_entry_is_refused(joined: JoinedStore) -> None:
    for write in (
        lambda: joined.set("shared", (b"", {WHITEOUT: True})),
        lambda: joined.set_metadata("only-c", {WHITEOUT: True}),
        lambda: joined.update_metadata("only-c", {WHITEOUT: 1}),
    ):
        with pytest.raises(InvalidMetadataError, match="reserved"):
            write()
    assert joined.to_bytes("shared") == b"from b"
    assert joined.get_metadata("only-c") == {"who": "c", "t": "yes"}
    assert sorted(joined.query_keys()) == ["only-c", "shared"]


def test_transaction_is_all_or_nothing_in_the_first_store(
    joined: JoinedStore, layers: list[AbstractStore]
) -> None:
    with pytest.raises(RuntimeError), joined.transaction("fails"):
        joined.set("shared", (b"changed", {}))
        joined.delete("only-c")
        raise RuntimeError("roll back")
    assert joined.to_bytes("shared") == b"from b"
    assert joined.to_bytes("only-c") == b"c data"
    assert not layers[0].exists("shared")


def test_threads_share_a_joined_store(joined: JoinedStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                key = f"t{n}-{i}"
                joined.set(key, (key.encode(), {"n": n}))
                assert joined.to_bytes(key) == key.encode()
                assert joined.to_bytes("only-c") == b"c data"
            joined.delete(f"t{n}-0")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(joined.query_keys()) == 2 + 4 * 19
