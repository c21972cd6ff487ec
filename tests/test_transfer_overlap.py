"""transfer refuses a Folder that overlaps a store's own files (storage_paths), and
SQLite table names that SQLite matches as one table give one storage_identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storekeeper import open_store
from storekeeper.composite import SimpleAuthStore, make_encoder
from storekeeper.errors import InvalidArgumentError
from storekeeper.store import AbstractStore
from storekeeper.store.transfer import Folder, transfer


def _digest(root: Path) -> dict[str, str]:
    """Every file under *root* and its SHA-256 (a second path: the raw files)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _refused_untouched(store: AbstractStore, folder: Path, root: Path) -> None:
    before = _digest(root)
    for source, target in ((store, Folder(folder)), (Folder(folder), store)):
        with pytest.raises(InvalidArgumentError, match="overlap"):
            transfer(source, target, "", delete=True)
    assert _digest(root) == before


def test_folders_inside_or_holding_a_directory_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/fs?create=true")
    store.set("a", (b"precious", {"m": 1}))
    store.set("keys", (b"k", {}))
    for folder in (tmp_path / "fs" / "keys", tmp_path / "fs" / "new", tmp_path):
        _refused_untouched(store, folder, tmp_path)
    fresh = open_store(f"file://{tmp_path}/fs")
    assert fresh.to_bytes("a") == b"precious"
    assert sorted(fresh.list_keys()) == ["a", "keys"]


def test_folders_holding_a_database_or_its_side_files(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path}/db/a.db?inline_limit=4"
    store = open_store(url)
    store.set("a.db", (b"would overwrite the database", {}))
    store.set("big", (b"b" * 100, {}))  # over inline_limit: a value file
    assert (tmp_path / "db" / "a.db-values").is_dir()
    for folder in (tmp_path / "db", tmp_path, tmp_path / "db" / "a.db-values"):
        _refused_untouched(store, folder, tmp_path)
    wrapped = SimpleAuthStore(store, make_encoder(b"s", n=2))
    assert set(store.storage_paths()) <= set(wrapped.storage_paths())
    store.disconnect()
    fresh = open_store(url)
    assert fresh.to_bytes("big") == b"b" * 100
    assert sorted(fresh.list_keys()) == ["a.db", "big"]


def test_unrelated_folders_and_shared_databases_still_copy(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    one = open_store(f"sqlite:///{tmp_path}/db/a.db?table=one")
    two = open_store(f"sqlite:///{tmp_path}/db/a.db?table=two")  # same file, other table
    one.set("k", (b"1", {}))
    assert transfer(one, two, "").copied == 1
    # A sibling whose name starts like the database's is not inside it.
    assert transfer(one, Folder(tmp_path / "db" / "a.db-valuesx"), "").copied == 1
    assert transfer(one, Folder(tmp_path / "out"), "").copied == 1
    assert (tmp_path / "out" / "k").read_bytes() == b"1"


def test_sqlite_table_identity_folds_ascii_case_only(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    upper, lower = (
        open_store(f"sqlite:///{db}?table=Things"),
        open_store(f"sqlite:///{db}?table=things"),
    )
    upper.set("k", (b"1", {}))
    assert lower.to_bytes("k") == b"1"  # SQLite's rule: one table
    assert upper.storage_identity() == lower.storage_identity()
    with pytest.raises(InvalidArgumentError, match="same storage"):
        transfer(lower, upper, "")
    # SQLite folds ASCII letters only: 'É' and 'é' are two tables, two identities.
    accent_upper = open_store(f"sqlite:///{db}?table=%C3%89t")
    accent_lower = open_store(f"sqlite:///{db}?table=%C3%A9t")
    accent_upper.set("x", (b"2", {}))
    assert not accent_lower.exists("x")
    assert accent_upper.storage_identity() != accent_lower.storage_identity()
    assert transfer(accent_upper, accent_lower, "").copied == 1
