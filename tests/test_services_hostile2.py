"""Hostile probes of the PostgreSQL and Redis backends (issue 18), from the docs only.

Attacked: exactly-once, commit-ordered remote events across processes (also for
plain-SQL writes), conditional writes and compare-and-swap counters racing from four
processes, killed connections (inside a transaction, in the middle of a streamed
value, under a waiting listener), a server crash and restart mid-run (private servers
from ``private_servers``), keys near the index limit, hostile metadata, and what the
Redis docs promise across a restart with and without persistence.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from private_servers import PrivatePostgres, PrivateRedis
from storekeeper import EventManager
from storekeeper.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    InvalidKeyError,
    InvalidMetadataError,
)
from storekeeper.store import StoreModificationEvent
from storekeeper.testing.plugin import require_service

psycopg = pytest.importorskip("psycopg")
redis = pytest.importorskip("redis")

from storekeeper.backends.postgres import PostgresStore  # noqa: E402
from storekeeper.backends.redis import RedisStore  # noqa: E402

PG_URL = os.environ.get("STOREKEEPER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STOREKEEPER_TEST_REDIS", "redis://127.0.0.1:6379/0")
FORK = multiprocessing.get_context("fork")


# --------------------------------------------------------------------------- helpers


class Recorder:
    """Collects modification events from an event manager, thread-safely."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any, Any, Any, Any]] = []
        self.cond = threading.Condition()
        self.manager = EventManager()
        self.manager.connect(StoreModificationEvent, self._record)

    def _record(self, event: Any) -> None:
        with self.cond:
            self.events.append(
                (
                    event.action,
                    event.key,
                    getattr(event, "remote", None),
                    getattr(event, "origin", None),
                    getattr(event, "version", None),
                    event.metadata,
                )
            )
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[Any]], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.events), timeout)

    def wait_key(self, key: str, timeout: float = 5.0) -> bool:
        return self.wait(lambda ev: any(e[1] == key for e in ev), timeout)

    def of(self, key: str) -> list[tuple[str, str, Any, Any, Any, Any]]:
        with self.cond:
            return [e for e in self.events if e[1] == key]


def _pg_up() -> None:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # pragma: no cover - only without a server
        require_service("postgresql", f"no PostgreSQL at {PG_URL}: {exc}")


def _redis_up() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:  # pragma: no cover - only without a server
        require_service("redis", f"no Redis at {REDIS_URL}: {exc}")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of the test's own on the shared server, dropped afterwards."""
    _pg_up()
    schema = f"hs2_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def pg_store(schema: str, url: str = PG_URL, **options: Any) -> PostgresStore:
    options.setdefault("timeout", 5.0)
    store = PostgresStore(url, "t", schema=schema, **options)
    store.connect()
    if options.get("listen", True):
        assert store.wait_listening(10)
    return store


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A prefix of the test's own on the shared server, its keys deleted afterwards."""
    _redis_up()
    prefix = f"hs2-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{{{prefix}}}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - only without the binaries
        require_service("postgresql", f"cannot start a private PostgreSQL: {exc}")
    yield server
    if server.running():
        server.stop("immediate")  # the cluster is deleted anyway: no need to wait
    server.close()


def _private_db(server: PrivatePostgres) -> str:
    """A new database on the private server; its URL."""
    if not server.running():
        server.start()
    name = f"db_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + "/" + name


def _backends(url: str, state: str | None = None) -> list[int]:
    """Pids of the client backends of *url*'s database (but this call's own)."""
    dbname = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return [pid for pid, st in rows if state is None or (st or "").startswith(state)]


def _terminate(url: str, pids: list[int]) -> None:
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


# ------------------------------------------------- PostgreSQL: plain SQL and events


