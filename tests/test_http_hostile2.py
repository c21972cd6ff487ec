"""Hostile tests (session 24): static export generations and the server's login limits.

Written from the documentation only (README "Serve a store over HTTP" and "Static
exports", the docstrings of storekeeper.server, storekeeper.export and
storekeeper.backends.static). Interleavings are forced through hooks a user has: a
static host (http.server) that runs a re-export before answering a chosen request, a
password hasher that blocks until released, an ASGI wrapper that counts arrivals, and
the server's injectable clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import storekeeper
from storekeeper import open_store
from storekeeper.backends.static import ExportReplacedError, StaticURLStore
from storekeeper.composite.auth import SimpleAuthStore, make_encoder
from storekeeper.errors import InvalidKeyError, StorekeeperError
from storekeeper.events import EventManager
from storekeeper.export import NotAnExportError, export_static
from storekeeper.server import ServerThread, create_app
from storekeeper.store import open_read_only_store
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent

SRC = str(Path(storekeeper.__file__).resolve().parents[1])

# --------------------------------------------------------------------------------------
# static exports: helpers


class HookedHandler(http.server.SimpleHTTPRequestHandler):
    """A static host that can run a callable before answering a matching request."""

    hooks: ClassVar[list[tuple[Callable[[str, str], bool], Callable[[], None]]]] = []
    seen: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _hook(self) -> None:
        type(self).seen.append((self.command, self.path))
        for hook in list(type(self).hooks):
            predicate, action = hook
            if predicate(self.command, self.path):
                type(self).hooks.remove(hook)
                action()

    def do_GET(self) -> None:
        self._hook()
        super().do_GET()

    def do_HEAD(self) -> None:
        self._hook()
        super().do_HEAD()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[str, type[HookedHandler]]]:
    """An http.server over tmp_path/site with hooks: (root URL, handler class)."""
    site = tmp_path / "site"
    handler = type("Handler", (HookedHandler,), {"hooks": [], "seen": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    finally:
        server.shutdown()
        server.server_close()


def memory_store(items: dict[str, tuple[bytes, dict[str, Any]]]) -> Any:
    store = open_store("memory://")
    for key, value in items.items():
        store.set(key, value)
    return store


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under *directory* (generation name replaced by GEN) -> file bytes."""
    gen = json.loads((directory / "generation.json").read_text())["generation"]
    out: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(base) / name
            rel = str(path.relative_to(directory)).replace(gen, "GEN")
            out[rel] = path.read_bytes().replace(gen.encode(), b"GEN") if path.is_file() else None
    return out


def file_reader(site: Path, **kw: Any) -> StaticURLStore:
    reader = StaticURLStore(site.as_uri() + "/", poll=0, **kw)
    reader.connect()
    return reader


# --------------------------------------------------------------------------------------
# static exports: layout, re-export, keys


def test_export_top_level_files_match_the_generation(tmp_path: Path) -> None:
    store = memory_store({"a/b/c": (b"abc", {"n": "\u00e9"}), "z": (b"", {})})
    site = tmp_path / "site"
    assert export_static(store, site).exported == 2
    gen = json.loads((site / "generation.json").read_text())["generation"]
    assert os.listdir(site / "generations") == [gen]
    top = (site / "index.json").read_bytes()
    assert top == (site / "generations" / gen / "index.json").read_bytes()
    assert top.isascii()
    assert json.loads(top) == {"a/b/c": {"n": "\u00e9"}, "z": {}}
    for key in ("a/b/c", "z"):
        assert (site / "data" / key).read_bytes() == (
            site / "generations" / gen / "data" / key
        ).read_bytes()
        assert (site / "data" / key).stat().st_ino == (
            site / "generations" / gen / "data" / key
        ).stat().st_ino


