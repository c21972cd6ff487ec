"""SqliteStore shared by several processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from storekeeper.errors import ConflictError
from storekeeper.store import open_store

CONTEXT = multiprocessing.get_context("spawn")


def _create_only(url: str, n: int, start: multiprocessing.synchronize.Event) -> bool:
    with open_store(url) as store:
        start.wait(30)
        try:
            store.set("race", (str(n).encode(), {"n": n}), if_exists=False)
        except ConflictError:
            return False
        return True


def _increment(url: str, times: int) -> int:
    retries = 0
    with open_store(url) as store:
        done = 0
        while done < times:
            value = store.get("counter")
            count = int(store.to_bytes("counter"))
            try:
                store.set("counter", (str(count + 1).encode(), {}), if_version=value.version)
            except ConflictError:
                retries += 1
                continue
            done += 1
    return retries


def test_create_only_race_between_processes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'race.db'}"
    with open_store(url):
        pass
    with CONTEXT.Manager() as manager:
        start = manager.Event()
        with CONTEXT.Pool(4) as pool:
            pending = pool.starmap_async(_create_only, [(url, n, start) for n in range(4)])
            start.set()
            winners = pending.get(60)
    assert sum(winners) == 1
    with open_store(url) as store:
        assert store.get_metadata("race")["n"] == winners.index(True)


def test_compare_and_swap_counter_between_processes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'counter.db'}?durable=false"
    with open_store(url) as store:
        store.set("counter", (b"0", {}))
    with CONTEXT.Pool(4) as pool:
        pool.starmap(_increment, [(url, 100)] * 4)
    with open_store(url) as store:
        assert int(store.to_bytes("counter")) == 400
