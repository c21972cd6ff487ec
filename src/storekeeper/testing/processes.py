"""Races between real processes sharing one store, opened by URL in each process.

:func:`create_only_race` lets several processes try a create-only write of the same
key at once; :func:`cas_counter` has several processes increment a counter with
compare-and-swap. A store that is safe across processes gives exactly one winner and an
exact count.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize

from storekeeper.errors import ConflictError
from storekeeper.store import AbstractStore, open_store

__all__ = ["cas_counter", "create_only_race"]

_CONTEXT = multiprocessing.get_context("spawn")


def _writable(url: str) -> AbstractStore:
    store = open_store(url)
    if not isinstance(store, AbstractStore):
        raise TypeError(f"{url} opens a read-only store")
    return store


def _try_create(url: str, n: int, start: multiprocessing.synchronize.Event) -> bool:
    with _writable(url) as store:
        start.wait(60)
        try:
            store.set("race", (str(n).encode(), {"n": n}), if_exists=False)
        except ConflictError:
            return False
        return True


def _increment(url: str, times: int) -> int:
    retries = 0
    with _writable(url) as store:
        done = 0
        while done < times:
            version = store.get("counter").version
            count = int(store.to_bytes("counter"))
            try:
                store.set("counter", (str(count + 1).encode(), {}), if_version=version)
            except ConflictError:
                retries += 1
                continue
            done += 1
    return retries


def create_only_race(url: str, processes: int = 4) -> tuple[list[bool], int | None]:
    """Race *processes* create-only writers; returns who won and the stored winner."""
    with _CONTEXT.Manager() as manager:
        start = manager.Event()
        with _CONTEXT.Pool(processes) as pool:
            pending = pool.starmap_async(_try_create, [(url, n, start) for n in range(processes)])
            start.set()
            winners: list[bool] = pending.get(120)
    with _writable(url) as store:
        stored = store.get_metadata("race").get("n") if store.exists("race") else None
    return winners, stored


def cas_counter(url: str, processes: int = 4, times: int = 100) -> int:
    """Have *processes* each add *times* to a counter by CAS; returns the final count."""
    with _writable(url) as store:
        store.set("counter", (b"0", {}))
    with _CONTEXT.Pool(processes) as pool:
        pool.starmap(_increment, [(url, times)] * processes)
    with _writable(url) as store:
        return int(store.to_bytes("counter"))
