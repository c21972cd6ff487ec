"""Durable-file primitives vs the raw sequences and the peers, in one run.

- atomic_write of 100 B vs the raw temp + fsync + replace + directory fsync (>= 0.9);
- atomic_store commit of a dict of 10 / 1,000 / 100,000 entries vs the
  ``atomic_store`` package (0.0.1) and ``atomicwrites`` (no slower than that package);
- save_checkpoint of 1 KiB and 10 MiB vs the raw sequence (>= 0.9).
BENCH_REPS sets the interleaved reps; BENCH_DIR the directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Results, env_int, rotate, timed
from storekeeper.files import atomic_write


def raw_durable_write(path: str, data: bytes) -> None:
    """The raw limit: temp file, write, fsync, replace, directory fsync."""
    temp = path + ".raw-tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def bench_atomic_write(base: Path, reps: int, count: int) -> None:
    data = b"x" * 100
    peers: dict[str, Callable[[str], None]] = {
        "raw": lambda p: raw_durable_write(p, data),
        "atomic_write": lambda p: atomic_write(p, data),
    }
    results = Results()
    for rep in range(reps):
        for name in rotate(list(peers), rep):
            work = Path(tempfile.mkdtemp(dir=base))
            paths = [str(work / f"f{i}") for i in range(count)]
            write = peers[name]
            results.add("write", name, count, timed(lambda: [write(p) for p in paths]))
            shutil.rmtree(work)
    print(f"\n== atomic_write of 100 B, durable, {count} files x {reps} reps")
    results.print_table(["write"], list(peers))
    results.print_ratio("atomic_write / raw sequence", "write", "atomic_write", "raw", 0.9)


def bench_atomic_store(base: Path, reps: int) -> None:
    try:
        from storekeeper import atomic_store
    except ImportError:
        print("\n== atomic_store: not available in this build")
        return
    import atomic_store as peer
    from atomicwrites import atomic_write as aw

    for size in (10, 1_000, 100_000):
        value = {f"key-{i}": i for i in range(size)}
        commits = 20 if size < 100_000 else 5
        results = Results()

        def ours(path: Path, value: dict[str, int] = value, commits: int = commits) -> None:
            with atomic_store.open(path, default=value) as store:
                for n in range(commits):
                    store.value["n"] = n
                    store.commit()

        def theirs(path: Path, value: dict[str, int] = value, commits: int = commits) -> None:
            with peer.open(str(path), default=dict(value)) as store:
                for n in range(commits):
                    store.value["n"] = n
                    store.commit()

        def atomicwrites(path: Path, value: dict[str, int] = value, commits: int = commits) -> None:
            for n in range(commits):
                value["n"] = n
                with aw(str(path), mode="w", overwrite=True) as out:
                    json.dump(value, out)

        peers = {"storekeeper": ours, "atomic_store": theirs, "atomicwrites": atomicwrites}
        for rep in range(reps):
            for name in rotate(list(peers), rep):
                work = Path(tempfile.mkdtemp(dir=base))
                results.add("commit", name, commits, timed(lambda: peers[name](work / "s.json")))
                shutil.rmtree(work)
        print(f"\n== atomic_store commit, dict of {size} entries, {commits} commits x {reps} reps")
        results.print_table(["commit"], list(peers))
        results.print_ratio(
            "storekeeper / atomic_store", "commit", "storekeeper", "atomic_store", 1.0
        )
        results.print_ratio(
            "storekeeper / atomicwrites", "commit", "storekeeper", "atomicwrites", None
        )


def bench_checkpoint(base: Path, reps: int) -> None:
    if importlib.util.find_spec("storekeeper.sessions") is None:
        print("\n== save_checkpoint: not available in this build")
        return
    from storekeeper.sessions import SessionStorage

    for size, count in ((1024, 200), (10 * 1024 * 1024, 10)):
        data = os.urandom(size)
        results = Results()
        for rep in range(reps):
            work = Path(tempfile.mkdtemp(dir=base))
            storage = SessionStorage.create(str(work))
            target = str(work / "raw-session")
            runs = {
                "raw": lambda: [raw_durable_write(target, data) for _ in range(count)],
                "save_checkpoint": lambda: [storage.save_checkpoint(data) for _ in range(count)],
            }
            for name in rotate(list(runs), rep):
                results.add("save", name, count, timed(runs[name]))
            shutil.rmtree(work)
        print(f"\n== save_checkpoint of {size} B, {count} saves x {reps} reps")
        results.print_table(["save"], ["raw", "save_checkpoint"])
        results.print_ratio("save_checkpoint / raw sequence", "save", "save_checkpoint", "raw", 0.9)


def main() -> None:
    reps = env_int("BENCH_REPS", 5)
    base = Path(tempfile.mkdtemp(prefix="sk-files-", dir=os.environ.get("BENCH_DIR")))
    try:
        bench_atomic_write(base, reps, env_int("BENCH_FILES", 300))
        bench_atomic_store(base, reps)
        bench_checkpoint(base, reps)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
