"""FileSystemStore side by side with the raw file operations it is built from.

- durable ``set`` of 100 B vs the raw limit: temp file + fsync + rename + directory
  fsync of the same bytes (target >= 0.8);
- ``to_bytes`` vs a raw read of a file of the same size (target >= 0.7);
- a large value (BENCH_FS_LARGE_MIB, default 1024 = 1 GiB) streamed in (``set`` from a
  file) and out (``to_file``) vs a raw durable file copy (target >= 0.7), each phase in
  a fresh subprocess whose peak RSS (``ru_maxrss``) is reported (target < 64 MiB).

Small operations run in interleaved rounds (BENCH_FS_ROUNDS, default 12) with the order
rotated each round; the large value in BENCH_FS_LARGE_REPS reps (default 5) after an
unrecorded warm-up rep; the figures are medians of per-round ratios with min..max, because
absolute numbers on the reference VM move 1.3-7x between runs. BENCH_DIR picks the
directory (default: the system temp directory, which should be a real disk).
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store

CHUNK = 1 << 20
SMALL = b"v" * 100


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_durable_write(directory: str, name: str, data: bytes) -> None:
    """The raw limit: a temp file, fsync, rename over the target, fsync the directory."""
    temp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, os.path.join(directory, name))
    _fsync_dir(directory)


def raw_read(directory: str, name: str) -> bytes:
    """A raw read of a whole file."""
    with open(os.path.join(directory, name), "rb") as stream:
        return stream.read()


def small_operations(base: Path, rounds: int, set_ops: int, get_ops: int) -> Results:
    """Interleaved rounds of durable sets and reads, ours and raw."""
    raw_dir = base / "raw"
    raw_dir.mkdir()
    init_shared_store(base / "store")
    store = FileSystemStore(base / "store")
    store.connect()
    results = Results()
    for n in range(get_ops):  # the read phase reads what exists; warm-up for both sides
        store.set(f"k{n}", (SMALL, {}))
        raw_durable_write(str(raw_dir), f"k{n}", SMALL)
    phases: dict[str, dict[str, Callable[[int], object]]] = {
        "set": {
            "FileSystemStore": lambda n: store.set(f"k{n}", (SMALL, {})),
            "raw": lambda n: raw_durable_write(str(raw_dir), f"k{n}", SMALL),
        },
        "get": {
            "FileSystemStore": lambda n: store.to_bytes(f"k{n}"),
            "raw": lambda n: raw_read(str(raw_dir), f"k{n}"),
        },
    }
    counts = {"set": set_ops, "get": get_ops}
    for round_number in range(rounds):
        for phase, peers in phases.items():
            for peer in rotate(list(peers), round_number):
                action = peers[peer]
                count = counts[phase]
                seconds = timed(lambda action=action, count=count: _repeat(action, count))
                results.add(phase, peer, count, seconds)
    store.disconnect()
    return results


def _repeat(action: Callable[[int], object], count: int) -> None:
    for n in range(count):
        action(n)


# -- the large value, one subprocess per phase ---------------------------------------------
def _copy(source: str, target: str) -> None:
    temp = target + ".tmp"
    with open(source, "rb") as inp, open(temp, "wb") as out:
        while chunk := inp.read(CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, target)
    _fsync_dir(os.path.dirname(target))


def _phase(peer: str, phase: str, work: str) -> None:
    source, target = os.path.join(work, "source.bin"), os.path.join(work, "out.bin")
    if peer == "raw":
        _copy(source, target)
        return
    with FileSystemStore(os.path.join(work, "store")) as store:
        if phase == "in":
            with open(source, "rb") as stream:
                store.set("big", (stream, {}))
        else:
            store.to_file("big", target)


def child(peer: str, phase: str, work: str) -> None:
    """Run one large phase and print its wall time and peak RSS as JSON."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _phase(peer, phase, work)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "base_mib": base / 1024}))


def _run_child(peer: str, phase: str, work: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "child", peer, phase, str(work)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def large_value(base: Path, size: int, reps: int) -> tuple[Results, dict[str, float]]:
    """Stream a value of *size* bytes in and out, interleaved with raw copies."""
    work = base / "large"
    work.mkdir()
    init_shared_store(work / "store")
    block = os.urandom(CHUNK)
    with open(work / "source.bin", "wb") as out:
        for offset in range(0, size, CHUNK):
            out.write(block[: min(CHUNK, size - offset)])
    results, peaks = Results(), {"in": 0.0, "out": 0.0, "raw": 0.0}
    for rep in range(-1, reps):  # rep -1 warms the page cache and memory up, unrecorded
        for phase in ("in", "out"):
            for peer in rotate(["FileSystemStore", "raw"], rep):
                figures = _run_child(peer, phase, work)
                if rep < 0:
                    continue
                results.add(phase, peer, size, figures["seconds"])
                key = phase if peer == "FileSystemStore" else "raw"
                peaks[key] = max(peaks[key], figures["peak_mib"])
    return results, peaks


def main() -> None:
    rounds = env_int("BENCH_FS_ROUNDS", 12)
    size = env_int("BENCH_FS_LARGE_MIB", 1024) * CHUNK
    base = Path(tempfile.mkdtemp(prefix="sk-fs-", dir=os.environ.get("BENCH_DIR")))
    try:
        small = small_operations(base, rounds, set_ops=200, get_ops=2000)
        print(f"== 100 B values, durable, {rounds} interleaved rounds (ops/s medians)")
        small.print_table(["set", "get"], ["FileSystemStore", "raw"])
        small.print_ratio(
            "set / raw tmp+fsync+rename+dirfsync", "set", "FileSystemStore", "raw", 0.8
        )
        small.print_ratio("to_bytes / raw file read", "get", "FileSystemStore", "raw", 0.7)
        large, peaks = large_value(base, size, env_int("BENCH_FS_LARGE_REPS", 5))
        print(f"== one value of {size // CHUNK} MiB, streamed; raw = durable file copy")
        for phase in ("in", "out"):
            mbps = large.median(phase, "FileSystemStore") / 1e6
            raw = large.median(phase, "raw") / 1e6
            print(f"  {phase:<4} FileSystemStore {mbps:8.0f} MB/s   raw copy {raw:8.0f} MB/s")
        large.print_ratio(
            "streamed in (set from a file) / raw copy", "in", "FileSystemStore", "raw", 0.7
        )
        large.print_ratio("streamed out (to_file) / raw copy", "out", "FileSystemStore", "raw", 0.7)
        print(
            f"  peak RSS: in {peaks['in']:.0f} MiB, out {peaks['out']:.0f} MiB, "
            f"raw copy {peaks['raw']:.0f} MiB (target < 64)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
