"""Child stores of every embedded kind, for testing composites over each of them."""

from __future__ import annotations

from pathlib import Path

from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore

__all__ = ["KINDS", "child"]

#: The embedded backends a composite should be tested over.
KINDS = ["memory", "file", "sqlite"]


def child(kind: str, tmp_path: Path, name: str) -> AbstractStore:
    """A fresh unconnected store of *kind* under *tmp_path*, with its own event manager."""
    if kind == "memory":
        return DictMemoryStore(event_manager=EventManager())
    if kind == "sqlite":
        return SqliteStore(tmp_path / f"{name}.db", durable=False, event_manager=EventManager())
    if kind == "file":
        init_shared_store(tmp_path / name)
        return FileSystemStore(tmp_path / name, event_manager=EventManager())
    raise ValueError(f"unknown child kind {kind!r}; expected one of {KINDS}")
