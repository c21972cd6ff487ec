"""Declared surfaces: store capabilities, listener introspection, ``version_of``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite.cached import CachedStore
from storekeeper.composite.joined import JoinedStore
from storekeeper.events import BaseEvent, BaseEventManager, EventManager
from storekeeper.store import (
    AbstractStore,
    StoreCapabilities,
    StoreSetEvent,
    VersionedStore,
)

FLAGS = [field.name for field in dataclasses.fields(StoreCapabilities)]


class _ThirdParty(DictMemoryStore):
    """A store that declares nothing of its own (the base class's default)."""

    capabilities = AbstractStore.capabilities  # type: ignore[assignment]


def _files(tmp_path: Path, name: str) -> FileSystemStore:
    init_shared_store(tmp_path / name)
    return FileSystemStore(tmp_path / name)


def test_the_default_promises_nothing() -> None:
    assert all(not getattr(StoreCapabilities(), flag) for flag in FLAGS)
    assert _ThirdParty().capabilities == StoreCapabilities()


def test_all_of_keeps_what_every_one_promises() -> None:
    both = StoreCapabilities(ranges=True, persistent=True)
    one = StoreCapabilities(ranges=True)
    assert StoreCapabilities.all_of([both, one]) == one
    assert StoreCapabilities.all_of([]) == StoreCapabilities.everything()
    assert one.but(persistent=True) == both


def test_backends_declare_theirs(tmp_path: Path) -> None:
    memory = DictMemoryStore().capabilities
    assert memory.conditional_writes and memory.atomic_transactions
    assert not memory.persistent and not memory.cross_process
    files = _files(tmp_path, "f").capabilities
    assert files.persistent and files.cross_process and not files.server_side_queries
    assert SqliteStore(tmp_path / "s.db").capabilities == StoreCapabilities.everything()
    in_memory = SqliteStore().capabilities
    assert in_memory.server_side_queries and not in_memory.persistent
    assert not in_memory.cross_process


def test_composites_derive_theirs_from_the_children(tmp_path: Path) -> None:
    on_disk = JoinedStore([_files(tmp_path, "a"), SqliteStore(tmp_path / "b.db")])
    assert on_disk.capabilities.persistent and on_disk.capabilities.cross_process
    assert not on_disk.capabilities.server_side_queries  # the file store has none
    mixed = JoinedStore([_files(tmp_path, "c"), DictMemoryStore()])
    assert not mixed.capabilities.persistent and not mixed.capabilities.cross_process
    assert mixed.capabilities.conditional_writes
    # A writable child that promises nothing takes the promises away.
    assert JoinedStore([DictMemoryStore(), _ThirdParty()]).capabilities == StoreCapabilities()
    cached = CachedStore(_files(tmp_path, "src"), _files(tmp_path, "cache"))
    assert cached.capabilities.persistent and not cached.capabilities.cross_process


class _Quiet(BaseEventManager):
    """A manager with only the abstract core: it cannot tell who listens."""

    def __init__(self) -> None:
        self.emitted: list[BaseEvent] = []

    def connect(
        self,
        cls: type[BaseEvent],
        func: Any,
        filter: Mapping[str, Any] | None = None,  # noqa: A002
        priority: int = 0,
    ) -> None:
        pass

    def disconnect(self, cls: type[BaseEvent], func: Any) -> None:
        pass

    def emit(self, event: BaseEvent, block: bool = True) -> None:
        self.emitted.append(event)

    def enable(self, cls: type[BaseEvent]) -> None:
        pass

    def disable(self, cls: type[BaseEvent]) -> None:
        pass

    def is_enabled(self, cls: type[BaseEvent]) -> bool:
        return True


def test_a_manager_that_cannot_tell_counts_as_listened_to() -> None:
    manager = _Quiet()
    assert manager.has_listeners(StoreSetEvent) and manager.may_deliver(StoreSetEvent)
    assert manager.watch(lambda: None) is False
    manager.unwatch(lambda: None)
    with DictMemoryStore(event_manager=manager) as store:
        store.set("k", (b"x", {}))
    assert any(isinstance(event, StoreSetEvent) for event in manager.emitted)


def test_a_composite_listens_always_when_the_manager_cannot_report() -> None:
    child = DictMemoryStore(event_manager=EventManager())
    manager = _Quiet()
    with JoinedStore([child], event_manager=manager):
        child.set("k", (b"x", {}))  # a write made directly to the child is forwarded
    assert [event.key for event in manager.emitted if isinstance(event, StoreSetEvent)] == ["k"]


def test_event_manager_reports_listener_changes() -> None:
    manager = EventManager()
    calls: list[int] = []
    assert manager.watch(lambda: calls.append(1)) is True
    manager.connect(StoreSetEvent, print)
    assert calls == [1]
    assert manager.has_listeners(StoreSetEvent)


class _Versioned(DictMemoryStore):
    asked: list[str]

    def version_of(self, key: str) -> str:
        self.asked = [*getattr(self, "asked", []), key]
        return self.get(key).version or ""


def test_version_of_is_a_declared_protocol(tmp_path: Path) -> None:
    assert isinstance(_Versioned(), VersionedStore)
    assert not isinstance(DictMemoryStore(), VersionedStore)
    source = _Versioned()
    with CachedStore(source, DictMemoryStore(), policy="always") as cached:
        source.set("k", (b"x", {}))
        assert cached.to_bytes("k") == b"x"
        assert cached.to_bytes("k") == b"x"  # a hit: validated through version_of
        assert "k" in source.asked


@pytest.mark.parametrize("flag", FLAGS)
def test_every_flag_is_documented(flag: str) -> None:
    assert f"``{flag}``" in (StoreCapabilities.__doc__ or "")
