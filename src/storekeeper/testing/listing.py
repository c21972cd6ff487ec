"""Conformance checks of ``list_keys(prefix, delimiter)``: prefix listing in key order,
and of ``list_info(prefix)``, the listing with each key's details.

Every answer is compared with :func:`model_listing`, the listing worked out in plain
Python from the keys the store holds, on keys chosen to trip a backend that maps keys
to something else: prefixes that stop inside a folder name, keys with characters a
file name or URL must escape, U+10FFFF right after the prefix (where a range scan
ends), delimiters of several characters, and keys that sort between a folder and its
contents.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storekeeper.errors import InvalidArgumentError, InvalidKeyError
from storekeeper.store import AbstractStore, KeyInfo

__all__ = ["ListingTests", "model_listing"]

_MAX = "\U0010ffff"

#: Keys whose listings disagree when a backend folds or orders them wrongly.
TRICKY_KEYS = [
    "a",
    "a/",
    "a/b",
    "a/b/c",
    "a/bc",
    "a-b",
    "a.b",
    "a0",
    "ab",
    "ab/c",
    "abc",
    "b::c::d",
    "b::",
    "b:::e",
    "b:c",
    "p" + _MAX,
    "p" + _MAX + "x",
    "p" + _MAX + _MAX,
    "p" + _MAX + "/" + _MAX,
    "q",
    "é/ü",
    "日本/語",
    "Z/z",
]


def model_listing(keys: Iterable[str], prefix: str = "", delimiter: str | None = None) -> list[str]:
    """What ``list_keys(prefix, delimiter)`` must return for a store holding *keys*."""
    entries = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        index = -1 if delimiter is None else key.find(delimiter, len(prefix))
        entries.add(key if index < 0 else key[: index + len(delimiter)])  # type: ignore[arg-type]
    return sorted(entries)


def _fill(store: AbstractStore, keys: list[str]) -> None:
    store.multiset(keys, [(b"", {"n": index}) for index in range(len(keys))])


class ListingTests:
    """Mixin of :class:`~storekeeper.testing.store.StoreTests`: prefix listing."""

    #: Whether ``list_keys`` reads keys as it yields them, so the first one arrives
    #: without every matching key being read first (false for the file system store,
    #: whose directory has no order: it sorts the matching names in memory).
    listing_streams = True

    def _check(
        self, store: AbstractStore, keys: list[str], prefix: str, delimiter: str | None
    ) -> None:
        listed = store.list_keys(prefix, delimiter)
        assert isinstance(listed, Iterator)
        assert list(listed) == model_listing(keys, prefix, delimiter), (prefix, delimiter)

    def test_list_keys_of_an_empty_store(self, store: AbstractStore) -> None:
        assert list(store.list_keys()) == []
        assert list(store.list_keys("a", "/")) == []

    def test_list_keys_in_order_under_any_prefix(self, store: AbstractStore) -> None:
        _fill(store, TRICKY_KEYS)
        prefixes = {key[:end] for key in TRICKY_KEYS for end in range(len(key) + 1)}
        for prefix in [*sorted(prefixes), "zz", "a/b/c/d", "\x7f"]:
            self._check(store, TRICKY_KEYS, prefix, None)
            self._check(store, TRICKY_KEYS, prefix, "/")

    def test_list_keys_folds_folders_in_order(self, store: AbstractStore) -> None:
        _fill(store, TRICKY_KEYS)
        # "/" sorts between "-", "." and "0": the folder "a/" must land between them.
        assert list(store.list_keys("a", "/")) == [
            "a",
            "a-b",
            "a.b",
            "a/",
            "a0",
            "ab",
            "ab/",
            "abc",
        ]
        assert list(store.list_keys("a/", "/")) == ["a/", "a/b", "a/b/", "a/bc"]
        # A prefix that stops inside a folder name, and one equal to a key.
        assert list(store.list_keys("a/b", "/")) == ["a/b", "a/b/", "a/bc"]
        assert list(store.list_keys("", "/")) == model_listing(TRICKY_KEYS, "", "/")

    def test_list_keys_with_delimiters_of_several_characters(self, store: AbstractStore) -> None:
        _fill(store, TRICKY_KEYS)
        assert list(store.list_keys("b", "::")) == ["b::", "b:c"]
        assert list(store.list_keys("b::", "::")) == ["b::", "b:::e", "b::c::"]
        for delimiter in ("::", ":::", "/b", "b/", "ab", "\U0010ffff\U0010ffff"):
            for prefix in ("", "a", "b", "b:", "p"):
                self._check(store, TRICKY_KEYS, prefix, delimiter)

    def test_list_keys_past_the_last_code_point(self, store: AbstractStore) -> None:
        _fill(store, TRICKY_KEYS)
        high = [key for key in TRICKY_KEYS if key.startswith("p")]
        assert list(store.list_keys("p")) == sorted(high)
        assert list(store.list_keys("p" + _MAX)) == sorted(high)
        assert list(store.list_keys("p" + _MAX + _MAX)) == ["p" + _MAX + _MAX]
        assert list(store.list_keys("p", _MAX)) == ["p" + _MAX]
        assert list(store.list_keys("p" + _MAX, "/")) == [
            "p" + _MAX,
            "p" + _MAX + "/",
            "p" + _MAX + "x",
            "p" + _MAX + _MAX,
        ]

    def test_list_keys_of_weird_keys(self, store: AbstractStore) -> None:
        # Imported here: storekeeper.testing.store imports this module.
        from storekeeper.testing.store import WEIRD_KEYS

        _fill(store, WEIRD_KEYS)
        prefixes = {key[:end] for key in WEIRD_KEYS for end in (0, 1, 2, 3, len(key))}
        for prefix in sorted(prefixes):
            for delimiter in (None, "/", ".", "%", "é"):
                self._check(store, WEIRD_KEYS, prefix, delimiter)

    def test_list_keys_agrees_with_the_model(self, store: AbstractStore) -> None:
        keys = _model_keys()
        _fill(store, keys)
        text = st.text(alphabet="ab/:é" + _MAX, max_size=4)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(prefix=text, delimiter=st.none() | text.filter(bool))
        def agrees(prefix: str, delimiter: str | None) -> None:
            self._check(store, keys, prefix, delimiter)

        agrees()

    def test_list_keys_checks_its_arguments_when_called(self, store: AbstractStore) -> None:
        for prefix in (None, 1, b"a", ["a"]):
            with pytest.raises(InvalidArgumentError):
                store.list_keys(prefix)  # type: ignore[arg-type]
        for delimiter in ("", 1, b"/", ["/"]):
            with pytest.raises(InvalidArgumentError):
                store.list_keys("", delimiter)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            store.list_keys("a\udc80")
        with pytest.raises(InvalidKeyError):
            store.list_keys("a", "\ud800")
        # A prefix no key can start with (NUL) is a valid question with an empty answer.
        store.set("a", (b"", {}))
        assert list(store.list_keys("a\x00")) == []

    def test_list_keys_sees_the_transaction_s_own_writes(self, store: AbstractStore) -> None:
        _fill(store, ["t/a", "t/b", "t/c/d", "u"])
        seen_outside: list[list[str]] = []
        outside = threading.Thread(target=lambda: seen_outside.append(list(store.list_keys("t/"))))
        with store.transaction():
            store.set("t/0", (b"", {}))
            store.set("t/c/e", (b"", {}))
            store.delete("t/b")
            store.delete("t/c/d")
            assert list(store.list_keys("t/")) == ["t/0", "t/a", "t/c/e"]
            assert list(store.list_keys("t/", "/")) == ["t/0", "t/a", "t/c/"]
            store.delete("t/c/e")
            assert list(store.list_keys("t/", "/")) == ["t/0", "t/a"]
            outside.start()
            # A store that serialises every call makes the other thread wait: then it
            # lists after the commit, and there is nothing to check about isolation.
            outside.join(timeout=0.5)
            listed_inside = not outside.is_alive()
        outside.join()
        if listed_inside:
            assert seen_outside == [["t/a", "t/b", "t/c/d"]]
        assert list(store.list_keys("t/")) == ["t/0", "t/a"]

    def test_a_rolled_back_transaction_leaves_listings_alone(self, store: AbstractStore) -> None:
        _fill(store, ["r/a", "r/b"])
        with pytest.raises(RuntimeError), store.transaction():
            store.set("r/c", (b"", {}))
            store.delete("r/a")
            raise RuntimeError("roll back")
        assert list(store.list_keys("r/")) == ["r/a", "r/b"]

    def test_list_keys_survives_writes_while_it_runs(self, store: AbstractStore) -> None:
        keys = [f"w/{index:04d}" for index in range(300)]
        _fill(store, keys)
        listing = store.list_keys("w/")
        first = [next(listing) for _ in range(10)]
        store.set("w/0000a", (b"", {}))  # behind the listing
        store.set("w/9999", (b"", {}))  # ahead of it: may be listed or not
        store.delete("w/0299")  # ahead of it: may be listed or not
        rest = list(listing)
        listed = first + rest
        assert listed == sorted(set(listed)), "in order, each key once"
        assert "w/0000a" not in listed
        assert set(keys[:299]) <= set(listed)

    def test_list_keys_yields_the_first_key_without_reading_them_all(
        self, store: AbstractStore
    ) -> None:
        if not self.listing_streams:
            pytest.skip("this store reads every matching key before the first (listing_streams)")
        count = 10_000
        keys = [f"big/{index:05d}" for index in range(count)]
        _fill(store, keys)
        next(store.list_keys("big/"))  # warm up: statements compiled, indexes built
        tracemalloc.start()
        try:
            listing = store.list_keys("big/")
            first = next(listing)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert first == keys[0]
        # A list of every key (even of str objects the store already holds) costs 8
        # bytes per key: a streaming listing needs far less for its first key.
        assert peak < 4 * count, f"{peak} bytes allocated to yield the first of {count} keys"
        assert next(listing) == keys[1]

    def _described(
        self, store: AbstractStore, keys: list[str], metadata: bool
    ) -> list[tuple[str, KeyInfo]]:
        """What ``list_info`` must say about *keys*: what ``get`` says of each."""
        values = {key: store.get(key) for key in keys}
        return [
            (
                key,
                KeyInfo(v.size, v.created, v.modified, v.version, v.metadata if metadata else None),
            )
            for key, v in values.items()
        ]

    def test_list_info_agrees_with_get(self, store: AbstractStore) -> None:
        sizes = [0, 1, 7, 100, 3000]
        store.multiset(
            TRICKY_KEYS,
            [(b"x" * sizes[i % 5], {"n": i, "k": [key]}) for i, key in enumerate(TRICKY_KEYS)],
        )
        store.set("a/b", (b"rewritten", {"n": "again"}))  # a second version of one key
        for prefix in ("", "a", "a/", "b::", "p" + _MAX, "zz"):
            expected = model_listing(TRICKY_KEYS, prefix)
            listed = store.list_info(prefix)
            assert isinstance(listed, Iterator)
            assert list(listed) == self._described(store, expected, False), prefix
            detailed = list(store.list_info(prefix, metadata=True))
            assert detailed == self._described(store, expected, True), prefix
        sizes_seen = {key: info.size for key, info in store.list_info()}
        assert sizes_seen["a/b"] == len(b"rewritten")
        assert all(info.version is not None for _, info in store.list_info())

    def test_list_info_sees_the_transaction_s_own_writes(self, store: AbstractStore) -> None:
        _fill(store, ["t/a", "t/b"])
        with store.transaction():
            store.set("t/0", (b"new", {"m": 1}))
            store.delete("t/b")
            store.set("t/a", (b"changed", {}))
            listed = list(store.list_info("t/", metadata=True))
            assert [key for key, _ in listed] == ["t/0", "t/a"]
            # Times of uncommitted writes may be unknown (a value then says "now"):
            # the rest must agree with get.
            expected = self._described(store, ["t/0", "t/a"], True)
            parts = [(key, i.size, i.version, i.metadata) for key, i in listed]
            assert parts == [(key, i.size, i.version, i.metadata) for key, i in expected]
        assert [key for key, _ in store.list_info("t/")] == ["t/0", "t/a"]

    def test_list_info_checks_its_prefix_when_called(self, store: AbstractStore) -> None:
        for prefix in (None, 1, b"a"):
            with pytest.raises(InvalidArgumentError):
                store.list_info(prefix)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            store.list_info("a\udc80")
        for flag in ("no", 0, 1, None):  # a truthy string is a mistake, not a yes
            with pytest.raises(InvalidArgumentError):
                store.list_info("", metadata=flag)  # type: ignore[arg-type]


def _model_keys() -> list[str]:
    """A fixed set of keys over the model test's alphabet (every key of up to 3
    characters of a few, plus some longer ones)."""
    alphabet = "ab/:é" + _MAX
    keys = [a + b for a in alphabet for b in alphabet]
    keys += [a + b + c for a in "a/:" for b in "b/:" + _MAX for c in "a/é"]
    keys += ["a/b/c/d", "a::b::c", "ab" + _MAX + "/x", "é/é/é", _MAX * 3]
    return keys + list(alphabet)
