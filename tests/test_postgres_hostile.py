"""Hostile probes of PostgresStore, written from its user documentation only.

Each test documents a promise of the README / issue 18 / the store contract: passing
tests are promises kept, ``xfail(strict=True)`` tests assert the correct behaviour of a
promise that is broken (reason: ``BUG: ...``).

Runs against the server of ``STOREKEEPER_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), in a database of its own created for the
module and dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import multiprocessing
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from storekeeper.errors import (  # noqa: E402
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidURLError,
    KeyNotFoundError,
    NotConnectedError,
    StorekeeperError,
    TransactionError,
)
from storekeeper.events import EventManager  # noqa: E402
from storekeeper.store import open_store  # noqa: E402
from storekeeper.store.events import (  # noqa: E402
    StoreModificationEvent,
)
from storekeeper.store.query import Exists, In, Prefix, Range, compile_terms, matches  # noqa: E402

SERVER = os.environ.get("STOREKEEPER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BASE = SERVER.rsplit("/", 1)[0]
FORK = multiprocessing.get_context("fork")


def _admin() -> Any:
    return psycopg.connect(SERVER, autocommit=True)


@pytest.fixture(scope="module")
def dbname() -> Iterator[str]:
    name = f"hostile_pg_{uuid.uuid4().hex[:10]}"
    try:
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:  # pragma: no cover - no server here
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def url(dbname: str) -> str:
    return f"{BASE}/{dbname}?table=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(url: str) -> Iterator[Any]:
    with open_store(url, event_manager=EventManager()) as s:
        yield s


def _sql(dbname: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"{BASE}/{dbname}", autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def _kill_backends(dbname: str, where: str = "true") -> int:
    """Terminate the sessions of *dbname* other than this one matching *where*."""
    rows = _sql(
        dbname,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = %s AND pid <> pg_backend_pid() AND ({where})",
        dbname,
    )
    return len(rows)


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _eventually(operation: Any, attempts: int = 12) -> Any:
    for _ in range(attempts - 1):
        try:
            return operation()
        except BackendUnavailableError:
            pass
    return operation()


def _retrying(store: Any, body: Any) -> Any:
    """Run *body* in a transaction, retrying on the deadlock TransactionError."""
    for _ in range(200):
        try:
            with store.transaction():
                return body()
        except TransactionError:
            time.sleep(0.005)
    raise AssertionError("200 retries")


# -- transactions: threads, tasks, processes ---------------------------------------------


def test_threads_read_modify_write_is_exact(store: Any) -> None:
    store.set("counter", (b"0", {}))

    def work() -> None:
        for _ in range(15):

            def bump() -> None:
                n = int(store.to_bytes("counter"))
                store.set("counter", (str(n + 1).encode(), {}))

            _retrying(store, bump)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.to_bytes("counter") == b"120"


def test_threads_transfers_keep_the_total(store: Any) -> None:
    keys = [f"acct/{i}" for i in range(4)]
    for k in keys:
        store.set(k, (b"100", {}))

    def work(seed: int) -> None:
        for i in range(6):
            a, b = keys[(seed + i) % 4], keys[(seed * 3 + i + 1) % 4]
            if a == b:
                continue

            def move(a: str = a, b: str = b) -> None:
                # rows locked in key order: no deadlock (that is another test)
                low, high = sorted((a, b))
                values = {low: int(store.to_bytes(low)), high: int(store.to_bytes(high))}
                x, y = values[a], values[b]
                store.set(a, (str(x - 7).encode(), {}))
                store.set(b, (str(y + 7).encode(), {}))

            _retrying(store, move)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(int(store.to_bytes(k)) for k in keys) == 400


def test_opposite_lock_order_deadlock_is_a_transaction_error(store: Any) -> None:
    store.set("x", (b"0", {}))
    store.set("y", (b"0", {}))
    barrier = threading.Barrier(2, timeout=20)
    outcomes: list[str] = []

    def work(first: str, second: str) -> None:
        try:
            with store.transaction():
                store.to_bytes(first)
                barrier.wait()
                store.to_bytes(second)
                store.set(first, (b"1", {}))
                store.set(second, (b"1", {}))
            outcomes.append("commit")
        except TransactionError:
            outcomes.append("rolled back")

    threads = [
        threading.Thread(target=work, args=("x", "y")),
        threading.Thread(target=work, args=("y", "x")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["commit", "rolled back"]


def test_set_returns_the_version_get_reports(store: Any) -> None:
    v1 = store.set("k", (b"1", {}))
    assert store.get("k").version == v1
    with store.transaction():
        v2 = store.set("k", (b"2", {}))
        v3 = store.set("k", (b"3", {}))
    assert v2 != v1
    assert store.get("k").version == v3
    with pytest.raises(ConflictError):
        store.set("k", (b"4", {}), if_version=v2)
    assert store.set("k", (b"4", {}), if_version=v3) == store.get("k").version


def test_many_keys_listing_pages(store: Any) -> None:
    keys = [f"d{i % 7}/{i:05d}" for i in range(1500)] + [f"flat{i:04d}" for i in range(1200)]
    store.multiset(keys, [(b"", {})] * len(keys))
    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("", "/")) == [f"d{i}/" for i in range(7)] + sorted(
        k for k in keys if k.startswith("flat")
    )
    assert list(store.list_keys("d3/")) == sorted(k for k in keys if k.startswith("d3/"))
    assert sorted(store.glob("d3/*")) == sorted(k for k in keys if k.startswith("d3/"))


def test_transaction_rollback_and_savepoint(store: Any) -> None:
    store.set("a", (b"1", {}))
    with pytest.raises(RuntimeError), store.transaction():
        store.set("a", (b"2", {}))
        store.set("b", (b"2", {}))
        raise RuntimeError("boom")
    assert store.to_bytes("a") == b"1"
    assert not store.exists("b")
    with store.transaction():
        store.set("a", (b"3", {}))
        with pytest.raises(RuntimeError), store.transaction():
            store.set("a", (b"4", {}))
            raise RuntimeError("inner")
        # Only the outermost block counts (the contract): the inner raise is caught here.
        store.set("c", (b"5", {}))
    assert store.to_bytes("c") == b"5"


def test_uncommitted_writes_invisible_to_other_thread(store: Any) -> None:
    store.set("k", (b"old", {}))
    seen: list[bytes] = []
    inside = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with store.transaction():
            store.set("k", (b"new", {}))
            store.set("fresh", (b"x", {}))
            inside.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    seen.append(store.to_bytes("k"))
    fresh = store.exists("fresh")
    release.set()
    t.join()
    assert seen == [b"old"]
    assert not fresh
    assert store.to_bytes("k") == b"new"


def test_asyncio_tasks_have_separate_transactions(store: Any) -> None:
    """Two tasks of one thread interleave their transactions: each is its own."""

    async def main() -> tuple[bool, bytes]:
        a_wrote = asyncio.Event()
        b_checked = asyncio.Event()
        result: dict[str, Any] = {}

        async def task_a() -> None:
            with pytest.raises(RuntimeError), store.transaction():
                store.set("from-a", (b"a", {}))
                a_wrote.set()
                await b_checked.wait()
                raise RuntimeError("roll a back")

        async def task_b() -> None:
            await a_wrote.wait()
            with store.transaction():
                result["b_sees_a"] = store.exists("from-a")
                store.set("from-b", (b"b", {}))
            b_checked.set()

        await asyncio.gather(task_a(), task_b())
        return result["b_sees_a"], store.to_bytes("from-b")

    b_sees_a, from_b = asyncio.run(main())
    assert not b_sees_a
    assert from_b == b"b"
    assert not store.exists("from-a")


def _proc_increment(url: str, n: int, q: Any) -> None:
    try:
        with open_store(url, listen=False) as s:
            for _ in range(n):

                def bump(s: Any = s) -> None:
                    v = int(s.to_bytes("counter"))
                    s.set("counter", (str(v + 1).encode(), {}))

                _retrying(s, bump)
        q.put("ok")
    except BaseException as exc:
        q.put(repr(exc))


def _proc_transfer(url: str, seed: int, q: Any) -> None:
    try:
        keys = [f"acct/{i}" for i in range(3)]
        with open_store(url, listen=False) as s:
            for i in range(6):
                a, b = keys[(seed + i) % 3], keys[(seed + i + 1) % 3]

                def move(a: str = a, b: str = b, s: Any = s) -> None:
                    low, high = sorted((a, b))
                    values = {low: int(s.to_bytes(low)), high: int(s.to_bytes(high))}
                    x, y = values[a], values[b]
                    s.set(a, (str(x - 3).encode(), {}))
                    s.set(b, (str(y + 3).encode(), {}))

                _retrying(s, move)
        q.put("ok")
    except BaseException as exc:
        q.put(repr(exc))


def _run_procs(target: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    q = FORK.Queue()
    procs = [FORK.Process(target=target, args=(*a, q)) for a in args]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def test_processes_read_modify_write_and_transfers_are_exact(store: Any, url: str) -> None:
    store.set("counter", (b"0", {}))
    for i in range(3):
        store.set(f"acct/{i}", (b"50", {}))
    results = _run_procs(_proc_increment, [(url, 8)] * 4)
    assert results == ["ok"] * 4
    assert store.to_bytes("counter") == b"32"
    results = _run_procs(_proc_transfer, [(url, s) for s in range(4)])
    assert results == ["ok"] * 4
    assert sum(int(store.to_bytes(f"acct/{i}")) for i in range(3)) == 150


# -- conditional writes ---------------------------------------------------------------


def _cas_round(store: Any) -> tuple[list[int], list[BaseException]]:
    version = store.set("cas", (b"start", {}))
    barrier = threading.Barrier(8)
    wins: list[int] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.set("cas", (str(i).encode(), {}), if_version=version)
            wins.append(i)
        except ConflictError:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, errors


def test_if_version_one_winner_among_8_threads(store: Any) -> None:
    for round_ in range(3):
        wins, errors = _cas_round(store)
        assert errors == [], round_
        assert len(wins) == 1, round_
        assert store.to_bytes("cas") == str(wins[0]).encode()


def test_if_exists_false_one_creator_among_8_threads(store: Any) -> None:
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        with contextlib.suppress(ConflictError):
            store.set("new", (str(i).encode(), {"i": i}), if_exists=False)
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_metadata("new") == {"i": wins[0]}
    with pytest.raises(ConflictError):
        store.set("missing", (b"", {}), if_exists=True)
    assert not store.exists("missing")


def _proc_cas(url: str, version: str, start: Any, i: int, q: Any) -> None:
    try:
        with open_store(url, listen=False) as s:
            start.wait(20)
            try:
                s.set("cas", (str(i).encode(), {}), if_version=version)
                q.put(("win", i))
            except ConflictError:
                q.put(("lose", i))
    except BaseException as exc:
        q.put(("error", repr(exc)))


def test_if_version_one_winner_among_4_processes(store: Any, url: str) -> None:
    version = store.set("cas", (b"start", {}))
    q = FORK.Queue()
    start = FORK.Event()
    procs = [FORK.Process(target=_proc_cas, args=(url, version, start, i, q)) for i in range(4)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    wins = [i for kind, i in results if kind == "win"]
    assert [r for r in results if r[0] == "error"] == []
    assert len(wins) == 1
    assert store.to_bytes("cas") == str(wins[0]).encode()


# -- large values ----------------------------------------------------------------------


def test_no_torn_reads_of_chunked_value(url: str) -> None:
    size = 3 * 1024 * 1024 + 17
    with open_store(url, chunk_size=256 * 1024, inline_limit=64 * 1024) as s:
        s.set("big", (bytes([0]) * size, {"fill": 0}))
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            i = 1
            while not stop.is_set():
                s.set("big", (bytes([i % 256]) * size, {"fill": i % 256}))
                i += 1

        def reader() -> None:
            while not stop.is_set():
                value = s.get("big")
                with value.data as stream:
                    data = stream.read()
                if len(data) != size or data.count(data[:1]) != size:
                    errors.append(f"torn: len {len(data)}, first {data[:1]!r}")
                elif value.metadata != {"fill": data[0]}:
                    errors.append(f"metadata {value.metadata} vs data {data[0]}")

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        assert errors == []


def test_50_mib_value_streamed_with_bounded_memory(store: Any) -> None:
    block = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)  # 1 MiB
    count = 50
    digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for i in range(count):
            chunk = bytes([i]) + block[1:]
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        store.set("huge", (source(), {"n": count}))
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = hashlib.sha256()
        total = 0
        with store.get_data("huge") as stream:
            while chunk := stream.read(1024 * 1024):
                out.update(chunk)
                total += len(chunk)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == count * len(block)
    assert out.hexdigest() == digest.hexdigest()
    assert peak_in < 32 * 1024 * 1024, peak_in
    assert peak_out < 32 * 1024 * 1024, peak_out
    with store.get_data_range("huge", 10 * len(block) - 2, 10 * len(block) + 3) as stream:
        assert stream.read() == block[-2:] + bytes([10]) + block[1:3]


# -- events ----------------------------------------------------------------------------


class _Recorder:
    def __init__(self, manager: EventManager) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()
        manager.connect(StoreModificationEvent, self)

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def remote(self) -> list[tuple[str, str, Any]]:
        with self.lock:
            return [
                (e.action, e.key, e.metadata)
                for e in self.events
                if getattr(e, "remote", False) is True
            ]


def test_events_local_and_remote_between_two_store_objects(url: str) -> None:
    ma, mb = EventManager(), EventManager()
    ra, rb = _Recorder(ma), _Recorder(mb)
    with open_store(url, event_manager=ma) as a, open_store(url, event_manager=mb) as b:
        assert a.wait_listening(10) and b.wait_listening(10)
        a.set("k", (b"1", {"n": 1}))
        a.update_metadata("k", {"m": 2})
        a.delete("k")
        assert _wait(lambda: len(rb.remote()) >= 3)
        time.sleep(0.3)
        assert rb.remote() == [
            ("set", "k", {"n": 1}),
            ("update", "k", {"n": 1, "m": 2}),
            ("delete", "k", {"n": 1, "m": 2}),
        ]
        # the writer's own events are local: no remote attribute set, each once
        local = [(e.action, e.key) for e in ra.events]
        assert local == [("set", "k"), ("update", "k"), ("delete", "k")]
        assert all(not getattr(e, "remote", False) for e in ra.events)
        assert all(isinstance(e.source, type(a)) for e in rb.events)


def _proc_events(url: str, tag: int, q: Any) -> None:
    try:
        with open_store(url, listen=False) as s:
            for i in range(15):
                s.set(f"p{tag}", (b"", {"i": i}))
            with contextlib.suppress(RuntimeError), s.transaction():
                s.set(f"rolled-back-{tag}", (b"", {}))
                raise RuntimeError  # noqa: TRY301 - rolls the transaction back
            with s.transaction():
                s.set(f"p{tag}", (b"", {"i": 100}))
                s.delete(f"p{tag}")
        q.put("ok")
    except BaseException as exc:
        q.put(repr(exc))


def test_cross_process_events_exactly_once_in_commit_order(url: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    with open_store(url, event_manager=manager) as s:
        assert s.wait_listening(10)
        assert _run_procs(_proc_events, [(url, t) for t in range(4)]) == ["ok"] * 4
        assert _wait(lambda: len(rec.remote()) >= 4 * 17, 20)
        time.sleep(0.5)
        events = rec.remote()
        assert len(events) == 4 * 17
        assert not [e for e in events if e[1].startswith("rolled-back")]
        for t in range(4):
            mine = [e for e in events if e[1] == f"p{t}"]
            expected = [("set", f"p{t}", {"i": i}) for i in (*range(15), 100)]
            assert mine == [*expected, ("delete", f"p{t}", {"i": 100})]


def test_listener_killed_misses_nothing(url: str, dbname: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    with (
        open_store(url, event_manager=manager) as listener,
        open_store(url, listen=False) as writer,
    ):
        assert listener.wait_listening(10)
        writer.set("before", (b"", {}))
        assert _wait(lambda: len(rec.remote()) == 1)
        # the listener's session is the one reading the change log (the writer's
        # statements write to it)
        killed = _kill_backends(dbname, "query LIKE 'SELECT id, action, key, metadata%%'")
        assert killed >= 1
        for i in range(20):
            writer.set(f"gap{i}", (b"", {"i": i}))
        assert _wait(lambda: len(rec.remote()) >= 21, 20)
        time.sleep(0.5)
        keys = [k for _, k, _ in rec.remote()]
        assert keys == ["before", *(f"gap{i}" for i in range(20))]


def test_plain_sql_changes_are_events_too(url: str, dbname: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    table = url.rsplit("table=", 1)[1]
    with open_store(url, event_manager=manager) as s:
        assert s.wait_listening(10)
        s.set("sql", (b"x", {"a": 1}))
        _sql(dbname, f'DELETE FROM "{table}" WHERE key = %s', "sql")
        assert _wait(lambda: any(e[0] == "delete" for e in rec.remote()))
        assert not s.exists("sql")


def test_remote_event_of_metadata_beyond_notify_limit(url: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    big = {"text": "é\x00" * 20000, "n": 10**30, "f": 1.0}
    with open_store(url, event_manager=manager) as a, open_store(url, listen=False) as b:
        assert a.wait_listening(10)
        b.set("big", (b"", big))
        b.delete("big")
        assert _wait(lambda: len(rec.remote()) >= 2)
        time.sleep(0.2)
        got = rec.remote()
        assert got == [("set", "big", big), ("delete", "big", big)]
        assert _types(got[0][2]) == _types(big)


def test_all_connections_killed_store_recovers(url: str, dbname: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    with open_store(url, event_manager=manager) as a, open_store(url, listen=False) as b:
        assert a.wait_listening(10)
        b.set("k0", (b"", {}))
        a.set("a0", (b"", {}))
        assert _wait(lambda: len(rec.remote()) == 1)
        assert _kill_backends(dbname) >= 2
        # Each operation succeeds or fails with a clear BackendUnavailableError (the
        # pooled connection was dead); retried, it works on a fresh connection.
        for i in range(1, 6):
            _eventually(lambda i=i: b.set(f"k{i}", (b"", {})))
        assert _eventually(lambda: a.to_bytes("k5")) == b""
        assert _wait(lambda: len(rec.remote()) >= 6, 20)
        time.sleep(0.3)
        assert [k for _, k, _ in rec.remote()] == [f"k{i}" for i in range(6)]


# -- faults ----------------------------------------------------------------------------


def test_connection_killed_inside_transaction(store: Any, dbname: str) -> None:
    store.set("a", (b"1", {}))
    with pytest.raises(StorekeeperError) as info, store.transaction():
        store.set("a", (b"2", {}))
        store.set("b", (b"2", {}))
        assert _kill_backends(dbname, "state LIKE 'idle in transaction%%'") == 1
        store.set("c", (b"3", {}))
    assert isinstance(info.value, TransactionError | BackendUnavailableError), info.value
    assert store.to_bytes("a") == b"1"
    assert not store.exists("b")
    assert not store.exists("c")
    # the store keeps working with fresh connections
    store.set("d", (b"4", {}))
    assert store.to_bytes("d") == b"4"


def test_connection_killed_before_commit(store: Any, dbname: str) -> None:
    store.set("a", (b"1", {}))
    with pytest.raises(StorekeeperError) as info, store.transaction():
        store.set("a", (b"2", {}))
        store.set("b", (b"2", {}))
        assert _kill_backends(dbname, "state LIKE 'idle in transaction%%'") == 1
    assert isinstance(info.value, TransactionError | BackendUnavailableError), info.value
    assert store.to_bytes("a") == b"1"
    assert not store.exists("b")


def test_wrong_host_is_a_clear_error_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        open_store("postgresql://postgres@127.0.0.1:1/test?table=x&timeout=2")
    assert "refused" in str(info.value)
    assert time.monotonic() - start < 6


def test_missing_database_fails_at_once(dbname: str) -> None:
    start = time.monotonic()
    with pytest.raises(StorekeeperError) as info:
        open_store(f"{BASE}/{dbname}_nope?table=x&timeout=2")
    assert f"{dbname}_nope" in str(info.value)
    assert isinstance(info.value, BackendUnavailableError), info.value
    assert time.monotonic() - start < 1


def test_unknown_role_is_an_authentication_error(dbname: str) -> None:
    from storekeeper.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        open_store(f"postgresql://no_such_role_zz@127.0.0.1:5432/{dbname}?table=x&timeout=2")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('FATAL:  password authentication failed for user "u"', "AuthenticationError"),
        ('FATAL:  no pg_hba.conf entry for host "1.2.3.4", user "u"', "AuthenticationError"),
        ('FATAL:  role "u" is not permitted to log in', "AuthenticationError"),
        ('FATAL:  database "d" does not exist', "BackendUnavailableError"),
        ("Connection refused", None),
        ("FATAL:  the database system is starting up", None),
    ],
)
def test_lasting_connection_refusals_are_recognised(message: str, expected: str | None) -> None:
    """Refusals libpq reports without SQLSTATE: those retrying cannot cure are told
    apart from a server that is down or starting (which the pool retries)."""
    from storekeeper.backends._pg_errors import lasting_refusal

    exc = psycopg.OperationalError(f'connection failed: server at "h", port 5432 failed: {message}')
    found = lasting_refusal(exc)
    assert (found and found.__name__) == expected


def test_use_after_disconnect(url: str) -> None:
    s = open_store(url)
    s.set("k", (b"v", {}))
    s.disconnect()
    with pytest.raises(NotConnectedError):
        s.get("k")
    with pytest.raises(NotConnectedError):
        s.set("k", (b"w", {}))
    with pytest.raises(NotConnectedError):
        list(s.list_keys())
    s.connect()
    try:
        assert s.to_bytes("k") == b"v"
    finally:
        s.disconnect()


def test_stream_outlives_nothing_after_disconnect(url: str) -> None:
    with open_store(url, inline_limit=1024, chunk_size=1024) as s:
        s.set("big", (b"x" * 10000, {}))
        stream = s.get_data("big")
    # after disconnect, reading either works or raises a storekeeper error; never hangs
    try:
        data = stream.read()
    except StorekeeperError:
        pass
    else:
        assert data == b"x" * 10000
    finally:
        stream.close()


def test_fork_after_connect(store: Any) -> None:
    store.set("parent", (b"1", {}))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            store.set("child", (store.to_bytes("parent") + b"2", {}))
            code = 0
        finally:
            os.write(w, b"%d" % code)
            os._exit(code)
    os.close(w)
    assert os.read(r, 10) == b"0"
    os.close(r)
    os.waitpid(pid, 0)
    assert store.to_bytes("child") == b"12"
    store.set("parent", (b"3", {}))
    assert store.to_bytes("parent") == b"3"


# -- hostile keys, table names, URLs -----------------------------------------------------


HOSTILE_KEYS = [
    "'; DROP TABLE x; --",
    'a"b',
    "back\\slash",
    "100%",
    "a_b",
    "a%b",
    "axb",
    "a\\%b",
    "ünï€ode/😀",
    "k" * 5000,
    " leading space",
    "\t\n\r",
    "$1",
    "%s",
    "{}",
]


def test_hostile_keys_round_trip(store: Any) -> None:
    for i, key in enumerate(HOSTILE_KEYS):
        store.set(key, (key.encode("utf-8"), {"i": i}))
    for i, key in enumerate(HOSTILE_KEYS):
        assert store.to_bytes(key) == key.encode("utf-8")
        assert store.get_metadata(key) == {"i": i}
    assert sorted(store.query_keys()) == sorted(HOSTILE_KEYS)
    assert list(store.list_keys()) == sorted(HOSTILE_KEYS)


@pytest.mark.parametrize("key", ["a\x00b", "\ud800", "x\udfff", "", 5, b"bytes", None])
def test_invalid_keys_rejected(store: Any, key: Any) -> None:
    with pytest.raises((InvalidKeyError, InvalidArgumentError)):
        store.set(key, (b"", {}))
    with pytest.raises((InvalidKeyError, InvalidArgumentError, KeyNotFoundError)):
        store.get(key)


def test_prefix_and_glob_treat_wildcards_literally(store: Any) -> None:
    keys = ["a%b", "a_b", "axb", "a%", "a_", "a\\b", "a\\%", "ab", "a[b", "a*b", "a?b", "a.b"]
    for k in keys:
        store.set(k, (b"", {}))
    for prefix in ["a%", "a_", "a\\", "a[", "a*", "a?", "a.", "a", "%", "_", ""]:
        assert list(store.list_keys(prefix)) == sorted(k for k in keys if k.startswith(prefix))
    import fnmatch

    for pattern in ["a%*", "a_*", "a\\*", "a[[]b", "a[*]b", "a[?]b", "a?b", "a*", "*%*", "a%b"]:
        expected = sorted(k for k in keys if fnmatch.fnmatchcase(k, pattern))
        assert sorted(store.glob(pattern)) == expected, pattern


def test_list_keys_with_delimiter_matches_model(store: Any) -> None:
    keys = [
        "a/b/c",
        "a/b/d",
        "a/c",
        "a//x",
        "a/",
        "a",
        "ab/c",
        "a%/z",
        "a_/z",
        "a/\U0010ffff",
        "a/\x7f",
        "b",
        "ä/x",
        "\U0001f600/y",
        "a/é/f",
    ]
    for k in keys:
        store.set(k, (b"", {}))

    def model(prefix: str, delimiter: str | None) -> list[str]:
        out: list[str] = []
        for k in sorted(keys):
            if not k.startswith(prefix):
                continue
            if delimiter:
                at = k.find(delimiter, len(prefix))
                if at >= 0:
                    k = k[: at + len(delimiter)]  # noqa: PLW2901 - the folder
            if not out or out[-1] != k:
                out.append(k)
        return out

    for prefix in ["", "a", "a/", "a/b", "a%", "a_", "ä", "\U0001f600"]:
        for delimiter in [None, "/", "//", "b"]:
            assert list(store.list_keys(prefix, delimiter)) == model(prefix, delimiter), (
                prefix,
                delimiter,
            )
    with pytest.raises(InvalidArgumentError):
        list(store.list_keys(5))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        list(store.list_keys("", ""))
    with pytest.raises(InvalidKeyError):
        list(store.list_keys("\ud800"))


@pytest.mark.parametrize(
    "table",
    ["x;drop", "x; DROP TABLE victim; --", 'q"uote', "it's", "spa ce", "UPPER", "ü"],
)
def test_hostile_table_names(dbname: str, table: str) -> None:
    from urllib.parse import quote

    _sql(dbname, "CREATE TABLE IF NOT EXISTS victim (x int)")
    with open_store(f"{BASE}/{dbname}?table={quote(table, safe='')}", listen=False) as s:
        s.set("k", (b"v", {"t": table}))
        assert s.to_bytes("k") == b"v"
        assert s.info()["table"] == table
    assert _sql(dbname, "SELECT to_regclass('victim') IS NOT NULL") == [(True,)]
    with open_store(f"{BASE}/{dbname}?table={quote(table, safe='')}", listen=False) as s:
        assert s.get_metadata("k") == {"t": table}


def test_long_table_names_do_not_collide(dbname: str) -> None:
    """PostgreSQL truncates identifiers to 63 bytes: two long names sharing 63 bytes
    must be refused or kept apart, never be the same table."""
    one, two = "t" * 70 + "one", "t" * 70 + "two"
    results: list[Any] = []
    for table in (one, two):
        try:
            with open_store(f"{BASE}/{dbname}?table={table}", listen=False) as s:
                s.set(table, (b"", {}))
                results.append(sorted(s.query_keys()))
        except (InvalidURLError, InvalidArgumentError) as exc:
            results.append(type(exc))
    if results[0] is not InvalidURLError and results[0] is not InvalidArgumentError:
        assert results[0] == [one]
    if isinstance(results[1], list):
        assert results[1] == [two]


def test_unknown_and_invalid_url_options(dbname: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        open_store(f"{BASE}/{dbname}?table=x&bogus=1")
    assert "bogus" in str(info.value) and "inline_limit" in str(info.value)
    for bad in ["pool_size=zero", "timeout=-1", "chunk_size=0", "listen=maybe", "inline_limit=-5"]:
        with pytest.raises(InvalidURLError):
            open_store(f"{BASE}/{dbname}?table=x&{bad}")
    with pytest.raises((InvalidURLError, InvalidArgumentError)):
        open_store(f"{BASE}/{dbname}?table=")


# -- hostile metadata and queries -------------------------------------------------------


def test_hostile_metadata_round_trips_exactly(store: Any) -> None:
    cases: list[dict[str, Any]] = [
        {"big": 10**30, "neg": -(10**40), "max": 2**63, "min": -(2**63) - 1},
        {"f": 1.0, "i": 1, "t": True, "z": 0, "nf": 0.0, "e": 1e308, "tiny": 5e-324},
        {"nul": "a\x00b", "\x00key": 1, "quote": "'\"\\", "u": "\U0010ffff"},
        {"nested": {"a": [1, [2, [3, {"b": None}]]]}, "empty": {}, "list": []},
        {"deep": _nest(100)},
        {"neg0": -0.0},
    ]
    for i, md in enumerate(cases):
        store.set(f"m{i}", (b"", md))
        got = store.get_metadata(f"m{i}")
        assert got == md
        assert _types(got) == _types(md), i


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize(
    "metadata",
    [
        {"nan": float("nan")},
        {"inf": float("inf")},
        {1: "int key"},
        {"s": {1, 2}},
        {"b": b"bytes"},
        {"surrogate": "\ud800"},
        {"\udfff": 1},
        {"o": object()},
        ["not", "a", "dict"],
    ],
)
def test_invalid_metadata_rejected_and_nothing_written(store: Any, metadata: Any) -> None:
    with pytest.raises((InvalidMetadataError, InvalidValueError_)):
        store.set("bad", (b"", metadata))
    assert not store.exists("bad")


try:
    from storekeeper.errors import InvalidValueError as InvalidValueError_
except ImportError:  # pragma: no cover
    InvalidValueError_ = InvalidMetadataError  # type: ignore[misc,assignment]


def test_very_deep_metadata_is_stored_or_refused_cleanly(store: Any) -> None:
    deep = _nest(5000)
    try:
        store.set("deep", (b"", {"x": deep}))
    except InvalidMetadataError:
        assert not store.exists("deep")
    else:
        assert store.get_metadata("deep") == {"x": deep}


QUERY_DATA: list[dict[str, Any]] = [
    {"v": 1},
    {"v": 1.0},
    {"v": True},
    {"v": False},
    {"v": 0},
    {"v": 0.0},
    {"v": -0.0},
    {"v": None},
    {"v": "1"},
    {"v": 10**20},
    {"v": 10**20 + 1},
    {"v": float(10**20)},
    {"v": 2**53 + 1},
    {"v": float(2**53)},
    {"v": 1.5},
    {"v": [1, 2]},
    {"v": [1.0, 2]},
    {"v": [True, 2]},
    {"v": {"a": 1}},
    {"v": {"a": 1.0}},
    {"v": {"a": True}},
    {"v": {"a": 1, "b": 2}},
    {"v": "a\x00b"},
    {"v": "a"},
    {"v": "ab"},
    {"v": "a%"},
    {"v": "a_"},
    {"v": "B"},
    {"v": "é"},
    {"v": "\U0001f600"},
    {"v": "\uffff"},
    {"v": ""},
    {"v": []},
    {"v": {}},
    {"w": 1},
    {},
    {"v": 1e308},
    {"v": -1e308},
]

QUERIES: list[Any] = [
    1,
    1.0,
    True,
    False,
    0,
    None,
    "1",
    10**20,
    float(10**20),
    10**20 + 1,
    2**53 + 1,
    float(2**53),
    [1, 2],
    [1.0, 2.0],
    [True, 2],
    {"a": 1},
    {"a": True},
    {"a": 1.0},
    "a\x00b",
    [],
    {},
    In([1, "a", None]),
    In([True]),
    In([10**20 + 1, {"a": 1}]),
    In([]),
    Exists(),
    Exists(False),
    Range(0, 2),
    Range(1, 1.5, include_high=True),
    Range(1, None, include_low=False),
    Range(None, 0),
    Range(10**20, 10**20 + 1),
    Range(10**20, 10**20 + 1, include_low=False, include_high=True),
    Range(2**53, 2**53 + 1, include_low=False, include_high=True),
    Range("a", "b"),
    Range("", "a"),
    Range("a", "\U0001f600"),
    Range("\uffff", "\U0001f600", include_high=True),
    Range("B", "a"),
    Range(-math.inf, math.inf),
    Prefix("a"),
    Prefix("a%"),
    Prefix("a_"),
    Prefix(""),
    Prefix("a\x00"),
]


@pytest.fixture
def query_store(store: Any) -> Any:
    store.multiset([f"q{i:02d}" for i in range(len(QUERY_DATA))], [(b"", m) for m in QUERY_DATA])
    return store


def _model(terms: dict[str, Any]) -> list[str]:
    compiled = compile_terms(terms)
    return sorted(f"q{i:02d}" for i, md in enumerate(QUERY_DATA) if matches(md, compiled))


@pytest.mark.parametrize("term", QUERIES, ids=[repr(q)[:40] for q in QUERIES])
def test_query_matches_python_model(query_store: Any, term: Any) -> None:
    assert sorted(query_store.query_keys(v=term)) == _model({"v": term})


def test_query_combined_terms_and_select(query_store: Any) -> None:
    terms = {"v": Range(0, 10), "w": Exists(False)}
    got = query_store.query(["v", "nope"], terms)
    assert sorted(k for k, _ in got) == _model(terms)
    for key, md in got:
        assert md == {"v": QUERY_DATA[int(key[1:])]["v"]}
    assert query_store.query_keys({"select": 1}) == []
    with pytest.raises(InvalidArgumentError):
        query_store.query_keys({"v": 1}, v=1)
    with pytest.raises(InvalidArgumentError):
        query_store.query("v")
    with pytest.raises(InvalidMetadataError):
        query_store.query_keys(v=object())
    with pytest.raises(InvalidArgumentError):
        query_store.query_keys({1: 2})


def test_query_nan_and_inf_terms(query_store: Any) -> None:
    with pytest.raises(InvalidMetadataError):
        query_store.query_keys(v=float("nan"))
    with pytest.raises(InvalidMetadataError):
        Range(float("nan"), 1)


# -- wrong argument types ---------------------------------------------------------------


def test_wrong_argument_types(store: Any) -> None:
    with pytest.raises(StorekeeperError):
        store.set("k", (12345, {}))
    with pytest.raises(StorekeeperError):
        store.set("k", "not a pair")
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {}), if_version=5)
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {}), if_exists="yes")
    with pytest.raises(StorekeeperError):
        store.set("k", (b"", {}), buffer_size=0)
    with pytest.raises(StorekeeperError):
        store.multiget("abc")
    assert not store.exists("k")

    def failing() -> Iterator[bytes]:
        yield b"part"
        raise OSError("source broke")

    store.set("k", (b"old", {"o": 1}))
    with pytest.raises(OSError, match="source broke"):
        store.set("k", (failing(), {"n": 1}))
    assert store.get("k").metadata == {"o": 1}
    assert store.to_bytes("k") == b"old"
    with pytest.raises(ConflictError):
        store.set("k", (b"", {}), if_version="not-a-version")
    with pytest.raises(ConflictError):
        store.delete("k", if_version="not-a-version")
    with pytest.raises(KeyNotFoundError):
        store.delete("nope")
    assert store.to_bytes("k") == b"old"


def test_failing_large_source_leaves_old_value(url: str) -> None:
    with open_store(url, inline_limit=1024, chunk_size=1024, listen=False) as s:
        s.set("k", (b"o" * 5000, {"o": 1}))

        def failing() -> Iterator[bytes]:
            for _ in range(10):
                yield b"n" * 1000
            raise OSError("broke late")

        with pytest.raises(OSError, match="broke late"):
            s.set("k", (failing(), {"n": 1}))
        assert s.to_bytes("k") == b"o" * 5000
        assert s.get_metadata("k") == {"o": 1}


# -- hostile metadata names in indexed queries, extreme numbers ---------------------------

HOSTILE_NAMES = [
    "a'b",
    'a"b',
    "x); DROP TABLE victim; --",
    "n" * 100 + "1",
    "n" * 100 + "2",
    "\x00",
    "é",
    "a.b",
    "",
    " ",
    "$1",
]


def test_max_indexes_counts_indexed_names_only(url: str, dbname: str) -> None:
    """max_indexes=2: two names get their two expression indexes, the third none."""
    with open_store(url, listen=False, max_indexes=2) as s:
        s.set("k", (b"", {"a": 1, "b": 2, "c": 3}))
        for name in "abc":
            assert s.query_keys({name: Range(0, 9)}) == ["k"]
    table = url.split("table=")[1]
    rows = _sql(dbname, f"SELECT indexname FROM pg_indexes WHERE tablename = '{table}'")
    assert len([n for (n,) in rows if n.startswith((f"{table}__n", f"{table}__s"))]) == 5  # nul


def test_hostile_metadata_names_in_indexed_queries(url: str, dbname: str) -> None:
    _sql(dbname, "CREATE TABLE IF NOT EXISTS victim (x int)")
    with open_store(url, listen=False, max_indexes=4) as s:
        for i, name in enumerate(HOSTILE_NAMES):
            s.set(f"k{i}", (b"", {name: i, "s": f"{name}!"}))
            s.set(f"t{i}", (b"", {name: f"v{i}"}))
        for i, name in enumerate(HOSTILE_NAMES):
            assert s.query_keys({name: Range(i, i + 1)}) == [f"k{i}"], name
            assert s.query_keys({name: Range(i - 0.5, i + 0.5)}) == [f"k{i}"], name
            assert s.query_keys({name: float(i)}) == [f"k{i}"], name
            assert s.query_keys({name: Prefix("v")}) == [f"t{i}"], name
            assert sorted(s.query_keys({name: Exists()})) == [f"k{i}", f"t{i}"], name
            assert s.query_keys({"s": Prefix(name + "!")}) == [f"k{i}"], name
    assert _sql(dbname, "SELECT to_regclass('victim') IS NOT NULL") == [(True,)]


EXTREME = [10**308, 1e308, 10**400, -(10**400), 2**64, float(2**64), 2**64 + 1, 5e-324, 0]


@pytest.mark.parametrize(
    "term",
    [
        1e308,
        10**308,
        10**400,
        2**64,
        float(2**64),
        2**64 + 1,
        In([10**400, 1e308]),
        Range(1e308, None),
        Range(1e308, None, include_low=False),
        Range(10**308, None, include_low=False),
        Range(None, -(10**399)),
        Range(2**64, 2**64 + 1),
        Range(float(2**64), 2**64 + 1, include_low=False, include_high=True),
        Range(0, 1e-300),
    ],
    ids=repr,
)
def test_extreme_numbers_query_like_python(store: Any, term: Any) -> None:
    for i, number in enumerate(EXTREME):
        store.set(f"x{i}", (b"", {"v": number}))
    compiled = compile_terms({"v": term})
    expected = sorted(f"x{i}" for i, n in enumerate(EXTREME) if matches({"v": n}, compiled))
    assert sorted(store.query_keys(v=term)) == expected
    assert [store.get_metadata(f"x{i}")["v"] for i in range(len(EXTREME))] == EXTREME


def test_value_read_before_overwrite_stays_readable(url: str) -> None:
    with open_store(url, inline_limit=1024, chunk_size=1000, listen=False) as s:
        old = bytes(range(256)) * 40
        s.set("k", (old, {}))
        stream = s.get_data("k")
        head = stream.read(1500)
        s.set("k", (b"new" * 5000, {}))
        rest = stream.read()
        stream.close()
        assert head + rest == old
        stream = s.get_data("k")
        head = stream.read(10)
        s.delete("k")
        assert head + stream.read() == b"new" * 5000
        stream.close()


def test_chunked_ranges_match_slices(url: str) -> None:
    with open_store(url, inline_limit=100, chunk_size=97, listen=False) as s:
        data = hashlib.sha256(b"x").digest() * 40  # 1280 bytes, 14 chunks
        s.set("k", (data, {}))
        for start, end in [
            (0, 0),
            (0, 1),
            (96, 98),
            (97, 194),
            (1279, None),
            (None, 5),
            (500, 400),
            (1280, None),
            (2000, 3000),
            (0, None),
            (5, 10**12),
        ]:
            with s.get_data_range("k", start, end) as stream:
                assert stream.read() == data[start:end], (start, end)
        s.set("empty", (b"", {}))
        assert s.to_bytes("empty") == b""


@pytest.mark.parametrize("schema", ['we"ird', "x;drop", "UP"])
def test_hostile_schema_names(dbname: str, schema: str) -> None:
    from urllib.parse import quote

    try:
        s = open_store(f"{BASE}/{dbname}?table=t&schema={quote(schema, safe='')}", listen=False)
    except StorekeeperError as exc:
        assert schema in str(exc) or "schema" in str(exc)  # noqa: PT017
        return
    with s:
        s.set("k", (b"v", {}))
        assert s.to_bytes("k") == b"v"
        assert s.info()["schema"] == schema


PERCENT_BUG = (
    "BUG: a metadata name holding '%' is inlined into the SQL text of indexed queries "
    "(numeric match, Range, Prefix) and psycopg then reads it as a placeholder: '%' and "
    "'%s' raise BackendError ('the query has 6 placeholders but 2 parameters were "
    "passed'), '%%' silently matches nothing"
)


@pytest.mark.parametrize("name", ["%", "%s", "%%", "100%", "%(x)s", "x%sy"])
def test_percent_in_metadata_name_of_indexed_query(store: Any, name: str) -> None:
    store.set("k", (b"", {name: 1, "other": "v"}))
    store.set("t", (b"", {name: "value"}))
    assert store.query_keys({name: 1}) == ["k"]
    assert store.query_keys({name: 1.0}) == ["k"]
    assert store.query_keys({name: Range(0, 2)}) == ["k"]
    assert store.query_keys({name: Prefix("val")}) == ["t"]


def test_percent_names_build_and_use_their_indexes(dbname: str) -> None:
    """A '%' metadata name in a '%' table gets its two expression indexes, and its
    queries' conditions match them (the planner uses them)."""
    from psycopg import sql

    from storekeeper.backends._pg_query import compile_query
    from storekeeper.backends._pg_schema import Escaped

    with open_store(f"{BASE}/{dbname}?table=p%25t", listen=False) as s:
        keys = [f"k{i:03}" for i in range(300)]
        s.multiset(keys, [(b"", {"%s": i, "x%": f"v{i:03}"}) for i in range(300)])
        assert s.query_keys({"%s": Range(10, 12)}) == ["k010", "k011"]
        assert s.query_keys({"x%": Prefix("v29")}) == keys[290:]
    with psycopg.connect(f"{BASE}/{dbname}", autocommit=True) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", ["p%t"])
        assert len([n for (n,) in rows if n.startswith(("p%t__n", "p%t__s")) and len(n) == 22]) == 4
        conn.execute("SET enable_seqscan = off")
        for terms, index in (({"%s": Range(10, 11)}, "p%t__n"), ({"x%": Prefix("v2")}, "p%t__s")):
            condition, compiled = compile_query(compile_terms(terms))
            statement = sql.SQL("EXPLAIN SELECT key FROM {} WHERE {}").format(
                Escaped(sql.Identifier("p%t")), condition
            )
            plan = "\n".join(row[0] for row in conn.execute(statement, compiled.params))
            assert index in plan, plan


