"""Values: what ``store.get(key)`` returns, and what ``store.set(key, value)`` accepts.

A :class:`Value` bundles a key's byte stream with its metadata and a few attributes the
store controls (``size``, ``created``, ``modified``, ``version``). It opens nothing until
asked: each access to :attr:`Value.data` opens a *fresh* stream positioned at the start,
and each access to :attr:`Value.metadata` returns an independent copy. A value also
unpacks as the 2-tuple ``(data, metadata)``, as in ``data, metadata = store.get(key)``.
"""

from __future__ import annotations

import abc
import io
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, NamedTuple, cast

from storekeeper.errors import AuthorizationError, InvalidValueError
from storekeeper.store._validate import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    decode_metadata,
    encode_metadata,
)
from storekeeper.store.utils import buffer_iterator

__all__ = [
    "BytesValue",
    "Head",
    "KeyInfo",
    "LimitedStream",
    "StreamValue",
    "StringValue",
    "Value",
    "normalize_range",
]

BinaryStream = IO[bytes]
ProgressCallback = Callable[..., object]


class KeyInfo(NamedTuple):
    """What a detailed listing (:meth:`~storekeeper.store.AbstractReadOnlyStore.list_info`)
    tells about one key without reading its data: the attributes its :class:`Value`
    would have (``None`` where the store does not know one), and its ``metadata`` when
    the listing was asked for it (``None`` otherwise)."""

    size: int | None
    created: float | None
    modified: float | None
    version: str | None
    metadata: Metadata | None = None


def normalize_range(start: int | None, end: int | None, size: int | None) -> tuple[int, int | None]:
    """Resolve an end-exclusive ``(start, end)`` byte range against a value of *size*.

    ``None`` means "from the beginning" / "to the end"; negative numbers count from the
    end as in Python slices (only when *size* is known). The result is clamped to the
    value, so ``(start, end)`` always satisfies ``0 <= start`` and ``end is None or
    start <= end``.
    """
    if size is not None:
        lo, hi, _ = slice(start, end).indices(size)
        return lo, max(lo, hi)
    if (start is not None and start < 0) or (end is not None and end < 0):
        raise InvalidValueError("negative range bounds need a value of known size")
    lo = start or 0
    return lo, None if end is None else max(lo, end)


class Value(abc.ABC):
    """A key's data stream and metadata, plus store-controlled attributes.

    Attributes (``None`` where a backend cannot tell):

    - ``size``: number of bytes in the data.
    - ``created`` / ``modified``: UTC POSIX timestamps (float seconds) of the key's
      creation and last modification.
    - ``version``: an opaque token that changes on every write of the key (ETag-like);
      pass it back as ``if_version=`` for a conditional write.
    """

    size: int | None = None
    created: float | None = None
    modified: float | None = None
    version: str | None = None

    @property
    @abc.abstractmethod
    def data(self) -> BinaryStream:
        """A new readable binary stream over the whole data; close it (or use ``with``)."""

    @property
    @abc.abstractmethod
    def metadata(self) -> Metadata:
        """A copy of the key's metadata dict; changing it does not change the store."""

    @property
    def permissions(self) -> dict[str, set[str]]:
        """The key's permissions (permission -> tags), for owners of the key only.

        Stores without permissions raise :class:`AuthorizationError`.
        """
        raise AuthorizationError("this value carries no permissions (key not owned by user)")

    def range(self, start: int | None = None, end: int | None = None) -> BinaryStream:
        """Return a new stream over bytes ``start`` up to (not including) ``end``.

        The default opens :attr:`data`, skips ``start`` bytes and limits the rest; it reads
        past the skipped part, so backends that can seek override it.
        """
        lo, hi = normalize_range(start, end, self.size)
        stream = self.data
        _skip(stream, lo)
        if hi is None:
            return stream
        return cast(BinaryStream, LimitedStream(stream, hi - lo))

    def iterdata(
        self, buffer_size: int = DEFAULT_BUFFER_SIZE, progress: ProgressCallback | None = None
    ) -> Iterator[bytes]:
        """Iterate over the data in chunks of at most *buffer_size* bytes.

        *progress*, when given, is called as ``progress(step=bytes_so_far)`` after each
        chunk. The stream is closed when the iteration finishes or is abandoned.
        """
        with self.data as stream:
            yield from buffer_iterator(stream, buffer_size, progress)

    # The pair protocol: ``data, metadata = store.get(key)``.
    def __iter__(self) -> Iterator[Any]:
        yield self.data
        yield self.metadata

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        if index in (0, -2):
            return self.data
        if index in (1, -1):
            return self.metadata
        raise IndexError(f"a Value unpacks as (data, metadata); index {index} is out of range")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} size={self.size} version={self.version}>"


class Head(NamedTuple):
    """What :meth:`~storekeeper.store.AbstractReadOnlyStore.head` tells of a key without
    reading its data: its *version* and *size* (as the key's :class:`Value` reports
    them, ``None`` where the store cannot tell) and a fresh copy of its *metadata*."""

    version: str | None
    size: int | None
    metadata: Metadata


