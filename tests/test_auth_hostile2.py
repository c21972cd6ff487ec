"""Hostile tests of SimpleAuthStore's flat permission entries, head(), list_info() and
storage_identity(), written from the public documentation only."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import EventManager, open_store
from storekeeper.composite import SimpleAuthStore, make_encoder
from storekeeper.composite._auth_permissions import PERMISSIONS
from storekeeper.errors import (
    AuthorizationError,
    ConflictError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    KeyNotFoundError,
)
from storekeeper.store import AbstractStore, Exists, StoreEvent
from storekeeper.store.transfer import transfer

ENCODER = make_encoder(b"hostile secret", n=2)
KINDS = ["memory", "sqlite", "fs"]


def _url(kind: str, root: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{root}/auth.db"
    return f"file://{root}/fs?create=true"


@pytest.fixture(params=KINDS)
def child(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    store = open_store(_url(request.param, tmp_path))
    try:
        yield store
    finally:
        store.disconnect()


def _users(child: AbstractStore, *names: str) -> dict[str, SimpleAuthStore]:
    admin = SimpleAuthStore(child, ENCODER)
    stores = {}
    for name in names:
        if name not in admin.users():
            admin.add_user(name, "pw-" + name)
        store = SimpleAuthStore(child, ENCODER)
        store.connect({"username": name, "password": "pw-" + name})
        stores[name] = store
    return stores


def _no_record(obj: Any) -> bool:
    """True if the reserved name appears nowhere in *obj* (nested)."""
    if isinstance(obj, dict):
        return all(k != PERMISSIONS and _no_record(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(_no_record(v) for v in obj)
    return True


# --- the reserved entry never leaks ------------------------------------------------


def test_reserved_entry_never_in_user_visible_metadata(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    alice, bob = u["alice"], u["bob"]
    seen: list[Any] = []
    events = EventManager()
    events.connect(StoreEvent, lambda e: seen.append(getattr(e, "metadata", None)), priority=10)
    bob_ev = SimpleAuthStore(child, ENCODER, event_manager=events)
    bob_ev.connect({"username": "bob", "password": "pw-bob"})
    alice.set("k", (b"v", {"a": 1}))
    alice.update_permissions("k", {"get": {"bob"}})
    alice.update_metadata("k", {"b": 2})
    # the record really is there in the child
    assert PERMISSIONS in child.get_metadata("k")
    for store in (alice, bob):
        assert store.get_metadata("k") == {"a": 1, "b": 2}
        assert store.get_metadata("k", [PERMISSIONS, "a"]) == {"a": 1}
        assert store.get("k").metadata == {"a": 1, "b": 2}
        head = store.head("k")
        assert head is not None and head.metadata == {"a": 1, "b": 2}
        infos = list(store.list_info(metadata=True))
        assert [(k, i.metadata) for k, i in infos] == [("k", {"a": 1, "b": 2})]
        assert store.query([PERMISSIONS, "a"]) == [("k", {"a": 1})]
        assert store.query() == [("k", {"a": 1, "b": 2})]
        assert store.multiget_metadata(["k"]) == [{"a": 1, "b": 2}]
    assert seen and all(_no_record(m) for m in seen)
    assert {"a": 1, "b": 2} in seen


def test_permissions_cannot_be_used_as_a_query_oracle(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    u["alice"].set("k", (b"v", {}))
    u["alice"].update_permissions("k", {"get": {"bob"}})
    with pytest.raises(InvalidMetadataError):
        u["bob"].query_keys(**{PERMISSIONS: Exists()})
    with pytest.raises(InvalidMetadataError):
        u["bob"].query(None, {PERMISSIONS: "owned=alice&get=bob"})


# --- forging permissions through writes --------------------------------------------

FORGED = [
    {PERMISSIONS: "owned=mallory"},
    {PERMISSIONS: {"owned": ["mallory"]}},
    {PERMISSIONS: None},
    {PERMISSIONS: ""},
]


@pytest.mark.parametrize("metadata", FORGED)
def test_writes_holding_the_reserved_name_are_refused(
    child: AbstractStore, metadata: dict[str, Any]
) -> None:
    u = _users(child, "alice", "mallory")
    alice, mallory = u["alice"], u["mallory"]
    alice.set("k", (b"v", {"a": 1}))
    alice.update_permissions("k", {"set": {"mallory"}})
    before = child.get("k")
    attempts: list[Callable[[], object]] = [
        lambda: mallory.set("k", (b"x", metadata)),
        lambda: mallory.set_metadata("k", metadata),
        lambda: mallory.update_metadata("k", metadata),
        lambda: mallory.multiset(["new1", "k"], [(b"n", {}), (b"x", metadata)]),
        lambda: mallory.multiset_metadata(["k"], [metadata]),
        lambda: mallory.multiupdate_metadata(["k"], [metadata]),
        lambda: mallory.set("new2", (b"x", metadata)),
        lambda: mallory.set("new3", child.get("k")),  # a raw child value carries the record
    ]
    for attempt in attempts:
        with pytest.raises(InvalidMetadataError):
            attempt()
    after = child.get("k")
    assert after.version == before.version
    assert after.metadata == before.metadata
    for key in ("new1", "new2", "new3"):
        assert not child.exists(key)
    assert mallory.check_permissions("k") == {"connect", "exists", "set"}


LOOKALIKES = [
    "\x00Storekeeper:permissions",
    "\x00STOREKEEPER:PERMISSIONS",
    "storekeeper:permissions",
    "\x00storekeeper\uff1apermissions",  # fullwidth colon
    "\x00storekeeper:permissions ",
    " \x00storekeeper:permissions",
    "\x00\u0455torekeeper:permissions",  # cyrillic dze
    "\x00storekeeper:permissions\x00",
]


def test_lookalike_names_are_plain_data_and_grant_nothing(child: AbstractStore) -> None:
    u = _users(child, "alice", "mallory", "carol")
    alice, mallory = u["alice"], u["mallory"]
    alice.set("k", (b"v", {}))
    alice.update_permissions("k", {"set": {"mallory"}})
    forged = dict.fromkeys(LOOKALIKES, "owned=mallory&get=mallory&owned=%2A")
    forged["nested"] = {PERMISSIONS: "owned=mallory"}
    forged["text"] = f'{{"{PERMISSIONS}": "owned=mallory"}}'
    mallory.set_metadata("k", forged)
    mallory.set("m", (b"mine", forged))
    # the names are data: stored and returned as written ...
    assert alice.get_metadata("k") == forged
    # ... and grant mallory nothing more, and everyone else nothing on k
    assert mallory.check_permissions("k") == {"connect", "exists", "set"}
    with pytest.raises(AuthorizationError):
        mallory.get("k")
    assert not u["carol"].exists("k")
    assert not u["carol"].exists("m")
    assert alice.get_permissions("k") == {"owned": {"alice"}, "set": {"mallory"}}


def test_tags_with_query_text_characters_round_trip(child: AbstractStore) -> None:
    u = _users(child, "alice", "mallory", "a&owned=mallory")
    alice = u["alice"]
    alice.set("k", (b"v", {}))
    tags = {"x&owned=mallory", "y=owned", "100%", "%6Fwned", "a+b", "a b", "é\u200b"}
    alice.update_permissions("k", {"get": tags | {"a&owned=mallory"}})
    assert alice.get_permissions("k") == {
        "owned": {"alice"},
        "get": tags | {"a&owned=mallory"},
    }
    assert not u["mallory"].exists("k")
    weird = u["a&owned=mallory"]
    assert weird.to_bytes("k") == b"v"
    assert weird.check_permissions("k") == {"connect", "exists", "get"}
    # a fresh store object reads the same record
    fresh = SimpleAuthStore(child, ENCODER)
    fresh.connect({"username": "alice", "password": "pw-alice"})
    assert fresh.get_permissions("k")["get"] == tags | {"a&owned=mallory"}


def test_permission_names_with_query_characters_grant_nothing(child: AbstractStore) -> None:
    u = _users(child, "alice", "mallory")
    alice = u["alice"]
    alice.set("k", (b"v", {}))
    with contextlib.suppress(InvalidMetadataError, InvalidArgumentError):
        alice.update_permissions("k", {"get&owned=mallory": {"x"}, "get=mallory&owned": {"y"}})
    assert not u["mallory"].exists("k")
    assert u["mallory"].check_permissions("k") == {"connect"}


# --- tampering with the child directly -------------------------------------------

DAMAGED: list[object] = [
    "",
    "owned",
    "owned=",
    "=bob",
    "&",
    "owned=bob&get",
    "owned=bob;get=x",
    "owned=%FF",
    "Owned=bob",
    "OWNED=bob",
    "owned=bob%00",
    "owned =bob",
    "?owned=bob",
    "x" * 200_000 + "&owned=bob",
    {"owned": "*"},
    {"owned": "bob"},
    {"get": "bob"},
    {"owned": ["bob", 1]},
    {"owned": [["bob"]]},
    {"owned": {"bob": True}},
    {"owned": None},
    {"OWNED": ["bob"]},
    {},
    None,
    5,
    True,
    ["owned", "bob"],
]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_entries_grant_nothing(kind: str, tmp_path: Path) -> None:
    child = open_store(_url(kind, tmp_path))
    bob = _users(child, "bob")["bob"]
    keys = []
    for i, entry in enumerate(DAMAGED):
        key = f"d/{i:03}"
        child.set(key, (b"data", {"z": 1, PERMISSIONS: entry}))
        keys.append(key)
    child.set("d/plain", (b"data", {"z": 1}))  # no entry: everyone owns
    for key in keys:
        assert not bob.exists(key), key
        assert bob.head(key) is None, key
        with pytest.raises(KeyNotFoundError):
            bob.get(key)
        with pytest.raises(AuthorizationError):
            bob.set(key, (b"mine", {}))
        with pytest.raises(KeyNotFoundError):  # deleting a hidden key: as if missing
            bob.delete(key)
        assert bob.check_permissions(key) == {"connect"}
    assert list(bob.list_keys("d/")) == ["d/plain"]
    assert [k for k, _ in bob.list_info("d/", metadata=True)] == ["d/plain"]
    assert bob.query_keys(z=1) == ["d/plain"]
    assert bob.glob("d/*") == ["d/plain"]
    # and nothing changed in the child
    assert child.to_bytes("d/000") == b"data"
    child.disconnect()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("owned=b%6Fb", {"owned": {"bob"}}),
        ("get=bob&owned=alice&get=bob", {"get": {"bob"}, "owned": {"alice"}}),
        ({"owned": ["alice"], "get": ["bob"], "set": "bob"}, {"owned": {"alice"}, "get": {"bob"}}),
    ],
)
def test_odd_but_valid_entries_grant_exactly_what_they_say(
    tmp_path: Path, entry: object, expected: dict[str, set[str]]
) -> None:
    child = open_store(_url("sqlite", tmp_path))
    u = _users(child, "alice", "bob", "carol")
    child.set("k", (b"data", {PERMISSIONS: entry}))
    assert not u["carol"].exists("k")
    bob_can = u["bob"].check_permissions("k")
    if "owned" in expected and "bob" in expected["owned"]:
        assert bob_can == {"connect", "exists", "get", "set", "delete"}
    else:
        assert bob_can == {"connect", "exists", "get"}
        with pytest.raises(AuthorizationError):
            u["bob"].set("k", (b"x", {}))
        assert u["alice"].get_permissions("k") == expected
    child.disconnect()


# --- sessions, grantees ------------------------------------------------------------


def test_reconnecting_as_another_user_does_not_inherit_recent_writes(child: AbstractStore) -> None:
    _users(child, "alice", "bob")
    store = SimpleAuthStore(child, ENCODER)
    store.connect({"username": "alice", "password": "pw-alice"})
    store.set("r", (b"alice", {}))
    store.set("r", (b"alice2", {}))
    store.disconnect()
    store.connect({"username": "bob", "password": "pw-bob"})
    with pytest.raises(AuthorizationError):
        store.set("r", (b"bob", {}))
    with pytest.raises(AuthorizationError):
        store.set_data("r", b"bob")
    with pytest.raises(KeyNotFoundError):
        store.delete("r")
    assert child.to_bytes("r") == b"alice2"


def test_revocation_through_another_object_stops_a_recent_writer(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    u["alice"].set("k", (b"v", {}))
    u["alice"].update_permissions("k", {"set": {"bob"}, "get": {"bob"}})
    u["bob"].set("k", (b"bob1", {}))  # bob's object now remembers its version
    u["alice"].set_permissions("k", {"owned": {"alice"}, "get": {"bob"}})
    with pytest.raises(AuthorizationError):
        u["bob"].set("k", (b"bob2", {}))
    with pytest.raises(AuthorizationError):
        u["bob"].set_data("k", b"bob3")
    assert child.to_bytes("k") == b"bob1"


def test_a_grantee_rewriting_keeps_the_permissions(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob", "carol")
    u["alice"].set("k", (b"v", {"m": 1}))
    u["alice"].update_permissions("k", {"set": {"bob"}})
    u["bob"].set("k", (b"bob", {}))
    u["bob"].set_metadata("k", {"n": 2})
    u["bob"].set_data("k", b"bob2")
    u["bob"].multiset(["k"], [(b"bob3", {})])
    assert not u["carol"].exists("k")
    assert u["alice"].get_permissions("k") == {"owned": {"alice"}, "set": {"bob"}}
    with pytest.raises(AuthorizationError):
        u["bob"].get("k")


def test_a_user_named_everyone_does_not_own_keys_for_all(child: AbstractStore) -> None:
    admin = SimpleAuthStore(child, ENCODER)
    admin.add_user("bob", "pw-bob")
    try:
        admin.add_user("*", "pw-star")
    except (InvalidKeyError, InvalidArgumentError, InvalidMetadataError):
        return  # refusing the name is a fine answer
    star = SimpleAuthStore(child, ENCODER)
    star.connect({"username": "*", "password": "pw-star"})
    star.set("private", (b"mine alone", {}))
    bob = SimpleAuthStore(child, ENCODER)
    bob.connect({"username": "bob", "password": "pw-bob"})
    assert not bob.exists("private")


# --- head / list_info ------------------------------------------------------------


def _same_as_get(store: AbstractStore, key: str) -> None:
    head = store.head(key)
    try:
        value = store.get(key)
    except KeyError:
        assert head is None
        return
    assert head is not None
    assert (head.version, head.size, head.metadata) == (
        value.version,
        value.size,
        value.metadata,
    )


def test_head_agrees_with_get(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    child.set("raw", (b"r" * 10, {"x": [1, {"y": None}]}))
    child.set("big", (b"b" * ((1 << 20) + 3), {"big": True}))
    child.set("empty", (b"", {}))
    u["alice"].set("a", (b"alice", {"m": "é"}))
    u["alice"].set("g", (b"grant", {}))
    u["alice"].update_permissions("g", {"get": {"bob"}})
    for key in ("raw", "big", "empty", "a", "g", "missing", "dir/missing"):
        _same_as_get(child, key)
        _same_as_get(u["alice"], key)
        _same_as_get(u["bob"], key)
    assert u["bob"].head("a") is None
    head = u["alice"].head("raw")
    assert head is not None
    head.metadata["x"].append("mutated")
    assert u["alice"].get_metadata("raw") == {"x": [1, {"y": None}]}


def test_exists_only_keys_listed_without_details(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    u["alice"].set("p/a", (b"secret-size", {"s": 1}))
    u["alice"].set("p/b", (b"readable", {"r": 2}))
    u["alice"].set("p/c", (b"hidden", {}))
    u["alice"].update_permissions("p/a", {"exists": {"bob"}})
    u["alice"].update_permissions("p/b", {"get": {"bob"}})
    bob = u["bob"]
    infos = dict(bob.list_info("p/", metadata=True))
    assert list(infos) == ["p/a", "p/b"]
    a = infos["p/a"]
    assert (a.size, a.created, a.modified, a.version, a.metadata) == (None,) * 5
    assert infos["p/b"].size == 8 and infos["p/b"].metadata == {"r": 2}
    assert infos["p/b"].version == u["alice"].get("p/b").version
    with pytest.raises(AuthorizationError):
        bob.head("p/a")
    assert bob.head("p/c") is None
    assert [k for k, _ in bob.list_info("p/")] == ["p/a", "p/b"]
    # the exists-only key's metadata must not leak through a query term either
    assert "p/a" not in bob.query_keys(s=1)


@pytest.mark.parametrize("bad", [{"metadata": "yes"}, {"metadata": 1}, {"prefix": 5}])
def test_list_info_checks_arguments_at_call(child: AbstractStore, bad: dict[str, Any]) -> None:
    u = _users(child, "alice")
    with pytest.raises(InvalidArgumentError):
        u["alice"].list_info(**bad)
    with pytest.raises(InvalidArgumentError):
        child.list_info(**bad)


@pytest.mark.parametrize("bad", [123, None, b"k", "", "a\x00b"])
def test_head_refuses_bad_keys_as_get_does(child: AbstractStore, bad: Any) -> None:
    u = _users(child, "alice")
    for store in (child, u["alice"]):
        with pytest.raises(InvalidKeyError):
            store.head(bad)
        with pytest.raises(InvalidKeyError):
            store.get(bad)


def test_user_records_never_reachable(child: AbstractStore) -> None:
    u = _users(child, "alice")
    assert u["alice"].head(".user_alice") is None
    assert list(u["alice"].list_info()) == []
    assert list(u["alice"].list_info(".user_")) == []


# --- races -------------------------------------------------------------------------


def test_value_and_permissions_change_together_under_reads(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    alice, bob = u["alice"], u["bob"]
    alice.set("k", (b"public-0", {}))
    alice.update_permissions("k", {"get": {"bob"}})
    done = threading.Event()
    bad: list[Any] = []
    reads = [0]

    def reader() -> None:
        while not done.is_set() or reads[0] < 50:
            reads[0] += 1
            try:
                value = bob.get("k")
                data = value.data.read()
                head = bob.head("k")
            except (KeyNotFoundError, AuthorizationError):
                continue
            if not data.startswith(b"public"):
                bad.append(data)
            if head is not None and head.metadata.get("secret"):
                bad.append(head)
            for _, info in bob.list_info("k", metadata=True):
                if info.metadata and info.metadata.get("secret"):
                    bad.append(info)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(30):
        with alice.transaction():
            alice.set_permissions("k", {"owned": {"alice"}})
            alice.set("k", (b"SECRET", {"secret": True}))
        with alice.transaction():
            alice.set("k", (f"public-{i}".encode(), {}))
            alice.update_permissions("k", {"get": {"bob"}})
    done.set()
    thread.join(10)
    assert not bad


def test_conditional_writes_through_the_wrapper_are_exact(child: AbstractStore) -> None:
    n = 6
    names = [f"u{i}" for i in range(n)]
    u = _users(child, "owner", *names)
    owner = u["owner"]
    version = owner.set("c", (b"0", {}))
    owner.update_permissions("c", {"set": set(names), "get": set(names)})
    version = owner.head("c").version  # type: ignore[union-attr]
    barrier = threading.Barrier(n)
    wins: list[str] = []
    conflicts: list[str] = []
    created: list[str] = []

    def race(name: str) -> None:
        store = u[name]
        barrier.wait()
        try:
            store.set("c", (name.encode(), {}), if_version=version)
            wins.append(name)
        except ConflictError:
            conflicts.append(name)
        barrier.wait()
        try:
            store.set("fresh", (name.encode(), {}), if_exists=False)
            created.append(name)
        except (ConflictError, AuthorizationError):
            pass

    threads = [threading.Thread(target=race, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(conflicts) == n - 1
    assert child.to_bytes("c") == wins[0].encode()
    assert len(created) == 1
    assert child.to_bytes("fresh") == created[0].encode()
    # the winner owns the new key alone
    winner = created[0]
    for name in names:
        if name != winner:
            assert not u[name].exists("fresh")


def _killed_writer(url: str, ready: Any) -> None:  # runs in a forked child
    store = open_store(url)
    alice = SimpleAuthStore(store, ENCODER)
    alice.connect({"username": "alice", "password": "pw-alice"})

    def chunks() -> Iterator[bytes]:
        yield b"S" * 65536
        ready.set()
        threading.Event().wait()  # blocked until SIGKILL
        yield b"never"

    with alice.transaction():
        alice.set("j", (b"SECRET-J", {"secret": True}))
        alice.set_permissions("j", {"owned": {"alice"}})
        alice.set_permissions("k", {"owned": {"alice"}})
        alice.set("k", (chunks(), {"secret": True}))


@pytest.mark.parametrize("kind", ["sqlite", "fs"])
def test_sigkill_mid_write_keeps_value_and_permissions_together(kind: str, tmp_path: Path) -> None:
    url = _url(kind, tmp_path)
    store = open_store(url)
    u = _users(store, "alice", "bob")
    u["alice"].set("k", (b"public", {"p": 1}))
    u["alice"].update_permissions("k", {"get": {"bob"}})
    u["alice"].set("j", (b"public-j", {}))
    u["alice"].update_permissions("j", {"get": {"bob"}})
    store.disconnect()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_killed_writer, args=(url, ready))
    proc.start()
    assert ready.wait(10)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    fresh = open_store(url)
    bob = SimpleAuthStore(fresh, ENCODER)
    bob.connect({"username": "bob", "password": "pw-bob"})
    assert bob.to_bytes("k") == b"public"
    assert bob.get_metadata("k") == {"p": 1}
    raw = fresh.get_metadata("k")
    assert raw["p"] == 1 and "secret" not in raw
    assert bob.to_bytes("j") == b"public-j"
    assert bob.get_metadata("j") == {}
    fresh.disconnect()


# --- storage_identity and transfer ------------------------------------------------


def test_identity_same_file_however_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path)
    a = open_store("sqlite:///a.db")
    b = open_store(f"sqlite:///{tmp_path}/link/./a.db")
    c = open_store("sqlite:///b.db")
    assert a.storage_identity() is not None
    assert a.storage_identity() == b.storage_identity() != c.storage_identity()
    a.set("k", (b"1", {}))
    with pytest.raises(InvalidArgumentError):
        transfer(a, b, "")
    auth = SimpleAuthStore(a, ENCODER)
    auth.add_user("u", "p")
    auth.connect({"username": "u", "password": "p"})
    assert auth.storage_identity() == a.storage_identity()
    with pytest.raises(InvalidArgumentError):
        transfer(auth, b, "")
    with pytest.raises(InvalidArgumentError):
        transfer(b, auth, "", delete=True)
    assert b.to_bytes("k") == b"1"
    f1 = open_store("file:fs?create=true")
    f2 = open_store(f"file://{tmp_path}/link/fs")
    f3 = open_store("file:fs2?create=true")
    assert f1.storage_identity() == f2.storage_identity() != f3.storage_identity()
    with pytest.raises(InvalidArgumentError):
        transfer(f1, f2, "")
    for s in (a, b, c, f1, f2, f3):
        s.disconnect()


def test_identity_different_tables_and_memory_stores_differ(tmp_path: Path) -> None:
    a = open_store(f"sqlite:///{tmp_path}/a.db?table=one")
    b = open_store(f"sqlite:///{tmp_path}/a.db?table=two")
    assert a.storage_identity() != b.storage_identity()
    m1, m2 = open_store("sqlite://"), open_store("sqlite://")
    i1, i2 = m1.storage_identity(), m2.storage_identity()
    assert i1 is None or i1 != i2
    d1, d2 = open_store("memory://"), open_store("memory://")
    i1, i2 = d1.storage_identity(), d2.storage_identity()
    assert i1 is None or i1 != i2
    m1.set("k", (b"1", {}))
    transfer(m1, m2, "")
    assert m2.to_bytes("k") == b"1"


def test_identity_sqlite_table_name_case(tmp_path: Path) -> None:
    a = open_store(f"sqlite:///{tmp_path}/a.db?table=Things")
    b = open_store(f"sqlite:///{tmp_path}/a.db?table=things")
    a.set("k", (b"1", {}))
    assert b.exists("k")  # the same table
    with pytest.raises(InvalidArgumentError):
        transfer(a, b, "")


def test_hidden_and_missing_keys_answer_as_documented(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    version = u["alice"].set("hid", (b"v", {}))
    bob = u["bob"]
    writes: list[Callable[[str], object]] = [
        lambda k: bob.set(k, (b"x", {}), if_exists=True),
        lambda k: bob.set(k, (b"x", {}), if_version="bogus"),
        lambda k: bob.set(k, (b"x", {}), if_version=version),
        lambda k: bob.set_metadata(k, {}, if_exists=True),
    ]
    for write in writes:
        with pytest.raises(AuthorizationError):
            write("hid")
        with pytest.raises(ConflictError):
            write("missing")
    as_missing: list[Callable[[str], object]] = [
        lambda k: bob.update_metadata(k, {"a": 1}),
        lambda k: bob.update_metadata(k, {"a": 1}, if_version=version),
        lambda k: bob.delete(k, if_version=version),
        bob.get_permissions,
        lambda k: bob.update_permissions(k, {"get": ["bob"]}),
        lambda k: bob.set_permissions(k, {"owned": ["bob"]}),
        bob.get_metadata,
        bob.to_bytes,
    ]
    for op in as_missing:
        for key in ("hid", "missing"):
            with pytest.raises(KeyNotFoundError):
                op(key)
    assert child.to_bytes("hid") == b"v"
    assert u["alice"].get_permissions("hid") == {"owned": {"alice"}}
    assert not child.exists("missing")


def test_rolled_back_write_version_is_never_reused(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    u["alice"].set("k", (b"v", {}))
    u["alice"].update_permissions("k", {"set": {"bob"}})
    with pytest.raises(RuntimeError), u["bob"].transaction():
        u["bob"].set("k", (b"rolled back", {}))
        raise RuntimeError
    u["alice"].set_permissions("k", {"owned": {"alice"}})
    with pytest.raises(AuthorizationError):
        u["bob"].set("k", (b"after revoke", {}))
    assert child.to_bytes("k") == b"v"


def test_concurrent_data_metadata_and_permission_changes_lose_nothing(
    child: AbstractStore,
) -> None:
    _users(child, "alice")
    objs = []
    for _ in range(3):
        store = SimpleAuthStore(child, ENCODER)
        store.connect({"username": "alice", "password": "pw-alice"})
        objs.append(store)
    objs[0].set("k", (b"0", {"m": -1}))
    for i in range(15):
        barrier = threading.Barrier(3)
        jobs: list[Callable[[], object]] = [
            lambda i=i: objs[0].update_permissions("k", {"get": [f"t{i}"]}),  # type: ignore[misc]
            lambda i=i: objs[1].set_data("k", f"d{i}".encode()),  # type: ignore[misc]
            lambda i=i: objs[2].update_metadata("k", {"m": i}),  # type: ignore[misc]
        ]

        def run(job: Callable[[], object], barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            job()

        threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert f"t{i}" in objs[0].get_permissions("k")["get"]
        assert child.to_bytes("k") == f"d{i}".encode()
        assert objs[0].get_metadata("k") == {"m": i}


def test_grantee_write_racing_revocation(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob", "carol")
    alice, bob = u["alice"], u["bob"]
    alice.set("k", (b"v", {}))
    for i in range(15):
        alice.set_permissions("k", {"owned": {"alice"}, "set": {"bob"}})
        barrier = threading.Barrier(2)
        outcome: list[object] = []

        def write(
            i: int = i, barrier: threading.Barrier = barrier, outcome: list[object] = outcome
        ) -> None:
            barrier.wait()
            try:
                outcome.append(bob.set("k", (f"bob{i}".encode(), {})))
            except AuthorizationError as error:
                outcome.append(error)

        def revoke(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            alice.set_permissions("k", {"owned": {"alice"}})

        threads = [threading.Thread(target=write), threading.Thread(target=revoke)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert alice.get_permissions("k") == {"owned": {"alice"}}
        assert not u["carol"].exists("k")
        data = child.to_bytes("k")
        if isinstance(outcome[0], str):  # bob's write happened, before the revocation
            assert data == f"bob{i}".encode()
        else:
            assert not data.startswith(f"bob{i}".encode())


def test_user_records_cannot_be_written_through_the_store(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    admin = SimpleAuthStore(child, ENCODER)
    before = admin.users()
    with pytest.raises(AuthorizationError):
        u["bob"].set(".user_mallory", (b'{"tags": ["admin"]}', {}))
    with pytest.raises((AuthorizationError, KeyNotFoundError)):
        u["bob"].set_data(".user_alice", b"x")
    with pytest.raises((AuthorizationError, KeyNotFoundError)):
        u["bob"].delete(".user_alice")
    assert admin.users() == before
    assert u["bob"].glob(".user*") == []


def test_identity_other_spellings_and_wrappers(tmp_path: Path) -> None:
    from storekeeper.composite import CachedStore

    a = open_store(f"sqlite:///{tmp_path}/a.db")
    b = open_store(f"sqlite:///{tmp_path}/a.db?table=store&durable=false")
    assert a.storage_identity() == b.storage_identity()
    a.set("k", (b"1", {}))
    cache = open_store(f"sqlite:///{tmp_path}/cache.db")
    cached = CachedStore(b, cache)
    cached.connect()
    assert cached.storage_identity() == a.storage_identity()
    with pytest.raises(InvalidArgumentError):
        transfer(a, cached, "")
    with pytest.raises(InvalidArgumentError):
        transfer(cached, a, "", delete=True)
    assert a.to_bytes("k") == b"1"


def test_old_dict_entries_are_read_hidden_and_converted(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob", "carol")
    seen: list[Any] = []
    events = EventManager()
    events.connect(StoreEvent, lambda e: seen.append(getattr(e, "metadata", None)), priority=10)
    bob_ev = SimpleAuthStore(child, ENCODER, event_manager=events)
    bob_ev.connect({"username": "bob", "password": "pw-bob"})
    old = {"owned": ["alice"], "get": ["bob"], "set": ["bob", None]}
    child.set("old", (b"data", {"m": 1, PERMISSIONS: old}))
    bob = u["bob"]
    assert bob.get_metadata("old") == {"m": 1}
    assert bob.head("old") == (child.head("old").version, 4, {"m": 1})  # type: ignore[union-attr]
    assert [(k, i.metadata) for k, i in bob.list_info(metadata=True)] == [("old", {"m": 1})]
    assert bob.query([PERMISSIONS, "m"]) == [("old", {"m": 1})]
    assert bob.check_permissions("old") == {"connect", "exists", "get"}  # the set list is bad
    assert not u["carol"].exists("old")
    assert seen == [{"m": 1}]
    u["alice"].update_permissions("old", {"get": ["carol"]})
    entry = child.get_metadata("old")[PERMISSIONS]
    assert isinstance(entry, str)
    assert u["alice"].get_permissions("old") == {"owned": {"alice"}, "get": {"bob", "carol"}}
    assert u["carol"].to_bytes("old") == b"data"
    assert all(_no_record(m) for m in seen)


def test_no_progress_or_change_events_of_others_hidden_writes(child: AbstractStore) -> None:
    import io

    u = _users(child, "alice", "bob")
    seen: list[StoreEvent] = []
    events = EventManager()
    events.connect(StoreEvent, seen.append, priority=10)
    bob_ev = SimpleAuthStore(child, ENCODER, event_manager=events)
    bob_ev.connect({"username": "bob", "password": "pw-bob"})
    big = b"x" * (3 << 20)
    u["alice"].set("secret/big", (io.BytesIO(big), {"s": 1}))
    assert u["alice"].to_bytes("secret/big") == big
    u["alice"].delete("secret/big")
    assert seen == []


def test_query_keys_agrees_with_query_for_exists_only_keys(child: AbstractStore) -> None:
    u = _users(child, "alice", "bob")
    u["alice"].set("e", (b"x", {"q": 1}))
    u["alice"].update_permissions("e", {"exists": ["bob"]})
    bob = u["bob"]
    assert "e" in list(bob.list_keys())  # bob may see it
    assert bob.query_keys() == [key for key, _ in bob.query()]


def test_transfer_refuses_a_folder_inside_the_store_directory(tmp_path: Path) -> None:
    from storekeeper.errors import CorruptFileError
    from storekeeper.store.transfer import Folder

    store = open_store(f"file://{tmp_path}/fs?create=true")
    store.set("a", (b"precious", {"m": 1}))
    with pytest.raises(InvalidArgumentError):
        transfer(store, Folder(tmp_path / "fs"), "")  # holds today
    try:
        with pytest.raises(InvalidArgumentError):
            transfer(store, Folder(tmp_path / "fs" / "keys"), "")
    finally:
        fresh = open_store(f"file://{tmp_path}/fs")
        try:
            assert fresh.to_bytes("a") == b"precious"
            assert list(fresh.list_keys()) == ["a"]
        except CorruptFileError:
            pytest.fail("the store was corrupted by the transfer")
