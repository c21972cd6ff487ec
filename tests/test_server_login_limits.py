"""Login tokens end (idle, lifetime, logout, pushed out by newer ones) and failed logins
are limited per client address and per user name, with bounded memory; all over real
HTTP with a clock the tests move (no sleeping)."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.composite import SimpleAuthStore, make_encoder
from storekeeper.server import ServerThread, create_app

FAST = make_encoder(b"pepper", n=2)  # scrypt at its lowest cost: tests only
ALICE = ("alice", "alice's secret")
BOB = ("bob", "bob's secret")


class Clock:
    """The time the server reads; tests move it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Server:
    def __init__(self, port: int, app: Any, clock: Clock) -> None:
        self.port = port
        self.app = app
        self.clock = clock

    def call(
        self,
        method: str,
        path: str,
        *,
        user: tuple[str, str] | None = None,
        token: str | None = None,
        source: str = "127.0.0.1",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request from the loopback address *source* (any 127.x.y.z reaches us)."""
        headers = {}
        if user is not None:
            pair = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
            headers["Authorization"] = "Basic " + pair
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def login(self, user: tuple[str, str], source: str = "127.0.0.1") -> str:
        status, _, body = self.call("POST", "/login", user=user, source=source)
        assert status == 200, body
        token: str = json.loads(body)["token"]
        return token

    def status(self, token: str, path: str = "/info") -> int:
        return self.call("GET", path, token=token)[0]

    def user_of(self, token: str) -> str | None:
        status, _, body = self.call("GET", "/info", token=token)
        assert status == 200, body
        user: str | None = json.loads(body)["user"]
        return user

    @property
    def guard(self) -> Any:
        return self.app.state.context.guard


def _server(**options: Any) -> Iterator[Server]:
    backing = DictMemoryStore()
    backing.connect()
    auth = SimpleAuthStore(backing, FAST)
    auth.add_user(*ALICE)
    auth.add_user(*BOB)
    alice = SimpleAuthStore(backing, FAST)
    alice.connect({"username": ALICE[0], "password": ALICE[1]})
    alice.set("private/plan", (b"alice only", {}))
    clock = Clock()
    app = create_app(backing, auth=auth, clock=clock, **options)
    with ServerThread(app) as thread:
        yield Server(thread.port, app, clock)
    backing.disconnect()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _server(
        token_idle=60,
        token_lifetime=600,
        max_tokens=3,
        max_failed_logins=3,
        failed_login_window=100,
    )


def test_an_unused_token_ends_after_the_idle_time(server: Server) -> None:
    token = server.login(ALICE)
    for _ in range(3):  # each use starts the idle time again
        server.clock.advance(59)
        assert server.status(token) == 200
    server.clock.advance(60)
    status, headers, _ = server.call("GET", "/info", token=token)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert server.call("GET", "/info?access_token=" + token)[0] == 401
    server.clock.advance(-120)  # and it stays gone, even if the clock steps back
    assert server.status(token) == 401


def test_a_used_token_ends_after_its_lifetime_and_so_do_tokens_issued_on_it(
    server: Server,
) -> None:
    token = server.login(ALICE)
    for _ in range(9):
        server.clock.advance(50)
        assert server.status(token) == 200
    status, _, body = server.call("POST", "/login", token=token)
    assert status == 200
    renewed = json.loads(body)
    assert renewed["expires"] == server.clock.now + 150  # no later than the first
    assert renewed["idle_timeout"] == 60
    server.clock.advance(50)
    assert server.status(renewed["token"]) == 200
    server.clock.advance(100)
    assert server.status(token) == 401
    assert server.status(renewed["token"]) == 401


def test_the_oldest_token_is_pushed_out(server: Server) -> None:
    tokens = [server.login(ALICE), server.login(BOB)]
    tokens += [server.login(ALICE), server.login(BOB)]  # max_tokens=3
    assert server.status(tokens[0]) == 401
    assert [server.user_of(token) for token in tokens[1:]] == ["bob", "alice", "bob"]
    for _ in range(20):
        server.login(BOB)
    assert len(server.guard.tokens) == 3
    assert all(server.status(token) == 401 for token in tokens)


def test_logout_ends_only_that_token(server: Server) -> None:
    first, second = server.login(ALICE), server.login(ALICE)
    assert server.call("DELETE", "/login", token=first)[0] == 204
    assert server.status(first) == 401
    assert server.call("POST", "/login", token=first)[0] == 401  # nor renews
    assert server.status(second) == 200


def test_a_token_authorises_its_own_user_only(server: Server) -> None:
    alice, bob = server.login(ALICE), server.login(BOB)
    assert server.user_of(alice) == "alice" and server.user_of(bob) == "bob"
    assert server.status(alice, "/store/private%2Fplan/data") == 200
    assert server.status(bob, "/store/private%2Fplan/data") == 404
    status, _, body = server.call("GET", "/list", token=bob)
    assert (status, json.loads(body)) == (200, [])
    # A token is no password: not alice's, not bob's.
    assert server.call("GET", "/info", user=("alice", bob))[0] == 401
    assert server.call("GET", "/info", user=("bob", bob))[0] == 401
    assert server.call("DELETE", "/login", token=alice)[0] == 204
    assert server.user_of(bob) == "bob"


def test_wrong_passwords_for_a_name_answer_429_until_the_window_ends(server: Server) -> None:
    for number in range(3):  # from three addresses: the name is what is counted
        wrong = ("alice", f"guess {number}")
        assert server.call("POST", "/login", user=wrong, source=f"127.0.0.{number + 2}")[0] == 401
    server.clock.advance(30)
    status, headers, body = server.call("POST", "/login", user=ALICE, source="127.0.0.9")
    assert status == 429, body  # the right password is not even looked at
    assert headers["retry-after"] == "70"
    assert json.loads(body)["error"] == "TooManyRequests"
    assert server.call("GET", "/info", user=ALICE, source="127.0.0.9")[0] == 429
    assert server.login(BOB, source="127.0.0.9")  # another name from that address: fine
    server.clock.advance(69)
    assert server.call("POST", "/login", user=ALICE, source="127.0.0.9")[0] == 429
    server.clock.advance(1)
    assert server.login(ALICE, source="127.0.0.9")


def test_wrong_passwords_from_an_address_answer_429_until_the_window_ends(
    server: Server,
) -> None:
    for name in ("mallory", "alice", "nobody"):
        assert server.call("POST", "/login", user=(name, "guess"), source="127.0.0.6")[0] == 401
    status, headers, _ = server.call("POST", "/login", user=BOB, source="127.0.0.6")
    assert (status, headers["retry-after"]) == (429, "100")
    assert server.login(BOB, source="127.0.0.7")  # another address: fine
    server.clock.advance(100)
    assert server.login(BOB, source="127.0.0.6")


def test_a_right_password_is_never_delayed_and_clears_the_names_failures(
    server: Server,
) -> None:
    for round_ in range(3):
        for number in range(2):
            wrong = ("alice", "typo")
            source = f"127.0.{round_ + 1}.{number + 1}"
            assert server.call("POST", "/login", user=wrong, source=source)[0] == 401
        assert server.login(ALICE, source=f"127.0.{round_ + 1}.9")
    assert server.call("GET", "/info", user=ALICE)[0] == 200


def test_floods_of_bogus_names_addresses_and_logins_stay_bounded() -> None:
    for server in _server(max_failed_logins=1000, max_tracked_logins=40, max_tokens=5):
        for number in range(100):
            source = f"127.1.{number // 50}.{number % 50 + 1}"
            bogus = (f"bogus-{number}-" + "x" * 2000, "guess")
            assert server.call("POST", "/login", user=bogus, source=source)[0] == 401
        assert len(server.guard.failures) <= 40
        for _ in range(30):
            server.login(BOB)
        assert len(server.guard.tokens) == 5


def test_bad_settings_are_refused() -> None:
    backing = DictMemoryStore()
    auth = SimpleAuthStore(backing, FAST)
    for name, value in [
        ("token_idle", 0),
        ("token_lifetime", -1),
        ("max_tokens", 0),
        ("max_failed_logins", 1.5),
        ("failed_login_window", float("nan")),
        ("max_tracked_logins", True),
    ]:
        with pytest.raises(ValueError, match=name.removesuffix("_logins")):
            create_app(backing, auth=auth, **{name: value})


def test_the_window_slides_and_retry_after_names_when_the_oldest_failure_leaves(
    server: Server,
) -> None:
    wrong = ("alice", "guess")
    for step in (0, 50, 49):  # failures at 0, 50 and 99 s (the limit is 3 in 100 s)
        server.clock.advance(step)
        assert server.call("POST", "/login", user=wrong, source="127.0.0.2")[0] == 401
    status, headers, _ = server.call("POST", "/login", user=ALICE, source="127.0.0.3")
    assert (status, headers["retry-after"]) == (429, "1")  # the failure at 0 s leaves at 100
    server.clock.advance(1)
    assert server.call("POST", "/login", user=wrong, source="127.0.0.2")[0] == 401
    status, headers, _ = server.call("POST", "/login", user=ALICE, source="127.0.0.3")
    assert (status, headers["retry-after"]) == (429, "50")  # then the one at 50 s, at 150


def test_a_finished_password_check_gives_its_place_in_the_limit_back() -> None:
    for server in _server(max_failed_logins=1, failed_login_window=100):
        # two right passwords from one address, each a full check: the first one's
        # place is back before the second asks for one
        assert server.login(ALICE) and server.login(BOB)
        assert server.call("POST", "/login", user=("alice", "guess"))[0] == 401
        status, headers, _ = server.call("POST", "/login", user=BOB)
        assert (status, headers["retry-after"]) == (429, "100")
