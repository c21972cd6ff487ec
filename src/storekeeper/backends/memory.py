"""``DictMemoryStore``: a thread-safe store in a Python dict (``memory://``).

Values live in the process's memory and vanish with it. Data and metadata are copied in
and out, so neither callers nor listeners can change what is stored behind the store's
back. Transactions are serializable: a transaction holds the store's lock from begin to
commit/rollback, so other threads' reads and writes wait for it and never see its
uncommitted writes; rollback replays an undo log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult

from storekeeper.errors import InvalidURLError
from storekeeper.events import BaseEventManager
from storekeeper.store._validate import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    check_key,
    decode_metadata,
    encode_metadata,
    select_metadata,
)
from storekeeper.store.abstract import (
    AbstractStore,
    check_precondition,
    missing,
    new_version,
    unpack_value,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.query import compile_terms, matches
from storekeeper.store.urls import url_options
from storekeeper.store.value import BytesValue, Value

__all__ = ["DictMemoryStore"]


@dataclass(slots=True, frozen=True)
class _Entry:
    data: bytes
    metadata_json: str
    created: float
    modified: float
    version: str


class DictMemoryStore(AbstractStore):
    """A store held in memory; the same instance keeps its data across reconnects."""

    def __init__(self, event_manager: BaseEventManager | None = None) -> None:
        super().__init__(event_manager)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        # Only the thread holding ``_lock`` for a transaction can have an undo log.
        self._undo: list[tuple[str, _Entry | None]] | None = None

    @classmethod
    def from_url(cls, url: SplitResult, **options: Any) -> DictMemoryStore:
        """Build a store for ``memory://`` (each call gives a new, empty store).

        The URL has no host, path or options: anything there is an
        :class:`~storekeeper.errors.InvalidURLError`, since it would name nothing.
        """
        url_options(url, {})
        if url.netloc or url.path:
            raise InvalidURLError(
                f"memory:// URLs have no host or path (got {url.geturl()!r}): each "
                "open_store('memory://') is a new, empty store of its own"
            )
        return cls(**options)

    def info(self) -> dict[str, Any]:
        """Store description; adds the number of keys."""
        with self._lock:
            return {**super().info(), "keys": len(self._entries)}

    # -- reads -------------------------------------------------------------------------
    def _entry(self, key: str) -> _Entry:
        check_key(key)
        self._require_connection()
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise missing(key)
        return entry

    def get(self, key: str) -> Value:
        """The value of *key* as a :class:`BytesValue`."""
        entry = self._entry(key)
        return BytesValue(
            entry.data,
            created=entry.created,
            modified=entry.modified,
            version=entry.version,
            metadata_json=entry.metadata_json,
        )

    def exists(self, key: str) -> bool:
        """Whether *key* exists."""
        check_key(key)
        self._require_connection()
        with self._lock:
            return key in self._entries

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        return select_metadata(decode_metadata(self._entry(key).metadata_json), select)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data (bytes are immutable, so no copy is made)."""
        return self._entry(key).data

    def query(
        self, select: Iterable[str] | None = None, **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs, in insertion order."""
        self._require_connection()
        terms = compile_terms(kwargs)
        names = None if select is None else list(select)
        with self._lock:
            items = [(key, entry.metadata_json) for key, entry in self._entries.items()]
        result = []
        for key, text in items:
            metadata = decode_metadata(text)
            if matches(metadata, terms):
                result.append((key, select_metadata(metadata, names)))
        return result

    def query_keys(self, **kwargs: Any) -> list[str]:
        """Matching keys, in insertion order (no metadata decoding without terms)."""
        if kwargs:
            return super().query_keys(**kwargs)
        self._require_connection()
        with self._lock:
            return list(self._entries)

    # -- writes ------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str:
        """Replace *key*'s data and metadata (see :meth:`AbstractStore.set`)."""
        check_key(key)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            data = self._read_source(key, source, buffer_size)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]
        return self._write(key, data, metadata_json, if_version, if_exists)

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata (``{}`` for a new key)."""
        check_key(key)
        self._require_connection()
        content = self._read_source(key, data, buffer_size)
        self._write(key, content, None, if_version, if_exists)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data (empty for a new key)."""
        check_key(key)
        self._require_connection()
        self._write(key, None, encode_metadata(metadata), if_version, if_exists)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing."""
        check_key(key)
        self._require_connection()
        encode_metadata(metadata)  # reject bad input before touching anything
        with self._lock:
            old = self._entries.get(key)
            if old is None:
                raise missing(key)
            merged = decode_metadata(old.metadata_json)
            merged.update(metadata)
            self._write(key, None, encode_metadata(merged), if_version, True)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing."""
        check_key(key)
        self._require_connection()
        with self._lock:
            old = self._entries.get(key)
            if old is None:
                raise missing(key)
            check_precondition(key, old.version, if_version, None)
            self._remember(key, old)
            del self._entries[key]
        self._emit_change(StoreDeleteEvent, key, old.metadata_json)

    def _write(
        self,
        key: str,
        data: bytes | None,
        metadata_json: str | None,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Store a new entry; ``None`` for data or metadata keeps the current one.
        Returns its version."""
        with self._lock:
            old = self._entries.get(key)
            check_precondition(key, None if old is None else old.version, if_version, if_exists)
            now = time.time()
            entry = _Entry(
                data if data is not None else (b"" if old is None else old.data),
                metadata_json
                if metadata_json is not None
                else ("{}" if old is None else old.metadata_json),
                now if old is None else old.created,
                now,
                new_version(),
            )
            self._remember(key, old)
            self._entries[key] = entry
        self._emit_change(
            StoreSetEvent if old is None else StoreUpdateEvent, key, entry.metadata_json
        )
        return entry.version

    # -- transactions --------------------------------------------------------------------
    def _remember(self, key: str, old: _Entry | None) -> None:
        if self._undo is not None:
            self._undo.append((key, old))

    def _begin_transaction(self) -> None:
        self._require_connection()
        self._lock.acquire()
        self._undo = []

    def _commit_transaction(self) -> None:
        self._undo = None
        self._lock.release()

    def _rollback_transaction(self) -> None:
        try:
            self._rollback_to_savepoint(0)
        finally:
            self._undo = None
            self._lock.release()

    def _savepoint(self) -> object:
        assert self._undo is not None  # only called inside a transaction
        return len(self._undo)

    def _rollback_to_savepoint(self, token: object) -> None:
        assert self._undo is not None and isinstance(token, int)
        while len(self._undo) > token:
            key, old = self._undo.pop()
            if old is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = old

    def _release_savepoint(self, token: object) -> None:
        return None
