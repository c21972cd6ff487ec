"""StaticURLStore: the read-only conformance suite over HTTP and ``file:`` URLs, polling,
change events, authentication, hostile indexes and opening by URL."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _static_server import StaticServer, export_values
from storekeeper.backends.static import StaticURLStore, layout_problem
from storekeeper.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CorruptFileError,
    InvalidURLError,
    KeyNotFoundError,
    ReadOnlyStoreError,
)
from storekeeper.events import EventManager
from storekeeper.store import StoreModificationEvent, open_read_only_store, open_store
from storekeeper.testing.readonly import ReadOnlyStoreTests, Values


class TestStaticOverHTTP(ReadOnlyStoreTests):
    """Exports served by a plain http.server (which ignores Range: ranges are cut here)."""

    @pytest.fixture(autouse=True)
    def _server(self, tmp_path: Path) -> Iterator[None]:
        with StaticServer(tmp_path) as server:
            self.server = server
            yield

    def publish(
        self, tmp_path: Path, event_manager: EventManager, values: Values
    ) -> StaticURLStore:
        export_values(tmp_path, values)
        relative = tmp_path.relative_to(self.server.root).as_posix()
        return StaticURLStore(self.server.url + relative, poll=0, event_manager=event_manager)

    def republish(self, store: object, values: Values) -> None:
        assert isinstance(store, StaticURLStore)
        relative = store.root_url.removeprefix(self.server.url)
        export_values(self.server.root / relative, values)
        store.update_index()

    def holds(self, key: str) -> bool:
        return layout_problem(key) is None


class TestStaticOverFile(TestStaticOverHTTP):
    """The same exports read as ``file:`` URLs."""

    def publish(
        self, tmp_path: Path, event_manager: EventManager, values: Values
    ) -> StaticURLStore:
        export_values(tmp_path, values)
        return StaticURLStore(tmp_path.as_uri(), poll=0, event_manager=event_manager)

    def republish(self, store: object, values: Values) -> None:
        assert isinstance(store, StaticURLStore)
        export_values(Path(store.root_url.removeprefix("file://")), values)
        store.update_index()


# -- what only the static store does ---------------------------------------------------------
@pytest.fixture
def served(tmp_path: Path) -> Iterator[StaticServer]:
    export_values(tmp_path / "site", {"a": (b"A", {"n": 1}), "dir/b": (b"B", {"n": 2})})
    with StaticServer(tmp_path / "site") as server:
        yield server


def test_polling_thread_sees_changes_and_stops_on_disconnect(
    served: StaticServer, tmp_path: Path
) -> None:
    manager = EventManager()
    seen: list[StoreModificationEvent] = []
    arrived = threading.Event()

    def record(event: StoreModificationEvent) -> None:
        seen.append(event)
        arrived.set()

    manager.connect(StoreModificationEvent, record)
    store = StaticURLStore(served.url, poll=0.05, event_manager=manager)
    store.connect()
    poller = next(t for t in threading.enumerate() if t.name == "StaticURLStore-poll")
    assert poller.daemon
    export_values(tmp_path / "site", {"a": (b"A", {"n": 1}), "c": (b"C", {})})
    assert arrived.wait(30), "the polling thread never reported the change"
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted((type(e).__name__, e.key) for e in seen) == [
        ("StoreDeleteEvent", "dir/b"),
        ("StoreSetEvent", "c"),
    ]
    started = time.monotonic()
    store.disconnect()
    assert time.monotonic() - started < 10  # not the poll interval, nor the stuck request
    poller.join(timeout=5)
    assert not poller.is_alive()


def test_disconnect_is_prompt_with_the_default_poll(served: StaticServer) -> None:
    store = StaticURLStore(served.url)  # polls every 300 s
    store.connect()
    started = time.monotonic()
    store.disconnect()
    assert time.monotonic() - started < 10  # not the poll interval, nor the stuck request
    assert not any(t.name == "StaticURLStore-poll" for t in threading.enumerate())


def test_disconnect_does_not_wait_for_a_stuck_poll(served: StaticServer, tmp_path: Path) -> None:
    manager = EventManager()
    seen: list[StoreModificationEvent] = []
    manager.connect(StoreModificationEvent, seen.append)
    store = StaticURLStore(served.url, poll=0.01, event_manager=manager)
    store.connect()
    served.hold_index.set()
    assert served.index_waiting.wait(30), "the poller never asked for the index again"
    export_values(tmp_path / "site", {"changed": (b"", {})})
    started = time.monotonic()
    store.disconnect()
    assert time.monotonic() - started < 10  # not the poll interval, nor the stuck request
    served.hold_index.clear()  # the stuck request now answers, after the disconnect
    poller = [t for t in threading.enumerate() if t.name == "StaticURLStore-poll"]
    for thread in poller:
        thread.join(timeout=30)
    assert seen == []  # what the abandoned request read was dropped
    assert not store.is_connected()


def test_version_of_follows_data_and_metadata(served: StaticServer, tmp_path: Path) -> None:
    with StaticURLStore(served.url, poll=0) as store:
        first = store.version_of("a")
        assert first == store.get("a").version == store.version_of("a")
        assert store.version_of("dir/b") != first
        export_values(tmp_path / "site", {"a": (b"A", {"n": 2}), "dir/b": (b"B", {"n": 2})})
        store.update_index()
        assert store.version_of("a") != first


def test_a_query_iterated_slowly_blocks_no_update(served: StaticServer, tmp_path: Path) -> None:
    with StaticURLStore(served.url, poll=0) as store:
        listing = store.list_keys()
        assert next(listing) == "a"
        export_values(tmp_path / "site", {"z": (b"", {})})
        finished = threading.Event()
        worker = threading.Thread(target=lambda: (store.update_index(), finished.set()))
        worker.start()
        assert finished.wait(30), "update_index waited for a suspended listing"
        assert list(listing) == ["dir/b"]  # the listing keeps the index it started on
        assert store.query_keys() == ["z"]


def test_credentials_are_sent(tmp_path: Path) -> None:
    export_values(tmp_path, {"k": (b"secret", {})})
    with StaticServer(tmp_path, credentials="ali:open sesame") as server:
        with pytest.raises(AuthenticationError):
            StaticURLStore(server.url, poll=0).connect()
        store = StaticURLStore(server.url, poll=0)
        with pytest.raises(AuthenticationError):
            store.connect({"username": "ali", "password": "wrong"})
        store.connect({"username": "ali", "password": "open sesame"})
        try:
            assert store.to_bytes("k") == b"secret"
        finally:
            store.disconnect()


def test_a_range_is_asked_for_end_exclusive(served: StaticServer) -> None:
    with StaticURLStore(served.url, poll=0) as store:
        served.requests.clear()
        with store.get_data_range("a", 0, 1) as stream:
            assert stream.read() == b"A"
        assert re.fullmatch(r"GET /generations/[^/]+/data/a", served.requests[-1])


def test_keys_are_quoted_per_segment(tmp_path: Path) -> None:
    keys = ["sp ace/q?#%41+", "é/ü", "back\\slash"]
    export_values(tmp_path, {key: (key.encode(), {}) for key in keys})
    assert (tmp_path / "data" / "sp ace" / "q?#%41+").read_bytes() == keys[0].encode()
    with StaticServer(tmp_path) as server, StaticURLStore(server.url, poll=0) as store:
        for key in keys:
            assert store.to_bytes(key) == key.encode()
        wanted = r"GET /generations/[^/]+/data/sp%20ace/q%3F%23%2541%2B"
        assert any(re.fullmatch(wanted, line) for line in server.requests)


@pytest.mark.parametrize("hostile", ["../outside", "a/../../outside", "/etc/passwd", "", "a//b"])
def test_hostile_index_keys_never_leave_the_root(tmp_path: Path, hostile: str) -> None:
    (tmp_path / "outside").write_bytes(b"not yours")
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "index.json").write_text(json.dumps({hostile: {}, "ok": {}}))
    (site / "data" / "ok").write_bytes(b"fine")
    with StaticURLStore(site.as_uri(), poll=0) as store:
        assert store.query_keys() == ["ok"]
        assert store.to_bytes("ok") == b"fine"
        if hostile:
            with pytest.raises(KeyNotFoundError):
                store.to_bytes(hostile)


@pytest.mark.parametrize(
    "index", [b"[1, 2]", b"{not json", b'{"k": [1]}', b'{"k": {"v": NaN}}', b"\xff"]
)
def test_a_broken_index_is_a_clear_error(tmp_path: Path, index: bytes) -> None:
    (tmp_path / "index.json").write_bytes(index)
    with pytest.raises(CorruptFileError, match=r"index\.json"):
        StaticURLStore(tmp_path.as_uri(), poll=0).connect()


@pytest.mark.parametrize(
    "generation",
    [b"[]", b"{}", b'{"generation": 7}', b'{"generation": ".."}', b'{"generation": "a/../.."}'],
)
def test_a_broken_generation_file_is_a_clear_error(tmp_path: Path, generation: bytes) -> None:
    export_values(tmp_path, {"k": (b"v", {})})
    (tmp_path / "generation.json").write_bytes(generation)
    with pytest.raises(CorruptFileError, match=r"generation\.json"):
        StaticURLStore(tmp_path.as_uri(), poll=0).connect()


def test_a_host_forbidding_the_generation_file_is_read_without_generations(
    tmp_path: Path,
) -> None:
    export_values(tmp_path, {"k": (b"v", {"n": 1})})
    (tmp_path / "index.json").write_bytes(b'{"k": {"n": 2}}')  # tells the two apart
    with StaticServer(tmp_path) as server:
        server.forbidden.add("/generation.json")  # as a bucket answers for a missing file
        with StaticURLStore(server.url, poll=0) as store:
            assert store.get_metadata("k") == {"n": 2}
            assert store.to_bytes("k") == b"v"
        assert "GET /data/k" in server.requests


def test_a_missing_host_or_index(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError):
        StaticURLStore(tmp_path.as_uri(), poll=0).connect()
    with StaticServer(tmp_path) as server, pytest.raises(BackendUnavailableError):
        StaticURLStore(server.url, poll=0).connect()


def test_a_key_whose_data_file_is_missing(served: StaticServer, tmp_path: Path) -> None:
    with StaticURLStore(served.url, poll=0) as store:
        for name in (tmp_path / "site").glob("**/data/a"):
            name.unlink()
        assert store.exists("a")  # the index says so
        with pytest.raises(KeyNotFoundError):
            store.get("a")


def test_open_by_url(served: StaticServer, tmp_path: Path) -> None:
    base = served.url.removeprefix("http://")
    for url in (
        f"http+static://{base}?poll=0",
        f"http://{base}?static=true&poll=0",
        f"http://{base}?poll=0&static=yes",
    ):
        with open_read_only_store(url) as store:
            assert isinstance(store, StaticURLStore)
            assert store.to_bytes("dir/b") == b"B"
            assert store.poll == 0
    with open_read_only_store(f"file+static://{(tmp_path / 'site').as_posix()}?poll=0") as store:
        assert store.get_metadata("a") == {"n": 1}
    with pytest.raises(InvalidURLError, match="valid options"):
        open_read_only_store(f"http+static://{base}?pol=1")
    with pytest.raises(InvalidURLError, match="static=true"):
        open_read_only_store(f"http+static://{base}?static=false")
    with pytest.raises(InvalidURLError, match="unknown"):
        open_read_only_store(f"http://{base}?static=yes&pol=1")
    for url in (f"http+static://{base}?poll=0", f"http://{base}?static=true&poll=0"):
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            open_store(url)
