"""Conformance checks: ``transaction(wait=False)`` never waits for another writer.

:class:`NoWaitTests` is one of :class:`~storekeeper.testing.store.StoreTests`' bases, so
every backend and composite runs it. The promise checked: while another thread holds a
transaction on the store, entering ``store.transaction(wait=False)`` raises
:class:`~storekeeper.errors.LockTimeoutError` at once, begins nothing and changes nothing;
once the store is free it begins like any transaction. (A cache store's readers rely on
it: :class:`~storekeeper.composite.CachedStore` fills only when the cache is free.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from storekeeper.errors import LockTimeoutError
from storekeeper.store import AbstractStore

__all__ = ["NoWaitTests"]

# Seconds before a thread that should have answered at once counts as hung (no timing
# is asserted: only that it answers at all).
_HUNG = 60.0


class NoWaitTests:
    """Mixin of the conformance suite: transactions that refuse to wait."""

    def test_a_transaction_that_may_not_wait_refuses_a_busy_store(
        self, store: AbstractStore
    ) -> None:
        store.set("k", (b"before", {"n": 0}))
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.transaction("held"):
                store.set("k", (b"held", {"n": 1}))
                holding.set()
                release.wait(_HUNG)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert holding.wait(_HUNG)
            refused = _in_thread(lambda: _try_write(store, b"refused"))
        finally:
            release.set()
            holder.join(_HUNG)
        assert refused == "busy"
        assert store.to_bytes("k") == b"held"  # the holder committed; the refused one wrote nothing
        assert _in_thread(lambda: _try_write(store, b"free")) == "written"
        assert store.to_bytes("k") == b"free"

    def test_a_transaction_that_may_not_wait_nests_in_its_own(self, store: AbstractStore) -> None:
        with store.transaction():
            store.set("k", (b"outer", {}))
            with store.transaction(wait=False):
                store.set("k", (b"inner", {}))
        assert store.to_bytes("k") == b"inner"


def _try_write(store: AbstractStore, data: bytes) -> str:
    try:
        with store.transaction("may not wait", wait=False):
            store.set("k", (data, {}))
    except LockTimeoutError:
        return "busy"
    return "written"


def _in_thread(call: Callable[[], str]) -> str:
    """``call()`` in a thread of its own, so that a call that waits fails the test
    instead of hanging it."""
    answer: list[str] = []
    worker = threading.Thread(target=lambda: answer.append(call()))
    worker.start()
    worker.join(_HUNG)
    if not answer:
        pytest.fail("a transaction begun with wait=False did not answer: it waited")
    return answer[0]