def test_reexport_equals_a_fresh_export(tmp_path: Path) -> None:
    store = memory_store(
        {k: (k.encode() * 2, {"k": k}) for k in ["a/b/c", "a/x", "z", "gone/deep/key"]}
    )
    export_static(store, tmp_path / "re")
    store.delete("gone/deep/key")
    store.set("a/x", (b"new", {"k": 2}))
    store.set("new", (b"", {}))
    export_static(store, tmp_path / "re")
    export_static(store, tmp_path / "fresh")
    assert tree(tmp_path / "re") == tree(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["fresh", "re"]  # no temporary leftovers


def test_unlayable_keys_are_refused_by_name_and_nothing_is_written(tmp_path: Path) -> None:
    long_segment = "\u00e9" * 128  # 256 bytes of UTF-8
    bad = ["a", "p//q", "x/./y", "x/../y", long_segment]
    store = memory_store({k: (b"v", {}) for k in [*bad, "a/b", "ok"]})
    with pytest.raises(InvalidKeyError) as info:
        export_static(store, tmp_path / "site")
    for key in bad:
        assert repr(key) in str(info.value)
    assert not (tmp_path / "site").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export_static(store, tmp_path / "site", skip_invalid=True)
    assert sorted(summary.skipped) == sorted(bad) and summary.exported == 2
    assert any("'p//q'" in str(w.message) for w in caught)
    reader = file_reader(tmp_path / "site")
    assert sorted(reader.list_keys()) == ["a/b", "ok"]


def test_a_directory_that_is_not_an_export_is_left_untouched(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "index.json").write_text("{}")
    (site / "precious.txt").write_text("keep me")
    with pytest.raises(NotAnExportError):
        export_static(memory_store({"k": (b"v", {})}), site)
    assert sorted(os.listdir(site)) == ["data", "index.json", "precious.txt"]
    assert (site / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["site"]


HOSTILE_KEYS = [
    "sp ace",
    "q?x",
    "h#y",
    "pc%41",
    "%2e%2e",
    "plus+",
    "uni/\u00e9",
    "back\\slash",
    "nl\nx",
    "cr\rx",
    "index.json",
    "generation.json",
    "generations",
    ".hidden",
    "..x",
    "amp&x=1",
    "\u2028",
]


def test_hostile_keys_round_trip_over_file_and_http(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, _ = host
    store = memory_store({k: (k.encode(), {"k": k}) for k in HOSTILE_KEYS})
    export_static(store, tmp_path / "site")
    for root in (
        f"file+static://{tmp_path / 'site'}?poll=0",
        url.replace("http", "http+static") + "?poll=0",
    ):
        reader = open_read_only_store(root)
        try:
            assert sorted(reader.list_keys()) == sorted(HOSTILE_KEYS)
            for key in HOSTILE_KEYS:
                assert reader.to_bytes(key) == key.encode(), (root, key)
                assert reader.get(key).metadata == {"k": key}
        finally:
            reader.disconnect()


# --------------------------------------------------------------------------------------
# static exports: reads that meet a re-export


def reexporter(store: Any, site: Path, data: bytes, gen: int) -> Callable[[], None]:
    def run() -> None:
        store.set("k", (data, {"gen": gen, "sha": hashlib.sha256(data).hexdigest()}))
        export_static(store, site, durable=False)

    return run


def test_get_that_meets_a_reexport_starts_again_from_one_export(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, handler = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"0123456789", 1)()
    reader = StaticURLStore(url, poll=0)
    reader.connect()
    # the index was read from export 1; export 2 replaces it before the data's HEAD
    handler.hooks.append((lambda c, p: "/data/" in p, reexporter(store, site, b"A" * 20, 2)))
    value = reader.get("k")
    with value.data as stream:
        data = stream.read()
    assert value.metadata["gen"] == 2 and value.size == 20 and data == b"A" * 20
    assert value.version == reader.version_of("k")


def test_range_that_meets_a_reexport_between_head_and_get(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, handler = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"0123456789", 1)()
    reader = StaticURLStore(url, poll=0)
    reader.connect()
    handler.hooks.append(
        (lambda c, p: c == "GET" and "/data/" in p, reexporter(store, site, b"xyz", 2))
    )
    with reader.get_data_range("k", 2, None) as stream:
        assert stream.read() == b"z"  # all of export 2 from byte 2, not export 1's size
    handler.hooks.append(
        (
            lambda c, p: c == "GET" and "/data/" in p,
            reexporter(store, site, b"abcdefghijklmnopqrst", 3),
        )
    )
    with reader.get_data_range("k", 2, None) as stream:
        assert stream.read() == b"cdefghijklmnopqrst"


def test_endless_reexports_end_in_export_replaced_error(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, handler = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"first", 0)()
    reader = StaticURLStore(url, poll=0)
    reader.connect()
    count = [0]

    def always(command: str, path: str) -> bool:
        return "/data/" in path

    def again() -> None:
        count[0] += 1
        reexporter(store, site, b"n%d" % count[0], count[0])()
        handler.hooks.append((always, again))

    handler.hooks.append((always, again))
    with pytest.raises(ExportReplacedError):
        reader.get("k")
    handler.hooks.clear()
    assert 1 <= count[0] <= 6  # bounded: "5 times at most"


@pytest.mark.parametrize("over", ["file", "http"])
def test_value_read_after_reexport_raises_export_replaced(
    tmp_path: Path, host: tuple[str, type[HookedHandler]], over: str
) -> None:
    url, _ = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"old bytes", 1)()
    reader = file_reader(site) if over == "file" else StaticURLStore(url, poll=0)
    if over == "http":
        reader.connect()
    value = reader.get("k")
    reexporter(store, site, b"NEW BYTES!", 2)()
    with pytest.raises(ExportReplacedError):
        with value.data as stream:
            stream.read()
    with pytest.raises(ExportReplacedError):
        with value.range(0, 3) as stream:
            stream.read()
    fresh = reader.get("k")
    with fresh.data as stream:
        assert stream.read() == b"NEW BYTES!" and fresh.metadata["gen"] == 2


def test_to_bytes_that_meets_a_reexport_reads_the_new_export(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, handler = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"0123456789", 1)()
    reader = StaticURLStore(url, poll=0)
    reader.connect()
    handler.hooks.append(
        (lambda c, p: c == "GET" and "/data/" in p, reexporter(store, site, b"second", 2))
    )
    assert reader.to_bytes("k") == b"second"
    assert handler.hooks == []  # the re-export did happen in the middle of the read


def test_to_file_that_meets_a_reexport_reads_the_new_export(
    tmp_path: Path, host: tuple[str, type[HookedHandler]]
) -> None:
    url, handler = host
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"0123456789", 1)()
    reader = StaticURLStore(url, poll=0)
    reader.connect()
    handler.hooks.append(
        (lambda c, p: c == "GET" and "/data/" in p, reexporter(store, site, b"second", 2))
    )
    target = tmp_path / "copy"
    reader.to_file("k", target)  # README: "a read that meets a replaced export ... starts again"
    assert target.read_bytes() == b"second"


def test_reader_thread_never_mixes_exports_during_reexports(tmp_path: Path) -> None:
    site = tmp_path / "site"
    store = memory_store({})
    reexporter(store, site, b"start", 0)()
    reader = file_reader(site)
    stop = threading.Event()
    exports = [0]

    def exporter() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            reexporter(store, site, (b"%d;" % n) * (n % 50 + 1), n)()
            exports[0] = n

    thread = threading.Thread(target=exporter)
    thread.start()
    checked = 0
    deadline = time.monotonic() + 0.8
    try:
        while time.monotonic() < deadline or exports[0] < 3:
            try:
                value = reader.get("k")
                with value.data as stream:
                    data = stream.read()
            except ExportReplacedError:
                continue
            assert hashlib.sha256(data).hexdigest() == value.metadata["sha"]
            assert value.size == len(data)
            checked += 1
    finally:
        stop.set()
        thread.join()
    assert checked > 0 and exports[0] >= 3


def test_two_threads_exporting_into_one_directory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    stores = [
        memory_store(
            {f"d{i % 5}/k{i}": (f"{tag}:{i}".encode(), {"tag": tag, "i": i}) for i in range(40)}
        )
        for tag in "AB"
    ]
    export_static(stores[0], site, durable=False)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(store: Any) -> None:
        for _ in range(8):
            barrier.wait()
            try:
                export_static(store, site, durable=False)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.listdir(tmp_path) == ["site"]
    reader = file_reader(site)
    tags = set()
    for key in reader.list_keys():
        value = reader.get(key)
        tags.add(value.metadata["tag"])
        with value.data as stream:
            assert stream.read() == f"{value.metadata['tag']}:{value.metadata['i']}".encode()
    assert len(tags) == 1 and len(list(reader.list_keys())) == 40


EXPORTER = """
import sys
from storekeeper import open_store
from storekeeper.export import NotAnExportError, export_static
tag = sys.argv[2]
st = open_store("memory://")
for i in range(100):
    st.set(f"d{i % 7}/k{i}", (f"{tag}:{i}".encode() * 3, {"tag": tag, "i": i}))
sys.stdout.write("ready\\n"); sys.stdout.flush()
export_static(st, sys.argv[1])
sys.stdout.write("done\\n"); sys.stdout.flush()
"""


def check_whole_export(site: Path, tags: set[str]) -> str:
    reader = open_read_only_store(f"file+static://{site}?poll=0")
    try:
        keys = list(reader.list_keys())
        seen = set()
        for key in keys:
            value = reader.get(key)
            seen.add(value.metadata["tag"])
            with value.data as stream:
                assert (
                    stream.read() == f"{value.metadata['tag']}:{value.metadata['i']}".encode() * 3
                )
        assert len(keys) == 100 and len(seen) == 1 and seen <= tags
    finally:
        reader.disconnect()
    gen = json.loads((site / "generation.json").read_text())["generation"]
    top = json.loads((site / "index.json").read_text())
    assert top == json.loads((site / "generations" / gen / "index.json").read_text())
    for key in top:
        assert (site / "data" / key).read_bytes() == (
            site / "generations" / gen / "data" / key
        ).read_bytes()
    return seen.pop()


@pytest.mark.parametrize("delay", [0.0, 0.08, 0.2])
def test_sigkilled_export_leaves_old_or_new_whole(tmp_path: Path, delay: float) -> None:
    site = tmp_path / "site"
    store = memory_store(
        {f"d{i % 7}/k{i}": (f"OLD:{i}".encode() * 3, {"tag": "OLD", "i": i}) for i in range(100)}
    )
    export_static(store, site, durable=False)
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, str(site), "NEW"], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(delay)  # the crash point: somewhere in a durable export of 100 keys
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    check_whole_export(site, {"OLD", "NEW"})
    # the next export cleans up what the killed one left and equals a fresh one
    export_static(store, site, durable=False)
    assert check_whole_export(site, {"OLD"}) == "OLD"
    assert os.listdir(tmp_path) == ["site"]


