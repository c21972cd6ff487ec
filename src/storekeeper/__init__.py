"""storekeeper: keep application data safely, fast, and the same way wherever it lives.

The package root re-exports the public names; see ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    CorruptFileError,
    FileSystemStoreError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidURLError,
    InvalidValueError,
    KeyNotFoundError,
    LockedStorageError,
    LockTimeoutError,
    MissingDependencyError,
    NotConnectedError,
    OutputFileError,
    ReadOnlyStoreError,
    StorekeeperError,
    TransactionError,
    UnknownFormatError,
    UnknownSchemeError,
)

if TYPE_CHECKING:  # what __getattr__ loads on first use, spelled out for type checkers
    from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
    from storekeeper.backends.memory import DictMemoryStore
    from storekeeper.backends.sqlite import SqliteStore
    from storekeeper.backends.static import StaticURLStore
    from storekeeper.composite import CachedStore, JoinedStore, MountedStore, SimpleAuthStore
    from storekeeper.events import (
        BaseEvent,
        BaseEventManager,
        EventManager,
        ProgressManager,
        get_event_manager,
        set_event_manager,
    )
    from storekeeper.store import (
        AbstractAuthorizingStore,
        AbstractReadOnlyStore,
        AbstractStore,
        BytesValue,
        Exists,
        In,
        Prefix,
        Range,
        StreamValue,
        Value,
        open_read_only_store,
        open_store,
        register_backend,
    )

__version__ = "0.1.0.dev0"

# The store API, events, backends and composites load on first use (PEP 562), so
# ``import storekeeper`` stays cheap (the command line's --help starts fast) and never
# imports an optional dependency.
_LAZY = {
    "BaseEvent": "storekeeper.events",
    "BaseEventManager": "storekeeper.events",
    "EventManager": "storekeeper.events",
    "ProgressManager": "storekeeper.events",
    "get_event_manager": "storekeeper.events",
    "set_event_manager": "storekeeper.events",
    "AbstractAuthorizingStore": "storekeeper.store",
    "AbstractReadOnlyStore": "storekeeper.store",
    "AbstractStore": "storekeeper.store",
    "BytesValue": "storekeeper.store",
    "Exists": "storekeeper.store",
    "In": "storekeeper.store",
    "Prefix": "storekeeper.store",
    "Range": "storekeeper.store",
    "StreamValue": "storekeeper.store",
    "Value": "storekeeper.store",
    "open_read_only_store": "storekeeper.store",
    "open_store": "storekeeper.store",
    "register_backend": "storekeeper.store",
    "DictMemoryStore": "storekeeper.backends.memory",
    "FileSystemStore": "storekeeper.backends.filesystem",
    "SqliteStore": "storekeeper.backends.sqlite",
    "StaticURLStore": "storekeeper.backends.static",
    "init_shared_store": "storekeeper.backends.filesystem",
    "JoinedStore": "storekeeper.composite",
    "MountedStore": "storekeeper.composite",
    "SimpleAuthStore": "storekeeper.composite",
    "CachedStore": "storekeeper.composite",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'storekeeper' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AbstractAuthorizingStore",
    "AbstractReadOnlyStore",
    "AbstractStore",
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BackendUnavailableError",
    "BaseEvent",
    "BaseEventManager",
    "BytesValue",
    "CachedStore",
    "ConflictError",
    "CorruptFileError",
    "DictMemoryStore",
    "EventManager",
    "Exists",
    "FileSystemStore",
    "FileSystemStoreError",
    "In",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidURLError",
    "InvalidValueError",
    "JoinedStore",
    "KeyNotFoundError",
    "LockTimeoutError",
    "LockedStorageError",
    "MissingDependencyError",
    "MountedStore",
    "NotConnectedError",
    "OutputFileError",
    "Prefix",
    "ProgressManager",
    "Range",
    "ReadOnlyStoreError",
    "SimpleAuthStore",
    "SqliteStore",
    "StaticURLStore",
    "StorekeeperError",
    "StreamValue",
    "TransactionError",
    "UnknownFormatError",
    "UnknownSchemeError",
    "Value",
    "__version__",
    "get_event_manager",
    "init_shared_store",
    "open_read_only_store",
    "open_store",
    "register_backend",
    "set_event_manager",
]
