"""Hostile black-box probes of the HTTP side: server, DynamicURLStore, StaticURLStore, export.

Written from the user documentation and docstrings only (issue 16's promises). Each test
talks to a real server on a random loopback port with plain ``http.client`` or raw
sockets and checks the result through a second path (the underlying SQLite store).
A broken promise is a test asserting the correct behaviour, marked ``xfail(strict=True)``.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from storekeeper import open_store
from storekeeper.composite.auth import SimpleAuthStore, make_encoder
from storekeeper.errors import ConflictError, InvalidKeyError
from storekeeper.export import ExportWarning, NotAnExportError, export_static
from storekeeper.server import ServerThread, create_app
from storekeeper.store import open_read_only_store

# --------------------------------------------------------------------------- helpers


class Resp:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {dict(self.headers)} {self.body[:200]!r}>"


class Client:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        hostport = url.split("//", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.url = url
        self.headers = headers or {}

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Resp:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            all_headers = {**self.headers, **(headers or {})}
            for name, value in all_headers.items():
                conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for piece in body or ():
                    if piece:
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                if body is not None and not isinstance(body, bytes):
                    body = body.encode()
                if body is not None or method in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body or b"")))
                conn.endheaders()
                if body:
                    conn.send(body)
            resp = conn.getresponse()
            data = resp.read()
            return Resp(resp.status, resp.headers, data)
        finally:
            conn.close()

    def raw(self, payload: bytes, *, read: bool = True, timeout: float = 10) -> bytes:
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            if not read:
                return b""
            chunks = []
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while True:
                    got = sock.recv(65536)
                    if not got:
                        break
                    chunks.append(got)
            return b"".join(chunks)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def k(key: str) -> str:
    """A key's path under /store, percent-escaped once (``/`` kept)."""
    return "/store/" + quote(key, safe="/")


def wait_for(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def alive(client: Client) -> bool:
    return client("GET", "/query").status == 200


def _cases(names: Any, values: list[Any], ids: Any = None) -> list[tuple[Any, ...]]:
    """A ``parametrize`` table run as a loop in one test (one server instead of many)."""
    del names, ids
    return [v if isinstance(v, tuple) else (v,) for v in values]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    s = open_store(f"sqlite:///{tmp_path / 'data.db'}")
    yield s
    s.disconnect()


@pytest.fixture
def server(store: Any) -> Iterator[ServerThread]:
    with ServerThread(create_app(store)) as srv:
        yield srv


@pytest.fixture
def c(server: ServerThread) -> Client:
    return Client(server.url)


@pytest.fixture
def ro_client(store: Any) -> Iterator[Client]:
    store.set("ro", (b"old", {"a": 1}))
    with ServerThread(create_app(store, read_only=True)) as srv:
        yield Client(srv.url)


@pytest.fixture
def auth_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    base = open_store(f"sqlite:///{tmp_path / 'auth.db'}")
    auth = SimpleAuthStore(base, make_encoder(b"test salt", n=16))
    auth.add_user("alice", "pw-alice")
    auth.add_user("bob", "pw-bob")
    auth.add_user("carol", "pw-carol")
    with ServerThread(create_app(base, auth=auth)) as srv:
        alice = Client(srv.url, basic("alice", "pw-alice"))
        bob = Client(srv.url, basic("bob", "pw-bob"))
        # alice's private key, one bob may read only, one bob may only see
        assert alice("PUT", k("secret/a") + "/data", b"alice private").status < 300
        assert alice("PUT", k("secret/a") + "/metadata", '{"tag": "x"}').status < 300
        assert alice("PUT", k("shared/r") + "/data", b"bob may read").status < 300
        assert alice("PUT", k("shared/r") + "/metadata", '{"tag": "x"}').status < 300
        assert alice("POST", k("shared/r") + "/auth", '{"get": ["bob"]}').status < 300
        assert alice("PUT", k("shared/e") + "/data", b"bob may see").status < 300
        assert alice("POST", k("shared/e") + "/auth", '{"exists": ["bob"]}').status < 300
        yield {
            "base": base,
            "url": srv.url,
            "alice": alice,
            "bob": bob,
            "anon": Client(srv.url),
        }
    base.disconnect()


# --------------------------------------------------------------------------- REST layout


def test_rest_layout_roundtrip(c: Client, store: Any) -> None:
    assert c("PUT", k("a/b") + "/data", b"hello").status in (200, 201, 204)
    assert c("PUT", k("a/b") + "/metadata", '{"x": 1, "s": "t"}').status in (200, 201, 204)
    r = c("GET", k("a/b") + "/data")
    assert (r.status, r.body) == (200, b"hello")
    assert c("GET", k("a/b") + "/metadata").json() == {"x": 1, "s": "t"}
    assert c("POST", k("a/b") + "/metadata", '{"y": 2}').status < 300
    assert store.get_metadata("a/b") == {"x": 1, "s": "t", "y": 2}
    # PUT data keeps metadata
    assert c("PUT", k("a/b") + "/data", b"again").status < 300
    assert store.get_metadata("a/b") == {"x": 1, "s": "t", "y": 2}
    assert store.to_bytes("a/b") == b"again"
    # PUT metadata replaces
    assert c("PUT", k("a/b") + "/metadata", '{"z": 3}').status < 300
    assert store.get_metadata("a/b") == {"z": 3}
    assert c("DELETE", k("a/b")).status in (200, 204)
    assert not store.exists("a/b")
    assert c("GET", k("a/b") + "/data").status == 404
    assert c("DELETE", k("a/b")).status == 404


def test_metadata_without_content_type_is_accepted(c: Client, store: Any) -> None:
    store.set("m", (b"x", {}))
    conn = http.client.HTTPConnection(c.host, c.port, timeout=10)
    conn.putrequest("PUT", "/store/m/metadata", skip_accept_encoding=True)
    conn.putheader("Content-Length", "8")
    conn.endheaders()
    conn.send(b'{"a": 1}')
    assert conn.getresponse().status < 300
    conn.close()
    assert store.get_metadata("m") == {"a": 1}


def test_query_layout(c: Client, store: Any) -> None:
    store.set("r/1", (b"", {"year": 2026, "kind": "photo"}))
    store.set("r/é ü", (b"", {"year": 2026, "kind": "doc"}))
    store.set("r/3", (b"", {"year": 2025, "kind": "photo"}))
    r = c("GET", "/query?year=" + quote(json.dumps(2026)))
    assert r.status == 200
    assert r.body.endswith(b"\n")
    assert sorted(r.body.decode("utf-8").splitlines()) == ["r/1", "r/é ü"]
    q = "/query?year=2026&kind=" + quote(json.dumps("photo"))
    assert c("GET", q).body == b"r/1\n"
    r = c("GET", "/query?year=1999")
    assert (r.status, r.body) == (200, b"")
    assert sorted(c("GET", "/query").body.decode().splitlines()) == sorted(store.list_keys())


def test_query_with_non_json_parameter_is_not_a_server_error(c: Client, store: Any) -> None:
    store.set("q", (b"", {"name": "x"}))
    r = c("GET", "/query?name=%7Bbroken")
    assert r.status < 500, r
    assert alive(c)


# --------------------------------------------------------------------------- key paths


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/store/a+b/data", "a+b"),
        ("/store/a%2Bb/data", "a+b"),
        ("/store/a%252F/data", "a%2F"),
        ("/store/a%2Fb/data", "a/b"),
        ("/store/x%25y%2525/data", "x%y%25"),
        ("/store/dir/sub/leaf/data", "dir/sub/leaf"),
        ("/store/%C3%A9t%C3%A9/%E2%98%83/data", "été/☃"),
        ("/store/sp%20ace/data", "sp ace"),
        ("/store/x/data/data", "x/data"),
        ("/store/x/metadata/data", "x/metadata"),
        ("/store/q%3Fx%23y/data", "q?x#y"),
    ],
)
def test_key_path_decoded_exactly_once(c: Client, store: Any, path: str, key: str) -> None:
    r = c("PUT", path, b"v:" + key.encode())
    assert r.status < 300, r
    assert store.to_bytes(key) == b"v:" + key.encode()
    assert list(store.list_keys()) == [key]
    assert c("GET", path).body == b"v:" + key.encode()
    assert c("DELETE", path.rsplit("/", 1)[0]).status < 300
    assert not store.exists(key)


@pytest.mark.parametrize("path", ["/store/%ZZ/data", "/store/%FF%FE/data", "/store/a%/data"])
def test_malformed_escapes_are_4xx_or_literal(c: Client, store: Any, path: str) -> None:
    r = c("PUT", path, b"x")
    assert r.status < 300 or 400 <= r.status < 500, r
    keys = list(store.list_keys())
    if r.status < 300:
        assert len(keys) == 1
        assert c("GET", path).body == b"x"
    else:
        assert keys == []


def test_newline_in_key_cannot_forge_query_lines(c: Client, store: Any) -> None:
    r = c("PUT", "/store/evil%0Afake/data", b"x")
    assert r.status < 300 or 400 <= r.status < 500, r
    lines = c("GET", "/query").body.decode().splitlines()
    assert "fake" not in lines, lines


def test_keys_with_line_breaks_never_forge_query_lines(c: Client, store: Any) -> None:
    for index, key in enumerate(["a\rb", "a\r\nb", "evil\nfake"]):
        assert c("PUT", k(key) + "/data", str(index).encode()).status == 204
        assert store.to_bytes(key) == str(index).encode()
    r = c("POST", "/batch", '{"op": "set_data", "key": "x\\nfake", "size": 1}\nx')
    assert r.status == 200, r
    store.set("good", (b"g", {"t": 2}))
    assert c("GET", "/query?t=2").body == b"good\n"
    r = c("GET", "/query")
    assert r.status == 409 and r.json()["error"] == "UnlistableKey", r
    listed = sorted(["a\rb", "a\r\nb", "evil\nfake", "good", "x\nfake"])
    assert sorted(c("POST", "/query", b'{"keys": true}').json()) == listed
    for key in listed:
        if key != "good":
            assert c("DELETE", k(key)).status == 204
    assert c("GET", "/query").body == b"good\n"


def test_dot_dot_segments_are_not_normalised_into_another_key(c: Client, store: Any) -> None:
    store.set("b", (b"do not touch", {}))
    r = c("PUT", "/store/a/../b/data", b"evil")
    # either a clear refusal or the literal key 'a/../b'; never the key 'b'
    assert r.status < 500
    assert store.to_bytes("b") == b"do not touch"
    if r.status < 300:
        assert store.to_bytes("a/../b") == b"evil"
    r = c("PUT", "/store/a/%2E%2E/b/data", b"evil2")
    assert r.status < 500
    assert store.to_bytes("b") == b"do not touch"


def test_very_long_key(c: Client, store: Any) -> None:
    key = "long/" + "x" * 4000
    r = c("PUT", k(key) + "/data", b"long")
    assert r.status < 300 or r.status in (400, 414, 431), r
    if r.status < 300:
        assert store.to_bytes(key) == b"long"
        assert c("GET", k(key) + "/data").body == b"long"
    assert alive(c)


def test_empty_key_is_a_clear_4xx(c: Client, store: Any) -> None:
    r = c("PUT", "/store//data", b"x")
    assert 400 <= r.status < 500, r
    assert list(store.list_keys()) == []


