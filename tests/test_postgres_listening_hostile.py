"""Hostile probes of PostgresStore's on-demand listening: an event listener connected
at any moment, from any thread, task or process, must get every change committed after
its ``connect()`` returned, once, in commit order per key, with ``remote=True``; the
store's own writes are local (``remote=False``) and never come twice.

Written from the README, the CHANGELOG and the docstrings only. A probe that shows a bug
is ``xfail(strict=True)`` with the bug in its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from _pg_harness import database_url, drop_database, raw_write, table_for
from storekeeper.backends.postgres import PostgresStore
from storekeeper.composite import JoinedStore, MountedStore
from storekeeper.events import BaseEvent, BaseEventManager, EventManager, ProgressEvent
from storekeeper.store import (
    StoreDeleteEvent,
    StoreEvent,
    StoreKeyEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)

pytestmark = [pytest.mark.service, pytest.mark.postgres]

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module", autouse=True)
def _session_database() -> Iterator[None]:
    yield
    drop_database()


@pytest.fixture
def table(tmp_path: Path) -> str:
    return table_for(str(tmp_path))


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Recorder:
    """An event listener keeping what it receives: ``(action, key, remote, version,
    origin, metadata)`` per event, thread-safely."""

    def __init__(self, manager: EventManager, cls: type[BaseEvent] = StoreModificationEvent):
        self.events: list[tuple[Any, ...]] = []
        self.sources: list[Any] = []
        self.lock = threading.Lock()
        self.manager, self.cls = manager, cls
        manager.connect(cls, self.record)

    def record(self, event: Any) -> None:
        item = (
            getattr(event, "action", None),
            getattr(event, "key", None),
            getattr(event, "remote", None),
            getattr(event, "version", None),
            getattr(event, "origin", None),
            getattr(event, "metadata", None),
        )
        with self.lock:
            self.events.append(item)
            self.sources.append(event.source)

    def stop(self) -> None:
        self.manager.disconnect(self.cls, self.record)

    def remote_keys(self) -> list[str]:
        with self.lock:
            return [e[1] for e in self.events if e[2] is True]

    def local_keys(self) -> list[str]:
        """Keys of the events not marked remote (a composite's own events carry no
        ``remote`` at all)."""
        with self.lock:
            return [e[1] for e in self.events if e[2] is not True]

    def wait_remote(self, keys: list[str], timeout: float = 10.0) -> bool:
        return _wait(lambda: set(keys) <= set(self.remote_keys()), timeout)


def _writer(table: str) -> PostgresStore:
    """Another store object on *table*, not listening: a second writer."""
    store = PostgresStore(database_url(), table, listen=False)
    store.connect()
    return store


def _sql(statement: Any, *args: Any) -> None:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(statement, list(args))


def _listening_sessions() -> int:
    """Sessions of the test database that ran LISTEN and have not run UNLISTEN since
    (the server's view: their last statement)."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN %%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _kill_sessions() -> int:
    """Terminate every session of the test database but this one and those inside a
    transaction (a writer's open transaction survives); how many were ended."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state IS DISTINCT FROM 'idle in transaction'"
        ).fetchall()
    return len(rows)


def _run_with_deadline(func: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Run *func* in a daemon thread; ``(finished, result or exception)``."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(func())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), box[0] if box else None)


# --- the cursor read when the first listener connects ------------------------------


@pytest.mark.parametrize("writer_kind", ["store", "plain_sql"])
def test_a_change_committed_right_after_connect_returned_is_delivered(
    table: str, writer_kind: str
) -> None:
    """Connect a fresh listener, write at once from elsewhere, disconnect; 25 times.
    Each round's change comes exactly once, remote, with the writer's origin."""
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager), _writer(table) as writer:
        writer.set("before", (b"", {}))
        for round_ in range(25):
            recorder = Recorder(manager)
            key = f"r{round_}"
            if writer_kind == "store":
                writer.set(key, (b"x", {"round": round_}))
            else:
                raw_write(database_url(), table, key, b"x", {"round": round_})
            assert recorder.wait_remote([key], 5), (round_, recorder.events)
            recorder.stop()
            mine = [e for e in recorder.events if e[1] == key]
            assert len(mine) == 1, mine
            assert mine[0][0] == "set" and mine[0][5] == {"round": round_}
            if writer_kind == "plain_sql":
                assert mine[0][4] is None
            else:
                assert mine[0][4] == writer.origin


@pytest.mark.parametrize("writer_kind", ["store", "plain_sql"])
def test_a_transaction_open_when_the_listener_connects_is_delivered_at_its_commit(
    table: str, writer_kind: str
) -> None:
    """A writer's transaction logs its change (taking a log position), then another
    writer commits a later change, then a listener connects, then the first transaction
    commits: its change is committed after the listener connected, so it must come."""
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager),
        _writer(table) as slow,
        _writer(table) as fast,
    ):
        slow.set("warm", (b"", {}))  # the table and log exist
        committed = threading.Event()
        go = threading.Event()

        def slow_writer() -> None:
            if writer_kind == "store":
                with slow.transaction():
                    slow.set("slow", (b"late", {"n": 1}))
                    committed.set()
                    go.wait(10)
            else:
                text = json.dumps({"n": 1})
                with psycopg.connect(database_url()) as conn:
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (key, version, size, created, modified, "
                            "metadata, meta, data) VALUES ('slow', 77, 4, 0, 0, %s, "
                            "%s::jsonb, 'late')"
                        ).format(sql.Identifier(table)),
                        [text, text],
                    )
                    committed.set()
                    go.wait(10)

        thread = threading.Thread(target=slow_writer)
        thread.start()
        try:
            assert committed.wait(10)
            fast.set("fast", (b"", {}))  # a later log position, committed first
            recorder = Recorder(manager)
        finally:
            go.set()
            thread.join()
        fast.set("after", (b"", {}))
        assert recorder.wait_remote(["after"], 5), recorder.events
        time.sleep(0.3)
        assert "slow" in recorder.remote_keys(), recorder.events


def test_a_change_committed_out_of_log_order_reaches_a_steady_listener(table: str) -> None:
    """The same two writers while a listener has been connected all along: the change
    logged first and committed last still comes, once."""
    manager = EventManager()
    recorder = Recorder(manager)
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as slow,
        _writer(table) as fast,
    ):
        assert store.wait_listening(10)
        committed, go = threading.Event(), threading.Event()

        def slow_writer() -> None:
            with slow.transaction():
                slow.set("slow", (b"late", {}))
                committed.set()
                go.wait(10)

        thread = threading.Thread(target=slow_writer)
        thread.start()
        try:
            assert committed.wait(10)
            fast.set("fast", (b"", {}))
            assert recorder.wait_remote(["fast"], 5)
        finally:
            go.set()
            thread.join()
        fast.set("after", (b"", {}))
        assert recorder.wait_remote(["after"], 5), recorder.events
        time.sleep(0.2)
        assert sorted(recorder.remote_keys()) == ["after", "fast", "slow"], recorder.events


def test_a_change_committed_out_of_log_order_while_the_listener_is_cut_off(table: str) -> None:
    """A steady listener's session is killed while a transaction that logged a change
    is open; the transaction commits before the listener is back; the change comes."""
    manager = EventManager()
    recorder = Recorder(manager)
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as slow,
    ):
        assert store.wait_listening(10)
        committed, go, done = threading.Event(), threading.Event(), threading.Event()

        def slow_writer() -> None:
            with slow.transaction():
                slow.set("slow", (b"late", {}))
                committed.set()
                go.wait(10)
            done.set()

        thread = threading.Thread(target=slow_writer)
        thread.start()
        try:
            assert committed.wait(10)
            with _writer(table) as fast:
                fast.set("fast", (b"", {}))
            assert recorder.wait_remote(["fast"], 5)
            assert _kill_sessions() > 0
        finally:
            go.set()
            thread.join()
        assert done.is_set()
        with _writer(table) as fast:
            fast.set("after", (b"", {}))
        assert recorder.wait_remote(["after"], 15), recorder.events
        time.sleep(0.2)
        assert sorted(recorder.remote_keys()) == ["after", "fast", "slow"], recorder.events


# --- listeners coming and going while other processes write ------------------------

_WRITER_SCRIPT = r"""
import json, sys, time
import psycopg
from psycopg import sql
from storekeeper.backends.postgres import PostgresStore
url, table, key, kind, seconds = sys.argv[1:6]
seconds = float(seconds)
deadline = time.monotonic() + seconds
n = 0
if kind == "store":
    with PostgresStore(url, table, listen=False) as store:
        while time.monotonic() < deadline:
            n += 1
            store.set(key, (b"v", {"n": n}))
else:
    with psycopg.connect(url, autocommit=True) as conn:
        statement = sql.SQL(
            "INSERT INTO {t} (key, version, size, created, modified, metadata, meta, data) "
            "VALUES (%s, %s, 1, 0, 0, %s, %s::jsonb, 'v') ON CONFLICT (key) DO UPDATE SET "
            "version = EXCLUDED.version, metadata = EXCLUDED.metadata, meta = EXCLUDED.meta"
        ).format(t=sql.Identifier(table))
        while time.monotonic() < deadline:
            n += 1
            text = json.dumps({"n": n})
            conn.execute(statement, [key, n, text, text])
print(n)
"""


def _start_writer(table: str, key: str, kind: str, seconds: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, database_url(), table, key, kind, str(seconds)],
        env=env,
        stdout=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.soak  # several seconds: make soak runs it
def test_listeners_churned_from_threads_while_processes_write(table: str) -> None:
    """Four threads each connect a listener, note each writer key's committed counter,
    let some writes pass, note it again, wait for that write's event and disconnect;
    over and over while two processes (a store and plain SQL) write. Each listener gets
    every counter between its two notes, once, in increasing order, remote."""
    manager = EventManager()
    keys = ["by-store", "by-sql"]
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as reader,
    ):
        for key in keys:  # the rows exist before the writers start
            reader.set(key, (b"v", {"n": 0}))
        writers = [
            _start_writer(table, "by-store", "store", 4.0),
            _start_writer(table, "by-sql", "plain", 4.0),
        ]
        problems: list[str] = []
        rounds = [0]
        stop = threading.Event()

        def counters() -> dict[str, int]:
            return {key: reader.get_metadata(key)["n"] for key in keys}

        def churn(index: int) -> None:
            while not stop.is_set():
                recorder = Recorder(manager)
                first = counters()
                time.sleep(0.01 * (index + 1))
                last = counters()
                for key in keys:
                    if last[key] > first[key] and not _wait(
                        lambda k=key, r=recorder, n=last[key]: any(
                            e[1] == k and e[5]["n"] >= n for e in list(r.events) if e[2]
                        ),
                        10,
                    ):
                        problems.append(f"{key}: counter {last[key]} never came")
                recorder.stop()
                for key in keys:
                    got = [e[5]["n"] for e in recorder.events if e[1] == key and e[2]]
                    if got != sorted(set(got)):
                        problems.append(f"{key}: not once each in order: {got}")
                    missing = set(range(first[key] + 1, last[key] + 1)) - set(got)
                    if missing:
                        problems.append(f"{key}: missed {sorted(missing)[:10]}")
                local = [e for e in recorder.events if e[2] is not True]
                if local:
                    problems.append(f"events not remote: {local[:3]}")
                rounds[0] += 1

        threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            for process in writers:
                assert process.wait(30) == 0
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert rounds[0] > 20
        assert not problems, problems[:10]
        assert store.wait_listening(0.1)


# --- where and how the listener connects ------------------------------------------


def test_a_listener_connected_inside_a_store_transaction(table: str) -> None:
    """Connecting a listener while this thread holds a transaction of the store neither
    blocks nor loses anything: another writer's commit during the transaction comes as
    remote, the transaction's own write comes once, local, at the commit."""
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        store.set("warm", (b"", {}))
        holder: list[Recorder] = []

        def inside() -> None:
            with store.transaction():
                store.set("own", (b"mine", {}))
                holder.append(Recorder(manager))
                writer.set("other", (b"theirs", {}))
                store.get("warm")

        finished, error = _run_with_deadline(inside, 10)
        assert finished and error is None, error
        recorder = holder[0]
        assert recorder.wait_remote(["other"], 5), recorder.events
        assert _wait(lambda: "own" in recorder.local_keys(), 5)
        writer.set("after", (b"", {}))
        assert recorder.wait_remote(["after"], 5)
        time.sleep(0.2)
        assert recorder.remote_keys() == ["other", "after"], recorder.events
        assert recorder.local_keys() == ["own"], recorder.events


def test_a_listener_connected_from_an_asyncio_task(table: str) -> None:
    """A listener connected by a task (the store's transaction open in another task of
    the same thread) gets the change written right after, remote."""
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        store.set("warm", (b"", {}))

        async def main() -> Recorder:
            inside, release = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                with store.transaction():
                    store.set("held", (b"", {}))
                    inside.set()
                    await release.wait()

            task = asyncio.create_task(holder())
            await inside.wait()

            async def connector() -> Recorder:
                return Recorder(manager)

            recorder = await asyncio.wait_for(asyncio.create_task(connector()), 5)
            raw_write(database_url(), table, "sql", b"", {"from": "sql"})
            release.set()
            await task
            return recorder

        recorder = asyncio.run(main())
        assert recorder.wait_remote(["sql"], 5), recorder.events
        assert _wait(lambda: recorder.local_keys() == ["held"], 5), recorder.events
        writer.set("after", (b"", {}))
        assert recorder.wait_remote(["after"], 5)
        time.sleep(0.2)
        assert recorder.remote_keys() == ["sql", "after"], recorder.events


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (BaseEvent, ["a", "a", "a"]),
        (StoreEvent, ["a", "a", "a"]),
        (StoreKeyEvent, ["a", "a", "a"]),
        (StoreModificationEvent, ["a", "a", "a"]),
        (StoreSetEvent, ["a"]),
        (StoreUpdateEvent, ["a"]),
        (StoreDeleteEvent, ["a"]),
    ],
)
def test_a_listener_of_any_class_that_covers_changes_gets_them(
    table: str, cls: type[BaseEvent], expected: list[str]
) -> None:
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager), _writer(table) as writer:
        recorder = Recorder(manager, cls)
        writer.set("a", (b"", {"x": 1}))
        writer.update_metadata("a", {"y": 2})
        writer.delete("a")
        writer.set("end", (b"", {}))
        if issubclass(StoreSetEvent, cls):  # "end" comes too, last
            assert recorder.wait_remote(["end"], 5), recorder.events
        else:
            assert recorder.wait_remote(expected, 5), recorder.events
        time.sleep(0.2)
        assert [k for k in recorder.remote_keys() if k != "end"] == expected, recorder.events


