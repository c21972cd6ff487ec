"""Several sessions in separate processes edit the same documents through one store.

Each worker process is a session (two processes share one session, as two runs of one
app on one device may), with a skewed wall clock. They add, edit and delete entries and
retitle feeds; some transactions raise after editing (rolled back). A compactor process
compacts concurrently, dropping old tombstones. Each worker logs every acknowledged edit
with its stamp. Afterwards every session must read identical documents, equal to what
the acknowledged edits imply: each field holds its newest acknowledged write, an entity
exists iff its newest acknowledged add is newer than its newest acknowledged delete, and
nothing from a rolled-back transaction appears.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storekeeper.stage import Entry, Feed, Session, Stage
from storekeeper.stage.session import to_micros

_FEEDS = ["f1", "https://example.org/f2"]
_ENTRIES = ["e1", "e2", "e3", "e4"]
_RETENTION = timedelta(seconds=5)


class _RollbackError(Exception):
    pass


def _edit(stage: Stage, rng: random.Random, tag: str, n: int) -> tuple[list[Any], bool]:
    feed_id = rng.choice(_FEEDS)
    rollback = rng.random() < 0.15
    value = f"{'rb' if rollback else 'ok'}-{tag}-{n}"
    op = rng.choice(["title", "etitle", "add", "add", "delete", "delete"])
    eid = rng.choice(_ENTRIES)
    record: list[Any] = []
    with stage:
        feed = stage.feeds[feed_id] if feed_id in stage.feeds else Feed(id=feed_id)
        if op == "title":
            feed.title = value
        elif op == "add":
            feed.entries[eid] = Entry(title=value)
        elif eid not in feed.entries:
            op = "none"
        elif op == "etitle":
            feed.entries[eid].title = value
        else:
            del feed.entries[eid]
        stage.feeds[feed_id] = feed
        # Widen the window in which the session's other process may commit meanwhile.
        time.sleep(rng.uniform(0, 0.005))
        revision = feed.__revision__
        assert revision is not None
        record = [op, feed_id, eid, value, to_micros(revision.updated_at), stage.session.identifier]
        if rollback:
            raise _RollbackError
    return record, rollback


def worker(argv: list[str]) -> None:
    """One process: ``url session tag skew_us count seed log compactor``."""
    url, identifier, tag, skew, count, seed, log, compactor = argv
    session = Session(identifier)
    offset = timedelta(microseconds=int(skew))
    session.clock.wall = lambda: datetime.now(UTC) + offset
    stage = Stage(session, url)
    stage.touch_interval = timedelta(0)
    rng = random.Random(int(seed))
    deadline = time.monotonic() + 600
    with open(log, "w", encoding="utf-8") as out:
        if compactor == "1":
            stop = Path(log + ".stop")
            while not stop.exists() and time.monotonic() < deadline:
                stage.compact(retention=_RETENTION)
                time.sleep(rng.uniform(0, 0.05))
            return
        for n in range(int(count)):
            try:
                record, _ = _edit(stage, rng, tag, n)
            except _RollbackError:
                continue
            out.write(json.dumps(record) + "\n")
            out.flush()


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    code = "import sys, test_stage_convergence as t; t.worker(sys.argv[1:])"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env)


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "filesystem":
        from storekeeper import init_shared_store

        init_shared_store(tmp_path / "shared")
        return (tmp_path / "shared").as_uri() + "?durable=false"
    # The default configuration: with durable=false and background checkpoints, several
    # processes writing at once made SQLite report a malformed database here.
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _winner(records: list[list[Any]]) -> Any:
    best = max(records, key=lambda r: (r[4], r[5], json.dumps(r[3], sort_keys=True)))
    return best[3]


def _expected(records: list[list[Any]]) -> dict[str, Any]:
    expected: dict[str, Any] = {}
    for feed_id in _FEEDS:
        mine = [r for r in records if r[1] == feed_id]
        titles = [r for r in mine if r[0] == "title"]
        entries = {}
        for eid in _ENTRIES:
            adds = [r for r in mine if r[2] == eid and r[0] == "add"]
            deletes = [r[4:6] for r in mine if r[2] == eid and r[0] == "delete"]
            if not adds:
                continue
            last_add = max(r[4:6] for r in adds)
            last_delete = max(deletes) if deletes else None
            if last_delete is not None and last_add <= last_delete:
                continue
            writes = [
                r
                for r in mine
                if r[2] == eid
                and r[0] in ("add", "etitle")
                and (last_delete is None or r[4:6] > last_delete)
            ]
            entries[eid] = _winner(writes)
        if mine:  # every acknowledged transaction wrote the feed
            expected[feed_id] = {"title": _winner(titles) if titles else "", "entries": entries}
    return expected


def _observed(url: str, identifier: str) -> dict[str, Any]:
    stage = Stage(Session(identifier), url)
    with stage:
        return {
            feed_id: {
                "title": stage.feeds[feed_id].title,
                "entries": {k: e.title for k, e in stage.feeds[feed_id].entries.items()},
            }
            for feed_id in stage.feeds
        }


def _converge(kind: str, tmp_path: Path, count: int, sessions: int) -> None:
    url = _url(kind, tmp_path)
    logs, procs = [], []
    rng = random.Random()
    for index in range(2 * sessions):  # every session runs in two processes
        identifier = f"conv-{index % sessions}"
        skew = rng.randint(-200_000, 200_000)
        log = str(tmp_path / f"log-{index}.jsonl")
        logs.append(log)
        procs.append(
            _start([url, identifier, f"p{index}", str(skew), str(count), str(index), log, "0"])
        )
    compactor_log = str(tmp_path / "compactor.jsonl")
    compactor = _start([url, "conv-compactor", "c", "0", "0", "99", compactor_log, "1"])
    for proc in procs:
        assert proc.wait(timeout=900) == 0
    Path(compactor_log + ".stop").touch()
    assert compactor.wait(timeout=300) == 0
    records = [json.loads(line) for log in logs for line in Path(log).read_text().splitlines()]
    assert len(records) > count  # most transactions were acknowledged
    views = [_observed(url, f"conv-{i}") for i in range(sessions)]
    views.append(_observed(url, "conv-fresh"))  # a session that never wrote anything
    for view in views[1:]:
        assert view == views[0]
    assert views[0] == _expected(records)
    text = json.dumps(views[0])
    assert "rb-" not in text  # nothing from a rolled-back transaction


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_sessions_in_processes_converge(kind: str, tmp_path: Path) -> None:
    _converge(kind, tmp_path, count=15, sessions=3)


@pytest.mark.soak
@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_sessions_in_processes_converge_soak(kind: str, tmp_path: Path) -> None:
    _converge(kind, tmp_path, count=300, sessions=5)
