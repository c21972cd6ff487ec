"""StaticURLStore and export_static vs the raw calls they make, in one run.

- small reads (1 KiB) over HTTP: ``store.to_bytes`` (HEAD-free: one GET) vs a raw
  urllib3 GET of the same URL through a pool (target >= 0.9);
- a 64 MiB read over HTTP streamed in 1 MiB chunks vs urllib3 streaming (>= 0.9);
- small reads from a ``file:`` root vs ``open(path).read()`` (no target: the store checks
  the key and looks up the index first);
- a query over a 20,000-key index held in memory vs a Python loop over a dict;
- export_static of 2,000 x 1 KiB keys, durable and not, vs copying the same bytes with
  plain file writes (no fsync), to show what atomic replacement and fsync cost.

The server is ``python -m http.server`` in its own process (the peers share it, so its
cost is in both sides). BENCH_REPS sets the interleaved reps.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import urllib3

from _harness import Results, env_int, rotate, timed
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.static import StaticURLStore
from storekeeper.export import export_static


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m http.server`` on *root* in its own process (so it takes no GIL here)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _source(count: int, size: int) -> DictMemoryStore:
    store = DictMemoryStore()
    store.connect()
    for i in range(count):
        store.set(f"d{i % 10}/k{i}", (bytes([i % 256]) * size, {"i": i, "even": i % 2 == 0}))
    return store


def _run(
    results: Results, phase: str, peers: dict[str, Callable[[], object]], ops: int, reps: int
) -> None:
    for rep in range(reps):
        for name in rotate(list(peers), rep):
            results.add(phase, name, ops, timed(peers[name]))


def main() -> None:
    reps = env_int("BENCH_REPS", 5)
    base = Path(tempfile.mkdtemp(prefix="bench-static-"))
    try:
        source = _source(2000, 1024)
        source.set("large", (b"L" * (64 << 20), {}))
        export_static(source, base / "site", durable=False)
        server, url = _serve(base / "site")
        results = Results()
        keys = [f"d{i % 10}/k{i}" for i in range(0, 2000, 7)]
        with StaticURLStore(url, poll=0) as store:
            # The same timeouts as the store's, as a careful raw client would set.
            pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=30.0, read=30.0))

            def raw_small() -> None:
                for key in keys:
                    assert pool.request("GET", url + "data/" + key).data

            def ours_small() -> None:
                for key in keys:
                    store.to_bytes(key)

            _run(
                results, "http 1KiB", {"urllib3": raw_small, "static": ours_small}, len(keys), reps
            )

            def raw_large() -> None:
                response = pool.request("GET", url + "data/large", preload_content=False)
                for _ in response.stream(1 << 20):
                    pass
                response.release_conn()

            def ours_large() -> None:
                with store.get_data("large") as stream:
                    while stream.read(1 << 20):
                        pass

            _run(results, "http 64MiB", {"urllib3": raw_large, "static": ours_large}, 64, reps)
        server.terminate()
        server.wait(30)

        with StaticURLStore((base / "site").as_uri(), poll=0) as store:

            def raw_file() -> None:
                for key in keys:
                    with open(base / "site" / "data" / key, "rb") as stream:
                        stream.read()

            def ours_file() -> None:
                for key in keys:
                    store.to_bytes(key)

            _run(results, "file 1KiB", {"open": raw_file, "static": ours_file}, len(keys), reps)

        big = _source(20000, 1)
        export_static(big, base / "big", durable=False)
        index = dict(big.query())
        with StaticURLStore((base / "big").as_uri(), poll=0) as store:
            peers: dict[str, Callable[[], object]] = {
                "dict loop": lambda: [k for k, m in index.items() if m.get("even") is True],
                "static": lambda: store.query_keys(even=True),
            }
            _run(results, "query 20k", peers, 1, reps)

        def plain_copy() -> None:
            target = base / "plain"
            shutil.rmtree(target, ignore_errors=True)
            for key in source.query_keys():
                path = target / "data" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source.to_bytes(key))

        source.delete("large")
        peers = {
            "plain files": plain_copy,
            "export": lambda: export_static(source, base / "site", durable=False),
            "export durable": lambda: export_static(source, base / "site"),
        }
        _run(results, "export 2k", peers, 2000, max(2, reps // 2))

        print(f"StaticURLStore / export_static, {reps} interleaved reps (shared 2-core VM)")
        results.print_table(["http 1KiB", "http 64MiB"], ["urllib3", "static"])
        results.print_table(["file 1KiB"], ["open", "static"])
        results.print_table(["query 20k"], ["dict loop", "static"])
        results.print_table(["export 2k"], ["plain files", "export", "export durable"])
        print("ratios ours/peer (median [min .. max]):")
        results.print_ratio("small GET vs raw urllib3", "http 1KiB", "static", "urllib3", 0.9)
        results.print_ratio(
            "64 MiB streamed vs raw urllib3", "http 64MiB", "static", "urllib3", 0.9
        )
        results.print_ratio("file: small read vs open()", "file 1KiB", "static", "open", None)
        results.print_ratio("query vs dict loop", "query 20k", "static", "dict loop", None)
        results.print_ratio("export vs plain file copy", "export 2k", "export", "plain files", None)
        results.print_ratio(
            "durable export vs plain file copy", "export 2k", "export durable", "plain files", None
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
