"""The libearth 0.3.3 half of benchmarks/stage.py; runs in the benchmark's own venv.

libearth cannot be imported on Python 3.10+ as released: it subclasses
``collections.MutableSequence`` and friends, which moved to ``collections.abc``. The
shim below puts those names back before importing it; nothing else is changed.

Usage: ``python _stage_libearth.py WORKDIR ENTRIES ITERATIONS SESSIONS...``; prints one
JSON object of timings (seconds per operation, median of ITERATIONS) and sizes.
"""

from __future__ import annotations

import collections
import collections.abc
import json
import os
import statistics
import sys
import time
import tracemalloc
import warnings

for _name in collections.abc.__all__:
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
warnings.simplefilter("ignore")

from libearth.feed import Entry, Feed, Mark, Text  # noqa: E402
from libearth.repository import FileSystemRepository  # noqa: E402
from libearth.session import Session  # noqa: E402
from libearth.stage import Stage  # noqa: E402
from libearth.tz import now  # noqa: E402

# libearth does not escape key components: an id with "/" would become nested folders.
FEED_ID = "example-feed"


def _feed(entries: int, session_index: int) -> Feed:
    feed = Feed(id=FEED_ID, title=Text(value="Example"), updated_at=now())
    for index in range(entries):
        entry = Entry(id=f"urn:e{index}", title=Text(value=f"Entry {index}"), updated_at=now())
        if index % 16 == session_index:
            entry.read = Mark(marked=True, updated_at=now())
        feed.entries.append(entry)
    return feed


def _measure(workdir: str, entries: int, iterations: int, sessions: int) -> dict[str, float]:
    repo = FileSystemRepository(os.path.join(workdir, f"libearth-{sessions}"))
    stages = [Stage(Session(f"s{i}"), repo) for i in range(sessions)]
    for index, stage in enumerate(stages):
        with stage:
            stage.feeds[FEED_ID] = _feed(entries, index)
    reader = stages[0]

    def read() -> int:
        with reader:
            feed = reader.feeds[FEED_ID]
            return sum(1 for e in feed.entries if e.title.value)

    assert read() == entries
    reads, commits = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        read()
        reads.append(time.perf_counter() - start)
    for iteration in range(iterations):
        with reader:
            feed = reader.feeds[FEED_ID]
            feed.entries[iteration].starred = Mark(marked=True, updated_at=now())
            start = time.perf_counter()
            reader.feeds[FEED_ID] = feed
        commits.append(time.perf_counter() - start)
    copy = os.path.join(repo.path, "feeds", FEED_ID, "s0.xml")
    copies = os.listdir(os.path.join(repo.path, "feeds", FEED_ID))
    tracemalloc.start()
    read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "read": statistics.median(reads),
        "commit": statistics.median(commits),
        "copy_bytes": os.path.getsize(copy) if os.path.exists(copy) else -1,
        "copies": len(copies),
        "read_peak": peak,
    }


def main() -> None:
    workdir, entries, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = {s: _measure(workdir, entries, iterations, int(s)) for s in sys.argv[4:]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
