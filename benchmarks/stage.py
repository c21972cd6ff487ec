"""storekeeper.stage next to libearth 0.3.3's stage, in one run.

Workload: one feed of ENTRIES (default 1,000) entries, of which every session holds a
full copy (each session marked a different 1/16th of the entries read), merged from 1,
4 and 16 sessions' copies. Phases, per number of copies:

- read: a transaction that reads the merged feed and walks every entry's title;
- commit: one edit (star one entry) assigned back and committed, timed from the
  assignment to the end of the ``with`` block (the read before it is not timed);
- memory: bytes of one session's stored copy, and the peak traced memory of one merged
  read (tracemalloc), per copy.

libearth runs in its own virtual environment (``BENCH_LIBEARTH_VENV``, default
``.venv/libearth-0.3.3``, created on first use with ``pip install libearth==0.3.3``) with
a shim for Python 3.11 (see ``_stage_libearth.py``). Both sides use a local directory
without fsync (libearth never fsyncs; ours runs ``FileSystemStore(durable=False)``); a
last row shows our commit with the default ``durable=True``. Reps alternate the order of
the two sides; ratios are medians of per-rep ratios (ours faster when > 1).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _harness import env_int
from storekeeper import FileSystemStore, init_shared_store
from storekeeper.stage import Entry, Feed, Session, Stage

FEED_ID = "example-feed"
HERE = Path(__file__).resolve().parent
SESSIONS = (1, 4, 16)


def libearth_python() -> Path:
    """The libearth venv's interpreter, creating the venv on first use."""
    default = HERE.parent / ".venv" / "libearth-0.3.3"
    venv = Path(os.environ.get("BENCH_LIBEARTH_VENV", default))
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with libearth 0.3.3 ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "libearth==0.3.3"], check=True)
    return python


def _feed(entries: int, session_index: int) -> Feed:
    feed = Feed(id=FEED_ID, title="Example")
    for index in range(entries):
        entry = Entry(title=f"Entry {index}", updated=_now())
        if index % 16 == session_index:
            entry.read = True
        feed.entries[f"urn:e{index}"] = entry
    return feed


def _now() -> object:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def measure_ours(
    workdir: str, entries: int, iterations: int, sessions: int, durable: bool = False
) -> dict[str, float]:
    """Our side of one rep for *sessions* copies."""
    root = Path(workdir) / f"ours-{sessions}-{durable}"
    init_shared_store(root)
    store = FileSystemStore(root, durable=durable)
    store.connect()
    stages = [Stage(Session(f"bench-{durable}-{i}"), store) for i in range(sessions)]
    for index, stage in enumerate(stages):
        with stage:
            stage.feeds[FEED_ID] = _feed(entries, index)
    reader = stages[0]

    def read(stage: Stage) -> int:
        with stage:
            feed = stage.feeds[FEED_ID]
            return sum(1 for e in feed.entries.values() if e.title)

    assert read(reader) == entries
    reads, warm, commits = [], [], []
    for _ in range(iterations):
        # A new stage object: nothing decoded or merged before is reused.
        cold = Stage(reader.session, store)
        start = time.perf_counter()
        read(cold)
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        read(cold)
        warm.append(time.perf_counter() - start)
    for iteration in range(iterations):
        with reader:
            feed = reader.feeds[FEED_ID]
            feed.entries[f"urn:e{iteration}"].starred = True
            start = time.perf_counter()
            reader.feeds[FEED_ID] = feed
        commits.append(time.perf_counter() - start)
    own = f"feeds/{FEED_ID}/{reader.session.identifier}.json"
    copy_bytes = len(store.to_bytes(own))
    tracemalloc.start()
    read(Stage(reader.session, store))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    store.disconnect()
    return {
        "read": statistics.median(reads),
        "warm": statistics.median(warm),
        "commit": statistics.median(commits),
        "copy_bytes": copy_bytes,
        "read_peak": peak,
    }


