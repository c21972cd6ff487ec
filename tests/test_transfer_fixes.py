"""What a user relies on in ``list_info`` and ``transfer``/``sync`` beyond the happy path:
a SimpleAuthStore user's detailed listing, one storage opened twice, source times in the
future, keys that turn into folders, and folder file names that cannot be keys. Each
result is read back through a second path (the raw wrapped store, a fresh store object
or the files themselves)."""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from storekeeper import open_store
from storekeeper.cli.main import cli
from storekeeper.composite import CachedStore, SimpleAuthStore, make_encoder
from storekeeper.errors import AuthorizationError, InvalidArgumentError
from storekeeper.store import AbstractStore, KeyInfo
from storekeeper.store.transfer import Folder, transfer


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"STOREKEEPER_URL": None})


def _rows(db: Path) -> list[Any]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("SELECT * FROM store").fetchall(), key=repr)


# -- SimpleAuthStore.list_info ----------------------------------------------------------------
def _auth_pair() -> tuple[AbstractStore, SimpleAuthStore, SimpleAuthStore]:
    shared = open_store("memory://")
    users = SimpleAuthStore(shared, make_encoder(b"k"))
    users.add_user("alice", "pw")
    users.add_user("bob", "pw")
    alice = SimpleAuthStore(shared, make_encoder(b"k"))
    alice.connect({"username": "alice", "password": "pw"})
    bob = SimpleAuthStore(shared, make_encoder(b"k"))
    bob.connect({"username": "bob", "password": "pw"})
    return shared, alice, bob


def test_auth_list_info_shows_an_exists_only_key_without_any_detail() -> None:
    raw, alice, bob = _auth_pair()
    alice.set("n/exists", (b"exists-only data", {"s": "not for bob"}))
    alice.set("n/read", (b"readable", {"r": 1}))
    alice.set("n/hidden", (b"hidden", {"h": 1}))
    alice.update_permissions("n/exists", {"exists": {"bob"}})
    alice.update_permissions("n/read", {"get": {"bob"}})
    raw.set("n/open", (b"written around the store", {"o": 1}))  # no permissions: everyone
    for metadata in (False, True):
        listed = dict(bob.list_info("n/", metadata=metadata))
        assert list(listed) == list(bob.list_keys("n/")) == ["n/exists", "n/open", "n/read"]
        assert listed["n/exists"] == KeyInfo(None, None, None, None, None)
        for key in ("n/open", "n/read"):
            value = bob.get(key)
            expected = KeyInfo(
                value.size,
                value.created,
                value.modified,
                value.version,
                value.metadata if metadata else None,
            )
            assert listed[key] == expected, key
    # The owner sees every detail, and no one sees the permissions entry.
    owned = dict(alice.list_info("n/", metadata=True))
    stored = raw.get("n/exists")
    assert owned["n/exists"].size == stored.size == len(b"exists-only data")
    assert owned["n/exists"].version == stored.version
    assert owned["n/exists"].metadata == {"s": "not for bob"}
    assert all(info.metadata == alice.get_metadata(key) for key, info in owned.items())
    with pytest.raises(InvalidArgumentError):
        bob.list_info("n/", metadata="yes")  # type: ignore[arg-type]


def test_transfer_out_of_a_user_view_stops_at_a_key_it_may_not_read() -> None:
    _, alice, bob = _auth_pair()
    alice.set("n/a", (b"a", {}))
    alice.set("n/b", (b"b", {}))
    alice.update_permissions("n/a", {"get": {"bob"}})
    alice.update_permissions("n/b", {"exists": {"bob"}})
    out = open_store("memory://")
    with pytest.raises(AuthorizationError, match="n/b"):
        transfer(bob, out, batch_keys=1)
    assert list(out.list_keys()) == ["n/a"]  # what came before stays copied
    assert transfer(bob, out, prefix="n/a").skipped == 1


# -- one storage opened twice --------------------------------------------------------------
def test_sqlite_storage_identity_across_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("sqlite:///t.db")
    first.set("k", (b"v", {"m": 1}))
    os.symlink(tmp_path / "t.db", tmp_path / "link.db")
    spellings = [
        "sqlite:///./t.db",
        f"sqlite:///{tmp_path}/t.db",
        "sqlite:///t.db?durable=false",
        "sqlite:///link.db",
    ]
    before = _rows(tmp_path / "t.db")
    for url in spellings:
        again = open_store(url)
        assert again.storage_identity() == first.storage_identity() is not None, url
        with pytest.raises(InvalidArgumentError, match="same storage"):
            transfer(first, again, delete=True)
        with pytest.raises(InvalidArgumentError):
            transfer(again, first, compare="always")
    assert _rows(tmp_path / "t.db") == before
    # Another table of the same database is other storage: copying there works.
    other = open_store("sqlite:///t.db?table=other")
    assert other.storage_identity() != first.storage_identity()
    assert transfer(first, other).copied == 1
    assert other.get_metadata("k") == {"m": 1}
    assert open_store("memory://").storage_identity() is None
    assert open_store("sqlite://").storage_identity() is None


