"""SqliteStore vs raw sqlite3, diskcache and sqlitedict, side by side in one run.

Workloads: W1 = 10,000 keys x 100 B, W2 = 1,000 keys x 64 KiB (BENCH_KEYS_W1 / _W2 to
shrink). Phases: set (one commit per key), get (to_bytes, shuffled), get_metadata,
delete (shuffled), and multiset (one transaction) on a fresh database.
Durable comparisons pair SqliteStore(durable=True) with raw sqlite3 WAL+FULL; the
others pair SqliteStore(durable=False) with raw WAL+NORMAL, diskcache (WAL+NORMAL) and
sqlitedict (synchronous=OFF). BENCH_DIR picks the directory (default: a temp dir on the
real disk); BENCH_REPS the number of interleaved reps.

After a transaction of more than 1,000 pages SqliteStore copies its write-ahead log into
the database file on a background thread, where raw sqlite3 does it inside the COMMIT.
After each timed write phase the script waits, untimed, for a checkpoint of whatever our
log still holds; the ``+ckpt`` columns and the "with our background checkpoint" lines
add that wait to our time (the other peers' are unchanged; for W1 it copies pages raw
sqlite3 leaves in its log too), so both views are printed.

The ``+sync`` columns add a timed ``os.sync()`` after that: the time until every peer's
writes are on the disk. A ``durable=False`` store and sqlitedict (``synchronous=OFF``,
rollback journal) both return before their data is there; the plain columns say how
soon a write returns, the ``+sync`` ones what it costs the disk.

Every timed phase starts after an untimed ``os.sync()``: without it the data sqlitedict
leaves unsynced is written back during whichever peer runs next, and that peer's fsyncs
wait for it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed, timed_io
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.events import EventManager


class Raw:
    """Raw sqlite3: one table, autocommit per statement, executemany for batches."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB, metadata TEXT)")

    def set(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, '{}')", (key, value))

    def get(self, key: str) -> bytes:
        row: bytes = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()[0]
        return row

    def get_metadata(self, key: str) -> dict[str, Any]:
        text = self.db.execute("SELECT metadata FROM kv WHERE key=?", (key,)).fetchone()[0]
        result: dict[str, Any] = json.loads(text)
        return result

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM kv WHERE key=?", (key,))

    def multiset(self, items: list[tuple[str, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, '{}')", items)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class Ours:
    """SqliteStore through its public API."""

    def __init__(self, path: Path, durable: bool) -> None:
        self.store = SqliteStore(path, durable=durable, event_manager=EventManager())
        self.store.connect()

    def set(self, key: str, value: bytes) -> None:
        self.store.set(key, (value, {}))

    def get(self, key: str) -> bytes:
        return self.store.to_bytes(key)

    def get_metadata(self, key: str) -> dict[str, Any]:
        return self.store.get_metadata(key)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    @staticmethod
    def prepare(items: list[tuple[str, bytes]]) -> Any:
        """The batch in the API's own shape (a key list and a value list), built untimed
        as every peer's input is."""
        return [k for k, _ in items], [(v, {}) for _, v in items]

    def multiset(self, batch: tuple[list[str], list[tuple[bytes, dict[str, Any]]]]) -> None:
        self.store.multiset(*batch)

    def settle(self) -> None:
        """Wait for the checkpoint the store's background thread would run."""
        self.store.checkpoint()

    def close(self) -> None:
        self.store.disconnect()


class DiskCache:
    """diskcache.Cache with its defaults."""

    def __init__(self, path: Path) -> None:
        import diskcache

        self.cache = diskcache.Cache(str(path))

    def set(self, key: str, value: bytes) -> None:
        self.cache.set(key, value)

    def get(self, key: str) -> bytes:
        value: bytes = self.cache.get(key)
        return value

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def multiset(self, items: list[tuple[str, bytes]]) -> None:
        with self.cache.transact():
            for key, value in items:
                self.cache.set(key, value)

    def close(self) -> None:
        self.cache.close()


class SqliteDictPeer:
    """sqlitedict with autocommit (one commit per write); batches commit once."""

    def __init__(self, path: Path) -> None:
        from sqlitedict import SqliteDict

        self.d = SqliteDict(str(path), autocommit=True)

    def set(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> bytes:
        value: bytes = self.d[key]
        return value

    def delete(self, key: str) -> None:
        del self.d[key]

    def multiset(self, items: list[tuple[str, bytes]]) -> None:
        self.d.update(items)
        self.d.commit()

    def close(self) -> None:
        self.d.close()


PEERS: dict[str, Callable[[Path], Any]] = {
    "raw WAL+FULL": lambda d: Raw(d / "raw.db", "FULL"),
    "ours durable": lambda d: Ours(d / "ours.db", True),
    "raw WAL+NORMAL": lambda d: Raw(d / "raw.db", "NORMAL"),
    "ours durable=False": lambda d: Ours(d / "ours.db", False),
    "diskcache": lambda d: DiskCache(d / "dc"),
    "sqlitedict": lambda d: SqliteDictPeer(d / "sd.sqlite"),
}

PHASES = [
    "set",
    "set+ckpt",
    "set+sync",
    "get",
    "get_metadata",
    "delete",
    "multiset",
    "multiset+ckpt",
    "multiset+sync",
]


def timed_write(
    results: Results, phase: str, name: str, count: int, peer: Any, action: Callable[[], object]
) -> None:
    """Time *action* as *phase*; then, untimed there, wait for the peer's background
    checkpoint and record the sum as *phase*+ckpt (the same time for the others, whose
    commits checkpoint in the foreground or never); then time an ``os.sync()`` and
    record the whole as *phase*+sync: the time until the writes are on the disk, which
    is what a peer that never fsyncs (sqlitedict) leaves out of *phase*."""
    elapsed = timed_io(action)
    results.add(phase, name, count, elapsed)
    settle = getattr(peer, "settle", None)
    elapsed += 0.0 if settle is None else timed(settle)
    results.add(f"{phase}+ckpt", name, count, elapsed)
    elapsed += timed(os.sync)
    results.add(f"{phase}+sync", name, count, elapsed)


def run_peer(name: str, base: Path, keys: list[str], value: bytes, results: Results) -> None:
    work = Path(tempfile.mkdtemp(dir=base))
    peer = PEERS[name](work)
    shuffled = random.sample(keys, len(keys))
    timed_write(results, "set", name, len(keys), peer, lambda: [peer.set(k, value) for k in keys])
    got = [peer.get(k) for k in shuffled[:3]]
    assert all(g == value for g in got)
    results.add("get", name, len(keys), timed_io(lambda: [peer.get(k) for k in shuffled]))
    if hasattr(peer, "get_metadata"):
        elapsed = timed_io(lambda: [peer.get_metadata(k) for k in shuffled])
        results.add("get_metadata", name, len(keys), elapsed)
    random.shuffle(shuffled)
    results.add("delete", name, len(keys), timed_io(lambda: [peer.delete(k) for k in shuffled]))
    peer.close()
    shutil.rmtree(work)
    work = Path(tempfile.mkdtemp(dir=base))
    peer = PEERS[name](work)
    items: Any = [(k, value) for k in keys]
    if hasattr(peer, "prepare"):
        items = peer.prepare(items)
    timed_write(results, "multiset", name, len(keys), peer, lambda: peer.multiset(items))
    peer.close()
    shutil.rmtree(work)


def workload(title: str, count: int, size: int, reps: int, base: Path) -> None:
    keys = [f"key-{i:06d}" for i in range(count)]
    value = random.randbytes(size)
    results = Results()
    for rep in range(reps):
        for name in rotate(list(PEERS), rep):
            run_peer(name, base, keys, value, results)
    print(f"\n== {title}: {count} keys x {size} B, {reps} reps")
    results.print_table(PHASES, list(PEERS))
    print("ratios ours / peer (median [min .. max] of per-rep ratios; > 1 means ours is faster)")
    results.print_ratio("durable set vs raw WAL+FULL", "set", "ours durable", "raw WAL+FULL", 0.9)
    results.print_ratio(
        "  the same, with our background checkpoint",
        "set+ckpt",
        "ours durable",
        "raw WAL+FULL",
        None,
    )
    for phase, target in (("get", 0.5), ("get_metadata", None), ("delete", None)):
        results.print_ratio(
            f"{phase} (durable) vs raw WAL+FULL", phase, "ours durable", "raw WAL+FULL", target
        )
    results.print_ratio("get (durable) vs diskcache", "get", "ours durable", "diskcache", 1.2)
    results.print_ratio(
        "multiset vs raw executemany (FULL)", "multiset", "ours durable", "raw WAL+FULL", 0.8
    )
    results.print_ratio(
        "  the same, with our background checkpoint",
        "multiset+ckpt",
        "ours durable",
        "raw WAL+FULL",
        None,
    )
    results.print_ratio(
        "set durable=False vs raw WAL+NORMAL", "set", "ours durable=False", "raw WAL+NORMAL", None
    )
    for peer in ("diskcache", "sqlitedict"):
        for phase in ("set", "get", "delete", "multiset"):
            target = 1.2 if (phase, peer) == ("get", "diskcache") else 1.0
            results.print_ratio(
                f"{phase} vs {peer} (durable=False)", phase, "ours durable=False", peer, target
            )
            if phase in ("set", "multiset"):
                for suffix, label in (
                    ("ckpt", "with our background checkpoint"),
                    ("sync", "until on disk (os.sync)"),
                ):
                    results.print_ratio(
                        f"  the same, {label}",
                        f"{phase}+{suffix}",
                        "ours durable=False",
                        peer,
                        None,
                    )


def main() -> None:
    reps = env_int("BENCH_REPS", 3)
    base = Path(tempfile.mkdtemp(prefix="sk-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        workload("W1", env_int("BENCH_KEYS_W1", 10_000), 100, reps, base)
        workload("W2", env_int("BENCH_KEYS_W2", 1_000), 64 * 1024, reps, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
