"""list_keys beyond the conformance suite: the helpers, the default built on query_keys,
how the file system store lists (names only, journal, damage), and the composites' rules
(whiteouts, mount points, permissions)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storekeeper.backends import _fs_listing, _fs_transactions
from storekeeper.backends._fs_journal import JOURNAL_NAME, Journal
from storekeeper.backends._fs_names import encode_key
from storekeeper.backends.filesystem import FileSystemStore, init_shared_store
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.composite import JoinedStore, MountedStore, SimpleAuthStore, make_encoder
from storekeeper.files import atomic_write
from storekeeper.store import AbstractReadOnlyStore, BytesValue, Value
from storekeeper.store.listing import (
    SortedKeys,
    fold_keys,
    prefix_end,
    walk,
    with_changes,
)
from storekeeper.testing.listing import model_listing

LONG = "long/" + "k" * 300  # stored under a hashed file name
MAX = "\U0010ffff"


# -- helpers --------------------------------------------------------------------------------
def test_prefix_end_is_the_least_string_above_the_prefix_range() -> None:
    assert prefix_end("") is None
    assert prefix_end("ab") == "ac"
    assert prefix_end("a" + MAX + MAX) == "b"
    assert prefix_end(MAX) is None
    assert prefix_end("\ud7ff") == "\ue000"  # past the surrogates no key holds


@given(
    keys=st.sets(st.text(alphabet="ab/" + MAX, min_size=1, max_size=4), max_size=30),
    prefix=st.text(alphabet="ab/" + MAX, max_size=3),
    delimiter=st.none() | st.sampled_from(["/", "b", "//", "a/"]),
)
def test_fold_and_walk_agree_with_the_model(
    keys: set[str], prefix: str, delimiter: str | None
) -> None:
    ordered = sorted(keys)
    expected = model_listing(keys, prefix, delimiter)
    matching = [key for key in ordered if key.startswith(prefix)]
    assert list(fold_keys(matching, prefix, delimiter)) == expected
    asked: list[str] = []

    def keys_from(low: str) -> Iterator[str]:
        asked.append(low)
        return (key for key in ordered if key >= low)

    assert list(walk(keys_from, prefix, delimiter)) == expected
    # One start for the listing and one after each folder, never one per key.
    folders = [entry for entry in expected if delimiter and entry.find(delimiter, len(prefix)) >= 0]
    assert len(asked) <= 1 + len(folders)


@given(
    keys=st.sets(st.text(alphabet="abc", min_size=1, max_size=3), max_size=20),
    changes=st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), st.booleans()),
)
def test_with_changes_applies_a_transaction_s_writes(
    keys: set[str], changes: dict[str, bool]
) -> None:
    ordered = sorted(keys)
    merged = with_changes(lambda low: (key for key in ordered if key >= low), changes)
    expected = (keys | {k for k, present in changes.items() if present}) - {
        k for k, present in changes.items() if not present
    }
    assert list(walk(merged, "", None)) == sorted(expected)


@pytest.mark.parametrize("changes_per_round", [1, 5, 40, 500])
def test_sorted_keys_stays_sorted_through_changes(changes_per_round: int) -> None:
    rng = random.Random(changes_per_round)
    current: set[str] = {f"k{rng.randrange(1000)}" for _ in range(200)}
    index = SortedKeys(lambda: current)
    snapshots = []
    for _ in range(20):
        for _ in range(changes_per_round):
            key = f"k{rng.randrange(1000)}"
            if rng.random() < 0.5 and key in current:
                current.discard(key)
                index.discard(key)
            elif key not in current:
                current.add(key)
                index.add(key)
        snapshot = index.snapshot()
        assert snapshot == sorted(current)
        snapshots.append((snapshot, list(snapshot)))
    # A snapshot handed out is never changed afterwards.
    for snapshot, copy in snapshots:
        assert snapshot == copy


def test_sorted_keys_costs_nothing_without_changes() -> None:
    index = SortedKeys(lambda: ["b", "a"])
    assert index.snapshot() is index.snapshot()


# -- the default implementation ---------------------------------------------------------------
class _MinimalStore(AbstractReadOnlyStore):
    """A third-party read-only store implementing only the abstract core."""

    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__()
        self._keys = list(keys)

    def get(self, key: str) -> Value:
        if key not in self._keys:
            raise KeyError(key)
        return BytesValue(b"", {})

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        self._require_connection()
        return [(key, {}) for key in self._keys]


def test_the_default_listing_is_built_on_query_keys() -> None:
    keys = ["b/2", "a", "b/1", "c/d/e", "b"]
    with _MinimalStore(keys) as store:
        assert list(store.list_keys()) == sorted(keys)
        assert list(store.list_keys("", "/")) == ["a", "b", "b/", "c/"]
        assert list(store.list_keys("b/")) == ["b/1", "b/2"]


# -- the file system store ----------------------------------------------------------------------
@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FileSystemStore]:
    init_shared_store(tmp_path / "s")
    with FileSystemStore(tmp_path / "s", durable=False) as store:
        yield store


def test_a_file_system_listing_opens_no_record(
    fs: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"d/{index}" for index in range(50)] + ["con", "CON", "co", "é/x", LONG]
    fs.multiset(keys, [(b"x", {}) for _ in keys])
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    assert list(fs.list_keys("c")) == ["co", "con"]
    # The one record read: a hashed name's, to learn its key, once per store object.
    assert opened == [os.path.join(fs.path, "keys", encode_key(LONG))]
    opened.clear()
    assert list(fs.list_keys("d/1")) == ["d/1"] + [f"d/{n}" for n in range(10, 20)]
    assert list(fs.list_keys("l")) == [LONG]
    assert list(fs.list_keys("", "/")) == ["CON", "co", "con", "d/", "long/", "é/"]
    assert opened == []


def test_a_file_system_listing_sees_a_committed_journal(
    fs: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs.multiset(["j/a", "j/gone"], [(b"1", {}), (b"2", {})])

    class CrashError(Exception):
        pass

    def journal_then_crash(root: str, journal: Journal, *, durable: bool) -> None:
        atomic_write(os.path.join(root, JOURNAL_NAME), journal.encode(), durable=durable)
        raise CrashError

    monkeypatch.setattr(_fs_transactions, "commit_journal", journal_then_crash)
    with pytest.raises(CrashError), fs.transaction():
        fs.set("j/new", (b"3", {}))
        fs.set("j/" + LONG, (b"4", {}))
        fs.delete("j/gone")
    monkeypatch.undo()
    # Committed (the journal exists) but not applied: the new keys are staged files only.
    assert not Path(fs.path, "keys", encode_key("j/new")).exists()
    assert list(fs.list_keys("j/")) == sorted(["j/a", "j/new", "j/" + LONG])
    assert list(fs.list_keys("j/", "/")) == ["j/a", "j/long/", "j/new"]


def test_a_file_system_listing_names_damaged_records_it_can_decode(
    fs: FileSystemStore, caplog: pytest.LogCaptureFixture
) -> None:
    fs.multiset(["a", "b", LONG], [(b"1", {}), (b"2", {}), (b"3", {})])
    for key in ("b", LONG):
        record = Path(fs.path, "keys", encode_key(key))
        content = bytearray(record.read_bytes())
        content[-3] ^= 0xFF
        record.write_bytes(bytes(content))
    fresh = FileSystemStore(fs.path)  # nothing learnt about hashed names yet
    with fresh, caplog.at_level(logging.WARNING):
        # A listing reads no record, so a damaged one is listed under its name, except a
        # hashed one, whose key cannot be read: it is left out with a warning. query_keys
        # reads the records and leaves every damaged one out, as query does.
        assert list(fresh.list_keys()) == ["a", "b"]
        assert fresh.query_keys() == ["a"]
    assert "damaged" in caplog.text


def test_the_file_system_listing_filters_names_before_decoding(
    fs: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"x/{index}" for index in range(200)] + ["y/1", "y/2"]
    fs.multiset(keys, [(b"", {}) for _ in keys])
    decoded: list[str] = []
    real = _fs_listing.decode_name
    monkeypatch.setattr(_fs_listing, "decode_name", lambda name: decoded.append(name) or real(name))
    assert list(fs.list_keys("y/")) == ["y/1", "y/2"]
    assert sorted(decoded) == [encode_key("y/1"), encode_key("y/2")]


# -- composites -------------------------------------------------------------------------------
def _memory(keys: Iterable[str]) -> DictMemoryStore:
    store = DictMemoryStore()
    store.connect()
    for key in keys:
        store.set(key, (b"", {}))
    return store


def test_joined_listing_hides_whiteouts_and_empty_folders() -> None:
    top, bottom = _memory(["a/1", "b"]), _memory(["a/2", "c/1", "c/2", "d/1"])
    with JoinedStore([top, bottom]) as joined:
        joined.delete("c/1")
        joined.delete("c/2")
        joined.delete("a/2")
        assert top.exists("c/1")  # a whiteout
        assert list(joined.list_keys()) == ["a/1", "b", "d/1"]
        assert list(joined.list_keys("", "/")) == ["a/", "b", "d/"]
        assert list(joined.list_keys("c/")) == []
        bottom.delete("d/1")
        joined.set("c/1", (b"back", {}))
        assert list(joined.list_keys("", "/")) == ["a/", "b", "c/"]
        assert sorted(joined.query_keys()) == list(joined.list_keys())


def test_joined_listing_inside_a_transaction() -> None:
    top, bottom = _memory(["k/1"]), _memory(["k/2"])
    with JoinedStore([top, bottom]) as joined, joined.transaction():
        joined.delete("k/2")
        joined.set("k/3", (b"", {}))
        assert list(joined.list_keys("k/")) == ["k/1", "k/3"]


@pytest.mark.parametrize(
    ("mount_point", "prefixes", "delimiters"),
    [
        ("m/", ["", "m", "m/", "m/a", "n"], [None, "/", "::", "/a"]),
        ("mnt", ["", "m", "mnt", "mnt/", "mntx"], [None, "/", "t/", "nt"]),
        ("a:", ["", "a", "a:", "a::"], [None, ":", "::", ":::"]),
        ("", ["", "a"], [None, "/"]),
    ],
)
def test_mounted_listing_maps_the_mount_point(
    mount_point: str, prefixes: list[str], delimiters: list[str | None]
) -> None:
    mounted_keys = ["a", "b/c", ":b", "/x", "t/u", "::z"]
    backing_keys = [mount_point + "a", mount_point + "zz/1", "m", "n/1", "a::q", "mntx"]
    mount, backing = _memory(mounted_keys), _memory(backing_keys)
    with MountedStore(mount_point, mount, backing) as store:
        store.delete(mount_point + "zz/1")  # a whiteout in the mount store
        visible = store.query_keys()
        assert mount_point + "zz/1" not in visible
        for prefix in prefixes:
            for delimiter in delimiters:
                listed = list(store.list_keys(prefix, delimiter))
                assert listed == model_listing(visible, prefix, delimiter), (prefix, delimiter)


def test_auth_listing_shows_only_what_the_user_may_see() -> None:
    encoder = make_encoder(b"pepper", n=2)
    inner = DictMemoryStore()
    inner.connect()
    admin = SimpleAuthStore(inner, encoder)
    admin.add_user("alice", "a")
    admin.add_user("bob", "b")
    alice = SimpleAuthStore(inner, encoder)
    alice.connect({"username": "alice", "password": "a"})
    for key in ("p/1", "p/2", "q/1", "r"):
        alice.set(key, (b"", {}))
    alice.set_permissions("p/2", {"owned": ["alice"], "exists": ["bob"]})
    bob = SimpleAuthStore(inner, encoder)
    bob.connect({"username": "bob", "password": "b"})
    bob.set("s", (b"", {}))
    assert list(alice.list_keys()) == ["p/1", "p/2", "q/1", "r"]
    assert list(alice.list_keys("", "/")) == ["p/", "q/", "r"]
    assert list(bob.list_keys("", "/")) == ["p/", "s"]  # q/ holds nothing bob may see
    assert list(bob.list_keys("p/")) == ["p/2"]
    assert list(bob.list_keys(".")) == []  # user records are never listed
    assert sorted(bob.query_keys()) == list(bob.list_keys())
