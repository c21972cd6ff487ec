"""``open_store(url)``: one front door from a URL to a connected store.

A registry maps URL schemes to backend classes named as ``"module:Class"`` strings, so a
backend module (and its optional dependency) is imported only when its scheme is used.
Third-party packages add schemes through the entry-point group ``storekeeper.backends``
(name: the scheme, value: ``"module:Class"``) or by calling :func:`register_backend`.
The entry points are read the first time a scheme is needed that is not built in or
registered, so ``import storekeeper`` never pays for :mod:`importlib.metadata`.
A backend class provides ``from_url(parts: urllib.parse.SplitResult, **options)``; the
helpers in :mod:`storekeeper.store.urls` read paths and options the same way everywhere.

Two doors, two types: :func:`open_store` returns a writable :class:`AbstractStore`
(so ``open_store(url).set(...)`` type-checks) and refuses a read-only backend with
:class:`~storekeeper.errors.ReadOnlyStoreError`; :func:`open_read_only_store` opens any
backend, read-only ones included, typed as the read API :class:`AbstractReadOnlyStore`.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, NamedTuple, Protocol, cast
from urllib.parse import SplitResult

from storekeeper.errors import (
    InvalidURLError,
    MissingDependencyError,
    ReadOnlyStoreError,
    UnknownSchemeError,
)
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore

__all__ = [
    "create_store",
    "open_read_only_store",
    "open_store",
    "register_backend",
    "registered_schemes",
]

ENTRY_POINT_GROUP = "storekeeper.backends"


class _Backend(NamedTuple):
    target: str | type[AbstractReadOnlyStore]
    extra: str | None


class _FromUrl(Protocol):
    def from_url(self, parts: SplitResult, **options: Any) -> AbstractReadOnlyStore: ...


_registry: dict[str, _Backend] = {
    "memory": _Backend("storekeeper.backends.memory:DictMemoryStore", None),
    "file": _Backend("storekeeper.backends.filesystem:FileSystemStore", None),
    "sqlite": _Backend("storekeeper.backends.sqlite:SqliteStore", None),
    "http": _Backend("storekeeper.backends.http:DynamicURLStore", "http"),
    "https": _Backend("storekeeper.backends.http:DynamicURLStore", "http"),
    "http+static": _Backend("storekeeper.backends.static:StaticURLStore", "http"),
    "https+static": _Backend("storekeeper.backends.static:StaticURLStore", "http"),
    "file+static": _Backend("storekeeper.backends.static:StaticURLStore", None),
    "s3": _Backend("storekeeper.backends.s3:S3Store", "s3"),
    "postgresql": _Backend("storekeeper.backends.postgres:PostgresStore", "postgres"),
    "postgres": _Backend("storekeeper.backends.postgres:PostgresStore", "postgres"),
    "redis": _Backend("storekeeper.backends.redis:RedisStore", "redis"),
    "rediss": _Backend("storekeeper.backends.redis:RedisStore", "redis"),
}
_lock = threading.Lock()
_entry_points_loaded = False


def register_backend(
    scheme: str, target: str | type[AbstractReadOnlyStore], extra: str | None = None
) -> None:
    """Map the URL *scheme* to a backend class or a ``"module:Class"`` string.

    *extra* names the ``pip install storekeeper[extra]`` that provides the backend's
    dependency, for the error shown when it is missing. A later registration of the same
    scheme replaces the earlier one.
    """
    if not scheme or not scheme.isascii() or not scheme.replace("+", "").isalnum():
        raise ValueError(f"invalid URL scheme {scheme!r}")
    with _lock:
        _registry[scheme.lower()] = _Backend(target, extra)


def registered_schemes() -> list[str]:
    """The schemes :func:`open_store` currently understands, sorted."""
    _load_entry_points()
    with _lock:
        return sorted(_registry)


def open_store(url: str, **options: Any) -> AbstractStore:
    """Create and connect the writable store that *url* describes; *options* go to the backend.

    The built-in URL forms (paths are percent-decoded, ``my%20data`` is ``my data``)::

        memory://                         a new, empty in-memory store
        sqlite:///relative/app.db         SQLite, relative to the working directory
        sqlite:////absolute/app.db        SQLite, absolute path (four slashes, as in
                                          SQLAlchemy: ``f"sqlite:///{path}"``)
        sqlite://                         SQLite in memory (also sqlite:///:memory:)
        file:///absolute/dir              a FileSystemStore (``Path.as_uri()`` gives one)
        file:relative/dir                 a FileSystemStore relative to the working directory

    Options follow ``?``: ``sqlite:///app.db?durable=false&table=things``,
    ``file:///srv/store?create=true`` (each backend's ``from_url`` lists its own);
    keyword *options* win over them. Raises :class:`InvalidURLError` for a malformed URL,
    an unknown URL option or an invalid option value (naming the valid ones),
    :class:`~storekeeper.errors.InvalidArgumentError` for a keyword option the backend
    does not take (naming the valid ones) or one of the wrong type,
    :class:`UnknownSchemeError` (an ``InvalidURLError``) for a scheme nobody handles and
    :class:`MissingDependencyError` (naming the extra to install) when the backend's
    dependency is missing, and :class:`~storekeeper.errors.ReadOnlyStoreError` when the
    URL opens a read-only store (nothing is connected then): open those with
    :func:`open_read_only_store`. Use the result as a context manager to disconnect it.
    """
    store = create_store(url, **options)
    store.connect()
    return store


def create_store(url: str, **options: Any) -> AbstractStore:
    """The writable store *url* describes, not connected: as :func:`open_store` (same
    URLs, options and errors) but for the ``connect()``. The built-in backends create
    and open nothing on disk before they are connected (a ``sqlite:`` file or a
    ``file:`` URL's ``create=true`` waits for it), so its ``storage_paths()`` can be
    checked first; use it as a context manager to connect and disconnect it.
    """
    store = _create(url, options)
    if not isinstance(store, AbstractStore):
        raise ReadOnlyStoreError(
            f"{url!r} opens a read-only {type(store).__name__}; "
            "open it with open_read_only_store() to read from it"
        )
    return store


def open_read_only_store(url: str, **options: Any) -> AbstractReadOnlyStore:
    """Create and connect the store that *url* describes, read-only backends included.

    As :func:`open_store` (same URLs, options and errors, but no
    :class:`~storekeeper.errors.ReadOnlyStoreError`), typed as the read API: for code
    that only reads, or that serves whatever URL it is given (check
    ``isinstance(store, AbstractStore)`` before writing). The store itself is not made
    read-only: a writable backend opened here still accepts writes at run time.
    """
    store = _create(url, options)
    store.connect()
    return store


def _create(url: str, options: dict[str, Any]) -> AbstractReadOnlyStore:
    """The unconnected store for *url*: parse, find the backend, call its ``from_url``."""
    if not isinstance(url, str):
        raise TypeError(f"a store URL is a str, not {type(url).__name__}")
    try:
        parts = urls.split_url(url)
    except ValueError as exc:  # e.g. an unbalanced "[" where a host would be
        raise InvalidURLError(f"malformed store URL {url!r}: {exc}") from None
    if not parts.scheme:
        raise UnknownSchemeError(
            f"store URL {url!r} has no scheme (e.g. 'sqlite:///app.db' for ./app.db)"
        )
    return _resolve(parts.scheme.lower()).from_url(parts, **options)


def _resolve(scheme: str) -> _FromUrl:
    with _lock:
        backend = _registry.get(scheme)
    if backend is None:  # only then are the installed packages' entry points worth reading
        _load_entry_points()
        with _lock:
            backend = _registry.get(scheme)
    if backend is None:
        known = ", ".join(registered_schemes())
        raise UnknownSchemeError(f"no store backend handles {scheme!r}:// (known: {known})")
    if not isinstance(backend.target, str):
        return cast(_FromUrl, backend.target)
    module_name, _, attribute = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if backend.extra is None or module_name.startswith(exc.name or "\0"):
            raise
        raise MissingDependencyError(
            f"the {scheme}:// backend needs {exc.name!r}: "
            f"pip install 'storekeeper[{backend.extra}]'"
        ) from exc
    return cast(_FromUrl, getattr(module, attribute))


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points  # imports email, zipfile, csv, ...: on demand

    found = {
        ep.name.lower(): _Backend(ep.value, None) for ep in entry_points(group=ENTRY_POINT_GROUP)
    }
    with _lock:
        for scheme, backend in found.items():
            _registry.setdefault(scheme, backend)
        _entry_points_loaded = True
