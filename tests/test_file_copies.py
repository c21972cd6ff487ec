"""Large values written from regular files: copied inside the kernel, or read where it
refuses, the stored bytes are the file's from the source's position to its end.

Every promise is checked on the stores that copy a file's rest inside the kernel (a
SqliteStore on a file, durable or not, and a FileSystemStore), for sources the kernel
copies and for those it cannot (another file system, a pipe, a BytesIO, a wrapper that
changes what it reads), and for a kernel that refuses at the first block or midway.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storekeeper import FileSystemStore, files, init_shared_store
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import BackendError, CorruptFileError
from storekeeper.events import EventManager, ProgressStepEvent
from storekeeper.store import AbstractStore
from storekeeper.store.events import StoreProgressStepEvent
from storekeeper.store.transfer import Folder, transfer

SIZE = (5 << 20) + 12_345  # over both stores' inline limits, many kernel blocks
BLOCK = 256 << 10  # the kernel copy's block in these tests, so a copy takes many
MIDDLE = 1_000_003  # a source position in the middle of a block


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_COPY_BLOCK", BLOCK)


@pytest.fixture
def content() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def source(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "source.bin"
    path.write_bytes(content)
    return path


Opener = Callable[[Path, EventManager | None], AbstractStore]


def _sqlite(tmp_path: Path, events: EventManager | None) -> AbstractStore:
    return SqliteStore(tmp_path / "store.db", event_manager=events)


def _sqlite_fast(tmp_path: Path, events: EventManager | None) -> AbstractStore:
    return SqliteStore(tmp_path / "fast.db", durable=False, event_manager=events)


def _filesystem(tmp_path: Path, events: EventManager | None) -> AbstractStore:
    directory = tmp_path / "fs"
    if not directory.exists():
        init_shared_store(directory)
    return FileSystemStore(directory, event_manager=events)


OPENERS = {"sqlite": _sqlite, "sqlite durable=false": _sqlite_fast, "filesystem": _filesystem}
URLS = {
    _sqlite: "sqlite:///{}/store.db",
    _sqlite_fast: "sqlite:///{}/fast.db?durable=false",
    _filesystem: "file:///{}/fs",
}
#: Where each store keeps the files of large values, and whether it flushes them.
DATA = {_sqlite: ("store.db-values", True), _sqlite_fast: ("fast.db-values", False)}
DATA[_filesystem] = ("fs/data", True)


@pytest.fixture(params=list(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    return OPENERS[request.param]  # type: ignore[no-any-return]


@pytest.fixture
def store(opener: Opener, tmp_path: Path) -> Iterator[AbstractStore]:
    with opener(tmp_path, None) as opened:
        yield opened


def _stored(store: AbstractStore, key: str = "k") -> bytes:
    value = store.get(key)
    with value.data as stream:
        data = stream.read()
    assert value.size == len(data)
    return data


def _steady(steps: list[int]) -> None:
    """*steps* count up to the whole file, a step per read or copied block: no step
    skips more than the 1 MiB a store reads at once (the head of a value)."""
    assert steps[-1] == SIZE and len(set(steps)) == len(steps)
    gaps = [after - before for before, after in zip([0, *steps], steps, strict=False)]
    assert min(gaps) > 0 and max(gaps) <= 1 << 20, gaps


def _refusing(code: int, after: int = 0) -> Callable[..., int]:
    """A copy_file_range that copies *after* blocks, then fails with *code*."""
    real = os.copy_file_range
    calls = 0

    def copy(*args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > after:
            raise OSError(code, os.strerror(code))
        return real(*args)

    return copy


# -- the bytes stored, and where the source is left -------------------------------------------
@pytest.mark.parametrize("start", [0, MIDDLE])
@pytest.mark.parametrize("buffering", [0, -1], ids=["FileIO", "BufferedReader"])
def test_a_file_is_stored_from_its_position_to_its_end(
    store: AbstractStore, source: Path, content: bytes, start: int, buffering: int
) -> None:
    with open(source, "rb", buffering=buffering) as stream:
        stream.seek(start)
        version = store.set("k", (stream, {"m": 1}))
        assert stream.tell() == SIZE and stream.read() == b""
    assert _stored(store) == content[start:]
    assert store.get("k").version == version and store.get_metadata("k") == {"m": 1}


def test_a_buffered_reader_that_read_ahead_is_stored_from_what_it_returned(
    store: AbstractStore, source: Path, content: bytes
) -> None:
    with open(source, "rb") as stream:
        assert stream.read(100) == content[:100]
        assert stream.peek(1)  # its buffer holds bytes its descriptor is already past
        assert os.lseek(stream.fileno(), 0, os.SEEK_CUR) > 100
        store.set_data("k", stream)
        assert stream.tell() == SIZE
    assert _stored(store) == content[100:]


def test_a_read_write_file_is_stored_as_written(
    store: AbstractStore, tmp_path: Path, content: bytes
) -> None:
    with tempfile.TemporaryFile(dir=tmp_path) as stream:  # a BufferedRandom
        stream.write(content)
        stream.seek(10)
        stream.write(b"pending")  # in its buffer, not yet in the file: reading flushes it
        store.set("k", (stream, {}))
    assert _stored(store) == content[17:]


@pytest.mark.parametrize("size_over_limit", [1, 0, -1])
def test_a_file_one_byte_over_the_inline_limit_and_at_it(
    store: AbstractStore, tmp_path: Path, size_over_limit: int
) -> None:
    data = os.urandom(store.inline_limit + size_over_limit)  # type: ignore[attr-defined]
    (tmp_path / "edge").write_bytes(data)
    with open(tmp_path / "edge", "rb") as stream:
        store.set("k", (stream, {}))
    assert _stored(store) == data


def test_an_empty_file_and_a_file_read_to_its_end(store: AbstractStore, source: Path) -> None:
    (source.parent / "empty").write_bytes(b"")
    with open(source.parent / "empty", "rb") as stream:
        store.set("empty", (stream, {}))
    with open(source, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        store.set("end", (stream, {}))
    assert _stored(store, "empty") == b"" and _stored(store, "end") == b""


# -- stored values as sources ---------------------------------------------------------------
def test_a_value_is_copied_out_from_where_its_stream_is(
    store: AbstractStore, source: Path, content: bytes, tmp_path: Path
) -> None:
    with open(source, "rb") as stream:
        store.set("k", (stream, {}))
    value = store.get("k")
    with value.data as data:
        assert data.read(100) == content[:100]
        files.atomic_write(tmp_path / "out", data, durable=False)
        assert data.tell() == SIZE and data.read() == b""
    assert (tmp_path / "out").read_bytes() == content[100:]
    with value.range(MIDDLE, SIZE - 7) as part:  # a range ends before the file does
        files.atomic_write(tmp_path / "part", part, durable=False)
    assert (tmp_path / "part").read_bytes() == content[MIDDLE : SIZE - 7]


def test_a_value_is_copied_into_another_store(
    store: AbstractStore, source: Path, content: bytes, tmp_path: Path
) -> None:
    with open(source, "rb") as stream:
        store.set("k", (stream, {}))
    (tmp_path / "other").mkdir()
    for opener in OPENERS.values():
        with opener(tmp_path / "other", None) as other, store.get("k").range(MIDDLE) as part:
            other.set("k", (part, {}))
            assert _stored(other) == content[MIDDLE:]


def test_a_truncated_value_file_is_never_copied_short(
    opener: Opener, source: Path, tmp_path: Path
) -> None:
    with opener(tmp_path, None) as store, open(source, "rb") as stream:
        store.set("k", (stream, {}))
        value = store.get("k")
    directory = tmp_path / DATA[opener][0]
    (stored,) = (path for path in directory.rglob("*") if path.is_file())
    os.truncate(stored, SIZE // 2)
    with value.data as data, pytest.raises(CorruptFileError, match="truncated"):
        files.atomic_write(tmp_path / "out", data, durable=False)
    assert not (tmp_path / "out").exists()


# -- sources the kernel cannot copy ---------------------------------------------------------
def test_a_file_on_another_file_system(store: AbstractStore, content: bytes) -> None:
    # /dev/shm is a tmpfs: the kernel refuses to copy from it into another file system.
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as other:
        other.write(content)
        other.flush()
        with open(other.name, "rb") as stream:
            stream.seek(MIDDLE)
            store.set("k", (stream, {}))
            assert stream.tell() == SIZE
    assert _stored(store) == content[MIDDLE:]


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
@pytest.mark.parametrize("after", [0, 3], ids=["at once", "midway"])
def test_a_kernel_that_refuses_leaves_the_copy_to_reading(
    store: AbstractStore,
    source: Path,
    content: bytes,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    after: int,
) -> None:
    monkeypatch.setattr(files, "_copy_file_range", _refusing(code, after))
    with open(source, "rb") as stream:
        stream.seek(MIDDLE)
        store.set("k", (stream, {}))
        assert stream.tell() == SIZE
    assert _stored(store) == content[MIDDLE:]


def test_a_file_whose_copy_finds_nothing_is_still_read(
    store: AbstractStore, source: Path, content: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files that report no size (as in /proc) copy as empty: a final read finds the rest.
    monkeypatch.setattr(files, "_copy_file_range", lambda *args: 0)
    with open(source, "rb") as stream:
        store.set("k", (stream, {}))
    assert _stored(store) == content


def test_a_pipe(store: AbstractStore, content: bytes) -> None:
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as pipe:
            pipe.write(content)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(read_end, "rb") as stream:
        store.set("k", (stream, {}))
    feeder.join()
    assert _stored(store) == content


def test_streams_that_are_not_plain_files(
    store: AbstractStore, source: Path, content: bytes, tmp_path: Path
) -> None:
    store.set("bytesio", (io.BytesIO(content), {}))
    # A decompressing reader's fileno() is its compressed file's: what it reads is stored.
    with gzip.open(tmp_path / "c.gz", "wb", compresslevel=1) as packed:
        packed.write(content)
    with gzip.open(tmp_path / "c.gz", "rb") as unpacking:
        store.set("gzip", (unpacking, {}))

    class Upper(io.FileIO):  # a subclass may change what it reads
        def read(self, size: int = -1, /) -> bytes:
            return super().read(size).upper()

    with Upper(source, "rb") as upper:
        store.set("subclass", (upper, {}))
    assert _stored(store, "bytesio") == content
    assert _stored(store, "gzip") == content
    assert _stored(store, "subclass") == content.upper()


# -- what else a write promises ---------------------------------------------------------------
def test_progress_is_reported_for_the_copied_blocks(
    opener: Opener, tmp_path: Path, source: Path
) -> None:
    events = EventManager()
    steps: list[int] = []
    events.connect(StoreProgressStepEvent, lambda event: steps.append(event.step))
    with opener(tmp_path, events) as store, open(source, "rb") as stream:
        store.set("k", (stream, {}))
    _steady(steps)


def test_the_value_is_read_by_a_fresh_process(
    opener: Opener, tmp_path: Path, source: Path, content: bytes
) -> None:
    with opener(tmp_path, None) as store, open(source, "rb") as stream:
        store.set("k", (stream, {}))
    url = URLS[opener].format(tmp_path)
    code = (
        "import hashlib, sys\n"
        "from storekeeper.store import open_store\n"
        "with open_store(sys.argv[1]) as store:\n"
        "    print(hashlib.sha256(store.to_bytes('k')).hexdigest())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(content).hexdigest()


def test_a_durable_write_flushes_the_copy_before_the_record_naming_it(
    opener: Opener, tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[str] = []  # the files (not directories) flushed, in order
    real = files._fsync

    def recording(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    with opener(tmp_path, None) as store, open(source, "rb") as stream:
        monkeypatch.setattr(files, "_fsync", recording)
        store.set("k", (stream, {}))
    directory, durable = DATA[opener]
    data = [index for index, path in enumerate(flushed) if f"/{directory}/" in path]
    assert bool(data) is durable, flushed
    records = [index for index, path in enumerate(flushed) if "/fs/keys/" in path]
    assert all(data[0] < index for index in records), flushed  # data first, then record


def test_a_failing_fsync_fails_the_write_and_keeps_the_old_value(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "the disk failed")

    for opener in (_sqlite, _filesystem):
        with opener(tmp_path, None) as store:
            store.set("k", (b"old", {}))
            with monkeypatch.context() as patch, open(source, "rb") as stream:
                patch.setattr(files, "_fsync", failing)
                with pytest.raises(BackendError):
                    store.set("k", (stream, {}))
            assert _stored(store) == b"old"


def test_a_size_limit_is_a_backend_error_and_keeps_the_old_value(
    tmp_path: Path, source: Path
) -> None:
    code = (
        "import resource, signal, sys\n"
        "from storekeeper.backends.sqlite import SqliteStore\n"
        "from storekeeper.errors import BackendError\n"
        "with SqliteStore(sys.argv[1]) as store:\n"
        "    store.set('k', (b'old', {}))\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))\n"
        "    try:\n"
        "        store.set('k', (open(sys.argv[2], 'rb'), {}))\n"
        "    except BackendError as exc:\n"
        "        print(type(exc.__cause__).__name__)\n"
    )
    database = tmp_path / "limited.db"
    done = subprocess.run(
        [sys.executable, "-c", code, database, source],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OSError"
    with SqliteStore(database) as store:
        assert store.to_bytes("k") == b"old"
    assert [p for p in (tmp_path / "limited.db-values").rglob("*") if p.is_file()] == []


# -- transfers (storekeeper cp) ---------------------------------------------------------------
def test_a_transfer_counts_the_bytes_it_copies(
    store: AbstractStore, source: Path, content: bytes, tmp_path: Path
) -> None:
    events = EventManager()
    steps: list[int] = []
    events.connect(ProgressStepEvent, lambda event: steps.append(event.step))
    report = transfer(Folder(source.parent), store, event_manager=events)
    assert report.copied == 1 and report.bytes == SIZE
    assert _stored(store, "source.bin") == content
    _steady(steps)
    out = tmp_path / "out"
    transfer(store, Folder(out))
    transfer(Folder(out), Folder(tmp_path / "again"))  # a folder's file into a folder's
    assert (tmp_path / "again" / "source.bin").read_bytes() == content