@pytest.mark.parametrize("cls", [ProgressEvent, "unrelated"])
def test_a_listener_of_an_unrelated_class_does_not_make_it_listen(table: str, cls: Any) -> None:
    class Unrelated(BaseEvent):
        pass

    manager = EventManager()
    manager.connect(Unrelated if cls == "unrelated" else cls, lambda event: None)
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        started = time.monotonic()
        assert store.wait_listening(5)
        assert time.monotonic() - started < 0.5
        with _writer(table) as writer:
            writer.set("k", (b"", {}))
        time.sleep(0.3)
        assert _listening_sessions() == 0


def test_a_listener_connected_before_the_store_connects(table: str) -> None:
    manager = EventManager()
    recorder = Recorder(manager)
    store = PostgresStore(database_url(), table, event_manager=manager)
    with _writer(table) as writer:
        writer.set("before-connect", (b"", {}))
        store.connect()
        try:
            raw_write(database_url(), table, "right-after", b"", {})
            assert recorder.wait_remote(["right-after"], 5), recorder.events
            time.sleep(0.2)
            assert recorder.remote_keys().count("right-after") == 1
        finally:
            store.disconnect()


# --- several stores on one manager, composites ---------------------------------------


def test_stores_on_two_tables_sharing_one_manager(tmp_path: Path) -> None:
    """Two stores (two tables) on one manager: a listener connected once gets both
    tables' changes; one store disconnected and reconnected still serves it."""
    first, second = table_for(str(tmp_path) + "/1"), table_for(str(tmp_path) + "/2")
    manager = EventManager()
    one = PostgresStore(database_url(), first, event_manager=manager)
    two = PostgresStore(database_url(), second, event_manager=manager)
    with one, two:
        recorder = Recorder(manager)
        raw_write(database_url(), first, "in-one", b"", {})
        raw_write(database_url(), second, "in-two", b"", {})
        assert recorder.wait_remote(["in-one", "in-two"], 5), recorder.events
        assert {id(s) for s in recorder.sources} == {id(one), id(two)}
        one.disconnect()
        raw_write(database_url(), second, "two-alone", b"", {})
        assert recorder.wait_remote(["two-alone"], 5), recorder.events
        recorder.stop()
        one.connect()
        again = Recorder(manager)
        raw_write(database_url(), first, "one-again", b"", {})
        raw_write(database_url(), second, "two-again", b"", {})
        assert again.wait_remote(["one-again", "two-again"], 5), again.events
        time.sleep(0.2)
        assert sorted(again.remote_keys()) == ["one-again", "two-again"], again.events


def test_two_stores_on_one_table_sharing_one_manager_each_emit_once(table: str) -> None:
    """Two store objects on one table and one manager: a plain SQL change is remote for
    both (one event each); a write through one is local for it and remote for the other,
    and neither store emits it twice."""
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as one,
        PostgresStore(database_url(), table, event_manager=manager),
    ):
        recorder = Recorder(manager)
        one.set("via-one", (b"", {}))
        raw_write(database_url(), table, "via-sql", b"", {})
        assert _wait(lambda: len(recorder.events) >= 4, 5), recorder.events
        time.sleep(0.3)
        seen = sorted(
            (key, remote, src is one)
            for (_, key, remote, *_), src in zip(recorder.events, recorder.sources, strict=True)
        )
        assert seen == [
            ("via-one", False, True),
            ("via-one", True, False),
            ("via-sql", True, False),
            ("via-sql", True, True),
        ], recorder.events


@pytest.mark.parametrize("kind", ["joined", "mounted"])
def test_a_composite_listener_gets_the_child_changes_after_it_connected(
    table: str, kind: str
) -> None:
    """A composite over a PostgresStore, each with its own manager: listeners of the
    composite come and go; each gets the change written right after it connected, once,
    remote, with the composite as source."""
    child = PostgresStore(database_url(), table, event_manager=EventManager())
    manager = EventManager()
    composite: Any
    if kind == "joined":
        composite = JoinedStore([child], event_manager=manager)
        prefix = ""
    else:
        from storekeeper.backends.memory import DictMemoryStore

        composite = MountedStore("m/", child, DictMemoryStore(), event_manager=manager)
        prefix = "m/"
    with composite, _writer(table) as writer:
        writer.set("warm", (b"", {}))
        for round_ in range(8):
            recorder = Recorder(manager)
            key = f"r{round_}"
            if round_ % 2:
                raw_write(database_url(), table, key, b"", {})
            else:
                writer.set(key, (b"", {}))
            assert recorder.wait_remote([prefix + key], 5), (round_, recorder.events)
            recorder.stop()
            assert recorder.remote_keys().count(prefix + key) == 1
            assert all(src is composite for src in recorder.sources)
        composite.set(prefix + "own", (b"", {}))
        recorder = Recorder(manager)
        composite.set(prefix + "own2", (b"", {}))
        writer.set("last", (b"", {}))
        assert recorder.wait_remote([prefix + "last"], 5), recorder.events
        time.sleep(0.2)
        assert recorder.local_keys() == [prefix + "own2"], recorder.events
        assert recorder.remote_keys() == [prefix + "last"], recorder.events


