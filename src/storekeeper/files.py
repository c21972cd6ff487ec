"""Durable file primitives: atomic replacement of a file, and an inter-process lock.

:func:`atomic_write` writes a unique temp file in the target's directory, writes every
byte, flushes and fsyncs it, ``os.replace``-s it over the target and fsyncs the
directory, so a crash leaves either the old file or the new one, never a mix. The temp
file is removed on any failure. The bytes of a regular file given as the source are
copied inside the kernel (``os.copy_file_range``) where it can: :class:`FileTail` is a
file's rest after the bytes a caller already read from it, and :class:`CountedFile`
counts what is taken from a file either way.

:class:`FileLock` is an exclusive lock between processes (and threads) built on
``flock``: the kernel releases it when the holder dies, so a crashed holder never blocks
others. The lock file also records its owner (pid, host, process start time) for
diagnostics; :meth:`FileLock.owner` reads it and :func:`process_alive` tells a live
owner from a dead one (checking the start time, so a process that reuses a dead
holder's pid is not mistaken for it). They live in ``storekeeper._file_lock``.

:class:`SharedFile` and :func:`open_stream` read one open file from any number of
streams at once (positional reads), for stores whose values stream from files.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple, Protocol, TypeGuard, TypeVar

from storekeeper._file_lock import FileLock, process_alive, process_start_time
from storekeeper._nonblocking import read_chunk
from storekeeper.errors import (
    CorruptFileError,
    InvalidValueError,
    OutputFileError,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CountedFile",
    "FileLock",
    "FileTail",
    "SharedFile",
    "atomic_write",
    "copyable",
    "fsync",
    "fsync_directory",
    "open_stream",
    "process_alive",
    "process_start_time",
    "save_file",
    "write_all",
]

_CHUNK = 1 << 20
_T = TypeVar("_T")
# Transient errors some filesystems (network, Windows sharing) report for a rename.
_TRANSIENT = {errno.EAGAIN, errno.EBUSY, errno.EACCES}
_RETRIES = 5


def _full_fsync(fd: int) -> None:
    """macOS's fsync leaves data in the drive's cache; F_FULLFSYNC flushes it too."""
    fcntl.fcntl(fd, fcntl.F_FULLFSYNC)  # type: ignore[attr-defined,unused-ignore]


# Fault-injection seams: tests replace these to simulate a full disk, a failing fsync or
# a kernel that refuses to copy between two files (None: a system without the call).
_write = os.write
_fsync = _full_fsync if hasattr(fcntl, "F_FULLFSYNC") else os.fsync
_copy_file_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)


def fsync(fd: int) -> None:
    """Flush the file open as *fd* (data and metadata) to stable storage, also out of
    the drive's cache on macOS. Raises ``OSError`` when the flush fails: the data may
    then be lost on power loss, so callers must not report the write as durable."""
    _fsync(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (renames, creations) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _write_data(fd: int, data: object, durable: bool) -> int:
    """Write what :func:`atomic_write` accepts as *data* into *fd*; the bytes written."""
    if isinstance(data, FileTail):
        return data.write_to(fd, durable=durable)
    if isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        write_all(fd, payload)
        return len(payload)
    if isinstance(data, str):
        raise InvalidValueError("atomic_write takes bytes; encode str first")
    if callable(getattr(data, "read", None)):
        return FileTail(b"", data).write_to(fd, durable=durable)  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        size = 0
        for chunk in data:
            write_all(fd, chunk)
            size += len(chunk)
        return size
    raise InvalidValueError(f"cannot write {type(data).__name__}: give bytes, chunks or a file")


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to the file open as *fd*, however many ``os.write`` calls it
    takes; ``OSError`` (a full disk, ...) propagates with part of *data* written."""
    view = memoryview(data)
    while view:
        written = _write(fd, view)
        view = view[written:]


