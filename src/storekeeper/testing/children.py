"""Child stores of every embedded kind, for testing composites over each of them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore

__all__ = ["KINDS", "child", "child_options"]

#: The embedded backends a composite should be tested over.
KINDS = ["memory", "file", "sqlite"]


_options: ContextVar[dict[str, Any] | None] = ContextVar("storekeeper-child-options", default=None)


@contextmanager
def child_options(**options: Any) -> Iterator[None]:
    """Inside the block, :func:`child` passes *options* (``inline_limit``, ``durable``)
    to the file and SQLite stores it builds: a test of a composite can so make its
    children store small values as large ones, without knowing how the composite's
    test class builds them."""
    token = _options.set(options)
    try:
        yield
    finally:
        _options.reset(token)


def child(kind: str, tmp_path: Path, name: str) -> AbstractStore:
    """A fresh unconnected store of *kind* under *tmp_path*, with its own event manager."""
    options = _options.get() or {}
    if kind == "memory":
        return DictMemoryStore(event_manager=EventManager())
    if kind == "sqlite":
        path = tmp_path / f"{name}.db"
        return SqliteStore(path, event_manager=EventManager(), **{"durable": False, **options})
    if kind == "file":
        init_shared_store(tmp_path / name)
        return FileSystemStore(tmp_path / name, event_manager=EventManager(), **options)
    raise ValueError(f"unknown child kind {kind!r}; expected one of {KINDS}")