def test_nul_in_key_is_a_clear_4xx(c: Client, store: Any) -> None:
    r = c("PUT", "/store/a%00b/data", b"x")
    assert 400 <= r.status < 500, r
    assert list(store.list_keys()) == []


# --------------------------------------------------------------------------- GET/HEAD headers


def test_get_has_content_length_never_chunked_never_gzip(c: Client, store: Any) -> None:
    value = b"a" * 200_000
    store.set("big", (value, {}))
    r = c("GET", "/store/big/data", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status == 200
    assert r.headers.get("Content-Length") == str(len(value))
    assert r.headers.get("Transfer-Encoding") is None
    assert r.headers.get("Content-Encoding") in (None, "identity")
    assert r.body == value


def test_head_missing_is_404_and_existing_has_length(c: Client, store: Any) -> None:
    assert c("HEAD", "/store/nope/data").status == 404
    store.set("h", (b"12345", {}))
    r = c("HEAD", "/store/h/data")
    assert r.status == 200
    assert r.headers["Content-Length"] == "5"
    assert r.body == b""
    email.utils.parsedate_to_datetime(r.headers["Last-Modified"])
    assert r.headers["Last-Modified"].endswith(" GMT")


def test_last_modified_changes_on_metadata_write(c: Client, store: Any) -> None:
    store.set("lm", (b"x", {"v": 1}))
    first = c("HEAD", "/store/lm/data").headers["Last-Modified"]
    time.sleep(1.1)
    assert c("POST", "/store/lm/metadata", '{"v": 2}').status < 300
    second = c("HEAD", "/store/lm/data").headers["Last-Modified"]
    assert email.utils.parsedate_to_datetime(second) > email.utils.parsedate_to_datetime(first)


def test_etag_and_if_none_match(c: Client, store: Any) -> None:
    store.set("e", (b"etag me", {}))
    r = c("GET", "/store/e/data")
    etag = r.headers["ETag"]
    assert etag
    r = c("GET", "/store/e/data", headers={"If-None-Match": etag})
    assert (r.status, r.body) == (304, b"")
    r = c("GET", "/store/e/data", headers={"If-None-Match": f'"other", {etag}'})
    assert r.status == 304
    r = c("GET", "/store/e/data", headers={"If-None-Match": "W/" + etag})
    assert r.status == 304  # weak comparison for GET (RFC 9110 13.1.2)
    r = c("HEAD", "/store/e/data", headers={"If-None-Match": etag})
    assert r.status == 304
    store.set("e", (b"changed", {}))
    r = c("GET", "/store/e/data", headers={"If-None-Match": etag})
    assert (r.status, r.body) == (200, b"changed")
    assert r.headers["ETag"] != etag


def test_304_and_206_carry_validators(c: Client, store: Any) -> None:
    store.set("v", (DATA, {}))
    etag = c("HEAD", "/store/v/data").headers["ETag"]
    r = c("GET", "/store/v/data", headers={"If-None-Match": etag})
    assert r.status == 304
    assert r.headers.get("ETag") == etag  # RFC 9110 15.4.5
    r = c("GET", "/store/v/data", headers={"Range": "bytes=1-2"})
    assert r.status == 206
    assert r.headers.get("ETag") == etag
    r = c("GET", "/store/v/data", headers={"Range": "bytes=1-2", "If-Range": etag})
    assert (r.status, r.body) == (206, DATA[1:3])
    r = c("GET", "/store/v/data", headers={"Range": "bytes=1-2", "If-None-Match": etag})
    assert r.status == 304


def test_ranges_on_a_file_backed_value(c: Client, store: Any) -> None:
    value = os.urandom(3 << 20)  # over 1 MiB: kept in its own file by SQLite
    store.set("fb", (value, {}))
    for spec, start, end in [
        ("bytes=1048570-1048590", 1048570, 1048591),
        ("bytes=-7", len(value) - 7, len(value)),
        (f"bytes={len(value) - 3}-", len(value) - 3, len(value)),
    ]:
        r = c("GET", "/store/fb/data", headers={"Range": spec})
        assert (r.status, r.body) == (206, value[start:end]), spec
    assert c("GET", "/store/fb/data", headers={"Range": f"bytes={len(value)}-"}).status == 416


def test_if_none_match_star_on_get_existing_is_304(c: Client, store: Any) -> None:
    store.set("e", (b"x", {}))
    assert c("GET", "/store/e/data", headers={"If-None-Match": "*"}).status == 304


# --------------------------------------------------------------------------- conditional writes


def test_if_match_mismatch_is_412_and_value_untouched(c: Client, store: Any) -> None:
    store.set("cw", (b"old", {"m": 1}))
    etag = c("HEAD", "/store/cw/data").headers["ETag"]
    for path, body, method in [
        ("/store/cw/data", b"new", "PUT"),
        ("/store/cw/metadata", b'{"m": 2}', "PUT"),
        ("/store/cw/metadata", b'{"m": 2}', "POST"),
        ("/store/cw", None, "DELETE"),
    ]:
        r = c(method, path, body, headers={"If-Match": '"not-the-version"'})
        assert r.status == 412, (method, path, r)
        assert store.to_bytes("cw") == b"old"
        assert store.get_metadata("cw") == {"m": 1}
    r = c("PUT", "/store/cw/data", b"new", headers={"If-Match": etag})
    assert r.status < 300, r
    assert store.to_bytes("cw") == b"new"
    # the old etag is stale now
    r = c("PUT", "/store/cw/data", b"newer", headers={"If-Match": etag})
    assert r.status == 412
    assert store.to_bytes("cw") == b"new"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/store/wk/data", b"weak"),
        ("PUT", "/store/wk/metadata", b'{"w": 1}'),
        ("DELETE", "/store/wk", None),
    ],
)
def test_if_match_weak_tag_never_matches(
    c: Client, store: Any, method: str, path: str, body: bytes | None
) -> None:
    store.set("wk", (b"old", {}))
    etag = c("HEAD", "/store/wk/data").headers["ETag"]
    r = c(method, path, body, headers={"If-Match": "W/" + etag})
    assert r.status == 412, r
    assert store.to_bytes("wk") == b"old"
    assert store.get_metadata("wk") == {}


def test_if_match_lists(c: Client, store: Any) -> None:
    store.set("wk", (b"old", {}))
    etag = c("HEAD", "/store/wk/data").headers["ETag"]
    r = c("PUT", "/store/wk/data", b"listed", headers={"If-Match": f'"nope", {etag}'})
    assert r.status < 300, r
    assert store.to_bytes("wk") == b"listed"


def test_if_match_lists_on_every_write_and_read(c: Client, store: Any) -> None:
    store.set("wl", (b"old", {"m": 1}))
    etag = c("HEAD", "/store/wl/data").headers["ETag"]
    stale = '"nope", "other", W/' + etag
    for method, path, body in [
        ("PUT", "/store/wl/data", b"x"),
        ("PUT", "/store/wl/metadata", b'{"m": 2}'),
        ("POST", "/store/wl/metadata", b'{"m": 3}'),
        ("DELETE", "/store/wl", None),
        ("GET", "/store/wl/data", None),
        ("HEAD", "/store/wl/data", None),
        ("GET", "/store/wl/value", None),
    ]:
        r = c(method, path, body, headers={"If-Match": stale})
        assert r.status == 412, (method, path, r)
        assert (store.to_bytes("wl"), store.get_metadata("wl")) == (b"old", {"m": 1})
    listed = {"If-Match": f'"nope", W/"x", {etag}'}
    assert c("GET", "/store/wl/data", headers=listed).body == b"old"
    assert c("GET", "/store/wl/data", headers={"If-Match": "W/" + etag}).status == 412
    assert c("POST", "/store/wl/metadata", b'{"n": 2}', headers=listed).status < 300
    assert store.get_metadata("wl") == {"m": 1, "n": 2}
    etag = c("HEAD", "/store/wl/data").headers["ETag"]
    assert c("DELETE", "/store/wl", headers={"If-Match": f'"a", {etag}'}).status < 300
    assert not store.exists("wl")
    r = c("PUT", "/store/wl/data", b"x", headers={"If-Match": f'"a", {etag}'})
    assert r.status == 412, r
    assert not store.exists("wl")


def test_if_none_match_with_current_tag_on_put_is_refused(c: Client, store: Any) -> None:
    store.set("inm", (b"old", {}))
    etag = c("HEAD", "/store/inm/data").headers["ETag"]
    r = c("PUT", "/store/inm/data", b"new", headers={"If-None-Match": etag})
    # RFC 9110 13.1.2 says 412; a clear 400 ("If-None-Match: * only") is a safe refusal
    assert r.status in (400, 412), r
    assert store.to_bytes("inm") == b"old"


def test_if_match_on_get(c: Client, store: Any) -> None:
    store.set("img", (b"old", {}))
    etag = c("HEAD", "/store/img/data").headers["ETag"]
    assert c("GET", "/store/img/data", headers={"If-Match": etag}).body == b"old"
    r = c("GET", "/store/img/data", headers={"If-Match": '"stale"'})
    assert r.status == 412, r


_QUERY_NAMES_ARE_ALL_METADATA_CASES = _cases(
    "name", ["select", "prefix", "delimiter", "where", "last_event_id"]
)


def _check_query_names_are_all_metadata(c: Client, store: Any, name: str) -> None:
    store.set("hit", (b"", {name: "v"}))
    store.set("miss", (b"", {name: "w"}))
    r = c("GET", f"/query?{name}=" + quote(json.dumps("v")))
    assert (r.status, r.body) == (200, b"hit\n"), r


def test_query_names_are_all_metadata(c: Any, store: Any) -> None:
    for case in _QUERY_NAMES_ARE_ALL_METADATA_CASES:
        _check_query_names_are_all_metadata(c, store, *case)


def test_query_typed_values(c: Client, store: Any) -> None:
    store.set("t", (b"", {"b": True, "n": None, "l": [1, 2], "d": {"x": 1}, "f": 1.5}))
    store.set("o", (b"", {"b": False, "n": 0, "l": [2, 1], "d": {"x": 2}, "f": 2}))
    for name, value in [("b", True), ("n", None), ("l", [1, 2]), ("d", {"x": 1}), ("f", 1.5)]:
        r = c("GET", f"/query?{name}=" + quote(json.dumps(value)))
        assert r.body == b"t\n", (name, r)


def test_query_non_utf8_is_4xx(c: Client) -> None:
    r = c("GET", "/query?a=%FF")
    assert r.status < 300 or 400 <= r.status < 500, r


def test_if_match_on_missing_key_is_412(c: Client, store: Any) -> None:
    r = c("PUT", "/store/none/data", b"x", headers={"If-Match": '"123"'})
    assert r.status == 412, r
    assert not store.exists("none")


def test_if_none_match_star_create_only(c: Client, store: Any) -> None:
    r = c("PUT", "/store/new/data", b"first", headers={"If-None-Match": "*"})
    assert r.status < 300
    r = c("PUT", "/store/new/data", b"second", headers={"If-None-Match": "*"})
    assert r.status == 412
    assert store.to_bytes("new") == b"first"
    r = c("PUT", "/store/new/metadata", b'{"a": 1}', headers={"If-None-Match": "*"})
    assert r.status == 412
    assert store.get_metadata("new") == {}


