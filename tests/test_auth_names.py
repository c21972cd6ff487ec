"""SimpleAuthStore: user names and group tags share one namespace, '*' is nobody's name,
and query()/query_keys() agree on keys a user may only see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storekeeper import open_store
from storekeeper.composite import EVERYONE, SimpleAuthStore, make_encoder
from storekeeper.errors import AuthenticationError, InvalidKeyError, InvalidMetadataError
from storekeeper.store import AbstractStore

ENCODER = make_encoder(b"names secret", n=2)


@pytest.fixture(params=["memory", "sqlite"])
def child(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/a.db"
    store = open_store(url)
    try:
        yield store
    finally:
        store.disconnect()


def _connect(child: AbstractStore, name: str) -> SimpleAuthStore:
    store = SimpleAuthStore(child, ENCODER)
    store.connect({"username": name, "password": "pw-" + name})
    return store


def _raw_users(child: AbstractStore) -> dict[str, bytes]:
    """The user records as the wrapped store holds them (a second path)."""
    return {key: child.to_bytes(key) for key in child.query_keys() if key.startswith(".user_")}


def test_reserved_name_and_tag_refused_and_nothing_written(child: AbstractStore) -> None:
    admin = SimpleAuthStore(child, ENCODER)
    admin.add_user("alice", "pw-alice", ["staff"])
    before = _raw_users(child)
    with pytest.raises(InvalidKeyError, match="reserved"):
        admin.add_user(EVERYONE, "pw")
    with pytest.raises(InvalidMetadataError, match="reserved"):
        admin.add_user("bob", "pw", ["staff", EVERYONE])
    with pytest.raises(InvalidMetadataError, match="reserved"):
        admin.change_user("alice", tags=[EVERYONE])
    with pytest.raises(InvalidMetadataError, match="reserved"):
        admin.change_user("alice", password="new", tags=[EVERYONE])
    assert _raw_users(child) == before
    assert admin.users() == ["alice"]
    _connect(child, "alice")  # the password did not change either


def test_user_names_and_group_tags_never_clash(child: AbstractStore) -> None:
    admin = SimpleAuthStore(child, ENCODER)
    admin.add_user("alice", "pw-alice", ["staff"])
    admin.add_user("bob", "pw-bob")
    before = _raw_users(child)
    with pytest.raises(InvalidKeyError, match="group tag of user 'alice'"):
        admin.add_user("staff", "pw")  # would own every key granted to the group
    with pytest.raises(InvalidMetadataError, match="user names"):
        admin.add_user("eve", "pw", ["alice"])  # would own every key alice creates
    with pytest.raises(InvalidMetadataError, match="user names"):
        admin.change_user("bob", tags=["alice"])
    assert _raw_users(child) == before
    # A user's own name among their tags adds nothing, and groups may be shared.
    admin.change_user("bob", tags=["bob", "staff"])
    admin.add_user("carol", "pw-carol", ["staff"])
    alice, eve_like = _connect(child, "alice"), _connect(child, "bob")
    alice.set("mine", (b"secret", {}))
    assert not eve_like.exists("mine")


def test_stored_user_named_everyone_cannot_connect(child: AbstractStore) -> None:
    """A record made before the check (copied here around the tools) fails closed."""
    admin = SimpleAuthStore(child, ENCODER)
    admin.add_user("star", "pw-star")
    admin.add_user("bob", "pw-bob")
    child.set(".user_*", (child.to_bytes(".user_star"), {}))
    assert "*" in admin.users()
    with pytest.raises(AuthenticationError, match="reserved"):
        _connect_as(child, "*", "pw-star")
    admin.remove_user("*")  # the administrator can still drop it
    assert "*" not in admin.users()


def _connect_as(child: AbstractStore, name: str, password: str) -> SimpleAuthStore:
    store = SimpleAuthStore(child, ENCODER)
    store.connect({"username": name, "password": password})
    return store


def test_query_lists_exists_only_keys_without_their_metadata(child: AbstractStore) -> None:
    admin = SimpleAuthStore(child, ENCODER)
    admin.add_user("alice", "pw-alice")
    admin.add_user("bob", "pw-bob")
    alice, bob = _connect(child, "alice"), _connect(child, "bob")
    alice.set("seen", (b"x", {"q": 1, "secret": "s"}))
    alice.update_permissions("seen", {"exists": ["bob"]})
    alice.set("read", (b"y", {"q": 1}))
    alice.update_permissions("read", {"get": ["bob"]})
    alice.set("hidden", (b"z", {"q": 1}))
    assert sorted(bob.query()) == [("read", {"q": 1}), ("seen", {})]
    assert sorted(bob.query(["secret", "q"])) == [("read", {"q": 1}), ("seen", {})]
    assert sorted(bob.query_keys()) == ["read", "seen"] == sorted(bob.list_keys())
    # A term reads metadata: only keys bob may get can match, in both calls.
    assert bob.query(q=1) == [("read", {"q": 1})]
    assert bob.query_keys(q=1) == ["read"]
    assert bob.query(secret="s") == [] and bob.query_keys(secret="s") == []
