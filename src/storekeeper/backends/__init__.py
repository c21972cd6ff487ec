"""Store backends, one module each; imported on first use so optional dependencies
load only when their backend is.

``storekeeper.backends.DictMemoryStore`` etc. resolve lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DictMemoryStore", "FileSystemStore", "SqliteStore", "StaticURLStore"]

_LOCATIONS = {
    "DictMemoryStore": "storekeeper.backends.memory",
    "FileSystemStore": "storekeeper.backends.filesystem",
    "SqliteStore": "storekeeper.backends.sqlite",
    "StaticURLStore": "storekeeper.backends.static",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
