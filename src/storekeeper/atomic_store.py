"""One value in one file, replaced atomically: ``atomic_store.open(path, default=...)``.

A small state file that is never corrupted::

    from storekeeper import atomic_store

    with atomic_store.open("runs.json", default=[]) as store:
        store.value.append("another run")      # written when the block exits

Only :meth:`AtomicStore.commit` (called by leaving the outermost ``with`` block, or by
every exit unless ``ignore_inner_exits=True``) writes, and it writes through
:func:`storekeeper.files.atomic_write`: a crash leaves the old file or the new one.

What it promises beyond writing atomically:

- leaving a ``with`` block by an exception writes nothing, and the outermost such exit
  puts ``value`` back to what the file holds: the old state stays;
- the ``default`` is deep-copied, never shared with the caller;
- an empty or unparsable file raises :class:`~storekeeper.errors.CorruptFileError`
  naming the file, instead of being silently replaced or raising a bare parser error;
- JSON is UTF-8 whatever the locale, and a file's permission bits survive a commit (new
  files follow the umask);
- ``lock=True`` makes read-modify-write safe between processes: entering the outermost
  ``with`` takes an inter-process lock on ``<path>.lock`` and re-reads the file, and the
  commit happens before the lock is released, so concurrent writers never lose updates.
"""

from __future__ import annotations

import builtins
import copy
import errno
import io
import json
import os
import pickle
import threading
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import IO, Any

from storekeeper.errors import (
    CorruptFileError,
    InvalidValueError,
    MissingDependencyError,
    UnknownFormatError,
)
from storekeeper.files import FileLock, atomic_write

__all__ = [
    "AbstractFormatBstr",
    "AbstractFormatFile",
    "AtomicStore",
    "WrapBinaryFormat",
    "open",
]


class AbstractFormatBstr:
    """Base for a custom format that turns a value into a string and back.

    Override :meth:`dumps` and :meth:`loads`; both receive the store's ``dump_kwargs`` /
    ``load_kwargs``. Return ``bytes`` for a binary format, ``str`` for a text format
    (then pass ``is_binary=False`` to :func:`open`).
    """

    def dumps(self, obj: Any, **kwargs: Any) -> bytes | str:
        """Serialise *obj*."""
        raise NotImplementedError

    def loads(self, bstr: bytes | str, **kwargs: Any) -> Any:
        """Parse what :meth:`dumps` produced."""
        raise NotImplementedError


class AbstractFormatFile:
    """Base for a custom format that writes to and reads from a file object.

    Override :meth:`dump` and :meth:`load`. The file object is binary unless the store
    was opened with ``is_binary=False``, in which case it is a UTF-8 text stream.
    """

    def dump(self, obj: Any, fp: IO[Any], **kwargs: Any) -> None:
        """Write *obj* to *fp*."""
        raise NotImplementedError

    def load(self, fp: IO[Any], **kwargs: Any) -> Any:
        """Read a value back from *fp*."""
        raise NotImplementedError


class WrapBinaryFormat(AbstractFormatFile):
    """Adapt a ``dumps``/``loads`` format (object or module) to ``dump``/``load``."""

    def __init__(self, format_bstr: Any) -> None:
        self.format_bstr = format_bstr

    def dump(self, obj: Any, fp: IO[Any], **kwargs: Any) -> None:
        """Write ``format_bstr.dumps(obj)`` to *fp*."""
        fp.write(self.format_bstr.dumps(obj, **kwargs))

    def load(self, fp: IO[Any], **kwargs: Any) -> Any:
        """Parse the whole of *fp* with ``format_bstr.loads``."""
        return self.format_bstr.loads(fp.read(), **kwargs)


# A codec turns a value into the file's bytes and back; kwargs are bound in.
_Encode = Callable[[Any], bytes]
_Decode = Callable[[bytes], Any]


def _string_codec(
    dumps: Callable[..., Any], loads: Callable[..., Any], binary: bool
) -> tuple[_Encode, _Decode]:
    def encode(value: Any) -> bytes:
        out = dumps(value)
        return out.encode("utf-8") if isinstance(out, str) else bytes(out)

    def decode(data: bytes) -> Any:
        return loads(data if binary else data.decode("utf-8"))

    return encode, decode


