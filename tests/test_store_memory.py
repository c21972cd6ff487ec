"""DictMemoryStore against the conformance suite, plus what only it promises."""

from __future__ import annotations

from pathlib import Path

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.events import EventManager
from storekeeper.store import open_store
from storekeeper.testing.store import StoreTests


class TestDictMemoryStore(StoreTests):
    raw_unavailable = "a DictMemoryStore's values live only inside the store object"

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> DictMemoryStore:
        return DictMemoryStore(event_manager=event_manager)


def test_open_store_memory_gives_a_connected_empty_store() -> None:
    with open_store("memory://") as store:
        assert isinstance(store, DictMemoryStore)
        assert store.is_connected()
        assert store.query_keys() == []
    assert not store.is_connected()