def test_if_match_star_requires_existence(c: Client, store: Any) -> None:
    r = c("PUT", "/store/ims/data", b"x", headers={"If-Match": "*"})
    assert r.status == 412, r
    assert not store.exists("ims")
    store.set("ims", (b"old", {}))
    assert c("PUT", "/store/ims/data", b"x", headers={"If-Match": "*"}).status < 300
    assert store.to_bytes("ims") == b"x"


# --------------------------------------------------------------------------- ranges

DATA = bytes(range(100))


_SINGLE_RANGES_CASES = _cases(
    ("spec", "start", "end"),
    [
        ("bytes=0-3", 0, 4),
        ("bytes=10-10", 10, 11),
        ("bytes=-5", 95, 100),
        ("bytes=90-", 90, 100),
        ("bytes=95-500", 95, 100),
        ("bytes=-500", 0, 100),
    ],
)


def _check_single_ranges(c: Client, store: Any, spec: str, start: int, end: int) -> None:
    store.set("r", (DATA, {}))
    r = c("GET", "/store/r/data", headers={"Range": spec})
    assert r.status == 206, r
    assert r.body == DATA[start:end]
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/100"
    assert r.headers["Content-Length"] == str(end - start)


def test_single_ranges(c: Any, store: Any) -> None:
    for case in _SINGLE_RANGES_CASES:
        _check_single_ranges(c, store, *case)


_RANGE_BEYOND_END_IS_416_CASES = _cases("spec", ["bytes=100-", "bytes=100-200", "bytes=500-600"])


def _check_range_beyond_end_is_416(c: Client, store: Any, spec: str) -> None:
    store.set("r", (DATA, {}))
    r = c("GET", "/store/r/data", headers={"Range": spec})
    assert r.status == 416, r
    assert r.headers.get("Content-Range") == "bytes */100"


def test_range_beyond_end_is_416(c: Any, store: Any) -> None:
    for case in _RANGE_BEYOND_END_IS_416_CASES:
        _check_range_beyond_end_is_416(c, store, *case)


def test_range_on_empty_value_is_416(c: Client, store: Any) -> None:
    store.set("empty", (b"", {}))
    r = c("GET", "/store/empty/data", headers={"Range": "bytes=0-0"})
    assert r.status == 416, r


_INVALID_RANGE_IS_IGNORED_OR_416_CASES = _cases(
    "spec", ["bytes=abc", "bytes=5-2", "pages=1-2", "bytes=", "bytes=--1", "bytes=1-2-3"]
)


def _check_invalid_range_is_ignored_or_416(c: Client, store: Any, spec: str) -> None:
    store.set("r", (DATA, {}))
    r = c("GET", "/store/r/data", headers={"Range": spec})
    assert r.status in (200, 416), r
    if r.status == 200:
        assert r.body == DATA


def test_invalid_range_is_ignored_or_416(c: Any, store: Any) -> None:
    for case in _INVALID_RANGE_IS_IGNORED_OR_416_CASES:
        _check_invalid_range_is_ignored_or_416(c, store, *case)


def test_multiple_ranges(c: Client, store: Any) -> None:
    store.set("r", (DATA, {}))
    r = c("GET", "/store/r/data", headers={"Range": "bytes=0-1,10-12"})
    assert r.status in (200, 206), r
    if r.status == 200:
        assert r.body == DATA
    else:
        ctype = r.headers["Content-Type"]
        if ctype.startswith("multipart/byteranges"):
            assert DATA[0:2] in r.body
            assert DATA[10:13] in r.body
        else:  # coalesced into one range
            assert r.body == DATA[0:13]
        assert r.headers["Content-Length"] == str(len(r.body))


def test_range_with_stale_if_range_sends_whole(c: Client, store: Any) -> None:
    store.set("r", (DATA, {}))
    r = c("GET", "/store/r/data", headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert r.status == 200
    assert r.body == DATA


# --------------------------------------------------------------------------- uploads


def test_chunked_upload(c: Client, store: Any) -> None:
    pieces = [os.urandom(1000) for _ in range(50)]
    r = c("PUT", "/store/chunky/data", pieces, chunked=True)
    assert r.status < 300, r
    assert store.to_bytes("chunky") == b"".join(pieces)


def test_zero_byte_uploads(c: Client, store: Any) -> None:
    store.set("z1", (b"old", {"m": 1}))
    assert c("PUT", "/store/z1/data", b"").status < 300
    assert store.to_bytes("z1") == b""
    assert store.get_metadata("z1") == {"m": 1}
    assert c("PUT", "/store/z2/data", [], chunked=True).status < 300
    assert store.to_bytes("z2") == b""
    assert c("GET", "/store/z2/data").headers["Content-Length"] == "0"


def _cut_upload(c: Client, head: bytes, sent: bytes) -> None:
    with socket.create_connection((c.host, c.port), timeout=10) as sock:
        sock.sendall(head + sent)
        time.sleep(0.1)
        sock.shutdown(socket.SHUT_RDWR)


def test_upload_cut_off_keeps_old_value(c: Client, store: Any) -> None:
    store.set("cut", (b"old value", {"m": 1}))
    head = b"PUT /store/cut/data HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    _cut_upload(c, head, b"N" * 50_000)
    time.sleep(0.5)
    assert store.to_bytes("cut") == b"old value"
    assert store.get_metadata("cut") == {"m": 1}
    assert alive(c)


def test_chunked_upload_cut_off_keeps_old_value(c: Client, store: Any) -> None:
    store.set("cut", (b"old value", {}))
    head = b"PUT /store/cut/data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    _cut_upload(c, head, b"%x\r\n%s\r\n" % (40_000, b"N" * 40_000) + b"10\r\nabc")
    time.sleep(0.5)
    assert store.to_bytes("cut") == b"old value"
    assert alive(c)


def test_cut_off_upload_of_new_key_creates_nothing(c: Client, store: Any) -> None:
    head = b"PUT /store/fresh/data HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n"
    _cut_upload(c, head, b"N" * 2_000_000)
    time.sleep(0.5)
    assert not store.exists("fresh")
    assert list(store.list_keys()) == []


def test_cut_off_metadata_body_keeps_old_metadata(c: Client, store: Any) -> None:
    store.set("cm", (b"d", {"m": 1}))
    head = b"PUT /store/cm/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    _cut_upload(c, head, b'{"m": 2}')
    time.sleep(0.3)
    assert store.get_metadata("cm") == {"m": 1}


def test_value_body_cut_off_keeps_old_value(c: Client, store: Any) -> None:
    store.set("cv", (b"old", {"m": 1}))
    meta = b'{"m": 2}'
    head = (
        b"PUT /store/cv/value HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"X-Storekeeper-Metadata-Length: %d\r\n\r\n" % len(meta)
    )
    _cut_upload(c, head, meta + b"N" * 1000)
    time.sleep(0.3)
    assert store.to_bytes("cv") == b"old"
    assert store.get_metadata("cv") == {"m": 1}


ML = "X-Storekeeper-Metadata-Length"


def test_value_part_roundtrip(c: Client, store: Any) -> None:
    meta = json.dumps({"é": 1}).encode()
    r = c("PUT", "/store/v/value", meta + b"DATA", headers={ML: str(len(meta))})
    assert r.status < 300, r
    assert store.to_bytes("v") == b"DATA"
    assert store.get_metadata("v") == {"é": 1}
    r = c("GET", "/store/v/value")
    n = int(r.headers[ML])
    assert json.loads(r.body[:n]) == {"é": 1}
    assert r.body[n:] == b"DATA"


_VALUE_PART_BAD_METADATA_LENGTH_IS_400_CASES = _cases(
    "length", [None, "-1", "abc", "999", "3", "1e3", " 8"]
)


def _check_value_part_bad_metadata_length_is_400(c: Client, store: Any, length: str | None) -> None:
    store.set("v", (b"old", {"m": 1}))
    meta = b'{"m": 2}'
    headers = {} if length is None else {ML: length}
    r = c("PUT", "/store/v/value", meta + b"new", headers=headers)
    if length == " 8" and r.status < 300:  # header whitespace is legal (RFC 9110 5.5)
        assert store.to_bytes("v") == b"new"
        return
    assert r.status == 400, r
    assert store.to_bytes("v") == b"old"
    assert store.get_metadata("v") == {"m": 1}


def test_value_part_bad_metadata_length_is_400(c: Any, store: Any) -> None:
    for case in _VALUE_PART_BAD_METADATA_LENGTH_IS_400_CASES:
        _check_value_part_bad_metadata_length_is_400(c, store, *case)


def test_max_upload_is_413_and_nothing_stored(store: Any) -> None:
    store.set("lim", (b"old", {}))
    with ServerThread(create_app(store, max_upload=1000)) as srv:
        c = Client(srv.url)
        r = c("PUT", "/store/lim/data", b"x" * 5000)
        assert r.status == 413, r
        r = c("PUT", "/store/lim/data", [b"x" * 600, b"y" * 600], chunked=True)
        assert r.status == 413, r
        assert store.to_bytes("lim") == b"old"
        assert c("PUT", "/store/lim/data", b"x" * 1000).status < 300


# --------------------------------------------------------------------------- bad bodies, methods


BAD_METADATA = [b"{bad", b"[1, 2]", b"null", b'"text"', b"42", b"\xff\xfe", b"", b'{"a": NaN}']


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_bad_metadata_is_400_nothing_stored(c: Client, store: Any, method: str) -> None:
    store.set("bm", (b"d", {"m": 1}))
    for body in BAD_METADATA:
        r = c(method, "/store/bm/metadata", body)
        assert r.status == 400, (body, r)
        assert store.get_metadata("bm") == {"m": 1}
        r = c(method, "/store/newbm/metadata", body)
        assert r.status in (400, 404), (body, r)
        assert not store.exists("newbm")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}",
        b'{"a": "\\ud800"}',
        b'{"a": 1, "a": 2}',
        b'{"a": 1e999}',
    ],
    ids=["very-deep", "deep", "lone-surrogate", "duplicate", "inf"],
)
def test_hostile_metadata_json_is_4xx_or_stored(c: Client, store: Any, body: bytes) -> None:
    store.set("hj", (b"d", {"m": 1}))
    r = c("PUT", "/store/hj/metadata", body)
    assert r.status < 300 or 400 <= r.status < 500, r
    if r.status >= 300:
        assert store.get_metadata("hj") == {"m": 1}
    assert alive(c)


def test_expect_100_continue_upload(c: Client, store: Any) -> None:
    with socket.create_connection((c.host, c.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /store/curl/data HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        first = sock.recv(1000)
        assert first.startswith(b"HTTP/1.1 100"), first
        sock.sendall(b"hello")
        assert sock.recv(1000).split(b" ")[1].startswith(b"2")
    assert store.to_bytes("curl") == b"hello"


def test_content_length_with_chunked_is_not_smuggled(c: Client, store: Any) -> None:
    out = c.raw(
        b"PUT /store/sm/data HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    status = int(out.split(b" ")[1])
    assert status < 300 or 400 <= status < 500, out
    if status < 300:
        assert store.to_bytes("sm") == b"hello"
    else:
        assert not store.exists("sm")


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/query", '{"where": ' + DEEP + "}"),
        ("/query", '{"where": {}, "select": ' + DEEP + "}"),
        ("/batch", '{"op": "delete", "key": ' + DEEP + "}\n"),
    ],
    ids=["query-where", "query-select", "batch"],
)
def test_deep_json_in_query_and_batch_is_400(c: Client, store: Any, path: str, body: str) -> None:
    store.set("keep", (b"keep", {}))
    r = c("POST", path, body)
    assert r.status == 400, r
    assert store.to_bytes("keep") == b"keep"


