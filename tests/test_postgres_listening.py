"""PostgresStore listens for other writers' changes only while someone listens to its
events: what an event listener connected at any moment receives, and that a store nobody
listens to is not woken by every write (checked through the server's own view)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from _pg_harness import database_url, drop_database, table_for
from storekeeper.backends.postgres import PostgresStore
from storekeeper.events import BaseEvent, EventManager
from storekeeper.store import StoreModificationEvent, StoreSetEvent

pytestmark = [pytest.mark.service, pytest.mark.postgres]


@pytest.fixture(scope="module", autouse=True)
def _session_database() -> Iterator[None]:
    yield
    drop_database()


@pytest.fixture
def table(tmp_path: Path) -> str:
    return table_for(str(tmp_path))


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _sessions_whose_last_statement_was(store: PostgresStore, what: str) -> int:
    """How many open server sessions of this database last ran *what* (``LISTEN`` or
    ``UNLISTEN``) on the store's channel: the server's view, not the store's."""
    channel = store._schema.channel
    with psycopg.connect(database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = %s",
            [f'{what} "{channel}"'],
        ).fetchone()
    assert row is not None
    return int(row[0])


class Recorder:
    """An event listener keeping the keys of the remote events it receives."""

    def __init__(self, manager: EventManager, cls: type[BaseEvent] = StoreModificationEvent):
        self.keys: list[str] = []
        self.events: list[Any] = []
        self.manager, self.cls = manager, cls
        manager.connect(cls, self.record)

    def record(self, event: Any) -> None:
        if event.remote:
            self.keys.append(event.key)
            self.events.append(event)

    def stop(self) -> None:
        self.manager.disconnect(self.cls, self.record)


def test_nobody_listening_means_no_listening_session(table: str) -> None:
    with PostgresStore(database_url(), table, event_manager=EventManager()) as store:
        assert store.wait_listening(5)  # nothing to wait for
        with PostgresStore(database_url(), table, listen=False) as writer:
            writer.set("k", (b"", {}))
        time.sleep(0.3)
        assert _sessions_whose_last_statement_was(store, "LISTEN") == 0


def test_a_listener_connected_later_gets_every_change_after_it_connected(table: str) -> None:
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        PostgresStore(database_url(), table, listen=False) as writer,
    ):
        writer.set("before", (b"", {}))
        for round_ in range(3):
            recorder = Recorder(manager)
            keys = recorder.keys
            # Written at once, most likely before the thread listens: the cursor read
            # when the listener connected must still bring them.
            expected = [f"r{round_}/{i}" for i in range(20)]
            for key in expected:
                writer.set(key, (b"", {}))
            assert _wait(lambda k=keys, e=expected: len(k) >= len(e)), keys
            time.sleep(0.2)
            assert keys == expected  # nothing from before, nothing twice, in order
            assert store.wait_listening(5)
            recorder.stop()
            # Nobody listens: the session stops listening.
            assert _wait(lambda: _sessions_whose_last_statement_was(store, "UNLISTEN") == 1)
            writer.set(f"unheard{round_}", (b"", {}))


def test_a_listener_of_a_base_class_counts(table: str) -> None:
    manager = EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        PostgresStore(database_url(), table, listen=False) as writer,
    ):
        recorder = Recorder(manager, BaseEvent)  # held: the manager holds it weakly
        writer.set("a", (b"", {}))
        assert _wait(lambda: recorder.keys == ["a"]), recorder.keys
        assert store.wait_listening(5)


def test_a_listener_of_an_unrelated_class_does_not_start_listening(table: str) -> None:
    class Unrelated(BaseEvent):
        pass

    manager = EventManager()
    manager.connect(Unrelated, lambda event: None)
    with PostgresStore(database_url(), table, event_manager=manager) as store:
        time.sleep(0.3)
        assert _sessions_whose_last_statement_was(store, "LISTEN") == 0
        recorder = Recorder(manager, StoreSetEvent)
        assert store.wait_listening(5)
        with PostgresStore(database_url(), table, listen=False) as writer:
            writer.set("b", (b"", {}))
        assert _wait(lambda: recorder.keys == ["b"]), recorder.keys


def test_listeners_coming_and_going_from_threads_never_get_a_change_twice(table: str) -> None:
    manager = EventManager()
    stop = threading.Event()
    with (
        PostgresStore(database_url(), table, event_manager=manager),
        PostgresStore(database_url(), table, listen=False) as writer,
    ):
        recorder = Recorder(manager)
        steady = recorder.keys

        def churn() -> None:
            while not stop.is_set():
                func = lambda event: None  # noqa: E731 - a fresh listener each time
                manager.connect(StoreSetEvent, func)
                manager.disconnect(StoreSetEvent, func)

        threads = [threading.Thread(target=churn) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            expected = [f"k{i}" for i in range(100)]
            for key in expected:
                writer.set(key, (b"", {}))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert _wait(lambda: len(steady) >= len(expected)), steady
        time.sleep(0.2)
        assert steady == expected


def test_the_log_is_tidied_while_nobody_listens(table: str) -> None:
    with (
        PostgresStore(
            database_url(),
            table,
            change_log_size=5,
            maintenance_interval=0.2,
            event_manager=EventManager(),
        ) as store,
    ):
        for i in range(30):
            store.set(f"k{i}", (b"", {}))

        def logged() -> int:
            with psycopg.connect(database_url(), autocommit=True) as conn:
                row = conn.execute(
                    store._schema.compose("SELECT count(*) FROM {changes}"), []
                ).fetchone()
            assert row is not None
            return int(row[0])

        assert _wait(lambda: logged() <= 5), logged()


# With this metadata the whole change fits a payload up to a pad of about 7,690
# characters (the escaped metadata is longer than the pad): both forms are covered.
@pytest.mark.parametrize("pad", [0, 7_600, 7_660, 7_680, 7_700, 7_720, 7_800])
def test_remote_events_carry_exact_changes_around_the_payload_limit(
    table: str, pad: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes announce their change whole when it fits a NOTIFY payload and by id
    otherwise; either way another store object's listener gets exactly what was
    written (hostile text included), without a hitch (a listener that fails on a
    payload recovers from the log, so the log must stay quiet), and the writer's own
    listener nothing remote."""
    metadata = {"pad": "x" * pad, "q": 'a"b\\c\u00e9\u4e2d\U0001f600', "n": [1, 2.5, None]}
    key = 'k\u00e9y "\\ \U0001f600'
    manager, own = EventManager(), EventManager()
    with (
        PostgresStore(database_url(), table, event_manager=manager) as store,
        PostgresStore(database_url(), table, event_manager=own) as writer,
    ):
        remote, mine = Recorder(manager), Recorder(own)
        assert store.wait_listening(5) and writer.wait_listening(5)
        writer.set(key, (b"v", metadata))
        writer.set_metadata(key, {**metadata, "m": 1})
        writer.update_metadata(key, {"u": 2})
        writer.set_data(key, b"w")  # keeps the metadata: announced by the server
        assert _wait(lambda: len(remote.events) == 4), remote.events
        time.sleep(0.2)
        final = {**metadata, "m": 1, "u": 2}
        assert [(e.key, e.metadata) for e in remote.events] == [
            (key, metadata),
            (key, {**metadata, "m": 1}),
            (key, final),
            (key, final),
        ]
        versions = [e.version for e in remote.events]
        assert versions[-1] == store.get(key).version and len(set(versions)) == 4
        assert mine.events == []  # its own writes never come back as remote
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []
