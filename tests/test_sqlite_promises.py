"""SqliteStore promises checked from outside the store that wrote: fresh store objects,
the value directory, raw sqlite3 and other processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import BackendError, InvalidKeyError, LockTimeoutError

_LIMIT = 10  # inline_limit: values of more bytes go to value files (or chunk sets)


def _run(code: str, *args: object, timeout: float = 120) -> str:
    """Run *code* in a new Python process with *args* in ``sys.argv[1:]``; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _value_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


# -- value files belong to one table of one database -----------------------------------
def test_tables_sharing_a_database_keep_each_others_value_files(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    for table in ("one", "two", "../escape"):
        with SqliteStore(db, table=table, inline_limit=_LIMIT) as store:
            store.set("k", (table.encode() * 20, {}))
    values = tmp_path / "shared.db-values"
    files = _value_files(values)
    assert len(files) == 3
    for path in files:  # as if written long ago: old enough to be swept if unreferenced
        os.utime(path, (0, 0))
    for table in ("one", "two", "../escape"):
        with SqliteStore(db, table=table, inline_limit=_LIMIT):
            pass  # connecting sweeps this table's unreferenced files
    assert _value_files(values) == files
    for table in ("one", "two", "../escape"):
        with SqliteStore(db, table=table, inline_limit=_LIMIT) as store:
            assert store.to_bytes("k") == table.encode() * 20
    # SQLite folds the case of ASCII letters in table names: "ONE" is table "one".
    with SqliteStore(db, table="ONE", inline_limit=_LIMIT) as same:
        assert same.to_bytes("k") == b"one" * 20


def test_a_database_opened_through_another_path_finds_its_value_files(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    db = real / "x.db"
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with SqliteStore(db, inline_limit=_LIMIT) as store:
        store.set("a", (b"a" * 50, {}))
    with SqliteStore(link, inline_limit=_LIMIT) as store:
        assert store.to_bytes("a") == b"a" * 50
        store.set("b", (b"b" * 50, {}))
    with SqliteStore(tmp_path / "real" / ".." / "link.db", inline_limit=_LIMIT) as store:
        assert store.to_bytes("b") == b"b" * 50
    with SqliteStore(db, inline_limit=_LIMIT) as store:
        assert store.to_bytes("b") == b"b" * 50
    assert not (tmp_path / "link.db-values").exists()
    assert len(_value_files(real / "x.db-values")) == 2


# -- a value keeps the version it was read with ----------------------------------------
_OVERWRITE = """
import sys
from storekeeper.backends.sqlite import SqliteStore
with SqliteStore(sys.argv[1], inline_limit=10) as store:
    store.set("k", (b"n" * 50, {}))
    store.delete("k")
"""


def test_a_value_keeps_its_version_when_another_process_overwrites(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    with SqliteStore(db, inline_limit=_LIMIT) as store:
        store.set("k", (b"o" * 50, {}))
        value = store.get("k")
        _run(_OVERWRITE, db)
        assert not store.exists("k")
        with value.data as stream:
            assert stream.read() == b"o" * 50
        del value, stream
    assert _value_files(tmp_path / "v.db-values") == []


# -- a deleted database file --------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "deleted with its log", "replaced"])
def test_writes_to_a_database_file_deleted_while_open_raise(tmp_path: Path, how: str) -> None:
    db = tmp_path / "gone.db"
    store = SqliteStore(db, inline_limit=_LIMIT)
    store.connect()
    store.set("before", (b"1", {}))
    store.set("big", (b"b" * 50, {}))
    if how == "replaced":
        sqlite3.connect(tmp_path / "other.db").close()
        os.replace(tmp_path / "other.db", db)
    else:
        os.remove(db)
        if how == "deleted with its log":
            os.remove(f"{db}-wal")
            os.remove(f"{db}-shm")
    writes = [
        lambda: store.set("after", (b"2", {})),
        lambda: store.set("after", (b"2" * 50, {})),
        lambda: store.set_metadata("before", {"n": 1}),
        lambda: store.delete("before"),
        lambda: store.delete("big"),
        lambda: store.multiset(["m1", "m2"], [(b"1", {}), (b"2", {})]),
    ]
    for write in writes:
        with pytest.raises(BackendError, match="deleted or replaced"):
            write()
    with pytest.raises(BackendError, match="deleted or replaced"), store.transaction("t"):
        store.set("in transaction", (b"3", {}))
    store.disconnect()
    with SqliteStore(db, inline_limit=_LIMIT) as again:  # the file now at the path
        again.set("new", (b"n", {}))
    with SqliteStore(db, inline_limit=_LIMIT) as fresh:
        assert fresh.query_keys() == ["new"]


# -- a disk that fills up ------------------------------------------------------------------
_FILL_THE_DISK = """
import json, os, resource, signal, sys
from storekeeper.backends.sqlite import SqliteStore

path = sys.argv[1]
outcome = {}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
with SqliteStore(path, inline_limit=4096) as store:
    store.set("kept", (b"k", {}))
    store.checkpoint()
    largest = max(os.path.getsize(path + suffix) for suffix in ("", "-wal"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 64 * 1024, resource.RLIM_INFINITY))
    try:
        # Under SQLite's page cache size: every page reaches the disk at COMMIT.
        with store.transaction("fills the disk"):
            for n in range(200):
                store.set(f"k{n}", (os.urandom(2000), {}))
    except Exception as exc:
        outcome["commit"] = type(exc).__name__
    try:
        store.set("big", (os.urandom(200 * 1024), {}))
    except Exception as exc:
        outcome["value file"] = type(exc).__name__
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    outcome["after"] = sorted(store.query_keys())
print(json.dumps(outcome))
"""


def test_a_disk_filling_up_raises_backend_errors_and_keeps_old_data(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    outcome = json.loads(_run(_FILL_THE_DISK, db))
    assert outcome == {"commit": "BackendError", "value file": "BackendError", "after": ["kept"]}
    with SqliteStore(db) as fresh:
        assert fresh.query_keys() == ["kept"]
    assert _value_files(tmp_path / "full.db-values") == []


# -- keys SQLite cannot hold -----------------------------------------------------------------
@pytest.mark.parametrize("location", ["file", "memory"])
def test_keys_with_lone_surrogates_are_invalid_keys(tmp_path: Path, location: str) -> None:
    path = tmp_path / "s.db" if location == "file" else ":memory:"
    bad = "a\udc80"
    with SqliteStore(path, inline_limit=_LIMIT) as store:
        store.set("ok", (b"1", {}))
        calls = [
            lambda: store.get(bad),
            lambda: store.exists(bad),
            lambda: store.to_bytes(bad),
            lambda: store.get_metadata(bad),
            lambda: store.set(bad, (b"small", {})),
            lambda: store.set(bad, (b"large" * 20, {})),
            lambda: store.set_data(bad, b"x"),
            lambda: store.set_metadata(bad, {"a": 1}),
            lambda: store.update_metadata(bad, {"a": 1}),
            lambda: store.delete(bad),
            lambda: store.multiget(["ok", bad]),
            lambda: store.multiset(["ok", bad], [(b"2", {}), (b"3", {})]),
        ]
        for call in calls:
            with pytest.raises(InvalidKeyError):
                call()
        with pytest.raises(InvalidKeyError), store.transaction("t"):
            store.set(bad, (b"x", {}))
        with pytest.raises(InvalidKeyError):  # no key can hold a lone surrogate
            store.glob("a\udc80*")
        assert store.query_keys() == ["ok"]
        assert store.to_bytes("ok") == b"1"
    if location == "file":
        assert _value_files(tmp_path / "s.db-values") == []


# -- opening needs no write lock ---------------------------------------------------------------
_READ_ONE = """
import sys
from storekeeper.backends.sqlite import SqliteStore
with SqliteStore(sys.argv[1], timeout=2, index="static", index_columns=["kind"]) as store:
    print(store.to_bytes("k").decode(), store.query_keys(kind="x"))
"""


def test_a_second_process_opens_the_store_during_a_write_transaction(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    with SqliteStore(db, index="static", index_columns=["kind"]) as store:
        store.set("k", (b"committed", {"kind": "x"}))
        with store.transaction("held open while another process connects"):
            store.set("k", (b"uncommitted", {"kind": "y"}))
            assert _run(_READ_ONE, db) == "committed ['k']"
        assert _run(_READ_ONE, db) == "uncommitted []"


def test_a_lock_held_past_the_timeout_is_a_lock_timeout_error(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    with SqliteStore(db, timeout=0.05) as store:
        store.set("k", (b"old", {}))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another connection keeps the write lock
        try:
            with pytest.raises(LockTimeoutError, match="try again"):
                store.set("k", (b"new", {}))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.to_bytes("k") == b"old"
