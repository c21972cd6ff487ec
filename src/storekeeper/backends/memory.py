"""``DictMemoryStore``: a thread-safe store in a Python dict (``memory://``).

Values live in the process's memory and vanish with it. Data and metadata are copied in
and out, so neither callers nor listeners can change what is stored behind the store's
back.

Transactions are serializable. One transaction is open at a time, and plain writes wait
for it: another thread's write or transaction waits until it ends, another asyncio task
of the same thread gets :class:`~storekeeper.errors.TransactionError` at once (see
:mod:`storekeeper.store.owners`). Its writes are kept aside, seen only by its owner, and
applied all together at commit under the data lock; rollback forgets them. So reads never
wait for a transaction and always see committed data, never part of a commit.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult

from storekeeper.errors import InvalidURLError
from storekeeper.events import BaseEventManager
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Claim,
    Metadata,
    StoreCapabilities,
    check_key,
    check_precondition,
    check_read,
    check_select,
    check_write,
    decode_metadata,
    encode_metadata,
    matches,
    missing,
    new_version,
    pick_metadata,
    query_terms,
    select_metadata,
    unpack_value,
)
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.listing import SortedKeys, check_listing, prefix_end, walk, with_changes
from storekeeper.store.owners import busy, may_wait
from storekeeper.store.urls import create, url_options
from storekeeper.store.value import BytesValue, Value

__all__ = ["DictMemoryStore"]


@dataclass(slots=True, frozen=True)
class _Entry:
    data: bytes
    metadata_json: str
    created: float
    modified: float
    version: str


_ABSENT = object()


@dataclass(slots=True)
class _Transaction:
    """The open transaction: its owner, its writes (``None``: deleted) and, for
    savepoints, the entry each write replaced in ``changes`` (``_ABSENT``: none)."""

    claim: Claim
    changes: dict[str, _Entry | None] = field(default_factory=dict)
    log: list[tuple[str, object]] = field(default_factory=list)

    def record(self, key: str, entry: _Entry | None) -> None:
        self.log.append((key, self.changes.get(key, _ABSENT)))
        self.changes[key] = entry

    def rollback_to(self, mark: int) -> None:
        while len(self.log) > mark:
            key, previous = self.log.pop()
            if previous is _ABSENT:
                del self.changes[key]
            else:
                self.changes[key] = previous  # type: ignore[assignment]


_CAPABILITIES = StoreCapabilities(
    conditional_writes=True, atomic_transactions=True, isolated_transactions=True, ranges=True
)


class DictMemoryStore(AbstractStore):
    """A store held in memory; the same instance keeps its data across reconnects."""

    def __init__(self, event_manager: BaseEventManager | None = None) -> None:
        super().__init__(event_manager)
        self._entries: dict[str, _Entry] = {}
        # Guards _entries and _transaction; held briefly, never for a whole transaction.
        self._lock = threading.RLock()
        self._turn = threading.Condition(self._lock)  # notified when a transaction ends
        self._transaction: _Transaction | None = None
        self._index = SortedKeys(self._entries.keys)  # for list_keys; changed under _lock

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
        return create(cls, url, **options)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Conditional writes, atomic and isolated transactions and ranges, in this
        process only: the data lives in this object and goes with it."""
        return _CAPABILITIES

    def info(self) -> dict[str, Any]:
        """Store description; adds the number of keys."""
        with self._lock:
            return {**super().info(), "keys": len(self._entries)}

    # -- reads -------------------------------------------------------------------------
    def _entry(self, key: str) -> _Entry:
        check_key(key)
        self._require_connection()
        with self._lock:
            # No open transaction is the common case: one check, no call.
            entry = self._entries.get(key) if self._transaction is None else self._current(key)
        if entry is None:
            raise missing(key)
        return entry

    def _current(self, key: str) -> _Entry | None:
        """*key*'s entry as the caller sees it (lock held): its own transaction's write,
        else the committed one."""
        transaction = self._transaction
        if transaction is not None and key in transaction.changes and transaction.claim.is_mine():
            return transaction.changes[key]
        return self._entries.get(key)

    def _visible(self) -> dict[str, _Entry]:
        """Every entry as the caller sees it (lock held); do not modify the result."""
        transaction = self._transaction
        if transaction is None or not transaction.changes or not transaction.claim.is_mine():
            return self._entries
        view = dict(self._entries)
        for key, entry in transaction.changes.items():
            if entry is None:
                view.pop(key, None)
            else:
                view[key] = entry
        return view

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
            if self._transaction is None:
                return key in self._entries
            return self._current(key) is not None

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        return select_metadata(decode_metadata(self._entry(key).metadata_json), select)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data (bytes are immutable, so no copy is made)."""
        check_read(key, buffer_size)
        if self._progress_observed():
            return super().to_bytes(key, buffer_size)
        return self._entry(key).data

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs, in insertion order."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        with self._lock:
            items = [(key, entry.metadata_json) for key, entry in self._visible().items()]
        result = []
        for key, text in items:
            metadata = decode_metadata(text)
            if matches(metadata, terms):
                result.append((key, pick_metadata(metadata, names)))
        return result

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys, in insertion order (no metadata decoding without terms)."""
        if where or kwargs:
            return super().query_keys(*where, **kwargs)
        self._require_connection()
        with self._lock:
            return list(self._visible())

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* (see :meth:`AbstractReadOnlyStore.list_keys`): a binary
        search in a sorted list of the keys, then the keys listed.

        The list is brought up to date when a listing needs it, at a cost that grows
        with the keys added or deleted since the last listing (see
        :class:`~storekeeper.store.listing.SortedKeys`): nothing when there were none,
        one sort of every key after a bulk load. A listing reads the keys as they were
        when it was called.
        """
        check_listing(prefix, delimiter)
        self._require_connection()
        with self._lock:
            keys = self._index.snapshot()
            transaction = self._transaction
            changes = None
            if transaction is not None and transaction.changes and transaction.claim.is_mine():
                changes = {key: entry is not None for key, entry in transaction.changes.items()}
        end = prefix_end(prefix)

        def keys_from(low: str) -> Iterator[str]:
            stop = len(keys) if end is None else bisect_left(keys, end)
            return map(keys.__getitem__, range(bisect_left(keys, low), stop))

        return walk(
            keys_from if changes is None else with_changes(keys_from, changes), prefix, delimiter
        )

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
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            data = self._read_source(key, source, buffer_size, metadata_json)
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
        check_write(key, if_version, if_exists, buffer_size)
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
        check_write(key, if_version, if_exists)
        self._require_connection()
        self._write(key, None, encode_metadata(metadata), if_version, if_exists)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        encode_metadata(metadata)  # reject bad input before touching anything
        with self._lock:
            self._await_turn()
            old = self._current(key)
            if old is None:
                raise missing(key)
            merged = decode_metadata(old.metadata_json)
            merged.update(metadata)
            self._write(key, None, encode_metadata(merged), if_version, True, StoreUpdateEvent)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        with self._lock:
            transaction = self._await_turn()
            old = self._current(key)
            if old is None:
                raise missing(key)
            check_precondition(key, old.version, if_version, None)
            if transaction is None:
                del self._entries[key]
                self._index.discard(key)
            else:
                transaction.record(key, None)
        self._emit_change(StoreDeleteEvent, key, old.metadata_json)

    def _write(
        self,
        key: str,
        data: bytes | None,
        metadata_json: str | None,
        if_version: str | None,
        if_exists: bool | None,
        event: type[StoreModificationEvent] = StoreSetEvent,
    ) -> str:
        """Store a new entry; ``None`` for data or metadata keeps the current one.
        Emits *event* for it. Returns its version."""
        with self._lock:
            transaction = None if self._transaction is None else self._await_turn()
            old = self._entries.get(key) if transaction is None else self._current(key)
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
            if transaction is None:
                self._entries[key] = entry
                if old is None:
                    self._index.add(key)
            else:
                transaction.record(key, entry)
        self._emit_change(event, key, entry.metadata_json)
        return entry.version

    # -- transactions --------------------------------------------------------------------
    def _await_turn(self) -> _Transaction | None:
        """Before a write (lock held): the caller's own transaction, or ``None`` once no
        transaction is open. Waits for another thread's transaction to end (or raises
        ``busy`` where ``may_wait`` says not to); another task of this thread's
        transaction raises TransactionError (see owners.py)."""
        while True:
            transaction = self._transaction
            if transaction is None:
                return None
            claim = transaction.claim
            if claim.is_mine():
                return transaction
            if claim.blocks_here():
                raise claim.refusal(self)
            if not may_wait():
                raise busy(self)
            self._turn.wait()

    def _own_transaction(self) -> _Transaction:
        transaction = self._transaction
        assert transaction is not None and transaction.claim.is_mine()  # hooks run in it
        return transaction

    def _begin_transaction(self) -> None:
        self._require_connection()
        with self._lock:
            mine = self._await_turn()
            assert mine is None  # a block inside a transaction nests instead of beginning
            self._transaction = _Transaction(Claim.take())

    def _commit_transaction(self) -> None:
        with self._lock:
            for key, entry in self._own_transaction().changes.items():
                if entry is None:
                    if self._entries.pop(key, None) is not None:
                        self._index.discard(key)
                else:
                    if key not in self._entries:
                        self._index.add(key)
                    self._entries[key] = entry
            self._end()

    def _rollback_transaction(self) -> None:
        with self._lock:
            self._own_transaction()
            self._end()

    def _end(self) -> None:
        self._transaction = None
        self._turn.notify_all()

    def _savepoint(self) -> object:
        with self._lock:
            return len(self._own_transaction().log)

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, int)  # made by _savepoint
        with self._lock:
            self._own_transaction().rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None
