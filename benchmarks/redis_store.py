"""RedisStore vs raw redis-py doing the same work with the same atomicity, in one run.

The peer "raw" is plain redis-py written the way an application would to get what the
store gives: each write is one MULTI/EXEC that sets the record hash (data, metadata
JSON, version, modified time), adds the key to a key index (ZADD), the key to the
metadata index set of its value (SADD) and appends the change to a stream (XADD ...
MAXLEN ~); a read is one HGET; a batch is one MULTI/EXEC of those; a query reads the
index set (SMEMBERS) and the candidates' metadata (pipelined HGET), decoding the JSON.
"bare" (plain SET/GET of the data, no metadata, no index) is printed as the floor.

Workloads (BENCH_KEYS shrinks them): single set/get of 100 B (2,000 keys) and of 64 KiB
(300 keys), multiset/multiget in batches of 100, a query returning 1% of 100,000 keys
(BENCH_QUERY_KEYS), and a 1 GiB value (BENCH_LARGE_MIB) streamed in and out, each phase
in a fresh subprocess so its peak RSS is its own (target < 64 MiB). Within a rep the
peers take turns every 25 operations (in rotating order), since this shared machine's
load drifts within seconds; BENCH_REPS (default 3) reps, ratios are medians of per-rep
ratios (BENCH_LARGE_REPS, default 1, for the large value). Every key
lives under a prefix of this run, deleted at the end; the server is never flushed.
Server: STOREKEEPER_TEST_REDIS (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.backends.redis import RedisStore

SERVER = os.environ.get("STOREKEEPER_TEST_REDIS", "redis://127.0.0.1:6379/0")
MIB = 1 << 20
BATCH = 100


class Raw:
    """redis-py with the store's atomicity: one MULTI/EXEC per write (see module)."""

    def __init__(self, root: str) -> None:
        self.client = redis.Redis.from_url(SERVER)
        self.root = root
        self.counter = 0

    def _write(self, pipe: Any, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.counter += 1
        text = json.dumps(metadata, separators=(",", ":"))
        pipe.hset(
            f"{self.root}k:{key}",
            mapping={"d": data, "m": text, "v": self.counter, "t": repr(time.time())},
        )
        pipe.zadd(f"{self.root}K", {key: 0})
        for name, value in metadata.items():
            pipe.sadd(f"{self.root}v:{name}:{json.dumps(value)}", key)
        pipe.xadd(f"{self.root}X", {"k": key, "m": text}, maxlen=100_000, approximate=True)

    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=True)
        self._write(pipe, key, data, metadata)
        pipe.execute()

    def get(self, key: str) -> bytes:
        data: bytes = self.client.hget(f"{self.root}k:{key}", "d")
        return data

    def multiset(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for key, data, metadata in items:
            self._write(pipe, key, data, metadata)
        pipe.execute()

    def multiget(self, keys: list[str]) -> list[tuple[bytes, dict[str, Any]]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(f"{self.root}k:{key}", "d", "m", "v")
        return [(d, json.loads(m)) for d, m, _ in pipe.execute()]

    def query(self, name: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
        keys = self.client.smembers(f"{self.root}v:{name}:{json.dumps(value)}")
        pipe = self.client.pipeline(transaction=False)
        ordered = [key.decode() for key in keys]
        for key in ordered:
            pipe.hget(f"{self.root}k:{key}", "m")
        return [(k, json.loads(m)) for k, m in zip(ordered, pipe.execute(), strict=True)]


class Bare:
    """The floor: plain SET/GET of the data (no metadata, version, index or event)."""

    def __init__(self, root: str) -> None:
        self.client = redis.Redis.from_url(SERVER)
        self.root = root

    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.client.set(f"{self.root}{key}", data)

    def get(self, key: str) -> bytes:
        data: bytes = self.client.get(f"{self.root}{key}")
        return data

    def multiset(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        self.client.mset({f"{self.root}{key}": data for key, data, _ in items})

    def multiget(self, keys: list[str]) -> list[bytes]:
        found: list[bytes] = self.client.mget([f"{self.root}{key}" for key in keys])
        return found


class Ours:
    """RedisStore through its public API."""

    def __init__(self, prefix: str) -> None:
        self.store = RedisStore(SERVER, prefix=prefix, grace=1)
        self.store.connect()

    def set(self, key: str, data: bytes, metadata: dict[str, Any]) -> None:
        self.store.set(key, (data, metadata))

    def get(self, key: str) -> bytes:
        return self.store.to_bytes(key)

    def multiset(self, items: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        self.store.multiset([k for k, _, _ in items], [(d, m) for _, d, m in items])

    def multiget(self, keys: list[str]) -> list[Any]:
        return [(value.data.read(), value.metadata) for value in self.store.multiget(keys)]

    def query(self, name: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
        return self.store.query(None, {name: value})


PEERS = ["ours", "raw", "bare"]
#: Operations per block: peers alternate block by block, so the load of this shared
#: machine, which drifts within seconds, weighs on each of them alike.
BLOCK = 25


def _interleaved(
    results: Results,
    phase: str,
    work: dict[str, list[Callable[[], object]]],
    per_op: int = 1,
    block: int = BLOCK,
) -> None:
    """Time every peer's *work* (a list of operations each), alternating blocks of
    *block* operations between peers in rotating order; record ops/s per peer (an
    operation counting *per_op*)."""
    spent = dict.fromkeys(work, 0.0)
    count = len(next(iter(work.values())))
    for turn, start in enumerate(range(0, count, block)):
        for peer in rotate(list(work), turn):
            operations = work[peer][start : start + block]
            began = time.perf_counter()
            for operation in operations:
                operation()
            spent[peer] += time.perf_counter() - began
    for peer, seconds in spent.items():
        results.add(phase, peer, count * per_op, seconds)


def _small_phases(results: Results, reps: int) -> None:
    scale = env_int("BENCH_KEYS", 2000)
    sizes = {"100B": (scale, 100), "64KiB": (max(scale // 7, 10), 64 * 1024)}
    run = secrets.token_hex(4)
    for rep in range(reps):
        roots = {peer: f"{{bench:{run}:{rep}:{peer}}}" for peer in PEERS}
        adapters: dict[str, Any] = {
            "ours": Ours(roots["ours"][1:-1]),
            "raw": Raw(roots["raw"]),
            "bare": Bare(roots["bare"]),
        }
        for label, (count, size) in sizes.items():
            data = os.urandom(size)
            keys = [f"{label}/{n:06d}" for n in range(count)]
            items = [(key, data, {"kind": n % 10}) for n, key in enumerate(keys)]
            shuffled = random.sample(keys, len(keys))
            _interleaved(
                results,
                f"set {label}",
                {
                    peer: [functools.partial(a.set, *item) for item in items]
                    for peer, a in adapters.items()
                },
            )
            _interleaved(
                results,
                f"get {label}",
                {
                    peer: [functools.partial(a.get, key) for key in shuffled]
                    for peer, a in adapters.items()
                },
            )
        batch_keys = [f"batch/{n:06d}" for n in range(scale)]
        batch_items = [(k, b"x" * 100, {"kind": n % 10}) for n, k in enumerate(batch_keys)]
        batches = [batch_items[i : i + BATCH] for i in range(0, len(batch_items), BATCH)]
        key_batches = [batch_keys[i : i + BATCH] for i in range(0, len(batch_keys), BATCH)]
        _interleaved(
            results,
            "multiset",
            {
                peer: [functools.partial(a.multiset, b) for b in batches]
                for peer, a in adapters.items()
            },
            BATCH,
            block=1,  # one batch per turn: a phase has only BENCH_KEYS / 100 of them
        )
        _interleaved(
            results,
            "multiget",
            {
                peer: [functools.partial(a.multiget, b) for b in key_batches]
                for peer, a in adapters.items()
            },
            BATCH,
            block=1,  # one batch per turn: a phase has only BENCH_KEYS / 100 of them
        )
        for peer, adapter in adapters.items():
            _close(adapter)
            _delete_prefix(roots[peer])


def _query_phase(results: Results, reps: int) -> None:
    count = env_int("BENCH_QUERY_KEYS", 100_000)
    run = secrets.token_hex(4)
    adapters: dict[str, Any] = {
        "ours": Ours(f"bench:{run}:query"),
        "raw": Raw(f"{{bench:{run}:rawquery}}"),
    }
    for adapter in adapters.values():
        items = [(f"q/{n:07d}", b"", {"kind": n % 100, "n": n}) for n in range(count)]
        for start in range(0, count, 1000):
            adapter.multiset(items[start : start + 1000])
    for rep in range(reps):
        for peer in rotate(list(adapters), rep):
            adapter = adapters[peer]
            found: list[Any] = []
            seconds = timed(lambda: found.extend(adapter.query("kind", 7)))
            assert len(found) == count // 100, len(found)
            results.add("query 1%", peer, 1, seconds)
    for adapter in adapters.values():
        _close(adapter)
    _delete_prefix(f"{{bench:{run}:query}}")
    _delete_prefix(f"{{bench:{run}:rawquery}}")


def _close(adapter: Any) -> None:
    if isinstance(adapter, Ours):
        adapter.store.disconnect()
    else:
        adapter.client.close()


def _delete_prefix(root: str) -> None:
    client = redis.Redis.from_url(SERVER)
    names = list(client.scan_iter(match=root.replace("[", "\\[") + "*", count=1000))
    for start in range(0, len(names), 1000):
        client.unlink(*names[start : start + 1000])
    client.close()


# -- the large value, one phase per subprocess ------------------------------------------------
def _source(total: int) -> Iterator[bytes]:
    block = os.urandom(MIB)
    for start in range(0, total, MIB):
        yield block[: min(MIB, total - start)]


def _reset_peak() -> None:
    # ru_maxrss survives exec: a child forked from a large parent starts with its peak.
    # Writing 5 to clear_refs resets this process's peak (VmHWM) on Linux.
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _large_child(peer: str, phase: str, root: str, size: int) -> None:
    _reset_peak()
    start = time.perf_counter()
    if peer == "ours":
        with RedisStore(SERVER, prefix=root[1:-1], grace=1, events=False) as store:
            if phase == "set":
                store.set("big", (_source(size), {"size": size}))
            else:
                with store.get_data("big") as stream:
                    total = 0
                    while chunk := stream.read(MIB):
                        total += len(chunk)
                assert total == size
    else:
        client = redis.Redis.from_url(SERVER)
        if phase == "set":
            # Raw with the same atomicity: chunks under a fresh name, then one MULTI/EXEC
            # points the record at them.
            blob = f"{root}c:{secrets.token_hex(8)}"
            for number, chunk in enumerate(_source(size)):
                client.hset(blob, str(number), chunk)
            pipe = client.pipeline(transaction=True)
            pipe.hset(f"{root}k:big", mapping={"b": blob, "z": size, "m": "{}"})
            pipe.execute()
        else:
            blob = client.hget(f"{root}k:big", "b").decode()
            total = 0
            for number in range(client.hlen(blob)):
                total += len(client.hget(blob, str(number)))
            assert total == size
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_mib()}))


def _large_phase(reps: int) -> None:
    size = env_int("BENCH_LARGE_MIB", 1024) * MIB
    run = secrets.token_hex(4)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(reps):
        for peer in rotate(["ours", "raw"], rep):
            root = f"{{bench:{run}:{rep}:{peer}:large}}"
            for phase in ("set", "get"):
                out = subprocess.run(
                    [sys.executable, __file__, "--large", peer, phase, root, str(size)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                found = json.loads(out.stdout.strip().splitlines()[-1])
                rows.setdefault((phase, peer), []).append(
                    (size / MIB / found["seconds"], found["rss_mib"])
                )
            _delete_prefix(root)
    print(f"\n{size // MIB} MiB value: MiB/s and peak RSS (MiB) of the process, median over reps")
    for phase in ("set", "get"):
        ours, raw = rows[(phase, "ours")], rows[(phase, "raw")]
        ratios = sorted(o[0] / r[0] for o, r in zip(ours, raw, strict=True))
        median = ratios[len(ratios) // 2]
        ours_rate = sorted(o[0] for o in ours)[len(ours) // 2]
        raw_rate = sorted(r[0] for r in raw)[len(raw) // 2]
        peak = max(o[1] for o in ours)
        verdict = "ok" if peak < 64 else "OVER 64 MiB"
        print(
            f"  {phase}: ours {ours_rate:7.1f} MiB/s, raw {raw_rate:7.1f} MiB/s, ratio "
            f"{median:.2f} [{ratios[0]:.2f} .. {ratios[-1]:.2f}]; ours peak RSS {peak:.1f} MiB "
            f"({verdict}), raw {max(r[1] for r in raw):.1f} MiB"
        )


def main() -> None:
    reps = env_int("BENCH_REPS", 3)
    results = Results()
    _small_phases(results, reps)
    _query_phase(results, reps)
    phases = ["set 100B", "get 100B", "set 64KiB", "get 64KiB", "multiset", "multiget"]
    print(f"RedisStore vs raw redis-py (same atomicity) and bare SET/GET; {reps} reps")
    results.print_table(phases, ["ours", "raw", "bare"])
    results.print_table(["query 1%"], ["ours", "raw"])
    print("\nours / raw (median [min .. max] of per-rep ratios)")
    for phase in [*phases, "query 1%"]:
        results.print_ratio(phase, phase, "ours", "raw", 0.8)
    print("\nours / bare (information: bare skips metadata, versions, indexes, events)")
    for phase in phases:
        results.print_ratio(phase, phase, "ours", "bare", None)
    _large_phase(env_int("BENCH_LARGE_REPS", 1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--large":
        _large_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