def test_pg_plain_sql_rows_arrive_once_each_with_metadata(pg_schema: str) -> None:
    rec = Recorder()
    store = pg_store(pg_schema, event_manager=rec.manager)
    try:
        store.set("a", (b"x", {"n": 1}))
        assert rec.wait_key("a")
        table = f'"{pg_schema}"."t"'
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {table} (key, version, size, created, modified, metadata, meta, data)"
                " VALUES ('b', 7, 1, 0, 0, '{\"k\":1}', '{\"k\":1}', 'b'),"
                " ('c', 8, 1, 0, 0, '{\"k\":2}', '{\"k\":2}', 'c')"
            )
            conn.execute(f"UPDATE {table} SET key = key WHERE key = 'nothing-here'")
            conn.execute(
                f"UPDATE {table} SET metadata = '{{\"k\":3}}', meta = '{{\"k\":3}}' WHERE key = 'b'"
            )
            conn.execute(f"DELETE FROM {table} WHERE key IN ('a', 'c')")
            conn.execute(
                f"INSERT INTO {table} (key, version, size, created, modified, metadata, meta, data)"
                " VALUES ('end', 9, 0, 0, 0, '{}', '{}', '')"
            )
        assert rec.wait_key("end")
        time.sleep(0.2)  # anything duplicated would be on its way by now
        remote = [(a, k, m) for a, k, r, _o, _v, m in rec.events if r]
        assert remote == [
            ("set", "b", {"k": 1}),
            ("set", "c", {"k": 2}),
            ("set", "b", {"k": 3}),
            ("delete", "a", {"n": 1}),
            ("delete", "c", {"k": 2}),
            ("set", "end", {}),
        ]
        fresh = pg_store(pg_schema, listen=False)
        try:
            assert list(fresh.list_keys()) == ["b", "end"]
            assert fresh.query_keys(k=3) == ["b"]
        finally:
            fresh.disconnect()
    finally:
        store.disconnect()


def test_pg_plain_sql_key_rename_announces_old_key_gone(pg_schema: str) -> None:
    rec = Recorder()
    store = pg_store(pg_schema, event_manager=rec.manager)
    try:
        store.set("old", (b"x", {"n": 1}))
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"UPDATE \"{pg_schema}\".\"t\" SET key = 'new' WHERE key = 'old'")
        assert rec.wait_key("new")
        assert not store.exists("old")
        # a listener mirroring the store must learn that "old" is gone
        assert rec.wait(lambda ev: any(e[0] == "delete" and e[1] == "old" for e in ev), 1.0)
    finally:
        store.disconnect()


def test_pg_plain_sql_truncate_is_announced(pg_schema: str) -> None:
    rec = Recorder()
    store = pg_store(pg_schema, event_manager=rec.manager)
    try:
        store.set("a", (b"x", {}))
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'TRUNCATE "{pg_schema}"."t"')
        assert list(store.list_keys()) == []
        assert rec.wait(lambda ev: any(e[0] == "delete" and e[1] == "a" for e in ev), 1.0)
    finally:
        store.disconnect()


def test_pg_plain_sql_data_change_gives_new_version(pg_schema: str) -> None:
    store = pg_store(pg_schema, listen=False)
    try:
        version = store.set("doc", (b"mine", {}))
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f"UPDATE \"{pg_schema}\".\"t\" SET data = 'theirs', size = 6 WHERE key = 'doc'"
            )
        assert store.to_bytes("doc") == b"theirs"
        # the value changed, so the version read before must no longer match
        with pytest.raises(ConflictError):
            store.set("doc", (b"lost update", {}), if_version=version)
    finally:
        store.disconnect()


# ----------------------------------------- PostgreSQL: four processes, CAS and events

N_INCREMENTS = 15


def _open(kind: str, name: str, **options: Any) -> Any:
    """A connected store of *kind* ("postgres" or "redis") named *name*; a PostgreSQL
    one listens only when given an event manager (a Redis one always writes its
    changes to the stream: ``events=False`` would hide them from every listener)."""
    listening = "event_manager" in options
    if kind == "postgres":
        return pg_store(name, listen=listening, **options)
    store = RedisStore(REDIS_URL, prefix=name, timeout=5, **options)
    store.connect()
    return store


def _cas_worker(kind: str, name: str, start: Any, wid: int, out: Any) -> None:
    try:
        store = _open(kind, name)
        start.wait(10)
        conflicts = 0
        for i in range(N_INCREMENTS):
            while True:
                value = store.get("counter")
                with value.data as stream:
                    n = int(stream.read())
                try:
                    store.set(
                        "counter",
                        (str(n + 1).encode(), {"n": n + 1, "by": wid}),
                        if_version=value.version,
                    )
                    break
                except ConflictError:
                    conflicts += 1
            store.set(f"own/{wid}", (b"", {"i": i}))
        # create-only race: exactly one process may create each key
        won = []
        for i in range(10):
            try:
                store.set(f"lock/{i}", (str(wid).encode(), {}), if_exists=False)
                won.append(i)
            except ConflictError:
                pass
        store.disconnect()
        out.put((wid, won, conflicts))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        out.put((wid, repr(exc), -1))


