"""A ``dict``-like view of a store: key -> data bytes."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol, runtime_checkable

from storekeeper.errors import ReadOnlyStoreError

__all__ = ["StoreMapping"]


class _ReadableStore(Protocol):
    """What a mapping reads through (every store has it)."""

    def to_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def query_keys(self, *where: Any, **kwargs: Any) -> list[str]: ...


@runtime_checkable
class _WritableStore(_ReadableStore, Protocol):
    """What a mapping writes through (every writable store has it)."""

    def set_data(self, key: str, data: Any) -> None: ...
    def delete(self, key: str) -> None: ...


class StoreMapping(MutableMapping[str, bytes]):
    """A :class:`~collections.abc.MutableMapping` over a store's keys and data bytes.

    ``m[key]`` reads the whole data, ``m[key] = b"..."`` replaces the data and keeps the
    key's metadata (``{}`` for a new key), ``del m[key]`` deletes the key. Iteration and
    ``len`` list the store's keys at the time of the call. Writes on a read-only store
    raise :class:`~storekeeper.errors.ReadOnlyStoreError`.
    """

    def __init__(self, store: _ReadableStore) -> None:
        self.store = store
        # Decided once: a store's class, and so whether it can write, does not change.
        self._writer = store if isinstance(store, _WritableStore) else None

    def __getitem__(self, key: str) -> bytes:
        return self.store.to_bytes(key)

    def __setitem__(self, key: str, data: bytes) -> None:
        self._writable().set_data(key, data)

    def __delitem__(self, key: str) -> None:
        self._writable().delete(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(key) and self.store.exists(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.query_keys())

    def __len__(self) -> int:
        return len(self.store.query_keys())

    def __repr__(self) -> str:
        return f"<StoreMapping of {self.store!r}>"

    def _writable(self) -> _WritableStore:
        if self._writer is None:
            raise ReadOnlyStoreError(f"{type(self.store).__name__} is read-only")
        return self._writer
