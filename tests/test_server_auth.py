"""storekeeper.server with authentication: a user sees, lists, queries and hears of
exactly the keys the store lets them; and the server-sent event stream."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import pytest

from _http_servers import Served, free_port, served_in_thread, wait_for
from storekeeper.backends.http import DynamicURLStore
from storekeeper.backends.http_protocol import quote_key
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import SimpleAuthStore, make_encoder
from storekeeper.errors import AuthenticationError, AuthorizationError, ConflictError
from storekeeper.server import InsecureAuthError, serve
from storekeeper.store import open_store

FAST = make_encoder(b"pepper", n=2)  # scrypt at its lowest cost: tests only
ALICE = ("alice", "alice's secret")
BOB = ("bob", "bob's secret")


@pytest.fixture(scope="module")
def guarded() -> Iterator[Served]:
    backing = DictMemoryStore()
    backing.connect()
    auth = SimpleAuthStore(backing, FAST)
    auth.add_user(*ALICE)
    auth.add_user(*BOB)
    with served_in_thread(backing, auth=auth) as found:
        yield found


@pytest.fixture(autouse=True)
def _keys(guarded: Served) -> None:
    with DynamicURLStore(guarded.base, credentials=ALICE) as alice:
        for key in alice.query_keys():
            alice.delete(key)
        alice.set("private/plan", (b"secret", {"kind": "doc"}))
        alice.set("shared/note", (b"hello", {"kind": "doc"}))
        alice.update_permissions("shared/note", {"get": ["bob"]})


def request(
    served: Served, method: str, path: str, user: tuple[str, str] | None, **kwargs: Any
) -> tuple[http.client.HTTPResponse, bytes]:
    headers = dict(kwargs.pop("headers", {}))
    if user is not None:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        headers["Authorization"] = "Basic " + token
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    connection.request(method, path, headers=headers, **kwargs)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, body


def test_a_reader_commits_read_only_transactions_and_sees_their_conflicts(
    guarded: Served,
) -> None:
    # bob may read shared/note but write nothing: his read-only transactions are
    # checked at the commit all the same, and never reveal alice's private key
    with (
        DynamicURLStore(guarded.base, credentials=BOB) as bob,
        DynamicURLStore(guarded.base, credentials=ALICE) as alice,
    ):
        with bob.transaction():
            assert bob.to_bytes("shared/note") == b"hello"
            assert not bob.exists("private/plan")
        with pytest.raises(ConflictError), bob.transaction():
            assert bob.to_bytes("shared/note") == b"hello"
            alice.set_data("shared/note", b"changed")
        with pytest.raises(ConflictError), bob.transaction():
            assert not bob.exists("shared/new")
            alice.set("shared/new", (b"n", {}))
            alice.update_permissions("shared/new", {"get": ["bob"]})
        with bob.transaction():
            assert not bob.exists("private/plan")
            alice.set_data("private/plan", b"still hidden")  # nothing bob may see changed


def test_head_of_metadata_and_permissions_answers_like_get(guarded: Served) -> None:
    for part in ("/metadata", "/auth"):
        path = "/store/" + quote_key("shared/note") + part
        got, body = request(guarded, "GET", path, ALICE)
        head, empty = request(guarded, "HEAD", path, ALICE)
        assert got.status == head.status == 200 and body and empty == b""
        for name in ("ETag", "Content-Type", "Content-Length"):
            assert head.getheader(name) == got.getheader(name), (part, name)
    hidden = "/store/" + quote_key("private/plan") + "/metadata"
    assert request(guarded, "HEAD", hidden, BOB)[0].status == 404


def test_requests_without_valid_credentials_are_401(guarded: Served) -> None:
    for user in (None, ("alice", "wrong"), ("mallory", "x")):
        response, body = request(guarded, "GET", "/store/shared%2Fnote/data", user)
        assert response.status == 401, body
        assert (response.getheader("WWW-Authenticate") or "").startswith("Basic")
    response, _ = request(
        guarded, "GET", "/list", None, headers={"X-Storekeeper-No-Challenge": "1"}
    )
    assert response.status == 401 and response.getheader("WWW-Authenticate", "").startswith(
        "Bearer"
    )
    with pytest.raises(AuthenticationError):
        DynamicURLStore(guarded.base).connect(("alice", "wrong"))


def test_a_user_never_sees_a_key_they_may_not_read(guarded: Served) -> None:
    private = "/store/" + quote_key("private/plan")
    for method, part in [("HEAD", "/data"), ("GET", "/data"), ("GET", "/metadata")]:
        response, _ = request(guarded, method, private + part, BOB)
        assert response.status == 404
    response, _ = request(guarded, "GET", private + "/data", ALICE)
    assert response.status == 200
    response, body = request(guarded, "GET", "/list", BOB)
    assert json.loads(body) == ["shared/note"]
    response, body = request(guarded, "GET", "/query?" + urlencode({"kind": '"doc"'}), BOB)
    assert body == b"shared/note\n"
    response, body = request(guarded, "GET", "/query", ALICE)
    assert sorted(body.decode().splitlines()) == ["private/plan", "shared/note"]
    with DynamicURLStore(guarded.base, credentials=BOB) as bob:
        assert bob.user_tag == "bob"
        assert not bob.exists("private/plan")
        assert bob.query_keys(kind="doc") == ["shared/note"]
        assert [key for key, _ in bob.query()] == ["shared/note"]
        assert list(bob.list_keys()) == ["shared/note"]
        assert bob.glob("*") == ["shared/note"]
        assert bob.to_bytes("shared/note") == b"hello"
        with pytest.raises(KeyError):
            bob.get("private/plan")
        with pytest.raises(AuthorizationError):
            bob.set_data("shared/note", b"overwritten")
        with pytest.raises(AuthorizationError):
            bob.get_permissions("shared/note")
    assert request(guarded, "GET", "/store/shared%2Fnote/data", ALICE)[1] == b"hello"


def test_connect_takes_encore_pairs_and_url_credentials(guarded: Served) -> None:
    class Session:  # what encore's client was given: a requests.Session with auth
        auth = BOB
        headers: ClassVar[dict[str, str]] = {"X-Trace": "1"}

    store = DynamicURLStore(guarded.base)
    store.connect(("bob", Session()))
    try:
        assert store.user_tag == "bob" and store.query_keys() == ["shared/note"]
    finally:
        store.disconnect()
    host = guarded.url.removeprefix("http://")
    with open_store(f"http://bob:bob%27s%20secret@{host}/store") as bob:
        assert bob.query_keys() == ["shared/note"]


def test_permissions_travel_as_lists_of_tags(guarded: Served) -> None:
    with DynamicURLStore(guarded.base, credentials=ALICE) as alice:
        permissions = alice.get_permissions("shared/note")
        assert permissions["owned"] == {"alice"} and permissions["get"] == {"bob"}
        alice.set_permissions("private/plan", {"owned": ["alice"], "exists": ["bob"]})
    response, _ = request(guarded, "HEAD", "/store/private%2Fplan/data", BOB)
    assert response.status == 403  # bob may now see the key, not read it


def test_tokens(guarded: Served) -> None:
    response, body = request(guarded, "POST", "/login", BOB)
    token = json.loads(body)["token"]
    assert json.loads(body)["user"] == "bob"
    bearer = {"Authorization": f"Bearer {token}"}
    response, body = request(guarded, "GET", "/store/shared%2Fnote/data", None, headers=bearer)
    assert body == b"hello"
    response, body = request(
        guarded, "GET", f"/store/shared%2Fnote/data?access_token={token}", None
    )
    assert body == b"hello"
    with DynamicURLStore(guarded.base, credentials={"token": token}) as bob:
        assert bob.query_keys() == ["shared/note"]
    request(guarded, "DELETE", "/login", None, headers=bearer)
    response, _ = request(guarded, "GET", "/store/shared%2Fnote/data", None, headers=bearer)
    assert response.status == 401


def test_auth_over_plain_http_on_a_public_address_is_refused() -> None:
    auth = SimpleAuthStore(DictMemoryStore(), FAST)
    with pytest.raises(InsecureAuthError):
        serve("memory://", host="0.0.0.0", auth=auth)


# -- events -----------------------------------------------------------------------------------
class EventReader:
    """Reads a server-sent event stream in a thread, one message per list entry."""

    def __init__(self, served: Served, user: tuple[str, str] | None, cursor: str | None = None):
        headers = {} if cursor is None else {"Last-Event-ID": cursor}
        if user is not None:
            pair = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
            headers["Authorization"] = "Basic " + pair
        self.connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        self.connection.request("GET", "/events", headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.messages: list[dict[str, str]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.ready.wait(10)  # the "retry:" line arrived: subscribed

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            while True:
                line = self.response.readline().decode()
                if not line:
                    return
                line = line.rstrip("\n")
                if line.startswith("retry:"):
                    self.ready.set()
                elif line == "":
                    if fields:
                        self.messages.append(fields)
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
        except (OSError, ValueError):
            return

    def wait_for(self, count: int) -> list[dict[str, str]]:
        deadline = time.monotonic() + 30
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages

    def close(self) -> None:
        self.connection.sock.close()  # type: ignore[union-attr]


def test_a_user_hears_only_of_keys_they_may_see(guarded: Served) -> None:
    bob = EventReader(guarded, BOB)
    alice = EventReader(guarded, ALICE)
    try:
        with DynamicURLStore(guarded.base, credentials=ALICE) as writer:
            writer.set("private/plan", (b"v2", {"kind": "doc"}))
            writer.set_metadata("shared/note", {"kind": "memo"})
            writer.delete("private/plan")
        alice_heard = [json.loads(m["data"]) for m in alice.wait_for(3)]
        assert [(m["type"], m["key"]) for m in alice_heard] == [
            ("set", "private/plan"),
            ("set", "shared/note"),
            ("delete", "private/plan"),
        ]
        bob.wait_for(1)
        time.sleep(0.3)  # anything else would have arrived by now
        bob_heard = [json.loads(m["data"]) for m in bob.messages]
        assert [(m["type"], m["key"]) for m in bob_heard] == [("set", "shared/note")]
        assert bob_heard[0]["metadata"] == {"kind": "memo"}
    finally:
        bob.close()
        alice.close()


def test_events_resume_from_a_cursor(guarded: Served) -> None:
    first = EventReader(guarded, ALICE)
    with DynamicURLStore(guarded.base, credentials=ALICE) as writer:
        writer.set("a", (b"1", {}))
        cursor = first.wait_for(1)[0]["id"]
        first.close()
        writer.set("b", (b"2", {}))
        writer.delete("a")
    resumed = EventReader(guarded, ALICE, cursor)
    try:
        heard = [json.loads(m["data"]) for m in resumed.wait_for(2)]
        assert [(m["type"], m["key"]) for m in heard] == [("set", "b"), ("delete", "a")]
    finally:
        resumed.close()
    stale = EventReader(guarded, ALICE, "0000.1")
    try:
        assert stale.wait_for(1)[0].get("event") == "reset"
    finally:
        stale.close()


def test_serve_wraps_the_opened_store_with_the_users_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with SqliteStore(str(path)) as data:
        SimpleAuthStore(data, FAST).add_user(*ALICE)
        data.set("k", (b"v", {}))
    port = free_port()
    script = (
        "import sys\n"
        "from storekeeper.backends.memory import DictMemoryStore\n"
        "from storekeeper.composite import SimpleAuthStore, make_encoder\n"
        "from storekeeper.server import serve\n"
        "auth = SimpleAuthStore(DictMemoryStore(), make_encoder(b'pepper', n=2))\n"
        "serve(sys.argv[1], port=int(sys.argv[2]), auth=auth, log_level='warning')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{path}", str(port)])
    try:
        wait_for(port, process)
        served = Served(DictMemoryStore(), f"http://127.0.0.1:{port}")
        assert request(served, "GET", "/store/k/data", None)[0].status == 401
        assert request(served, "GET", "/store/k/data", ("alice", "wrong"))[0].status == 401
        response, body = request(served, "GET", "/store/k/data", ALICE)
        assert response.status == 200 and body == b"v"
        response, body = request(served, "GET", "/list", ALICE)
        assert json.loads(body) == ["k"]  # the user records stay hidden
    finally:
        process.terminate()
        process.wait(30)