def test_deep_json_in_metadata_and_query_parameters_is_400(c: Client, store: Any) -> None:
    store.set("keep", (b"keep", {"m": 1}))
    for method in ("PUT", "POST"):
        for key in ("keep", "fresh"):
            r = c(method, f"/store/{key}/metadata", '{"a": ' + DEEP + "}")
            assert r.status == 400, (method, key, r)
            assert "nested too deeply" in r.json()["message"], r
    r = c("GET", "/query?a=" + quote(DEEP))
    assert r.status == 400, r
    assert store.get_metadata("keep") == {"m": 1}
    assert list(store.list_keys()) == ["keep"]


def test_error_body_is_json(c: Client) -> None:
    r = c("PUT", "/store/x/metadata", b"{bad")
    assert r.headers["Content-Type"].startswith("application/json")
    assert set(r.json()) >= {"error", "message"}


def test_huge_metadata_is_a_clear_answer(c: Client, store: Any) -> None:
    store.set("hm", (b"d", {"m": 1}))
    huge = json.dumps({"blob": "x" * (20 << 20)}).encode()
    r = c("PUT", "/store/hm/metadata", huge)
    assert r.status < 300 or r.status == 413, r
    if r.status < 300:
        assert len(store.get_metadata("hm")["blob"]) == 20 << 20
    else:
        assert store.get_metadata("hm") == {"m": 1}
    assert alive(c)


WRONG_METHODS = [
    ("PATCH", "/store/wm/data"),
    ("POST", "/store/wm/data"),
    ("DELETE", "/store/wm/data"),  # the key 'wm/data', which does not exist: 404
    ("DELETE", "/store/wm/metadata"),
    ("PATCH", "/store/wm/metadata"),
    ("PUT", "/store/wm"),
    ("POST", "/store/wm"),
    ("PUT", "/query"),
    ("DELETE", "/query"),
    ("BREW", "/store/wm/data"),
]


def test_wrong_methods_are_4xx_nothing_stored(c: Client, store: Any) -> None:
    store.set("wm", (b"old", {"m": 1}))
    for method, path in WRONG_METHODS:
        r = c(method, path, b'{"m": 2}')
        assert 400 <= r.status < 500 or r.status == 501, (method, path, r)
        assert store.to_bytes("wm") == b"old"
        assert store.get_metadata("wm") == {"m": 1}
        assert list(store.list_keys()) == ["wm"]


@pytest.mark.parametrize(
    ("method", "path"), [("PATCH", "/store/wm/data"), ("POST", "/store/wm/data")]
)
def test_405_carries_allow_header(c: Client, store: Any, method: str, path: str) -> None:
    store.set("wm", (b"old", {}))
    r = c(method, path, b"x")
    assert r.status == 405, r
    assert r.headers.get("Allow"), r


def test_unknown_part_is_404_nothing_stored(c: Client, store: Any) -> None:
    r = c("PUT", "/store/wm/bogus", b"x")
    assert r.status in (404, 405), r
    assert list(store.list_keys()) == []


def test_post_metadata_on_missing_key_is_404(c: Client, store: Any) -> None:
    r = c("POST", "/store/missing/metadata", b'{"a": 1}')
    assert r.status == 404, r
    assert not store.exists("missing")


# --------------------------------------------------------------------------- read-only server


_READ_ONLY_SERVER_REFUSES_WRITES_CASES = _cases(
    ("method", "path", "body"),
    [
        ("PUT", "/store/ro/data", b"new"),
        ("PUT", "/store/ro/metadata", b'{"a": 2}'),
        ("POST", "/store/ro/metadata", b'{"a": 2}'),
        ("PUT", "/store/other/data", b"new"),
        ("DELETE", "/store/ro", None),
        ("PUT", "/store/ro/auth", b'{"get": ["x"]}'),
        ("POST", "/batch", b'{"op": "delete", "key": "ro"}\n'),
    ],
)


def _check_read_only_server_refuses_writes(
    ro_client: Client, store: Any, method: str, path: str, body: bytes | None
) -> None:
    r = ro_client(method, path, body)
    assert r.status in (403, 404, 405), r
    assert store.to_bytes("ro") == b"old"
    assert store.get_metadata("ro") == {"a": 1}
    assert list(store.list_keys()) == ["ro"]
    assert ro_client("GET", "/store/ro/data").body == b"old"


def test_read_only_server_refuses_writes(ro_client: Any, store: Any) -> None:
    for case in _READ_ONLY_SERVER_REFUSES_WRITES_CASES:
        _check_read_only_server_refuses_writes(ro_client, store, *case)


# --------------------------------------------------------------------------- concurrency


def test_fifty_concurrent_clients(c: Client, store: Any) -> None:
    n = 50
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            conn = http.client.HTTPConnection(c.host, c.port, timeout=30)
            conn.connect()
            barrier.wait(timeout=20)
            body = f"value {i}".encode() * 100
            conn.request("PUT", f"/store/conc/{i}/data", body)
            r = conn.getresponse()
            r.read()
            assert r.status < 300
            conn.request("GET", f"/store/conc/{i}/data")
            r = conn.getresponse()
            assert r.read() == body
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert errors == []
    assert len(list(store.list_keys("conc/"))) == n


