"""Transactions isolate the thread or asyncio task that owns them.

Each test reproduces a reported failure exactly: composite transactions whose reads were
not isolated (lost updates), asyncio tasks of one thread sharing one transaction, and a
CachedStore fill installing a value that a transactional write had replaced.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import (
    CachedStore,
    JoinedStore,
    MountedStore,
    SimpleAuthStore,
    make_encoder,
)
from storekeeper.errors import TransactionError
from storekeeper.store import AbstractStore, Value
from storekeeper.testing.isolation import increment, increment_in_task

ALICE = {"username": "alice", "password": "alice's secret"}
FAST = make_encoder(b"pepper", n=2)  # scrypt at the lowest cost: tests only
BACKENDS = ["sqlite", "file", "memory"]
SOAK = os.environ.get("STOREKEEPER_SOAK") == "1"


def backend(kind: str, tmp_path: Path, name: str) -> AbstractStore:
    """A fresh unconnected store of *kind* (``sqlite`` file, ``file`` system, ``memory``)."""
    if kind == "sqlite":
        return SqliteStore(tmp_path / f"{name}.db", durable=False)
    if kind == "sqlite-memory":
        return SqliteStore()
    if kind == "file":
        init_shared_store(tmp_path / name)
        return FileSystemStore(tmp_path / name, durable=False)
    assert kind == "memory"
    return DictMemoryStore()


def joined(kind: str, tmp_path: Path) -> AbstractStore:
    return JoinedStore([backend(kind, tmp_path, "joined")])


def mounted(kind: str, tmp_path: Path) -> AbstractStore:
    return MountedStore("", backend(kind, tmp_path, "mount"), backend(kind, tmp_path, "back"))


def cached(kind: str, tmp_path: Path) -> AbstractStore:
    return CachedStore(backend(kind, tmp_path, "source"), DictMemoryStore())


def authorizing(kind: str, tmp_path: Path) -> AbstractStore:
    inner = backend(kind, tmp_path, "auth")
    with inner:  # user tools need the user store connected
        SimpleAuthStore(inner, FAST).add_user("alice", ALICE["password"])
    return SimpleAuthStore(inner, FAST)


COMPOSITES: dict[str, Callable[[str, Path], AbstractStore]] = {
    "joined": joined,
    "mounted": mounted,
    "cached": cached,
    "auth": authorizing,
}


# -- item 1: a composite transaction isolates its reads as well as its writes ----------------
@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_composite_read_modify_write_transactions_lose_no_update(
    tmp_path: Path, composite: str, kind: str
) -> None:
    store = COMPOSITES[composite](kind, tmp_path)
    store.connect(ALICE if composite == "auth" else None)
    try:
        store.set("n", (b"0", {}))

        def work() -> None:
            for _ in range(50):
                with store.transaction():
                    store.set("n", (str(int(store.to_bytes("n")) + 1).encode(), {}))

        _run_threads(work, 4)
        assert int(store.to_bytes("n")) == 200
    finally:
        store.disconnect()


def test_joined_transaction_over_two_tables_of_one_database(tmp_path: Path) -> None:
    # Only the top store is enlisted: a lower one on the same database would otherwise
    # wait for the top one's write lock, held by this very transaction.
    path = tmp_path / "shared.db"
    stores = [SqliteStore(path, table=name, timeout=2, durable=False) for name in ("a", "b")]
    with JoinedStore(stores) as store:
        stores[1].set("low", (b"1", {}))
        with store.transaction():
            store.set("k", (store.to_bytes("low") + b"2", {}))
        assert stores[0].to_bytes("k") == b"12"


# -- item 5: asyncio tasks of one thread do not share a transaction --------------------------
TASK_BACKENDS = ["sqlite", "sqlite-memory", "file", "memory"]


@pytest.mark.parametrize("kind", TASK_BACKENDS)
def test_task_does_not_see_another_tasks_uncommitted_write(tmp_path: Path, kind: str) -> None:
    with backend(kind, tmp_path, "s") as store:
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
                seen.append(_outcome(lambda: store.to_bytes("k")))
                checked.set()

            await asyncio.gather(owner(), other())

        asyncio.run(main())
        # An in-memory SQLite database has one connection: it refuses rather than wait.
        assert seen == (["refused"] if kind == "sqlite-memory" else [b"committed"])
        assert store.to_bytes("k") == b"uncommitted"


@pytest.mark.parametrize("kind", TASK_BACKENDS)
def test_task_write_is_not_rolled_back_with_another_tasks_transaction(
    tmp_path: Path, kind: str
) -> None:
    with backend(kind, tmp_path, "s") as store:
        outcome: list[object] = []

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
                outcome.append(_outcome(lambda: store.set("b", (b"B", {}))))
                tried.set()

            await asyncio.gather(owner(), other())

        asyncio.run(main())
        assert not store.exists("a")
        # Acknowledged writes stay; a write that would have to wait is refused at once.
        assert outcome == ["refused"] or store.to_bytes("b") == b"B"


@pytest.mark.parametrize("kind", TASK_BACKENDS)
def test_second_tasks_transaction_does_not_end_the_first(tmp_path: Path, kind: str) -> None:
    with backend(kind, tmp_path, "s") as store:
        outcome: list[object] = []

        async def main() -> None:
            begun, tried = asyncio.Event(), asyncio.Event()

            async def first() -> None:
                with pytest.raises(RuntimeError, match="roll back"), store.transaction():
                    store.set("a", (b"A", {}))
                    begun.set()
                    await tried.wait()
                    store.set("a2", (b"A", {}))
                    raise RuntimeError("roll back")

            async def second() -> None:
                await begun.wait()

                def transact() -> None:
                    with store.transaction():
                        store.set("b", (b"B", {}))

                outcome.append(_outcome(transact))
                tried.set()

            await asyncio.gather(first(), second())

        asyncio.run(main())
        assert not store.exists("a") and not store.exists("a2")
        assert outcome == ["refused"]
        assert not store.exists("b")


@pytest.mark.parametrize("kind", TASK_BACKENDS)
def test_task_created_inside_a_transaction_does_not_join_it(tmp_path: Path, kind: str) -> None:
    with backend(kind, tmp_path, "s") as store:
        outcome: dict[str, object] = {}

        async def child() -> None:
            outcome["read"] = _outcome(lambda: store.exists("a"))
            outcome["write"] = _outcome(lambda: store.set("c", (b"C", {})))

        async def main() -> None:
            with pytest.raises(RuntimeError, match="roll back"), store.transaction():
                store.set("a", (b"A", {}))
                await asyncio.create_task(child())
                raise RuntimeError("roll back")

        asyncio.run(main())
        assert outcome["read"] in (False, "refused")
        assert outcome["write"] == "refused" or store.to_bytes("c") == b"C"
        assert not store.exists("a")


@pytest.mark.parametrize("kind", TASK_BACKENDS)
def test_read_modify_write_transactions_from_tasks_keep_every_update(
    tmp_path: Path, kind: str
) -> None:
    with backend(kind, tmp_path, "s") as store:
        store.set("n", (b"0", {}))

        async def increment(times: int) -> None:
            done = 0
            while done < times:
                try:
                    with store.transaction():
                        count = int(store.to_bytes("n"))
                        await asyncio.sleep(0)  # let the other tasks run mid-transaction
                        store.set("n", (str(count + 1).encode(), {}))
                except TransactionError:
                    await asyncio.sleep(0.001)  # another task's transaction is open
                    continue
                done += 1

        async def main() -> None:
            await asyncio.gather(*(increment(25) for _ in range(4)))

        asyncio.run(main())
        assert int(store.to_bytes("n")) == 100


def test_refusal_says_why_and_what_to_do(tmp_path: Path) -> None:
    with backend("memory", tmp_path, "s") as store:
        errors: list[TransactionError] = []

        async def main() -> None:
            with store.transaction():
                store.set("a", (b"A", {}))

                async def other() -> None:
                    with pytest.raises(TransactionError) as caught:
                        store.set("b", (b"B", {}))
                    errors.append(caught.value)

                await asyncio.create_task(other())

        asyncio.run(main())
        message = str(errors[0])
        assert "another asyncio task of this thread" in message
        assert "asyncio.to_thread" in message and "block the event loop" in message


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="long: only under make soak")
@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("composite", [None, *sorted(COMPOSITES)])
def test_read_modify_write_transactions_soak(
    tmp_path: Path, composite: str | None, kind: str
) -> None:
    if composite is None:
        store = backend(kind, tmp_path, "plain")
    else:
        store = COMPOSITES[composite](kind, tmp_path)
    store.connect(ALICE if composite == "auth" else None)
    try:
        store.set("n", (b"0", {}))

        def threads_and_tasks() -> None:
            async def main() -> None:
                await asyncio.gather(*(increment_in_task(store, 50) for _ in range(4)))

            for _ in range(100):
                increment(store)
            asyncio.run(main())

        _run_threads(threads_and_tasks, 4)
        assert int(store.to_bytes("n")) == 4 * (100 + 4 * 50)
    finally:
        store.disconnect()


# -- item 6: the immutable cache's fence covers transactional writes -----------------------
def test_immutable_cache_fill_does_not_install_a_value_a_transaction_replaced(
    tmp_path: Path,
) -> None:
    read_source, go_on = threading.Event(), threading.Event()
    filler: list[threading.Thread] = []

    class PausingSource(SqliteStore):
        def get(self, key: str) -> Value:
            value = super().get(key)
            if filler and threading.current_thread() is filler[0]:
                read_source.set()
                go_on.wait(10)
            return value

    source = PausingSource(tmp_path / "source.db", durable=False)
    cache_store = DictMemoryStore()
    with CachedStore(source, cache_store, policy="immutable") as store:
        store.set("k", (b"old", {}))
        with store.transaction():
            store.set("k", (b"new", {}))
            filler.append(threading.Thread(target=store.get, args=("k",)))
            filler[0].start()
            assert read_source.wait(10)  # the fill has read the committed "old"
        go_on.set()  # ... and tries to install it after the commit dropped the copy
        filler[0].join(10)
        assert store.to_bytes("k") == b"new"
        assert not cache_store.exists("k") or cache_store.to_bytes("k") == b"new"


# -- helpers -----------------------------------------------------------------------------------
def _outcome(call: Callable[[], Any]) -> object:
    """What *call* returned, or ``"refused"`` if it raised TransactionError."""
    try:
        return call()
    except TransactionError:
        return "refused"


def _run_threads(target: Callable[[], None], count: int) -> None:
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
    assert not failures, failures
