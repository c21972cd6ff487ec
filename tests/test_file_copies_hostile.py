"""Hostile probes of large values copied from files inside the kernel (copy_file_range).

Written against README, CHANGELOG and the docstrings only. The promise under attack: a
value over the store's inline limit written from a regular file (or a stored value's
stream) into a SqliteStore on a file or a FileSystemStore holds exactly the bytes that
reading the source from its position to its end would give, the source is left at its
end, a durable write is all-or-nothing across SIGKILL, a full disk is a clear error that
keeps the old value, progress counts every byte, and ``storekeeper cp`` round-trips.

Safety: a broken copy loop can write until the disk is full, so every test runs under a
file size limit (``RLIMIT_FSIZE``, inherited by the processes it starts, with SIGXFSZ
ignored so a write past it fails with EFBIG instead of killing) and writes well under
200 MiB in all, removed after it. Sources are mostly a few MiB; probes that need several
kernel copy blocks (16 MiB each) use one ~40 MiB file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from storekeeper import FileSystemStore, init_shared_store
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import CorruptFileError
from storekeeper.events import EventManager, ProgressStartEvent, ProgressStepEvent
from storekeeper.files import CountedFile, FileTail, atomic_write, copyable
from storekeeper.store import AbstractStore
from storekeeper.store.events import (
    StoreProgressEndEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
)
from storekeeper.store.transfer import Folder, transfer

LIMIT = 200 << 20  # the largest file any probe may write
INLINE = 4096  # a small inline limit, so a few MiB are many times over it
SIZE = (3 << 20) + 7  # most sources
BIG = 40 << 20  # sources that take several 16 MiB kernel copy blocks
SHM = Path("/dev/shm")


# -- safety and helpers -----------------------------------------------------------------------
@pytest.fixture(autouse=True)
def file_size_limit() -> Iterator[None]:
    """No file written by this process (or the processes it starts) passes LIMIT."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = LIMIT if hard == resource.RLIM_INFINITY else min(LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(autouse=True)
def emptied_after(tmp_path: Path) -> Iterator[None]:
    """pytest keeps the temp directories of the last runs, and this file's tests write
    some GiB in all: empty each test's directory after it, so runs never fill the disk."""
    yield
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextlib.contextmanager
def _size_limit_lifted() -> Iterator[None]:
    """Lift the file size limit to make a sparse file longer than it (no disk used)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def content() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def source(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(content)
    return path


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A private directory on tmpfs (another file system than tmp_path), removed after."""
    directory = SHM / f"storekeeper-cphost-{os.getpid()}-{random.getrandbits(32):08x}"
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


Opener = Callable[..., AbstractStore]


def _sqlite(root: Path, **options: Any) -> AbstractStore:
    options.setdefault("inline_limit", INLINE)
    return SqliteStore(root / "s.db", **options)


def _sqlite_fast(root: Path, **options: Any) -> AbstractStore:
    options.setdefault("inline_limit", INLINE)
    return SqliteStore(root / "fast.db", durable=False, **options)


def _filesystem(root: Path, **options: Any) -> AbstractStore:
    options.setdefault("inline_limit", INLINE)
    if not (root / "fs").exists():
        init_shared_store(root / "fs")
    return FileSystemStore(root / "fs", **options)


OPENERS: dict[str, Opener] = {
    "sqlite": _sqlite,
    "sqlite-fast": _sqlite_fast,
    "filesystem": _filesystem,
}
URLS = {
    _sqlite: "sqlite:///{}/s.db",
    _sqlite_fast: "sqlite:///{}/fast.db",
    _filesystem: "file://{}/fs",
}


