"""Non-blocking sources: "no data yet" (a read answering ``None``) is never their end.

Each read loop that takes a source to its end (a store's ``set``, ``buffer_iterator``,
``FileTail.write_to``) waits for a non-blocking pipe's writer, also on a descriptor
number over 1023; a source that has no descriptor to wait on is refused, the old value
kept. The writer sends its rest only once the reader was told "no data yet", so every
test meets that answer, with no sleeps.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storekeeper import FileSystemStore, init_shared_store
from storekeeper.backends.sqlite import SqliteStore
from storekeeper.errors import InvalidValueError
from storekeeper.files import FileTail
from storekeeper.store import AbstractStore
from storekeeper.store.utils import buffer_iterator

CONTENT = os.urandom((2 << 20) + 7)  # over the stores' inline limits
FIRST = 40_000  # in the pipe before the reader starts


class _Watched(io.FileIO):
    """A pipe's non-blocking read end that tells when it answered "no data yet"."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "rb")
        self.waited = threading.Event()

    def read(self, size: int | None = -1) -> bytes | None:
        data = super().read(size)
        if data is None:
            self.waited.set()
        return data


@contextlib.contextmanager
def _slow_pipe(read_fd: int | None = None) -> Iterator[_Watched]:
    """A non-blocking pipe holding the first bytes of CONTENT, whose writer sends the
    rest, then closes, once the reader has found no data (at descriptor *read_fd*)."""
    read_end, write_end = os.pipe()
    if read_fd is not None:
        # The lowest free descriptor from read_fd on: dup2 onto a fixed number would
        # close whatever the process (the whole test suite) holds there.
        high = fcntl.fcntl(read_end, fcntl.F_DUPFD, read_fd)
        os.close(read_end)
        read_end = high
    os.set_blocking(read_end, False)
    os.write(write_end, CONTENT[:FIRST])
    reader = _Watched(read_end)

    def write_the_rest() -> None:
        reader.waited.wait(timeout=30)
        with contextlib.suppress(BrokenPipeError), open(write_end, "wb") as out:
            out.write(CONTENT[FIRST:])

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    try:
        with reader:
            yield reader
    finally:
        reader.waited.set()
        writer.join()


@pytest.fixture(params=["sqlite", "filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AbstractStore]:
    if request.param == "sqlite":
        opened: AbstractStore = SqliteStore(tmp_path / "s.db")
    else:
        init_shared_store(tmp_path / "fs")
        opened = FileSystemStore(tmp_path / "fs")
    with opened:
        yield opened


def test_a_store_reads_a_non_blocking_pipe_to_its_end(store: AbstractStore) -> None:
    with _slow_pipe() as pipe:
        store.set("k", (pipe, {}))
        assert pipe.waited.is_set()
    assert store.to_bytes("k") == CONTENT


def test_buffer_iterator_and_file_tail_wait_for_a_non_blocking_pipe(tmp_path: Path) -> None:
    with _slow_pipe() as pipe:
        assert b"".join(buffer_iterator(pipe, 1 << 16)) == CONTENT
    target = tmp_path / "out"
    with _slow_pipe() as pipe, open(target, "wb") as out:
        assert FileTail(b"H", pipe).write_to(out.fileno()) == 1 + len(CONTENT)
    assert target.read_bytes() == b"H" + CONTENT


def test_a_descriptor_over_1023_is_waited_for(store: AbstractStore) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1500
    if soft <= high + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    try:
        with _slow_pipe(read_fd=high) as pipe:
            store.set("k", (pipe, {}))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert store.to_bytes("k") == CONTENT


class _NoDescriptor:
    """A stream with no descriptor, answering "no data yet" after its first bytes."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int = -1) -> bytes | None:
        self.reads += 1
        return CONTENT[:size] if self.reads == 1 else None


def test_a_stream_with_nothing_to_wait_on_is_refused(store: AbstractStore, tmp_path: Path) -> None:
    store.set("k", (b"old", {}))
    with pytest.raises(InvalidValueError, match="no data yet"):
        store.set("k", (_NoDescriptor(), {}))
    assert store.to_bytes("k") == b"old"
    with pytest.raises(InvalidValueError, match="no data yet"):
        list(buffer_iterator(_NoDescriptor(), 1 << 16))
    with open(tmp_path / "out", "wb") as out, pytest.raises(InvalidValueError):
        FileTail(b"", _NoDescriptor()).write_to(out.fileno())
