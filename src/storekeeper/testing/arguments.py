"""Conformance checks of call arguments, mixed into :class:`~storekeeper.testing.store.StoreTests`.

Every store, backend or composite, must refuse before anything is read or written, and
leave the stored values as they were:

- the keys of a batch call given as one ``str`` (or ``bytes``), which iterating would
  split into one-character keys, with :class:`~storekeeper.errors.InvalidArgumentError`;
- a ``buffer_size`` that is not a positive ``int``, on every method that takes one,
  whatever the data (bytes included), with ``InvalidArgumentError``;
- ``set_metadata(key, None)`` with :class:`~storekeeper.errors.InvalidMetadataError`
  (``None`` means ``{}`` only as the metadata of a ``(data, metadata)`` pair).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storekeeper.errors import InvalidArgumentError, InvalidMetadataError
from storekeeper.store import AbstractStore

__all__ = ["ArgumentTests"]

#: buffer_size values every store refuses.
BAD_BUFFER_SIZES: list[Any] = ["1024", None, 1.5, True, 0, -1]


def _state(store: AbstractStore) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Every key's data and metadata, read back through the store."""
    return {key: (store.to_bytes(key), store.get_metadata(key)) for key in store.query_keys()}


class ArgumentTests:
    """Arguments of the wrong kind are refused, and nothing changes (see the module)."""

    @pytest.mark.parametrize("keys", ["ab", b"ab"], ids=repr)
    def test_batch_keys_given_as_one_str_are_refused(self, store: AbstractStore, keys: Any) -> None:
        store.set("a", (b"old", {"n": 1}))
        before = _state(store)
        calls: list[Callable[[], object]] = [
            lambda: store.multiset(keys, [(b"1", {}), (b"2", {})]),
            lambda: store.multiset_data(keys, [b"1", b"2"]),
            lambda: store.multiset_metadata(keys, [{"m": 1}, {"m": 2}]),
            lambda: store.multiupdate_metadata(keys, [{"m": 1}, {"m": 2}]),
            lambda: store.multiget(keys),
            lambda: store.multiget_data(keys),
            lambda: store.multiget_metadata(keys),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError, match="keys"):
                call()
        assert _state(store) == before

    @pytest.mark.parametrize("buffer_size", BAD_BUFFER_SIZES, ids=repr)
    def test_bad_buffer_size_is_refused_by_every_method(
        self, store: AbstractStore, tmp_path: Path, buffer_size: Any
    ) -> None:
        store.set("k", (b"old", {"n": 1}))
        before = _state(store)
        source, target = tmp_path / "arguments-source", tmp_path / "arguments-target"
        source.write_bytes(b"from a file")
        calls: list[Callable[[], object]] = [
            lambda: store.set("k", (b"new", {}), buffer_size),
            lambda: store.set("new", (b"new", {}), buffer_size),
            lambda: store.set_data("k", b"new", buffer_size),
            lambda: store.from_bytes("k", b"new", buffer_size),
            lambda: store.from_file("k", source, buffer_size),
            lambda: store.multiset(["k", "new"], [(b"1", {}), (b"2", {})], buffer_size),
            lambda: store.multiset([], [], buffer_size),
            lambda: store.multiset_data(["k"], [b"new"], buffer_size),
            lambda: store.to_bytes("k", buffer_size),
            lambda: store.to_file("k", target, buffer_size),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError, match="buffer_size"):
                call()
        assert _state(store) == before
        assert not target.exists()

    def test_buffer_size_one_still_works(self, store: AbstractStore, tmp_path: Path) -> None:
        store.set("k", (b"data", {}), 1)
        store.multiset_data(["k"], [b"more"], 1)
        assert store.to_bytes("k", 1) == b"more"
        store.to_file("k", tmp_path / "arguments-out", 1)
        assert (tmp_path / "arguments-out").read_bytes() == b"more"

    def test_set_metadata_none_is_refused(self, store: AbstractStore) -> None:
        store.set("k", (b"data", {"m": 1}))
        before = _state(store)
        with pytest.raises(InvalidMetadataError):
            store.set_metadata("k", None)  # type: ignore[arg-type]
        with pytest.raises(InvalidMetadataError):
            store.set_metadata("new", None)  # type: ignore[arg-type]
        with pytest.raises(InvalidMetadataError):
            store.multiset_metadata(["k"], [None])  # type: ignore[list-item]
        assert _state(store) == before
        store.set("k", (b"data", None))  # None as the metadata of a pair means {}
        assert store.get_metadata("k") == {}