class _MetadataHolder(Value):
    """Keeps metadata as JSON text so every access returns an independent copy cheaply."""

    def __init__(
        self,
        metadata: Mapping[str, Any] | None,
        metadata_json: str | None,
        created: float | None,
        modified: float | None,
        version: str | None,
        permissions: Mapping[str, set[str]] | None,
    ) -> None:
        if metadata_json is None:
            metadata_json = encode_metadata({} if metadata is None else metadata)
        self._metadata_json = metadata_json
        now = time.time()
        self.created = now if created is None else created
        self.modified = self.created if modified is None else modified
        self.version = version
        self._permissions = (
            None if permissions is None else {k: set(v) for k, v in permissions.items()}
        )

    @property
    def metadata(self) -> Metadata:
        """A fresh copy of the metadata on every access."""
        return decode_metadata(self._metadata_json)

    @property
    def permissions(self) -> dict[str, set[str]]:
        """The permissions given at construction; :class:`AuthorizationError` if none."""
        if self._permissions is None:
            return super().permissions
        return {k: set(v) for k, v in self._permissions.items()}


class BytesValue(_MetadataHolder):
    """A value held in memory as ``bytes``.

    Use it to hand data to ``store.set(key, BytesValue(b'...', {'a': 1}))``; backends
    return it for small values. ``data`` and ``range`` return fresh ``BytesIO`` objects.
    """

    def __init__(
        self,
        data: bytes = b"",
        metadata: Mapping[str, Any] | None = None,
        created: float | None = None,
        modified: float | None = None,
        version: str | None = None,
        permissions: Mapping[str, set[str]] | None = None,
        *,
        metadata_json: str | None = None,
    ) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidValueError(f"BytesValue holds bytes, not {type(data).__name__}")
        super().__init__(metadata, metadata_json, created, modified, version, permissions)
        self._bytes = bytes(data)
        self.size = len(self._bytes)

    @property
    def data(self) -> BinaryStream:
        """A new ``BytesIO`` over the data."""
        return io.BytesIO(self._bytes)

    @property
    def bytes(self) -> bytes:
        """The data itself (immutable, so no copy is needed)."""
        return self._bytes

    def range(self, start: int | None = None, end: int | None = None) -> BinaryStream:
        """A new ``BytesIO`` over ``data[start:end]`` (end-exclusive)."""
        lo, hi = normalize_range(start, end, self.size)
        return io.BytesIO(self._bytes[lo:hi])


#: Another name for :class:`BytesValue`, kept for code written against older APIs.
StringValue = BytesValue


class StreamValue(_MetadataHolder):
    """A value whose data is opened lazily by a callable.

    *opener* returns a new readable binary stream positioned at the start each time it is
    called; *range_opener*, when given, returns a stream over ``[start, end)`` directly
    (for backends that can seek or ask for a byte range).
    """

    def __init__(
        self,
        opener: Callable[[], BinaryStream],
        metadata: Mapping[str, Any] | None = None,
        size: int | None = None,
        created: float | None = None,
        modified: float | None = None,
        version: str | None = None,
        permissions: Mapping[str, set[str]] | None = None,
        *,
        metadata_json: str | None = None,
        range_opener: Callable[[int, int | None], BinaryStream] | None = None,
    ) -> None:
        super().__init__(metadata, metadata_json, created, modified, version, permissions)
        self._opener = opener
        self._range_opener = range_opener
        self.size = size

    @property
    def data(self) -> BinaryStream:
        """A new stream from the opener."""
        return self._opener()

    def range(self, start: int | None = None, end: int | None = None) -> BinaryStream:
        """A stream over ``[start, end)``, through *range_opener* when there is one."""
        if self._range_opener is None:
            return super().range(start, end)
        lo, hi = normalize_range(start, end, self.size)
        return self._range_opener(lo, hi)


def _skip(stream: BinaryStream, count: int) -> None:
    if count <= 0:
        return
    try:
        if stream.seekable():
            stream.seek(count, io.SEEK_CUR)
            return
    except (AttributeError, OSError):
        pass
    while count > 0:
        chunk = stream.read(min(count, DEFAULT_BUFFER_SIZE))
        if not chunk:
            return
        count -= len(chunk)


class LimitedStream(io.RawIOBase):
    """A read-only stream over at most the first *limit* bytes of the stream *inner*;
    closing it closes *inner* (for a response body: releases its connection)."""

    def __init__(self, inner: BinaryStream, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        """Always true."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read into *buffer*; 0 at the end of the limit or of *inner*."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want <= 0:
            return 0
        chunk = self._inner.read(want)
        view[: len(chunk)] = chunk
        self._left -= len(chunk)
        return len(chunk)

    def read(self, size: int | None = -1) -> bytes:
        """Up to *size* bytes (all that is left for ``-1``/``None``)."""
        if size is None or size < 0:
            size = self._left
        chunk = self._inner.read(min(size, self._left)) if self._left > 0 else b""
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        """Close this stream and *inner*."""
        if not self.closed:
            self._inner.close()
        super().close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
