"""Session checkpoint storage: the seed's API, the original's bugs fixed, fault injection."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from storekeeper import files, sessions
from storekeeper.errors import CorruptFileError, LockedStorageError
from storekeeper.sessions import (
    ENVIRONMENT_VARIABLE,
    SessionStorage,
    SessionStorageRepository,
)


@pytest.fixture
def storage(tmp_path: Path) -> SessionStorage:
    return SessionStorage.create(tmp_path / "repo")


# -- repository ----------------------------------------------------------------------------
def test_default_location_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "relative/sessions")
    location = SessionStorageRepository.get_default_location()
    assert location == str(tmp_path / "relative" / "sessions")
    assert os.path.isdir(location)
    assert SessionStorageRepository().location == location


def test_default_location_is_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    location = SessionStorageRepository.get_default_location()
    assert location == str(tmp_path / "cache" / "storekeeper" / "sessions")
    assert os.path.isdir(location)
    monkeypatch.setenv("XDG_CACHE_HOME", "not/absolute")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    location = SessionStorageRepository.get_default_location()
    assert location == str(tmp_path / "home" / ".cache" / "storekeeper" / "sessions")


def test_default_location_that_is_a_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match="not a directory"):
        SessionStorageRepository.get_default_location()


def test_storage_list_is_most_recently_used_first(tmp_path: Path) -> None:
    repository = SessionStorageRepository(tmp_path / "repo")
    assert repository.get_storage_list() == []
    first = SessionStorage.create(repository.location)
    second = SessionStorage.create(repository.location)
    (tmp_path / "repo" / ".hidden.session").mkdir()
    (tmp_path / "repo" / "not-a-session").mkdir()
    (tmp_path / "repo" / "file.session").write_text("x")
    (tmp_path / "repo" / "link.session").symlink_to(first.location)
    os.utime(first.location, (time.time() - 100, time.time() - 100))
    os.utime(second.location, (time.time() - 50, time.time() - 50))
    first.save_checkpoint(b"used now")
    assert [s.location for s in repository.get_storage_list()] == [
        first.location,
        second.location,
    ]
    assert [s.location for s in repository] == [first.location, second.location]
    assert "repo" in repr(repository)


def test_missing_repository_lists_nothing(tmp_path: Path) -> None:
    assert SessionStorageRepository(tmp_path / "absent").get_storage_list() == []


# -- storage -------------------------------------------------------------------------------
def test_create_names_and_properties(tmp_path: Path) -> None:
    storage = SessionStorage.create(tmp_path / "new" / "base", prefix="my app/")
    name = os.path.basename(storage.location)
    assert name.startswith("my_app_") and name.endswith(".session")
    assert os.path.isdir(storage.location)
    assert storage.id == name[: -len(".session")]
    assert storage.session_file == os.path.join(storage.location, "session")
    assert repr(storage) == f"<SessionStorage location:{storage.location!r}>"


def test_concurrent_creators_get_distinct_directories(tmp_path: Path) -> None:
    created: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        for _ in range(5):
            created.append(SessionStorage.create(tmp_path).location)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(created)) == 40
    assert any("_(1)" in location for location in created)


def test_checkpoint_round_trip_and_empty_start(storage: SessionStorage) -> None:
    assert storage.load_checkpoint() == b""
    storage.save_checkpoint(b"first")
    assert storage.load_checkpoint() == b"first"
    storage.save_checkpoint(b"")
    assert storage.load_checkpoint() == b""
    big = os.urandom(3 << 20)
    storage.save_checkpoint(big)
    assert storage.load_checkpoint() == big
    assert sorted(os.listdir(storage.location)) == ["session", "session.lock", "session.prev"]


@pytest.mark.parametrize("data", ["text", bytearray(b"x"), None, 1])
def test_save_takes_only_bytes(storage: SessionStorage, data: Any) -> None:
    with pytest.raises(TypeError, match="bytes"):
        storage.save_checkpoint(data)


def test_load_of_a_missing_session_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SessionStorage(tmp_path / "nope.session").load_checkpoint()


def test_torn_checkpoint_falls_back_to_the_previous_one(
    storage: SessionStorage, caplog: pytest.LogCaptureFixture
) -> None:
    storage.save_checkpoint(b"good old")
    storage.save_checkpoint(b"newer and longer")
    raw = Path(storage.session_file).read_bytes()
    Path(storage.session_file).write_bytes(raw[:-7])
    with caplog.at_level(logging.WARNING, logger="storekeeper.sessions"):
        assert storage.load_checkpoint() == b"good old"
    assert "torn" in caplog.text and "previous checkpoint" in caplog.text


def test_flipped_bit_is_detected(storage: SessionStorage, caplog: pytest.LogCaptureFixture) -> None:
    storage.save_checkpoint(b"one")
    storage.save_checkpoint(b"two")
    raw = bytearray(Path(storage.session_file).read_bytes())
    raw[17] ^= 0x01
    Path(storage.session_file).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="storekeeper.sessions"):
        assert storage.load_checkpoint() == b"one"
    assert "checksum" in caplog.text


def test_no_good_checkpoint_is_an_error_naming_the_file(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"only")
    Path(storage.session_file).write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="session"):
        storage.load_checkpoint()


def test_interrupted_save_between_renames_keeps_the_last_checkpoint(
    storage: SessionStorage,
) -> None:
    storage.save_checkpoint(b"acknowledged")
    os.replace(storage.session_file, os.path.join(storage.location, "session.prev"))
    assert storage.load_checkpoint() == b"acknowledged"


def test_failed_write_raises_the_real_error_and_keeps_the_old(
    storage: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.save_checkpoint(b"old")

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write", full)
    with pytest.raises(OSError, match="No space") as caught:
        storage.save_checkpoint(b"new")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert storage.load_checkpoint() == b"old"
    assert "session.next" not in os.listdir(storage.location)


@pytest.mark.parametrize("size", [10, 2 << 20])
def test_failed_fsync_raises_and_keeps_the_old(
    storage: SessionStorage, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    storage.save_checkpoint(b"old")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "_fsync", failing)
    with pytest.raises(OSError, match="I/O error"):
        storage.save_checkpoint(b"n" * size)
    monkeypatch.undo()
    assert storage.load_checkpoint() == b"old"


@pytest.mark.parametrize("writeback_hint", [True, False])
@pytest.mark.parametrize("size", [10, 2 << 20])
def test_the_last_fsync_covers_the_whole_checkpoint(
    storage: SessionStorage, monkeypatch: pytest.MonkeyPatch, size: int, writeback_hint: bool
) -> None:
    """Every byte of the checkpoint file, checksum included, is written before its last
    fsync, with or without the platform's write-back hint."""
    if not writeback_hint:
        monkeypatch.setattr(sessions, "_start_writeback", None)
    synced_sizes: list[int] = []
    real_fsync = files.fsync

    def recording(fd: int) -> None:
        synced_sizes.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(files, "fsync", recording)
    data = os.urandom(size)
    storage.save_checkpoint(data)
    monkeypatch.undo()
    assert synced_sizes[-1] == os.path.getsize(storage.session_file)
    assert storage.load_checkpoint() == data


