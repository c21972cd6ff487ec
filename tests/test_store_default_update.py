"""The store API's default ``update_metadata`` turns the write it makes into an update event."""

from __future__ import annotations

from typing import Any

from storekeeper import DictMemoryStore
from storekeeper.events import EventManager
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.events import StoreModificationEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.value import Value


class VersionTagging(AbstractStore):
    """A third-party store over a dict store whose set events carry extra attributes."""

    def __init__(self, event_manager: EventManager) -> None:
        super().__init__(event_manager)
        self.inner = DictMemoryStore(event_manager=EventManager())
        self.inner.connect()

    def get(self, key: str) -> Value:
        return self.inner.get(key)

    def query(self, select: Any = None, **kwargs: Any) -> Any:
        return self.inner.query(select, **kwargs)

    def set(self, key: str, value: Any, buffer_size: int = 1 << 20, **kw: Any) -> None:
        self.inner.set(key, value, buffer_size, **kw)
        stored = self.inner.get(key)
        self._emit(
            StoreSetEvent(
                self, key=key, metadata=stored.metadata, version=stored.version, remote=False
            )
        )

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        self.inner.delete(key, if_version=if_version)


def test_update_event_keeps_what_the_set_event_carried() -> None:
    manager = EventManager()
    seen: list[StoreModificationEvent] = []
    manager.connect(StoreModificationEvent, seen.append)
    store = VersionTagging(manager)
    store.connect()
    store.set("k", (b"data", {"a": 1}))
    seen.clear()
    store.update_metadata("k", {"b": 2})
    assert [type(event) for event in seen] == [StoreUpdateEvent]
    event = seen[0]
    assert event.key == "k" and event.metadata == {"a": 1, "b": 2}
    assert getattr(event, "version", None) == store.inner.get("k").version
    assert getattr(event, "remote", None) is False
    assert event.source is store