def test_percent_in_metadata_name_of_unindexed_query(store: Any) -> None:
    """Exact string matches, In of strings, Exists and select do work with '%' names."""
    store.set("k", (b"", {"%s": "x", "%": [1], "%%": {"a": None}}))
    assert store.query_keys({"%s": "x"}) == ["k"]
    assert store.query_keys({"%": [1]}) == ["k"]
    assert store.query_keys({"%%": Exists()}) == ["k"]
    assert store.query(["%s", "%%"], {"%s": In(["x", "y"])}) == [
        ("k", {"%s": "x", "%%": {"a": None}})
    ]


@pytest.mark.parametrize("table", ["a%b", "a%sb", "a%%b"])
def test_percent_in_table_name(dbname: str, table: str) -> None:
    from urllib.parse import quote

    url = f"{BASE}/{dbname}?table={quote(table, safe='')}"
    try:
        s = open_store(url, inline_limit=100, chunk_size=64)
    except (InvalidURLError, InvalidArgumentError):
        return  # refusing the name clearly is fine too
    with s:
        s.set("small", (b"v", {"n": 1}))
        s.set("big", (b"b" * 1000, {"n": 2}))
        assert s.to_bytes("small") == b"v"
        assert s.to_bytes("big") == b"b" * 1000
        assert s.query_keys(n=Range(0, 3)) == ["big", "small"] or sorted(
            s.query_keys(n=Range(0, 3))
        ) == ["big", "small"]
    with open_store(url, listen=False) as again:
        assert again.to_bytes("big") == b"b" * 1000