@contextlib.contextmanager
def open_sockets(c: Client, n: int, payload: bytes = b"") -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.create_connection((c.host, c.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if payload:
                sock.sendall(payload)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _responsive(c: Client, store: Any, tag: str) -> None:
    t0 = time.monotonic()
    assert c("PUT", f"/store/resp/{tag}/data", b"ok").status < 300
    assert c("GET", f"/store/resp/{tag}/data").body == b"ok"
    assert c("GET", "/query").status == 200
    assert time.monotonic() - t0 < 5
    assert store.to_bytes(f"resp/{tag}") == b"ok"


def test_idle_connections_do_not_starve_others(c: Client, store: Any) -> None:
    with open_sockets(c, 100):
        _responsive(c, store, "idle")


def test_sixty_sse_listeners_do_not_starve_others(c: Client, store: Any) -> None:
    with open_sockets(c, 60, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n") as socks:
        time.sleep(0.5)
        _responsive(c, store, "sse")
        for sock in socks[:: len(socks) // 5]:
            sock.settimeout(5)
            got = b""
            while b"resp/sse" not in got:
                got += sock.recv(65536)


def test_fifty_stalled_downloads_do_not_starve_others(c: Client, store: Any) -> None:
    store.set("big", (os.urandom(4 << 20), {}))
    with open_sockets(c, 50, b"GET /store/big/data HTTP/1.1\r\nHost: x\r\n\r\n"):
        time.sleep(0.5)
        _responsive(c, store, "dl")


def test_fifty_stalled_uploads_do_not_starve_others(c: Client, store: Any) -> None:
    store.set("up", (b"old", {}))
    head = b"PUT /store/up/data HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial"
    with open_sockets(c, 50, head):
        time.sleep(0.5)
        _responsive(c, store, "ul")
    time.sleep(0.3)
    assert store.to_bytes("up") == b"old"


def test_huge_headers_are_refused_cleanly(c: Client) -> None:
    r = c("GET", "/query", headers={"X-Big": "x" * 200_000})
    assert r.status < 500
    assert alive(c)


@pytest.mark.parametrize("size", [200_000, 24 << 20], ids=["inline", "file"])
@pytest.mark.parametrize("action", ["overwrite", "delete"])
def test_download_during_overwrite_is_never_mixed(
    c: Client, store: Any, size: int, action: str
) -> None:
    old = b"A" * size
    store.set("mix", (old, {}))
    with socket.create_connection((c.host, c.port), timeout=10) as sock:
        sock.sendall(b"GET /store/mix/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = sock.recv(1000)
        if action == "overwrite":
            assert c("PUT", "/store/mix/data", b"B" * size).status < 300
        else:
            assert c("DELETE", "/store/mix").status < 300
        sock.settimeout(10)
        while chunk := sock.recv(1 << 20):
            got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n")[0]
    assert body in (old, b"B" * size), (len(body), body.count(b"A"), body.count(b"B"))


def test_etag_not_reused_after_delete_and_recreate(c: Client, store: Any) -> None:
    assert c("PUT", "/store/aba/data", b"same").status < 300
    etag1 = c("HEAD", "/store/aba/data").headers["ETag"]
    assert c("DELETE", "/store/aba").status < 300
    assert c("PUT", "/store/aba/data", b"same").status < 300
    etag2 = c("HEAD", "/store/aba/data").headers["ETag"]
    assert etag1 != etag2
    r = c("PUT", "/store/aba/data", b"late", headers={"If-Match": etag1})
    assert r.status == 412
    assert store.to_bytes("aba") == b"same"


def test_abandoned_download_does_not_disturb_server(c: Client, store: Any) -> None:
    value = os.urandom(8 << 20)
    store.set("huge", (value, {}))
    for _ in range(5):
        with socket.create_connection((c.host, c.port), timeout=10) as sock:
            sock.sendall(b"GET /store/huge/data HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    r = c("GET", "/store/huge/data", headers={"Range": "bytes=-10"})
    assert r.body == value[-10:]
    assert c("PUT", "/store/after/data", b"fine").status < 300
    assert store.to_bytes("after") == b"fine"
    assert c("GET", "/store/huge/data").body == value


def test_concurrent_if_match_race_has_one_winner(c: Client, store: Any) -> None:
    store.set("race", (b"start", {}))
    etag = c("HEAD", "/store/race/data").headers["ETag"]
    n = 16
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def worker(i: int) -> None:
        barrier.wait(timeout=10)
        statuses.append(c("PUT", "/store/race/data", f"w{i}".encode(), {"If-Match": etag}).status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses).count(412) == n - 1, statuses
    assert len([st for st in statuses if st < 300]) == 1
    assert store.to_bytes("race").startswith(b"w")


def test_pipelined_requests_answered_in_order(c: Client, store: Any) -> None:
    store.set("p1", (b"one", {}))
    store.set("p2", (b"two", {}))
    out = c.raw(
        b"GET /store/p1/data HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /store/p2/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.index(b"one") < out.index(b"two")


def test_stalled_sse_clients_do_not_block_writers(c: Client, store: Any) -> None:
    stalled = []
    for _ in range(5):
        sock = socket.create_connection((c.host, c.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(sock)
    try:
        time.sleep(0.2)
        meta = json.dumps({"pad": "p" * 20_000})
        t0 = time.monotonic()
        for i in range(150):
            assert c("PUT", f"/store/flood/{i % 5}/metadata", meta).status < 300
        assert time.monotonic() - t0 < 20
        assert c("GET", "/store/flood/0/metadata").status == 200
    finally:
        for sock in stalled:
            sock.close()
    assert alive(c)


@contextlib.contextmanager
def cli_server(db: Path, *extra: str) -> Iterator[tuple[Client, subprocess.Popen[bytes]]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "storekeeper", "serve", f"sqlite:///{db}", "--port", str(port)]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cl = Client(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return cl("GET", "/query").status == 200
            except OSError:
                return False

        assert wait_for(up, 20)
        yield cl, proc
    finally:
        proc.terminate()
        proc.wait(10)


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError


def test_stalled_sse_clients_memory_is_bounded(tmp_path: Path) -> None:
    with cli_server(tmp_path / "sse.db") as (cl, proc):
        meta = json.dumps({"pad": "p" * 50_000})
        cl("PUT", "/store/warm/metadata", meta)
        base = vm_hwm(proc.pid)
        stalled = []
        for _ in range(10):
            sock = socket.create_connection((cl.host, cl.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(sock)
        try:
            time.sleep(0.3)
            for i in range(200):
                assert cl("PUT", f"/store/flood/{i % 5}/metadata", meta).status < 300
            grown = vm_hwm(proc.pid) - base
        finally:
            for sock in stalled:
                sock.close()
        # 10 stalled readers x 200 events x 50 kB = 100 MB if every event is queued
        assert grown < 48 << 20, grown


def test_server_memory_is_bounded_for_large_values(tmp_path: Path) -> None:
    db = tmp_path / "mem.db"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "storekeeper", "serve", f"sqlite:///{db}", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def hwm() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError

    try:
        cl = Client(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return cl("GET", "/query").status == 200
            except OSError:
                return False

        assert wait_for(up, 20)
        cl("PUT", "/store/warm/data", b"w" * 2_000_000)
        cl("GET", "/store/warm/data")
        base = hwm()
        size = 160 << 20
        block = os.urandom(1 << 20)
        r = cl("PUT", "/store/big/data", (block for _ in range(size >> 20)), chunked=True)
        assert r.status < 300
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/store/big/data")
        resp = conn.getresponse()
        total = 0
        while chunk := resp.read(1 << 20):
            total += len(chunk)
        conn.close()
        assert total == size
        assert hwm() - base < 64 << 20, (base, hwm())
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- auth


def test_auth_missing_or_wrong_credentials_are_401(auth_env: dict[str, Any]) -> None:
    anon = auth_env["anon"]
    for path in ["/store/shared/r/data", "/query", "/list", "/info", "/events"]:
        r = anon("GET", path)
        assert r.status == 401, (path, r)
        assert r.headers.get("WWW-Authenticate", "").startswith("Basic")
    wrong = Client(auth_env["url"], basic("alice", "nope"))
    assert wrong("GET", "/store/secret/a/data").status == 401
    ghost = Client(auth_env["url"], basic("ghost", "pw-alice"))
    assert ghost("GET", "/store/secret/a/data").status == 401
    bad = Client(auth_env["url"], {"Authorization": "Basic !!!notbase64"})
    assert bad("GET", "/store/secret/a/data").status == 401
    bad = Client(auth_env["url"], {"Authorization": "Bearer forged-token"})
    assert bad("GET", "/store/secret/a/data").status == 401
    r = anon("PUT", "/store/anon/data", b"x")
    assert r.status == 401
    assert not auth_env["base"].exists("anon")


def test_bearer_token_from_login(auth_env: dict[str, Any]) -> None:
    r = auth_env["bob"]("POST", "/login")
    assert r.status == 200, r
    token = r.json()["token"]
    bob = Client(auth_env["url"], {"Authorization": f"Bearer {token}"})
    assert bob("GET", "/store/shared/r/data").body == b"bob may read"
    assert bob("GET", "/store/secret/a/data").status == 404
    r = Client(auth_env["url"], basic("bob", "wrong"))("POST", "/login")
    assert r.status == 401


def test_auth_user_never_sees_hidden_keys(auth_env: dict[str, Any]) -> None:
    bob = auth_env["bob"]
    assert bob("GET", "/store/secret/a/data").status == 404
    assert bob("HEAD", "/store/secret/a/data").status == 404
    assert bob("GET", "/store/secret/a/metadata").status == 404
    assert bob("GET", "/store/secret/a/auth").status in (403, 404)
    assert bob("GET", "/store/secret/a/value").status == 404
    r = bob("GET", "/store/secret/a/data", headers={"Range": "bytes=0-3"})
    assert r.status == 404
    assert b"alice private" not in r.body
    listed = bob("GET", "/list").body.decode() + bob("GET", "/list?prefix=secret/").body.decode()
    assert "secret" not in listed
    assert "shared/r" in bob("GET", "/list").body.decode()
    q = bob("GET", "/query?tag=" + quote(json.dumps("x"))).body.decode().splitlines()
    assert q == ["shared/r"]
    assert "secret/a" not in bob("GET", "/query").body.decode()
    r = bob("POST", "/query", json.dumps({"where": {"tag": "x"}, "select": ["tag"]}))
    assert r.status == 200
    assert "secret" not in r.body.decode()


def test_auth_exists_only_key_is_403_to_read(auth_env: dict[str, Any]) -> None:
    bob = auth_env["bob"]
    r = bob("GET", "/store/shared/e/data")
    assert r.status == 403, r
    assert b"bob may see" not in r.body
    assert bob("GET", "/store/shared/e/metadata").status == 403


def test_auth_forbidden_writes_are_refused_and_untouched(auth_env: dict[str, Any]) -> None:
    bob, base = auth_env["bob"], auth_env["base"]
    for method, path, body in [
        ("PUT", "/store/shared/r/data", b"bob was here"),
        ("PUT", "/store/shared/r/metadata", b'{"tag": "bob"}'),
        ("POST", "/store/shared/r/metadata", b'{"tag": "bob"}'),
        ("PUT", "/store/shared/r/auth", b'{"owned": ["bob"]}'),
        ("POST", "/store/shared/r/auth", b'{"set": ["bob"]}'),
        ("DELETE", "/store/shared/r", None),
    ]:
        r = bob(method, path, body)
        assert r.status == 403, (method, path, r)
    for method, path, body in [
        ("PUT", "/store/secret/a/data", b"bob was here"),
        ("PUT", "/store/secret/a/metadata", b'{"tag": "bob"}'),
        ("POST", "/store/secret/a/metadata", b'{"tag": "bob"}'),
        ("PUT", "/store/secret/a/auth", b'{"owned": ["bob"]}'),
        ("DELETE", "/store/secret/a", None),
    ]:
        r = bob(method, path, body)
        assert r.status in (403, 404), (method, path, r)
    assert base.to_bytes("shared/r") == b"bob may read"
    assert base.to_bytes("secret/a") == b"alice private"
    assert auth_env["alice"]("GET", "/store/secret/a/metadata").json() == {"tag": "x"}
    assert auth_env["alice"]("GET", "/store/shared/r/metadata").json() == {"tag": "x"}
    assert auth_env["alice"]("GET", "/store/secret/a/auth").json() == {"owned": ["alice"]}


def test_auth_batch_cannot_smuggle_writes(auth_env: dict[str, Any]) -> None:
    bob, base = auth_env["bob"], auth_env["base"]
    body = (
        b'{"op": "set", "key": "bob/own", "metadata": {}, "size": 2}\nok'
        b'{"op": "set", "key": "secret/a", "metadata": {}, "size": 4}\nevil'
    )
    r = bob("POST", "/batch", body)
    assert r.status in (403, 404), r
    assert base.to_bytes("secret/a") == b"alice private"
    assert not base.exists("bob/own")  # one transaction: all or nothing
    r = bob("POST", "/batch", b'{"op": "delete", "key": "shared/r"}\n')
    assert r.status in (403, 404)
    assert base.exists("shared/r")


def test_auth_user_records_are_unreachable(auth_env: dict[str, Any]) -> None:
    bob = auth_env["bob"]
    for path in ["/store/.user_alice/data", "/store/.user_alice/metadata"]:
        r = bob("GET", path)
        assert r.status in (403, 404), r
        assert b"alice" not in r.body or b"error" in r.body
    r = bob("PUT", "/store/.user_alice/data", b"{}")
    assert r.status in (400, 403, 404), r
    assert ".user_" not in bob("GET", "/list").body.decode()
    assert ".user_" not in bob("GET", "/query").body.decode()
    assert Client(auth_env["url"], basic("alice", "pw-alice"))("GET", "/info").status == 200


def test_auth_exists_only_metadata_is_no_query_oracle(auth_env: dict[str, Any]) -> None:
    alice, bob = auth_env["alice"], auth_env["bob"]
    assert alice("PUT", "/store/shared/e/metadata", b'{"salary": 123456}').status < 300
    # bob may see shared/e but not read it: matching on its metadata would leak it
    hits = bob("GET", "/query?salary=" + quote(json.dumps(123456))).body.decode().splitlines()
    misses = bob("GET", "/query?salary=" + quote(json.dumps(1))).body.decode().splitlines()
    assert hits == misses, (hits, misses)
    r = bob("POST", "/query", json.dumps({"where": {}, "select": ["salary"]}))
    assert r.status == 200
    assert b"123456" not in r.body
    for method in ("GET", "HEAD"):
        r = bob(method, "/store/shared/e/data", headers={"Range": "bytes=0-3"})
        assert r.status == 403, r
        assert b"bob may see" not in r.body


def test_auth_more_forbidden_parts(auth_env: dict[str, Any]) -> None:
    bob, alice, base = auth_env["bob"], auth_env["alice"], auth_env["base"]
    r = bob("GET", "/store/shared/r/auth")
    assert r.status == 403, r
    assert b"owned" not in r.body
    meta = b'{"m": 1}'
    r = bob("PUT", "/store/shared/r/value", meta + b"evil", {ML: str(len(meta))})
    assert r.status == 403, r
    assert base.to_bytes("shared/r") == b"bob may read"
    assert bob("GET", "/store/shared/r/value").status == 200
    r = alice("PUT", "/store/.user_mallory/data", b'{"password": "x"}')
    assert 400 <= r.status < 500, r
    assert not base.exists(".user_mallory")


def test_auth_scheme_is_case_insensitive(auth_env: dict[str, Any]) -> None:
    token = base64.b64encode(b"bob:pw-bob").decode()
    bob = Client(auth_env["url"], {"Authorization": f"basic {token}"})
    assert bob("GET", "/info").status == 200  # RFC 9110 11.1: schemes are case-insensitive


def test_auth_utf8_basic_credentials(tmp_path: Path) -> None:
    base = open_store(f"sqlite:///{tmp_path / 'u.db'}")
    auth = SimpleAuthStore(base, make_encoder(b"salt", n=16))
    auth.add_user("zoë", "pässwörd ☃")
    try:
        with ServerThread(create_app(base, auth=auth)) as srv:
            zoe = Client(srv.url, basic("zoë", "pässwörd ☃"))
            assert zoe("GET", "/info").json()["user"] == "zoë"
            assert zoe("PUT", "/store/z/data", b"z").status < 300
    finally:
        base.disconnect()


def test_auth_info_names_user(auth_env: dict[str, Any]) -> None:
    info = auth_env["bob"]("GET", "/info").json()
    assert info["user"] == "bob"
    assert info["auth"]


# --------------------------------------------------------------------------- SSE


class SSE:
    def __init__(
        self, client: Client, path: str = "/events", headers: dict[str, str] | None = None
    ):
        self.sock = socket.create_connection((client.host, client.port), timeout=10)
        hdrs = {**client.headers, **(headers or {})}
        lines = [f"GET {path} HTTP/1.1", "Host: x", "Accept: text/event-stream"]
        lines += [f"{n}: {v}" for n, v in hdrs.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        self.chunked = "transfer-encoding: chunked" in self.head.lower()
        self.text = ""
        self._raw = b""

    def _recv(self) -> bytes:
        got = self.sock.recv(65536)
        if not got:
            raise EOFError
        return got

    def _feed(self) -> None:
        if self.buf:
            data, self.buf = self.buf, b""
        else:
            data = self._recv()
        if not self.chunked:
            self.text += data.decode()
            return
        self._raw += data
        while True:
            if b"\r\n" not in self._raw:
                return
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.text += rest[:size].decode()
            self._raw = rest[size + 2 :]

    def next_event(self, timeout: float = 5.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            norm = self.text.replace("\r\n", "\n")
            if "\n\n" in norm:
                block, rest = norm.split("\n\n", 1)
                self.text = rest
                fields: dict[str, str] = {}
                for line in block.split("\n"):
                    if not line or line.startswith(":"):
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = fields[name] + "\n" + value if name in fields else value
                if "data" in fields or "event" in fields:
                    return fields
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(self.text)
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            self._feed()

    def close(self) -> None:
        self.sock.close()


def test_sse_events_and_last_event_id_resume(c: Client, store: Any) -> None:
    sse = SSE(c)
    try:
        assert "200" in sse.head.split("\r\n")[0]
        assert "text/event-stream" in sse.head.lower()
        assert c("PUT", "/store/ev/1/data", b"x").status < 300
        ev = sse.next_event()
        first = json.loads(ev["data"])
        assert first["key"] == "ev/1"
        assert first["type"] == "set"
        cursor = ev["id"]
    finally:
        sse.close()
    assert c("PUT", "/store/ev/2/metadata", b'{"a": 1}').status < 300
    assert c("POST", "/store/ev/2/metadata", b'{"b": 2}').status < 300
    assert c("DELETE", "/store/ev/1").status < 300
    sse = SSE(c, headers={"Last-Event-ID": cursor})
    try:
        got = [json.loads(sse.next_event()["data"]) for _ in range(3)]
    finally:
        sse.close()
    assert [(e["type"], e["key"]) for e in got] == [
        ("set", "ev/2"),
        ("update", "ev/2"),
        ("delete", "ev/1"),
    ]
    assert got[1]["metadata"] == {"a": 1, "b": 2}
    sse = SSE(c, f"/events?last_event_id={quote(cursor)}")
    try:
        assert json.loads(sse.next_event()["data"])["key"] == "ev/2"
    finally:
        sse.close()


def test_sse_unknown_cursor_gives_reset(c: Client) -> None:
    sse = SSE(c, headers={"Last-Event-ID": "deadbeef.999999"})
    try:
        ev = sse.next_event()
        assert ev.get("event") == "reset", ev
    finally:
        sse.close()


def test_sse_never_names_hidden_keys(auth_env: dict[str, Any]) -> None:
    alice, bob = auth_env["alice"], auth_env["bob"]
    sse = SSE(bob)
    try:
        assert alice("PUT", "/store/secret/new/data", b"hidden").status < 300
        assert alice("PUT", "/store/secret/a/data", b"hidden2").status < 300
        assert alice("POST", "/store/secret/a/metadata", b'{"z": 1}').status < 300
        assert alice("DELETE", "/store/secret/a").status < 300
        assert alice("PUT", "/store/shared/r/data", b"visible").status < 300
        ev = sse.next_event()
        data = json.loads(ev["data"])
        assert data["key"] == "shared/r", ev
        assert "secret" not in sse.text
    finally:
        sse.close()
    assert alice("PUT", "/store/secret/b/data", b"hidden3").status < 300
    assert alice("PUT", "/store/shared/r/metadata", b'{"tag": "y"}').status < 300
    # resuming must not replay hidden keys either
    sse = SSE(bob, headers={"Last-Event-ID": ev["id"]})
    try:
        data = json.loads(sse.next_event()["data"])
        assert (data["key"], data["metadata"]) == ("shared/r", {"tag": "y"})
        assert "secret" not in sse.text
    finally:
        sse.close()


def test_auth_listing_folders_hide_hidden_keys(auth_env: dict[str, Any]) -> None:
    bob = auth_env["bob"]
    for path in ["/list?delimiter=/", "/list?prefix=s&delimiter=/", "/list?prefix=secret/"]:
        r = bob("GET", path)
        assert r.status == 200
        assert "secret" not in r.body.decode(), (path, r)
    r = bob("GET", "/list?delimiter=/", headers={"Accept": "application/x-ndjson"})
    assert "secret" not in r.body.decode()
    q = "/query?tag=" + quote(json.dumps({"$prefix": ""}))
    assert "secret" not in bob("GET", q).body.decode()
    r = bob("POST", "/query", json.dumps({"where": {"tag": {"$exists": True}}}))
    assert "secret" not in r.body.decode()


def test_auth_password_change_and_removal_end_access(tmp_path: Path) -> None:
    base = open_store(f"sqlite:///{tmp_path / 'pw.db'}")
    auth = SimpleAuthStore(base, make_encoder(b"salt", n=16), recheck_interval=0.2)
    auth.add_user("bob", "old-pw")
    auth.add_user("carol", "pw-carol")
    try:
        with ServerThread(create_app(base, auth=auth)) as srv:
            bob = Client(srv.url, basic("bob", "old-pw"))
            carol = Client(srv.url, basic("carol", "pw-carol"))
            token = bob("POST", "/login").json()["token"]
            bearer = Client(srv.url, {"Authorization": f"Bearer {token}"})
            assert bob("GET", "/info").status == 200
            assert carol("GET", "/info").status == 200
            auth.change_user("bob", "new-pw")
            auth.remove_user("carol")
            time.sleep(0.5)  # past recheck_interval (documented grace)
            assert bob("GET", "/info").status == 401
            assert bearer("GET", "/info").status == 401
            assert carol("GET", "/info").status == 401
            assert Client(srv.url, basic("bob", "new-pw"))("GET", "/info").status == 200
    finally:
        base.disconnect()


def test_auth_token_expires(tmp_path: Path) -> None:
    base = open_store(f"sqlite:///{tmp_path / 'tok.db'}")
    auth = SimpleAuthStore(base, make_encoder(b"salt", n=16))
    auth.add_user("dave", "pw")
    try:
        with ServerThread(create_app(base, auth=auth, token_lifetime=0.5)) as srv:
            token = Client(srv.url, basic("dave", "pw"))("POST", "/login").json()["token"]
            dave = Client(srv.url, {"Authorization": f"Bearer {token}"})
            assert dave("GET", "/info").status == 200
            time.sleep(0.8)
            assert dave("GET", "/info").status == 401
    finally:
        base.disconnect()


def test_revoked_user_stops_seeing_key_everywhere(auth_env: dict[str, Any]) -> None:
    alice, bob = auth_env["alice"], auth_env["bob"]
    assert bob("GET", "/store/shared/r/data").status == 200
    sse = SSE(bob)
    try:
        r = alice("PUT", "/store/shared/r/auth", b'{"owned": ["alice"]}')
        assert r.status < 300, r
        assert alice("PUT", "/store/shared/r/metadata", b'{"tag": "after-revoke"}').status < 300
        assert alice("PUT", "/store/shared/r/data", b"after revoke").status < 300
        assert alice("PUT", "/store/shared/e/data", b"marker").status < 300
        events = []
        while True:
            data = json.loads(sse.next_event()["data"])
            events.append(data)
            if data["key"] == "shared/e":
                break
        assert "after-revoke" not in json.dumps(events), events
        assert len([e for e in events if e["key"] == "shared/r"]) <= 1, events
    finally:
        sse.close()
    assert bob("GET", "/store/shared/r/data").status == 404
    assert "shared/r" not in bob("GET", "/list").body.decode()
    assert "shared/r" not in bob("GET", "/query").body.decode()


def test_sse_metadata_null_for_exists_only(auth_env: dict[str, Any]) -> None:
    alice, bob = auth_env["alice"], auth_env["bob"]
    sse = SSE(bob)
    try:
        assert alice("PUT", "/store/shared/e/metadata", b'{"private": "meta"}').status < 300
        data = json.loads(sse.next_event()["data"])
        assert data["key"] == "shared/e"
        assert data["metadata"] is None
    finally:
        sse.close()


def _batch(*ops: tuple[dict[str, Any], bytes]) -> bytes:
    out = b""
    for op, data in ops:
        line = {**op, "size": len(data)} if op["op"] in ("set", "set_data") else op
        out += json.dumps(line).encode() + b"\n" + data
    return out


def test_batch_is_all_or_nothing_and_silent_on_failure(c: Client, store: Any) -> None:
    store.set("keep", (b"keep", {}))
    sse = SSE(c)
    try:
        body = _batch(
            ({"op": "set", "key": "b/1", "metadata": {"a": 1}}, b"one"),
            ({"op": "delete", "key": "keep"}, b""),
            ({"op": "delete", "key": "b/missing"}, b""),
        )
        r = c("POST", "/batch", body)
        assert 400 <= r.status < 500, r
        assert not store.exists("b/1")
        assert store.to_bytes("keep") == b"keep"
        r = c("POST", "/batch", _batch(({"op": "set", "key": "b/2", "metadata": {}}, b"two")))
        assert r.status == 200, r
        ev = json.loads(sse.next_event()["data"])
        assert ev["key"] == "b/2", ev  # nothing was announced for the failed batch
    finally:
        sse.close()
    assert store.to_bytes("b/2") == b"two"


_BAD_BATCH_IS_400_NOTHING_APPLIED_CASES = _cases(
    "body",
    [
        b'{"op": "set", "key": "x", "metadata": {}, "size": 100}\nshort',
        b'{"op": "explode", "key": "x"}\n',
        b'{"op": "set", "key": "x", "metadata": {}, "size": 1}\nA{not json\n',
        b'{"op": "set", "key": "x", "metadata": [], "size": 1}\nA',
        b'{"op": "set", "key": "", "metadata": {}, "size": 1}\nA',
        b'{"op": "set", "key": "x", "metadata": {}, "size": -1}\nA',
        b"[1, 2, 3]\n",
    ],
    ids=["short", "unknown-op", "bad-json", "meta-list", "empty-key", "neg-size", "not-object"],
)


def _check_bad_batch_is_400_nothing_applied(c: Client, store: Any, body: bytes) -> None:
    store.set("keep", (b"keep", {}))
    prefix = b'{"op": "delete", "key": "keep"}\n'
    r = c("POST", "/batch", prefix + body)
    assert 400 <= r.status < 500, r
    assert store.to_bytes("keep") == b"keep"
    assert sorted(store.list_keys()) == ["keep"]
    assert alive(c)


def test_bad_batch_is_400_nothing_applied(c: Any, store: Any) -> None:
    for case in _BAD_BATCH_IS_400_NOTHING_APPLIED_CASES:
        _check_bad_batch_is_400_nothing_applied(c, store, *case)


# --------------------------------------------------------------------------- DynamicURLStore


@pytest.fixture
def dyn(server: ServerThread) -> Iterator[Any]:
    s = open_store(server.url + "/store")
    yield s
    s.disconnect()


def test_dynamic_conditional_writes(dyn: Any, store: Any) -> None:
    v1 = dyn.set("cw", (b"one", {"a": 1}))
    assert store.to_bytes("cw") == b"one"
    with pytest.raises(ConflictError):
        dyn.set("cw", (b"two", {}), if_exists=False)
    with pytest.raises(ConflictError):
        dyn.set("cw", (b"two", {}), if_version="bogus")
    assert store.to_bytes("cw") == b"one"
    v2 = dyn.set("cw", (b"two", {}), if_version=v1)
    assert v2 != v1
    assert dyn.version_of("cw") == v2
    with pytest.raises(ConflictError):
        dyn.set_metadata("cw", {"b": 2}, if_version=v1)
    with pytest.raises(ConflictError):
        dyn.delete("cw", if_version=v1)
    assert store.to_bytes("cw") == b"two"
    with pytest.raises(ConflictError):
        dyn.set("fresh", (b"x", {}), if_exists=True)
    assert not store.exists("fresh")


_DYNAMIC_RANGES_END_EXCLUSIVE_CASES = _cases(
    ("start", "end"), [(0, 4), (2, 5), (5, None), (None, 3), (0, 0), (95, 200), (3, 3)]
)


def _check_dynamic_ranges_end_exclusive(dyn: Any, store: Any, start: Any, end: Any) -> None:
    store.set("r", (DATA, {}))
    with dyn.get_data_range("r", start, end) as stream:
        got = stream.read()
    expected = store.get_data_range("r", start, end)
    with expected as e:
        assert got == e.read()
    assert got == DATA[slice(start, end)]


def test_dynamic_ranges_end_exclusive(dyn: Any, store: Any) -> None:
    for case in _DYNAMIC_RANGES_END_EXCLUSIVE_CASES:
        _check_dynamic_ranges_end_exclusive(dyn, store, *case)


def test_dynamic_hostile_keys_roundtrip(dyn: Any, store: Any) -> None:
    keys = [
        "a+b",
        "a%2F",
        "x%25",
        "q?x#y",
        "{part}",
        "{key}/{base}",
        "été/☃",
        "sp ace",
        "d/data",
        "a//b",
        "/lead",
        "t/",
    ]
    for key in keys:
        dyn.set(key, (key.encode(), {"k": key}))
    assert sorted(store.list_keys()) == sorted(keys)
    for key in keys:
        assert dyn.to_bytes(key) == key.encode()
        assert dyn.get_metadata(key) == {"k": key}
        assert dyn.exists(key)
    assert sorted(dyn.list_keys()) == sorted(keys)
    assert dyn.query_keys(k="a+b") == ["a+b"]
    for key in keys:
        dyn.delete(key)
    assert list(store.list_keys()) == []


def test_dynamic_transaction_rollback_and_commit(dyn: Any, store: Any) -> None:
    store.set("t/keep", (b"keep", {}))
    with pytest.raises(RuntimeError), dyn.transaction():
        dyn.set("t/a", (b"a", {}))
        dyn.delete("t/keep")
        raise RuntimeError
    assert not store.exists("t/a")
    assert store.to_bytes("t/keep") == b"keep"
    with dyn.transaction():
        dyn.set("t/a", (b"a", {}))
        dyn.set("t/b", (b"b", {"x": 1}))
        dyn.delete("t/keep")
        assert not store.exists("t/a")  # not applied before the commit
    assert store.to_bytes("t/a") == b"a"
    assert store.get_metadata("t/b") == {"x": 1}
    assert not store.exists("t/keep")


def test_dynamic_transaction_conflict_applies_nothing(dyn: Any, store: Any) -> None:
    store.set("t/x", (b"x", {}))
    with pytest.raises(ConflictError), dyn.transaction():
        dyn.set("t/new", (b"n", {}))
        dyn.set("t/x", (b"y", {}), if_exists=False)
    assert not store.exists("t/new")
    assert store.to_bytes("t/x") == b"x"


def test_dynamic_abandoned_streams_do_not_poison_the_pool(server: ServerThread, store: Any) -> None:
    from storekeeper.backends.http import DynamicURLStore

    value = os.urandom(4 << 20)
    store.set("big", (value, {}))
    dyn = DynamicURLStore(server.url + "/store", pool_size=2, timeout=10)
    dyn.connect()
    try:
        for _ in range(10):
            stream = dyn.get_data("big")
            assert stream.read(10) == value[:10]
            stream.close()
        for _ in range(4):
            dyn.get_data("big").read(10)  # never closed
        t0 = time.monotonic()
        for i in range(10):
            dyn.set(f"after/{i}", (b"x", {}))
            assert dyn.to_bytes(f"after/{i}") == b"x"
        assert dyn.get_data_range("big", 100, 110).read() == value[100:110]
        assert time.monotonic() - t0 < 8
    finally:
        dyn.disconnect()


class _Exploding:
    def __init__(self, good: int) -> None:
        self.left = good

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("disk on fire")
        n = 65536 if n is None or n < 0 else min(n, 65536)
        n = min(n, self.left)
        self.left -= n
        return b"N" * n


def test_dynamic_failing_source_keeps_old_value(dyn: Any, store: Any) -> None:
    store.set("src", (b"old value", {"m": 1}))
    with pytest.raises(OSError, match="disk on fire"):
        dyn.set("src", (_Exploding(3 << 20), {"m": 2}))
    with pytest.raises(OSError, match="disk on fire"):
        dyn.set_data("src", _Exploding(100))
    time.sleep(0.2)
    assert store.to_bytes("src") == b"old value"
    assert store.get_metadata("src") == {"m": 1}
    assert dyn.to_bytes("src") == b"old value"
    dyn.set("src", (iter([b"a", b"b", b"c"]), {}))
    assert store.to_bytes("src") == b"abc"


def test_dynamic_transaction_belongs_to_its_thread(dyn: Any, store: Any) -> None:
    ready, checked = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        ready.wait(10)
        seen.append(dyn.exists("tt/inside"))  # not this thread's transaction
        checked.set()
        dyn.set("tt/outside", (b"o", {}))  # may wait for the transaction: fine

    t = threading.Thread(target=other)
    t.start()
    with dyn.transaction():
        dyn.set("tt/inside", (b"i" * (2 << 20), {}))
        ready.set()
        assert checked.wait(10)
        assert not store.exists("tt/inside")
    t.join(10)
    assert seen == [False]
    assert store.to_bytes("tt/inside") == b"i" * (2 << 20)
    assert store.to_bytes("tt/outside") == b"o"


def _in_thread(fn: Any, timeout: float = 8) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "deadlocked"
    return out[0]


def test_dynamic_suspended_listing_does_not_block_the_pool(
    server: ServerThread, store: Any
) -> None:
    from storekeeper.backends.http import DynamicURLStore

    store.multiset([f"l/{i:05}" for i in range(3000)], [(b"x", {})] * 3000)
    dyn = DynamicURLStore(server.url + "/store", pool_size=1, timeout=10)
    dyn.connect()
    try:
        it = dyn.list_keys("l/")
        assert next(it) == "l/00000"
        assert _in_thread(lambda: dyn.to_bytes("l/00001")) == b"x"
        assert _in_thread(lambda: dyn.exists("l/00002"))
        it2 = dyn.list_keys("l/")
        next(it2)
        assert _in_thread(lambda: dyn.set("l/new", (b"n", {}))) is not None
        rest = list(it)
        assert rest[:2999] == [f"l/{i:05}" for i in range(1, 3000)]
        assert rest[2999:] in ([], ["l/new"])
    finally:
        dyn.disconnect()


def test_static_suspended_listing_does_not_deadlock(store: Any, tmp_path: Path) -> None:
    store.multiset([f"s/{i}" for i in range(50)], [(b"x", {"i": i}) for i in range(50)])
    site = tmp_path / "site"
    export_static(store, site, durable=False)
    s = open_read_only_store(site.as_uri().replace("file:", "file+static:", 1) + "?poll=0")
    try:
        it = s.list_keys("s/")
        next(it)
        store.set("s/new", (b"n", {}))
        export_static(store, site, durable=False)
        _in_thread(s.update_index)
        _in_thread(lambda: s.query_keys(i=3))
        list(it)
    finally:
        s.disconnect()


def test_static_polling_notices_changes(store: Any, tmp_path: Path) -> None:
    from storekeeper.store import StoreModificationEvent

    store.set("p", (b"1", {}))
    site = tmp_path / "site"
    export_static(store, site, durable=False)
    with static_http(site) as (url, _hits):
        s = open_read_only_store(url + "?static=true&poll=0.1")
        heard: list[str] = []

        def listen(e: Any) -> None:
            if e.source is s:
                heard.append(e.key)

        s.event_manager.connect(StoreModificationEvent, listen)
        try:
            store.set("q", (b"2", {}))
            export_static(store, site, durable=False)
            assert wait_for(lambda: "q" in heard, 5)
            assert s.to_bytes("q") == b"2"
        finally:
            s.disconnect()


def test_dynamic_missing_key_errors(dyn: Any) -> None:
    assert not dyn.exists("nope")
    with pytest.raises(KeyError):
        dyn.get("nope")
    with pytest.raises(KeyError):
        dyn.get_metadata("nope")
    with pytest.raises(KeyError):
        dyn.delete("nope")
    with pytest.raises(KeyError):
        dyn.update_metadata("nope", {"a": 1})


def test_dynamic_against_read_only_server(store: Any) -> None:
    store.set("ro", (b"old", {}))
    with ServerThread(create_app(store, read_only=True)) as srv:
        s = open_read_only_store(srv.url + "/store")
        try:
            assert s.to_bytes("ro") == b"old"
            with pytest.raises(Exception):
                s.set("ro", (b"new", {}))
            with pytest.raises(Exception):
                s.delete("ro")
        finally:
            s.disconnect()
    assert store.to_bytes("ro") == b"old"


def test_dynamic_remote_events(server: ServerThread, store: Any) -> None:
    from storekeeper.backends.http import DynamicURLStore
    from storekeeper.store import StoreModificationEvent

    listener = DynamicURLStore(server.url + "/store", remote_events=True)
    listener.connect()
    writer = DynamicURLStore(server.url + "/store")
    writer.connect()
    heard: list[tuple[str, str, bool]] = []

    def listen(e: Any) -> None:
        if e.source is listener:
            heard.append((type(e).__name__, e.key, bool(getattr(e, "remote", False))))

    listener.event_manager.connect(StoreModificationEvent, listen)
    try:
        time.sleep(0.3)
        writer.set("re/1", (b"x", {}))
        store.set("re/2", (b"y", {}))  # around the server: not served, maybe not heard
        writer.delete("re/1")
        listener.set("re/own", (b"own", {}))
        assert wait_for(lambda: ("StoreDeleteEvent", "re/1", True) in heard, 5), heard
        assert ("StoreSetEvent", "re/1", True) in heard
        time.sleep(0.2)
        assert [h for h in heard if h[1] == "re/own"] == [("StoreSetEvent", "re/own", False)]
    finally:
        listener.disconnect()
        writer.disconnect()


def test_dynamic_credentials_in_url(auth_env: dict[str, Any]) -> None:
    url = auth_env["url"].replace("http://", "http://bob:pw-bob@") + "/store"
    s = open_read_only_store(url)
    try:
        assert s.to_bytes("shared/r") == b"bob may read"
        assert s.user_tag == "bob"
    finally:
        s.disconnect()


def test_serve_refuses_auth_without_tls_off_loopback(tmp_path: Path) -> None:
    from storekeeper.server import InsecureAuthError, serve

    base = open_store(f"sqlite:///{tmp_path / 'ins.db'}")
    auth = SimpleAuthStore(base, make_encoder(b"salt", n=16))
    auth.add_user("eve", "pw")
    base.disconnect()
    caught: list[BaseException] = []

    def run() -> None:
        try:
            serve(f"sqlite:///{tmp_path / 'ins.db'}", host="0.0.0.0", port=0, auth=auth)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert caught
    assert isinstance(caught[0], InsecureAuthError)


def test_dynamic_auth_credentials(auth_env: dict[str, Any]) -> None:
    from storekeeper.backends.http import DynamicURLStore
    from storekeeper.errors import AuthenticationError

    s = DynamicURLStore(auth_env["url"] + "/store")
    with pytest.raises(AuthenticationError):
        s.connect({"username": "bob", "password": "wrong"})
    s = DynamicURLStore(auth_env["url"] + "/store")
    s.connect(("bob", "pw-bob"))
    try:
        assert sorted(s.list_keys()) == ["shared/e", "shared/r"]
        assert s.query_keys(tag="x") == ["shared/r"]
        assert not s.exists("secret/a")
        assert s.glob("secret/*") == []
    finally:
        s.disconnect()


# --------------------------------------------------------------------------- export / static


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def static_http(directory: Path) -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("H", (_Handler,), {"hits": hits})

    def factory(*args: Any, **kw: Any) -> Any:
        return handler(*args, directory=str(directory), **kw)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


STATIC_KEYS = {
    "a+b": {"n": 1},
    "a%2F": {"n": 2},
    "x%25y": {"n": 3},
    "q?x#y": {"n": 4},
    "été/☃": {"n": 5, "s": "ünï 😀 \u2028"},
    "sp ace/f": {"n": 6},
    "index.json": {"n": 7},
    "data": {"n": 8},
}


def test_export_and_static_read_hostile_keys(store: Any, tmp_path: Path) -> None:
    for key, meta in STATIC_KEYS.items():
        store.set(key, (b"v:" + key.encode(), meta))
    site = tmp_path / "site"
    summary = export_static(store, site, durable=False)
    assert summary.exported == len(STATIC_KEYS)
    raw = (site / "index.json").read_bytes()
    assert raw.isascii()
    assert json.loads(raw) == STATIC_KEYS
    with static_http(site) as (url, _hits):
        s = open_read_only_store(url + "?static=true&poll=0")
        try:
            assert sorted(s.list_keys()) == sorted(STATIC_KEYS)
            for key in STATIC_KEYS:
                assert s.to_bytes(key) == b"v:" + key.encode(), key
            assert s.query_keys(n=5) == ["été/☃"]
        finally:
            s.disconnect()


def test_static_store_is_read_only(store: Any, tmp_path: Path) -> None:
    store.set("k", (b"v", {}))
    export_static(store, tmp_path / "site", durable=False)
    s = open_read_only_store((tmp_path / "site").as_uri().replace("file:", "file+static:", 1))
    try:
        assert s.to_bytes("k") == b"v"
        with pytest.raises(Exception):
            s.set("k", (b"w", {}))
    finally:
        s.disconnect()
    assert json.loads((tmp_path / "site" / "index.json").read_text()) == {"k": {}}
    with pytest.raises(Exception):
        open_store((tmp_path / "site").as_uri().replace("file:", "file+static:", 1))


def test_static_polling_stops_on_disconnect(store: Any, tmp_path: Path) -> None:
    store.set("k", (b"v", {}))
    export_static(store, tmp_path / "site", durable=False)
    with static_http(tmp_path / "site") as (url, hits):
        s = open_read_only_store(url + "?static=true&poll=0.1")
        assert wait_for(lambda: sum("index.json" in h for h in hits) >= 3, 5)
        t0 = time.monotonic()
        s.disconnect()
        assert time.monotonic() - t0 < 2
        time.sleep(0.3)
        count = len(hits)
        time.sleep(0.6)
        assert len(hits) == count


def test_static_update_index_events(store: Any, tmp_path: Path) -> None:
    from storekeeper.store import StoreModificationEvent

    store.set("a", (b"1", {"v": 1}))
    store.set("b", (b"1", {}))
    site = tmp_path / "site"
    export_static(store, site, durable=False)
    s = open_read_only_store(site.as_uri().replace("file:", "file+static:", 1) + "?poll=0")
    seen: list[tuple[str, str]] = []

    def listen(e: Any) -> None:
        if e.source is s:  # the default event manager is shared with the SQLite store
            seen.append((type(e).__name__, e.key))

    s.event_manager.connect(StoreModificationEvent, listen)
    try:
        store.set("a", (b"1", {"v": 2}))
        store.delete("b")
        store.set("c", (b"1", {}))
        export_static(store, site, durable=False)
        s.update_index()
        assert sorted(seen) == [
            ("StoreDeleteEvent", "b"),
            ("StoreSetEvent", "c"),
            ("StoreUpdateEvent", "a"),
        ]
    finally:
        s.disconnect()


@pytest.mark.parametrize(
    "bad",
    [
        ["a", "a/b"],
        ["x/../y"],
        ["x/./y"],
        [".."],
        ["a//b"],
        ["trail/"],
        ["/lead"],
        ["s/" + "x" * 256],
        ["s/" + "é" * 128],
        ["a/b", "a/b/c"],
    ],
)
def test_export_refuses_keys_that_cannot_be_paths(
    store: Any, tmp_path: Path, bad: list[str]
) -> None:
    store.set("good", (b"g", {}))
    for key in bad:
        store.set(key, (b"b", {}))
    site = tmp_path / "site"
    with pytest.raises(InvalidKeyError) as info:
        export_static(store, site, durable=False)
    assert any(key in str(info.value) for key in bad)
    assert not site.exists() or not any(site.iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export_static(store, site, skip_invalid=True, durable=False)
    assert any(issubclass(w.category, ExportWarning) for w in caught)
    assert "good" in json.loads((site / "index.json").read_text())
    assert set(summary.skipped) <= set(bad)
    assert summary.skipped
    assert (site / "data" / "good").read_bytes() == b"g"


def test_export_refuses_non_export_directory(store: Any, tmp_path: Path) -> None:
    store.set("k", (b"v", {}))
    site = tmp_path / "site"
    site.mkdir()
    (site / "precious.txt").write_text("keep")
    with pytest.raises(NotAnExportError):
        export_static(store, site, durable=False)
    assert (site / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in site.iterdir()) == ["precious.txt"]


def test_export_refuses_a_file_target(store: Any, tmp_path: Path) -> None:
    store.set("k", (b"v", {}))
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(NotAnExportError):
        export_static(store, target, durable=False)
    assert target.read_text() == "keep"


def test_static_corrupt_index_keeps_the_old_one(store: Any, tmp_path: Path) -> None:
    store.set("a", (b"1", {}))
    site = tmp_path / "site"
    export_static(store, site, durable=False)
    with static_http(site) as (url, _hits):
        s = open_read_only_store(url + "?static=true&poll=0")
        deleted: list[str] = []

        def listen(e: Any) -> None:
            if e.source is s:
                deleted.append(e.key)

        from storekeeper.store import StoreDeleteEvent

        s.event_manager.connect(StoreDeleteEvent, listen)
        try:
            (site / "index.json").write_text('{"a": {}, "trunc')
            with contextlib.suppress(Exception):
                s.update_index()
            assert list(s.list_keys()) == ["a"]
            assert deleted == []
            (site / "index.json").write_text("[1, 2]")
            with contextlib.suppress(Exception):
                s.update_index()
            assert list(s.list_keys()) == ["a"]
            assert deleted == []
        finally:
            s.disconnect()


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under *root*, the export's own generation name written as GEN."""
    generation = json.loads((root / "generation.json").read_bytes())["generation"]
    return {
        str(p.relative_to(root)).replace(generation, "GEN"): p.read_bytes().replace(
            generation.encode(), b"GEN"
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_export_replace_equals_fresh_export_and_readers_never_miss(
    store: Any, tmp_path: Path
) -> None:
    for i in range(40):
        store.set(f"d{i % 4}/k{i}", (b"x" * i, {"i": i}))
    site = tmp_path / "site"
    export_static(store, site, durable=False)
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                index = json.loads((site / "index.json").read_bytes())
                assert index
                (site / "data" / "d0" / "k0").read_bytes()
            except Exception as exc:
                problems.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for round_ in range(6):
            store.set(f"d0/new{round_}", (b"n", {}))
            store.delete(f"d1/k{4 * round_ + 1}")
            export_static(store, site, durable=False)
    finally:
        stop.set()
        t.join()
    assert problems == []
    fresh = tmp_path / "fresh"
    export_static(store, fresh, durable=False)
    assert _tree(site) == _tree(fresh)
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("site", "fresh")] == [
        p.name for p in tmp_path.iterdir() if p.name.startswith("data.db")
    ]


def test_export_static_command(store: Any, tmp_path: Path) -> None:
    store.set("a/b", (b"cli", {"x": 1}))
    store.set("a", (b"clash", {}))
    site = tmp_path / "cli-site"
    url = f"sqlite:///{tmp_path / 'data.db'}"
    exe = [sys.executable, "-m", "storekeeper", "export-static", url, str(site)]
    r = subprocess.run(exe, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "a/b" in r.stderr or "'a'" in r.stderr
    assert not site.exists() or not any(site.iterdir())
    store.delete("a")
    r = subprocess.run(exe, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads((site / "index.json").read_text()) == {"a/b": {"x": 1}}
    assert (site / "data" / "a" / "b").read_bytes() == b"cli"


_WEB_PAGE_NO_PATH_TRAVERSAL_CASES = _cases(
    "path",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../../../../../etc/passwd",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/static//etc/passwd",
    ],
)


def _check_web_page_no_path_traversal(c: Client, path: str) -> None:
    r = c("GET", path)
    assert b"root:" not in r.body, (path, r)
    assert r.status < 500


def test_web_page_no_path_traversal(c: Any) -> None:
    for case in _WEB_PAGE_NO_PATH_TRAVERSAL_CASES:
        _check_web_page_no_path_traversal(c, *case)


def test_web_page_served(c: Client) -> None:
    r = c("GET", "/")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/html")


# --------------------------------------------------------------------------- storekeeper serve


def test_serve_command_subprocess(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "storekeeper", "serve", f"sqlite:///{db}", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cl = Client(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return cl("GET", "/query").status == 200
            except OSError:
                return False

        assert wait_for(up, 20)
        assert cl("PUT", "/store/k%2Bx+y/data", b"via cli").status < 300
        assert cl("GET", "/query").body.decode() == "k+x+y\n"
    finally:
        proc.send_signal(2)  # Ctrl-C ends a server with status 0
        rc = proc.wait(10)
    assert rc == 0
    s = open_store(f"sqlite:///{db}")
    try:
        assert s.to_bytes("k+x+y") == b"via cli"
    finally:
        s.disconnect()


def test_serve_command_read_only(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    s = open_store(f"sqlite:///{db}")
    s.set("k", (b"keep", {}))
    s.disconnect()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "storekeeper", "serve", f"sqlite:///{db}", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--read-only"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        cl = Client(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return cl("GET", "/query").status == 200
            except OSError:
                return False

        assert wait_for(up, 20)
        assert cl("PUT", "/store/k/data", b"no").status == 405
        assert cl("DELETE", "/store/k").status == 405
        assert cl("GET", "/store/k/data").body == b"keep"
    finally:
        proc.terminate()
        proc.wait(10)
