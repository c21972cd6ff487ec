"""Conformance mixin: versions, conditional writes and transactions of one store.

Part of :class:`storekeeper.testing.StoreTests` (see :mod:`storekeeper.testing.store`):
every write returns the version it wrote and changes it; ``if_version`` and
``if_exists`` let exactly one of racing writers win; a transaction commits at the end of
its outermost block, rolls back when it raises (a failed inner block back to its own
start), emits its start and end events, and belongs to the thread that opened it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from storekeeper.errors import ConflictError
from storekeeper.store import (
    AbstractStore,
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreProgressStartEvent,
    StoreSetEvent,
    StoreTransactionEndEvent,
    StoreTransactionStartEvent,
)

__all__ = ["TransactionTests"]


class TransactionTests:
    """Versions, conditional writes and transactions; needs the ``store`` and ``events``
    fixtures of :class:`~storekeeper.testing.StoreTests`.

    ``versions_before_commit``: whether ``set`` inside a transaction returns the version
    the value gets at the commit; a store that learns it only at the commit (its server
    assigns it) sets it to ``False`` and must then return ``None`` there, report
    ``None`` as ``get(key).version`` until the commit and the server's version after.
    """

    versions_before_commit = True

    # -- versions and conditional writes -------------------------------------------------
    def test_set_returns_the_version_it_wrote(self, store: AbstractStore) -> None:
        created = store.set("k", (b"1", {"a": 1}))
        assert created is not None and created == store.get("k").version
        replaced = store.set("k", (b"2", {}), if_version=created)
        assert replaced not in (None, created) and replaced == store.get("k").version
        store.set("k", (b"3", {}), if_version=replaced)  # the returned version pins a write
        with pytest.raises(ConflictError):
            store.set("k", (b"4", {}), if_version=replaced)
        with store.transaction("versions"):
            pending = store.set("t", (b"t", {}))
            if not self.versions_before_commit:
                assert pending is None and store.get("t").version is None
        committed = store.get("t").version
        assert committed is not None
        assert pending == (committed if self.versions_before_commit else None)
        store.set("t", (b"u", {}), if_version=committed)  # the version after the commit pins
        assert store.set("s", (iter([b"a", b"b"]), {})) == store.get("s").version

    def test_version_changes_on_every_write(self, store: AbstractStore) -> None:
        seen = set()
        store.set("k", (b"1", {}))
        seen.add(store.get("k").version)
        writes: tuple[Callable[[], object], ...] = (
            lambda: store.set("k", (b"1", {})),
            lambda: store.set_data("k", b"2"),
            lambda: store.set_metadata("k", {"a": 1}),
            lambda: store.update_metadata("k", {"b": 1}),
            lambda: store.from_bytes("k", b"3"),
        )
        for write in writes:
            write()
            version = store.get("k").version
            assert version not in seen
            seen.add(version)
        assert store.get("k").version == store.get("k").version

    def test_conditional_writes(self, store: AbstractStore) -> None:
        store.set("k", (b"1", {"n": 1}), if_exists=False)
        with pytest.raises(ConflictError):
            store.set("k", (b"2", {"n": 2}), if_exists=False)
        version = store.get("k").version
        assert version is not None
        with pytest.raises(ConflictError):
            store.set("k", (b"2", {}), if_version="not-" + version)
        with pytest.raises(ConflictError):
            store.set("missing", (b"2", {}), if_exists=True)
        with pytest.raises(ConflictError):
            store.set("missing", (b"2", {}), if_version=version)
        assert store.to_bytes("k") == b"1" and not store.exists("missing")
        store.set("k", (b"2", {"n": 2}), if_version=version)
        with pytest.raises(ConflictError):
            store.set_data("k", b"3", if_version=version)
        with pytest.raises(ConflictError):
            store.set_metadata("k", {"n": 3}, if_version=version)
        with pytest.raises(ConflictError):
            store.update_metadata("k", {"n": 3}, if_version=version)
        with pytest.raises(ConflictError):
            store.delete("k", if_version=version)
        assert (store.to_bytes("k"), store.get_metadata("k")) == (b"2", {"n": 2})
        current = store.get("k").version
        store.update_metadata("k", {"n": 3}, if_version=current)
        store.delete("k", if_version=store.get("k").version)
        assert not store.exists("k")

    def test_create_only_race_between_threads(self, store: AbstractStore) -> None:
        winners: list[int] = []
        barrier = threading.Barrier(8)

        def contend(n: int) -> None:
            barrier.wait()
            try:
                store.set("race", (str(n).encode(), {"n": n}), if_exists=False)
            except ConflictError:
                return
            winners.append(n)

        _run_threads(contend, 8)
        assert len(winners) == 1
        assert store.get_metadata("race") == {"n": winners[0]}

    def test_compare_and_swap_counter_between_threads(self, store: AbstractStore) -> None:
        store.set("counter", (b"0", {}))
        increments = 25

        def increment(_: int) -> None:
            done = 0
            while done < increments:
                value = store.get("counter")
                count = int(store.to_bytes("counter")) if value.version else 0
                try:
                    _cas(store, value.version, count)
                except ConflictError:
                    continue
                done += 1

        _run_threads(increment, 4)
        assert int(store.to_bytes("counter")) == 4 * increments

    # -- transactions ----------------------------------------------------------------------
    def test_transaction_commits(self, store: AbstractStore) -> None:
        with store.transaction("two keys") as transaction:
            assert transaction is not None
            store.set("a", (b"1", {}))
            store.set("b", (b"2", {}))
            assert store.to_bytes("a") == b"1"  # a transaction sees its own writes
        assert store.to_bytes("b") == b"2"

    def test_transaction_rolls_back_on_error(self, store: AbstractStore) -> None:
        store.set("kept", (b"old", {"v": 1}))
        store.set("gone", (b"gone", {}))

        with pytest.raises(RuntimeError, match="boom"), store.transaction("failing"):
            store.set("kept", (b"new", {"v": 2}))
            store.update_metadata("kept", {"w": 1})
            store.set("added", (b"x", {}))
            store.delete("gone")
            raise RuntimeError("boom")
        assert (store.to_bytes("kept"), store.get_metadata("kept")) == (b"old", {"v": 1})
        assert not store.exists("added")
        assert store.to_bytes("gone") == b"gone"

    def test_nested_transactions_apply_only_outermost(self, store: AbstractStore) -> None:
        with pytest.raises(RuntimeError), store.transaction("outer"):
            with store.transaction("inner"):
                store.set("inner", (b"1", {}))
            assert store.exists("inner")
            raise RuntimeError("outer fails")
        assert not store.exists("inner")

    def test_failed_inner_transaction_rolls_back_to_its_start(self, store: AbstractStore) -> None:
        with store.transaction("outer"):
            store.set("outer", (b"1", {}))
            with pytest.raises(RuntimeError), store.transaction("inner"):
                store.set("inner", (b"1", {}))
                store.set("outer", (b"changed", {}))
                raise RuntimeError("inner fails")
            store.set("after", (b"1", {}))
        assert store.to_bytes("outer") == b"1"
        assert not store.exists("inner")
        assert store.exists("after")

    def test_transaction_events(self, store: AbstractStore, events: Any) -> None:
        with store.transaction("notes here"):
            store.set("a", (b"1", {"x": 1}))
            store.delete("a")
            assert events.of(StoreModificationEvent) == []
        kinds = [type(e) for e in events.events if not isinstance(e, StoreProgressStartEvent)]
        assert kinds[:2] == [StoreTransactionStartEvent, StoreTransactionEndEvent]
        assert [type(e) for e in events.of(StoreModificationEvent)] == [
            StoreSetEvent,
            StoreDeleteEvent,
        ]
        end = events.of(StoreTransactionEndEvent)[0]
        assert end.state == "done" and end.notes == "notes here"
        events.clear()
        with pytest.raises(RuntimeError), store.transaction("fails"):
            store.set("b", (b"1", {}))
            raise RuntimeError
        assert events.of(StoreModificationEvent) == []
        assert events.of(StoreTransactionEndEvent)[0].state == "failed"

    def test_transactions_are_per_thread(self, store: AbstractStore) -> None:
        inside = threading.Event()
        other_done = threading.Event()
        errors: list[BaseException] = []

        def other_thread() -> None:
            inside.wait(5)
            try:
                store.set("other", (b"committed", {}))
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)
            other_done.set()

        worker = threading.Thread(target=other_thread)
        worker.start()
        with pytest.raises(RuntimeError), store.transaction("mine"):
            store.set("mine", (b"x", {}))
            inside.set()
            # The other thread may block until this transaction ends; don't wait forever.
            other_done.wait(0.2)
            raise RuntimeError("roll back mine only")
        worker.join(10)
        assert not errors
        assert store.to_bytes("other") == b"committed"
        assert not store.exists("mine")


def _cas(store: AbstractStore, version: str | None, count: int) -> None:
    store.set("counter", (str(count + 1).encode(), {}), if_version=version)


def _run_threads(target: Any, count: int) -> None:
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
