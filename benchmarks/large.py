"""A large value streamed into and out of each durable backend, vs a raw file copy.

Each phase runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own; imports are
not timed, and the run with the median ratio of BENCH_REPS (default 3) is reported.
BENCH_LARGE_MIB sets the size (default 1024 = 1 GiB); BENCH_DIR the directory.
Targets: throughput >= 0.7 of the raw file copy, peak RSS under 64 MiB.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def _source(total: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    left = total
    while left > 0:
        piece = block[: min(CHUNK, left)]
        left -= len(piece)
        yield piece


def _drain(stream: object) -> int:
    total = 0
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(CHUNK):
        total += len(chunk)
    stream.close()  # type: ignore[attr-defined]
    return total


def _raw(phase: str, path: Path, size: int) -> None:
    target = path / "raw.bin"
    if phase == "set":
        with open(target, "wb") as out:
            for chunk in _source(size):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    else:
        with open(target, "rb") as stream:
            assert _drain(stream) == size


def _store(backend: str, path: Path):  # type: ignore[no-untyped-def]
    from storekeeper.store import open_store

    url = {
        "sqlite": f"sqlite:///{path / 'large.db'}",
        "filesystem": f"file://{path / 'fs'}",
    }[backend]
    if backend == "filesystem":
        from storekeeper.backends.filesystem import init_shared_store

        init_shared_store(path / "fs")
    return open_store(url)


def _ours(backend: str, phase: str, path: Path, size: int) -> None:
    store = _store(backend, path)
    if phase == "set":
        store.set("big", (_source(size), {"size": size}))
    else:
        assert _drain(store.get_data("big")) == size
    store.disconnect()


def child(backend: str, phase: str, path: str, size: int) -> None:
    """Run one phase and print its wall time and peak RSS as JSON."""
    if backend != "raw":
        # An application imports the library once; only the streaming is timed.
        import storekeeper.backends.filesystem
        import storekeeper.backends.sqlite
        import storekeeper.store  # noqa: F401
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if backend == "raw":
        _raw(phase, Path(path), size)
    else:
        _ours(backend, phase, Path(path), size)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024})
    )


def _run(backend: str, phase: str, path: Path, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "child", backend, phase, str(path), str(size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


REPS = int(os.environ.get("BENCH_REPS", "3"))


def main() -> None:
    size = int(os.environ.get("BENCH_LARGE_MIB", "1024")) * CHUNK
    backends = [b for b in ("sqlite", "filesystem") if _available(b)]
    base = Path(tempfile.mkdtemp(prefix="sk-large-", dir=os.environ.get("BENCH_DIR")))
    print(f"== one value of {size // CHUNK} MiB, streamed in 1 MiB chunks")
    try:
        for backend in backends:
            work = base / backend
            work.mkdir()
            for phase in ("set", "get"):
                runs = [(_run("raw", phase, work, size), _run(backend, phase, work, size))]
                for _ in range(REPS - 1):
                    runs.append((_run("raw", phase, work, size), _run(backend, phase, work, size)))
                raw, ours = sorted(runs, key=lambda r: r[0]["seconds"] / r[1]["seconds"])[
                    len(runs) // 2
                ]
                ratio = raw["seconds"] / ours["seconds"]
                verdict = "ok" if ratio >= 0.7 and ours["peak_mib"] < 64 else "BELOW TARGET"
                print(
                    f"  {backend:<10} {phase}: {size / ours['seconds'] / 1e6:7.0f} MB/s vs raw "
                    f"{size / raw['seconds'] / 1e6:7.0f} MB/s  ratio {ratio:.2f} (target >= 0.7); "
                    f"peak RSS {ours['peak_mib']:.0f} MiB (raw {raw['peak_mib']:.0f}) "
                    f"(target < 64)  {verdict}"
                )
            shutil.rmtree(work)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _available(backend: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"storekeeper.backends.{backend}") is not None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
