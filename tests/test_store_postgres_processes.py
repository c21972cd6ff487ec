"""PostgresStore between processes: exact counts, whole values, events in every process,
fork safety, and connections killed under a transaction."""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg
import pytest

from _pg_harness import database_url, drop_database, raw_read, table_for
from storekeeper.backends import _pg_connections
from storekeeper.backends.postgres import PostgresStore
from storekeeper.errors import BackendUnavailableError, ConflictError, TransactionError
from storekeeper.events import EventManager
from storekeeper.store import StoreModificationEvent

pytestmark = [pytest.mark.service, pytest.mark.postgres]

_FORK = multiprocessing.get_context("fork")
WORKERS = 4
ROUNDS = 12
ACCOUNTS = [f"acct/{n}" for n in range(4)]
COUNTERS = [f"count/{n}" for n in range(4)]
BIG = 200_003


@pytest.fixture(scope="module", autouse=True)
def _session_database() -> Iterator[None]:
    yield
    drop_database()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PostgresStore]:
    with PostgresStore(
        database_url(),
        table_for(str(tmp_path)),
        inline_limit=64,
        chunk_size=16384,
        event_manager=EventManager(),
    ) as store:
        yield store


# -- four processes at once ---------------------------------------------------------------------
def _cas_increment(store: PostgresStore, key: str, by: int) -> int:
    while True:
        value = store.get(key)
        n = value.metadata["n"] + 1
        try:
            store.set(key, (str(n).encode(), {"n": n, "by": by}), if_version=value.version)
        except ConflictError:
            continue
        return n


def _transfer(store: PostgresStore, rng: random.Random, by: int) -> None:
    source, target = rng.sample(ACCOUNTS, 2)
    amount = rng.randint(1, 5)
    while True:
        try:
            with store.transaction("transfer"):
                for key, delta in ((source, -amount), (target, amount)):
                    metadata = store.get_metadata(key)
                    balance = int(store.to_bytes(key)) + delta
                    gen = metadata["gen"] + 1
                    store.set(key, (str(balance).encode(), {"gen": gen, "by": by}))
            return
        except TransactionError:  # a deadlock between two transfers: one is rolled back
            continue


def _worker(store: PostgresStore, index: int, start: Any, done: Any, out: Connection) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    def record(event: Any) -> None:
        if getattr(event, "remote", False) and event.metadata and "by" in event.metadata:
            received.append((event.key, event.metadata))

    store.event_manager.connect(StoreModificationEvent, record)
    store.exists("x")  # the first call in this process: its own pool and listener
    assert store.wait_listening()
    start.wait(60)
    rng = random.Random(index)
    mine = []
    for round_ in range(ROUNDS):
        key = COUNTERS[(index + round_) % len(COUNTERS)]
        mine.append((key, _cas_increment(store, key, index)))
        _transfer(store, rng, index)
        store.set(
            "big", (bytes([index * ROUNDS + round_]) * BIG, {"byte": index * ROUNDS + round_})
        )
    done.wait(60)  # every worker has written everything: wait for their events
    out.send(("written", mine))
    expected = out.recv()
    deadline = time.monotonic() + 60
    while len(received) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a duplicate would arrive now
    out.send(("received", received))


def _reader(store: PostgresStore, stop: Any, out: Connection) -> None:
    reads, problems = 0, []
    while not stop.is_set():
        value = store.get("big")
        data = value.data.read()
        byte = value.metadata["byte"]
        if data != bytes([byte]) * BIG:
            problems.append(f"torn: metadata {byte}, data {sorted(set(data))[:5]} ({len(data)})")
        reads += 1
    out.send((reads, problems))