def test_file_store_and_wrappers_refuse_their_own_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file:fs?create=true")
    store.set("k", (b"v", {}))
    version = store.get("k").version
    names = sorted(os.listdir(tmp_path / "fs"))
    again = open_store(f"file://{tmp_path}/fs")
    assert again.storage_identity() == store.storage_identity() is not None
    users = SimpleAuthStore(store, make_encoder(b"k"))  # type: ignore[arg-type]
    users.add_user("u", "pw")
    view = SimpleAuthStore(again, make_encoder(b"k"))  # type: ignore[arg-type]
    view.connect({"username": "u", "password": "pw"})
    cached = CachedStore(again, open_store("memory://"))
    cached.connect()
    for source, target in [
        (store, again),
        (view, store),
        (store, cached),
        (Folder(tmp_path / "fs"), again),  # the store's directory as plain files
        (again, Folder("./fs/.")),
    ]:
        with pytest.raises(InvalidArgumentError):
            transfer(source, target, delete=True)
    assert store.get("k").version == version
    assert sorted(os.listdir(tmp_path / "fs")) == names


def test_cli_sync_refuses_one_file_store_spelled_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file:fs?create=true")
    store.set("a", (b"hello", {"m": 1}))
    version = store.get("a").version
    for target in (f"file://{tmp_path}/fs", "file:./fs"):
        result = _run("sync", "file:fs", target, "--delete")
        assert result.exit_code == 2, (result.stdout, result.stderr)
        assert "same storage" in result.stderr
    assert open_store("file:fs").get("a").version == version


# -- quick compare with a source time in the future ---------------------------------------
def test_a_future_stamped_file_is_compared_by_checksum_not_recopied(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "img").write_bytes(b"one1")
    future = time.time() + 86400
    os.utime(tree / "img", (future, future))
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    assert transfer(Folder(tree), store).copied == 1
    version = store.get("img").version
    for _ in range(2):
        assert transfer(Folder(tree), store).actions == []
    assert store.get("img").version == version
    # A same-size change stamped in the future again is still found, by its data.
    (tree / "img").write_bytes(b"two2")
    os.utime(tree / "img", (future + 5, future + 5))
    report = transfer(Folder(tree), store)
    assert [(a.key, a.reason) for a in report.actions] == [("img", "checksum")]
    assert open_store(f"sqlite:///{tmp_path}/t.db").to_bytes("img") == b"two2"


# -- keys that became folders -------------------------------------------------------------
def test_deletes_in_the_way_run_first_and_the_rest_after_the_copies(tmp_path: Path) -> None:
    store = open_store("memory://")
    for key in ["a", "m/x", "m/y/z", "q"]:
        store.set(key, (key.encode(), {}))
    out = tmp_path / "out"
    transfer(store, Folder(out), delete=True)
    for key in ["a", "m/x", "m/y/z", "q"]:
        store.delete(key)
    for key in ["a/b", "m", "r"]:
        store.set(key, (b"new " + key.encode(), {}))
    planned = transfer(store, Folder(out), delete=True, dry_run=True)
    report = transfer(store, Folder(out), delete=True)
    steps = [(a.action, a.key) for a in report.actions]
    assert steps == [(a.action, a.key) for a in planned.actions]
    assert steps == [
        ("delete", "a"),
        ("delete", "m/x"),
        ("delete", "m/y/z"),
        ("copy", "a/b"),
        ("copy", "m"),
        ("copy", "r"),
        ("delete", "q"),
    ]
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == {key: b"new " + key.encode() for key in ["a/b", "m", "r"]}
    assert transfer(store, Folder(out), delete=True).actions == []


def test_cli_sync_delete_mirrors_a_key_that_became_a_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    store.set("a", (b"file", {}))
    out = str(tmp_path / "out")
    assert _run("sync", url, out, "--delete").exit_code == 0
    store.delete("a")
    store.set("a/b", (b"inside", {}))
    result = _run("sync", url, out, "--delete")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "a" / "b").read_bytes() == b"inside"
    assert "copied 0 keys" in _run("sync", url, out, "--delete").stderr


# -- folder file names that cannot be keys ----------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "ok").write_bytes(b"ok")
    bad = os.path.join(os.fsencode(tree), b"sub", b"bad\xff.txt")
    with open(bad, "wb") as file:
        file.write(b"x")
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert transfer(Folder(tree), store).copied == 1
    assert [str(w.message) for w in caught] == [
        f"skipped {bad!r}: its name is not UTF-8, so it cannot be a key (rename it to copy it)"
    ]
    assert list(open_store(f"sqlite:///{tmp_path}/t.db").list_keys()) == ["ok"]
    # As a target, a sync with --delete leaves the file alone (it is no key of either side).
    result = _run("sync", f"sqlite:///{tmp_path}/t.db", str(tree), "--delete")
    assert result.exit_code == 0, result.stderr
    assert "bad\\xff.txt" in result.stderr and "not UTF-8" in result.stderr
    assert os.path.exists(bad)