def atomic_write(
    path: str | os.PathLike[str],
    data: object,
    *,
    durable: bool = True,
    mode: int | None = None,
) -> int:
    """Replace the file *path* with *data* atomically.

    *data* is bytes, an iterable of bytes chunks, a binary file-like (written from its
    position to its end, which it is left at) or a :class:`FileTail`; a regular file's
    bytes are copied inside the kernel where it can (see :class:`FileTail`). With
    ``durable=True`` the file and its directory are fsynced, so the new content survives
    power loss once this returns. The permission bits of an existing target are kept,
    whatever *mode* says; a new file gets *mode* (default ``0o666`` less the umask). On
    any failure the target is unchanged and the temp file is removed. Returns the number
    of bytes written.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(target).st_mode & 0o7777  # an existing target keeps its bits
    temp = os.path.join(directory, f".{os.path.basename(target)[:40]}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
    try:
        try:
            size = _write_data(fd, data, durable)
            if mode is not None:
                os.fchmod(fd, mode)
            if durable:
                _fsync(fd)
        finally:
            os.close(fd)
        _replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        fsync_directory(directory)
    return size


def _replace(source: str, target: str) -> None:
    for attempt in range(_RETRIES):
        try:
            os.replace(source, target)
            return
        except OSError as exc:
            if exc.errno not in _TRANSIENT or attempt == _RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def save_file(
    path: str | os.PathLike[str], chunks: Iterable[bytes], *, durable: bool = True
) -> int:
    """Write *chunks* (bytes) to *path*; the number of bytes written.

    A new path or an existing regular file is replaced atomically (:func:`atomic_write`).
    An existing FIFO, device or other node that is not a regular file or a directory
    (``/dev/null``, the pipe ``/dev/fd/N`` of a shell's ``>(command)``) is opened and
    written into instead: replacing it would destroy it, and a pipe has no directory a
    temp file could go in. A failure to open or write *path* raises
    :class:`~storekeeper.errors.OutputFileError` naming it (its ``__cause__`` holds
    the ``OSError``); an error raised by *chunks* propagates unchanged.
    """
    target = os.fspath(path)
    failed: list[BaseException] = []

    def read() -> Iterator[bytes]:  # remembers the errors of the source
        iterator = iter(chunks)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except BaseException as exc:
                failed.append(exc)
                raise
            yield chunk

    try:
        if not _is_node(target):
            return atomic_write(target, read(), durable=durable)
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            return _write_data(fd, read(), durable=False)  # a node: nothing to fsync
        finally:
            os.close(fd)
    except OSError as exc:
        if failed or isinstance(exc, OutputFileError):
            raise
        raise OutputFileError(f"cannot write {target!r}: {exc.strerror or exc}") from exc


def _is_node(path: str) -> bool:
    """Whether *path* (links followed) exists and is neither a regular file nor a
    directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or not to be looked at: atomic_write says why
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


# -- copying a file inside the kernel ---------------------------------------------------------
# Bytes per copy_file_range call: the calls cost nothing next to the copy (with 1 MiB
# blocks they did, measured on ext4), and progress is still reported every few ms.
_COPY_BLOCK = 16 << 20
# Where the system has it, the call that starts the writeback of a range (_Writeback).
_fadvise: Callable[[int, int, int, int], None] | None = getattr(os, "posix_fadvise", None)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class CountedFile:
    """The binary file *file*, read through a counter: *on_read* is called with the
    number of bytes of each read, and of each block a kernel copy takes from *file*
    (:class:`FileTail`). It offers reading only, so a store sees a stream of unknown
    size, as it would an iterator of chunks; closing *file* is left to its owner."""

    __slots__ = ("file", "on_read")

    def __init__(self, file: IO[bytes], on_read: Callable[[int], object]) -> None:
        self.file = file
        self.on_read = on_read

    def read(self, size: int | None = -1) -> bytes:
        """Up to *size* bytes of *file* (all that is left for ``None`` or a negative
        *size*)."""
        data = self.file.read(-1 if size is None else size)
        if data:
            self.on_read(len(data))
        return data

    def readable(self) -> bool:
        """Always true: this object is only read."""
        return True


def copyable(source: object) -> TypeGuard[IO[bytes] | CountedFile]:
    """Whether the rest of *source* can be copied inside the kernel (:class:`FileTail`).

    True for an ``io.FileIO``, or an ``io.BufferedReader`` or ``io.BufferedRandom`` over
    one (what ``open(path, "rb")`` returns), open for reading a regular file; for a
    stream :func:`open_stream` opened (a stored value's file); and for a
    :class:`CountedFile` reading either: what they read is the file's bytes from their
    position on. Subclasses and other wrappers may change what they read (a decompressing
    reader's ``fileno`` is its compressed file's), so they are read as any stream.
    """
    return _span(_file_of(source)) is not None


def _file_of(source: object) -> object:
    return source.file if isinstance(source, CountedFile) else source


class _Span(NamedTuple):
    """Where the bytes a file object reads are: descriptor *fd*, from offset ``base`` +
    its ``tell()`` up to offset *end* (``None``: the end of the file)."""

    fd: int
    base: int
    end: int | None


def _span(file: object) -> _Span | None:
    """The bytes *file* reads unchanged (see :func:`copyable`), or ``None``."""
    try:
        buffered = type(file) in (io.BufferedReader, io.BufferedRandom)
        raw = file.raw if buffered else file  # type: ignore[attr-defined]
        if type(raw) is io.FileIO and not raw.closed and raw.readable():
            span = _Span(raw.fileno(), 0, None)
        elif type(raw) is _PositionalReader and type(file) is io.BufferedReader:
            span = _Span(raw.fd(), raw.start, raw.end)
        else:
            return None
        return span if stat.S_ISREG(os.fstat(span.fd).st_mode) else None
    except (OSError, ValueError):  # a detached or closed stream
        return None


def _descriptor_of(file: object) -> int | None:
    """The descriptor *file* reads from, if it tells one (``None`` otherwise)."""
    span = _span(file)
    if span is not None:
        return span.fd
    try:
        return int(file.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, TypeError):  # no file, closed, detached
        return None


class FileTail:
    """Data for :func:`atomic_write`: *head*, bytes a caller already read from the binary
    file *source*, then the rest of *source* from its position to its end.

    When *source* is :func:`copyable`, the rest is copied inside the kernel
    (``os.copy_file_range``), never passing through this process. The copy starts at
    ``source.tell()``: a buffered reader may have read ahead, so its descriptor's own
    offset is not used. Where the kernel refuses (another file system, no support, an
    error), the rest, from where the kernel stopped, is read in chunks, as it is for any
    other *source*; a final read also finds bytes a file reports no size for (such as
    ``/proc`` files). Either way *source* is left at its end, as reading it would leave
    it, and a :class:`CountedFile` counts every byte taken.

    *progress* is called with the running total of bytes written (*head* included) after
    each block of the rest. After a failure, :attr:`source_failed` tells whether reading
    *source* raised it (rather than writing).
    """

    __slots__ = ("_writeback", "head", "progress", "source", "source_failed", "written")

    def __init__(
        self,
        head: bytes,
        source: IO[bytes] | CountedFile | _Readable,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        self.head = head
        self.source = source
        self.progress = progress
        self.source_failed = False
        #: Bytes written so far by :meth:`write_to`.
        self.written = 0
        self._writeback: _Writeback | None = None

    def write_to(self, fd: int, *, durable: bool = False) -> int:
        """Write the head and the rest of the source at *fd*'s position; the count.

        With *durable* (the caller fsyncs *fd* next), the disk writes of each few MiB
        start as soon as they are copied, so the fsync waits for the last ones only.
        Raises ``ValueError``, writing nothing, when *fd* is the source's own file (its
        end would move ahead with every block written, so the copy would never end).
        """
        self._refuse_own_file(fd)
        self._writeback = _Writeback(fd) if durable else None
        write_all(fd, self.head)
        self.written = len(self.head)
        self._copy_in_kernel(fd)
        while True:
            chunk = self._from_source(lambda: read_chunk(self.source, _CHUNK))
            if not chunk:
                return self.written
            write_all(fd, chunk)
            self._advance(len(chunk))

    def _refuse_own_file(self, fd: int) -> None:
        """Raise ``ValueError`` if *fd* writes the regular file the source reads."""
        source = _descriptor_of(_file_of(self.source))
        if source is None:
            return
        target = os.fstat(fd)
        if stat.S_ISREG(target.st_mode) and os.path.samestat(target, os.fstat(source)):
            raise ValueError(
                f"cannot copy a file into itself: descriptor {fd} writes the file "
                "the source reads, so the copy would never end"
            )

    def _copy_in_kernel(self, fd: int) -> None:
        """Copy what the kernel will of the source into *fd*, leaving the source after
        it (a :class:`CountedFile` counting it)."""
        file = _file_of(self.source)
        span = _span(file)
        if span is None or _copy_file_range is None:
            return
        assert isinstance(file, io.FileIO | io.BufferedReader | io.BufferedRandom)
        counter = self.source.on_read if isinstance(self.source, CountedFile) else None
        self._from_source(file.flush)  # a BufferedRandom's pending writes go first
        start = self._from_source(file.tell)
        copied = 0
        try:
            while True:
                offset = span.base + start + copied
                want = _COPY_BLOCK if span.end is None else min(_COPY_BLOCK, span.end - offset)
                count = _copy_file_range(span.fd, fd, want, offset) if want > 0 else 0
                if not count:
                    break
                copied += count
                if counter is not None:
                    counter(count)
                self._advance(count)
        except OSError:
            # Refused (EXDEV, EINVAL, ENOSYS, ...) or failing: the read loop takes over
            # from here, and meets a real error again where reading is told from writing.
            pass
        finally:
            self._from_source(lambda: file.seek(start + copied))

    def _from_source(self, call: Callable[[], _T]) -> _T:
        """*call*'s result; an error it raises is marked as the source's."""
        try:
            return call()
        except BaseException:
            self.source_failed = True
            raise

    def _advance(self, count: int) -> None:
        self.written += count
        if self._writeback is not None:
            self._writeback.wrote(count)
        if self.progress is not None:
            self.progress(self.written)


class _Writeback:
    """Starts writing a file's new bytes to the disk every :data:`_COPY_BLOCK` bytes
    written at the descriptor's position, so that an fsync that follows the last write
    has little left to wait for (rather than all of it, begun only then).

    Linux starts the writeback of a range's dirty pages when told they will not be needed
    (``POSIX_FADV_DONTNEED``), and drops none of them while they are dirty or being
    written, so the new file stays cached for its readers. Elsewhere, or where the call
    fails, nothing happens: it is only a hint.
    """

    __slots__ = ("fd", "offset", "pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.pending = 0

    def wrote(self, count: int) -> None:
        """*count* more bytes were written after the previous ones."""
        self.pending += count
        if self.pending < _COPY_BLOCK or _fadvise is None:
            return
        with contextlib.suppress(OSError):
            _fadvise(self.fd, self.offset, self.pending, os.POSIX_FADV_DONTNEED)
        self.offset += self.pending
        self.pending = 0


# -- shared read-only files ------------------------------------------------------------------
# Linux returns at most this many bytes from one read; larger reads loop.
_MAX_READ = 0x7FFFF000
_STREAM_BUFFER = 65536


class SharedFile:
    """An open read-only file descriptor shared by a value and the streams it opens.

    The descriptor is closed once the value and all of its streams are gone, so a value
    keeps reading the data it was created with even after the key is overwritten and
    the old data file is unlinked (POSIX semantics).
    """

    __slots__ = ("__weakref__", "fd", "owner")

    def __init__(self, path: str, owner: str = "") -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        weakref.finalize(self, os.close, self.fd)
        #: What the data belongs to, for errors ("key 'x'"); the file's path by default.
        self.owner = owner or repr(path)

    def check_size(self, size: int) -> None:
        """Raise :class:`CorruptFileError` if the file holds fewer than *size* bytes, the
        size its record promises: a truncated data file is never read as short data."""
        actual = os.fstat(self.fd).st_size
        if actual < size:
            raise self.truncated(size, actual)

    def truncated(self, size: int, actual: int) -> CorruptFileError:
        """The error of a data file found holding *actual* bytes of the *size* promised."""
        return CorruptFileError(
            f"the data file of {self.owner} is damaged (truncated): it ends after "
            f"{actual} bytes where {size} were expected"
        )


class _PositionalReader(io.RawIOBase):
    """A seekable raw stream over bytes ``[start, end)`` of a :class:`SharedFile`.

    Reads use ``pread`` at the stream's own position, so any number of streams can read
    the same descriptor at once without disturbing each other.
    """

    def __init__(self, shared: SharedFile, start: int, end: int) -> None:
        super().__init__()
        self._shared: SharedFile | None = shared
        #: The range read, as offsets in the file.
        self.start = start
        self.end = max(start, end)
        self._position = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position - self.start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self.start, io.SEEK_CUR: self._position, io.SEEK_END: self.end}
        target = base[whence] + offset
        if target < self.start:
            raise ValueError(f"negative seek position {target - self.start}")
        self._position = target
        return self.tell()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.end - self._position, _MAX_READ)
        if want <= 0:
            return 0
        if hasattr(os, "preadv"):
            count = os.preadv(self.fd(), [view[:want]], self._position)
        else:
            chunk = os.pread(self.fd(), want, self._position)
            count = len(chunk)
            view[:count] = chunk
        if count == 0:
            self._short_read()
        self._position += count
        return count

    def read(self, size: int | None = -1) -> bytes:
        left = self.end - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        if size > _MAX_READ:
            return self.readall()
        chunk = os.pread(self.fd(), size, self._position)
        if not chunk:
            self._short_read()
        self._position += len(chunk)
        return chunk

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(min(_MAX_READ, self.end - self._position)):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._shared = None
        super().close()

    def _short_read(self) -> None:
        """The file ended before the range did: it was truncated after being opened."""
        assert self._shared is not None  # fd() just succeeded
        size = os.fstat(self._shared.fd).st_size
        raise self._shared.truncated(self.end, size)

    def fd(self) -> int:
        """The descriptor read (``ValueError`` once the stream is closed)."""
        if self._shared is None:
            raise ValueError("I/O operation on a closed stream")
        return self._shared.fd


def open_stream(shared: SharedFile, start: int, end: int) -> IO[bytes]:
    """A buffered, seekable binary stream over bytes ``[start, end)`` of *shared*."""
    return io.BufferedReader(_PositionalReader(shared, start, end), _STREAM_BUFFER)
