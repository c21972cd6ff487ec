"""A ``dict``-like view of a store: key -> data bytes."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

from storekeeper.errors import ReadOnlyStoreError

if TYPE_CHECKING:
    from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore

__all__ = ["StoreMapping"]


class StoreMapping(MutableMapping[str, bytes]):
    """A :class:`~collections.abc.MutableMapping` over a store's keys and data bytes.

    ``m[key]`` reads the whole data, ``m[key] = b"..."`` replaces the data and keeps the
    key's metadata (``{}`` for a new key), ``del m[key]`` deletes the key. Iteration and
    ``len`` list the store's keys at the time of the call. Writes on a read-only store
    raise :class:`~storekeeper.errors.ReadOnlyStoreError`.
    """

    def __init__(self, store: AbstractReadOnlyStore) -> None:
        self.store = store

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

    def _writable(self) -> AbstractStore:
        from storekeeper.store.abstract import AbstractStore  # abstract imports this module

        if not isinstance(self.store, AbstractStore):
            raise ReadOnlyStoreError(f"{type(self.store).__name__} is read-only")
        return self.store