@pytest.mark.parametrize("length", [3000, 100_000])
def test_long_random_key(store: Any, length: int) -> None:
    import random
    import string

    rnd = random.Random(length)
    key = "".join(rnd.choice(string.ascii_letters) for _ in range(length))
    try:
        store.set(key, (b"v", {}))
    except InvalidKeyError as exc:  # a documented, clear limit would do
        assert len(str(exc)) < 1000  # noqa: PT017
        return
    assert store.to_bytes(key) == b"v"
    assert list(store.list_keys(key[:50])) == [key]


def test_key_limit_is_kept_and_refusals_write_nothing(url: str) -> None:
    """Keys up to KEY_LIMIT UTF-8 bytes always work; an incompressible longer key is an
    InvalidKeyError with a short message, whatever the write path, and nothing of it
    (row, chunks) is left."""
    import random

    from storekeeper.backends._pg_errors import KEY_LIMIT

    rnd = random.Random(3)
    fits = "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(KEY_LIMIT // 3))
    assert len(fits.encode()) <= KEY_LIMIT
    too_long = "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(4000))
    with open_store(url, inline_limit=100, chunk_size=64, listen=False) as s:
        s.set(fits, (b"v" * 500, {"n": 1}))
        assert s.to_bytes(fits) == b"v" * 500
        writes = [
            lambda: s.set(too_long, (b"v", {})),
            lambda: s.set(too_long, (b"w" * 1000, {})),
            lambda: s.multiset(["ok", too_long], [(b"", {}), (b"", {})]),
            lambda: s.set(too_long, (b"", {"nul": "a\x00b"})),
        ]
        for write in writes:
            with pytest.raises(InvalidKeyError) as info:
                write()
            assert len(str(info.value)) < 500
        with pytest.raises(InvalidKeyError), s.transaction():
            s.set("in-txn", (b"", {}))
            s.set(too_long, (b"", {}))
        assert sorted(s.list_keys()) == [fits]
        with psycopg.connect(url.split("?", maxsplit=1)[0]) as conn:
            table = url.split("table=")[1]
            row = conn.execute(f'SELECT count(*) FROM "{table}__chunks"').fetchone()
            assert row is not None
            assert row[0] == 500 // 64 + 1  # the chunks of `fits` only