# --- fork -------------------------------------------------------------------------------


def _in_child(func: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run *func* in a forked child; its JSON result (or the repr of what it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            payload = json.dumps(["ok", func()])
        except BaseException as exc:
            payload = json.dumps(["error", repr(exc)])
        try:
            os.write(write_end, payload.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as pipe:
        # poll, not select: the whole suite may hold more than 1,023 descriptors.
        poller = select.poll()
        poller.register(pipe.fileno(), select.POLLIN)
        while time.monotonic() < deadline:
            if poller.poll(100):
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert chunks, "the child gave no answer in time"
    status, result = json.loads(b"".join(chunks))
    assert status == "ok", result
    return result


@pytest.mark.parametrize("parent_listens", [False, True])
def test_a_listener_connected_in_a_forked_child(table: str, parent_listens: bool) -> None:
    """After fork, a listener connected in the child gets the change written right after
    (plain SQL from the child); the parent's listening is untouched."""
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))
        parent = Recorder(manager) if parent_listens else None
        if parent is not None:
            assert store.wait_listening(5)

        def child() -> Any:
            recorder = Recorder(manager)
            raw_write(database_url(), table, "from-child", b"", {})
            _wait(lambda: "from-child" in recorder.remote_keys(), 8)
            time.sleep(0.2)
            return recorder.remote_keys()

        got = _in_child(child)
        if parent is not None:
            assert "from-child" in got
            assert got.count("from-child") == 1
        else:
            assert got == ["from-child"]
        later = Recorder(manager)
        raw_write(database_url(), table, "in-parent", b"", {})
        assert later.wait_remote(["in-parent"], 5), later.events
        if parent is not None:
            assert parent.wait_remote(["from-child", "in-parent"], 5), parent.events
            assert parent.remote_keys().count("from-child") == 1


def test_an_inherited_listener_in_a_forked_child_after_wait_listening(table: str) -> None:
    """A listener connected before fork: the child calls wait_listening() (which starts
    its own listener, as documented) and then gets what is written after, once."""
    manager = EventManager()
    recorder = Recorder(manager)
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        assert store.wait_listening(5)

        def child() -> Any:
            with recorder.lock:
                recorder.events.clear()
            if not store.wait_listening(5):
                return "wait_listening false"
            raw_write(database_url(), table, "child-sql", b"", {})
            _wait(lambda: "child-sql" in recorder.remote_keys(), 8)
            time.sleep(0.2)
            return recorder.remote_keys()

        assert _in_child(child) == ["child-sql"]


# --- the server's sessions killed ----------------------------------------------------


def test_sessions_killed_while_nobody_listens_then_a_listener_connects(table: str) -> None:
    """Every session of the store killed while nobody listens: connecting a listener
    neither raises nor hangs, and the change written right after still comes."""
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))
        assert _kill_sessions() > 0
        started = time.monotonic()
        recorder = Recorder(manager)
        assert time.monotonic() - started < 2
        raw_write(database_url(), table, "after-kill", b"", {})
        assert recorder.wait_remote(["after-kill"], 15), recorder.events
        store.set("own", (b"", {}))
        raw_write(database_url(), table, "later", b"", {})
        assert recorder.wait_remote(["later"], 5), recorder.events
        time.sleep(0.2)
        assert recorder.remote_keys() == ["after-kill", "later"], recorder.events
        assert recorder.local_keys() == ["own"], recorder.events


def test_sessions_killed_while_a_listener_listens_lose_nothing(table: str) -> None:
    """The listening session killed (with every other one) between writes, three times:
    every change comes once, in order, including those written while it was away."""
    manager = EventManager()
    recorder = Recorder(manager)
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        assert store.wait_listening(5)
        expected = []
        for round_ in range(3):
            for i in range(5):
                key = f"r{round_}/{i}"
                expected.append(key)
                raw_write(database_url(), table, key, b"", {})
            assert _kill_sessions() > 0
            for i in range(5, 10):
                key = f"r{round_}/{i}"
                expected.append(key)
                writer.set(key, (b"", {}))
        assert recorder.wait_remote(expected, 20), recorder.events
        time.sleep(0.3)
        assert recorder.remote_keys() == expected
        assert store.wait_listening(5)


