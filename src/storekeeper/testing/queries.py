"""Conformance mixin: partial reads and metadata queries of one store.

Part of :class:`storekeeper.testing.StoreTests` (see :mod:`storekeeper.testing.store`):
ranges are end-exclusive, ``select`` limits the metadata returned, multi-key reads keep
their input order, and queries (exact values and the terms ``Exists``, ``In``,
``Prefix``, ``Range``) and ``glob`` find exactly the matching keys.
"""

from __future__ import annotations

from typing import Any

from storekeeper.store import AbstractStore, Exists, In, Prefix, Range

__all__ = ["QUERY_VALUES", "QueryTests"]

#: The values the query checks run on (the read-only suite publishes the same ones).
QUERY_VALUES: dict[str, tuple[bytes, dict[str, Any]]] = {
    "k1": (b"1", {"author": "ali", "org": "40", "year": 2000, "tag": "a"}),
    "k2": (b"2", {"author": "ali", "org": "41", "year": 2005.5, "tag": None}),
    "k3": (b"3", {"author": "bob", "org": "40", "year": 2010, "path": "docs/x"}),
    "k4": (b"4", {"author": "bob", "year": "2000", "nested": {"a": [1, 2]}}),
    "k5": (b"5", {}),
}


class QueryTests:
    """Partial reads and queries; needs the ``store`` fixture of
    :class:`~storekeeper.testing.StoreTests`."""

    # -- queries --------------------------------------------------------------------------
    def _populate(self, store: AbstractStore) -> None:
        store.multiset(list(QUERY_VALUES), list(QUERY_VALUES.values()))

    def test_query_exact_match(self, store: AbstractStore) -> None:
        self._populate(store)
        assert sorted(store.query_keys(author="ali")) == ["k1", "k2"]
        assert store.query_keys(author="ali", org="40") == ["k1"]
        assert sorted(store.query_keys()) == ["k1", "k2", "k3", "k4", "k5"]
        assert store.query_keys(year=2000) == ["k1"]
        assert store.query_keys(year=2000.0) == ["k1"]
        assert store.query_keys(year="2000") == ["k4"]
        assert store.query_keys(tag=None) == ["k2"]
        assert store.query_keys(nested={"a": [1, 2]}) == ["k4"]
        assert store.query_keys(author="nobody") == []

    def test_query_select(self, store: AbstractStore) -> None:
        self._populate(store)
        result = dict(store.query(select=["org", "missing"], author="bob"))
        assert result == {"k3": {"org": "40"}, "k4": {}}
        full = dict(store.query(author="ali", org="40"))
        assert full == {"k1": {"author": "ali", "org": "40", "year": 2000, "tag": "a"}}
        everything = dict(store.query())
        assert set(everything) == {"k1", "k2", "k3", "k4", "k5"}
        assert everything["k5"] == {}

    def test_query_terms(self, store: AbstractStore) -> None:
        self._populate(store)
        assert sorted(store.query_keys(author=In(["bob", "eve"]))) == ["k3", "k4"]
        assert sorted(store.query_keys(year=Range(2000, 2010))) == ["k1", "k2"]
        assert sorted(store.query_keys(year=Range(2000, 2010, include_high=True))) == [
            "k1",
            "k2",
            "k3",
        ]
        assert store.query_keys(year=Range(low=2006)) == ["k3"]
        assert store.query_keys(year=Range(high="3", low="1")) == ["k4"]
        assert sorted(store.query_keys(tag=Exists())) == ["k1", "k2"]
        assert sorted(store.query_keys(org=Exists(False))) == ["k4", "k5"]
        assert store.query_keys(path=Prefix("docs/")) == ["k3"]
        assert store.query_keys(path=Prefix("doc"), author="bob") == ["k3"]
        assert store.query_keys(author=In([])) == []

    def test_glob(self, store: AbstractStore) -> None:
        for key in ["a.jpg", "b.jpg", "c.png", "dir/d.jpg", ".hidden.jpg", "A.JPG"]:
            store.set(key, (b"", {}))
        assert sorted(store.glob("*.jpg")) == [".hidden.jpg", "a.jpg", "b.jpg", "dir/d.jpg"]
        assert store.glob("?.png") == ["c.png"]
        assert sorted(store.glob("[ab].jpg")) == ["a.jpg", "b.jpg"]
        assert store.glob("*.JPG") == ["A.JPG"]
