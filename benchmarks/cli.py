"""The ``storekeeper`` command vs the coreutils it stands in for, in one run.

- start-up: ``storekeeper --help`` wall time (target < 150 ms), next to ``python -c pass``;
- ``cp`` of a 1 GiB file into SQLite and back out to a folder, vs coreutils ``cp`` of the
  same file (target: ratio cp time / ours >= 0.7). Both copy inside the kernel
  (``copy_file_range``). Two comparisons are like for like: ours into a
  ``?durable=false`` database vs plain ``cp`` (neither waits for the disk), and ours
  into a durable database (the default: the value file is fsynced before its row
  commits) vs ``cp`` followed by ``sync`` of the copy and its directory (both wait for
  the disk). ``cp`` vs ours durable is shown too. The library's own path without the
  command's start-up (``SqliteStore.set`` from the open file, in this process, durable
  and not) and a plain read/write loop of 1 MiB chunks (no fsync: what a copy through
  user space costs) show where the time goes;
- ``sync`` of 10,000 small files into a SQLite store, then a re-sync with nothing
  changed, vs ``rsync -a`` of the same tree into a directory and its no-change rerun.

Every timed step starts after an untimed ``sync`` (:func:`_harness.timed_io`), for every
peer alike: the dirty pages of earlier steps (a copy that did not wait for the disk
leaves 1 GiB of them) are written first instead of during the next step.
Ratios are peer time / our time per rep (higher is better for us), median [min .. max].
BENCH_REPS (default 3), BENCH_CLI_MIB (1024), BENCH_CLI_FILES (10000), BENCH_DIR,
BENCH_CLI_PARTS (default ``startup,sync,cp``: which sections run).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import env_int, rotate, timed, timed_io

COMMAND = str(Path(sys.executable).with_name("storekeeper"))


def run(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_ms(samples: list[float]) -> str:
    low, high = min(samples) * 1000, max(samples) * 1000
    return f"{statistics.median(samples) * 1000:7.1f} ms [{low:.1f} .. {high:.1f}]"


def remove(pattern: str, work: Path) -> None:
    for path in work.glob(pattern):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def ratio(peer: list[float], ours: list[float], label: str, target: float | None) -> None:
    """Print the median [min .. max] of the per-rep ratios peer time / our time, and the
    ratio of the best times (what each side does when nothing disturbs it)."""
    ratios = [p / o for p, o in zip(peer, ours, strict=True)]
    median = statistics.median(ratios)
    verdict = "" if target is None else ("  ok" if median >= target else "  BELOW TARGET")
    goal = "" if target is None else f" (target >= {target})"
    best = min(peer) / min(ours)
    print(
        f"  {label:<46} {median:5.2f}  [{min(ratios):.2f} .. {max(ratios):.2f}]"
        f"  best/best {best:.2f}{goal}{verdict}"
    )


def startup(reps: int) -> None:
    print("== start-up (20 runs per rep, median)")
    commands = {
        "storekeeper --help": [COMMAND, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "import storekeeper": [sys.executable, "-c", "import storekeeper"],
        "import click": [sys.executable, "-c", "import click"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for rep in range(reps):
        for name in rotate(list(commands), rep):
            times = [timed(lambda: run(*commands[name])) for _ in range(20)]
            samples[name].append(statistics.median(times))
    for name, values in samples.items():
        print(f"  {name:<22} {median_ms(values)}")
    verdict = "ok" if statistics.median(samples["storekeeper --help"]) < 0.150 else "ABOVE TARGET"
    print(f"  target < 150 ms: {verdict}")


def big_copy(work: Path, reps: int, mib: int) -> None:
    print(f"== cp of a {mib} MiB file: into SQLite and back")
    source = work / "big-in"
    source.mkdir()
    big = source / "big.bin"
    with open(big, "wb") as out:
        block = os.urandom(1 << 20)
        for _ in range(mib):
            out.write(block)
    names = (
        "ours in",
        "ours in, durable=false",
        "ours out",
        "cp in",
        "cp out",
        "cp && sync in",
        "store.set in-process",
        "store.set in-process, durable=false",
        "read/write loop",
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    url = f"sqlite:///{work / 'big.db'}"
    fast_url = f"sqlite:///{work / 'big-fast.db'}?durable=false"
    copy, back = work / "big-copy.bin", work / "big-out"
    synced = work / "big-synced.bin"
    # Steps timed back to back in pairs of like for like (the order in a pair
    # alternating by rep), each after an untimed sync (timed_io): the load of a shared
    # machine, which drifts over seconds, then weighs alike on both sides of a ratio.
    # The copies out read what the first pair wrote; files are removed (untimed) once
    # no later step reads them, so every pair starts with the same page cache.
    groups: list[tuple[list[tuple[str, Callable[[], object]]], tuple[str, ...]]] = [
        (
            [
                ("cp in", lambda: run("cp", str(big), str(copy))),
                ("ours in, durable=false", lambda: run(COMMAND, "cp", str(source), fast_url)),
            ],
            (),
        ),
        (
            [
                ("cp out", lambda: run("cp", str(copy), f"{copy}.out")),
                ("ours out", lambda: run(COMMAND, "cp", fast_url, str(back))),
            ],
            ("big-copy.bin*", "big-fast.db*", "big-out"),
        ),
        (
            [
                (
                    "cp && sync in",
                    lambda: run("sh", "-c", f"cp '{big}' '{synced}' && sync '{synced}' '{work}'"),
                ),
                ("ours in", lambda: run(COMMAND, "cp", str(source), url)),
            ],
            ("big-synced.bin", "big.db*"),
        ),
        (
            [
                ("store.set in-process", lambda: store_set(big, work / "big-set.db")),
                (
                    "store.set in-process, durable=false",
                    lambda: store_set(big, work / "big-set-fast.db", durable=False),
                ),
                ("read/write loop", lambda: read_write(big, work / "big-rw.bin")),
            ],
            ("big-set*", "big-rw.bin"),
        ),
    ]
    for rep in range(reps):
        for steps, done_with in groups:
            for name, step in rotate(steps, rep):
                times[name].append(timed_io(step))
                if name == "ours out":
                    assert (back / "big.bin").stat().st_size == mib << 20
            for pattern in done_with:
                remove(pattern, work)
    for name, values in times.items():
        rate = statistics.median((mib << 20) / v / 1e6 for v in values)
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<36} {median_ms(values)}  {rate:6.0f} MB/s  (s per rep: {each})")
    ratio(
        times["cp in"],
        times["ours in, durable=false"],
        "cp / ours ?durable=false (like for like)",
        0.7,
    )
    ratio(
        times["cp && sync in"], times["ours in"], "(cp && sync) / ours durable (like for like)", 0.7
    )
    ratio(times["cp in"], times["ours in"], "cp / ours durable", None)
    ratio(times["cp out"], times["ours out"], "cp / ours, back out to a folder", 0.7)
    ratio(times["cp && sync in"], times["store.set in-process"], "(cp && sync) / store.set", None)
    ratio(
        times["cp in"],
        times["store.set in-process, durable=false"],
        "cp / store.set durable=false",
        None,
    )
    ratio(times["cp in"], times["read/write loop"], "cp / read-write loop (no fsync)", None)


def store_set(source: Path, database: Path, *, durable: bool = True) -> None:
    """The library's write path alone: a SqliteStore.set from the open file."""
    from storekeeper.backends.sqlite import SqliteStore

    with SqliteStore(str(database), durable=durable) as store, open(source, "rb") as data:
        store.set("big.bin", (data, {}))