def _listener_process(kind: str, name: str, ready: Any, total: int, out: Any) -> None:
    try:
        rec = Recorder()
        store = _open(kind, name, event_manager=rec.manager)
        ready.set()
        rec.wait(lambda ev: any(e[1] == "counter" and e[5]["n"] == total for e in ev), 20)
        time.sleep(0.3)
        store.disconnect()
        out.put([e[5]["n"] for e in rec.of("counter")])
    except BaseException as exc:  # pragma: no cover
        out.put(repr(exc))


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_four_processes_cas_counter_exact_and_events_once_in_order(
    kind: str, request: pytest.FixtureRequest
) -> None:
    name = request.getfixturevalue("pg_schema" if kind == "postgres" else "redis_prefix")
    seed = _open(kind, name)
    seed.set("counter", (b"0", {"n": 0}))
    seed.disconnect()
    total = 4 * N_INCREMENTS
    start = FORK.Event()
    ready = FORK.Event()
    out = FORK.Queue()
    heard = FORK.Queue()
    other = FORK.Process(target=_listener_process, args=(kind, name, ready, total, heard))
    other.start()
    procs = [FORK.Process(target=_cas_worker, args=(kind, name, start, w, out)) for w in range(4)]
    for p in procs:
        p.start()
    rec = Recorder()
    listener = _open(kind, name, event_manager=rec.manager)
    try:
        assert ready.wait(10)
        start.set()
        results = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(10)
        assert all(isinstance(r[1], list) for r in results), results
        assert listener.to_bytes("counter") == str(total).encode()
        assert rec.wait(lambda ev: sum(e[1] == "counter" for e in ev) >= total, 10)
        winners = sorted(i for _w, won, _c in results for i in won)
        assert winners == list(range(10))  # each lock key won exactly once
        assert rec.wait(lambda ev: sum(e[1].startswith("lock/") for e in ev) >= 10, 5)
        time.sleep(0.2)
        counter = [e[5]["n"] for e in rec.of("counter")]
        assert counter == list(range(1, total + 1))  # once each, in commit order
        assert all(e[2] is True for e in rec.of("counter"))
        if kind == "redis":  # the event carries the version the value got
            assert rec.of("counter")[-1][4] == listener.get("counter").version
        for w in range(4):
            assert [e[5]["i"] for e in rec.of(f"own/{w}")] == list(range(N_INCREMENTS))
        assert sorted(e[1] for e in rec.events if e[1].startswith("lock/")) == [
            f"lock/{i}" for i in range(10)
        ]
        assert heard.get(timeout=20) == list(range(1, total + 1))  # in another process too
        other.join(10)
    finally:
        if other.is_alive():
            other.kill()
        listener.disconnect()