def _file_codec(
    fmt: Any, binary: bool, dump_kw: dict[str, Any], load_kw: dict[str, Any]
) -> tuple[_Encode, _Decode]:
    def encode(value: Any) -> bytes:
        if binary:
            buffer = io.BytesIO()
            fmt.dump(value, buffer, **dump_kw)
            return buffer.getvalue()
        text = io.StringIO()
        fmt.dump(value, text, **dump_kw)
        return text.getvalue().encode("utf-8")

    def decode(data: bytes) -> Any:
        source: IO[Any] = io.BytesIO(data) if binary else io.StringIO(data.decode("utf-8"))
        return fmt.load(source, **load_kw)

    return encode, decode


def _optional_module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {name!r} format needs the {name} package: pip install 'storekeeper[{name}]'"
        ) from exc


def _named_format(name: str) -> tuple[Any, bool]:
    if name == "json":
        return json, False
    if name == "pickle":
        return pickle, True
    if name == "msgpack":
        module = _optional_module("msgpack")
        return _Functions(module.packb, module.unpackb), True
    if name == "bson":
        module = _optional_module("bson")
        if hasattr(module, "dumps"):  # py-bson
            return _Functions(module.dumps, module.loads), True
        return _Functions(module.encode, module.decode), True  # pymongo's bson
    raise UnknownFormatError(
        f"unknown format {name!r}: use 'json', 'pickle', 'msgpack', 'bson' or an object "
        "with dump/load or dumps/loads"
    )


class _Functions:
    """A ``dumps``/``loads`` pair under the names the codec looks for."""

    def __init__(self, dumps: Callable[..., Any], loads: Callable[..., Any]) -> None:
        self.dumps = dumps
        self.loads = loads


def _has(obj: Any, *names: str) -> bool:
    return all(getattr(obj, name, None) for name in names)


def _resolve(requested: Any, is_binary: bool | None) -> tuple[Any, bool]:
    """The format object and whether its files are binary, from what ``open`` got."""
    if requested is None or requested is json:
        requested = "json"
    if isinstance(requested, str):
        fmt, binary_hint = _named_format(requested)
    elif _has(requested, "dump", "load") or _has(requested, "dumps", "loads"):
        fmt, binary_hint = requested, True
    else:
        raise UnknownFormatError(f"{requested!r} has neither dump/load nor dumps/loads")
    return fmt, binary_hint if is_binary is None else is_binary


def _codec(
    fmt: Any, binary: bool, dump_kw: dict[str, Any], load_kw: dict[str, Any]
) -> tuple[_Encode, _Decode]:
    # The standard modules' string functions are much faster than streaming to a file
    # object and produce the same bytes; custom formats get the interface they provide.
    has_strings = _has(fmt, "dumps", "loads")
    if (
        fmt is json
        or fmt is pickle
        or isinstance(fmt, _Functions)
        or (has_strings and not getattr(fmt, "dump", None))
    ):
        return _string_codec(
            lambda value: fmt.dumps(value, **dump_kw),
            lambda data: fmt.loads(data, **load_kw),
            binary,
        )
    return _file_codec(fmt, binary, dump_kw, load_kw)


