"""atomic_write and FileLock: atomicity, permissions, failures, dead holders."""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from storekeeper import files
from storekeeper.errors import InvalidValueError, LockTimeoutError


def test_atomic_write_sources(tmp_path: Path) -> None:
    target = tmp_path / "f"
    files.atomic_write(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    files.atomic_write(target, [b"a", b"b", b""])
    assert target.read_bytes() == b"ab"
    files.atomic_write(target, io.BytesIO(b"x" * 3_000_000), durable=False)
    assert target.read_bytes() == b"x" * 3_000_000
    with pytest.raises(InvalidValueError):
        files.atomic_write(target, "text")
    assert target.read_bytes() == b"x" * 3_000_000
    assert os.listdir(tmp_path) == ["f"]


def test_existing_permissions_kept_new_files_follow_umask(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o640)
    files.atomic_write(target, b"new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "fresh", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o644
    files.atomic_write(tmp_path / "explicit", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "explicit").stat().st_mode) == 0o600


def test_failing_source_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def chunks():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise OSError("source failed")

    with pytest.raises(OSError, match="source failed"):
        files.atomic_write(target, chunks())
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("seam", ["_write", "_fsync"])
def test_full_disk_and_failing_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    import errno

    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, seam, fail)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write(target, b"new data")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_missing_parent_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.atomic_write(tmp_path / "no" / "such" / "f", b"x")


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(files, "_write", lambda fd, data: real(fd, bytes(data)[:3]))
    files.atomic_write(tmp_path / "f", b"0123456789")
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_lock_excludes_and_times_out(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with files.FileLock(path) as held:
        assert held.held
        other = files.FileLock(path, timeout=0.05)
        with pytest.raises(LockTimeoutError):
            other.acquire()
        owner = held.owner()
        assert owner is not None
        assert owner["pid"] == os.getpid()
        assert files.process_alive(owner["pid"], owner["start"])
    with files.FileLock(path, timeout=0.5):
        pass


def test_lock_misuse(tmp_path: Path) -> None:
    lock = files.FileLock(tmp_path / "lock")
    with pytest.raises(RuntimeError):
        lock.release()
    lock.acquire()
    with pytest.raises(RuntimeError):
        lock.acquire()
    lock.release()


def _hold_forever(path: str, ready: multiprocessing.synchronize.Event) -> None:
    lock = files.FileLock(path)
    lock.acquire()
    ready.set()
    time.sleep(60)


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    path = str(tmp_path / "lock")
    holder = context.Process(target=_hold_forever, args=(path, ready))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(LockTimeoutError):
        files.FileLock(path, timeout=0.05).acquire()
    owner = files.FileLock(path).owner()
    assert owner is not None
    assert owner["pid"] == holder.pid
    holder.kill()
    holder.join(10)
    assert not files.process_alive(owner["pid"], owner["start"])
    with files.FileLock(path, timeout=5):
        pass


def _try_lock(path: str, result: multiprocessing.queues.Queue[str]) -> None:
    try:
        files.FileLock(path, timeout=0).acquire()
        result.put("acquired")
    except LockTimeoutError:
        result.put("locked")


def _try_inherited(
    lock: files.FileLock,
    go: multiprocessing.synchronize.Event,
    result: multiprocessing.queues.Queue[str],
) -> None:
    go.wait(30)
    _try_lock_object(lock, result)


def _try_lock_object(lock: files.FileLock, result: multiprocessing.queues.Queue[str]) -> None:
    try:
        lock.acquire()
        result.put("acquired")
    except LockTimeoutError:
        result.put("locked")


def test_a_kept_open_lock_still_excludes(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    lock = files.FileLock(path, timeout=0, keep_open=True)
    other = files.FileLock(path, timeout=0)
    for _ in range(3):
        with lock:
            with pytest.raises(LockTimeoutError):
                other.acquire()
        with other:  # released, though its descriptor stays open
            with pytest.raises(LockTimeoutError):
                lock.acquire()
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    with lock:  # a forked child does not inherit the lock
        child = context.Process(target=_try_lock, args=(path, result))
        child.start()
        assert result.get(timeout=30) == "locked"
        child.join(30)
    # A child forked while the descriptor is kept open must not lock through it: it
    # shares the parent's lock, so the child would "acquire" what the parent holds.
    go = context.Event()
    child = context.Process(target=_try_inherited, args=(lock, go, result))
    child.start()
    with lock:
        go.set()
        assert result.get(timeout=30) == "locked"
    child.join(30)
    lock.close()
    with files.FileLock(path, timeout=0):
        pass