def test_sessions_killed_while_listeners_come_and_go(table: str) -> None:
    """Listeners connected and disconnected while the sessions are killed under them:
    the last one still gets what is written after it connected."""
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))
        for round_ in range(2):
            recorder = Recorder(manager)
            _kill_sessions()
            recorder.stop()
            recorder = Recorder(manager)
            raw_write(database_url(), table, f"k{round_}", b"", {})
            assert recorder.wait_remote([f"k{round_}"], 15), (round_, recorder.events)
            recorder.stop()
            _kill_sessions()
        assert store.wait_listening(5)


# --- the server unreachable ------------------------------------------------------------


class Proxy:
    """A TCP relay from a free local port to the test server (``delay`` holds back each
    relayed chunk): ``cut()`` closes every relayed connection and the port (nothing
    listens there then: connections are refused), ``restore()`` listens on the same port
    again. The real server is never touched."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.delay = 0.0  # seconds each relayed chunk is held back
        self.port = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        self.port = server.getsockname()[1]
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self.server is not None
        with contextlib.suppress(OSError):  # wakes accept() (close alone would not)
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.server = None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        if self.server is not None:
            self.cut()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(database_url())
    relay = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield relay
    relay.close()


def _through(proxy: Proxy) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database_url())
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def test_connecting_a_listener_while_the_server_is_unreachable_returns_soon(
    table: str, proxy: Proxy
) -> None:
    """Nothing listens at the store's port any more; connecting a listener returns
    within a few seconds (not the store's 30 s ``timeout``) and raises nothing, and
    ``wait_listening`` says false in time."""
    manager = EventManager()
    with PostgresStore(_through(proxy), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))
        proxy.cut()
        started = time.monotonic()
        finished, result = _run_with_deadline(lambda: Recorder(manager), 10)
        assert finished, "connecting a listener hung"
        assert isinstance(result, Recorder), f"connecting a listener raised {result!r}"
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert not store.wait_listening(1)
        assert time.monotonic() - started < 3
        result.stop()
        proxy.restore()


def test_a_listener_connected_while_the_server_is_unreachable_misses_nothing(
    table: str, proxy: Proxy
) -> None:
    """The store's way to the server cut; a listener connects (it returns, see above);
    another program commits a change; the way comes back and another change is
    committed: once the store listens again, both come."""
    manager = EventManager()
    with PostgresStore(_through(proxy), table, event_manager=manager, timeout=5) as store:
        store.set("warm", (b"", {}))
        proxy.cut()
        finished, result = _run_with_deadline(lambda: Recorder(manager), 10)
        assert finished and isinstance(result, Recorder), result
        recorder = result
        raw_write(database_url(), table, "while-cut", b"", {})
        proxy.restore()
        raw_write(database_url(), table, "after", b"", {})
        assert store.wait_listening(15)
        with _writer(table) as writer:
            writer.set("later", (b"", {}))
        assert recorder.wait_remote(["later"], 5), recorder.events
        time.sleep(0.2)
        assert sorted(recorder.remote_keys()) == ["after", "later", "while-cut"], recorder.events


def test_a_listening_store_cut_off_and_back_misses_nothing(table: str, proxy: Proxy) -> None:
    """The documented reconnect: a listener connected while the way is open, the way
    cut, changes committed meanwhile by others, the way back: all come, once."""
    manager = EventManager()
    recorder = Recorder(manager)
    with PostgresStore(_through(proxy), table, event_manager=manager, timeout=5) as store:
        assert store.wait_listening(5)
        proxy.cut()
        raw_write(database_url(), table, "while-cut", b"", {})
        proxy.restore()
        raw_write(database_url(), table, "after", b"", {})
        assert recorder.wait_remote(["while-cut", "after"], 15), recorder.events
        time.sleep(0.2)
        assert recorder.remote_keys() == ["while-cut", "after"], recorder.events


# --- the store disconnected, listen=False --------------------------------------------


def test_the_store_disconnected_and_reconnected_while_listeners_exist(table: str) -> None:
    """A listener stays connected while the store disconnects and reconnects (twice);
    after each connect() it gets what is written, once; a listener that came and went
    while the store was disconnected changes nothing."""
    manager = EventManager()
    recorder = Recorder(manager)
    store = PostgresStore(database_url(), table, event_manager=manager)
    with _writer(table) as writer:
        for round_ in range(2):
            store.connect()
            try:
                raw_write(database_url(), table, f"sql{round_}", b"", {})
                writer.set(f"store{round_}", (b"", {}))
                assert recorder.wait_remote([f"sql{round_}", f"store{round_}"], 5), recorder.events
            finally:
                store.disconnect()
            passing = Recorder(manager)
            passing.stop()
        store.connect()
        try:
            store.set("own", (b"", {}))
            writer.set("last", (b"", {}))
            assert recorder.wait_remote(["last"], 5)
            time.sleep(0.2)
        finally:
            store.disconnect()
        assert recorder.remote_keys() == ["sql0", "store0", "sql1", "store1", "last"]
        assert recorder.local_keys() == ["own"]


def test_a_store_with_listen_false_only_emits_its_own_writes(table: str) -> None:
    manager = EventManager()
    recorder = Recorder(manager)
    with PostgresStore(database_url(), table, listen=False, event_manager=manager) as store:
        assert not store.wait_listening(0.5)
        late = Recorder(manager)
        raw_write(database_url(), table, "sql", b"", {})
        with _writer(table) as writer:
            writer.set("other", (b"", {}))
        store.set("own", (b"", {}))
        store.delete("own")
        time.sleep(0.5)
        assert _listening_sessions() == 0
        for rec in (recorder, late):
            assert rec.remote_keys() == []
            assert [(e[0], e[1], e[2]) for e in rec.events] == [
                ("set", "own", False),
                ("delete", "own", False),
            ]


def test_wait_listening_answers_at_once_while_nobody_listens(table: str) -> None:
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        for _ in range(3):
            started = time.monotonic()
            assert store.wait_listening(5)
            assert store.wait_listening(0)
            assert time.monotonic() - started < 0.2
            recorder = Recorder(manager)
            assert store.wait_listening(5)
            recorder.stop()
        store.disconnect()
        assert not store.wait_listening(0.2)  # a disconnected store delivers nothing


# --- what is delivered -----------------------------------------------------------------


def test_updates_deletes_and_large_metadata_arrive_whole(table: str) -> None:
    """Metadata far over a NOTIFY payload (8,000 bytes), from a store and from plain
    SQL, comes whole; update and delete events carry what the docs say."""
    manager = EventManager()
    big = {"text": "é" * 6000, "list": list(range(3000)), "nested": {"k": "x" * 9000}}
    with PostgresStore(database_url(), table, event_manager=manager), _writer(table) as writer:
        recorder = Recorder(manager)
        writer.set("big", (b"data", big))
        raw_write(database_url(), table, "big-sql", b"d", big)
        writer.update_metadata("big", {"more": "y" * 9000})
        writer.set_metadata("small", {"a": 1})
        writer.update_metadata("small", {"b": 2})
        writer.delete("big")
        _sql(sql.SQL("DELETE FROM {} WHERE key = 'big-sql'").format(sql.Identifier(table)))
        writer.set("chunked", (b"z" * (3 << 20), {"n": 1}))
        assert recorder.wait_remote(["chunked"], 10), recorder.events
        time.sleep(0.2)
        got = [(e[0], e[1], e[5]) for e in recorder.events]
        merged = dict(big, more="y" * 9000)
        assert got == [
            ("set", "big", big),
            ("set", "big-sql", big),
            ("update", "big", merged),
            ("set", "small", {"a": 1}),
            ("update", "small", {"a": 1, "b": 2}),
            ("delete", "big", merged),
            ("delete", "big-sql", big),
            ("set", "chunked", {"n": 1}),
        ]
        assert all(e[2] is True for e in recorder.events)
        versions = {e[1]: e[3] for e in recorder.events if e[0] == "set"}
        assert versions["chunked"] is not None


@pytest.mark.parametrize("when", ["before-connect", "first-listener"])
def test_a_listener_that_raises_does_not_stop_delivery(table: str, when: str) -> None:
    """A handler raising on every event (run first), connected before the store connects
    or as the first listener of a connected store (its first events then come from
    the catch-up): the other listener gets everything, the failing one is called still."""
    manager = EventManager()
    calls: list[str] = []

    def angry(event: Any) -> None:
        calls.append(event.key)
        raise RuntimeError("listener failure")

    if when == "before-connect":
        manager.connect(StoreModificationEvent, angry, priority=10)
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        if when == "first-listener":
            manager.connect(StoreModificationEvent, angry, priority=10)
        recorder = Recorder(manager)
        keys = [f"k{i}" for i in range(10)]
        for key in keys:
            writer.set(key, (b"", {}))
        store.set("own", (b"", {}))
        assert recorder.wait_remote(keys, 5), recorder.events
        time.sleep(0.2)
        assert recorder.remote_keys() == keys
        assert sorted(calls) == sorted([*keys, "own"])  # the failing one is called still
        manager.disconnect(StoreModificationEvent, angry)
        recorder.stop()
        late = Recorder(manager)
        writer.set("after", (b"", {}))
        assert late.wait_remote(["after"], 5)
        assert store.wait_listening(5)


def test_listeners_that_come_and_go_from_inside_a_handler(table: str) -> None:
    """Handlers running on the store's listener thread disconnect themselves and connect
    new listeners: nothing blocks, and the listener connected from inside a handler gets
    the changes written after."""
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        spawned: list[Recorder] = []

        def once(event: Any) -> None:
            manager.disconnect(StoreModificationEvent, once)
            spawned.append(Recorder(manager))

        manager.connect(StoreModificationEvent, once)
        writer.set("first", (b"", {}))
        assert _wait(lambda: bool(spawned), 8), "a handler blocked"
        writer.set("second", (b"", {}))
        assert spawned[0].wait_remote(["second"], 5), spawned[0].events
        assert "first" not in spawned[0].remote_keys()
        spawned[0].stop()
        again = Recorder(manager)  # after nobody listened: listening starts again
        writer.set("third", (b"", {}))
        assert again.wait_remote(["third"], 5), again.events
        assert store.wait_listening(5)


def test_wait_listening_called_from_a_handler_does_not_wait_for_itself(
    table: str, proxy: Proxy
) -> None:
    """A handler asks wait_listening() (as library code called from a handler might).
    The listener is fine, so it answers true without holding up the thread; shown
    deterministically on the catch-up after the store's way to the server was cut."""
    manager = EventManager()
    answers: list[tuple[str, bool, float]] = []

    def asking(event: Any) -> None:
        started = time.monotonic()
        answers.append((event.key, store.wait_listening(2), time.monotonic() - started))

    manager.connect(StoreModificationEvent, asking)
    with PostgresStore(_through(proxy), table, event_manager=manager, timeout=5) as store:
        assert store.wait_listening(5)
        raw_write(database_url(), table, "steady", b"", {})
        assert _wait(lambda: len(answers) == 1, 5)
        proxy.cut()
        raw_write(database_url(), table, "caught-up", b"", {})
        proxy.restore()
        assert _wait(lambda: len(answers) == 2, 8)
        assert [(key, ok) for key, ok, _ in answers] == [("steady", True), ("caught-up", True)]
        assert all(seconds < 0.5 for _, _, seconds in answers), answers


# --- the store's own writes -------------------------------------------------------------


def test_own_writes_come_once_and_local_while_listeners_churn(table: str) -> None:
    """Threads write through the store while other threads connect and disconnect
    listeners (each connect may start a catch-up from the log, which holds the store's
    own writes too): a steady listener gets each own write once, local, never remote."""
    manager = EventManager()
    stop = threading.Event()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        _writer(table) as writer,
    ):
        steady = Recorder(manager, StoreSetEvent)

        def churn() -> None:
            while not stop.is_set():
                recorder = Recorder(manager, StoreModificationEvent)
                time.sleep(0.002)
                recorder.stop()
                # now and then nobody but the steady one listens
                steady.stop()
                steady_again = Recorder(manager, StoreSetEvent)
                steady_again.stop()
                manager.connect(StoreSetEvent, steady.record)

        def own(prefix: str) -> None:
            for i in range(40):
                store.set(f"{prefix}{i}", (b"", {}))

        churners = [threading.Thread(target=churn) for _ in range(2)]
        writers = [threading.Thread(target=own, args=(p,)) for p in ("a", "b")]
        for thread in churners + writers:
            thread.start()
        for i in range(20):
            writer.set(f"other{i}", (b"", {}))
        for thread in writers:
            thread.join()
        stop.set()
        for thread in churners:
            thread.join()
        own_keys = {f"{p}{i}" for p in "ab" for i in range(40)}
        writer.set("end", (b"", {}))
        assert steady.wait_remote(["end"], 5)
        time.sleep(0.2)
        local = steady.local_keys()
        assert sorted(local) == sorted(own_keys), sorted(set(own_keys) - set(local))[:5]
        assert not own_keys & set(steady.remote_keys())