def test_pg_transaction_read_modify_write_four_processes(pg_schema: str) -> None:
    seed = pg_store(pg_schema, listen=False)
    seed.set("a", (b"100", {}))
    seed.set("b", (b"0", {}))
    seed.disconnect()
    start = FORK.Event()
    out = FORK.Queue()

    def worker(wid: int) -> None:
        try:
            store = pg_store(pg_schema, listen=False)
            start.wait(10)
            for _ in range(10):
                with store.transaction():
                    a = int(store.to_bytes("a"))
                    b = int(store.to_bytes("b"))
                    store.set("a", (str(a - 1).encode(), {}))
                    store.set("b", (str(b + 1).encode(), {}))
            store.disconnect()
            out.put("ok")
        except BaseException as exc:  # pragma: no cover
            out.put(repr(exc))

    procs = [FORK.Process(target=worker, args=(w,)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    assert results == ["ok"] * 4
    fresh = pg_store(pg_schema, listen=False)
    try:
        assert (fresh.to_bytes("a"), fresh.to_bytes("b")) == (b"60", b"40")
    finally:
        fresh.disconnect()


# ------------------------------------------------- PostgreSQL: keys and metadata


def test_pg_keys_near_the_index_limit(pg_schema: str) -> None:
    store = pg_store(pg_schema, listen=False)
    try:
        rng = os.urandom(4000)
        # 2,600 bytes of incompressible multi-byte text: promised to work
        chars = "".join(chr(0x4E00 + b * 37 % 20000) for b in rng)
        key = ""
        while len((key + chars[len(key)]).encode()) <= 2600:
            key += chars[len(key)]
        assert 2597 <= len(key.encode()) <= 2600
        store.set(key, (b"ok", {}))
        assert store.to_bytes(key) == b"ok"
        assert list(store.list_keys(key[:10])) == [key]
        # an incompressible 3,000-byte key: refused, nothing written
        long_key = rng.hex()[:3000]
        with pytest.raises(InvalidKeyError):
            store.set(long_key, (b"no", {}))
        assert not store.exists(long_key)
        # a highly compressible long key: allowed to work (PostgreSQL compresses it)
        try:
            store.set("z" * 5000, (b"c", {}))
            assert store.to_bytes("z" * 5000) == b"c"
        except InvalidKeyError:
            pass
        fresh = pg_store(pg_schema, listen=False)
        try:
            assert fresh.to_bytes(key) == b"ok"
            assert not fresh.exists(long_key)
        finally:
            fresh.disconnect()
    finally:
        store.disconnect()


def test_pg_refused_long_key_inside_transaction_loses_nothing(pg_schema: str) -> None:
    store = pg_store(pg_schema, listen=False)
    try:
        long_key = os.urandom(2000).hex()[:3000]  # incompressible: refused
        with store.transaction():
            store.set("before", (b"1", {}))
            with pytest.raises(InvalidKeyError):  # "nothing is written"
                store.set(long_key, (b"no", {}))
        # the block exited normally: its other writes must be applied
        fresh = pg_store(pg_schema, listen=False)
        try:
            assert fresh.exists("before")
        finally:
            fresh.disconnect()
    finally:
        store.disconnect()


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


HOSTILE_METADATA: list[Any] = [
    {"x": math.nan},
    {"x": math.inf},
    {"x": [1.0, -math.inf]},
    {"x": {1: "one"}},
    {1: "top"},
    {"x": "\ud800"},
    _deep(200),
    {"x": {"y": [{"z": float("nan")}]}},
    {"x": object()},
    {"x": b"bytes"},
    ["not", "a", "dict"],
]


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_hostile_metadata_refused_and_data_untouched(
    backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        store: Any = pg_store(schema, listen=False)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        store = RedisStore(REDIS_URL, prefix=prefix, events=False)
        store.connect()
    try:
        version = store.set("k", (b"original", {"keep": 1}))
        for bad in HOSTILE_METADATA:
            for write in (
                lambda bad=bad: store.set("k", (b"changed", bad)),
                lambda bad=bad: store.set_metadata("k", bad),
                lambda bad=bad: store.set("new", (b"n", bad), if_exists=False),
            ):
                with pytest.raises(InvalidMetadataError):
                    write()
            if isinstance(bad, dict):
                with pytest.raises(InvalidMetadataError):
                    store.update_metadata("k", bad)
        assert store.to_bytes("k") == b"original"
        assert store.get_metadata("k") == {"keep": 1}
        assert store.get("k").version == version
        assert not store.exists("new")
    finally:
        store.disconnect()


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_extreme_but_valid_metadata_round_trips(
    backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        store: Any = pg_store(schema, listen=False)
        again: Callable[[], Any] = lambda: pg_store(schema, listen=False)  # noqa: E731
    else:
        prefix = request.getfixturevalue("redis_prefix")
        store = RedisStore(REDIS_URL, prefix=prefix, events=False)
        store.connect()

        def again() -> Any:
            s = RedisStore(REDIS_URL, prefix=prefix, events=False)
            s.connect()
            return s

    meta = {
        "nul": "a\x00b",
        "na\x00me": {"in\x00ner": 2},
        "big": 10**60,
        "neg0": -0.0,
        "tiny": 5e-324,
        "max": 1.7976931348623157e308,
        "deep": _deep(100),
        "huge": "é" * 300_000,
        "": "empty name",
        "%s": "percent",
        "bool": True,
        "one": 1,
    }
    try:
        store.set("k", (b"d", meta))
        fresh = again()
        try:
            got = fresh.get_metadata("k")
            assert got == meta
            assert type(got["big"]) is int and type(got["bool"]) is bool
            assert math.copysign(1.0, got["neg0"]) == -1.0
            assert fresh.query_keys(nul="a\x00b") == ["k"]
            assert fresh.query_keys(one=True) == ["k"]  # True == 1, as in Python
            assert fresh.query_keys(big=10**60) == ["k"]
            assert fresh.query_keys({"%s": "percent"}) == ["k"]
        finally:
            fresh.disconnect()
    finally:
        store.disconnect()


def test_pg_large_metadata_remote_event_complete(pg_schema: str) -> None:
    rec = Recorder()
    store = pg_store(pg_schema, event_manager=rec.manager)
    writer = pg_store(pg_schema, listen=False)
    try:
        meta = {"blob": "x" * 50_000, "n": 1}
        writer.set("big", (b"", meta))
        writer.delete("big")
        assert rec.wait(lambda ev: len(ev) >= 2)
        time.sleep(0.2)
        assert [(e[0], e[1], e[2], e[5]) for e in rec.events] == [
            ("set", "big", True, meta),
            ("delete", "big", True, meta),
        ]
    finally:
        writer.disconnect()
        store.disconnect()


def test_pg_missing_database_refused_at_once() -> None:
    _pg_up()
    url = PG_URL.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:6]}"
    store = PostgresStore(url, "t", timeout=20)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        store.connect()
    assert time.monotonic() - started < 3
    role = PG_URL.replace("postgres@", f"no_role_{uuid.uuid4().hex[:6]}@", 1)
    started = time.monotonic()
    with pytest.raises(AuthenticationError):
        PostgresStore(role, "t", timeout=20).connect()
    assert time.monotonic() - started < 3


# ------------------------------------------- PostgreSQL: killed connections, crashes


def test_pg_backend_killed_inside_transaction_applies_nothing(private_pg: PrivatePostgres) -> None:
    url = _private_db(private_pg)
    store = PostgresStore(url, "t", listen=False, timeout=2)
    store.connect()
    try:
        store.set("a", (b"old", {"v": 1}))
        version = store.get("a").version
        with pytest.raises(BackendUnavailableError):
            with store.transaction():
                store.set("a", (b"new", {"v": 2}))
                store.set("b", (b"new", {}))
                _terminate(url, _backends(url, "idle in transaction"))
                store.set("c", (b"new", {}))
        fresh = PostgresStore(url, "t", listen=False, timeout=2)
        fresh.connect()
        try:
            assert fresh.to_bytes("a") == b"old"
            assert fresh.get("a").version == version
            assert fresh.get_metadata("a") == {"v": 1}
            assert not fresh.exists("b") and not fresh.exists("c")
        finally:
            fresh.disconnect()
        # the same store object works again at once
        store.set("d", (b"after", {}))
        assert store.to_bytes("d") == b"after"
    finally:
        store.disconnect()


def test_pg_backend_killed_mid_stream_keeps_old_large_value(private_pg: PrivatePostgres) -> None:
    url = _private_db(private_pg)
    options: dict[str, Any] = {"listen": False, "timeout": 2, "inline_limit": 1024}
    options["chunk_size"] = 64 * 1024
    store = PostgresStore(url, "t", **options)
    store.connect()
    try:
        old = os.urandom(300_000)
        version = store.set("big", (old, {"gen": 1}))

        def chunks() -> Iterator[bytes]:
            for i in range(12):
                if i == 4:
                    _terminate(url, _backends(url))
                yield bytes([i]) * 64 * 1024

        with pytest.raises(BackendUnavailableError):
            store.set("big", (chunks(), {"gen": 2}))
        fresh = PostgresStore(url, "t", **options)
        fresh.connect()
        try:
            assert fresh.to_bytes("big") == old
            assert fresh.get("big").version == version
            assert fresh.get_metadata("big") == {"gen": 1}
        finally:
            fresh.disconnect()
        assert store.to_bytes("big") == old  # and the old object reads again
    finally:
        store.disconnect()


def _block_db(url: str, blocked: bool) -> None:
    dbname = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS {str(not blocked).lower()}')


def _plain_insert(conn: Any, key: str) -> None:
    conn.execute(
        'INSERT INTO "t" (key, version, size, created, modified, metadata, meta, data)'
        " VALUES (%s, 1, 1, 0, 0, '{}', '{}', 'x')",
        (key,),
    )


def test_pg_listener_killed_catches_up_once(private_pg: PrivatePostgres) -> None:
    url = _private_db(private_pg)
    rec = Recorder()
    listener = PostgresStore(url, "t", timeout=2, event_manager=rec.manager)
    listener.connect()
    assert listener.wait_listening(5)
    writer = PostgresStore(url, "t", listen=False, timeout=2)
    writer.connect()
    side = psycopg.connect(url, autocommit=True)
    try:
        writer.set("k1", (b"1", {}))
        assert rec.wait_key("k1")
        _block_db(url, True)
        try:
            _terminate(url, [p for p in _backends(url) if p != side.info.backend_pid])
            _plain_insert(side, "during")  # committed while the listener is away
        finally:
            _block_db(url, False)
        writer.set("k2", (b"2", {}))
        assert rec.wait_key("k2", 8)
        time.sleep(0.3)
        assert [e[1] for e in rec.events] == ["k1", "during", "k2"]
    finally:
        side.close()
        writer.disconnect()
        listener.disconnect()


def test_pg_listener_catch_up_gets_late_commit_of_older_change(
    private_pg: PrivatePostgres,
) -> None:
    url = _private_db(private_pg)
    rec = Recorder()
    listener = PostgresStore(url, "t", timeout=2, event_manager=rec.manager)
    listener.connect()
    assert listener.wait_listening(5)
    writer = PostgresStore(url, "t", listen=False, timeout=2)
    writer.connect()
    slow = psycopg.connect(url)  # a plain-SQL transaction that commits late
    try:
        _plain_insert(slow, "early")  # logged first (older change id), not committed
        writer.set("late", (b"1", {}))  # logged second, committed first
        assert rec.wait_key("late")
        _block_db(url, True)
        try:
            _terminate(url, [p for p in _backends(url) if p != slow.info.backend_pid])
            slow.commit()  # committed while the listener is away
        finally:
            _block_db(url, False)
        writer.set("after", (b"2", {}))
        assert rec.wait_key("after", 8)
        time.sleep(0.3)
        assert sorted(e[1] for e in rec.events) == ["after", "early", "late"]
    finally:
        slow.close()
        writer.disconnect()
        listener.disconnect()


def _pg_crash_writer(url: str, acked: Any, stop: Any) -> None:
    try:
        store = PostgresStore(url, "t", listen=False, timeout=1)
        store.connect()
        n = 0
        while not stop.is_set():
            n += 1
            while True:
                try:
                    store.set("c", (str(n).encode(), {"n": n}))
                    break
                except BackendUnavailableError:
                    # ambiguous: did it commit before the crash? look once the server is back
                    try:
                        if store.get_metadata("c")["n"] == n:
                            break
                    except BackendUnavailableError:
                        time.sleep(0.05)
            acked.put(n)
        store.disconnect()
        acked.put("done")
    except BaseException as exc:  # pragma: no cover
        acked.put(repr(exc))


def test_pg_crash_restart_mid_run_events_once_and_acked_writes_kept(
    private_pg: PrivatePostgres,
) -> None:
    url = _private_db(private_pg)
    rec = Recorder()
    listener = PostgresStore(url, "t", timeout=1, event_manager=rec.manager)
    listener.connect()
    assert listener.wait_listening(5)
    acked = FORK.Queue()
    stop = FORK.Event()
    proc = FORK.Process(target=_pg_crash_writer, args=(url, acked, stop))
    proc.start()
    try:
        got: list[Any] = [acked.get(timeout=10) for _ in range(20)]
        private_pg.stop("immediate")
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            listener.get("c")
        assert time.monotonic() - started < 3
        private_pg.start()
        last = got[-1]
        while isinstance(last, int) and last < got[19] + 20:
            last = acked.get(timeout=10)
            got.append(last)
        stop.set()
        while last != "done":
            last = acked.get(timeout=10)
            got.append(last)
        proc.join(10)
        final = got[-2]
        assert got[:-1] == list(range(1, final + 1)), got[-3:]
        # the same store object reads again, and nothing acknowledged is lost
        assert listener.get_metadata("c") == {"n": final}
        assert rec.wait(lambda ev: any(e[5] == {"n": final} for e in ev), 8)
        time.sleep(0.3)
        seen = [e[5]["n"] for e in rec.of("c")]
        assert seen == list(range(1, final + 1))  # every change once, in commit order
    finally:
        stop.set()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        if not private_pg.running():
            private_pg.start()
        listener.disconnect()


# ------------------------------------------------------------------------- Redis


def _kill_clients(name: str) -> int:
    """CLIENT KILL every connection of the shared server named *name*."""
    client = redis.Redis.from_url(REDIS_URL)
    killed = 0
    for entry in client.client_list():
        if entry.get("name") == name:
            client.client_kill_filter(_id=entry["id"])
            killed += 1
    return killed


def test_redis_transaction_connection_killed_applies_nothing(redis_prefix: str) -> None:
    store = RedisStore(REDIS_URL, prefix=redis_prefix, events=False, timeout=2)
    other = RedisStore(REDIS_URL, prefix=redis_prefix, events=False, timeout=2)
    store.connect()
    other.connect()
    try:
        store.set("x", (b"0", {}))
        store.set("y", (b"0", {}))
        with pytest.raises((ConflictError, BackendUnavailableError)):
            with store.transaction():
                x = int(store.to_bytes("x"))  # WATCHed
                other.set("x", (b"100", {}))  # ... and changed by another writer
                assert _kill_clients(store.client_name) >= 1  # the WATCH dies with it
                store.set("y", (str(x + 1).encode(), {}))
        assert other.to_bytes("y") == b"0"  # no lost update through a fresh connection
        assert other.to_bytes("x") == b"100"
        store.set("z", (b"again", {}))  # and the store object works again
        assert other.to_bytes("z") == b"again"
    finally:
        store.disconnect()
        other.disconnect()


def test_redis_listener_connection_killed_misses_nothing(redis_prefix: str) -> None:
    rec = Recorder()
    listener = RedisStore(REDIS_URL, prefix=redis_prefix, timeout=2, event_manager=rec.manager)
    listener.connect()
    writer = RedisStore(REDIS_URL, prefix=redis_prefix, timeout=2)
    writer.connect()
    try:
        v1 = writer.set("k", (b"1", {"n": 1}))  # at once after connect: not missed
        assert rec.wait_key("k")
        cursor = listener.event_cursor
        assert _kill_clients(f"storekeeper-events:{redis_prefix}") >= 1
        v2 = writer.set("k", (b"2", {"n": 2}))
        writer.delete("k")
        assert rec.wait(lambda ev: len(ev) >= 3, 8)
        time.sleep(0.3)
        assert [(e[0], e[2], e[5]) for e in rec.events] == [
            ("set", True, {"n": 1}),
            ("set", True, {"n": 2}),
            ("delete", True, {"n": 2}),
        ]
        assert [e[4] for e in rec.events[:2]] == [v1, v2]
        # a new store handed the cursor resumes after the first change, exactly
        rec2 = Recorder()
        resumed = RedisStore(
            REDIS_URL, prefix=redis_prefix, event_cursor=cursor, event_manager=rec2.manager
        )
        resumed.connect()
        try:
            assert rec2.wait(lambda ev: len(ev) >= 2, 5)
            time.sleep(0.3)
            assert [(e[0], e[5]) for e in rec2.events] == [("set", {"n": 2}), ("delete", {"n": 2})]
        finally:
            resumed.disconnect()
    finally:
        writer.disconnect()
        listener.disconnect()


def test_redis_bad_event_cursor_is_refused() -> None:
    for bad in ("yesterday", "12", "1-2-3", "-1-0", ""):
        with pytest.raises(ValueError):
            RedisStore(REDIS_URL, prefix="never-connected", event_cursor=bad)


@pytest.fixture
def redis_root(tmp_path: Path) -> Path:
    return tmp_path


def test_redis_restart_without_persistence_loses_keys_as_documented(redis_root: Path) -> None:
    server = PrivateRedis(redis_root, persistent=False)
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - only without the binary
        require_service("redis", f"cannot start a private redis-server: {exc}")
    rec = Recorder()
    try:
        store = RedisStore(server.url, prefix="p", timeout=1, event_manager=rec.manager)
        store.connect()
        writer = RedisStore(server.url, prefix="p", timeout=1)
        writer.connect()
        assert "loses every key" in store.info()["durability"]
        old = writer.set("a", (b"1", {"kind": "x"}))
        assert rec.wait_key("a")
        server.crash()
        with pytest.raises(BackendUnavailableError):
            store.get("a")
        server.start()
        # as documented: everything is gone, and the indexes with it
        assert not store.exists("a")
        assert store.query_keys(kind="x") == []
        assert list(store.list_keys()) == []
        with pytest.raises((ConflictError, KeyError)):
            store.set("a", (b"stale", {}), if_version=old)
        assert not writer.exists("a")
        # the same objects work again, and events flow again
        writer.set("b", (b"2", {"kind": "x"}))
        assert store.query_keys(kind="x") == ["b"]
        assert rec.wait_key("b", 8)
        time.sleep(0.2)
        assert [e[1] for e in rec.events] == ["a", "b"]
        store.disconnect()
        writer.disconnect()
    finally:
        server.close()


def test_redis_appendfsync_always_keeps_acknowledged_writes(redis_root: Path) -> None:
    server = PrivateRedis(redis_root, persistent=True)
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - only without the binary
        require_service("redis", f"cannot start a private redis-server: {exc}")
    try:
        store = RedisStore(server.url, prefix="p", timeout=1, inline_limit=1024, chunk_size=4096)
        store.connect()
        assert "no acknowledged write" in store.info()["durability"]
        versions = {}
        big = os.urandom(20_000)
        for i in range(30):
            versions[f"k{i}"] = store.set(f"k{i}", (str(i).encode(), {"i": i, "even": i % 2 == 0}))
        versions["big"] = store.set("big", (big, {"i": -1}))
        store.delete("k0")
        del versions["k0"]
        server.crash()  # SIGKILL right after the acknowledgements
        server.start()
        fresh = RedisStore(server.url, prefix="p", timeout=1)
        fresh.connect()
        try:
            assert sorted(fresh.list_keys()) == sorted(versions)
            for key, version in versions.items():
                assert fresh.get(key).version == version
            assert fresh.to_bytes("big") == big
            assert fresh.to_bytes("k29") == b"29"
            assert fresh.query_keys(even=True) == sorted(f"k{i}" for i in range(2, 30, 2))
            # the old object works again, and its versions still guard writes
            store.set("k1", (b"new", {}), if_version=versions["k1"])
            with pytest.raises(ConflictError):
                store.set("k1", (b"lost", {}), if_version=versions["k1"])
        finally:
            fresh.disconnect()
            store.disconnect()
    finally:
        server.close()


def test_redis_kill_mid_stream_leaves_a_whole_value(redis_prefix: str) -> None:
    options: dict[str, Any] = {"events": False, "timeout": 2}
    options.update(inline_limit=1024, chunk_size=64 * 1024)
    store = RedisStore(REDIS_URL, prefix=redis_prefix, **options)
    store.connect()
    try:
        old = os.urandom(300_000)
        store.set("big", (old, {"gen": 1}))
        new = [bytes([i]) * 64 * 1024 for i in range(12)]

        def chunks() -> Iterator[bytes]:
            for i, chunk in enumerate(new):
                if i == 4:
                    assert _kill_clients(store.client_name) >= 1
                yield chunk

        try:
            store.set("big", (chunks(), {"gen": 2}))
            expected, meta = b"".join(new), {"gen": 2}
        except BackendUnavailableError:
            expected, meta = old, {"gen": 1}
        fresh = RedisStore(REDIS_URL, prefix=redis_prefix, events=False)
        fresh.connect()
        try:
            assert fresh.get_metadata("big") == meta
            assert fresh.to_bytes("big") == expected  # never a mix of the two
        finally:
            fresh.disconnect()
    finally:
        store.disconnect()


# ---------------------------------------------- both: merges and savepoint events


def _merge_worker(kind: str, name: str, start: Any, wid: int, out: Any) -> None:
    try:
        store = _open(kind, name)
        start.wait(10)
        for i in range(15):
            store.update_metadata("doc", {f"p{wid}": i, "last": wid})
        store.disconnect()
        out.put("ok")
    except BaseException as exc:  # pragma: no cover
        out.put(repr(exc))


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_update_metadata_from_four_processes_loses_no_field(
    kind: str, request: pytest.FixtureRequest
) -> None:
    name = request.getfixturevalue("pg_schema" if kind == "postgres" else "redis_prefix")
    seed = _open(kind, name)
    seed.set("doc", (b"data", {"keep": True}))
    seed.disconnect()
    rec = Recorder()
    listener = _open(kind, name, event_manager=rec.manager)
    start = FORK.Event()
    out = FORK.Queue()
    procs = [FORK.Process(target=_merge_worker, args=(kind, name, start, w, out)) for w in range(4)]
    for p in procs:
        p.start()
    try:
        start.set()
        assert [out.get(timeout=30) for _ in procs] == ["ok"] * 4
        for p in procs:
            p.join(10)
        meta = listener.get_metadata("doc")
        assert {k: meta[k] for k in meta if k != "last"} == {
            "keep": True,
            **{f"p{w}": 14 for w in range(4)},
        }
        assert listener.to_bytes("doc") == b"data"
        assert rec.wait(lambda ev: len(ev) >= 60, 10)
        time.sleep(0.2)
        assert len(rec.events) == 60 and {e[0] for e in rec.events} == {"update"}
        # each event's metadata is a state that really existed: the per-process
        # counters never go backwards along the commit order
        for w in range(4):
            seen = [e[5].get(f"p{w}", -1) for e in rec.events]
            assert seen == sorted(seen)
        assert rec.events[-1][5] == meta
    finally:
        listener.disconnect()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_rolled_back_savepoint_sends_no_remote_event(
    kind: str, request: pytest.FixtureRequest
) -> None:
    name = request.getfixturevalue("pg_schema" if kind == "postgres" else "redis_prefix")
    rec = Recorder()
    listener = _open(kind, name, event_manager=rec.manager)
    writer = _open(kind, name)
    try:
        with writer.transaction():
            writer.set("a", (b"1", {"step": 1}))
            with pytest.raises(RuntimeError):
                with writer.transaction():
                    writer.set("b", (b"undone", {}))
                    writer.delete("a")
                    raise RuntimeError("undo the inner block")
            writer.set("c", (b"3", {"step": 3}))
        writer.set("end", (b"", {}))
        assert rec.wait_key("end")
        time.sleep(0.2)
        assert [(e[0], e[1]) for e in rec.events] == [("set", "a"), ("set", "c"), ("set", "end")]
        assert sorted(listener.list_keys()) == ["a", "c", "end"]
    finally:
        writer.disconnect()
        listener.disconnect()