class AtomicStore:
    """A value kept in the file *path*; see the module docstring and :func:`open`.

    ``value`` is the in-memory value: read it, replace it or mutate it, then
    :meth:`commit` (or leave the ``with`` block) to write it. One object is meant for
    one thread at a time; threads and processes that share the file each open their own
    store, with ``lock=True`` when they read-modify-write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        default: Any,
        format: Any,  # noqa: A002 - the public attribute name
        is_binary: bool,
        load_kwargs: Mapping[str, Any],
        dump_kwargs: Mapping[str, Any],
        ignore_inner_exits: bool = False,
        *,
        lock: bool = False,
        lock_timeout: float | None = None,
        durable: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        _check_folder(self.path)
        self.format = format
        self.is_binary = is_binary
        self.load_kwargs = dict(load_kwargs)
        self.dump_kwargs = dict(dump_kwargs)
        self.ignore_inner_exits = ignore_inner_exits
        self.durable = durable
        self.level = 0
        # Copied when used, never shared: the file usually exists, and copying a large
        # default up front would cost as much as a commit.
        self._default = default
        self._encode, self._decode = _codec(format, is_binary, self.dump_kwargs, self.load_kwargs)
        self._lock = FileLock(self.path + ".lock", timeout=lock_timeout) if lock else None
        self._guard = threading.RLock()
        self.value: Any = self._read()

    def _read(self) -> Any:
        try:
            with builtins.open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return copy.deepcopy(self._default)
        if not data:
            raise CorruptFileError(f"{self.path} is empty: it holds no stored value")
        try:
            return self._decode(data)
        except Exception as exc:
            raise CorruptFileError(f"{self.path} cannot be parsed: {exc}") from exc

    def reload(self) -> None:
        """Replace ``value`` with what the file holds now (the default if it is absent)."""
        self.value = self._read()

    def commit(self) -> None:
        """Write ``value`` to the file atomically (durably unless ``durable=False``).

        If the value cannot be serialised, :class:`InvalidValueError` is raised and the
        file is untouched. With ``lock=True`` outside a ``with`` block the write itself is
        done under the lock, but only the ``with`` block makes read-modify-write safe.
        """
        try:
            payload = self._encode(self.value)
        except Exception as exc:
            raise InvalidValueError(f"cannot serialise the value for {self.path}: {exc}") from exc
        if self._lock is not None and not self._lock.held:
            with self._lock:
                atomic_write(self.path, payload, durable=self.durable)
        else:
            atomic_write(self.path, payload, durable=self.durable)

    def __enter__(self) -> AtomicStore:
        with self._guard:
            self.level += 1
            if self.level == 1 and self._lock is not None:
                try:
                    self._lock.acquire()
                    self.reload()
                except BaseException:
                    self.level -= 1
                    if self._lock.held:
                        self._lock.release()
                    raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._guard:
            if self.level <= 0:
                raise RuntimeError(f"{self.path}: __exit__ without a matching __enter__")
            self.level -= 1
            outermost = self.level == 0
            try:
                if exc_type is None:
                    if outermost or not self.ignore_inner_exits:
                        self.commit()
                elif outermost:
                    self.reload()
            finally:
                if outermost and self._lock is not None and self._lock.held:
                    self._lock.release()

    def __repr__(self) -> str:
        return f"<AtomicStore {self.path!r} level={self.level}>"


def _check_folder(path: str) -> None:
    """Raise :class:`FileNotFoundError` naming the folder of *path* unless it is an
    existing directory: every commit writes a temporary file there, and finding out
    only then (naming the temporary file) is too late and says the wrong thing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot keep {path!r}: its folder does not exist", folder
        )


def open(  # noqa: A001 - the public name: atomic_store.open(...)
    path: str | os.PathLike[str],
    default: Any = None,
    format: Any = None,  # noqa: A002 - the public keyword
    dump_kwargs: Mapping[str, Any] | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    is_binary: bool | None = None,
    ignore_inner_exits: bool = False,
    *,
    lock: bool = False,
    lock_timeout: float | None = None,
    durable: bool = True,
) -> AtomicStore:
    """Open the value stored at *path*, reading it now (*default*, copied, if absent).

    *format* is ``None``/``'json'`` (UTF-8 text), ``'pickle'``, ``'msgpack'``,
    ``'bson'`` (each when installed), or any module or object with ``dump``/``load``
    (used with file objects) or ``dumps``/``loads``; files are binary except for JSON
    unless *is_binary* says otherwise. *dump_kwargs* / *load_kwargs* are passed on every
    call. *ignore_inner_exits* makes only the outermost ``with`` exit commit. *lock*
    re-reads the file under an inter-process lock when the outermost ``with`` block is
    entered and commits before releasing it (waiting at most *lock_timeout* seconds,
    then :class:`~storekeeper.errors.LockTimeoutError`). *durable* fsyncs every commit.

    Raises :class:`~storekeeper.errors.UnknownFormatError` for a format it cannot use,
    :class:`~storekeeper.errors.MissingDependencyError` for a format whose package is
    missing, :class:`~storekeeper.errors.CorruptFileError` if the file exists but
    is empty or cannot be parsed, and :class:`FileNotFoundError` naming the folder if
    the folder that would hold the file does not exist.
    """
    fmt, binary = _resolve(format, is_binary)
    return AtomicStore(
        path,
        default,
        fmt,
        binary,
        load_kwargs or {},
        dump_kwargs or {},
        ignore_inner_exits,
        lock=lock,
        lock_timeout=lock_timeout,
        durable=durable,
    )
