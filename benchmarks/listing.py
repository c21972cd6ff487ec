"""Prefix listing: ``list_keys`` against listing every key with ``query_keys`` and filtering.

Each backend (in-memory, filesystem and SQLite, the last two ``durable=False``) holds
BENCH_LIST_KEYS keys (default 100,000) in folders of 100 (``f00042/k17``). Phases:

- ``prefix``: list the 100 keys of one folder (``list_keys("f00042/")``);
- ``level``: list the top level with a delimiter (``list_keys("", "/")``: one entry per
  folder);
- ``first``: take the first key of a listing of everything.

The peer of each phase is what a caller had before: ``query_keys()`` filtered (and
folded, and sorted) in Python. Each measurement repeats its call for at least 0.2 s; the
peers run in rotated order, BENCH_REPS (default 3) reps, and the ratios are medians of
per-rep ratios ours/peer in calls per second (> 1: ``list_keys`` faster).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.store import AbstractStore

KEYS = env_int("BENCH_LIST_KEYS", 100_000)
REPS = env_int("BENCH_REPS", 3)
FOLDER = 100
MIN_SECONDS = 0.2


def make_store(kind: str, directory: Path) -> AbstractStore:
    directory.mkdir(parents=True)
    if kind == "memory":
        return DictMemoryStore()
    if kind == "file":
        init_shared_store(directory / "fs")
        return FileSystemStore(directory / "fs", durable=False)
    return SqliteStore(directory / "db.sqlite", durable=False)


def fill(store: AbstractStore) -> str:
    """Write the keys (in batches); return the prefix of a folder in the middle."""
    keys = [f"f{n // FOLDER:05d}/k{n % FOLDER:02d}" for n in range(KEYS)]
    for start in range(0, KEYS, 5000):
        batch = keys[start : start + 5000]
        store.multiset(batch, [(b"", {}) for _ in batch])
    return f"f{KEYS // FOLDER // 2:05d}/"


def rate(action: Callable[[], object]) -> tuple[int, float]:
    """Calls of *action* and the seconds they took, for at least MIN_SECONDS."""
    calls, start = 0, time.perf_counter()
    while True:
        action()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS:
            return calls, elapsed


def phases(store: AbstractStore, folder: str) -> dict[str, dict[str, Callable[[], object]]]:
    def filtered() -> list[str]:
        return sorted(key for key in store.query_keys() if key.startswith(folder))

    def level() -> list[str]:
        return sorted(
            {key[: key.index("/") + 1] if "/" in key else key for key in store.query_keys()}
        )

    def first() -> str:
        return min(store.query_keys())

    return {
        "prefix": {
            "list_keys": lambda: list(store.list_keys(folder)),
            "query_keys+filter": filtered,
        },
        "level": {
            "list_keys": lambda: list(store.list_keys("", "/")),
            "query_keys+fold": level,
        },
        "first": {"list_keys": lambda: next(store.list_keys()), "query_keys+min": first},
    }


def main() -> None:
    kinds = ["memory", "file", "sqlite"]
    results = Results()
    with tempfile.TemporaryDirectory(prefix="storekeeper-bench-listing-") as tmp:
        stores = {}
        for kind in kinds:
            store = make_store(kind, Path(tmp) / kind)
            store.connect()
            start = time.perf_counter()
            folder = fill(store)
            print(f"{kind}: {KEYS:,} keys written in {time.perf_counter() - start:.1f} s")
            table = phases(store, folder)
            for actions in table.values():  # the answers agree, and caches are warm
                answers = [action() for action in actions.values()]
                assert all(answer == answers[0] for answer in answers), kind
            stores[kind] = (store, table)
        for rep in range(REPS):
            for kind in rotate(kinds, rep):
                _, table = stores[kind]
                for phase, actions in table.items():
                    for peer in rotate(list(actions), rep):
                        calls, seconds = rate(actions[peer])
                        results.add(f"{kind}:{phase}", peer, calls, seconds)
        for store, _ in stores.values():
            store.disconnect()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nlist_keys vs query_keys + Python, {KEYS:,} keys, {REPS} reps (calls/s, ratio ours/peer)"
    )
    for kind in kinds:
        for phase, peers in phases_and_peers().items():
            name = f"{kind}:{phase}"
            ours = results.median(name, "list_keys")
            theirs = results.median(name, peers)
            label = f"{kind:<7}{phase:<7} {ours:>10,.0f}/s vs {peers} {theirs:>8,.1f}/s"
            results.print_ratio(label, name, "list_keys", peers, None)


def phases_and_peers() -> dict[str, str]:
    return {"prefix": "query_keys+filter", "level": "query_keys+fold", "first": "query_keys+min"}


if __name__ == "__main__":
    main()