def measure_libearth(
    python: Path, workdir: str, entries: int, iterations: int
) -> dict[str, dict[str, float]]:
    """libearth's side of one rep, for every number of copies."""
    script = HERE / "_stage_libearth.py"
    args = [str(python), str(script), workdir, str(entries), str(iterations)]
    done = subprocess.run([*args, *map(str, SESSIONS)], check=True, capture_output=True, text=True)
    found: dict[str, dict[str, float]] = json.loads(done.stdout)
    return found


def main() -> None:
    entries = env_int("BENCH_STAGE_ENTRIES", 1000)
    reps = env_int("BENCH_REPS", 3)
    iterations = env_int("BENCH_STAGE_ITERATIONS", 3)
    python = libearth_python()
    base = os.environ.get("BENCH_DIR")
    ratios: dict[str, list[float]] = {}
    figures: dict[str, list[float]] = {}
    for rep in range(reps):
        with tempfile.TemporaryDirectory(dir=base) as workdir:
            sides = ["ours", "libearth"] if rep % 2 == 0 else ["libearth", "ours"]
            ours: dict[int, dict[str, float]] = {}
            theirs: dict[str, dict[str, float]] = {}
            for side in sides:
                if side == "ours":
                    ours = {s: measure_ours(workdir, entries, iterations, s) for s in SESSIONS}
                    durable = measure_ours(workdir, entries, iterations, 4, durable=True)
                else:
                    theirs = measure_libearth(python, workdir, entries, iterations)
        for s in SESSIONS:
            mine, peer = ours[s], theirs[str(s)]
            for phase in ("read", "commit"):
                ratios.setdefault(f"{phase} {s}", []).append(peer[phase] / mine[phase])
                figures.setdefault(f"ours {phase} {s}", []).append(mine[phase])
                figures.setdefault(f"libearth {phase} {s}", []).append(peer[phase])
            for name in ("copy_bytes", "read_peak"):
                figures.setdefault(f"ours {name} {s}", []).append(
                    mine[name] / (1 if name == "copy_bytes" else s)
                )
                figures.setdefault(f"libearth {name} {s}", []).append(
                    peer[name] / (1 if name == "copy_bytes" else s)
                )
        figures.setdefault("ours durable commit 4", []).append(durable["commit"])
        for s in SESSIONS:
            figures.setdefault(f"ours warm {s}", []).append(ours[s]["warm"])
        print(f"rep {rep + 1}/{reps} done", flush=True)
    _report(entries, ratios, figures)


def _report(entries: int, ratios: dict[str, list[float]], figures: dict[str, list[float]]) -> None:
    print(f"\nfeed of {entries} entries; seconds per operation (median over reps)")
    print(
        f"{'phase':<12}{'copies':>7}{'ours':>12}{'libearth':>12}{'speed-up':>10}"
        "  [min .. max]  target"
    )
    for phase in ("read", "commit"):
        for s in SESSIONS:
            values = ratios[f"{phase} {s}"]
            mid = statistics.median(values)
            ours = statistics.median(figures[f"ours {phase} {s}"])
            peer = statistics.median(figures[f"libearth {phase} {s}"])
            verdict = "ok" if mid >= 5 else "BELOW TARGET"
            print(
                f"{phase:<12}{s:>7}{ours:>12.5f}{peer:>12.5f}{mid:>10.1f}"
                f"  [{min(values):.1f} .. {max(values):.1f}]  >= 5 {verdict}"
            )
    for s in SESSIONS:
        warm = statistics.median(figures[f"ours warm {s}"])
        print(f"{'read again, unchanged (ours)':<31}{warm:>12.5f}  ({s} copies)")
    durable = statistics.median(figures["ours durable commit 4"])
    print(f"{'commit (ours, durable=True)':<31}{durable:>12.5f}  (4 copies)")
    print("\nmemory per session copy")
    for s in SESSIONS:
        for side in ("ours", "libearth"):
            stored = statistics.median(figures[f"{side} copy_bytes {s}"])
            peak = statistics.median(figures[f"{side} read_peak {s}"])
            print(
                f"  {side:<9} {s:>2} copies: stored {stored / 1024:8.1f} KiB/copy, "
                f"read peak {peak / 1024:8.1f} KiB/copy"
            )


if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    main()
