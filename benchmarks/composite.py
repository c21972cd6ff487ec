"""Overhead of the composite stores over their children, and what a CachedStore saves.

Part 1, overhead: set (of new keys), get (``get`` + read the data) and overwrite (set of
existing keys) of 100 B values through each composite, against the same child store used
directly, for in-memory, filesystem and SQLite children (the last two ``durable=False``,
so that fsyncs do not hide the Python cost being measured). Every peer has its own child
with the same keys; peers run in rotated order within each rep, and the table shows the
median per-rep time ratio composite/child (targets: JoinedStore and MountedStore <= 1.2;
SimpleAuthStore <= 1.3 over the filesystem and SQLite children, none over the in-memory
child, where a per-key permission check in Python cannot fit).

Part 2, caching: a source wrapped to add 5 ms of latency per call (like a remote store:
``get`` is a metadata request, opening the data another request). A CachedStore hit under
``immutable`` is compared with reading the source; a hit under ``always`` is counted in
source calls and bytes transferred.

BENCH_KEYS (default 2,000) and BENCH_REPS (default 5) shrink or grow the run. BENCH_CLOCK=cpu
times part 1 in CPU time of the process (``time.process_time``) instead of wall-clock
time: steadier while other work shares the machine.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import (
    CachedStore,
    JoinedStore,
    MountedStore,
    SimpleAuthStore,
    make_encoder,
)
from storekeeper.events import EventManager
from storekeeper.store import AbstractStore, StreamValue, Value

KEYS = env_int("BENCH_KEYS", 2000)
REPS = env_int("BENCH_REPS", 5)
PAYLOAD = bytes(range(100))
LATENCY = 0.005
CREDENTIALS = {"username": "bench", "password": "bench password"}


def clocked(action: Callable[[], object]) -> float:
    """Seconds taken by *action*: wall clock, or CPU time with BENCH_CLOCK=cpu."""
    if os.environ.get("BENCH_CLOCK") != "cpu":
        return timed(action)
    start = time.process_time()
    action()
    return time.process_time() - start


def make_child(kind: str, directory: Path, name: str) -> AbstractStore:
    if kind == "memory":
        return DictMemoryStore(event_manager=EventManager())
    if kind == "file":
        init_shared_store(directory / name)
        return FileSystemStore(directory / name, durable=False, event_manager=EventManager())
    return SqliteStore(directory / f"{name}.db", durable=False, event_manager=EventManager())


def build_peers(kind: str, directory: Path) -> dict[str, tuple[AbstractStore, str]]:
    """name -> (connected store, key prefix) for the child and each composite over it."""
    child = make_child(kind, directory, "child")
    joined = JoinedStore(
        [make_child(kind, directory, "j-top"), make_child(kind, directory, "j-low")],
        event_manager=EventManager(),
    )
    mounted = MountedStore(
        "m/",
        make_child(kind, directory, "m-mount"),
        make_child(kind, directory, "m-back"),
        event_manager=EventManager(),
    )
    auth_child = make_child(kind, directory, "auth")
    auth = SimpleAuthStore(auth_child, make_encoder(b"pepper"), event_manager=EventManager())
    with auth_child:  # the user tools need the store of the records connected
        auth.add_user(CREDENTIALS["username"], CREDENTIALS["password"])
    child.connect()
    joined.connect()
    mounted.connect()
    auth.connect(CREDENTIALS)
    return {
        "child": (child, ""),
        "JoinedStore": (joined, ""),
        "MountedStore": (mounted, "m/"),
        "SimpleAuthStore": (auth, ""),
    }


def set_all(store: AbstractStore, keys: list[str]) -> None:
    for index, key in enumerate(keys):
        store.set(key, (PAYLOAD, {"n": index}))


def get_all(store: AbstractStore, keys: list[str]) -> None:
    for key in keys:
        with store.get(key).data as stream:
            stream.read()


def overhead(kind: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-composite-"))
    try:
        peers = build_peers(kind, directory)
        results = Results()
        for rep in range(REPS):
            for name in rotate(list(peers), rep):
                store, prefix = peers[name]
                keys = [f"{prefix}key-{rep}-{i}" for i in range(KEYS)]
                results.add("set", name, KEYS, clocked(lambda s=store, k=keys: set_all(s, k)))
                results.add("get", name, KEYS, clocked(lambda s=store, k=keys: get_all(s, k)))
                elapsed = clocked(lambda s=store, k=keys: set_all(s, k))
                results.add("overwrite", name, KEYS, elapsed)
        print(f"\n== overhead over {kind} children ({KEYS} keys x 100 B, {REPS} reps)")
        results.print_table(["set", "get", "overwrite"], list(peers))
        targets = {"JoinedStore": 1.2, "MountedStore": 1.2, "SimpleAuthStore": 1.3}
        print("  time ratio composite/child, median [min .. max]:")
        for name, target in targets.items():
            for phase in ("set", "get", "overwrite"):
                median, low, high = results.ratio(phase, "child", name)
                if name == "SimpleAuthStore" and kind == "memory":
                    judged = "(no target)"
                else:
                    verdict = "ok" if median <= target else "ABOVE TARGET"
                    judged = f"(target <= {target}) {verdict}"
                spread = f"[{low:.2f} .. {high:.2f}]"
                print(f"    {name:<16} {phase}: {median:5.2f}x  {spread}  {judged}")
        for store, _ in peers.values():
            store.disconnect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class SlowSource(AbstractStore):
    """A store that adds *latency* to every call, counting calls and data bytes sent."""

    def __init__(self, inner: AbstractStore, latency: float) -> None:
        super().__init__(inner.event_manager)
        self.inner = inner
        self.latency = latency
        self.calls = 0
        self.bytes_sent = 0

    def _round_trip(self) -> None:
        self.calls += 1
        time.sleep(self.latency)

    def connect(self, credentials: Any = None) -> None:
        self.inner.connect()
        super().connect()

    def get(self, key: str) -> Value:
        self._round_trip()
        value = self.inner.get(key)
        return StreamValue(
            lambda: self._download(key), value.metadata, size=value.size, version=value.version
        )

    def _download(self, key: str) -> IO[bytes]:
        self._round_trip()
        data = self.inner.to_bytes(key)
        self.bytes_sent += len(data)
        return io.BytesIO(data)

    def to_bytes(self, key: str, buffer_size: int = 1 << 20) -> bytes:
        with self._download(key) as stream:
            return stream.read()

    def query(self, select: Any = None, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
        self._round_trip()
        return self.inner.query(select, **kwargs)

    def set(self, key: str, value: Any, buffer_size: int = 1 << 20, **kwargs: Any) -> None:
        self._round_trip()
        self.inner.set(key, value, buffer_size, **kwargs)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        self._round_trip()
        self.inner.delete(key, if_version=if_version)


def per_call(action: Callable[[], object], count: int) -> float:
    """Median seconds of *action* over *count* calls."""
    samples = []
    for _ in range(count):
        samples.append(timed(action))
    samples.sort()
    return samples[len(samples) // 2]


def caching() -> None:
    source = SlowSource(DictMemoryStore(), LATENCY)
    source.connect()
    keys = [f"doc-{i}" for i in range(20)]
    for key in keys:
        source.inner.set(key, (PAYLOAD * 10, {"kind": "doc"}))
    immutable = CachedStore(source, DictMemoryStore(), policy="immutable")
    always = CachedStore(source, DictMemoryStore())
    immutable.connect()
    always.connect()
    for key in keys:  # warm both caches
        immutable.to_bytes(key)
        always.to_bytes(key)
    results: dict[str, list[float]] = {"source": [], "immutable": [], "always": []}
    for rep in range(REPS):
        for name in rotate(list(results), rep):
            key = keys[rep % len(keys)]
            store = {"source": source, "immutable": immutable, "always": always}[name]
            results[name].append(per_call(lambda s=store, k=key: s.to_bytes(k), 20))
    source_time = sorted(results["source"])[REPS // 2]
    immutable_time = sorted(results["immutable"])[REPS // 2]
    always_time = sorted(results["always"])[REPS // 2]
    source.calls = source.bytes_sent = 0
    for key in keys:
        always.to_bytes(key)
    calls, sent = source.calls / len(keys), source.bytes_sent / len(keys)
    print(f"\n== CachedStore, source with {LATENCY * 1000:.0f} ms latency per call (1 KB values)")
    print(f"  read from the source:        {source_time * 1000:8.3f} ms")
    print(f"  hit, policy='immutable':     {immutable_time * 1000:8.3f} ms")
    verdict = "ok" if source_time / immutable_time >= 50 else "BELOW TARGET"
    print(f"    speed-up {source_time / immutable_time:,.0f}x (target >= 50x) {verdict}")
    print(f"  hit, policy='always':        {always_time * 1000:8.3f} ms")
    print(f"    source calls per hit: {calls:.2f}, data bytes from the source per hit: {sent:.0f}")
    immutable.disconnect()
    always.disconnect()


def main() -> None:
    overhead("memory")
    overhead("file")
    overhead("sqlite")
    caching()


if __name__ == "__main__":
    main()
