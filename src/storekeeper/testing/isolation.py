"""Conformance checks: a transaction isolates the task or thread that owns it.

:class:`IsolationTests` is one of :class:`~storekeeper.testing.store.StoreTests`' bases,
so every backend and composite runs it. The promise checked (DESIGN.md, concurrency
contract): a transaction belongs to one owner, the asyncio task that began it or, outside
tasks, the thread. Its uncommitted writes are invisible to every other owner, other
owners' writes are never rolled back with it, and read-modify-write transactions never
lose an update, whether they come from threads or from tasks of one thread.

A synchronous call cannot wait for another task of its own thread (the event loop would
never run that task again), so a store may refuse such a call with
:class:`~storekeeper.errors.TransactionError` instead of waiting; the checks accept a
refusal wherever waiting would be needed, and nothing else (no deadlock, no other error).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from storekeeper.errors import TransactionError
from storekeeper.store import AbstractStore

__all__ = ["IsolationTests", "outcome"]

#: Read-modify-write transactions per worker (4 workers) in the bounded checks.
ROUNDS = 10
REFUSED = "refused"


def outcome(call: Callable[[], Any]) -> object:
    """What *call* returned, or :data:`REFUSED` if it raised TransactionError."""
    try:
        return call()
    except TransactionError:
        return REFUSED


def increment(store: AbstractStore, key: str = "n") -> None:
    """One read-modify-write transaction adding 1 to the integer stored at *key*."""
    with store.transaction("increment"):
        count = int(store.to_bytes(key))
        store.set(key, (str(count + 1).encode(), {}))


async def increment_in_task(store: AbstractStore, times: int, key: str = "n") -> None:
    """*times* increments from an asyncio task that lets others run mid-transaction and
    tries again when another task's open transaction makes the store refuse it."""
    done = 0
    while done < times:
        try:
            with store.transaction("increment"):
                count = int(store.to_bytes(key))
                await asyncio.sleep(0)
                store.set(key, (str(count + 1).encode(), {}))
        except TransactionError:
            await asyncio.sleep(0.001)
            continue
        done += 1


def run_threads(target: Callable[[], None], count: int) -> None:
    """Run *target* in *count* threads; re-raise what any of them raised."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a worker is stuck"
    assert not failures, failures


class IsolationTests:
    """Transactions per owner, on the store given by the ``store`` fixture."""

    # -- no lost update -------------------------------------------------------------------
    def test_read_modify_write_transactions_from_threads(self, store: AbstractStore) -> None:
        store.set("n", (b"0", {}))

        def work() -> None:
            for _ in range(ROUNDS):
                increment(store)

        run_threads(work, 4)
        assert int(store.to_bytes("n")) == 4 * ROUNDS

    def test_read_modify_write_transactions_from_tasks(self, store: AbstractStore) -> None:
        store.set("n", (b"0", {}))

        async def main() -> None:
            await asyncio.gather(*(increment_in_task(store, ROUNDS) for _ in range(4)))

        asyncio.run(main())
        assert int(store.to_bytes("n")) == 4 * ROUNDS

    def test_read_modify_write_transactions_from_tasks_in_threads(
        self, store: AbstractStore
    ) -> None:
        store.set("n", (b"0", {}))

        async def worker() -> None:
            for _ in range(ROUNDS):
                await asyncio.to_thread(increment, store)

        async def main() -> None:
            await asyncio.gather(*(worker() for _ in range(4)))

        asyncio.run(main())
        assert int(store.to_bytes("n")) == 4 * ROUNDS

    # -- what another owner sees ----------------------------------------------------------
    def test_uncommitted_write_is_invisible_to_another_thread(self, store: AbstractStore) -> None:
        store.set("k", (b"committed", {}))
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(store.to_bytes("k")))
        with pytest.raises(RuntimeError, match="roll back"), store.transaction():
            store.set("k", (b"uncommitted", {}))
            reader.start()
            reader.join(0.5)  # a store may make the reader wait for the rollback
            raise RuntimeError("roll back")
        reader.join(60)
        assert seen == [b"committed"]

    def test_uncommitted_write_is_invisible_to_another_task(self, store: AbstractStore) -> None:
        store.set("k", (b"committed", {}))
        seen: list[object] = []

        async def main() -> None:
            written, checked = asyncio.Event(), asyncio.Event()

            async def owner() -> None:
                with store.transaction():
                    store.set("k", (b"uncommitted", {}))
                    written.set()
                    await checked.wait()

            async def other() -> None:
                await written.wait()
                seen.append(outcome(lambda: store.to_bytes("k")))
                seen.append(outcome(lambda: store.exists("k")))
                checked.set()

            await asyncio.gather(owner(), other())

        asyncio.run(main())
        assert seen[0] in (b"committed", REFUSED)
        assert seen[1] in (True, REFUSED)
        assert store.to_bytes("k") == b"uncommitted"

    def test_task_created_in_a_transaction_does_not_join_it(self, store: AbstractStore) -> None:
        seen: dict[str, object] = {}

        async def child() -> None:
            seen["read"] = outcome(lambda: store.exists("mine"))
            seen["write"] = outcome(lambda: store.set("child", (b"c", {})))

            def transact() -> None:
                with store.transaction():
                    store.set("child-transaction", (b"c", {}))

            seen["transaction"] = outcome(transact)

        async def main() -> None:
            with pytest.raises(RuntimeError, match="roll back"), store.transaction():
                store.set("mine", (b"m", {}))
                await asyncio.create_task(child())
                raise RuntimeError("roll back")

        asyncio.run(main())
        assert not store.exists("mine")
        assert seen["read"] in (False, REFUSED)
        assert seen["write"] == REFUSED or store.to_bytes("child") == b"c"
        assert seen["transaction"] == REFUSED or store.exists("child-transaction")

    def test_write_of_another_task_survives_a_rollback(self, store: AbstractStore) -> None:
        seen: list[object] = []

        async def main() -> None:
            written, tried = asyncio.Event(), asyncio.Event()

            async def owner() -> None:
                with pytest.raises(RuntimeError, match="roll back"), store.transaction():
                    store.set("a", (b"A", {}))
                    written.set()
                    await tried.wait()
                    raise RuntimeError("roll back")

            async def other() -> None:
                await written.wait()
                seen.append(outcome(lambda: store.set("b", (b"B", {}))))
                tried.set()

            await asyncio.gather(owner(), other())

        asyncio.run(main())
        assert not store.exists("a")
        assert seen == [REFUSED] or store.to_bytes("b") == b"B"

    def test_transaction_of_another_task_leaves_the_first_intact(
        self, store: AbstractStore
    ) -> None:
        seen: list[object] = []

        async def main() -> None:
            begun, tried = asyncio.Event(), asyncio.Event()

            async def first() -> None:
                with pytest.raises(RuntimeError, match="roll back"), store.transaction():
                    store.set("a", (b"A", {}))
                    begun.set()
                    await tried.wait()
                    store.set("a2", (b"A", {}))
                    assert store.to_bytes("a") == b"A"
                    raise RuntimeError("roll back")

            async def second() -> None:
                await begun.wait()

                def transact() -> None:
                    with store.transaction():
                        store.set("b", (b"B", {}))

                seen.append(outcome(transact))
                tried.set()

            await asyncio.gather(first(), second())

        asyncio.run(main())
        assert not store.exists("a") and not store.exists("a2")
        assert seen == [REFUSED] or store.to_bytes("b") == b"B"
