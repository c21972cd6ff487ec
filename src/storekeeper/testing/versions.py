"""Conformance checks: a value keeps the version it was read with.

A :class:`~storekeeper.store.value.Value` (and a stream opened from it) reads the data
that was stored when it was read, whatever is written to its key afterwards: in this
thread or another, inside a transaction or not. Stores keep large values in other
places than small ones (files, chunk sets), so the checks use values of
:attr:`ValueVersionTests.kept_value_size` bytes; a backend's test class lowers its
inline limits so those take its large-value path.

Also here: :meth:`ValueVersionTests.test_glob_past_the_last_code_point`, since a store
that scans a key range for a glob prefix must not stop short of U+10FFFF.
"""

from __future__ import annotations

import threading

from storekeeper.store import AbstractStore

__all__ = ["ValueVersionTests"]

_ROUNDS = 12


def _payload(letter: bytes, size: int) -> bytes:
    """*size* bytes, all *letter*: a torn mix of two payloads is never one of them."""
    return letter * size


class ValueVersionTests:
    """Mixin of :class:`~storekeeper.testing.store.StoreTests`: values keep their version."""

    #: Size of the values these checks write: over SQLite's default ``inline_limit``.
    kept_value_size = 2 * 1024 * 1024 + 3

    def test_a_value_read_before_an_overwrite_keeps_its_data(self, store: AbstractStore) -> None:
        size = self.kept_value_size
        old, new = _payload(b"o", size), _payload(b"n", size)
        store.set("x", (old, {"v": 1}))
        value = store.get("x")
        store.set("x", (new, {"v": 2}))
        with value.data as stream:
            assert stream.read() == old
        with value.range(size - 5, None) as stream:
            assert stream.read() == old[-5:]
        assert value.metadata == {"v": 1}
        assert store.to_bytes("x") == new
        store.delete("x")
        with value.data as stream:
            assert stream.read() == old

    def test_a_stream_opened_before_an_overwrite_reads_its_version(
        self, store: AbstractStore
    ) -> None:
        size = self.kept_value_size
        store.set("x", (_payload(b"o", size), {}))
        with store.get_data("x") as stream:
            assert stream.read(3) == b"ooo"
            store.set("x", (_payload(b"n", size), {}))
            assert stream.read() == _payload(b"o", size - 3)
        assert store.to_bytes("x") == _payload(b"n", size)

    def test_swapping_two_large_values(self, store: AbstractStore) -> None:
        size = self.kept_value_size
        store.set("x", (_payload(b"x", size), {"was": "x"}))
        store.set("y", (_payload(b"y", size), {"was": "y"}))
        a, b = store.get("x"), store.get("y")
        store.set("x", b)
        store.set("y", a)
        assert store.to_bytes("x") == _payload(b"y", size)
        assert store.to_bytes("y") == _payload(b"x", size)
        assert (store.get_metadata("x"), store.get_metadata("y")) == ({"was": "y"}, {"was": "x"})

    def test_swapping_two_large_values_in_a_transaction(self, store: AbstractStore) -> None:
        size = self.kept_value_size
        store.set("x", (_payload(b"x", size), {}))
        store.set("y", (_payload(b"y", size), {}))
        with store.transaction("swap"):
            a, b = store.get("x"), store.get("y")
            store.set("x", b)
            store.set("y", a)
        assert store.to_bytes("x") == _payload(b"y", size)
        assert store.to_bytes("y") == _payload(b"x", size)

    def test_reads_while_another_thread_overwrites_see_whole_versions(
        self, store: AbstractStore
    ) -> None:
        size = self.kept_value_size
        versions = [_payload(b"a", size), _payload(b"b", size)]
        store.set("x", (versions[0], {}))
        failures: list[BaseException] = []

        def overwrite() -> None:
            try:
                for round_ in range(_ROUNDS):
                    store.set("x", (versions[(round_ + 1) % 2], {}))
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        writer = threading.Thread(target=overwrite)
        writer.start()
        try:
            seen = [store.to_bytes("x") for _ in range(_ROUNDS)]
        finally:
            writer.join()
        assert failures == []
        assert all(data in versions for data in seen)

    def test_glob_past_the_last_code_point(self, store: AbstractStore) -> None:
        keys = ["a", "a\U0010ffff", "a\U0010ffffz", "a\U0010ffff\U0010ffff", "ab", "b"]
        for key in keys:
            store.set(key, (b"", {}))
        assert sorted(store.glob("a*")) == sorted(keys[:5])
        assert sorted(store.glob("a\U0010ffff*")) == sorted(keys[1:4])
        assert sorted(store.glob("*z")) == ["a\U0010ffffz"]