# --------------------------------------------------------------------------------------
# static exports: hostile files


def hostile_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "index.json").write_text('{"k": {}}')
    (root / "data" / "k").write_text("ok")
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "index.json").write_text('{"secret": {}}')
    (outside / "data" / "secret").write_text("SECRET")
    return root


@pytest.mark.parametrize(
    "text",
    [
        '{"generation": "../../outside"}',
        '{"generation": "../outside"}',
        '{"generation": ".."}',
        '{"generation": ""}',
        '{"generation": "/etc"}',
        '{"generation": 5}',
        '{"generation": null}',
        '{"generation": "a/b"}',
        '{"generation": "x\\u0000y"}',
        "[]",
        "{}",
        "not json",
        "",
    ],
)
def test_hostile_generation_json_is_a_clear_error(tmp_path: Path, text: str) -> None:
    root = hostile_root(tmp_path)
    (root / "generation.json").write_text(text)
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    with pytest.raises(StorekeeperError, match="generation"):
        reader.connect()


def test_generation_json_naming_a_missing_generation_is_an_error(tmp_path: Path) -> None:
    root = hostile_root(tmp_path)
    (root / "generation.json").write_text('{"generation": "20990101T000000Z-000000000000"}')
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    with pytest.raises(StorekeeperError):  # today: ExportReplacedError "re-exported 5 times"
        reader.connect()


