"""SimpleAuthStore: conformance over memory, filesystem and SQLite, users, permissions."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from storekeeper.backends.memory import DictMemoryStore
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.composite import (
    EVERYONE,
    SimpleAuthStore,
    make_encoder,
    sha1_hasher,
)
from storekeeper.composite._auth_permissions import record_in
from storekeeper.composite.auth import PERMISSIONS, RECENT_WRITES
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    InvalidMetadataError,
    KeyNotFoundError,
    NotConnectedError,
)
from storekeeper.events import EventManager
from storekeeper.store import (
    AbstractAuthorizingStore,
    AbstractStore,
    BytesValue,
    StoreModificationEvent,
    StoreProgressEvent,
)
from storekeeper.store._validate import decode_metadata
from storekeeper.testing.children import child
from storekeeper.testing.crossprocess import Opener, same_store
from storekeeper.testing.store import StoreTests

ALICE = {"username": "alice", "password": "alice's secret"}
BOB = {"username": "bob", "password": "bob's secret"}
CAROL = {"username": "carol", "password": "carol's secret"}
FAST = make_encoder(b"pepper", n=2)  # scrypt at the lowest cost: tests only
#: The permissions entry of a key alice owns, as the store writes it.
_ALICE_OWNS = "owned=alice"


class _AliceStore(SimpleAuthStore):
    """Connects as alice when no credentials are given (what the conformance suite does)."""

    def connect(self, credentials: Any = None) -> None:
        super().connect(ALICE if credentials is None else credentials)


class _AuthConformance(StoreTests):
    kind = "memory"

    # Raw access goes through the wrapped data store, where each key's metadata carries
    # its permission record as JSON text: written here as the record of a key alice
    # owns, and taken off what is read back (a record must be there: every write
    # through the store leaves one).
    def raw_write(
        self, store: AbstractStore, key: str, data: bytes, metadata: dict[str, Any]
    ) -> None:
        assert isinstance(store, SimpleAuthStore)
        store.store.set(key, (data, {**metadata, PERMISSIONS: _ALICE_OWNS}))

    def raw_read(self, store: AbstractStore, key: str) -> tuple[bytes, dict[str, Any]]:
        assert isinstance(store, SimpleAuthStore)
        metadata = store.store.get_metadata(key)
        assert metadata.pop(PERMISSIONS) == _ALICE_OWNS
        return store.store.to_bytes(key), metadata

    def create_store(self, tmp_path: Path, event_manager: EventManager) -> SimpleAuthStore:
        data = child(self.kind, tmp_path, "data")
        store = _AliceStore(data, FAST, event_manager=event_manager)
        with data:  # the user tools need the store of the records connected
            if "alice" not in store.users():
                store.add_user("alice", ALICE["password"])
        return store

    def reopen_store(self, tmp_path: Path, event_manager: EventManager) -> SimpleAuthStore:
        return self.create_store(tmp_path, event_manager)

    def process_opener(self, tmp_path: Path) -> Opener | None:
        return None if self.kind == "memory" else same_store(self, tmp_path)


class TestAuthOverMemory(_AuthConformance):
    kind = "memory"


class TestAuthOverFiles(_AuthConformance):
    kind = "file"
    listing_streams = False
    persistent = True


class TestAuthOverSqlite(_AuthConformance):
    kind = "sqlite"
    persistent = True


# -- fixtures for the store's own rules -------------------------------------------------------
@pytest.fixture(params=["memory", "file", "sqlite"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> AbstractStore:
    store = child(request.param, tmp_path, "data")
    store.connect()
    admin = SimpleAuthStore(store, FAST)
    admin.add_user("alice", ALICE["password"])
    admin.add_user("bob", BOB["password"])
    admin.add_user("carol", "carol's secret", tags=["staff"])
    return store


def session(inner: AbstractStore, credentials: Any, **options: Any) -> SimpleAuthStore:
    store = SimpleAuthStore(inner, FAST, event_manager=EventManager(), **options)
    store.connect(credentials)
    return store


# -- authentication --------------------------------------------------------------------------
def test_connect_needs_the_right_password(inner: AbstractStore) -> None:
    store = SimpleAuthStore(inner, FAST)
    for credentials in (
        None,
        {"username": "alice"},
        {"username": "alice", "password": "wrong"},
        {"username": "nobody", "password": "x"},
        ("alice", "wrong"),
        "alice",
    ):
        with pytest.raises(AuthenticationError):
            store.connect(credentials)
        assert not store.is_connected()
        with pytest.raises(NotConnectedError):
            store.get("anything")
    store.connect(("alice", ALICE["password"]))
    assert store.user_tag == "alice"


def test_passwords_are_scrypt_hashes_with_a_salt_per_user(inner: AbstractStore) -> None:
    admin = SimpleAuthStore(inner, make_encoder(b"pepper"))
    admin.add_user("dave", "same password")
    admin.add_user("erin", "same password")
    dave = json.loads(inner.to_bytes(".user_dave"))
    erin = json.loads(inner.to_bytes(".user_erin"))
    assert dave["scheme"] == "scrypt" and dave["salt"] != erin["salt"]
    assert dave["hash"] != erin["hash"]
    salt = bytes.fromhex(dave["salt"])
    expected = hashlib.scrypt(b"same password", salt=b"pepper" + salt, n=2**14, r=8, p=1, dklen=32)
    assert bytes.fromhex(dave["hash"]) == expected
    assert b"same password" not in inner.to_bytes(".user_dave")
    assert "pepper" not in repr(admin.encoder)


def test_passwords_are_compared_in_constant_time(
    inner: AbstractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    session(inner, ALICE).disconnect()
    assert len(calls) == 1


def test_sha1_is_used_only_when_asked_for_and_reads_old_records(tmp_path: Path) -> None:
    assert make_encoder(b"salt").scheme == "scrypt"
    legacy = make_encoder(b"salt", sha1_hasher)
    assert legacy.scheme == "sha1_hasher"
    with DictMemoryStore() as raw:
        # A record as the original wrote it: the bare sha1 of salt + password.
        raw.set(".user_old", (hashlib.sha1(b"saltpw").digest(), {}))
        store = SimpleAuthStore(raw, legacy)
        store.connect({"username": "old", "password": "pw"})
        assert store.user_tag == "old"
        with pytest.raises(AuthenticationError):
            SimpleAuthStore(raw, make_encoder(b"salt")).connect(("old", "pw"))


def test_seed_style_one_argument_encoders_still_work() -> None:
    with DictMemoryStore() as raw:
        store = SimpleAuthStore(raw, lambda data: hashlib.sha256(data).digest())
        store.add_user("u", "pw")
        store.connect(("u", "pw"))
        store.set("k", (b"v", {}))
        assert store.to_bytes("k") == b"v"


# -- user records are out of reach -------------------------------------------------------------
def test_user_records_are_invisible_and_untouchable(inner: AbstractStore) -> None:
    alice = session(inner, ALICE)
    alice.set("data", (b"x", {"a": 1}))
    record = inner.to_bytes(".user_bob")
    for key in (".user_bob", ".user_alice", ".user_nobody"):
        assert not alice.exists(key)
        with pytest.raises(KeyNotFoundError):
            alice.get(key)
        with pytest.raises(KeyNotFoundError):
            alice.delete(key)
        with pytest.raises(KeyNotFoundError):
            alice.update_metadata(key, {"x": 1})
        for write in (
            lambda k=key: alice.set(k, (b"evil", {})),
            lambda k=key: alice.set_data(k, b"evil"),
            lambda k=key: alice.set_metadata(k, {}),
        ):
            with pytest.raises(AuthorizationError):
                write()
    assert alice.query_keys() == ["data"]
    assert [key for key, _ in alice.query(select=[])] == ["data"]
    assert alice.glob(".user*") == [] and alice.glob("*") == ["data"]
    assert inner.to_bytes(".user_bob") == record
    assert alice.users() == ["alice", "bob", "carol"]  # the admin tool still sees them


def test_listing_needs_exists_but_matching_metadata_needs_get(inner: AbstractStore) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    alice.set("listed", (b"x", {"pin": 1234}))
    alice.set_permissions("listed", {"owned": ["alice"], "exists": ["bob"]})
    assert bob.query_keys() == ["listed"]
    assert bob.exists("listed")
    for pin in (1234, 1):  # guessing the value must tell nothing
        assert bob.query_keys(pin=pin) == []
        assert bob.query(pin=pin) == []
    assert alice.query_keys(pin=1234) == ["listed"]


def test_changes_reach_only_the_users_who_may_see_the_key(inner: AbstractStore) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    heard: list[tuple[str, str, Any]] = []

    def listen(event: StoreModificationEvent) -> None:
        heard.append((event.action, event.key, event.metadata))

    bob.event_manager.connect(StoreModificationEvent, listen)
    alice.set("secret", (b"s", {"pin": 1234}))
    alice.update_metadata("secret", {"pin": 4321})
    alice.set("listed", (b"l", {"pin": 1}))
    alice.set("shared", (b"d", {"pin": 2}))
    assert heard == []
    alice.set_permissions("listed", {"owned": ["alice"], "exists": ["bob"]})
    alice.set_permissions("shared", {"owned": ["alice"], "get": ["bob"]})
    assert heard == [("update", "listed", None), ("update", "shared", {"pin": 2})]
    heard.clear()
    for key in ("secret", "listed", "shared"):
        alice.delete(key)
    assert heard == [("delete", "listed", None), ("delete", "shared", {"pin": 2})]
    heard.clear()
    inner.set("around", (b"a", {"pin": 3}))  # no permissions: everyone's
    assert heard == [("set", "around", {"pin": 3})]


def test_progress_reaches_only_the_user_who_streams(inner: AbstractStore) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    heard: dict[str, list[str]] = {"alice": [], "bob": []}
    for name, store in (("alice", alice), ("bob", bob)):
        store.event_manager.connect(
            StoreProgressEvent, lambda event, name=name: heard[name].append(event.key)
        )
    alice.set("secret", (io.BytesIO(b"x" * 100_000), {}))
    inner.set("around", (io.BytesIO(b"y" * 100_000), {}))
    assert heard["bob"] == []
    assert heard["alice"] and set(heard["alice"]) == {"secret"}
    assert alice.to_bytes("secret") == b"x" * 100_000


def test_permissions_never_show_in_metadata_or_events(inner: AbstractStore) -> None:
    alice = session(inner, ALICE)
    seen: list[Any] = []
    alice.event_manager.connect(StoreModificationEvent, seen.append)
    alice.set("k", (b"x", {"a": 1}))
    alice.update_metadata("k", {"b": 2})
    assert alice.get_metadata("k") == {"a": 1, "b": 2}
    assert alice.get("k").metadata == {"a": 1, "b": 2}
    assert dict(alice.query()) == {"k": {"a": 1, "b": 2}}
    alice.delete("k")
    assert [e.metadata for e in seen] == [{"a": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2}]
    assert all(e.source is alice and e.key == "k" for e in seen)
    with pytest.raises(InvalidMetadataError):
        alice.set("k", (b"", {PERMISSIONS: {"owned": ["alice"]}}))
    with pytest.raises(InvalidMetadataError):
        alice.update_metadata("other", {PERMISSIONS: {}})
    with pytest.raises(InvalidMetadataError):
        alice.query_keys(**{PERMISSIONS: {"owned": ["alice"]}})


_ANYONE = {"owned": [EVERYONE], "get": [EVERYONE]}


def without(metadata: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: item for key, item in metadata.items() if key != name}


_ENTRY = json.dumps(PERMISSIONS) + ":" + json.dumps(_ANYONE, separators=(",", ":"))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"x": {PERMISSIONS: _ANYONE}}),  # nested
        json.dumps({"a": 1, "z": [{"y": {PERMISSIONS: _ANYONE}}]}),  # nested at the end
        json.dumps({"\\u0000storekeeper:permissions": _ANYONE}),  # the escape, literally
        json.dumps({"x" + PERMISSIONS: _ANYONE}),  # a name that ends like the entry's
        json.dumps({"z": "," + _ENTRY + "}"}),  # the entry's text inside a string
        json.dumps({"z": '"},' + _ENTRY}),  # ... one that closes quotes and objects
        '{"a":1,' + _ENTRY + "}",  # the entry itself, at the end of the text
        "{" + _ENTRY + "," + _ENTRY + "}",  # ... twice
        '{"a":1,' + _ENTRY + ',"\\u0000storekeeper:permissions":{}}',  # duplicated
        "{" + _ENTRY.replace(EVERYONE, "alice") + "," + _ENTRY + "}",  # the second wins
    ],
)
def test_a_record_smuggled_into_metadata_never_grants_anything(
    inner: AbstractStore, text: str
) -> None:
    alice, bob, carol = session(inner, ALICE), session(inner, BOB), session(inner, CAROL)
    alice.set("doc", (b"alice's", {"a": 0}))
    alice.set_permissions("doc", {"owned": ["alice"], "set": ["bob"]})
    heard: list[str] = []
    carol.event_manager.connect(StoreModificationEvent, lambda event: heard.append(event.key))
    metadata = json.loads(text)
    writes = [
        # First, so that the smuggled entries come after the record in the metadata.
        lambda: bob.update_metadata("doc", metadata),
        lambda: bob.set_data("doc", b"bob's again"),
        lambda: bob.set("doc", (b"bob's", metadata)),
        lambda: bob.set("doc", BytesValue(b"bob's", metadata_json=text)),
        lambda: bob.set_metadata("doc", metadata),
        lambda: bob.set("new-1", BytesValue(b"new", metadata_json=text)),
        lambda: bob.set("new-2", (b"new", metadata), if_exists=False),
        lambda: bob.set_metadata("new-3", metadata),
        # Code writing around the store is trusted with records at the top level only.
        lambda: inner.set("plain", (b"around", without(metadata, PERMISSIONS))),
    ]
    for write in writes:
        with contextlib.suppress(InvalidMetadataError):  # refused: a top-level entry
            write()
        _assert_only_owners_granted(inner, alice, bob, carol)
    assert heard == ["plain"]


def _assert_only_owners_granted(
    inner: AbstractStore, alice: SimpleAuthStore, bob: SimpleAuthStore, carol: SimpleAuthStore
) -> None:
    """The permissions are those the owners gave, whatever the metadata holds."""
    assert alice.get_permissions("doc") == {"owned": {"alice"}, "set": {"bob"}}
    assert bob.check_permissions("doc") == {"connect", "exists", "set"}
    with pytest.raises(AuthorizationError):
        bob.get_permissions("doc")
    with pytest.raises(AuthorizationError):
        bob.get("doc")
    new_keys = [key for key in ("new-1", "new-2", "new-3") if inner.exists(key)]
    for key in new_keys:
        assert bob.get_permissions(key) == {"owned": {"bob"}}
    for key in ("doc", *new_keys):
        assert not carol.exists(key)
        assert carol.check_permissions(key) == {"connect"}
        with pytest.raises(KeyNotFoundError):
            carol.get(key)
    # Keys written around the store carry no record: owned by everyone.
    assert carol.query_keys() == (["plain"] if inner.exists("plain") else [])


@pytest.mark.parametrize("entry", ["alice", None, 1, {"a": 1}])
def test_a_record_entry_that_is_not_a_list_of_tags_grants_nothing(
    inner: AbstractStore, entry: Any
) -> None:
    SimpleAuthStore(inner, FAST).add_user("a", "a's secret")  # "a" is a letter of "alice"
    inner.set("k", (b"x", {PERMISSIONS: {"owned": ["carol"], "get": entry, "set": entry}}))
    for who in (session(inner, ("a", "a's secret")), session(inner, ALICE)):
        assert not who.exists("k")
        assert who.check_permissions("k") == {"connect"}
        with pytest.raises(KeyNotFoundError):
            who.get("k")
    assert session(inner, CAROL).to_bytes("k") == b"x"


@pytest.mark.parametrize(
    "entry",
    [
        ["not", "a", "record"],
        None,
        1,
        "",
        "not json",
        "[1]",
        '{"owned": "carol"}',  # tags that are not a list
        '{"owned": [1, "carol"]}',  # ... or not all str
        '{"owned": [{"carol": 1}]}',
        "owned",  # a field without "="
        "owned=%FF",  # a percent-escape that is not UTF-8
        "[" * 100_000,
    ],
)
def test_a_damaged_record_grants_nothing_to_anyone(inner: AbstractStore, entry: Any) -> None:
    inner.set("k", (b"x", {"a": 1, PERMISSIONS: entry}))
    before = (inner.get("k").version, inner.get_metadata("k"))
    heard: list[str] = []
    for who in (ALICE, BOB, CAROL):
        user = session(inner, who)
        user.event_manager.connect(StoreModificationEvent, lambda event: heard.append(event.key))
        _assert_locked_out(user, "k")
    inner.update_metadata("k", {"b": 2})  # heard by nobody: no one may see the key
    assert heard == []
    assert inner.get_metadata("k")[PERMISSIONS] == entry
    assert inner.get("k").version != before[0]


def _assert_locked_out(user: SimpleAuthStore, key: str) -> None:
    """*user* can neither see, read nor change *key*."""
    assert not user.exists(key) and user.head(key) is None
    assert user.check_permissions(key) == {"connect"}
    assert user.query_keys() == [] and list(user.list_keys()) == []
    for read in (user.get, user.get_permissions):
        with pytest.raises(KeyNotFoundError):
            read(key)
    for write in (
        lambda: user.set(key, (b"mine", {})),
        lambda: user.set_data(key, b"mine"),
        lambda: user.set_permissions(key, {"owned": [user.user_tag]}),
    ):
        with pytest.raises((AuthorizationError, KeyNotFoundError)):
            write()


def test_tags_with_the_characters_of_the_stored_form_round_trip(inner: AbstractStore) -> None:
    odd = ["team a&owned=*", "50%+ ;", "é=1", "%2A"]  # not EVERYONE's "*", escaped or not
    SimpleAuthStore(inner, FAST).add_user("dave", "dave's secret", tags=[odd[0]])
    alice, bob = session(inner, ALICE), session(inner, BOB)
    dave = session(inner, ("dave", "dave's secret"))
    alice.set("doc", (b"x", {}))
    alice.set_permissions("doc", {"owned": ["alice"], "get": odd})
    assert alice.get_permissions("doc") == {"owned": {"alice"}, "get": set(odd)}
    assert dave.to_bytes("doc") == b"x"
    assert dave.check_permissions("doc") == {"connect", "exists", "get"}
    _assert_locked_out(bob, "doc")


def test_records_written_by_earlier_versions_are_read_and_kept(inner: AbstractStore) -> None:
    # Earlier versions kept the record as a dict in the metadata; it still decides, and a
    # write through the store keeps it as it is.
    inner.set("old", (b"v1", {"a": 1, PERMISSIONS: {"owned": ["alice"], "get": ["bob"]}}))
    alice, bob, carol = session(inner, ALICE), session(inner, BOB), session(inner, CAROL)
    assert bob.to_bytes("old") == b"v1" and bob.get_metadata("old") == {"a": 1}
    assert not carol.exists("old")
    with pytest.raises(AuthorizationError):
        bob.set("old", (b"bob's", {}))
    assert alice.get_permissions("old") == {"owned": {"alice"}, "get": {"bob"}}
    alice.set("old", (b"v2", {"a": 2}))
    assert inner.get_metadata("old")[PERMISSIONS] == {"owned": ["alice"], "get": ["bob"]}
    alice.update_permissions("old", {"get": ["carol"]})
    assert inner.get_metadata("old")[PERMISSIONS] == "owned=alice&get=bob&get=carol"
    assert carol.to_bytes("old") == b"v2" and bob.to_bytes("old") == b"v2"


# -- per-key permissions --------------------------------------------------------------------------
def test_a_user_without_permission_can_never_reach_another_users_data(
    inner: AbstractStore,
) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    alice.set("secret", (b"alice's data", {"owner": "alice"}))
    bob.set("bobs", (b"bob's data", {"owner": "bob"}))
    for read in (
        lambda: bob.get("secret"),
        lambda: bob.get_data("secret"),
        lambda: bob.get_metadata("secret"),
        lambda: bob.get_data_range("secret", 0, 3),
        lambda: bob.to_bytes("secret"),
        lambda: bob.multiget(["bobs", "secret"]),
        lambda: bob.delete("secret"),
        lambda: bob.update_metadata("secret", {"x": 1}),
        lambda: bob.get_permissions("secret"),
        lambda: bob.set_permissions("secret", {"owned": ["bob"]}),
        lambda: bob.update_permissions("secret", {"get": ["bob"]}),
    ):
        with pytest.raises(KeyNotFoundError):
            read()
    for write in (
        lambda: bob.set("secret", (b"overwritten", {})),
        lambda: bob.set_data("secret", b"overwritten"),
        lambda: bob.set_metadata("secret", {}),
        lambda: bob.multiset(["mine", "secret"], [(b"", {}), (b"", {})]),
    ):
        with pytest.raises(AuthorizationError):
            write()
    assert not bob.exists("secret") and not bob.exists("mine")
    assert bob.query_keys() == ["bobs"]
    assert bob.query_keys(owner="alice") == []
    assert dict(bob.query()) == {"bobs": {"owner": "bob"}}
    assert bob.glob("*") == ["bobs"] and bob.glob("sec*") == []
    assert bob.check_permissions("secret") == {"connect"}
    assert (alice.to_bytes("secret"), alice.get_metadata("secret")) == (
        b"alice's data",
        {"owner": "alice"},
    )
    assert alice.get_permissions("secret") == {"owned": {"alice"}}


def test_owners_grant_and_extend_permissions(inner: AbstractStore) -> None:
    alice, bob, carol = (
        session(inner, ALICE),
        session(inner, BOB),
        session(inner, ("carol", "carol's secret")),
    )
    alice.set("doc", (b"v1", {}))
    alice.update_permissions("doc", {"get": {"bob"}})
    assert bob.to_bytes("doc") == b"v1" and bob.query_keys() == ["doc"]
    assert bob.check_permissions("doc") == {"connect", "exists", "get"}
    with pytest.raises(AuthorizationError):
        bob.set("doc", (b"bob was here", {}))
    with pytest.raises(AuthorizationError):
        bob.get_permissions("doc")
    with pytest.raises(AuthorizationError):
        bob.get("doc").permissions  # noqa: B018 - the property raises
    assert not carol.exists("doc")
    alice.update_permissions("doc", {"set": ["staff"]})  # a group tag
    carol.set_data("doc", b"v2")
    assert alice.get_permissions("doc") == {
        "owned": {"alice"},
        "get": {"bob"},
        "set": {"staff"},
    }
    assert alice.get("doc").permissions == alice.get_permissions("doc")
    with pytest.raises(InvalidMetadataError):
        alice.set_permissions("doc", {"get": ["bob"]})  # 'owned' is required
    alice.set_permissions("doc", {"owned": ["bob"], "get": [EVERYONE]})
    assert bob.get_permissions("doc") == {"owned": {"bob"}, "get": {EVERYONE}}
    with pytest.raises(AuthorizationError):
        alice.get_permissions("doc")
    assert alice.to_bytes("doc") == b"v2" and carol.to_bytes("doc") == b"v2"


def test_writes_keep_permissions(inner: AbstractStore) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    alice.set("doc", (b"1", {}))
    alice.update_permissions("doc", {"set": ["bob"], "get": ["bob"]})
    bob.set("doc", (b"2", {"by": "bob"}))
    bob.set_metadata("doc", {"by": "bob again"})
    bob.update_metadata("doc", {"more": 1})
    assert alice.get_permissions("doc") == {"owned": {"alice"}, "set": {"bob"}, "get": {"bob"}}
    with pytest.raises(AuthorizationError):
        bob.delete("doc")
    alice.delete("doc")
    bob.set("doc", (b"mine now", {}))
    assert bob.get_permissions("doc") == {"owned": {"bob"}}


def test_keys_written_around_the_store_are_open_to_everyone(inner: AbstractStore) -> None:
    inner.set("legacy", (b"old", {"a": 1}))
    bob = session(inner, BOB)
    assert bob.to_bytes("legacy") == b"old"
    assert bob.get_permissions("legacy") == {"owned": {EVERYONE}}
    bob.set_permissions("legacy", {"owned": ["bob"]})
    assert not session(inner, ALICE).exists("legacy")


def test_check_permissions_can_be_restricted_by_a_subclass(inner: AbstractStore) -> None:
    class ReadOnlyUsers(SimpleAuthStore):
        def check_permissions(self, key: str | None = None) -> set[str]:
            return super().check_permissions(key) - {"set", "delete"}

    session(inner, ALICE).set("k", (b"x", {}))
    reader = ReadOnlyUsers(inner, FAST)
    reader.connect(ALICE)
    assert reader.check_permissions() == {"connect", "exists", "get"}
    assert reader.to_bytes("k") == b"x"
    with pytest.raises(AuthorizationError):
        reader.set("k", (b"y", {}))
    with pytest.raises(AuthorizationError):
        reader.set("new", (b"y", {}))
    with pytest.raises(AuthorizationError):
        reader.delete("k")


def test_a_revoked_permission_denies_the_very_next_access(inner: AbstractStore) -> None:
    alice, bob = session(inner, ALICE), session(inner, BOB)
    alice.set("doc", (b"v1", {"a": 1}))
    alice.update_permissions("doc", {"get": ["bob"], "set": ["bob"]})
    assert bob.to_bytes("doc") == b"v1"
    bob.set("doc", (b"v2", {"a": 1}))
    alice.set_permissions("doc", {"owned": ["alice"], "exists": ["bob"]})
    assert bob.exists("doc")
    with pytest.raises(AuthorizationError):
        bob.get("doc")
    with pytest.raises(AuthorizationError):
        bob.set("doc", (b"v3", {"a": 1}))
    alice.set_permissions("doc", {"owned": ["alice"]})
    with pytest.raises(KeyNotFoundError):
        bob.get("doc")
    assert not bob.exists("doc") and bob.query_keys() == []
    # Changed around the store, data and other metadata untouched: enforced at once too.
    alice.update_permissions("doc", {"get": ["bob"]})
    assert bob.to_bytes("doc") == b"v2"
    inner.update_metadata("doc", {PERMISSIONS: {"owned": ["alice"], "exists": ["bob"]}})
    with pytest.raises(AuthorizationError):
        bob.get("doc")
    assert alice.to_bytes("doc") == b"v2"


def test_writes_copy_the_callers_metadata_and_still_validate_it(inner: AbstractStore) -> None:
    alice = session(inner, ALICE)
    metadata: dict[str, Any] = {"tags": ["a"], "nested": {"x": 1}}
    alice.set("k", (b"x", metadata))
    metadata["tags"].append("b")
    metadata["nested"]["x"] = 2
    assert set(metadata) == {"tags", "nested"}  # the permissions went into a copy
    assert alice.get_metadata("k") == {"tags": ["a"], "nested": {"x": 1}}
    for bad in ({"x": object()}, {1: "name is not a str"}, {"x": float("nan")}):
        with pytest.raises(InvalidMetadataError):
            alice.set("new", (b"x", bad))
        with pytest.raises(InvalidMetadataError):
            alice.set_metadata("k", bad)
    assert not alice.exists("new")
    assert alice.get_metadata("k") == {"tags": ["a"], "nested": {"x": 1}}


def test_events_reach_listeners_connected_later_or_before_a_commit(inner: AbstractStore) -> None:
    alice = session(inner, ALICE)
    alice.set("unheard", (b"x", {}))  # nobody listens yet: nothing to deliver
    seen: list[Any] = []
    alice.event_manager.connect(StoreModificationEvent, seen.append)
    alice.set("heard", (b"x", {"a": 1}))
    assert [(e.key, e.metadata, e.source) for e in seen] == [("heard", {"a": 1}, alice)]
    alice.event_manager.disconnect(StoreModificationEvent, seen.append)
    seen.clear()
    with alice.transaction():
        alice.set("held", (b"x", {"b": 2}))
        alice.event_manager.connect(StoreModificationEvent, seen.append)
    assert [(e.key, e.metadata, e.source) for e in seen] == [("held", {"b": 2}, alice)]


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        ' {"a": 1} ',
        '{"a":1}\n',
        '{"\\u0000storekeeper:permissions":{"owned":["bob"]},"a":[1,{"b":null}]}',
        '{"\\u0000storekeeper:permissions":"owned=bob&get=%2A","a":[1,{"b":null}]}',
        '{"\\u0000storekeeper:permissions":{"owned":["bob"]},'
        '"\\u0000storekeeper:permissions":{"owned":["alice"]}}',  # the last one counts
        '{"\\u0000storekeeper:permissions":"owned=bob",'
        '"\\u0000storekeeper:permissions":"owned=alice"}',  # as text
    ],
)
def test_permission_records_are_read_exactly_as_the_metadata(text: str) -> None:
    # json.loads is the reference: decode_metadata's fast path must agree with it.
    assert decode_metadata(text) == json.loads(text)
    value = BytesValue(b"", metadata_json=text)
    expected = json.loads(text).get(PERMISSIONS)
    if isinstance(expected, str):
        expected = urllib.parse.parse_qs(expected)
    assert record_in(value.metadata) == expected


_ALICE_TAIL = '"\\u0000storekeeper:permissions":{"owned":["alice"]}}'


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,' + _ALICE_TAIL,
        "{" + _ALICE_TAIL,
        '{"x\\"' + _ALICE_TAIL[1:],  # a name that only ends like the entry's
        '{"x":{' + _ALICE_TAIL + "}",  # the entry one level down
        '{"x":"\\"",' + _ALICE_TAIL,
        "{" + _ALICE_TAIL[:-1] + ',"a":1}',  # not the last entry
        '{"a":1,' + _ALICE_TAIL.replace("alice", "bob"),
    ],
)
def test_the_record_is_the_top_level_entry_wherever_the_text_puts_it(text: str) -> None:
    value = BytesValue(b"", metadata_json=text)
    assert record_in(value.metadata) == json.loads(text).get(PERMISSIONS)


@pytest.mark.parametrize("text", ["", "[1]", '{"a":1} x', '{"a":1'])
def test_unreadable_metadata_grants_nothing(text: str) -> None:
    with pytest.raises(ValueError):
        record_in(BytesValue(b"", metadata_json=text).metadata)


# -- user administration and sessions ------------------------------------------------------------
def test_user_tools(inner: AbstractStore) -> None:
    admin = SimpleAuthStore(inner, FAST)
    with pytest.raises(ConflictError):
        admin.add_user("alice", "again")
    admin.change_user("alice", password="new secret")
    with pytest.raises(AuthenticationError):
        session(inner, ALICE)
    session(inner, ("alice", "new secret")).disconnect()
    admin.remove_user("bob")
    with pytest.raises(KeyNotFoundError):
        admin.remove_user("bob")
    with pytest.raises(KeyNotFoundError):
        admin.change_user("bob", password="x")
    assert admin.users() == ["alice", "carol"]


def test_user_tools_never_connect_an_unconnected_store_for_one_call() -> None:
    # An in-memory database lives only while connected: connecting it for add_user and
    # disconnecting it afterwards made the new user vanish without a word.
    inner = SqliteStore()
    admin = SimpleAuthStore(inner, FAST)
    calls = [
        lambda: admin.add_user("alice", "pw"),
        lambda: admin.change_user("alice", password="new"),
        lambda: admin.remove_user("alice"),
        admin.users,
    ]
    for call in calls:
        with pytest.raises(NotConnectedError, match="user records"):
            call()
        assert not inner.is_connected()
    with inner:
        admin.add_user("alice", "pw")
        assert admin.users() == ["alice"]
        store = SimpleAuthStore(inner, FAST)  # a second object finds the user
        store.connect(("alice", "pw"))
        store.set("k", (b"v", {}))
        store.disconnect()
        assert inner.is_connected()  # left connected: this store did not connect it
        assert json.loads(inner.to_bytes(".user_alice"))["scheme"] == "scrypt"


def test_user_tools_use_the_connection_of_a_connected_auth_store() -> None:
    users, data = DictMemoryStore(), DictMemoryStore()
    with users:
        SimpleAuthStore(data, FAST, user_key_store=users).add_user("alice", "pw")
    store = SimpleAuthStore(data, FAST, user_key_store=users)
    store.connect(("alice", "pw"))  # connects both children
    store.add_user("bob", "pw")
    assert store.users() == ["alice", "bob"]
    store.disconnect()
    assert not users.is_connected()
    with pytest.raises(NotConnectedError):
        store.users()


def test_removed_users_and_changed_passwords_end_sessions(inner: AbstractStore) -> None:
    admin = SimpleAuthStore(inner, FAST)
    bob = session(inner, BOB, recheck_interval=0.0)
    carol = session(inner, ("carol", "carol's secret"), recheck_interval=0.0)
    admin.change_user("carol", tags=["staff", "audit"])
    assert carol.check_permissions() >= {"get"}  # a tag change keeps the session
    admin.remove_user("bob")
    with pytest.raises(AuthenticationError):
        bob.query_keys()
    with pytest.raises(AuthenticationError):
        bob.get("anything")
    admin.change_user("carol", password="changed")
    with pytest.raises(AuthenticationError):
        carol.exists("x")
    carol.connect(("carol", "changed"))
    assert carol.query_keys() == []


def test_info_works_connected_or_not(inner: AbstractStore) -> None:
    store = SimpleAuthStore(inner, FAST)
    assert store.info()["user"] is None
    store.connect(ALICE)
    info = store.info()
    assert info["user"] == "alice" and info["authorizing"] is True
    assert isinstance(store, AbstractAuthorizingStore)
    store.disconnect()
    store.connect(BOB)  # the same object can reconnect, as another user
    assert store.user_tag == "bob"


def test_a_separate_user_store(tmp_path: Path) -> None:
    users, data = DictMemoryStore(), DictMemoryStore()
    store = SimpleAuthStore(data, FAST, user_key_path="u:", user_key_store=users)
    with users:
        store.add_user("alice", "pw")
    store.connect(("alice", "pw"))
    store.set("k", (b"v", {}))
    assert users.query_keys() == ["u:alice"]
    assert data.query_keys() == ["k"]
    store.disconnect()
    assert not users.is_connected() and not data.is_connected()


def test_sessions_in_threads_see_only_their_own_keys(inner: AbstractStore) -> None:
    errors: list[BaseException] = []

    def work(credentials: dict[str, str]) -> None:
        try:
            store = session(inner, credentials)
            name = credentials["username"]
            for i in range(15):
                store.set(f"{name}-{i}", (b"x", {"by": name}))
                assert all(key.startswith(name) for key in store.query_keys())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(who,)) for who in (ALICE, BOB) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(session(inner, ALICE).query_keys()) == 15


class _CountingStore(DictMemoryStore):
    """Counts lookups and ``set`` calls (failed ones too), so a test can tell which
    writes needed a lookup or a second try."""

    lookups = 0
    sets = 0

    def get(self, key: str) -> Any:
        self.lookups += 1
        return super().get(key)

    def set(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        self.sets += 1
        return super().set(key, value, *args, **kwargs)


def _counting_sessions() -> tuple[_CountingStore, SimpleAuthStore, SimpleAuthStore]:
    inner = _CountingStore(event_manager=EventManager())
    inner.connect()
    admin = SimpleAuthStore(inner, FAST)
    admin.add_user("alice", ALICE["password"])
    admin.add_user("bob", BOB["password"])
    alice, bob = session(inner, ALICE), session(inner, BOB)
    inner.lookups = inner.sets = 0
    return inner, alice, bob


def test_create_only_writes_and_rewrites_of_own_keys_need_no_lookup() -> None:
    inner, alice, bob = _counting_sessions()
    first = alice.set("new", (b"1", {"n": 1}), if_exists=False)
    alice.set_metadata("also new", {"m": 1}, if_exists=False)
    second = alice.set("new", (b"2", {"n": 2}))  # pinned to the version alice wrote
    assert inner.lookups == 0
    assert first != second == inner.get("new").version
    with pytest.raises(ConflictError):
        alice.set("new", (b"3", {}), if_exists=False)
    for write in (
        lambda: bob.set("new", (b"bob's", {})),
        lambda: bob.set("new", (b"bob's", {}), if_exists=False),
    ):
        with pytest.raises(AuthorizationError):
            write()
    assert (alice.to_bytes("new"), alice.get_metadata("new")) == (b"2", {"n": 2})
    assert alice.get_permissions("also new") == {"owned": {"alice"}}


def test_plain_sets_of_keys_not_written_here_look_them_up_once() -> None:
    inner, alice, bob = _counting_sessions()
    bob.set("bob's", (b"bob's", {}))
    for n in range(10):
        inner.set(f"old-{n}", (b"old", {}))
    inner.lookups = inner.sets = 0
    # However many new keys came before, a plain set looks its key up: one lookup and
    # one write each, whether the key turns out new or not (no write is tried blind).
    for n in range(10):
        alice.set(f"new-{n}", (b"x", {}))
    assert (inner.lookups, inner.sets) == (10, 10)
    inner.lookups = inner.sets = 0
    for n in range(10):
        alice.set(f"old-{n}", (b"new", {}))
    assert (inner.lookups, inner.sets) == (10, 10)
    with pytest.raises(AuthorizationError):
        alice.set("bob's", (b"alice's", {}))
    assert bob.to_bytes("bob's") == b"bob's"
    assert bob.get_permissions("bob's") == {"owned": {"bob"}}
    assert [alice.to_bytes(f"old-{n}") for n in range(10)] == [b"new"] * 10
    assert alice.get_permissions("old-9") == {"owned": {"*"}}  # the record it had: none
    assert alice.get_permissions("new-9") == {"owned": {"alice"}}


def test_the_keys_a_store_remembers_are_bounded_and_the_newest_kept() -> None:
    inner, alice, _ = _counting_sessions()
    keys = [f"k{n}" for n in range(RECENT_WRITES + 1)]
    for key in keys:
        alice.set(key, (b"1", {}))
    inner.lookups = 0
    alice.set(keys[-1], (b"2", {}))
    alice.set(keys[RECENT_WRITES // 2 + 1], (b"2", {}))
    assert inner.lookups == 0  # still remembered: pinned rewrites
    alice.set(keys[0], (b"2", {}))
    assert inner.lookups == 1  # forgotten: checked again
    assert [alice.to_bytes(keys[n]) for n in (0, 1, -1)] == [b"2", b"1", b"2"]


def test_delete_and_update_metadata_of_an_unknown_key_look_it_up_once() -> None:
    inner, alice, _ = _counting_sessions()
    inner.set("plain", (b"x", {"a": 1}))
    inner.lookups = 0
    alice.update_metadata("plain", {"b": 2})
    assert inner.lookups == 1
    alice.delete("plain")
    assert inner.lookups == 2
    assert not inner.exists("plain")


@pytest.mark.parametrize("where", ["own store", "another session", "wrapped store"])
def test_a_key_changed_since_this_store_set_it_is_checked_again(where: str) -> None:
    inner, alice, bob = _counting_sessions()
    alice.set("k", (b"alice's", {}))
    if where == "own store":
        alice.set_permissions("k", {"owned": ["bob"]})
    elif where == "another session":
        other_alice = session(inner, ALICE)
        other_alice.set_permissions("k", {"owned": ["bob"]})
    else:
        inner.set("k", (b"bob's", {PERMISSIONS: {"owned": ["bob"]}}))
    before = (inner.get("k").version, inner.to_bytes("k"))
    with pytest.raises(AuthorizationError):
        alice.set("k", (b"overwritten", {}))
    assert (inner.get("k").version, inner.to_bytes("k")) == before
    assert bob.to_bytes("k") in (b"alice's", b"bob's")


def test_a_rewrite_of_an_own_key_keeps_its_permissions() -> None:
    _, alice, bob = _counting_sessions()
    alice.set("shared", (b"1", {}))
    alice.set_permissions("shared", {"owned": ["alice"], "get": ["bob"]})
    alice.set("shared", (b"2", {}))  # a lookup (permissions changed), then remembered
    alice.set("shared", (b"3", {}))  # pinned to what alice wrote last
    assert bob.to_bytes("shared") == b"3"
    assert alice.get_permissions("shared") == {"owned": {"alice"}, "get": {"bob"}}