def test_a_listener_on_two_classes_disconnected_from_one_still_listens(table: str) -> None:
    manager = EventManager()
    with PostgresStore(database_url(), table, event_manager=manager), _writer(table) as writer:
        writer.set("k", (b"", {}))
        recorder = Recorder(manager, StoreSetEvent)
        manager.connect(StoreDeleteEvent, recorder.record)
        manager.connect(StoreDeleteEvent, recorder.record)  # replaces, not a second one
        recorder.stop()  # still connected to StoreDeleteEvent
        writer.delete("k")
        assert recorder.wait_remote(["k"], 5), recorder.events
        manager.disconnect(StoreDeleteEvent, recorder.record)
        assert _wait(lambda: _listening_sessions() == 0, 5)


def test_a_forked_child_writing_through_the_inherited_store_is_remote_for_the_parent(
    table: str,
) -> None:
    """The child writes through the store object it inherited; for the parent's listener
    that is another process's write: remote, once."""
    manager = EventManager()
    recorder = Recorder(manager)
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        assert store.wait_listening(5)

        def child() -> Any:
            store.set("by-child", (b"", {}))
            store.delete("by-child")
            return store.origin

        child_origin = _in_child(child)
        assert child_origin != store.origin
        assert recorder.wait_remote(["by-child"], 5), recorder.events
        assert _wait(lambda: len(recorder.events) >= 2, 5)
        time.sleep(0.2)
        assert [(e[0], e[1], e[2]) for e in recorder.events] == [
            ("set", "by-child", True),
            ("delete", "by-child", True),
        ]


