"""Per-session directories holding crash-safe checkpoints.

A :class:`SessionStorageRepository` is a directory of sessions; each session is a
directory ``<prefix><UTC time>.session`` wrapped by a :class:`SessionStorage`, which
saves and loads one opaque ``bytes`` checkpoint::

    repository = SessionStorageRepository()          # the user's cache directory
    storage = SessionStorage.create(repository.location)
    storage.save_checkpoint(b"state")
    assert storage.load_checkpoint() == b"state"

:meth:`SessionStorage.save_checkpoint` writes ``session.next``, fsyncs it, keeps the
current checkpoint as ``session.prev`` and renames ``session.next`` over ``session``, then
fsyncs the directory. It never swallows an error: a failed write,
fsync or rename raises and the previous checkpoint stays intact. Each checkpoint file
carries its length and a CRC-32, so a torn or corrupted ``session`` is detected on load,
which then returns ``session.prev`` and logs a warning.

Concurrent savers are excluded by a kernel lock on ``session.lock`` (released when its
holder dies). A ``session.next`` found while nobody holds that lock was left by a dead
process and is discarded; only a live saver makes another one raise
:class:`LockedStorageError`. Only portable calls are used (POSIX ``flock`` and
``rename``), so Linux and macOS behave the same.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import shutil
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISDIR

from storekeeper import files
from storekeeper.errors import CorruptFileError, LockedStorageError, LockTimeoutError

__all__ = ["LockedStorageError", "SessionStorage", "SessionStorageRepository"]

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "STOREKEEPER_SESSION_REPOSITORY"

_MAGIC = b"SKCKPT1\n"
_HEADER = struct.Struct(">8sQ")  # magic, length of the data
_TRAILER = struct.Struct(">I")  # CRC-32 of the data
# From this size on, the checksum is computed while the data is being written back to
# the device (below it, the checksum costs less than the extra system call).
_CRC_DURING_WRITEBACK = 1 << 20
# Starts writing a file's dirty pages back; not every platform has it (macOS lacks it).
_start_writeback = getattr(os, "posix_fadvise", None)


def _slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _user_cache_directory() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


class SessionStorageRepository:
    """The directory *location* (default: :meth:`get_default_location`) of sessions."""

    def __init__(self, location: str | os.PathLike[str] | None = None) -> None:
        self._location = os.fspath(location) if location is not None else None
        if self._location is None:
            self._location = self.get_default_location()

    @classmethod
    def get_default_location(cls) -> str:
        """``$STOREKEEPER_SESSION_REPOSITORY`` (made absolute), else the user cache.

        The user cache is ``~/.cache`` (or ``$XDG_CACHE_HOME``) on Linux,
        ``~/Library/Caches`` on macOS and ``%LOCALAPPDATA%`` on Windows, followed by
        ``storekeeper/sessions``. The directory is created if missing; a path that is
        not a writable directory raises ``NotADirectoryError`` / ``PermissionError``
        rather than silently moving the sessions elsewhere.
        """
        configured = os.environ.get(ENVIRONMENT_VARIABLE)
        if configured:
            location = os.path.abspath(configured)
        else:
            location = os.fspath(_user_cache_directory() / "storekeeper" / "sessions")
        try:
            os.makedirs(location, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                f"session repository {location} exists and is not a directory"
            ) from None
        if not os.access(location, os.W_OK | os.X_OK):
            raise PermissionError(f"session repository {location} is not writable")
        return location

    @property
    def location(self) -> str:
        """The repository's directory."""
        assert self._location is not None
        return self._location

    def get_storage_list(self) -> list[SessionStorage]:
        """The sessions here, most recently used (saved to) first; ``[]`` if none.

        Hidden entries, symlinks and anything not named ``*.session`` are ignored, and a
        session removed while listing is simply left out.
        """
        try:
            names = os.listdir(self.location)
        except FileNotFoundError:
            return []
        found: list[tuple[float, str]] = []
        for name in names:
            if name.startswith(".") or not name.endswith(".session"):
                continue
            path = os.path.join(self.location, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if S_ISDIR(info.st_mode):
                found.append((info.st_mtime, path))
        found.sort(key=lambda item: item[0], reverse=True)
        return [SessionStorage(path) for _, path in found]

    def __iter__(self) -> Iterator[SessionStorage]:
        return iter(self.get_storage_list())

    def __repr__(self) -> str:
        return f"<SessionStorageRepository location:{self.location!r}>"


class SessionStorage:
    """One session's directory *location* and its checkpoint (nothing is created here)."""

    _SESSION_FILE = "session"
    _SESSION_FILE_NEXT = "session.next"
    _SESSION_FILE_PREV = "session.prev"
    _LOCK_FILE = "session.lock"

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self._location = os.fspath(location)
        self._session_path = os.path.join(self._location, self._SESSION_FILE)
        self._next_path = os.path.join(self._location, self._SESSION_FILE_NEXT)
        self._prev_path = os.path.join(self._location, self._SESSION_FILE_PREV)
        self._thread_lock = threading.Lock()
        self._file_lock = files.FileLock(self._path(self._LOCK_FILE), timeout=0, keep_open=True)

    @classmethod
    def create(cls, base_dir: str | os.PathLike[str], prefix: str = "pbox-") -> SessionStorage:
        """Create a new session directory in *base_dir* (created if needed).

        The name is the slugified *prefix*, the UTC time and ``.session``, with ``_(n)``
        added when that name is taken; ``mkdir`` decides, so concurrent creators always
        get distinct directories.
        """
        base = os.fspath(base_dir)
        os.makedirs(base, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H.%M.%S")
        stem = _slugify(prefix) + stamp
        for attempt in range(10_000):
            suffix = f"_({attempt})" if attempt else ""
            location = os.path.join(base, f"{stem}{suffix}.session")
            try:
                os.mkdir(location)
            except FileExistsError:
                continue
            return cls(location)
        raise FileExistsError(f"no free session name for {stem!r} in {base}")

    @property
    def location(self) -> str:
        """The session's directory."""
        return self._location

    @property
    def id(self) -> str:
        """The session's identifier: its directory name without ``.session``."""
        return os.path.splitext(os.path.basename(self._location))[0]

    @property
    def session_file(self) -> str:
        """The path of the current checkpoint file."""
        return self._session_path

    def _path(self, name: str) -> str:
        return os.path.join(self._location, name)

    def load_checkpoint(self) -> bytes:
        """The most recent good checkpoint, or ``b''`` if none was ever saved.

        If ``session`` is torn or corrupted, the previous checkpoint is returned and a
        warning logged; if that is bad too, :class:`CorruptFileError` names the file.
        ``FileNotFoundError`` if the session directory does not exist.
        """
        if not os.path.isdir(self._location):
            raise FileNotFoundError(2, "no such session directory", self._location)
        current = self._read(self.session_file)
        if isinstance(current, bytes):
            return current
        previous = self._read(self._prev_path)
        if isinstance(previous, bytes):
            if current is not None:
                logger.warning("%s; falling back to the previous checkpoint", current)
            return previous
        if current is None and previous is None:
            return b""
        raise CorruptFileError(str(current or previous))

    @staticmethod
    def _read(path: str) -> bytes | str | None:
        """The checkpoint in *path*, ``None`` if absent, or a message saying what is wrong."""
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        return _decode(raw, path)

    def save_checkpoint(self, data: bytes) -> None:
        """Make *data* the session's checkpoint, durably and atomically.

        Raises ``TypeError`` if *data* is not ``bytes``, :class:`LockedStorageError`
        while another live process or thread is saving to this session, and the
        ``OSError`` of any failed write, fsync or rename: after an error the previous
        checkpoint is intact, and once this returns the new one survives a crash.
        """
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._lock()
        try:
            self._save_locked(data)
        finally:
            self._unlock()

    def _lock(self) -> None:
        """Take the kernel lock on ``session.lock``, or raise :class:`LockedStorageError`.

        The lock file stays open between saves; a forked child opens its own, since a
        descriptor inherited across ``fork`` would share its parent's lock.
        """
        if not self._thread_lock.acquire(blocking=False):
            raise self._locked()
        try:
            self._file_lock.acquire()
        except LockTimeoutError:
            self._thread_lock.release()
            raise self._locked() from None
        except BaseException:
            self._thread_lock.release()
            raise

    def _unlock(self) -> None:
        self._file_lock.release()
        self._thread_lock.release()

    def _locked(self) -> LockedStorageError:
        return LockedStorageError(
            "another process or thread is saving a checkpoint to this session",
            self._next_path,
        )

    def _save_locked(self, data: bytes) -> None:
        next_path = self._next_path
        fd = self._create_next()
        try:
            try:
                _write_checkpoint(fd, data)
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._session_path, self._prev_path)
            os.replace(next_path, self._session_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(next_path)
            raise
        files.fsync_directory(self._location)

    def _create_next(self) -> int:
        """Create ``session.next`` for writing, discarding one left by a dead saver."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            return os.open(self._next_path, flags, 0o644)
        except FileExistsError:  # nobody else holds the lock, so its writer is dead
            os.unlink(self._next_path)
            logger.info("discarded %s left by an interrupted save", self._next_path)
            return os.open(self._next_path, flags, 0o644)

    def break_lock(self) -> None:
        """Remove a leftover ``session.next`` file (nothing happens if there is none).

        Rarely needed: a file left by a dead process is discarded by the next save. If
        the saver is still alive, its save then fails with an error instead of
        completing; the checkpoint it was replacing stays.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._next_path)

    def remove(self) -> None:
        """Delete the session directory and everything in it (no error if it is gone)."""
        with self._thread_lock:
            self._file_lock.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._location)

    def __repr__(self) -> str:
        return f"<SessionStorage location:{self._location!r}>"


