"""PostgresStore vs raw psycopg doing the same work, side by side in one run.

The raw peer is one psycopg connection in autocommit mode on a plain table (``key text
PRIMARY KEY, metadata jsonb, data bytea`` with a GIN index on ``metadata``): upserts with
``INSERT ... ON CONFLICT DO UPDATE``, point ``SELECT``s, ``executemany`` in one
transaction for batches, ``key = ANY(...)`` for batched reads, ``metadata @> ...`` for
the query, and ``COPY`` of chunks / a server-side cursor for the large value. The store
does more per write (a version, times, the exact metadata text, a change-log row and a
NOTIFY through its trigger); the ratios say what that costs.

Phases (sizes from the environment, to shrink a run): single set/get of 100 B and
64 KiB values (BENCH_PG_SMALL=2000, BENCH_PG_LARGE=300 keys), batched multiset and
multiget (BENCH_PG_BATCHES=10 batches of 1,000), a query over BENCH_PG_QUERY_KEYS=100,000
keys matching 1% of them (20 queries), and one BENCH_PG_HUGE_MIB=1024 MiB value in and
out, each peer in a fresh process, with its peak RSS above the process's baseline
(target < 64 MiB). BENCH_REPS=3 interleaved reps, the peers' order rotated each rep.
Server: STOREKEEPER_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test);
the run uses a database of its own, dropped at the end.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.backends.postgres import PostgresStore
from storekeeper.events import EventManager

SERVER = os.environ.get("STOREKEEPER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CHUNK = 1 << 20


def _database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))


class Raw:
    """Raw psycopg: one autocommit connection, one plain table."""

    def __init__(self, url: str, table: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.table = sql.Identifier(table)
        self.chunks = sql.Identifier(table + "_chunks")
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE {} (key text PRIMARY KEY, metadata jsonb, data bytea);"
                "CREATE INDEX ON {} USING gin (metadata);"
                "CREATE TABLE {} (blob bigint, seq int, data bytea, PRIMARY KEY (blob, seq))"
            ).format(self.table, self.table, self.chunks)
        )
        self.upsert = sql.SQL(
            "INSERT INTO {} (key, metadata, data) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET metadata = EXCLUDED.metadata, data = EXCLUDED.data"
        ).format(self.table)
        self.select = sql.SQL("SELECT data FROM {} WHERE key = %s").format(self.table)

    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.conn.execute(self.upsert, [key, json.dumps(metadata), data])

    def get(self, key: str) -> bytes:
        row = self.conn.execute(self.select, [key], binary=True).fetchone()
        assert row is not None
        return bytes(row[0])

    def multiset(self, keys: list[str], values: list[tuple[bytes, dict[str, Any]]]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(
                self.upsert, [[k, json.dumps(m), d] for k, (d, m) in zip(keys, values, strict=True)]
            )

    def multiget(self, keys: list[str]) -> list[bytes]:
        # The store's multiget returns values with their metadata: fetch it too.
        statement = sql.SQL("SELECT key, data, metadata FROM {} WHERE key = ANY(%s)")
        rows = self.conn.execute(statement.format(self.table), [keys], binary=True).fetchall()
        found = {key: data for key, data, _ in rows}
        return [bytes(found[key]) for key in keys]

    def query(self, metadata: dict[str, Any]) -> list[str]:
        statement = sql.SQL("SELECT key, metadata FROM {} WHERE metadata @> %s").format(self.table)
        return [key for key, _ in self.conn.execute(statement, [json.dumps(metadata)])]

    def close(self) -> None:
        self.conn.close()


def _store(url: str, table: str) -> PostgresStore:
    store = PostgresStore(url, table, event_manager=EventManager())
    store.connect()
    return store


def _phase_single(results: Results, peers: dict[str, Any], size: int, count: int, rep: int) -> None:
    payload = os.urandom(size)
    label = "100B" if size < 1024 else "64KiB"
    for name in rotate(list(peers), rep):
        peer = peers[name]
        keys = [f"s{label}/{rep}/{i}" for i in range(count)]
        seconds = timed(lambda: [peer.set(k, payload, {"i": 1}) for k in keys])
        results.add(f"set {label}", name, count, seconds)
        get = peer.to_bytes if name == "store" else peer.get
        seconds = timed(lambda: [get(k) for k in keys])
        results.add(f"get {label}", name, count, seconds)


def _phase_batches(results: Results, peers: dict[str, Any], batches: int, rep: int) -> None:
    for name in rotate(list(peers), rep):
        peer = peers[name]
        groups = [[f"b/{rep}/{g}/{i}" for i in range(1000)] for g in range(batches)]
        values = [(os.urandom(100), {"g": g}) for g in range(1000)]
        seconds = timed(lambda: [peer.multiset(keys, values) for keys in groups])
        results.add("multiset", name, batches * 1000, seconds)
        if name == "store":
            seconds = timed(lambda: [[v.data.read() for v in peer.multiget(k)] for k in groups])
        else:
            seconds = timed(lambda: [peer.multiget(keys) for keys in groups])
        results.add("multiget", name, batches * 1000, seconds)


def _load_query_keys(store: PostgresStore, raw: Raw, count: int) -> None:
    for start in range(0, count, 5000):
        keys = [f"q/{i}" for i in range(start, min(count, start + 5000))]
        values = [
            (b"", {"group": i % 100, "name": f"n{i}"}) for i in range(start, start + len(keys))
        ]
        store.multiset(keys, values)
        raw.multiset(keys, values)
    raw.conn.execute("ANALYZE")


def _phase_query(results: Results, peers: dict[str, Any], count: int, rep: int) -> None:
    for name in rotate(list(peers), rep):
        peer = peers[name]
        if name == "store":
            seconds = timed(lambda: [peer.query_keys(group=g) for g in range(20)])
            assert len(peer.query_keys(group=3)) == count // 100
        else:
            seconds = timed(lambda: [peer.query({"group": g}) for g in range(20)])
            assert len(peer.query({"group": 3})) == count // 100
        results.add("query 1%", name, 20, seconds)


# -- the huge value: one peer per fresh process ---------------------------------------------------
def _chunks(total: int) -> Any:
    block = os.urandom(CHUNK)
    left = total
    while left:
        part = block[: min(left, CHUNK)]
        left -= len(part)
        yield part


def _huge_child(kind: str, url: str, table: str, mib: int) -> None:
    total = mib << 20
    if kind == "store":
        store = _store(url, table)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        store.set("huge", (_chunks(total), {}))
        written = time.perf_counter() - start
        start = time.perf_counter()
        read = sum(len(part) for part in store.get("huge").iterdata(CHUNK))
        reading = time.perf_counter() - start
        store.disconnect()
    else:
        raw = Raw(url, table)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        with raw.conn.transaction(), raw.conn.cursor() as cursor:
            statement = sql.SQL("COPY {} (blob, seq, data) FROM STDIN (FORMAT BINARY)")
            with cursor.copy(statement.format(raw.chunks)) as copy:
                copy.set_types(["int8", "int4", "bytea"])
                for seq, part in enumerate(_chunks(total)):
                    copy.write_row((1, seq, part))
            raw.set("huge", b"", {"blob": 1})
        written = time.perf_counter() - start
        start = time.perf_counter()
        read = 0
        with raw.conn.transaction(), raw.conn.cursor("huge", binary=True) as cursor:
            cursor.itersize = 8
            cursor.execute(
                sql.SQL("SELECT data FROM {} WHERE blob = 1 ORDER BY seq").format(raw.chunks)
            )
            for (part,) in cursor:
                read += len(part)
        reading = time.perf_counter() - start
        raw.close()
    assert read == total
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"write": written, "read": reading, "rss_mib": (peak - base) / 1024}))


def _phase_huge(url: str, mib: int) -> None:
    print(f"\n{mib} MiB value, each peer in a fresh process (MB/s; peak RSS above baseline)")
    for kind in ("store", "raw"):
        table = f"huge_{kind}_{secrets.token_hex(3)}"
        out = subprocess.run(
            [sys.executable, __file__, "--huge", kind, url, table, str(mib)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        size = (mib << 20) / 1e6
        verdict = "ok" if figures["rss_mib"] < 64 else "ABOVE TARGET"
        print(
            f"  {kind:<6} write {size / figures['write']:8.1f}  read {size / figures['read']:8.1f}"
            f"  peak RSS +{figures['rss_mib']:.1f} MiB (target < 64: {verdict})"
        )


def main() -> None:
    name = f"storekeeper_bench_{secrets.token_hex(4)}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _database(SERVER, name)
    try:
        run(url)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(statement.format(sql.Identifier(name)))


def run(url: str) -> None:
    reps = env_int("BENCH_REPS", 3)
    store, raw = _store(url, "bench"), Raw(url, "raw")
    peers: dict[str, Any] = {"store": _Adapter(store), "raw": raw}
    results = Results()
    print("PostgresStore vs raw psycopg (same server, same run; the machine is shared)")
    for rep in range(reps):
        _phase_single(results, peers, 100, env_int("BENCH_PG_SMALL", 2000), rep)
        _phase_single(results, peers, 65536, env_int("BENCH_PG_LARGE", 300), rep)
        _phase_batches(results, peers, env_int("BENCH_PG_BATCHES", 10), rep)
    count = env_int("BENCH_PG_QUERY_KEYS", 100_000)
    _load_query_keys(store, raw, count)
    store.query_keys(group=0)  # warm up both
    raw.query({"group": 0})
    for rep in range(reps):
        _phase_query(results, {"store": store, "raw": raw}, count, rep)
    phases = ["set 100B", "get 100B", "set 64KiB", "get 64KiB", "multiset", "multiget", "query 1%"]
    results.print_table(phases, ["store", "raw"])
    print("\nratio store / raw psycopg (median [min .. max] over reps)")
    for phase in phases:
        results.print_ratio(phase, phase, "store", "raw", 0.8)
    store.disconnect()
    raw.close()
    _phase_huge(url, env_int("BENCH_PG_HUGE_MIB", 1024))


class _Adapter:
    """The store under the raw peer's method names."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.store.set(key, (data, metadata))

    def to_bytes(self, key: str) -> bytes:
        return self.store.to_bytes(key)

    def multiset(self, keys: list[str], values: list[tuple[bytes, dict[str, Any]]]) -> None:
        self.store.multiset(keys, values)

    def multiget(self, keys: list[str]) -> Any:
        return self.store.multiget(keys)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--huge"]:
        _huge_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