# --- two listeners connecting at once ---------------------------------------------------


def _connect_and_write(
    manager: EventManager, table: str, key: str, conn: psycopg.Connection[Any]
) -> Recorder:
    """Connect a listener, then at once commit *key* with plain SQL on *conn*."""
    recorder = Recorder(manager)
    text = json.dumps({})
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (key, version, size, created, modified, metadata, meta, data) "
            "VALUES (%s, 1, 0, 0, 0, %s, %s::jsonb, '')"
        ).format(sql.Identifier(table)),
        [key, text, text],
    )
    return recorder


def test_listeners_connecting_at_once_from_many_threads(table: str) -> None:
    """Eight threads, each: connect a listener, commit a key of its own at once (plain
    SQL), wait for it, disconnect; 15 rounds. No listener misses its key."""
    manager = EventManager()
    problems: list[str] = []
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))
        barrier = threading.Barrier(8)

        def worker(index: int) -> None:
            with psycopg.connect(database_url(), autocommit=True) as conn:
                for round_ in range(15):
                    barrier.wait(10)
                    key = f"t{index}/{round_}"
                    recorder = _connect_and_write(manager, table, key, conn)
                    if not recorder.wait_remote([key], 5):
                        problems.append(key)
                    recorder.stop()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not problems, problems


def test_a_second_listener_connecting_while_the_first_one_reads_the_position(
    table: str, proxy: Proxy
) -> None:
    """The store's way to the server is slow (0.3 s a chunk). Thread A connects the
    first listener (the store reads the log position: slow); meanwhile thread B connects
    a second listener and, once its connect() returned, commits a key directly. B must
    get it."""
    manager = EventManager()
    with PostgresStore(_through(proxy), table, event_manager=manager, timeout=10) as store:
        store.set("warm", (b"", {}))
        proxy.delay = 0.3
        held: list[Recorder] = []
        first = threading.Thread(target=lambda: held.append(Recorder(manager)))
        first.start()
        time.sleep(0.1)  # A is inside its connect(), waiting for the position
        with psycopg.connect(database_url(), autocommit=True) as conn:
            second = _connect_and_write(manager, table, "after-b", conn)
        first.join(10)
        proxy.delay = 0.0
        assert store.wait_listening(10)
        raw_write(database_url(), table, "later", b"", {})
        assert second.wait_remote(["later"], 10), second.events
        time.sleep(0.2)
        assert second.remote_keys() == ["after-b", "later"], second.events


# --- more hostile writers and managers -----------------------------------------------