@pytest.fixture(params=list(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    return OPENERS[request.param]


@pytest.fixture
def store(opener: Opener, tmp_path: Path) -> Iterator[AbstractStore]:
    with opener(tmp_path) as opened:
        yield opened


def _stored(store: AbstractStore, key: str = "k") -> bytes:
    """*key*'s data, checked against the size its record promises."""
    value = store.get(key)
    with value.data as stream:
        data = stream.read()
    assert value.size == len(data), (value.size, len(data))
    head = store.head(key)
    assert head is not None and head.size == len(data)
    return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FRESH = """
import hashlib, json, sys
from storekeeper.store import open_store
out = {}
with open_store(sys.argv[1]) as store:
    for key in sys.argv[2:]:
        head = store.head(key)
        data = store.to_bytes(key)
        out[key] = [head.size, len(data), hashlib.sha256(data).hexdigest()]
print(json.dumps(out))
"""


def _fresh(url: str, keys: list[str]) -> dict[str, list[Any]]:
    """What a new process reads for *keys*: [size in the record, bytes read, sha256]."""
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, url, *keys],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _check_fresh(opener: Opener, tmp_path: Path, expected: dict[str, bytes]) -> None:
    seen = _fresh(URLS[opener].format(tmp_path), list(expected))
    wrong = {
        key: (seen[key][:2], len(data))
        for key, data in expected.items()
        if seen[key] != [len(data), len(data), _digest(data)]
    }
    assert not wrong, wrong


def _temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*.tmp") if p.is_file()]


def _stepper(events: EventManager, at: int, action: Callable[[int], object]) -> list[int]:
    """Run *action(step)* once, from the *at*-th progress step of a store write: the
    kernel copy is then midway (a step follows each copied block)."""
    steps: list[int] = []

    def on_step(event: StoreProgressStepEvent) -> None:
        steps.append(event.step)
        if len(steps) == at:
            action(event.step)

    events.connect(StoreProgressStepEvent, on_step)
    return steps


# -- sources at odd positions, in odd states --------------------------------------------------
def _at(path: Path, position: int, buffering: int = -1) -> BinaryIO:
    stream = open(path, "rb", buffering=buffering)  # noqa: SIM115 - closed by the caller
    stream.seek(position)
    return stream  # type: ignore[return-value]


def _partly_read(path: Path) -> BinaryIO:
    stream = open(path, "rb")  # noqa: SIM115
    stream.read(7)
    stream.peek(100)  # the buffer now holds more than was returned
    stream.readline()
    stream.read1(5)
    return stream


def _readinto(path: Path) -> BinaryIO:
    stream = open(path, "rb")  # noqa: SIM115
    stream.readinto(bytearray(12_345))
    return stream


POSITIONS = [0, 1, 4095, 4096, 4097, 65_537, SIZE - INLINE - 1, SIZE - 1, SIZE, SIZE + 100, 1 << 40]


def test_files_at_odd_positions_and_partly_read(
    opener: Opener, tmp_path: Path, source: Path, content: bytes
) -> None:
    """Every position (block edges, the inline limit's edges, the end, past the end, past
    4 GiB) and every way of having read part of a buffered reader: the stored bytes are
    what read() would return, the source is left where read() leaves it (its end), and a
    new process reads the same bytes."""
    cases: dict[str, Callable[[], BinaryIO]] = {}
    for position in POSITIONS:
        cases[f"buffered@{position}"] = lambda p=position: _at(source, p)
        cases[f"fileio@{position}"] = lambda p=position: _at(source, p, buffering=0)
    cases["partly read"] = lambda: _partly_read(source)
    cases["readinto"] = lambda: _readinto(source)
    expected: dict[str, bytes] = {}
    with opener(tmp_path) as store:
        for key, make in cases.items():
            with make() as twin:
                want = twin.read()
                end = twin.tell()
            with make() as stream:
                store.set(key, (stream, {}))
                assert _stored(store, key) == want, key
                assert stream.tell() == end, key
                assert stream.read() == b"", key  # no stale read-ahead left behind
                stream.seek(0)
                assert stream.read() == content, key
            expected[key] = want
    _check_fresh(opener, tmp_path, expected)


def _rw_extended_unflushed(path: Path) -> BinaryIO:
    stream = open(path, "r+b")  # noqa: SIM115
    stream.seek(SIZE - 10)
    stream.write(b"Z" * 100)  # in the buffer: the file on disk is shorter than tell()
    return stream  # type: ignore[return-value]


def _rw_written_at_start(path: Path) -> BinaryIO:
    stream = open(path, "r+b")  # noqa: SIM115
    stream.write(b"W" * 100)
    return stream  # type: ignore[return-value]


def _rw_written_then_seek_back(path: Path) -> BinaryIO:
    stream = open(path, "r+b")  # noqa: SIM115
    stream.seek(5000)
    stream.write(b"S" * 3000)
    stream.seek(10)
    return stream  # type: ignore[return-value]


def _append_then_rewind(path: Path) -> BinaryIO:
    stream = open(path, "a+b")  # noqa: SIM115
    stream.write(b"T" * 50_000)  # unflushed O_APPEND write
    stream.seek(3)
    return stream  # type: ignore[return-value]


def _append_at_end(path: Path) -> BinaryIO:
    stream = open(path, "a+b")  # noqa: SIM115
    stream.seek(10)
    stream.write(b"T" * 50)
    return stream  # type: ignore[return-value]


def _os_append_fileio(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    stream = io.FileIO(fd, "r+b")
    stream.write(b"U" * 777)
    stream.seek(17)
    return stream  # type: ignore[return-value]


def _noatime_sync(path: Path) -> BinaryIO:
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0) | os.O_SYNC | os.O_NONBLOCK
    stream = io.FileIO(os.open(path, flags), "rb")
    stream.seek(33)
    return stream  # type: ignore[return-value]


READ_WRITE = {
    "r+b extended, unflushed": _rw_extended_unflushed,
    "r+b written at 0, unflushed": _rw_written_at_start,
    "r+b written, then seek back": _rw_written_then_seek_back,
    "a+b unflushed, rewound": _append_then_rewind,
    "a+b written at the end": _append_at_end,
    "FileIO O_APPEND rewound": _os_append_fileio,
    "O_NOATIME|O_SYNC|O_NONBLOCK": _noatime_sync,
}


@pytest.mark.parametrize("name", list(READ_WRITE))
def test_read_write_and_odd_flag_files_store_what_reading_gives(
    store: AbstractStore, tmp_path: Path, content: bytes, name: str
) -> None:
    """The oracle: the same operations on a twin file, then read()."""
    prepare = READ_WRITE[name]
    twin, path = tmp_path / "twin.bin", tmp_path / "rw.bin"
    twin.write_bytes(content)
    path.write_bytes(content)
    with prepare(twin) as stream:
        want = stream.read()
        end = stream.tell()
    with prepare(path) as stream:
        store.set("k", (stream, {}))
        assert stream.tell() == end
    assert _stored(store) == want
    assert path.read_bytes() == twin.read_bytes()  # the source itself is as it would be


def test_sparse_files_and_offsets_past_4_gib(store: AbstractStore, tmp_path: Path) -> None:
    """Holes read as zeros whatever the kernel does with them; a position inside a hole
    and positions that need 64 bits (the copy is 3 MiB: the file is sparse)."""
    far = tmp_path / "far.bin"
    with _size_limit_lifted(), open(far, "wb") as out:  # 4 GiB long, 3 MiB of blocks
        out.write(b"start")
        out.seek((4 << 30) + 3)  # data past 4 GiB
        out.write(b"far" * 1000)
        out.truncate((4 << 30) + (2 << 20))  # ends in a hole
    position = (4 << 30) - 1_000_001  # inside the hole before it
    with open(far, "rb") as twin:
        twin.seek(position)
        want = twin.read()
    assert len(want) == 1_000_001 + (2 << 20)
    with open(far, "rb") as stream:
        stream.seek(position)
        store.set("far", (stream, {}))
        assert stream.tell() == far.stat().st_size
    assert _stored(store, "far") == want

    holes = tmp_path / "holes.bin"  # 30 MiB, two bytes of data: several kernel blocks
    with open(holes, "wb") as out:
        out.seek(7 << 20)
        out.write(b"x")
        out.seek(20 << 20)
        out.write(b"y")
        out.truncate(30 << 20)
    with open(holes, "rb") as stream:
        stream.seek(3)
        store.set("holes", (stream, {}))
    assert _stored(store, "holes") == holes.read_bytes()[3:]


# -- sources that are not regular files -------------------------------------------------------
def _kernel_files() -> list[str]:
    candidates = [
        "/proc/version",
        "/proc/filesystems",
        "/proc/self/mounts",
        "/sys/devices/system/cpu/possible",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ]
    found = [path for path in candidates if os.access(path, os.R_OK)]
    assert found  # /proc/version is on every Linux
    return found


@pytest.mark.parametrize("skip", [0, 10], ids=["whole", "partly read"])
def test_proc_and_sys_files_that_report_no_size(opener: Opener, tmp_path: Path, skip: int) -> None:
    """/proc files say size 0 and /sys files 4096: the bytes read are what is stored."""
    with opener(tmp_path, inline_limit=8) as store:
        for path in _kernel_files():
            for buffering in (0, -1):
                with open(path, "rb") as twin:
                    twin.read(skip)
                    want = twin.read()
                with open(path, "rb", buffering=buffering) as stream:
                    stream.read(skip)
                    store.set("k", (stream, {}))
                    assert stream.read() == b""
                assert _stored(store) == want, (path, buffering)


def test_fifos_sockets_and_devices_are_read(
    store: AbstractStore, tmp_path: Path, content: bytes
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed_fifo() -> None:
        with open(fifo, "wb") as out:
            out.write(content)

    feeder = threading.Thread(target=feed_fifo)
    feeder.start()
    with open(fifo, "rb") as stream:
        stream.read(3)
        store.set("fifo", (stream, {}))
    feeder.join()
    assert _stored(store, "fifo") == content[3:]

    for name, wrap in [("makefile", "makefile"), ("FileIO", "fileio")]:
        left, right = socket.socketpair()

        def feed_socket(end: socket.socket = left) -> None:
            with end:
                end.sendall(content)

        feeder = threading.Thread(target=feed_socket)
        feeder.start()
        if wrap == "makefile":
            with right, right.makefile("rb") as reader:
                store.set(name, (reader, {}))
        else:
            with io.FileIO(right.detach(), "rb") as reader:
                store.set(name, (reader, {}))
        feeder.join()
        assert _stored(store, name) == content, name

    with open("/dev/null", "rb") as null:
        store.set("null", (null, {}))
    assert _stored(store, "null") == b""


@pytest.mark.parametrize("buffering", [0, -1], ids=["FileIO", "BufferedReader"])
def test_a_non_blocking_pipe_is_never_stored_cut_short(
    store: AbstractStore, content: bytes, buffering: int
) -> None:
    """A pipe (or socket, or stdin inherited non-blocking) read with O_NONBLOCK answers
    None while its writer is slow. Its end is when the writer closes it: the store must
    wait for that, or refuse the stream; never store the first bytes as the whole value
    (shown: 32 KiB stored of 3 MiB, the old value gone, no error)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, content[: 32 << 10])  # in the pipe already
    go = threading.Event()

    def write_the_rest() -> None:
        go.wait(timeout=0.5)  # a slow writer: the rest comes later
        with contextlib.suppress(BrokenPipeError), open(write_end, "wb") as out:
            out.write(content[32 << 10 :])

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    store.set("k", (b"old", {}))
    failure: Exception | None = None
    try:
        with open(read_end, "rb", buffering=buffering) as stream:
            try:
                store.set("k", (stream, {}))
            except Exception as exc:
                failure = exc
            go.set()
    finally:
        writer.join()
    stored = _stored(store)
    assert stored == content or (failure is not None and stored == b"old"), len(stored)


def test_wrapped_and_subclassed_files_store_what_they_read(
    store: AbstractStore, source: Path, content: bytes
) -> None:
    """A raw file whose subclass changes what it reads, buffered readers over buffered
    readers, counters over counters, the raw file under a buffered reader that read
    ahead, a stored value's raw stream: each stores exactly what its read() returns."""

    class Upper(io.FileIO):
        def readinto(self, buffer: Any) -> int | None:
            count = super().readinto(buffer)
            if count:
                buffer[:count] = bytes(buffer[:count]).upper()
            return count

        def readall(self) -> bytes:
            return super().readall().upper()

    class Mine(io.BufferedReader):
        pass

    store.set("v", (content, {}))
    with contextlib.ExitStack() as stack:

        def held(stream: Any) -> Any:  # closed with the stack, after the test
            stack.callback(stream.close)
            return stream

        def partly(stream: Any) -> Any:
            held(stream).read(10)
            return stream

        def rb() -> Any:
            return held(open(source, "rb"))

        def value() -> Any:
            return store.get("v").data

        def ignore(count: int) -> None:
            pass

        cases: dict[str, Callable[[], Any]] = {
            "buffered over a subclass": lambda: held(io.BufferedReader(Upper(source, "rb"))),
            "random over a subclass": lambda: held(io.BufferedRandom(Upper(source, "r+b"))),
            "counted over that": lambda: CountedFile(
                held(io.BufferedReader(Upper(source))), ignore
            ),
            "buffered subclass": lambda: held(Mine(io.FileIO(source, "rb"))),
            "buffered over a value stream": lambda: held(io.BufferedReader(partly(value()))),
            "buffered over a buffered file": lambda: held(io.BufferedReader(partly(rb()))),
            "counted over counted": lambda: CountedFile(CountedFile(partly(rb()), ignore), ignore),
            "counted over a value stream": lambda: CountedFile(partly(value()), ignore),
            "raw under a read-ahead": lambda: partly(rb()).raw,
            "raw of a value stream": lambda: partly(value()).raw,
            "raw of a range": lambda: partly(store.get("v").range(100, 200_000)).raw,
        }
        wrong = []
        for name, make in cases.items():
            want = make().read()
            store.set("k", (make(), {}))
            if _stored(store) != want:
                wrong.append(name)
    assert wrong == []


def _write_only(path: Path) -> Any:
    return io.FileIO(os.open(path, os.O_WRONLY), "wb")


def _path_only(path: Path) -> Any:
    return io.FileIO(os.open(path, os.O_PATH), "rb")  # claims "rb", cannot read


def _closed(path: Path) -> Any:
    stream = open(path, "rb")  # noqa: SIM115
    stream.close()
    return stream


def _direct(path: Path) -> Any:
    return io.FileIO(os.open(path, os.O_RDONLY | os.O_DIRECT), "rb")


def _text(path: Path) -> Any:
    return open(path, encoding="latin-1")


UNREADABLE = {
    "write-only": _write_only,
    "O_PATH": _path_only,
    "closed": _closed,
    "O_DIRECT": _direct,
    "text mode": _text,
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_a_source_that_cannot_be_read_keeps_the_old_value(
    store: AbstractStore, tmp_path: Path, source: Path, name: str
) -> None:
    """As reading it would, the write fails (a clear error, no traceback of a copy loop),
    and the key keeps its old value with no temp file left behind; a source that can be
    read after all (O_DIRECT may allow it) stores exactly its bytes."""
    store.set("k", (b"old" * 5000, {}))
    stream = UNREADABLE[name](source)
    try:
        try:
            with _twin_of(source, name) as twin:
                read = twin.read()
            want = read if isinstance(read, bytes) else None  # text is no value
        except (OSError, ValueError):
            want = None
        try:
            store.set("k", (stream, {}))
        except (OSError, ValueError, TypeError) as exc:
            failure = exc
        else:
            failure = None
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    if want is None:
        assert failure is not None and str(failure)
        assert _stored(store) == b"old" * 5000
    else:
        assert failure is None
        assert _stored(store) == want
    assert _temp_files(tmp_path) == []


@contextlib.contextmanager
def _twin_of(source: Path, name: str) -> Iterator[Any]:
    stream = UNREADABLE[name](source)
    try:
        yield stream
    finally:
        with contextlib.suppress(Exception):
            stream.close()


def test_copyable_is_false_for_what_cannot_be_copied(tmp_path: Path, source: Path) -> None:
    with _write_only(source) as write_only:
        assert not copyable(write_only)
    assert not copyable(_closed(source))
    with open("/dev/null", "rb") as null:
        assert not copyable(null)
    with open(source, "rb") as stream:
        assert copyable(stream)


# -- another file system ----------------------------------------------------------------------
def test_tmpfs_sources_into_disk_stores_and_disk_sources_into_tmpfs_stores(
    opener: Opener, tmp_path: Path, source: Path, content: bytes, shm_dir: Path
) -> None:
    on_shm = shm_dir / "source.bin"
    on_shm.write_bytes(content)
    with opener(tmp_path) as store:
        with open(on_shm, "rb") as stream:
            stream.seek(33)
            store.set("from-shm", (stream, {}))
            assert stream.tell() == SIZE
        assert _stored(store, "from-shm") == content[33:]
        memfd = os.memfd_create("storekeeper-probe")
        with io.FileIO(memfd, "r+b") as anonymous:
            anonymous.write(content)
            anonymous.seek(4097)
            store.set("memfd", (anonymous, {}))
        assert _stored(store, "memfd") == content[4097:]
    with opener(shm_dir) as store:
        with open(source, "rb") as stream:
            stream.seek(4097)
            store.set("from-disk", (stream, {}))
        with open(on_shm, "rb") as stream:
            stream.seek(4097)
            store.set("within-shm", (stream, {}))
        assert _stored(store, "from-disk") == content[4097:]
        assert _stored(store, "within-shm") == content[4097:]
    _check_fresh(opener, shm_dir, {"from-disk": content[4097:], "within-shm": content[4097:]})


# -- the source changes while it is copied ----------------------------------------------------
START = 777


CHANGES = ["append", "truncate behind", "truncate ahead", "rename over", "overwrite ahead"]


@pytest.mark.parametrize("change", CHANGES)
def test_a_source_changed_during_the_copy(opener: Opener, tmp_path: Path, change: str) -> None:
    """From the second progress step (midway through the kernel copy), another writer
    appends, truncates, replaces or overwrites the source. The stored value is what a
    reader would have got: the bytes taken before the change, then the file as it is
    after it, up to its (new) end; the record's size matches; a new process agrees."""
    content = os.urandom(BIG)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    extra = os.urandom(5 << 20)
    cut = 10 << 20
    events = EventManager()
    taken: list[int] = []

    def act(step: int) -> None:
        taken.append(step)  # bytes of the source consumed when the change happened
        if change == "append":
            with open(path, "ab") as out:
                out.write(extra)
        elif change == "truncate behind":
            os.truncate(path, cut)
        elif change == "truncate ahead":
            os.truncate(path, BIG - (3 << 20))
        elif change == "rename over":
            (tmp_path / "new.bin").write_bytes(b"N" * (BIG + 5))
            os.rename(tmp_path / "new.bin", path)
        else:
            with open(path, "r+b") as out:
                out.write(b"O" * BIG)

    _stepper(events, 2, act)
    with opener(tmp_path, event_manager=events) as store, open(path, "rb") as stream:
        stream.seek(START)
        store.set("k", (stream, {}))
        stored = _stored(store)
        end = stream.tell()
    done = START + taken[0]
    if change == "append":
        want = content[START:] + extra
    elif change == "truncate behind":
        want = content[START : max(done, cut)]
    elif change == "truncate ahead":
        want = content[START : BIG - (3 << 20)]
    elif change == "rename over":
        want = content[START:]  # the open file is the old one
    else:
        want = content[START:done] + b"O" * (BIG - done)
    assert len(stored) == len(want) and stored == want
    assert end == START + len(want)
    _check_fresh(opener, tmp_path, {"k": want})


def test_a_source_appended_to_by_another_process(opener: Opener, tmp_path: Path) -> None:
    """A real race: another process appends while the store copies. The stored value is
    the source's bytes from the position up to some point between the old and the new
    end, with a matching size."""
    content = os.urandom(24 << 20)
    path = tmp_path / "growing.bin"
    path.write_bytes(content)
    code = (
        "import os, sys\n"
        "chunk = bytes(range(256)) * 256\n"
        "with open(sys.argv[1], 'ab', buffering=0) as out:\n"
        "    print('go', flush=True)\n"
        "    for _ in range(256):\n"
        "        out.write(chunk)\n"
    )
    with (
        opener(tmp_path) as store,
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
        ) as appender,
    ):
        assert appender.stdout is not None
        assert appender.stdout.readline() == "go\n"
        with open(path, "rb") as stream:
            stream.seek(START)
            store.set("k", (stream, {}))
        appender.wait(timeout=60)
        stored = _stored(store)
    final = path.read_bytes()
    assert len(content) - START <= len(stored) <= len(final) - START
    assert stored == final[START : START + len(stored)]


# -- stored values as sources -----------------------------------------------------------------
def _data_files(store: AbstractStore, size: int) -> list[Path]:
    """The files under the store's own paths that hold *size* bytes or more."""
    found = []
    for root in map(Path, store.storage_paths()):
        candidates = root.rglob("*") if root.is_dir() else [root]
        found += [p for p in candidates if p.is_file() and p.stat().st_size >= size]
    return [p for p in found if not p.name.endswith((".db", ".db-wal", ".db-shm"))]


@pytest.mark.parametrize("other_name", list(OPENERS))
def test_value_streams_into_the_same_key_another_key_and_another_store(
    store: AbstractStore, tmp_path: Path, other_name: str
) -> None:
    first, second = os.urandom(SIZE), os.urandom(SIZE + 5)
    store.set("k", (first, {}))
    store.set("j", (second, {}))
    with store.get("k").data as own:  # the key's own old value, partly read, into the key
        own.read(1001)
        store.set("k", (own, {}))
        assert own.tell() == SIZE and own.read() == b""
    assert _stored(store, "k") == first[1001:]
    store.set("k", store.get("j"))  # a Value object
    assert _stored(store, "k") == second
    store.set("k", store.get("k"))  # itself
    assert _stored(store, "k") == second
    with store.get("j").range(3, SIZE - 3) as part:  # a range ends before the file does
        part.read(10)
        store.set("range", (part, {}))
    assert _stored(store, "range") == second[13 : SIZE - 3]
    store.set("k", (first, {}))
    for path in _data_files(store, SIZE):  # value files opened by their paths
        with open(path, "rb") as raw:
            head = raw.read(16)
            raw.seek(5)
            if head == first[:16]:  # the key's own value file, into the key
                store.set("k", (raw, {}))
                assert _stored(store, "k") == first[5:]
            elif head == second[:16]:  # another key's
                store.set("by-path", (raw, {}))
                assert _stored(store, "by-path") == second[5:]
    assert _stored(store, "k") == first[5:] and _stored(store, "by-path") == second[5:]

    other_root = tmp_path / "other"
    other_root.mkdir()
    with OPENERS[other_name](other_root) as other:
        with store.get("j").data as stream:
            stream.seek(4097)
            other.set("x", (stream, {}))
        assert _stored(other, "x") == second[4097:]
        with store.get("j").range(SIZE // 2, SIZE // 2 + (1 << 20)) as part:
            other.set("r", (part, {}))
        assert _stored(other, "r") == second[SIZE // 2 : SIZE // 2 + (1 << 20)]


def test_a_value_whose_file_grows_or_shrinks_under_the_copy(opener: Opener, tmp_path: Path) -> None:
    """Garbage appended to a value's data file is never copied (a value ends at its size);
    a data file truncated while it is copied is a CorruptFileError, never short data, and
    the target key keeps its old value."""
    content = os.urandom(BIG)
    events = EventManager()
    (tmp_path / "target").mkdir()
    with _sqlite(tmp_path, event_manager=None) as source_store:
        with opener(tmp_path / "target", event_manager=events) as target:
            source_store.set("j", (content, {}))
            [data_file] = _data_files(source_store, BIG)
            with open(data_file, "ab") as out:
                out.write(b"GARBAGE" * 1000)
            target.set("t", source_store.get("j"))
            assert _stored(target, "t") == content

            source_store.delete("j")
            source_store.set("j", (content, {}))
            [data_file] = _data_files(source_store, BIG)
            target.set("t", (b"old", {}))
            _stepper(events, 2, lambda step: os.truncate(data_file, 10 << 20))
            with pytest.raises(CorruptFileError):
                target.set("t", source_store.get("j"))
            assert _stored(target, "t") == b"old"
    assert _temp_files(tmp_path / "target") == []


@pytest.mark.parametrize("name", list(OPENERS))
def test_a_source_key_overwritten_and_deleted_midway(tmp_path: Path, name: str) -> None:
    content = os.urandom(BIG)
    events = EventManager()
    with OPENERS[name](tmp_path, event_manager=events) as store:
        store.set("j", (content, {}))
        value = store.get("j")

        def clobber(step: int) -> None:
            store.set("j", (b"z" * (3 << 20), {}))
            store.delete("j")

        _stepper(events, 2, clobber)
        store.set("k", value)
        assert _stored(store, "k") == content
        assert not store.exists("j")


def test_threads_copying_streams_of_one_value(store: AbstractStore) -> None:
    """Streams of one value share one descriptor: copies from several threads, at
    different positions, while other threads read it, each store their own bytes."""
    content = os.urandom(8 << 20)
    store.set("v", (content, {}))
    value = store.get("v")
    errors: list[object] = []

    def copy(index: int) -> None:
        try:
            with value.data as stream:
                stream.seek(index * 1_000_003)
                store.set(f"t{index}", (stream, {}))
            if _stored(store, f"t{index}") != content[index * 1_000_003 :]:
                errors.append(index)
        except Exception as exc:
            errors.append(repr(exc))

    def read() -> None:
        for _ in range(3):
            with value.data as stream:
                stream.seek(5)
                if stream.read() != content[5:]:
                    errors.append("reader")

    workers = [threading.Thread(target=copy, args=(i,)) for i in range(4)]
    workers += [threading.Thread(target=read) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []


# -- interrupted writes -----------------------------------------------------------------------
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_listener_failing_or_interrupting_midway(
    opener: Opener, tmp_path: Path, failure: type[BaseException]
) -> None:
    """A listener's error is its own (the write goes on); ^C midway stops the write
    with the old value kept and no temp file left; a rolled-back transaction too."""
    content = os.urandom(BIG)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    events = EventManager()

    def fail(step: int) -> None:
        raise failure("from the listener")

    with opener(tmp_path, event_manager=events) as store:
        store.set("k", (b"old", {}))
        _stepper(events, 2, fail)
        if failure is KeyboardInterrupt:
            with pytest.raises(KeyboardInterrupt), open(path, "rb") as stream:
                store.set("k", (stream, {}))
            assert _stored(store) == b"old"
        else:
            with open(path, "rb") as stream:
                store.set("k", (stream, {}))
            assert _stored(store) == content
            store.set("k", (b"old", {}))
        with pytest.raises(ZeroDivisionError), store.transaction(), open(path, "rb") as stream:
            store.set("k", (stream, {}))
            _ = 1 / 0
        assert _stored(store) == b"old"
        assert store.list_keys("") is not None and list(store.list_keys("")) == ["k"]
    assert _temp_files(tmp_path) == []


_WRITER = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from storekeeper import EventManager
from storekeeper.store import open_store
from storekeeper.store.events import StoreProgressStepEvent
events = EventManager()
events.connect(StoreProgressStepEvent, lambda e: print('step', flush=True))
with open_store(sys.argv[1], event_manager=events) as store:
    print('ready', flush=True)
    with open(sys.argv[2], 'rb') as stream:
        stream.seek(int(sys.argv[3]))
        store.set('k', (stream, {{'new': True}}))
    print('done', flush=True)
"""


def _kill_writers(url: str, path: Path, kills: int, rng: random.Random) -> dict[str, int]:
    """Start writers of *path* into key 'k' of *url*, SIGKILL each after a random number
    of its progress steps plus a random delay (some finish); count what was killed."""
    counts = {"killed": 0, "finished": 0}
    for _ in range(kills):
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER.format(limit=LIMIT), url, str(path), "5"],
            stdout=subprocess.PIPE,
            text=True,
        ) as writer:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "ready\n"
            for _ in range(rng.randint(0, 3)):
                if writer.stdout.readline() != "step\n":
                    break
            time.sleep(rng.uniform(0, 0.03))  # a random kill point, not a synchronisation
            writer.kill()
            rest = writer.stdout.read()
        counts["finished" if "done" in rest else "killed"] += 1
    return counts


def _crash_round(opener: Opener, tmp_path: Path, kills: int, size: int, seed: int) -> None:
    old, new = os.urandom(3 << 20), os.urandom(size)
    path = tmp_path / "new.bin"
    path.write_bytes(new)
    url = URLS[opener].format(tmp_path)
    with opener(tmp_path) as store:
        store.set("k", (old, {"new": False}))
    rng = random.Random(seed)
    killed = 0
    for _ in range(kills):
        killed += _kill_writers(url, path, 1, rng)["killed"]
        with opener(tmp_path) as store:
            value = store.get("k")
            data = _stored(store)
            if value.metadata == {"new": False}:
                assert data == old
            else:
                assert value.metadata == {"new": True} and data == new[5:]
            store.set("k", (old, {"new": False}))  # later writes work
    assert killed  # some writers really died midway
    # what the killed writers left behind never shows as a key, never breaks a copy out,
    # and is collected once old (as connect/collect_garbage promise)
    with opener(tmp_path) as store:
        assert list(store.list_keys("")) == ["k"]
        transfer(store, Folder(tmp_path / "out"))
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["k"]
        assert (tmp_path / "out" / "k").read_bytes() == old
        roots = [Path(p) for p in store.storage_paths()]
    ancient = time.time() - 30 * 86400
    for root in roots:
        for leftover in root.rglob("*"):
            if leftover.is_file():
                os.utime(leftover, (ancient, ancient))
    with opener(tmp_path) as store:
        if isinstance(store, FileSystemStore):
            store.collect_garbage(0)
        assert _stored(store) == old
        large = _data_files(store, 1 << 20)
        assert len(large) == 1, large  # only the live value's file is left
    assert _temp_files(*roots) == []


@pytest.mark.crash
@pytest.mark.parametrize("name", ["sqlite", "filesystem"])
def test_sigkill_during_a_durable_copy(tmp_path: Path, name: str) -> None:
    """A durable write of a value two kernel blocks long, killed at random points
    (before, during and after the copy, during the fsync): the key holds the old value or
    the new one whole, never a mix."""
    _crash_round(
        OPENERS[name],
        tmp_path,
        kills=7,
        size=(17 << 20) + 5,
        seed={"sqlite": 1, "filesystem": 2}[name],
    )


@pytest.mark.soak
@pytest.mark.parametrize("name", ["sqlite", "filesystem"])
def test_sigkill_during_a_durable_copy_soak(tmp_path: Path, name: str) -> None:
    _crash_round(OPENERS[name], tmp_path, kills=40, size=(4 << 20) + 5, seed=7)


# -- a full disk ------------------------------------------------------------------------------
_FULL_DISK = """
import collections, json, os, resource, shutil, sys
from storekeeper import FileSystemStore, init_shared_store
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import BackendError
mount, elsewhere = sys.argv[1], sys.argv[2]
mounted = os.system(f"mount -t tmpfs -o size=40m tmpfs {mount} 2>/dev/null") == 0
old, new = os.urandom(2 << 20), os.urandom(3 << 20)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
def free():
    found = os.statvfs(mount)
    return found.f_bavail * found.f_frsize
results = collections.Counter()
for kind in ("sqlite", "filesystem"):
    for place in (mount, elsewhere):
        source = os.path.join(place, "new.bin")
        with open(source, "wb") as out:
            out.write(new)
        root = os.path.join(mount, kind)
        os.makedirs(root)
        if kind == "sqlite":
            store = SqliteStore(os.path.join(root, "s.db"), inline_limit=4096)
        else:
            init_shared_store(os.path.join(root, "fs"))
            store = FileSystemStore(os.path.join(root, "fs"), inline_limit=4096)
        with store:
            for slack in range(-(64 << 10), 192 << 10, 8192):
                store.set("k", (old, {}))
                filler = os.path.join(mount, "filler")
                if mounted:  # a disk that holds just so much more
                    with open(filler, "wb") as out:
                        out.write(bytes(max(0, free() - len(new) - slack)))
                else:  # no mount allowed: a file size limit instead
                    resource.setrlimit(resource.RLIMIT_FSIZE, (len(new) + slack, hard))
                before = free()
                try:
                    with open(source, "rb") as stream:
                        store.set("k", (stream, {}))
                    outcome = "ok"
                except BackendError as exc:
                    outcome = "BackendError"
                except Exception as exc:
                    outcome = f"other {type(exc).__name__}: {exc}"
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                data = store.to_bytes("k")
                state = {new: "new", old: "old"}.get(data, f"mix of {len(data)}")
                leaked = mounted and outcome != "ok" and free() < before
                if mounted:
                    os.unlink(filler)
                store.set("k2", (b"x" * 9000, {}))
                store.delete("k2")
                results[f"{kind} {place == mount} {outcome} {state} leaked={leaked}"] += 1
        shutil.rmtree(root)
        os.unlink(source)
print(json.dumps({"mounted": mounted, "results": results}))
"""


@pytest.mark.soak  # several seconds: make soak runs it
def test_a_full_disk_is_a_clear_error_and_keeps_the_old_value(tmp_path: Path) -> None:
    """A real ENOSPC: a 40 MiB tmpfs mounted in a private mount namespace (gone with the
    process), filled to leave from 64 KiB less to 192 KiB more than the new value needs,
    so the disk fills during the copy, its fsync, or the commit after it; the source is
    on the same tmpfs (copied by the kernel) or elsewhere (read). Each write stores the
    new value or raises BackendError with the old value kept and its space given back;
    later writes work. Where no mount is allowed, a file size limit stands in."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    if shutil.which("unshare") is None:
        unshare = []
    command = [sys.executable, "-c", _FULL_DISK, str(mount), str(tmp_path)]
    done = subprocess.run(
        [*unshare, *command], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0 and done.stderr.startswith("unshare:"):  # not allowed here
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    bad = {line: n for line, n in results.items() if not _acceptable_full_disk(line)}
    assert not bad, results
    for kind in ("sqlite", "filesystem"):
        for same in ("True", "False"):
            assert any(line.startswith(f"{kind} {same} BackendError") for line in results)
            assert any(line.startswith(f"{kind} {same} ok new") for line in results)


def _acceptable_full_disk(line: str) -> bool:
    rest = line.split(" ", 2)[2]
    return rest in {"ok new leaked=False", "BackendError old leaked=False"}


# -- progress ---------------------------------------------------------------------------------
def _progress(events: EventManager) -> list[tuple[str, int]]:
    log: list[tuple[str, int]] = []
    events.connect(StoreProgressStartEvent, lambda e: log.append(("start", e.steps)))
    events.connect(StoreProgressStepEvent, lambda e: log.append(("step", e.step)))
    events.connect(StoreProgressEndEvent, lambda e: log.append(("end", 0)))
    return log


def _check_steps(log: list[tuple[str, int]], total: int) -> None:
    assert log[0][0] == "start" and log[-1][0] == "end", log
    steps = [n for kind, n in log if kind == "step"]
    assert steps and steps[-1] == total, (steps, total)
    assert all(a < b for a, b in itertools.pairwise(steps)), steps
    announced = log[0][1]
    assert announced in (-1, total), (announced, total)


@pytest.mark.parametrize("name", list(OPENERS))
def test_progress_is_monotonic_and_ends_at_the_size(
    tmp_path: Path, shm_dir: Path, name: str
) -> None:
    content = os.urandom(BIG)
    (tmp_path / "big.bin").write_bytes(content)
    (shm_dir / "small.bin").write_bytes(content[: 20 << 20])
    events = EventManager()
    log = _progress(events)
    with OPENERS[name](tmp_path, event_manager=events) as store:
        for path, position, total in [
            (tmp_path / "big.bin", 5_000_001, BIG - 5_000_001),
            (shm_dir / "small.bin", 7, (20 << 20) - 7),  # read, not copied
        ]:
            log.clear()
            with open(path, "rb") as stream:
                stream.seek(position)
                store.set("k", (stream, {}))
            _check_steps(log, total)
        store.set("j", (content, {}))
        log.clear()
        with store.get("j").data as stream:
            stream.seek(17)
            store.set("k", (stream, {}))
        _check_steps(log, BIG - 17)


def test_progress_of_a_file_that_reports_no_size_announces_unknown(tmp_path: Path) -> None:
    """ProgressStartEvent: 'steps is the number of steps, -1 if unknown'. A /proc file's
    size is unknown (the docstrings say so), yet the start announces 0 and the steps
    then count the bytes read, so step/steps divides by zero for a listener."""
    events = EventManager()
    log = _progress(events)
    want = Path("/proc/version").read_bytes()
    with _sqlite(tmp_path, inline_limit=8, event_manager=events) as store:
        with open("/proc/version", "rb") as stream:
            store.set("k", (stream, {}))
        assert _stored(store) == want
    _check_steps(log, len(want))


def test_transfer_progress_stays_within_its_total_when_a_key_is_copied_again(
    tmp_path: Path,
) -> None:
    """A file appended to during its copy is copied again ('changed'). The overall
    progress announced 'bytes to copy' at its start; the steps go on to the bytes of
    both copies, over twice the announced total, so a bar shows 225 %."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a").write_bytes(os.urandom(BIG))
    (folder / "b").write_bytes(b"small")
    events = EventManager()
    log: list[tuple[str, int]] = []
    grown = []

    def on(event: ProgressStepEvent) -> None:
        if isinstance(event, StoreProgressStepEvent):
            return
        log.append(("step", event.step))
        if event.step >= 2 << 20 and not grown:
            grown.append(1)
            with open(folder / "a", "ab") as out:
                out.write(b"A" * (5 << 20))

    events.connect(ProgressStepEvent, on)

    def on_start(event: ProgressStartEvent) -> None:
        if not isinstance(event, StoreProgressStartEvent):
            log.append(("start", event.steps))

    events.connect(ProgressStartEvent, on_start)
    with _sqlite(tmp_path) as store:
        report = transfer(Folder(folder), store, event_manager=events)
        assert _stored(store, "a") == (folder / "a").read_bytes()
    assert [a.reason for a in report.actions] == ["changed", "new"]
    assert report.bytes == BIG + (5 << 20) + 5
    steps = [n for kind, n in log if kind == "step"]
    announced = log[0][1]
    assert all(a < b for a, b in itertools.pairwise(steps))
    assert steps[-1] <= announced, (steps[-1], announced)


def _overall_steps(events: EventManager) -> list[int]:
    """The steps of a transfer's overall progress (not those of each key's write)."""
    steps: list[int] = []

    def on_step(event: ProgressStepEvent) -> None:
        if not isinstance(event, StoreProgressStepEvent):
            steps.append(event.step)

    events.connect(ProgressStepEvent, on_step)
    return steps


def test_transfer_counts_every_byte_of_kernel_copies_and_reads(
    tmp_path: Path, shm_dir: Path
) -> None:
    """Folder -> store -> folder -> folder, with sources on disk (copied) and on tmpfs
    (read): the report's bytes are the files' sizes and the last step equals them."""
    sizes = {"a": BIG - 3, "sub/b": (1 << 20) + 1, "c": 0, "d": 5000}
    for where in (tmp_path / "in", shm_dir / "in"):
        for key, size in sizes.items():
            (where / key).parent.mkdir(parents=True, exist_ok=True)
            (where / key).write_bytes(os.urandom(size))
    total = sum(sizes.values())
    for index, folder in enumerate([tmp_path / "in", shm_dir / "in"]):
        events = EventManager()
        steps = _overall_steps(events)
        root = tmp_path / f"store{index}"
        root.mkdir()
        with _filesystem(root) as store:
            report = transfer(Folder(folder), store, event_manager=events)
            assert (report.copied, report.bytes, steps[-1]) == (4, total, total)
            out = tmp_path / f"out{index}"
            report = transfer(store, Folder(out))
            assert report.bytes == total
        again = transfer(Folder(out), Folder(tmp_path / f"again{index}"))
        assert again.bytes == total
        for key in sizes:
            assert (tmp_path / f"again{index}" / key).read_bytes() == (folder / key).read_bytes()


# -- the command line -------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storekeeper", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _hostile_folder(folder: Path) -> dict[str, bytes]:
    sizes = {
        "empty": 0,
        "one": 1,
        "under": (1 << 20) - 1,
        "at": 1 << 20,
        "over": (1 << 20) + 1,
        "deep/er/big": (17 << 20) + 5,  # two kernel blocks
        "sp ace é 日本": 3000,
        ".hidden": 4097,
    }
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(os.urandom(size))
    with open(folder / "deep" / "sparse", "wb") as out:
        out.seek(3 << 20)
        out.write(b"x")
        out.truncate(8 << 20)
    os.mkfifo(folder / "a-fifo")  # not a regular file: no key, and never opened
    return _tree(folder)


CLI_STORES = ["sqlite:///{}/c.db", "file://{}/cfs?create=true"]


@pytest.mark.parametrize("url", CLI_STORES, ids=["sqlite", "filesystem"])
def test_cli_cp_folder_to_store_to_folder_is_byte_exact(tmp_path: Path, url: str) -> None:
    """Folder -> store -> folder, and store -> the other kind of store, by `storekeeper
    cp`: every file byte-exact (empty, around 1 MiB, two kernel blocks, sparse, odd
    names; a FIFO is no key and is never opened), the reports count every byte, a
    second run copies nothing, `get` of the large key gives its bytes."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = _hostile_folder(folder)
    total = sum(map(len, files.values()))
    report = f"copied {len(files)} keys ({total} bytes)"
    target = url.format(tmp_path)
    plain = target.split("?")[0]
    first = _cli("cp", str(folder), target)
    assert first.returncode == 0 and report in first.stderr, first.stderr
    back = _cli("cp", plain, str(tmp_path / "out"))
    assert back.returncode == 0 and report in back.stderr, back.stderr
    assert _tree(tmp_path / "out") == files
    other = next(u for u in CLI_STORES if u != url).format(tmp_path / "other")
    (tmp_path / "other").mkdir()
    across = _cli("cp", plain, other)
    assert across.returncode == 0 and report in across.stderr, across.stderr
    seen = _fresh(other.split("?")[0], list(files))
    assert seen == {key: [len(data), len(data), _digest(data)] for key, data in files.items()}
    again = _cli("cp", str(folder), target)
    assert "copied 0 keys (0 bytes)" in again.stderr, again.stderr
    got = _cli("get", plain + "#deep/er/big", "-o", str(tmp_path / "big"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "big").read_bytes() == files["deep/er/big"]


@pytest.mark.parametrize("url", CLI_STORES, ids=["sqlite", "filesystem"])
def test_cli_cp_refused_for_a_store_inside_the_folder_writes_nothing(
    tmp_path: Path, url: str
) -> None:
    """`storekeeper cp DIR sqlite:///DIR/s.db` is refused (exit 2, the two overlap), but
    DIR/s.db and DIR/s.db-values/ (or DIR/cfs/ with its .lock and .FSStore) are left
    behind, empty, so the next `cp DIR elsewhere` copies them as keys."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a").write_bytes(b"data")
    done = _cli("cp", str(folder), url.format(folder))
    assert done.returncode == 2 and "overlap" in done.stderr, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a"]


_PARTIAL = """
import sys
from storekeeper.store import open_store
from storekeeper.store.transfer import Folder, iter_transfer
with open_store(sys.argv[2]) as store:
    for action in iter_transfer(Folder(sys.argv[1]), store, batch_keys=2):
        print(action.key, flush=True)
"""


def test_cli_cp_killed_midway_is_finished_by_running_it_again(tmp_path: Path) -> None:
    """Copies into a durable SQLite store killed at random points: a transfer in groups
    of two keys killed after 0, 3 and 7 committed keys, and `storekeeper cp` itself
    killed at a random time. Every key present is whole; `storekeeper cp` then copies
    just what is missing (its report says so) and ends byte-exact; a run after that
    copies nothing."""
    folder = tmp_path / "in"
    rng = random.Random(11)
    sizes = [rng.choice([0, 10, 5000, (1 << 20) + 1, 2 << 20]) for _ in range(16)]
    sizes[5] = (17 << 20) + 1
    for index, size in enumerate(sizes):
        path = folder / f"d{index % 3}" / f"f{index:02d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    files = _tree(folder)
    url = f"sqlite:///{tmp_path}/r.db"
    partial = [sys.executable, "-c", _PARTIAL, str(folder), url]
    cli = [sys.executable, "-m", "storekeeper", "cp", str(folder), url]
    for command, after in [(partial, 0), (partial, 3), (partial, 7), (cli, 0)]:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ) as run:
            assert run.stdout is not None
            for _ in range(after):
                if not run.stdout.readline():
                    break
            time.sleep(rng.uniform(0, 0.3 if command is cli else 0.02))  # a random kill point
            run.kill()
        with SqliteStore(tmp_path / "r.db") as store:
            present = {key: _stored(store, key) for key in store.list_keys("")}
        assert all(files[key] == data for key, data in present.items())  # never a torn key
        assert len(present) >= after
    missing = {key: data for key, data in files.items() if key not in present}
    last = _cli("cp", str(folder), url)
    assert last.returncode == 0, last.stderr
    copied = f"copied {len(missing)} keys ({sum(map(len, missing.values()))} bytes)"
    assert copied in last.stderr, (last.stderr, copied)
    assert "copied 0 keys" in _cli("cp", str(folder), url).stderr
    out = _cli("cp", url, str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert _tree(tmp_path / "out") == files


def test_cli_put_from_special_files(tmp_path: Path, content: bytes) -> None:
    url = f"sqlite:///{tmp_path}/p.db?inline_limit=16"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as out:
            out.write(content)

    feeder = threading.Thread(target=feed)
    feeder.start()
    done = _cli("put", f"{url}#fifo", str(fifo))
    feeder.join()
    assert done.returncode == 0, done.stderr
    done = _cli("put", f"{url}#proc", "/proc/version")
    assert done.returncode == 0, done.stderr
    with SqliteStore(tmp_path / "p.db") as store:
        assert _stored(store, "fifo") == content
        assert _stored(store, "proc") == Path("/proc/version").read_bytes()


def test_cli_put_from_a_non_blocking_stdin_is_never_cut_short(tmp_path: Path) -> None:
    """A stdin inherited with O_NONBLOCK (as some parents leave it) from a slow writer:
    `storekeeper put KEY -` must store everything written before the pipe closed, or
    fail; it stores the first 32 KiB of 3 MiB and reports success."""
    content = os.urandom(3 << 20)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, content[: 32 << 10])
    url = f"sqlite:///{tmp_path}/in.db"
    with subprocess.Popen(
        [sys.executable, "-m", "storekeeper", "put", f"{url}#k", "-"],
        stdin=read_end,
        stderr=subprocess.PIPE,
        text=True,
    ) as put:
        os.close(read_end)
        time.sleep(0.5)  # a slow writer: the rest comes later
        with contextlib.suppress(BrokenPipeError), open(write_end, "wb") as out:
            out.write(content[32 << 10 :])
        assert put.stderr is not None
        error = put.stderr.read()
    with SqliteStore(tmp_path / "in.db") as store:
        stored = store.to_bytes("k") if store.exists("k") else None
    assert stored == content or (put.returncode != 0 and stored is None), (
        put.returncode,
        error,
        stored and len(stored),
    )


def _drain(fd: int, stop: threading.Event, into: bytearray) -> None:
    # poll, not select: the whole suite may hold more than 1,023 descriptors.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not stop.is_set():
        if poller.poll(50):
            into += os.read(fd, 1 << 16)


def test_cli_get_into_a_fifo_or_device_writes_into_it(tmp_path: Path, content: bytes) -> None:
    """`storekeeper get KEY -o PATH` where PATH is a FIFO or a character device (here a
    private node with /dev/null's numbers, made where mknod is allowed): the data goes
    into it, as `cp` and shells do; the node must never be renamed over."""
    url = f"sqlite:///{tmp_path}/g.db"
    with SqliteStore(tmp_path / "g.db") as store:
        store.set("k", (content, {}))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a reader that never sees EOF
    received = bytearray()
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(reader, stop, received))
    drainer.start()
    try:
        done = _cli("get", f"{url}#k", "-o", str(fifo), timeout=30)
    finally:
        time.sleep(0.2)  # let the drainer empty the pipe
        stop.set()
        drainer.join()
        os.close(reader)
    nodes = {"fifo": stat.S_ISFIFO(fifo.lstat().st_mode)}
    device = tmp_path / "null"
    with contextlib.suppress(PermissionError):
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        device_done = _cli("get", f"{url}#k", "-o", str(device))
        nodes["device"] = stat.S_ISCHR(device.lstat().st_mode) and device_done.returncode == 0
    assert nodes == dict.fromkeys(nodes, True), (nodes, done.stderr)
    assert done.returncode == 0 and bytes(received) == content


def test_cli_get_into_dev_fd(tmp_path: Path, content: bytes) -> None:
    """`storekeeper get KEY -o >(sha256sum)` passes /dev/fd/63. It should write into the
    pipe, or at least fail with a clear error and a fitting code: it exits 3 (the code
    for a missing key) naming '/dev/fd/.63.<hex>.tmp'."""
    url = f"sqlite:///{tmp_path}/g.db"
    with SqliteStore(tmp_path / "g.db") as store:
        store.set("k", (content, {}))
    read_end, write_end = os.pipe()
    received = bytearray()
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(read_end, stop, received))
    drainer.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "storekeeper", "get", f"{url}#k", "-o", f"/dev/fd/{write_end}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            pass_fds=[write_end],
        )
    finally:
        os.close(write_end)
        time.sleep(0.2)
        stop.set()
        drainer.join()
        os.close(read_end)
    wrote = done.returncode == 0 and bytes(received) == content
    refused = done.returncode in (1, 2) and ".tmp" not in done.stderr
    assert wrote or refused, (done.returncode, done.stderr)


# -- the file primitives ----------------------------------------------------------------------
@pytest.mark.parametrize("flags", [0, os.O_APPEND, os.O_SYNC], ids=["plain", "O_APPEND", "O_SYNC"])
def test_file_tail_writes_at_the_fds_position_and_leaves_it_after(
    tmp_path: Path, source: Path, content: bytes, flags: int
) -> None:
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        os.write(fd, b"PRE")
        with open(source, "rb") as stream:
            stream.seek(777)
            written = FileTail(b"HEAD", stream).write_to(fd, durable=bool(flags))
            assert stream.tell() == SIZE
        os.write(fd, b"TRAILER")
    finally:
        os.close(fd)
    assert written == 4 + SIZE - 777
    assert target.read_bytes() == b"PRE" + b"HEAD" + content[777:] + b"TRAILER"


def test_atomic_write_of_a_file_onto_itself_and_its_count(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "self.bin"
    path.write_bytes(content)
    with open(path, "rb") as stream:
        stream.seek(12_345)
        assert atomic_write(path, stream) == SIZE - 12_345
    assert path.read_bytes() == content[12_345:]


def test_atomic_write_keeps_an_existing_targets_bits_whatever_mode_says(
    tmp_path: Path, source: Path
) -> None:
    """'The permission bits of an existing target are kept; a new file gets *mode*.'
    Without *mode* they are kept (the next test); with it the target gets *mode*."""
    path = tmp_path / "target"
    path.write_bytes(b"x")
    path.chmod(0o640)
    with open(source, "rb") as stream:
        atomic_write(path, stream, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_write_keeps_an_existing_targets_bits(tmp_path: Path, source: Path) -> None:
    path = tmp_path / "target"
    path.write_bytes(b"x")
    path.chmod(0o640)
    with open(source, "rb") as stream:
        atomic_write(path, stream)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes() == source.read_bytes()


_SELF_APPEND = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
from storekeeper.files import FileTail
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
try:
    with open(path, "rb") as stream:
        print("wrote", FileTail(b"", stream).write_to(fd))
except OSError as exc:
    print("error", exc.errno)
except ValueError as exc:  # a clear refusal
    print("refused", exc)
"""


def test_file_tail_into_its_own_source_file_ends(tmp_path: Path) -> None:
    """Appending a file to itself (`cat f >> f`): cat refuses ('input file is output
    file'). FileTail copies 'to its end', which moves ahead with every block, so it
    writes until the disk (here a 64 MiB file size limit: EFBIG) stops it. Expected: a
    clear refusal, or a copy of the 1 MiB the file held."""
    path = tmp_path / "self.bin"
    path.write_bytes(os.urandom(1 << 20))
    done = subprocess.run(
        [sys.executable, "-c", _SELF_APPEND, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert path.stat().st_size <= 2 << 20, (path.stat().st_size, done.stdout)
    assert done.stdout.split()[0] == "wrote" or done.stdout.split()[1] != str(errno.EFBIG)
