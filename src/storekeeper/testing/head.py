"""Conformance checks of :meth:`~storekeeper.store.AbstractReadOnlyStore.head`.

``head`` answers what ``get`` would (version, size, metadata) without reading the data,
and ``None`` instead of an exception for a missing key: composites look keys up with it
before every write, so a store that overrides it must agree with its own ``get`` in
every state a key can be in (new, overwritten, large, deleted, inside a transaction).
"""

from __future__ import annotations

import pytest

from storekeeper.errors import InvalidKeyError
from storekeeper.store import AbstractStore, Value
from storekeeper.store.value import Head

__all__ = ["HeadTests"]


def _head_of(value: Value) -> Head:
    return Head(value.version, value.size, value.metadata)


class HeadTests:
    """Mixin of :class:`~storekeeper.testing.store.StoreTests`: ``head`` agrees with ``get``."""

    #: Size of the large value checked (over SQLite's default ``inline_limit``).
    head_large_size = 2 * 1024 * 1024 + 5

    def test_head_of_a_missing_key_is_none(self, store: AbstractStore) -> None:
        assert store.head("missing") is None
        store.set("gone", (b"x", {"a": 1}))
        store.delete("gone")
        assert store.head("gone") is None
        for bad in ("", "a\x00b"):
            with pytest.raises(InvalidKeyError):
                store.head(bad)

    def test_head_agrees_with_get(self, store: AbstractStore) -> None:
        metadata = {"s": "é\u2028", "n": [1, 2.5, None, True], "d": {"k": {"x": []}}}
        store.set("k", (b"hello", metadata))
        assert store.head("k") == _head_of(store.get("k"))
        assert store.head("k") == (store.get("k").version, 5, metadata)
        store.set("k", (b"hello again", {"b": 2}))
        assert store.head("k") == _head_of(store.get("k")) == (store.get("k").version, 11, {"b": 2})
        store.update_metadata("k", {"c": 3})
        assert store.head("k") == _head_of(store.get("k"))
        store.set("big", (b"L" * self.head_large_size, {"large": True}))
        assert store.head("big") == _head_of(store.get("big"))
        assert store.head("big") == (
            store.get("big").version,
            self.head_large_size,
            {"large": True},
        )

    def test_head_metadata_is_a_copy(self, store: AbstractStore) -> None:
        store.set("k", (b"x", {"list": [1]}))
        head = store.head("k")
        assert head is not None
        head.metadata["list"].append(2)
        head.metadata["new"] = 1
        assert store.get_metadata("k") == {"list": [1]}

    def test_head_sees_the_transactions_own_writes(self, store: AbstractStore) -> None:
        store.set("k", (b"x", {"n": 1}))
        store.set("gone", (b"x", {}))
        with store.transaction():
            store.set("k", (b"xyz", {"n": 2}))
            store.set("new", (b"", {}))
            store.delete("gone")
            assert store.head("gone") is None
            assert (
                store.head("k") == _head_of(store.get("k")) == (store.get("k").version, 3, {"n": 2})
            )
            assert store.head("new") == _head_of(store.get("new"))
        assert store.head("k") == _head_of(store.get("k"))
