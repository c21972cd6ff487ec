"""FileSystemStore when its disk fails or its files are damaged from outside.

A full disk (ENOSPC, or EFBIG from a file size limit) is a BackendError with the stored
data intact, for single writes, batches and transactions; a missing or truncated data
file is a CorruptFileError naming the key, never short data; damaged records are left
out of every listing alike.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import FileSystemStore, init_shared_store
from storekeeper import files as storekeeper_files
from storekeeper.errors import BackendError, CorruptFileError

BIG = 200_000  # over the inline limit: the value gets a data file


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileSystemStore]:
    init_shared_store(tmp_path / "fs")
    with FileSystemStore(tmp_path / "fs", inline_limit=64, durable=False) as opened:
        opened.set("keep", (b"k" * 1000, {"m": 1}))
        opened.set("small", (b"s", {"m": 2}))
        yield opened


def _intact(path: Path) -> None:
    """What the fixture wrote, read back through a second store object."""
    with FileSystemStore(path, durable=False) as again:
        assert again.to_bytes("keep") == b"k" * 1000 and again.get_metadata("keep") == {"m": 1}
        assert again.to_bytes("small") == b"s" and again.get_metadata("small") == {"m": 2}
        assert sorted(again.query_keys()) == ["keep", "small"]
    leftovers = [p.name for p in (path / "keys").iterdir() if p.name not in ("keep", "small")]
    assert leftovers == []


def _writes(store: FileSystemStore) -> dict[str, Callable[[], object]]:
    def transaction() -> None:
        with store.transaction():
            store.set("keep", (b"x" * BIG, {}))
            store.set("small", (b"y", {}))
            store.delete("small")

    def small_transaction() -> None:  # fails at its commit, writing the journal
        with store.transaction():
            store.set("keep", (b"x", {}))
            store.set("small", (b"y", {}))

    return {
        "set": lambda: store.set("keep", (b"x" * BIG, {})),
        "set small": lambda: store.set("keep", (b"x", {})),
        "set_data": lambda: store.set_data("keep", b"x" * BIG),
        "set_metadata": lambda: store.set_metadata("keep", {"n": 1}),
        "update_metadata": lambda: store.update_metadata("small", {"n": 1}),
        "multiset": lambda: store.multiset(["keep", "new"], [(b"x", {}), (b"y" * BIG, {})]),
        "transaction": transaction,
        "small transaction": small_transaction,
    }


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_full_disk_is_a_backend_error_and_changes_nothing(
    store: FileSystemStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int
) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(code, os.strerror(code))

    for name, write in _writes(store).items():
        with monkeypatch.context() as patch:
            patch.setattr(storekeeper_files, "_write", full)
            patch.setattr(os, "write", full)  # the journal's staged files, the lock file
            with pytest.raises(BackendError, match="no room") as caught:
                write()
        assert isinstance(caught.value.__cause__, OSError), name
        _intact(tmp_path / "fs")
    store.set("keep", (b"written once there is room", {}))
    assert store.to_bytes("keep") == b"written once there is room"


def _size_limited_child(path: str, queue: Any) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = FileSystemStore(path, inline_limit=64, durable=False)
    store.connect()
    outcomes = []
    for write in _writes(store).values():
        try:
            write()
            outcomes.append("no error")
        except BackendError:
            outcomes.append("BackendError")
        except OSError as exc:
            outcomes.append(f"raw {exc!r}")
    queue.put(outcomes)


def test_a_file_size_limit_in_another_process_is_a_backend_error(
    store: FileSystemStore, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_size_limited_child, args=(str(tmp_path / "fs"), queue))
    child.start()
    outcomes = queue.get(timeout=60)
    child.join(30)
    # Writes of a large value hit the limit; the small ones have room and succeed.
    big = [outcomes[i] for i in (0, 2, 5, 6)]
    assert big == ["BackendError"] * 4, outcomes
    assert not any(outcome.startswith("raw") for outcome in outcomes), outcomes


def test_a_source_oserror_is_not_translated(store: FileSystemStore, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"z" * BIG
        raise OSError(errno.EIO, "the caller's network drive failed")

    with pytest.raises(OSError, match="network drive") as caught:
        store.set("keep", (chunks(), {}))
    assert not isinstance(caught.value, BackendError)
    _intact(tmp_path / "fs")


def _data_file(path: Path) -> Path:
    (found,) = (path / "fs" / "data").glob("big.*")
    return found


def test_a_deleted_data_file_is_a_corrupt_file_error_at_once(
    store: FileSystemStore, tmp_path: Path
) -> None:
    store.set("big", (b"z" * BIG, {}))
    _data_file(tmp_path).unlink()
    for read in (store.get, store.to_bytes, store.get_data):
        with pytest.raises(CorruptFileError, match="'big' is missing"):
            read("big")
    store.set("big", (b"replaced", {}))  # a write replaces the damaged value
    assert store.to_bytes("big") == b"replaced"


def test_a_truncated_data_file_is_never_read_as_short_data(
    store: FileSystemStore, tmp_path: Path
) -> None:
    store.set("big", (b"z" * BIG, {}))
    stream = store.get_data("big")  # opened before the damage
    assert stream.read(10) == b"z" * 10
    os.truncate(_data_file(tmp_path), 1000)
    for read in (store.get, store.to_bytes):
        with pytest.raises(CorruptFileError, match=r"key 'big'.*1000 bytes where 200000"):
            read("big")
    with pytest.raises(CorruptFileError, match="key 'big'"):
        stream.read()
    stream.close()


def test_listings_leave_out_every_damaged_record_alike(
    store: FileSystemStore, tmp_path: Path
) -> None:
    long_key = "long" * 100  # stored under a hashed file name
    store.set(long_key, (b"", {}))
    for name in os.listdir(tmp_path / "fs" / "keys"):
        if name not in ("keep", "small"):
            record = tmp_path / "fs" / "keys" / name
            record.write_bytes(record.read_bytes()[:-3])
    (tmp_path / "fs" / "keys" / "a-directory").mkdir()
    expected = ["keep", "small"]
    assert sorted(store.query_keys()) == expected
    assert sorted(k for k, _ in store.query()) == expected
    assert sorted(store.glob("*")) == expected
    assert sorted(store.query_keys(m=store.get_metadata("keep")["m"])) == ["keep"]
    # info() names a damaged record under a hashed name by its file name (documented).
    assert len(store.info()["damaged_keys"]) == 2
    assert "a-directory" in store.info()["damaged_keys"]