def test_long_compressible_key_round_trips(store: Any) -> None:
    key = "k" * 100_000
    store.set(key, (b"v", {}))
    assert store.to_bytes(key) == b"v"


def test_long_metadata_strings_of_an_indexed_name(store: Any) -> None:
    """Once a name has its string index, long incompressible strings (beyond a btree
    entry's 2,704 bytes) are still written, and Range/Prefix stay exact past the
    indexed characters."""
    import random
    import string

    rnd = random.Random(7)
    head = "".join(rnd.choice(string.ascii_letters) for _ in range(3000))
    store.set("short", (b"", {"m": "a"}))
    assert store.query_keys({"m": Prefix("a")}) == ["short"]  # builds the indexes
    store.set("x1", (b"", {"m": head + "1" + head}))
    store.set("x2", (b"", {"m": head + "2"}))
    store.set("x3", (b"", {"m": "\u00e9" * 5000}))
    assert store.query_keys({"m": Prefix(head + "1")}) == ["x1"]
    assert store.query_keys({"m": Prefix(head)}) == ["x1", "x2"]
    assert store.query_keys({"m": Range(head + "2", None)}) == ["x2", "x3"]
    assert store.query_keys({"m": Range(head + "1", head + "2")}) == ["x1"]
    assert store.query_keys({"m": Prefix("\u00e9" * 4000)}) == ["x3"]


