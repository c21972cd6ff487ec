"""SqliteStore's background checkpoints: a large commit leaves its copy to a thread."""

from __future__ import annotations

import gc
import multiprocessing
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storekeeper.backends import _sqlite_checkpoint
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import TransactionError

MIB = 1 << 20
BATCH = 4 * MIB


def checkpoint_threads(location: str) -> list[threading.Thread]:
    """The live checkpoint threads of the database at *location* (other tests' stores
    may start or stop theirs meanwhile)."""
    name = f"storekeeper-checkpoint:{location}"
    return [thread for thread in threading.enumerate() if thread.name == name]


def write_batch(store: SqliteStore, prefix: str = "k") -> None:
    value = os.urandom(64 * 1024)
    count = BATCH // len(value)
    store.multiset([f"{prefix}{i}" for i in range(count)], [(value, {})] * count)


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(params=[False, True], ids=["large-commits", "every-commit"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "c.db", durable=False, background_checkpoints=request.param)
    store.connect()
    yield store
    store.disconnect()


def test_the_thread_copies_the_log_into_the_database(store: SqliteStore) -> None:
    write_batch(store)
    database = Path(store.location)
    assert wait_for(lambda: database.stat().st_size >= BATCH)
    logged, copied = store.checkpoint()
    assert logged == copied


def test_a_commit_does_not_checkpoint_and_checkpoint_does(store: SqliteStore) -> None:
    assert store._checkpointer is not None
    store._checkpointer.delay = 3600.0  # the thread waits: only checkpoint() copies
    write_batch(store)
    database = Path(store.location)
    assert database.stat().st_size < MIB
    assert Path(store.location + "-wal").stat().st_size >= BATCH
    logged, copied = store.checkpoint()
    assert logged == copied > BATCH // 4096
    assert database.stat().st_size >= BATCH
    started = time.monotonic()
    store.disconnect()
    assert time.monotonic() - started < 5  # stop() does not sit out the delay
    store.connect()
    assert store.to_bytes("k0") and len(store.query_keys()) == BATCH // (64 * 1024)


def test_thread_starts_at_the_first_large_commit_and_stops_at_disconnect(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "t.db")
    location = store.location
    store.connect()
    assert not store.exists("x")
    store.set("x", (b"1", {}))
    with store.transaction():
        store.set("y", (b"1", {}))
    assert checkpoint_threads(location) == []  # reads and small commits start nothing
    write_batch(store)
    assert len(checkpoint_threads(location)) == 1
    write_batch(store, "again")
    assert len(checkpoint_threads(location)) == 1
    store.disconnect()
    assert checkpoint_threads(location) == []
    store.connect()
    write_batch(store, "reconnected")
    assert len(checkpoint_threads(location)) == 1
    del store
    gc.collect()
    assert wait_for(lambda: checkpoint_threads(location) == [], 10)


def test_checkpoint_outside_transactions_only(store: SqliteStore) -> None:
    with store.transaction():
        store.set("a", (b"1", {}))
        with pytest.raises(TransactionError, match="outside a transaction"):
            store.checkpoint()
    assert store.to_bytes("a") == b"1"
    with SqliteStore() as memory:
        assert memory.checkpoint() == (0, 0)


def test_transactions_poke_the_thread_once_committed(store: SqliteStore) -> None:
    with store.transaction():
        write_batch(store)
    assert wait_for(lambda: Path(store.location).stat().st_size >= BATCH)


def test_no_thread_means_the_committer_checkpoints(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: _sqlite_checkpoint.Checkpointer) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(_sqlite_checkpoint.Checkpointer, "_connect", refuse)
    write_batch(store, "first")  # enough pages for the thread to open the database
    checkpointer = store._checkpointer
    assert checkpointer is not None
    assert wait_for(lambda: checkpointer._failed)
    write_batch(store)  # the committing thread checkpoints both batches itself
    assert Path(store.location).stat().st_size >= 2 * BATCH
    expected = 0 if store.background_checkpoints else 1000
    assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == expected


def _child_writes(store: SqliteStore, result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # The store object came through fork, with the parent's checkpointer in it.
    write_batch(store, "child")
    ok = wait_for(lambda: Path(store.location).stat().st_size >= 2 * BATCH)
    result.put((ok, len(checkpoint_threads(store.location))))
    store.disconnect()


def test_a_forked_child_runs_its_own_checkpoints(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "f.db", durable=False)
    store.connect()
    write_batch(store, "parent")
    assert wait_for(lambda: Path(store.location).stat().st_size >= BATCH)
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_child_writes, args=(store, result))
    child.start()
    ok, threads = result.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert ok and threads == 1
    assert len(store.query_keys()) == 2 * (BATCH // (64 * 1024))
    store.set("after", (b"the parent's thread lives on", {}))
    assert len(checkpoint_threads(store.location)) == 1
    store.disconnect()


def test_pending_frames_reads_what_a_checkpoint_then_copies(store: SqliteStore) -> None:
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.delay = 3600.0
    store.set("a", (b"x" * 10_000, {}))
    pending = checkpointer.pending_frames()
    assert pending > 0
    assert store.checkpoint() == (pending, pending)
    assert checkpointer.pending_frames() == 0


def test_small_commits_leave_the_log_alone(store: SqliteStore) -> None:
    for index in range(20):
        store.set(f"k{index}", (b"small", {}))
    time.sleep(0.5)  # ten times the batching delay
    logged, copied = store.checkpoint()
    assert logged == copied > 0  # nothing had copied them: under 1,000 pages


def test_an_unreadable_wal_index_means_checkpoint() -> None:
    unknown = 1000
    assert _sqlite_checkpoint._pending(b"", unknown) == unknown
    assert _sqlite_checkpoint._pending(bytes(100), unknown) == unknown  # version 0
    header = bytearray(100)
    struct.pack_into("=I", header, 0, 3007000)
    header[12] = 1
    struct.pack_into("=I", header, 16, 70)
    header[48:96] = header[0:48]
    struct.pack_into("=I", header, 96, 30)
    assert _sqlite_checkpoint._pending(bytes(header), unknown) == 40
    assert _sqlite_checkpoint._frames(bytes(header)) == (70, 30)
    header[60] = 9  # the second copy disagrees: caught mid-update
    assert _sqlite_checkpoint._pending(bytes(header), unknown) == unknown
    assert _sqlite_checkpoint._frames(bytes(header)) is None


def log_frames(store: SqliteStore) -> tuple[int, int]:
    """``(frames in the log, frames copied)`` as the wal-index says."""
    frames = _sqlite_checkpoint._frames(Path(store.location + "-shm").read_bytes()[:100])
    assert frames is not None
    return frames


def autocheckpoint(store: SqliteStore) -> int:
    setting: int = store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return setting


def test_a_fast_store_leaves_every_checkpoint_to_the_thread(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fast.db", durable=False)
    store.connect()
    assert store.background_checkpoints and autocheckpoint(store) == 0
    value = os.urandom(3000)  # a page or more per commit
    for index in range(1500):
        store.set(f"k{index}", (value, {}))
    assert len(checkpoint_threads(store.location)) == 1
    assert wait_for(lambda: log_frames(store)[0] - log_frames(store)[1] < 1000)
    assert Path(store.location).stat().st_size >= 1000 * 3000
    store.disconnect()
    with SqliteStore(tmp_path / "fast.db") as again:
        assert len(again.query_keys()) == 1500 and again.to_bytes("k1499") == value


def test_the_log_stays_bounded_when_the_thread_falls_behind(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bounded.db", durable=False)
    store.connect()
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.delay = 3600.0  # the thread never copies: only the committer can
    checkpointer.threshold, checkpointer.cap = 50, 200
    largest = 0
    for index in range(1000):
        store.set(f"k{index}", (b"v" * 100, {}))
        largest = max(largest, log_frames(store)[0])
    # The commit that reached the cap checkpointed all of it; the next one restarted the
    # log from its beginning, so the log never held much more than the cap.
    assert 200 <= largest < 200 + 10
    assert Path(store.location + "-wal").stat().st_size < (200 + 10) * (4096 + 24) + 32
    assert len(store.query_keys()) == 1000
    store.disconnect()


def test_durable_stores_keep_sqlites_own_checkpoint(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "durable.db")
    store.connect()
    assert not store.background_checkpoints and autocheckpoint(store) == 1000
    for index in range(600):
        store.set(f"k{index}", (os.urandom(3000), {}))
    assert checkpoint_threads(store.location) == []  # no thread for small commits
    assert log_frames(store)[0] < 1000 + 10
    store.disconnect()
    with SqliteStore(tmp_path / "f.db", durable=False) as fast, SqliteStore() as memory:
        assert fast.background_checkpoints and not memory.background_checkpoints