def test_failed_rename_raises_and_keeps_the_old(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"older")
    storage.save_checkpoint(b"old")
    prev = Path(storage.location, "session.prev")
    prev.unlink()
    prev.mkdir()
    (prev / "blocker").write_text("x")  # replacing a non-empty directory fails
    with pytest.raises(OSError):
        storage.save_checkpoint(b"new")
    assert storage.load_checkpoint() == b"old"


def test_missing_session_directory_on_save(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SessionStorage(tmp_path / "gone.session").save_checkpoint(b"x")


def test_read_only_filesystem(
    storage: SessionStorage, read_only_filesystem: Callable[[], AbstractContextManager[None]]
) -> None:
    storage.save_checkpoint(b"old")
    with read_only_filesystem(), pytest.raises(OSError, match="Read-only") as caught:
        storage.save_checkpoint(b"new")
    assert caught.value.errno == errno.EROFS
    assert storage.load_checkpoint() == b"old"


def test_next_file_of_a_dead_writer_is_discarded(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"old")
    Path(storage.location, "session.next").write_bytes(b"half a checkpoint")
    storage.save_checkpoint(b"new")
    assert storage.load_checkpoint() == b"new"
    assert "session.next" not in os.listdir(storage.location)


def _hold_lock(location: str, held: Any, release: Any) -> None:
    with files.FileLock(os.path.join(location, "session.lock")):
        Path(location, "session.next").write_bytes(b"in progress")
        held.set()
        release.wait(30)


def test_a_live_writer_locks_the_storage(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"old")
    context = multiprocessing.get_context("forkserver")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(storage.location, held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(LockedStorageError) as caught:
            storage.save_checkpoint(b"new")
        assert caught.value.errno == errno.EEXIST
        assert caught.value.filename == os.path.join(storage.location, "session.next")
        assert isinstance(caught.value, OSError)
    finally:
        release.set()
        holder.join(30)
    storage.save_checkpoint(b"new")  # the holder is gone: its next file is stale
    assert storage.load_checkpoint() == b"new"


def test_a_killed_writer_never_blocks(storage: SessionStorage) -> None:
    context = multiprocessing.get_context("forkserver")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(storage.location, held, release))
    holder.start()
    assert held.wait(30)
    holder.kill()
    holder.join(30)
    storage.save_checkpoint(b"after the crash")
    assert storage.load_checkpoint() == b"after the crash"


def test_break_lock(storage: SessionStorage) -> None:
    storage.break_lock()  # nothing to break: no error
    Path(storage.location, "session.next").write_bytes(b"x")
    storage.break_lock()
    assert "session.next" not in os.listdir(storage.location)


def test_threads_saving_at_once_lock_each_other_out(storage: SessionStorage) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def save(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            try:
                storage.save_checkpoint(str(n).encode() * 1000)
                outcomes.append("saved")
            except LockedStorageError:
                outcomes.append("locked")

    threads = [threading.Thread(target=save, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("saved") >= 1
    data = storage.load_checkpoint()
    assert len(data) == 1000 and len(set(data)) == 1


def test_remove(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"x")
    storage.remove()
    assert not os.path.exists(storage.location)
    storage.remove()  # already gone: no error


def _save_in_child(storage: SessionStorage, result: Any) -> None:
    try:
        storage.save_checkpoint(b"child")
        result.put("saved")
    except LockedStorageError:
        result.put("locked")


def test_a_forked_child_does_not_share_the_parents_lock(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"parent")  # the parent now has the lock file open
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    storage._lock()  # the parent is in the middle of a save
    try:
        child = context.Process(target=_save_in_child, args=(storage, result))
        child.start()
        assert result.get(timeout=30) == "locked"
        child.join(30)
    finally:
        storage._unlock()
    assert storage.load_checkpoint() == b"parent"