def test_four_processes_count_exactly_and_see_each_others_events(store: PostgresStore) -> None:
    store.multiset(COUNTERS, [(b"0", {"n": 0})] * len(COUNTERS))
    store.multiset(ACCOUNTS, [(b"100", {"gen": 0})] * len(ACCOUNTS))
    store.set("big", (bytes([255]) * BIG, {"byte": 255}))
    start, done, stop = _FORK.Barrier(WORKERS + 1), _FORK.Barrier(WORKERS + 1), _FORK.Event()
    pipes, processes = [], []
    for index in range(WORKERS):
        parent_end, child_end = _FORK.Pipe()
        process = _FORK.Process(target=_worker, args=(store, index, start, done, child_end))
        process.start()
        pipes.append(parent_end)
        processes.append(process)
    reader_end, reader_child = _FORK.Pipe()
    reader = _FORK.Process(target=_reader, args=(store, stop, reader_child))
    reader.start()
    try:
        start.wait(60)
        done.wait(120)
        written = [pipe.recv()[1] for pipe in pipes]
        # Each worker expects every other worker's counter and transfer writes.
        for index, pipe in enumerate(pipes):
            others = sum(len(w) for i, w in enumerate(written) if i != index)
            pipe.send(others + (WORKERS - 1) * ROUNDS * 2)
        received = [pipe.recv()[1] for pipe in pipes]
        stop.set()
        reads, problems = reader_end.recv()
    finally:
        stop.set()
        for process in [*processes, reader]:
            process.join(60)
    assert problems == [] and reads > 0
    # Exact totals: no increment and no unit of money lost or made.
    assert sum(int(store.to_bytes(key)) for key in COUNTERS) == WORKERS * ROUNDS
    assert sum(int(store.to_bytes(key)) for key in ACCOUNTS) == 100 * len(ACCOUNTS)
    assert sum(store.get_metadata(key)["gen"] for key in ACCOUNTS) == WORKERS * ROUNDS * 2
    for index, events in enumerate(received):
        counters = [(key, m["n"]) for key, m in events if key in COUNTERS]
        others = sorted(pair for i, w in enumerate(written) if i != index for pair in w)
        assert sorted(counters) == others, f"worker {index}: counter events not exactly once"
        transfers = [(key, m["gen"]) for key, m in events if key in ACCOUNTS]
        assert len(transfers) == len(set(transfers)) == (WORKERS - 1) * ROUNDS * 2
        for key in [*COUNTERS, *ACCOUNTS]:  # in commit order, key by key
            seen = [m.get("n", m.get("gen")) for k, m in events if k == key]
            assert seen == sorted(seen), f"worker {index}: {key} events out of order: {seen}"
        assert all(m["by"] != index for _, m in events)  # its own changes are not remote
    # The parent's own connections survived four children using (and freeing) copies.
    store.set("after", (b"fine", {}))
    assert store.to_bytes("after") == b"fine"


def test_a_forked_child_never_ends_the_parents_sessions(store: PostgresStore) -> None:
    store.set("k", (b"parent", {}))
    with store._connections.pool().connection() as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()
    pid = os.fork()
    if pid == 0:  # the child: use the store, then free everything it inherited
        code = 1
        try:
            store.set("child", (b"written by the child", {}))
            # Closing what it inherited (as a pool's clean-up would) must not end the
            # parent's sessions: psycopg only spares them when objects are freed.
            for item in _pg_connections._INHERITED:
                if isinstance(item, list):
                    for conn in item:
                        conn.close()
                elif item is not None:
                    item.close(timeout=0.1)
            _pg_connections._INHERITED.clear()
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.to_bytes("child") == b"written by the child"
    with store._connections.pool().connection() as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == before
    for _ in range(5):  # every pooled connection still works
        assert store.to_bytes("k") == b"parent"


# -- faults ----------------------------------------------------------------------------------------
def _terminate(pid: int) -> None:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_connection_killed_inside_a_transaction_applies_nothing(store: PostgresStore) -> None:
    store.set("a", (b"old", {"v": 1}))
    with pytest.raises(BackendUnavailableError, match="PostgreSQL"), store.transaction():
        store.set("a", (b"new", {"v": 2}))
        store.set("b", (b"x" * 100_000, {}))  # chunked: several statements
        txn = store._connections.transaction()
        assert txn is not None
        backend = txn.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        _terminate(backend[0])
        store.set("c", (b"after the kill", {}))
    # As a fresh connection sees the table: nothing of the transaction.
    assert raw_read(database_url(), store.table, "a") == (b"old", {"v": 1})
    for key in ("b", "c"):
        with pytest.raises(KeyError):
            raw_read(database_url(), store.table, key)
    with store.transaction():  # the store goes on working with a fresh connection
        store.set("d", (b"d", {}))
    assert store.to_bytes("d") == b"d"


def test_a_listener_that_loses_its_connection_misses_nothing(
    store: PostgresStore, tmp_path: Path
) -> None:
    seen: list[Any] = []
    store.event_manager.connect(StoreModificationEvent, seen.append)
    listener = store._listener
    assert listener is not None
    with PostgresStore(database_url(), table_for(str(tmp_path)), listen=False) as other:
        other.set("k", (b"", {"i": 0}))
        _wait(lambda: len(seen) == 1)
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                [f'LISTEN "{store._schema.channel}"'],
            )
        for i in range(1, 20):  # while the listener is down (or coming back)
            other.set("k", (b"", {"i": i}))
        other.set("large", (b"", {"blob": "x" * 20_000}))  # too large for a NOTIFY payload
        _wait(lambda: len(seen) == 21, message=lambda: [e.metadata for e in seen])
    time.sleep(0.3)
    assert [e.metadata for e in seen[:20]] == [{"i": i} for i in range(20)]
    assert seen[20].metadata == {"blob": "x" * 20_000}
    assert all(e.remote and e.source is store and e.origin == other.origin for e in seen)
    assert len(seen) == 21  # nothing twice


def _wait(condition: Any, timeout: float = 30.0, message: Any = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {message()}"
        time.sleep(0.02)
