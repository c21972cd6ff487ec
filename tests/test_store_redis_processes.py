"""RedisStore shared by several processes: exact totals, whole values, every event once.

Four worker processes increment one counter with compare-and-swap writes and move
amounts between accounts in transactions (retrying on ConflictError), while a reader
process reads a chunked value the workers keep rewriting and checks it is never torn.
Every worker records the remote change events it receives; at the end each must have
received exactly the other processes' entries of the change stream, once each and in
the stream's (commit) order.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis

from redis_service import cleaned, prefix_for, store_url
from storekeeper.backends.redis import RedisStore
from storekeeper.errors import ConflictError
from storekeeper.events import EventManager
from storekeeper.store import StoreModificationEvent, open_store

_CONTEXT = multiprocessing.get_context("forkserver")
WORKERS = 4
INCREMENTS = 40
TRANSFERS = 25
ACCOUNTS = [f"acct/{n}" for n in range(5)]
START = 1000
_WAIT = 120.0


def _big(generation: int) -> bytes:
    return (f"{generation:08d}".encode()) * (300 + generation % 7)


def _open(url: str, manager: EventManager | None = None) -> RedisStore:
    store = open_store(url, event_manager=manager or EventManager())
    assert isinstance(store, RedisStore)
    return store


def _increment(store: RedisStore) -> None:
    while True:
        value = store.get("counter")
        count = int(store.to_bytes("counter"))
        try:
            store.set("counter", (str(count + 1).encode(), {}), if_version=value.version)
            return
        except ConflictError:
            continue


def _transfer(store: RedisStore, rng: random.Random) -> None:
    source, target = rng.sample(ACCOUNTS, 2)
    amount = rng.randint(1, 50)
    while True:
        try:
            with store.transaction("transfer"):
                have = store.get_metadata(source)["balance"]
                store.set_metadata(source, {"balance": have - amount})
                other = store.get_metadata(target)["balance"]
                store.set_metadata(target, {"balance": other + amount})
                done = int(store.to_bytes("transfers"))
                store.set("transfers", (str(done + 1).encode(), {}))
            return
        except ConflictError:
            continue


def _worker(url: str, number: int, conn: Connection) -> None:
    received: list[tuple[str, str]] = []

    def record(event: Any) -> None:
        if getattr(event, "remote", False):
            received.append((event.key, event.version))

    manager = EventManager()
    manager.connect(StoreModificationEvent, record)
    with _open(url, manager) as store:
        conn.send(("ready", store.origin))
        assert conn.recv() == "go"
        rng = random.Random(number)
        for step in range(max(INCREMENTS, TRANSFERS)):
            if step < INCREMENTS:
                _increment(store)
            if step < TRANSFERS:
                _transfer(store, rng)
            generation = number * 1000 + step
            store.set("big", (_big(generation), {"g": generation}))
        conn.send(("done", None))
        assert conn.recv() == "drain"
        newest = conn.recv()
        ok = _wait_for(lambda: store.event_cursor == newest)
        conn.send(("events", (ok, received)))


def _wait_for(predicate: Any, timeout: float = _WAIT) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _reader(url: str, conn: Connection) -> None:
    reads, problems = 0, []
    with _open(url) as store:
        conn.send("ready")
        while not conn.poll():
            value = store.get("big")
            with value.data as stream:
                data = stream.read()
            if data != _big(value.metadata["g"]):
                problems.append(f"torn read of generation {value.metadata['g']}")
            reads += 1
    conn.send((reads, problems))


@pytest.fixture
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    prefix = prefix_for(request.node.name)
    for _ in cleaned(prefix):
        yield store_url(prefix, inline_limit=64, chunk_size=1000)


def test_four_processes_count_transfer_and_hear_each_other(url: str) -> None:
    with _open(url) as store:
        store.set("counter", (b"0", {}))
        store.set("transfers", (b"0", {}))
        store.multiset(ACCOUNTS, [(b"", {"balance": START})] * len(ACCOUNTS))
        store.set("big", (_big(0), {"g": 0}))
    pipes, processes = [], []
    for number in range(WORKERS):
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=_worker, args=(url, number, child))
        process.start()
        pipes.append(parent)
        processes.append(process)
    reader_pipe, reader_child = _CONTEXT.Pipe()
    reader = _CONTEXT.Process(target=_reader, args=(url, reader_child))
    reader.start()
    try:
        origins = [_expect(pipe, "ready") for pipe in pipes]
        assert reader_pipe.poll(_WAIT) and reader_pipe.recv() == "ready"
        for pipe in pipes:
            pipe.send("go")
        for pipe in pipes:
            _expect(pipe, "done")
        reader_pipe.send("stop")
        assert reader_pipe.poll(_WAIT)
        reads, problems = reader_pipe.recv()
        client = redis.Redis.from_url(url.partition("?")[0])
        with _open(url) as store:
            stream = client.xrange(store.root + "X")
            assert int(store.to_bytes("counter")) == WORKERS * INCREMENTS
            assert int(store.to_bytes("transfers")) == WORKERS * TRANSFERS
            balances = [m["balance"] for m in store.multiget_metadata(ACCOUNTS)]
            assert sum(balances) == START * len(ACCOUNTS)
        newest = stream[-1][0].decode()
        for pipe in pipes:
            pipe.send("drain")
            pipe.send(newest)
        results = [_expect(pipe, "events") for pipe in pipes]
    finally:
        for process in [*processes, reader]:
            process.join(_WAIT)
            if process.is_alive():
                process.kill()
    assert problems == [] and reads > 0
    assert stream[0][1][b"k"] != b"" and len(stream) > WORKERS * (INCREMENTS + TRANSFERS)
    for origin, (drained, received) in zip(origins, results, strict=True):
        assert drained, "a worker's listener did not reach the end of the stream"
        # Entries written since the worker connected by anyone else, in stream order.
        expected = [
            (fields[b"k"].decode(), fields[b"v"].decode())
            for _, fields in stream
            if fields[b"o"].decode() not in (origin,) and fields[b"o"].decode() in origins
        ]
        assert received == expected


def _expect(pipe: Connection, kind: str) -> Any:
    assert pipe.poll(_WAIT), f"a worker did not answer {kind!r} in time"
    got, payload = pipe.recv()
    assert got == kind, (got, payload)
    return payload
