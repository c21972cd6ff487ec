"""storekeeper.stage next to libearth 0.3.3's stage, in one run.

Workload: one feed of ENTRIES (default 1,000) entries, of which every session holds a
full copy (each session marked a different 1/16th of the entries read), merged from 1,
4 and 16 sessions' copies. Phases, per number of copies:

- read (measured before any commit: libearth's reads skip the merge once the reader's
  own copy lists every other copy in its base revisions, as it does after a commit): a
  transaction that reads the merged feed and walks every entry's title; ours
  with an empty cache each time (nothing decoded before is reused), and once more with
  the cache ("read again": the copies are fetched, the merge comes from the cache);
- commit: one edit (star one entry) assigned back and committed, timed from the
  assignment to the end of the ``with`` block (the read before it is not timed);
- memory: bytes of one session's stored copy, and the peak traced memory of one merged
  read (tracemalloc), per copy.

libearth runs in its own virtual environment (``BENCH_LIBEARTH_VENV``, default
``.venv/libearth-0.3.3``, created on first use with ``pip install libearth==0.3.3``) with
a shim for Python 3.11 (see ``_stage_libearth.py``), as a server process that performs
one operation per request, so ours and libearth's operations alternate one by one (the
machine's load changes by the second). Both sides use a local directory without fsync
(libearth never fsyncs; ours runs ``FileSystemStore(durable=False)``); a last row shows
our commit with the default ``durable=True``. libearth records the session's last use
after every transaction (a file write), ours only in commits that write (at most every
30 s per stage) or call ``touch()``. Ratios are libearth's time over ours, median of the
per-pair ratios (ours faster when > 1).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import env_int
from storekeeper import FileSystemStore, init_shared_store
from storekeeper.stage import Entry, Feed, Session, Stage
from storekeeper.stage.stage import CopyCache

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


class Libearth:
    """The libearth server process."""

    def __init__(self, python: Path, workdir: str, entries: int) -> None:
        args = [str(python), str(HERE / "_stage_libearth.py"), workdir, str(entries)]
        self.proc = subprocess.Popen(
            [*args, *map(str, SESSIONS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _feed(entries: int, session_index: int) -> Feed:
    feed = Feed(id=FEED_ID, title="Example")
    for index in range(entries):
        entry = Entry(title=f"Entry {index}", updated=datetime.now(UTC))
        if index % 16 == session_index:
            entry.read = True
        feed.entries[f"urn:e{index}"] = entry
    return feed


class Ours:
    """Our stores, one per number of sessions."""

    def __init__(self, workdir: str, entries: int, durable: bool = False) -> None:
        self.readers: dict[int, Stage] = {}
        self.stores: list[FileSystemStore] = []
        for sessions in SESSIONS:
            root = Path(workdir) / f"ours-{sessions}-{durable}"
            init_shared_store(root)
            store = FileSystemStore(root, durable=durable)
            store.connect()
            self.stores.append(store)
            stages = [Stage(Session(f"bench-{durable}-{i}"), store) for i in range(sessions)]
            for index, stage in enumerate(stages):
                with stage:
                    stage.feeds[FEED_ID] = _feed(entries, index)
            self.readers[sessions] = stages[0]
            assert self.read(sessions, fresh=True) == entries

    def read(self, sessions: int, fresh: bool) -> int:
        reader = self.readers[sessions]
        if fresh:
            reader.cache = CopyCache()  # nothing decoded or merged before is reused
        with reader:
            feed = reader.feeds[FEED_ID]
            return sum(1 for e in feed.entries.values() if e.title)

    def commit(self, sessions: int, index: int) -> float:
        reader = self.readers[sessions]
        with reader:
            feed = reader.feeds[FEED_ID]
            feed.entries[f"urn:e{index}"].starred = True
            start = time.perf_counter()
            reader.feeds[FEED_ID] = feed
        return time.perf_counter() - start

    def memory(self, sessions: int) -> tuple[int, int]:
        reader = self.readers[sessions]
        own = f"feeds/{FEED_ID}/{reader.session.identifier}.json"
        tracemalloc.start()
        self.read(sessions, fresh=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return len(reader.repository.to_bytes(own)), peak


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    entries = env_int("BENCH_STAGE_ENTRIES", 1000)
    rounds = env_int("BENCH_STAGE_ROUNDS", 9)
    python = libearth_python()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as workdir:
        print("building the feeds ...", flush=True)
        ours, durable = Ours(workdir, entries), Ours(workdir, entries, durable=True)
        peer = Libearth(python, workdir, entries)
        try:
            # All reads first: once libearth's reader has committed, its copy's base
            # revisions contain every other copy's and its reads skip the merge.
            for round_ in range(rounds):
                for s in SESSIONS:
                    steps = [
                        ("ours read", lambda s=s: _timed(lambda: ours.read(s, fresh=True))),
                        ("libearth read", lambda s=s: peer.ask(f"read {s}")),
                    ]
                    for name, action in steps[:: 1 if round_ % 2 else -1]:
                        times.setdefault(f"{name} {s}", []).append(action())
                    warm = _timed(lambda s=s: ours.read(s, fresh=False))
                    times.setdefault(f"ours warm {s}", []).append(warm)
                print(f"read round {round_ + 1}/{rounds} done", flush=True)
            memory = {s: (ours.memory(s), peer.ask(f"memory {s}")) for s in SESSIONS}
            for round_ in range(rounds):
                for s in SESSIONS:
                    steps = [
                        ("ours commit", lambda s=s: ours.commit(s, round_)),
                        ("libearth commit", lambda s=s: peer.ask(f"commit {s} {round_}")),
                    ]
                    for name, action in steps[:: 1 if round_ % 2 else -1]:
                        times.setdefault(f"{name} {s}", []).append(action())
                    if s == 4:
                        spent = durable.commit(4, round_)
                        times.setdefault("ours durable commit 4", []).append(spent)
                print(f"commit round {round_ + 1}/{rounds} done", flush=True)
        finally:
            peer.close()
    _report(entries, times, memory)


def _report(
    entries: int, times: dict[str, list[float]], memory: dict[int, tuple[Any, Any]]
) -> None:
    print(f"\nfeed of {entries} entries; seconds per operation (median over rounds)")
    print(f"{'phase':<8}{'copies':>7}{'ours':>11}{'libearth':>11}{'speed-up':>10}  [min .. max]")
    for phase in ("read", "commit"):
        for s in SESSIONS:
            mine, theirs = times[f"ours {phase} {s}"], times[f"libearth {phase} {s}"]
            ratios = [b / a for a, b in zip(mine, theirs, strict=True)]
            mid = statistics.median(ratios)
            verdict = "ok" if mid >= 5 else "BELOW TARGET"
            print(
                f"{phase:<8}{s:>7}{statistics.median(mine):>11.4f}"
                f"{statistics.median(theirs):>11.4f}{mid:>10.1f}"
                f"  [{min(ratios):.1f} .. {max(ratios):.1f}]  target >= 5: {verdict}"
            )
    for s in SESSIONS:
        warm = statistics.median(times[f"ours warm {s}"])
        print(f"read again, unchanged copies (ours), {s:>2} copies: {warm:.4f}")
    durable = statistics.median(times["ours durable commit 4"])
    print(f"commit with durable=True (ours), 4 copies: {durable:.4f}")
    print("\nmemory per session copy: stored bytes of one copy; peak of one merged read / copies")
    for s in SESSIONS:
        (stored, peak), (their_stored, their_peak) = memory[s]
        print(
            f"  {s:>2} copies: ours {stored / 1024:7.1f} KiB stored, {peak / s / 1024:7.1f} KiB"
            f" read peak; libearth {their_stored / 1024:7.1f} KiB, {their_peak / s / 1024:7.1f} KiB"
        )


if __name__ == "__main__":
    main()
