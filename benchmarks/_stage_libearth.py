"""The libearth 0.3.3 half of benchmarks/stage.py; runs in the benchmark's own venv.

libearth cannot be imported on Python 3.10+ as released: it subclasses
``collections.MutableSequence`` and friends, which moved to ``collections.abc``. The
shim below puts those names back before importing it; nothing else is changed.

Usage: ``python _stage_libearth.py WORKDIR ENTRIES SESSIONS...``. It builds one
repository per number of sessions, prints ``ready``, then answers one command per line
on stdin with one line of JSON: ``read S`` (seconds for one merged read of S copies),
``commit S I`` (seconds to assign and commit an edit of entry I), ``memory S`` (bytes
of one stored copy and the peak traced memory of one merged read).
"""

from __future__ import annotations

import collections
import collections.abc
import json
import os
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


def _setup(workdir: str, entries: int, sessions: int) -> tuple[Stage, str]:
    repo = FileSystemRepository(os.path.join(workdir, f"libearth-{sessions}"))
    stages = [Stage(Session(f"s{i}"), repo) for i in range(sessions)]
    for index, stage in enumerate(stages):
        with stage:
            stage.feeds[FEED_ID] = _feed(entries, index)
    return stages[0], os.path.join(repo.path, "feeds", FEED_ID, "s0.xml")


def _read(stage: Stage) -> int:
    with stage:
        feed = stage.feeds[FEED_ID]
        return sum(1 for e in feed.entries if e.title.value)


def _commit(stage: Stage, index: int) -> float:
    with stage:
        feed = stage.feeds[FEED_ID]
        feed.entries[index].starred = Mark(marked=True, updated_at=now())
        start = time.perf_counter()
        stage.feeds[FEED_ID] = feed
    return time.perf_counter() - start


def main() -> None:
    workdir, entries = sys.argv[1], int(sys.argv[2])
    built = {s: _setup(workdir, entries, int(s)) for s in sys.argv[3:]}
    for stage, _ in built.values():
        assert _read(stage) == entries
    print("ready", flush=True)
    for line in sys.stdin:
        command, sessions, *rest = line.split()
        stage, copy = built[sessions]
        if command == "read":
            start = time.perf_counter()
            _read(stage)
            answer: object = time.perf_counter() - start
        elif command == "commit":
            answer = _commit(stage, int(rest[0]))
        else:
            tracemalloc.start()
            _read(stage)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            answer = [os.path.getsize(copy), peak]
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