def test_renames_truncates_and_a_big_batch_right_after_connect(table: str) -> None:
    """Plain SQL renames a key and truncates the table, and a store commits 500 keys in
    one transaction, all right after the first listener connected: every change comes,
    once, in commit order."""
    manager = EventManager()
    hostile = 'clé "\\x00?" / 🗝'
    with PostgresStore(database_url(), table, event_manager=manager), _writer(table) as writer:
        writer.set("a", (b"", {}))
        recorder = Recorder(manager)
        batch = [f"b{i:03}" for i in range(500)]
        writer.multiset(batch, [(b"", {"i": i}) for i in range(500)])
        rename = sql.SQL("UPDATE {} SET key = %s WHERE key = 'a'")
        _sql(rename.format(sql.Identifier(table)), hostile)
        _sql(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        writer.set("end", (b"", {}))
        assert recorder.wait_remote(["end"], 10), recorder.events[-3:]
        time.sleep(0.2)
        got = [(e[0], e[1]) for e in recorder.events]
        assert got[:500] == [("set", k) for k in batch]
        assert got[500:502] == [("delete", "a"), ("set", hostile)]
        assert sorted(got[502:-1]) == sorted([("delete", k) for k in [*batch, hostile]])
        assert got[-1] == ("set", "end")
        assert all(e[2] is True for e in recorder.events)


def test_a_steady_listener_with_a_tiny_change_log_and_large_payloads(table: str) -> None:
    """Another store object tidies the log down to one change every 20 ms; changes whose
    metadata does not fit a NOTIFY payload are written quickly, faster than a slow
    handler (20 ms an event) takes them. A listener connected all along, which never
    lost its connection, gets all of them, or the store counts the gap (never silent:
    such a change is only in the log, which keeps one)."""
    manager = EventManager()
    big = {"pad": "p" * 9000}
    recorder = Recorder(manager)
    manager.connect(StoreModificationEvent, lambda event: time.sleep(0.02))
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        PostgresStore(
            database_url(), table, change_log_size=1, maintenance_interval=0.02
        ) as tidier,
    ):
        assert store.wait_listening(5)
        keys = [f"k{i}" for i in range(40)]
        for key in keys:
            tidier.set(key, (b"", big))
        complete = recorder.wait_remote(keys, 4)
        assert complete or store.event_gaps > 0, sorted(set(keys) - set(recorder.remote_keys()))


def test_a_handler_that_disconnects_the_store(table: str) -> None:
    """A handler (on the listener thread) disconnects the store: that neither hangs nor
    leaves the store unusable; connected again, it delivers to the listener again."""
    manager = EventManager()
    store = PostgresStore(database_url(), table, event_manager=manager)
    done = threading.Event()
    errors: list[BaseException] = []

    def closer(event: Any) -> None:
        try:
            store.disconnect()
        except BaseException as exc:
            errors.append(exc)
        done.set()

    manager.connect(StoreModificationEvent, closer)
    store.connect()
    try:
        raw_write(database_url(), table, "first", b"", {})
        assert done.wait(10), "disconnect from a handler hung"
        assert not errors, errors
        assert not store.is_connected()
        manager.disconnect(StoreModificationEvent, closer)
        store.connect()
        recorder = Recorder(manager)
        raw_write(database_url(), table, "second", b"", {})
        assert recorder.wait_remote(["second"], 5), recorder.events
    finally:
        store.disconnect()


def test_store_reconnected_while_threads_churn_listeners(table: str) -> None:
    """Threads connect and disconnect listeners while the store is disconnected and
    connected five times; afterwards a listener still gets what is written."""
    manager = EventManager()
    stop = threading.Event()
    errors: list[BaseException] = []
    store = PostgresStore(database_url(), table, event_manager=manager)

    def churn() -> None:
        try:
            while not stop.is_set():
                Recorder(manager).stop()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            store.connect()
            store.set("own", (b"", {}))
            store.disconnect()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    with store:
        recorder = Recorder(manager)
        raw_write(database_url(), table, "after", b"", {})
        assert recorder.wait_remote(["after"], 5), recorder.events


class _Silent(BaseEventManager):
    """A manager that cannot tell who listens (the BaseEventManager defaults)."""

    def __init__(self) -> None:
        self.inner = EventManager()

    def connect(self, cls: Any, func: Any, filter: Any = None, priority: int = 0) -> None:  # noqa: A002 - the API's name
        self.inner.connect(cls, func, filter, priority)

    def disconnect(self, cls: Any, func: Any) -> None:
        self.inner.disconnect(cls, func)

    def emit(self, event: Any, block: bool = True) -> Any:
        return self.inner.emit(event, block)

    def disable(self, cls: Any) -> None:
        self.inner.disable(cls)

    def enable(self, cls: Any) -> None:
        self.inner.enable(cls)

    def is_enabled(self, cls: Any) -> bool:
        return self.inner.is_enabled(cls)


def test_a_manager_that_cannot_tell_has_the_store_listen_all_the_time(table: str) -> None:
    manager = _Silent()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        assert store.wait_listening(5)
        got: list[str] = []
        manager.connect(StoreModificationEvent, lambda event: got.append(event.key))
        raw_write(database_url(), table, "k", b"", {})
        assert _wait(lambda: got == ["k"], 5), got


def test_the_default_manager_is_watched_too(table: str) -> None:
    """A store given no manager uses the process-wide one; a listener connected to it
    gets the change written right after."""
    from storekeeper.events import get_event_manager

    with PostgresStore(database_url(), table) as store:
        manager = get_event_manager()
        assert store.event_manager is manager
        recorder = Recorder(manager)  # type: ignore[arg-type]
        try:
            raw_write(database_url(), table, "k", b"", {})
            assert recorder.wait_remote(["k"], 5), recorder.events
        finally:
            recorder.stop()


def test_fork_while_another_thread_churns_listeners(table: str) -> None:
    """Fork while a parent thread connects and disconnects listeners without pause
    (whatever the store holds at that moment is inherited): each child connects a
    listener and gets its own plain SQL write, without hanging."""
    manager = EventManager()
    stop = threading.Event()
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        store.set("warm", (b"", {}))

        def churn() -> None:
            while not stop.is_set():
                Recorder(manager).stop()

        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for round_ in range(6):
                time.sleep(0.01 * round_)

                def child(key: str = f"c{round_}") -> Any:
                    recorder = Recorder(manager)
                    raw_write(database_url(), table, key, b"", {})
                    return recorder.wait_remote([key], 8)

                assert _in_child(child, timeout=12) is True, round_
        finally:
            stop.set()
            thread.join(10)
