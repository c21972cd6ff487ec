"""SqliteStore shared by several processes at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storekeeper.store import open_store
from storekeeper.testing.processes import cas_counter, create_only_race


def test_create_only_race_between_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    with open_store(url):
        pass
    winners, stored = create_only_race(url)
    assert sum(winners) == 1
    assert stored == winners.index(True)


def test_compare_and_swap_counter_between_processes(tmp_path: Path) -> None:
    assert cas_counter(f"sqlite:///{tmp_path / 'counter.db'}?durable=false") == 400


def _payload(worker: int, n: int) -> bytes:
    # Large enough (about 25 pages a commit) that the log reaches the background
    # checkpoint's threshold every few dozen commits.
    return f"{worker}:{n}|".encode() * (100_000 // len(f"{worker}:{n}|"))


def _commit_rounds(url: str, worker: int, rounds: int, workers: int) -> int:
    """Commit *rounds* transactions on one store, reading the other workers' keys
    between them; the number of reads that found a value."""
    found = 0
    with open_store(url) as store:
        for n in range(1, rounds + 1):
            with store.transaction():
                store.set(f"w{worker}/count", (str(n).encode(), {"n": n}))
                store.set(f"w{worker}/payload", (_payload(worker, n), {"n": n}))
            for other in range(workers):
                if store.exists(f"w{other}/payload"):
                    value = store.get(f"w{other}/payload")
                    with value.data as stream:
                        assert stream.read() == _payload(other, value.metadata["n"])
                    found += 1
    return found


def _writers_on_one_database(path: Path, workers: int, rounds: int) -> None:
    url = f"sqlite:///{path}?durable=false"
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        args = [(url, worker, rounds, workers) for worker in range(workers)]
        found = pool.starmap_async(_commit_rounds, args).get(180)
    assert all(count >= rounds for count in found)  # each reads at least its own key
    checked = sqlite3.connect(path)
    try:
        assert checked.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        checked.close()
    with open_store(url) as store:
        for worker in range(workers):
            assert store.to_bytes(f"w{worker}/count") == str(rounds).encode()
            assert store.to_bytes(f"w{worker}/payload") == _payload(worker, rounds)


def test_writers_in_processes_keep_a_durable_false_database_intact(tmp_path: Path) -> None:
    # Background checkpoints once read the shared wal-index through a descriptor they
    # closed again, which dropped SQLite's locks of the process: "malformed" in seconds.
    _writers_on_one_database(tmp_path / "shared.db", workers=4, rounds=400)


@pytest.mark.soak
def test_writers_in_processes_keep_a_durable_false_database_intact_soak(
    tmp_path: Path,
) -> None:
    _writers_on_one_database(tmp_path / "shared.db", workers=6, rounds=20_000)


def _touch_in_another_process(path: Path) -> None:
    # Its only connection closes at the end: SQLite deletes the WAL then if no other
    # process holds the database file's shared lock.
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('CREATE TABLE IF NOT EXISTS other (x)'); "
        "c.execute('INSERT INTO other VALUES (1)'); c.commit(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)


def test_disconnecting_one_store_keeps_the_locks_of_another_on_the_file(tmp_path: Path) -> None:
    # The file watch once closed its own descriptor of the database at disconnect, which
    # dropped the shared lock of every connection of the process: another process closing
    # its last connection then deleted the log under the store still connected.
    path = tmp_path / "two.db"
    with open_store(f"sqlite:///{path}?table=kept") as kept:
        with open_store(f"sqlite:///{path}?table=closed") as closed:
            closed.set("k", (b"closed", {}))
        _touch_in_another_process(path)
        kept.set("k", (b"kept", {"n": 1}))
        _touch_in_another_process(path)
        checked = sqlite3.connect(path)
        try:
            assert checked.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert checked.execute("SELECT count(*) FROM other").fetchone() == (2,)
        finally:
            checked.close()
    with open_store(f"sqlite:///{path}?table=kept") as again:
        assert again.to_bytes("k") == b"kept"
        assert again.get_metadata("k") == {"n": 1}


def _open_new_store_at_once(url: str, start: float, index: int, results: Any) -> None:
    while time.time() < start:  # spinning: a barrier wakes its waiters one by one
        pass
    try:
        with open_store(url) as store:
            store.set(f"k{index}", (b"x", {}))
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        return
    results.put("ok")


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Four processes open the same new database at the same moment, ten times:
    SQLite refuses a second simultaneous switch to WAL at once (without waiting), which
    must not reach the caller as a lock error."""
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        start, results = time.time() + 0.2, context.Queue()
        processes = [
            context.Process(target=_open_new_store_at_once, args=(url, start, index, results))
            for index in range(4)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(10)
        assert outcomes == ["ok"] * 4, outcomes
        with open_store(url) as store:
            assert sorted(store.list_keys()) == [f"k{index}" for index in range(4)]