def _write_checkpoint(fd: int, data: bytes) -> None:
    """Header, data and CRC trailer to *fd*, durably (through the files seams)."""
    header = _HEADER.pack(_MAGIC, len(data))
    if len(data) < _CRC_DURING_WRITEBACK:
        files.write_all(fd, header + data + _TRAILER.pack(zlib.crc32(data)))
        files.fsync(fd)
        return
    # A large checkpoint's checksum is computed while the device writes its data: the
    # hint makes Linux start that write-back now (POSIX_FADV_DONTNEED starts writing
    # dirty pages back without waiting; only pages already clean leave the cache). The
    # one fsync below waits for all of it, trailer included: durability rests on it.
    files.write_all(fd, header)
    files.write_all(fd, data)
    if _start_writeback is not None:
        with contextlib.suppress(OSError):  # a refused hint costs only the overlap
            _start_writeback(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    files.write_all(fd, _TRAILER.pack(zlib.crc32(data)))
    files.fsync(fd)


def _decode(raw: bytes, path: str) -> bytes | str:
    """The data of checkpoint file content *raw*, or a message saying why it is bad."""
    overhead = _HEADER.size + _TRAILER.size
    if len(raw) < overhead or raw[:8] != _MAGIC:
        return f"{path} is not a complete checkpoint file"
    _, length = _HEADER.unpack_from(raw)
    if length != len(raw) - overhead:
        return f"{path} is torn: {len(raw) - overhead} of {length} bytes present"
    data = raw[_HEADER.size : _HEADER.size + length]
    (expected,) = _TRAILER.unpack_from(raw, _HEADER.size + length)
    if zlib.crc32(data) != expected:
        return f"{path} is corrupted: its checksum does not match"
    return data