def test_deeply_nested_generation_json_is_a_clear_error(tmp_path: Path) -> None:
    root = hostile_root(tmp_path)
    (root / "generation.json").write_text('{"generation": ' + "[" * 100_000 + "]" * 100_000 + "}")
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    with pytest.raises(StorekeeperError):
        reader.connect()


def test_deeply_nested_index_json_is_a_clear_error(tmp_path: Path) -> None:
    root = hostile_root(tmp_path)
    (root / "index.json").write_text('{"k": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    with pytest.raises(StorekeeperError):
        reader.connect()


@pytest.mark.parametrize(
    "text", ["[]", "5", "null", '{"k": 5}', '{"k": []}', "garbage", '{"k": {"x": NaN}}']
)
def test_hostile_index_json_is_a_clear_error(tmp_path: Path, text: str) -> None:
    root = hostile_root(tmp_path)
    (root / "index.json").write_text(text)
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    with pytest.raises(StorekeeperError, match=r"index\.json"):
        reader.connect()


def test_index_keys_escaping_the_root_are_ignored(tmp_path: Path) -> None:
    root = hostile_root(tmp_path)
    (root / "index.json").write_text(
        '{"k": {}, "../outside/data/secret": {}, "/abs": {}, "k/": {}}'
    )
    reader = StaticURLStore(root.as_uri() + "/", poll=0)
    reader.connect()
    assert list(reader.list_keys()) == ["k"]
    assert not reader.exists("../outside/data/secret")
    with pytest.raises(StorekeeperError):
        reader.to_bytes("../outside/data/secret")


# --------------------------------------------------------------------------------------
# static exports: events


def listening_reader(site: Path) -> tuple[StaticURLStore, list[tuple[str, str]]]:
    manager = EventManager()
    got: list[tuple[str, str]] = []
    for cls in (StoreSetEvent, StoreUpdateEvent, StoreDeleteEvent):
        manager.connect(cls, lambda event, name=cls.__name__: got.append((name, event.key)))
    reader = StaticURLStore(site.as_uri() + "/", poll=0, event_manager=manager)
    reader.connect()
    return reader, got


def test_update_index_events_after_reexport(tmp_path: Path) -> None:
    site = tmp_path / "site"
    store = memory_store({"same": (b"s", {"v": 1}), "meta": (b"m", {"v": 1}), "gone": (b"g", {})})
    export_static(store, site)
    reader, got = listening_reader(site)
    store.update_metadata("meta", {"v": 2})
    store.delete("gone")
    store.set("new", (b"n", {"v": 3}))
    export_static(store, site)
    reader.update_index()
    assert sorted(got) == [
        ("StoreDeleteEvent", "gone"),
        ("StoreSetEvent", "new"),
        ("StoreUpdateEvent", "meta"),
    ]
    got.clear()
    reader.update_index()
    assert got == []
    assert reader.get_metadata("meta") == {"v": 2} and reader.to_bytes("new") == b"n"


def test_update_index_event_for_data_only_change(tmp_path: Path) -> None:
    site = tmp_path / "site"
    store = memory_store({"k": (b"one", {"v": 1})})
    export_static(store, site)
    reader, got = listening_reader(site)
    before = reader.version_of("k")
    store.set_data("k", b"two")
    export_static(store, site)
    reader.update_index()
    assert reader.version_of("k") != before and reader.to_bytes("k") == b"two"
    # new data is a set event, as set_data emits one (an update event is for metadata)
    assert got == [("StoreSetEvent", "k")]


# --------------------------------------------------------------------------------------
# server logins: helpers


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


class Server:
    """A served SimpleAuthStore with users ali and bob and a clock the test moves."""

    def __init__(
        self, hasher: Callable[[bytes], bytes] | None = None, wrap: Any = None, **options: Any
    ) -> None:
        inner = open_store("memory://")
        self.auth = SimpleAuthStore(inner, make_encoder(b"salt", hasher, n=16))
        self.auth.add_user("ali", "pw-ali")
        self.auth.add_user("bob", "pw-bob")
        self.now = 1000.0
        app = create_app(inner, auth=self.auth, clock=lambda: self.now, **options)
        self.thread = ServerThread(wrap(app) if wrap else app)
        self.thread.start()
        host, port = self.thread.url.split("//")[1].split(":")
        self.host, self.port = host, int(port)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=10, source_address=(source, 0) if source else None
        )
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def login(
        self, user: str, password: str, source: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", "/login", basic(user, password), source)

    def token(self, user: str, password: str) -> dict[str, Any]:
        status, _, body = self.login(user, password)
        assert status == 200, body
        return dict(json.loads(body))

    def status(self, token: str, path: str = "/info") -> int:
        return self.request("GET", path, bearer(token))[0]

    def user_of(self, token: str) -> str:
        status, _, body = self.request("GET", "/info", bearer(token))
        assert status == 200
        return str(json.loads(body)["user"])

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**options: Any) -> Server:
        server = Server(**options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------------------
# server logins: tokens


def test_token_ends_after_idle_time_and_use_keeps_it_alive(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(token_idle=50, token_lifetime=1000)
    answer = s.token("ali", "pw-ali")
    assert set(answer) >= {"token", "user", "expires", "idle_timeout"} and answer["user"] == "ali"
    token = answer["token"]
    for _ in range(4):
        s.now += 49
        assert s.status(token) == 200
    s.now += 51
    assert s.status(token) == 401
    s.now -= 10  # a clock going back does not revive it either
    assert s.status(token) == 401


def test_token_ends_after_lifetime_however_used(server_factory: Callable[..., Server]) -> None:
    s = server_factory(token_idle=50, token_lifetime=200)
    answer = s.token("ali", "pw-ali")
    assert answer["expires"] == pytest.approx(1200)
    for _ in range(4):
        s.now += 45
        assert s.status(answer["token"]) == 200
    s.now += 45
    assert s.status(answer["token"]) == 401


def test_renewing_with_a_token_keeps_the_original_end(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(token_idle=50, token_lifetime=200)
    first = s.token("ali", "pw-ali")
    token = first["token"]
    for _ in range(4):
        s.now += 40
        status, _, body = s.request("POST", "/login", bearer(token))
        assert status == 200
        renewed = json.loads(body)
        assert renewed["user"] == "ali" and renewed["expires"] <= first["expires"]
        token = renewed["token"]
    s.now += 40  # 200 s after the first login
    assert s.status(token) == 401


def test_logout_ends_only_that_token(server_factory: Callable[..., Server]) -> None:
    s = server_factory()
    a = s.token("ali", "pw-ali")["token"]
    b = s.token("ali", "pw-ali")["token"]
    assert s.request("DELETE", "/login", bearer(a))[0] in (200, 204)
    assert s.status(a) == 401
    assert s.status(b) == 200
    assert s.request("POST", "/login", bearer(a))[0] == 401  # no renewal of an ended token


def test_oldest_tokens_are_pushed_out(server_factory: Callable[..., Server]) -> None:
    s = server_factory(max_tokens=3)
    tokens = [
        s.token("bob" if i % 2 else "ali", "pw-bob" if i % 2 else "pw-ali")["token"]
        for i in range(5)
    ]
    assert [s.status(t) for t in tokens] == [401, 401, 200, 200, 200]


def test_a_token_authorises_only_its_user(server_factory: Callable[..., Server]) -> None:
    s = server_factory()
    s.auth.connect({"username": "ali", "password": "pw-ali"})
    s.auth.set("private", (b"ali only", {}))
    s.auth.set_permissions("private", {"owned": ["ali"], "get": ["ali"], "exists": ["ali"]})
    ali = s.token("ali", "pw-ali")["token"]
    bob = s.token("bob", "pw-bob")["token"]
    assert s.user_of(ali) == "ali" and s.user_of(bob) == "bob"
    assert s.status(ali, "/store/private/data") == 200
    assert s.status(bob, "/store/private/data") in (403, 404)
    # renewing bob's token with ali's credentials in the body stays bob's
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    conn.request(
        "POST",
        "/login",
        body=json.dumps({"username": "ali", "password": "pw-ali"}),
        headers={**bearer(bob), "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status == 200:
        assert json.loads(body)["user"] == "bob"
        assert s.user_of(json.loads(body)["token"]) == "bob"


# --------------------------------------------------------------------------------------
# server logins: failed-login limits


def test_failed_logins_block_address_and_name_without_checking_passwords(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(max_failed_logins=3, failed_login_window=100)
    token = s.token("ali", "pw-ali")["token"]
    assert [s.login("ali", "wrong")[0] for _ in range(3)] == [401, 401, 401]
    status, headers, _ = s.login("ali", "wrong")
    assert status == 429 and int(headers["retry-after"]) == 100
    assert s.login("ali", "pw-ali")[0] == 429  # the right password too
    assert s.login("bob", "pw-bob")[0] == 429  # same address
    assert s.login("ali", "pw-ali", source="127.0.0.2")[0] == 429  # same name
    assert s.login("bob", "pw-bob", source="127.0.0.2")[0] == 200  # neither
    assert s.request("GET", "/info", basic("bob", "pw-bob"))[0] == 429
    assert s.status(token) == 200  # issued tokens keep working
    s.now += 60
    status, headers, _ = s.login("ali", "pw-ali", source="127.0.0.3")
    assert status == 429 and int(headers["retry-after"]) == 40
    s.now += 40.5
    assert s.login("ali", "pw-ali")[0] == 200
    assert s.login("bob", "pw-bob")[0] == 200


def test_tokens_renew_and_log_out_while_password_logins_are_blocked(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(max_failed_logins=2, failed_login_window=100)
    token = s.token("bob", "pw-bob")["token"]
    assert [s.login("bob", "w")[0] for _ in range(3)] == [401, 401, 429]
    status, _, body = s.request("POST", "/login", bearer(token))
    assert status == 200 and json.loads(body)["user"] == "bob"
    renewed = json.loads(body)["token"]
    assert s.request("DELETE", "/login", bearer(token))[0] in (200, 204)
    assert s.status(token) == 401 and s.status(renewed) == 200


def test_basic_auth_on_requests_counts_as_failed_login(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(max_failed_logins=3, failed_login_window=100)
    assert [s.request("GET", "/info", basic("bob", "nope"))[0] for _ in range(4)] == [
        401,
        401,
        401,
        429,
    ]
    assert s.login("bob", "pw-bob", source="127.0.0.5")[0] == 429
    assert [s.login("ghost", "x", source="127.0.0.6")[0] for _ in range(4)] == [401, 401, 401, 429]


def test_tracked_logins_are_bounded_least_recent_forgotten(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(max_failed_logins=2, failed_login_window=100, max_tracked_logins=4)
    assert [s.login("ali", "w", source="127.0.1.1")[0] for _ in range(3)] == [401, 401, 429]
    for i in range(6):  # a flood of bogus names from other addresses
        assert s.login(f"ghost{i}", "w", source=f"127.0.2.{i + 1}")[0] == 401
    assert s.login("ali", "pw-ali", source="127.0.3.1")[0] == 200  # ali was forgotten


def test_blocked_address_cannot_flush_its_own_entry_with_bogus_names(
    server_factory: Callable[..., Server],
) -> None:
    s = server_factory(max_failed_logins=2, failed_login_window=100, max_tracked_logins=4)
    assert [s.login("ali", "w", source="127.0.4.1")[0] for _ in range(3)] == [401, 401, 429]
    assert {s.login(f"g{i}", "w", source="127.0.4.1")[0] for i in range(10)} == {429}
    assert s.login("bob", "pw-bob", source="127.0.4.1")[0] == 429
    assert s.login("ali", "pw-ali", source="127.0.4.2")[0] == 429


def test_limit_counts_failures_within_any_window(server_factory: Callable[..., Server]) -> None:
    s = server_factory(max_failed_logins=3, failed_login_window=100)
    s.now = 1000
    assert s.login("ali", "w")[0] == 401
    s.now = 1099
    assert s.login("ali", "w")[0] == 401
    s.now = 1100.5
    assert s.login("ali", "w")[0] == 401
    assert s.login("ali", "w")[0] == 401
    # three wrong passwords within the last 1.5 s (< 100 s): the README says further
    # attempts answer 429
    assert s.login("ali", "w")[0] == 429


def test_parallel_wrong_logins_pass_the_limit_by_at_most_the_workers(
    server_factory: Callable[..., Server],
) -> None:
    n = 60
    lock = threading.Lock()
    state = {"in": 0, "max": 0, "calls": 0, "arrived": 0}
    release = threading.Event()
    release.set()  # add_user hashes too

    def hasher(data: bytes) -> bytes:
        with lock:
            state["in"] += 1
            state["calls"] += 1
            state["max"] = max(state["max"], state["in"])
        release.wait(5)
        with lock:
            state["in"] -= 1
        return hashlib.sha256(data).digest()

    def wrap(app: Any) -> Any:
        async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                with lock:
                    state["arrived"] += 1
            await app(scope, receive, send)

        return counting

    s = server_factory(hasher=hasher, wrap=wrap, max_failed_logins=3, failed_login_window=100)
    release.clear()
    with lock:
        state.update(calls=0, max=0, arrived=0)
    statuses: list[int] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        conn = http.client.HTTPConnection(s.host, s.port, timeout=20)
        conn.connect()
        barrier.wait()
        conn.request("POST", "/login", headers=basic("ali", "wrong"))
        response = conn.getresponse()
        response.read()
        conn.close()
        with lock:
            statuses.append(response.status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    # release the hashes once every request has reached the server and the checks
    # running at once stopped growing (or every request has an answer)
    deadline = time.monotonic() + 1.5
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with lock:
            arrived, busy, answered = state["arrived"], state["in"], len(statuses)
        if busy + answered >= n:
            break
        if busy != last:
            last, stable_since = busy, time.monotonic()
        elif arrived >= n and time.monotonic() - stable_since > 0.2:
            break
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join()
    checked = statuses.count(401)
    assert checked + statuses.count(429) == n
    # the docs: "guesses sent together can pass the limit by as many as the server
    # checks at once (its worker threads)"
    assert checked <= 3 + state["max"], (checked, state["max"])


# --------------------------------------------------------------------------------------
# server logins: parameters


def bare_app(**options: Any) -> Any:
    inner = open_store("memory://")
    return create_app(inner, auth=SimpleAuthStore(inner, make_encoder(b"s", n=16)), **options)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("token_idle", 0),
        ("token_idle", -1),
        ("token_idle", float("nan")),
        ("token_lifetime", -5),
        ("token_lifetime", float("nan")),
        ("max_tokens", 0),
        ("max_tokens", 2.5),
        ("max_tokens", "10"),
        ("max_failed_logins", 0),
        ("max_failed_logins", True),
        ("failed_login_window", 0),
        ("failed_login_window", -1),
    ],
)
def test_bad_login_settings_are_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        bare_app(**{name: value})


def test_bad_max_tracked_logins_error_names_the_keyword() -> None:
    with pytest.raises(ValueError, match="max_tracked_logins"):
        bare_app(max_tracked_logins=0)


def test_infinite_token_lifetime_is_refused_or_answers_json(
    server_factory: Callable[..., Server],
) -> None:
    try:
        s = server_factory(token_lifetime=float("inf"), token_idle=float("inf"))
    except ValueError:
        return
    status, _, body = s.login("ali", "pw-ali")
    assert status == 200

    def reject(constant: str) -> Any:
        raise ValueError(constant)

    json.loads(body, parse_constant=reject)  # what a browser's JSON.parse accepts


def test_infinite_failed_login_window_is_refused_or_works(
    server_factory: Callable[..., Server],
) -> None:
    try:
        s = server_factory(failed_login_window=float("inf"), max_failed_logins=1)
    except ValueError:
        return
    assert s.login("ali", "w")[0] == 401
    assert s.login("ali", "w")[0] == 429


def test_clock_that_is_not_callable_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)):
        bare_app(clock=5)


def test_negative_max_upload_is_refused() -> None:
    with pytest.raises(ValueError, match="max_upload"):
        bare_app(max_upload=-1)