def test_remote_events_skip_rolled_back_savepoints_and_batch_once(url: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    with open_store(url, event_manager=manager) as a, open_store(url, listen=False) as b:
        assert a.wait_listening(10)
        with b.transaction():
            b.set("kept", (b"", {"n": 1}))
            with contextlib.suppress(RuntimeError), b.transaction():
                b.set("undone", (b"", {}))
                b.set("kept", (b"", {"n": 2}))
                raise RuntimeError
        b.multiset([f"m{i}" for i in range(50)], [(b"", {"i": i}) for i in range(50)])
        b.multiupdate_metadata(["m0", "m1"], [{"u": 1}, {"u": 2}])
        assert _wait(lambda: len(rec.remote()) >= 53, 20)
        time.sleep(0.3)
        got = rec.remote()
        # The inner block raised: its savepoint is rolled back, and so are its events.
        assert got[0] == ("set", "kept", {"n": 1})
        assert not b.exists("undone")
        assert b.get_metadata("kept") == {"n": 1}
        assert len(got) == 53
        tail = got[-52:]
        # one event per key of the batch (the order across keys is not promised)
        assert sorted(tail[:50]) == sorted(("set", f"m{i}", {"i": i}) for i in range(50))
        assert tail[50:] == [("update", "m0", {"i": 0, "u": 1}), ("update", "m1", {"i": 1, "u": 2})]


# -- more races -------------------------------------------------------------------------


def _threads(count: int, target: Any) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_read_modify_write_of_a_missing_key_is_exact(store: Any) -> None:
    """The first increment creates the key: two transactions that both saw it missing
    must not both write 1."""

    def work(_: int) -> None:
        for _ in range(5):

            def bump() -> None:
                n = int(store.to_bytes("fresh")) if store.exists("fresh") else 0
                store.set("fresh", (str(n + 1).encode(), {}))

            for _attempt in range(100):
                try:
                    _retrying(store, bump)
                    break
                except ConflictError:
                    continue

    _threads(8, work)
    assert store.to_bytes("fresh") == b"40"


def test_concurrent_update_metadata_merges_every_name(store: Any) -> None:
    store.set("k", (b"data", {}))

    def work(i: int) -> None:
        for j in range(5):
            store.update_metadata("k", {f"t{i}_{j}": j})

    _threads(8, work)
    assert store.get_metadata("k") == {f"t{i}_{j}": j for i in range(8) for j in range(5)}
    assert store.to_bytes("k") == b"data"


def test_concurrent_set_data_and_set_metadata_keep_each_other(store: Any) -> None:
    for round_ in range(10):
        store.set("k", (b"old", {"old": True}))
        barrier = threading.Barrier(2)

        def work(i: int, round_: int = round_, barrier: Any = barrier) -> None:
            barrier.wait()
            if i == 0:
                store.set_data("k", f"new{round_}".encode())
            else:
                store.set_metadata("k", {"new": round_})

        _threads(2, work)
        assert store.get("k").metadata == {"new": round_}, round_
        assert store.to_bytes("k") == f"new{round_}".encode(), round_


def test_conditional_delete_one_winner(store: Any) -> None:
    version = store.set("k", (b"", {}))
    wins: list[int] = []

    def work(i: int) -> None:
        with contextlib.suppress(ConflictError, KeyNotFoundError):
            store.delete("k", if_version=version)
            wins.append(i)

    _threads(8, work)
    assert len(wins) == 1
    assert not store.exists("k")


def _forked_listener(store: Any, touch: bool, other_url: str) -> list[str]:
    """Fork; in the child, (optionally use the store, then) wait_listening and record
    the remote events of a write made by another store; the keys the child saw."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.close(go_r)
            got: list[str] = []
            store.event_manager.connect(
                StoreModificationEvent, lambda e: got.append(e.key) if e.remote else None
            )
            if touch:
                store.exists("anything")
            listening = store.wait_listening(5)
            os.write(go_w, b"1")
            _wait(lambda: bool(got), 2)
            os.write(w, repr((listening, got)).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_w)
    assert os.read(go_r, 1) == b"1"
    with open_store(other_url, listen=False) as writer:
        writer.set("after-fork", (b"", {}))
    listening, got = eval(os.read(r, 10000).decode())
    os.close(r)
    os.close(go_r)
    os.waitpid(pid, 0)
    assert listening is True
    return got


def test_forked_child_that_used_the_store_gets_remote_events(url: str) -> None:
    manager = EventManager()
    rec = _Recorder(manager)
    with open_store(url, event_manager=manager) as store:
        assert store.wait_listening(10)
        assert _forked_listener(store, True, url) == ["after-fork"]
        # the parent's own listener is untouched by the child
        assert _wait(lambda: [k for _, k, _ in rec.remote()] == ["after-fork"])


def test_forked_child_wait_listening_means_listening(url: str) -> None:
    with open_store(url, event_manager=EventManager()) as store:
        assert store.wait_listening(10)
        assert _forked_listener(store, False, url) == ["after-fork"]


def test_connection_killed_while_streaming_a_write(url: str, dbname: str) -> None:
    with open_store(url, inline_limit=1024, chunk_size=64 * 1024, listen=False) as s:
        s.set("k", (b"o" * 300_000, {"old": 1}))

        def source() -> Iterator[bytes]:
            for i in range(20):
                if i == 5:  # the writer's session is COPYing the chunks
                    assert _kill_backends(dbname, "query LIKE 'COPY%%'") == 1
                yield b"n" * 65536

        with pytest.raises((BackendUnavailableError, TransactionError)):
            s.set("k", (source(), {"new": 1}))
        assert _eventually(lambda: s.to_bytes("k")) == b"o" * 300_000
        assert s.get_metadata("k") == {"old": 1}


def test_connection_killed_while_streaming_a_read(url: str, dbname: str) -> None:
    data = hashlib.sha256(b"r").digest() * 20_000  # 640,000 bytes, 10 chunks
    with open_store(url, inline_limit=1024, chunk_size=64 * 1024, listen=False) as s:
        s.set("k", (data, {}))
        stream = s.get_data("k")
        head = stream.read(100_000)
        _kill_backends(dbname)
        try:
            rest = stream.read()
        except (BackendUnavailableError, TransactionError):
            pass  # a clear error is fine
        else:
            assert head + rest == data
        finally:
            stream.close()
        assert _eventually(lambda: s.to_bytes("k")) == data


def test_multiget_order_duplicates_and_missing(store: Any) -> None:
    keys = ["b", "a%", "a_", "'x"]
    for k in keys:
        store.set(k, (k.encode(), {"k": k}))
    ask = ["a_", "b", "a_", "'x", "a%"]
    assert [v.metadata["k"] for v in store.multiget(ask)] == ask
    assert store.multiget_metadata(ask, ["k", "none"]) == [{"k": k} for k in ask]
    streams = store.multiget_data(ask)
    try:
        assert [st.read() for st in streams] == [k.encode() for k in ask]
    finally:
        for st in streams:
            st.close()
    with pytest.raises(KeyNotFoundError):
        store.multiget(["a_", "a"])
    with pytest.raises((InvalidKeyError, InvalidArgumentError)):
        store.multiget(["a_", "a\x00"])
    assert store.multiget([]) == []


def test_a_process_holding_many_descriptors_still_gets_connections(url: str) -> None:
    # A busy process has descriptors past 1023, where select() gives up: checking an
    # idle pooled session must still work there.
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        store = open_store(f"{url}&timeout=5")
        try:
            store.set("k", (b"v", {"n": 1}))
            assert store.to_bytes("k") == b"v"
            assert store.get_metadata("k") == {"n": 1}
        finally:
            store.disconnect()
    finally:
        for fd in held:
            os.close(fd)