def read_write(source: Path, target: Path) -> None:
    """The floor of a copy through user space: 1 MiB reads and writes, no fsync."""
    with open(source, "rb", buffering=0) as data, open(target, "wb", buffering=0) as out:
        while chunk := data.read(1 << 20):
            out.write(chunk)


def small_sync(work: Path, reps: int, count: int) -> None:
    print(f"== sync of {count} small files (1 KiB) into a store, then again unchanged")
    tree = work / "tree"
    for index in range(count):
        path = tree / f"d{index % 100:02}" / f"f{index:05}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024))
    times: dict[str, list[float]] = {
        name: [] for name in ("ours first", "ours again", "rsync first", "rsync again")
    }
    for rep in range(reps):
        url = f"sqlite:///{work / f'sync-{rep}.db'}"
        mirror = work / f"mirror-{rep}"
        steps: dict[str, Callable[[], None]] = {
            "ours": lambda: (
                times["ours first"].append(timed_io(lambda: run(COMMAND, "sync", str(tree), url))),
                times["ours again"].append(timed_io(lambda: run(COMMAND, "sync", str(tree), url))),
            ),
            "rsync": lambda: (
                times["rsync first"].append(
                    timed_io(lambda: run("rsync", "-a", f"{tree}/", f"{mirror}/"))
                ),
                times["rsync again"].append(
                    timed_io(lambda: run("rsync", "-a", f"{tree}/", f"{mirror}/"))
                ),
            ),
        }
        for name in rotate(list(steps), rep):
            steps[name]()
        shutil.rmtree(mirror)
        remove(f"sync-{rep}.db*", work)
    for name, values in times.items():
        print(f"  {name:<12} {median_ms(values)}  {count / statistics.median(values):9.0f} files/s")
    ratio(times["rsync first"], times["ours first"], "rsync / ours, first sync", None)
    ratio(times["rsync again"], times["ours again"], "rsync / ours, no-change re-sync", None)


def compile_package() -> None:
    """Write the bytecode of the storekeeper package the command runs, as installing it
    does: from a source tree under ``PYTHONDONTWRITEBYTECODE`` every start of the
    command would compile each module it imports again (~0.08 s for ``cp``)."""
    import compileall

    import storekeeper

    compileall.compile_dir(Path(storekeeper.__file__).parent, quiet=1)


def main() -> None:
    compile_package()
    reps = env_int("BENCH_REPS", 3)
    parts = os.environ.get("BENCH_CLI_PARTS", "startup,sync,cp").split(",")
    print(f"storekeeper CLI benchmark, {reps} interleaved reps (shared machine: expect noise)")
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    if "startup" in parts:
        startup(reps)
    base = os.environ.get("BENCH_DIR")
    with tempfile.TemporaryDirectory(dir=base) as directory:
        work = Path(directory)
        if "sync" in parts:
            small_sync(work, reps, env_int("BENCH_CLI_FILES", 10_000))
        if "cp" in parts:
            big_copy(work, reps, env_int("BENCH_CLI_MIB", 1024))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
