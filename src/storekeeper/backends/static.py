"""``StaticURLStore``: a read-only store over files served by any static host.

The layout (what :func:`storekeeper.export.export_static` writes)::

    ROOT/index.json      {"key": {metadata}, ...}, ASCII-only JSON
    ROOT/data/KEY        the value of KEY; each "/"-separated segment of KEY is one path
                         segment, percent-quoted in URLs
    ROOT/generation.json {"generation": "GEN"} (optional): the name of the export
    ROOT/generations/GEN/index.json, ROOT/generations/GEN/data/KEY
                         the same files, under the name of the export they belong to
    ROOT/generations/GEN/digests.json
                         {"key": "SHA-256 of its data, hex", ...} (optional)

When ``generation.json`` exists, the store reads the index and every data file under
``generations/GEN/`` instead, so what it combines for a key (metadata, size, version,
data) always comes from one export: a re-export swaps the whole tree, and the replaced
generation's paths then answer "not found" rather than the new export's bytes. A read
(``get``, ``get_data``, ``get_data_range``, ``to_bytes``, ``to_file``) that meets a
vanished generation re-reads ``generation.json`` and the index and starts again (a few
times, then :class:`ExportReplacedError`); a :class:`~storekeeper.store.value.Value`
whose export was replaced before its data was read raises :class:`ExportReplacedError`
instead of answering another export's bytes. Without ``generation.json`` (a tree not
written by :func:`~storekeeper.export.export_static`) the top-level files are read, and
a read that straddles a change of the files can mix them.

``root_url`` is ``http://``, ``https://`` (through urllib3, the ``[http]`` extra) or
``file:`` (plain file reads). The store reads ``index.json`` on :meth:`connect` and
again every ``poll`` seconds in a daemon thread; :meth:`StaticURLStore.update_index`
re-reads it at once and emits a set, update or delete event per key that appeared or
changed its data (known from ``digests.json``), changed only its metadata, or
vanished. Queries, listings and ``exists`` are answered from the copy of the index held
in memory (a snapshot replaced whole, so no lock is held while a caller iterates);
``get`` reads the data file.

Keys whose path would be empty, ``.`` or ``..`` in a segment, or a segment longer than a
file name may be (255 bytes), cannot be laid out: :func:`layout_problem` says why, and
such keys in an index are ignored rather than followed outside the root (each logged as
a warning on the ``storekeeper.backends.static`` logger; not a Python warning).

A damaged export (an ``index.json`` or ``generation.json`` that is not what the layout
says, JSON nested too deeply included, or a ``generation.json`` naming a generation
that is not there) raises :class:`~storekeeper.errors.CorruptFileError` naming the file.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import io
import json
import logging
import os
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult

from storekeeper.backends._static_index import (
    EMPTY,
    Index,
    data_segments,
    layout_problem,
    parse_digests,
    parse_index,
)
from storekeeper.backends._static_io import (
    FileInfo,
    Opened,
    ResponseBody,
    auth_headers,
    file_error,
    file_path,
    limit,
    skip,
    status_error,
)
from storekeeper.errors import (
    BackendError,
    BackendUnavailableError,
    CorruptFileError,
    InvalidURLError,
    KeyNotFoundError,
    StorekeeperError,
)
from storekeeper.events import BaseEventManager
from storekeeper.files import save_file
from storekeeper.store.abstract import AbstractReadOnlyStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    StoreCapabilities,
    check_key,
    check_read,
    check_select,
    decode_metadata,
    matches,
    pick_metadata,
    query_terms,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_listing, fold_keys
from storekeeper.store.urls import create, flag, seconds, text, url_options
from storekeeper.store.utils import buffer_iterator, read_stream
from storekeeper.store.value import StreamValue, Value

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "DIGESTS_FILE",
    "ExportReplacedError",
    "StaticURLStore",
    "data_segments",
    "layout_problem",
    "static_requested",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_CAPABILITIES = StoreCapabilities(cross_process=True, ranges=True, persistent=True)
#: URL options a ``?static=true`` URL may carry besides ``static``.
URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "static": flag,
    "data_path": text,
    "query_path": text,
    "poll": seconds,
    "timeout": seconds,
}

BinaryStream = IO[bytes]
#: The file in a generation's folder naming each key's data digest (see the module).
DIGESTS_FILE = "digests.json"
#: How many times a read starts again after meeting a replaced export.
_ATTEMPTS = 5
_GENERATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ExportReplacedError(BackendError):
    """The export a read started from was replaced before the read could finish (or
    kept being replaced while it started again): nothing of another export was
    returned in its place. Reading the key again reads the current export."""


def static_requested(parts: SplitResult) -> bool:
    """Whether a store URL asks for a :class:`StaticURLStore`: its scheme ends in
    ``+static``, or its options hold ``static=true`` (``1``, ``yes``, ``on``)."""
    static = _option(parts, "static")
    if parts.scheme.lower().endswith("+static"):
        return static is None or _true(static)
    return static is not None and _true(static)


def _option(parts: SplitResult, name: str) -> str | None:
    for field in parts.query.split("&"):
        key, _, value = field.partition("=")
        if urllib.parse.unquote(key) == name:
            return urllib.parse.unquote(value)
    return None


def _true(text: str) -> bool:
    try:
        return flag(text)
    except ValueError:
        return False


def _digest(index: Index, key: str) -> str | None:
    return None if index.digests is None else index.digests.get(key)


class _VanishedError(Exception):
    """A file of the generation named by ``generation.json`` is gone (re-exported)."""


class StaticURLStore(AbstractReadOnlyStore):
    """A read-only store over ``index.json`` and ``data/`` files at *root_url*.

    *data_path* and *query_path* are joined to *root_url* (a URL ending in ``/``; one is
    added when missing). *poll* is the interval in seconds between re-reads of the
    index by a daemon thread (``0``: no thread; call :meth:`update_index`). *timeout*
    bounds each HTTP request. ``connect(credentials)`` takes ``{"username": ...,
    "password": ...}`` (HTTP Basic) or ``{"token": ...}`` (a bearer token), and raises
    :class:`~storekeeper.errors.AuthenticationError` when the host answers 401.

    What a reader sees may lag the host by up to *poll* seconds. Over an export with
    generations (see the module documentation) a key's metadata, size, version and data
    always belong to one export, or the read raises :class:`ExportReplacedError`; over a
    tree without them each file is consistent, but a data file read after the index can
    be newer than the metadata.
    """

    def __init__(
        self,
        root_url: str,
        data_path: str = "data/",
        query_path: str = "index.json",
        poll: float = 300,
        event_manager: BaseEventManager | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(event_manager)
        for name, value in (("root_url", root_url), ("data_path", data_path)):
            if not isinstance(value, str):
                raise TypeError(f"{name} is a str, not {type(value).__name__}")
        if not isinstance(query_path, str) or not query_path:
            raise ValueError("query_path is a non-empty str")
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not poll >= 0:
            raise ValueError(f"poll is a number of seconds >= 0, not {poll!r}")
        scheme = urllib.parse.urlsplit(root_url).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"root_url must be an http, https or file URL, not {root_url!r}")
        self.root_url = root_url if root_url.endswith("/") else root_url + "/"
        self.data_path = data_path
        self.query_path = query_path
        self.poll = float(poll)
        self.timeout = timeout
        self._scheme = scheme
        self._index_location = self._location(self.root_url, query_path)
        self._index = EMPTY
        self._update_lock = threading.RLock()
        self._headers: dict[str, str] = {}
        self._pool: urllib3.PoolManager | None = None
        self._stop: threading.Event | None = None
        self._poller: threading.Thread | None = None

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> StaticURLStore:
        """The store for ``http(s)://host/path/?static=true`` (the URL's path is the root).

        Options: ``static`` (must be true), ``data_path``, ``query_path``, ``poll``
        and ``timeout`` (seconds); keyword *options* win over them. The ``http+static``,
        ``https+static`` and ``file+static`` schemes need no ``static`` option:
        ``file+static:///srv/export`` reads an export from the local file system.
        """
        settings = url_options(parts, URL_OPTIONS)
        if not static_requested(parts):
            raise InvalidURLError(
                f"{parts.scheme}:// URLs open a static export only with ?static=true "
                f"(or as {parts.scheme}+static://); got {parts.geturl()!r}"
            )
        settings.pop("static", None)
        scheme = parts.scheme.lower().removesuffix("+static")
        root = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))
        settings.update(options)
        return create(cls, parts, root, **settings)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Ranges, persistence and sharing between processes (the files outlive it)."""
        return _CAPABILITIES

    def info(self) -> dict[str, Any]:
        """Store description with ``root_url`` and the number of keys in the index."""
        return {**super().info(), "root_url": self.root_url, "keys": len(self._index.keys)}

    # -- connection ------------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Read the index (raising if it cannot be read) and start the polling thread."""
        if self._connected:
            return
        self._headers = auth_headers(credentials)
        if self._scheme != "file":
            import urllib3

            self._pool = urllib3.PoolManager(
                headers=self._headers,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                retries=urllib3.Retry(total=2, redirect=5, status=0, raise_on_status=False),
            )
        try:
            self._index = self._fetch_index()
        except BaseException:
            self._close_pool()
            raise
        super().connect(credentials)
        if self.poll > 0:
            stop = threading.Event()
            self._stop = stop
            self._poller = threading.Thread(
                target=self._poll_loop, args=(stop,), name="StaticURLStore-poll", daemon=True
            )
            self._poller.start()

    def disconnect(self) -> None:
        """Stop the polling thread (without waiting out a request it has in flight:
        whatever it reads then is dropped) and release the connections."""
        if self._stop is not None:
            self._stop.set()
        poller, self._poller, self._stop = self._poller, None, None
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=1.0)
        self._close_pool()
        self._index = EMPTY
        super().disconnect()

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.clear()

    def _poll_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll):
            try:
                self._refresh(stop)
            except (StorekeeperError, OSError) as exc:  # a host down now may be back later
                _log.warning("StaticURLStore: cannot re-read %s: %s", self._index_location, exc)

    # -- the index -------------------------------------------------------------------------
    def update_index(self) -> None:
        """Re-read the index now and emit an event per change since the last reading:
        :class:`StoreSetEvent` for a new key or changed data, :class:`StoreUpdateEvent`
        for changed metadata alone, :class:`StoreDeleteEvent` for a key that is gone.
        Changed data is seen through the exports' ``digests.json``: between trees
        without one (not written by :func:`~storekeeper.export.export_static`, or by
        an earlier version) only metadata changes are seen."""
        self._require_connection()
        self._refresh(None)

    def _refresh(self, stop: threading.Event | None) -> None:
        with self._update_lock:
            new = self._fetch_index()
            if stop is not None and stop.is_set():
                return  # disconnected while the request was in flight
            old, self._index = self._index, new
            self._emit_changes(old, new)

    def _emit_changes(self, old: Index, new: Index) -> None:
        known = old.digests is not None and new.digests is not None
        for key, now in new.texts.items():
            before = old.texts.get(key)
            if before is None or (known and _digest(old, key) != _digest(new, key)):
                self._emit(StoreSetEvent(self, key=key, metadata=decode_metadata(now)))
            elif before != now:
                self._emit(StoreUpdateEvent(self, key=key, metadata=decode_metadata(now)))
        for key, before in old.texts.items():
            if key not in new.texts:
                self._emit(StoreDeleteEvent(self, key=key, metadata=decode_metadata(before)))

    def _location(self, base_url: str, relative: str) -> str:
        """The URL of *relative* under *base_url*, or its path for a ``file:`` root."""
        url = urllib.parse.urljoin(base_url, relative)
        return file_path(url) if self._scheme == "file" else url

    def _fetch_index(self) -> Index:
        """The index of the current export, with where its data files are."""
        for _ in range(_ATTEMPTS):
            generation = self._fetch_generation()
            if generation is not None:
                found = self._generation_index(generation)
                if found is None:
                    continue  # replaced while it was read
                return found
            url = self._location(self.root_url, self.query_path)
            raw = self._read_optional(url)
            if raw is None:
                raise BackendUnavailableError(f"cannot read {url}: there is no such file")
            index = parse_index(raw, url)
            return dataclasses.replace(
                index, data_prefix=self._location(self.root_url, self.data_path)
            )
        raise ExportReplacedError(
            f"{self.root_url} was re-exported {_ATTEMPTS} times while its index was read"
        )

    def _generation_index(self, generation: str) -> Index | None:
        """The index and data digests of the export *generation* (``None``: it was
        replaced while they were read). An export written before ``digests.json``
        existed has none."""
        base = urllib.parse.urljoin(self.root_url, f"generations/{generation}/")
        url = self._location(base, self.query_path)
        digests_url = self._location(base, DIGESTS_FILE)
        raw = self._read_optional(url)
        raw_digests = None if raw is None else self._read_optional(digests_url, (404, 403))
        if raw is None or raw_digests is None:
            if self._fetch_generation() != generation:
                return None
            if raw is None:
                raise CorruptFileError(
                    f"{self._location(self.root_url, 'generation.json')} names generation "
                    f"{generation!r}, but {url} does not exist: the export is damaged"
                )
        index = parse_index(raw, url)
        return dataclasses.replace(
            index,
            generation=generation,
            data_prefix=self._location(base, self.data_path),
            digests=None if raw_digests is None else parse_digests(raw_digests, digests_url),
        )

    def _fetch_generation(self) -> str | None:
        """The export's generation name from ``generation.json`` (``None``: no such file,
        or the host forbids it, as hosts that hide which files exist answer for a
        missing one)."""
        url = self._location(self.root_url, "generation.json")
        raw = self._read_optional(url, (404, 403))
        if raw is None:
            return None
        try:
            generation = json.loads(raw.decode("utf-8"))["generation"]
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
            raise CorruptFileError(f'{url} is not {{"generation": NAME}}') from None
        if not isinstance(generation, str) or not _GENERATION_NAME.fullmatch(generation):
            raise CorruptFileError(f"{url} names no valid generation: {generation!r}")
        return generation

    def _read_optional(self, url: str, missing: tuple[int, ...] = (404,)) -> bytes | None:
        """The bytes at *url*, or ``None`` when the host has no such file (answers one
        of the *missing* statuses)."""
        if self._scheme == "file":
            try:
                with open(url, "rb") as stream:
                    return stream.read()
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise file_error(exc, url, None) from None
        headers = {"Accept-Encoding": "identity"}
        response = self._request("GET", url, None, headers, (200, *missing))
        if response.status != 200:
            response.drain_conn()
            response.release_conn()
            return None
        with Opened(cast(BinaryStream, ResponseBody(response)), 200) as opened:
            return opened.stream.read()

    def _replaced(self, index: Index) -> bool:
        """Whether the export *index* came from was replaced (a data file of a key it
        holds is missing): if so, the index held is now a newer export's."""
        if index.generation is None:
            return False
        with self._update_lock:
            if self._index is index:
                self._refresh(None)
            return self._index.generation != index.generation

    def _settled(self, read: Callable[[Index], _T]) -> _T:
        """``read(index)`` over the current index, again over a newer one while the
        export it read from turns out to be replaced."""
        for _ in range(_ATTEMPTS):
            index = self._index
            try:
                return read(index)
            except _VanishedError as gone:
                if not self._replaced(index):  # not replaced: the export lacks the file
                    raise KeyNotFoundError(gone.args[0]) from None
        raise ExportReplacedError(
            f"{self.root_url} was re-exported {_ATTEMPTS} times while a key was read"
        )

    # -- reads -------------------------------------------------------------------------------
    def _metadata_text(self, key: str, index: Index | None = None) -> str:
        check_key(key)
        self._require_connection()
        text = (self._index if index is None else index).texts.get(key)
        if text is None:
            raise KeyNotFoundError(key)
        return text

    def exists(self, key: str) -> bool:
        """Whether *key* is in the index (its data file is not fetched)."""
        try:
            self._metadata_text(key)
        except KeyNotFoundError:
            return False
        return True

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """*key*'s metadata from the index (no request)."""
        names = check_select(select)
        return pick_metadata(decode_metadata(self._metadata_text(key)), names)

    def get(self, key: str) -> Value:
        """*key*'s value: metadata from the index, size and dates from the data file
        (one ``HEAD`` request over HTTP), data read when the value's stream is opened
        (from the export the metadata came from, or :class:`ExportReplacedError`)."""
        check_key(key)
        return self._settled(lambda index: self._get_from(index, key))

    def get_data_range(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> BinaryStream:
        """A stream over bytes ``start`` up to, not including, ``end`` of *key*'s data,
        from the current export (a ``HEAD`` and a ``GET`` over HTTP)."""
        check_key(key)
        return self._settled(lambda index: self._get_from(index, key, True).range(start, end))

    def _get_from(self, index: Index, key: str, now: bool = False) -> Value:
        """*key*'s value in *index*'s export; *now*: its data is read before this
        store's next call (so a replaced export may be retried, see :meth:`_settled`)."""
        text = self._metadata_text(key, index)
        url = self._data_location(key, index)
        info = self._vanishing(index, key, lambda: self._head(url, key))
        stamp = f"{text}\x00{info.stamp}".encode()
        guard = self._vanishing if now else self._kept
        return StreamValue(
            lambda: guard(index, key, lambda: self._open(url, key).stream),
            metadata_json=text,
            size=info.size,
            created=info.modified,
            modified=info.modified,
            version=hashlib.sha256(stamp).hexdigest()[:20],
            range_opener=lambda lo, hi: guard(
                index, key, lambda: self._open_range(url, key, lo, hi)
            ),
        )

    @staticmethod
    def _vanishing(index: Index, key: str, read: Callable[[], _T]) -> _T:
        """``read()``, with a missing data file of a generation as :class:`_VanishedError`."""
        try:
            return read()
        except KeyNotFoundError:
            if index.generation is None:
                raise
            raise _VanishedError(key) from None

    def _kept(self, index: Index, key: str, read: Callable[[], _T]) -> _T:
        """``read()`` of a value handed out earlier: its export must still be there."""
        try:
            return self._vanishing(index, key, read)
        except _VanishedError:
            if self._fetch_generation() == index.generation:
                raise KeyNotFoundError(key) from None
            raise ExportReplacedError(
                f"{self.root_url} was re-exported after the value of {key!r} was read "
                f"(generation {index.generation} is gone): get the key again"
            ) from None

    def version_of(self, key: str) -> str:
        """*key*'s version, as ``get(key).version`` reports it (one ``HEAD`` over HTTP, no
        data transferred)."""
        return cast(str, self.get(key).version)

    def get_data(self, key: str) -> BinaryStream:
        """A stream over *key*'s data (one ``GET`` over HTTP), from the current export."""
        check_key(key)
        return self._settled(lambda index: self._data_from(index, key))

    def _data_from(self, index: Index, key: str) -> BinaryStream:
        self._metadata_text(key, index)
        url = self._data_location(key, index)
        return self._vanishing(index, key, lambda: self._open(url, key).stream)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data as ``bytes``, from the current export (see :meth:`to_file`)."""
        check_read(key, buffer_size)
        if not self._progress_observed():
            return read_stream(self.get_data(key), buffer_size)
        value, stream = self._opened(key)
        with stream:
            if value.size is not None and value.size <= buffer_size:
                return b"".join(buffer_iterator(stream, buffer_size))
            message = f"Reading key {key!r}"
            with self._progress(message, key, value.size, value.metadata) as progress:
                return b"".join(buffer_iterator(stream, buffer_size, progress))

    def to_file(
        self, key: str, path: str | os.PathLike[str], buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> None:
        """Write *key*'s data to the file *path*, atomically and durably, with progress
        events (see :meth:`AbstractReadOnlyStore.to_file`). Like :meth:`get_data`, a
        read whose export is replaced before its data file is opened starts again from
        the new export; *path* is written once, from one export."""
        check_read(key, buffer_size)
        value, stream = self._opened(key)
        message = f"Saving key {key!r} to file {os.fspath(path)!r}"
        with stream, self._progress(message, key, value.size, value.metadata) as progress:
            save_file(path, buffer_iterator(stream, buffer_size, progress))

    def _opened(self, key: str) -> tuple[Value, BinaryStream]:
        """*key*'s value and its data stream, opened from one export: the current one."""

        def read(index: Index) -> tuple[Value, BinaryStream]:
            value = self._get_from(index, key, True)
            return value, value.data

        return self._settled(read)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs from the index held in memory, in key order."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        index = self._index
        return [
            (key, pick_metadata(decode_metadata(index.texts[key]), names))
            for key in index.keys
            if matches(index.parsed[key], terms)
        ]

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys, in key order (no metadata is copied)."""
        self._require_connection()
        index = self._index
        if not where and not kwargs:
            return list(index.keys)
        terms = query_terms(where, kwargs)
        return [key for key in index.keys if matches(index.parsed[key], terms)]

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* from the index held when called (see
        :meth:`AbstractReadOnlyStore.list_keys`)."""
        check_listing(prefix, delimiter)
        self._require_connection()
        keys = self._index.keys
        return fold_keys((key for key in keys if key.startswith(prefix)), prefix, delimiter)

    # -- transport ---------------------------------------------------------------------------
    def _data_location(self, key: str, index: Index) -> str:
        """The URL (or, for a file: root, the path) of *key*'s data file in *index*'s
        export."""
        segments = data_segments(key)
        if self._scheme == "file":
            return index.data_prefix + "/".join(segments)
        return index.data_prefix + "/".join(urllib.parse.quote(part, safe="") for part in segments)

    def _head(self, url: str, key: str) -> FileInfo:
        if self._scheme == "file":
            try:
                stat = os.stat(url)
            except OSError as exc:
                raise file_error(exc, url, key) from None
            return FileInfo(stat.st_size, stat.st_mtime, f"{stat.st_mtime_ns}-{stat.st_size}")
        response = self._request("HEAD", url, key, {})
        response.release_conn()
        headers = response.headers
        length = headers.get("Content-Length")
        modified = headers.get("Last-Modified")
        when = email.utils.parsedate_to_datetime(modified).timestamp() if modified else None
        stamp = headers.get("ETag") or f"{modified}-{length}"
        return FileInfo(int(length) if length else None, when, stamp)

    def _open(self, url: str, key: str | None) -> Opened:
        if self._scheme == "file":
            try:
                return Opened(open(url, "rb"), 200)
            except OSError as exc:
                raise file_error(exc, url, key) from None
        response = self._request("GET", url, key, {"Accept-Encoding": "identity"})
        return Opened(cast(BinaryStream, ResponseBody(response)), response.status)

    def _open_range(self, url: str, key: str, lo: int, hi: int | None) -> BinaryStream:
        if hi is not None and hi <= lo:
            return io.BytesIO()
        if self._scheme == "file":
            stream = self._open(url, key).stream
            stream.seek(lo)
            return limit(stream, hi, lo)
        last = "" if hi is None else str(hi - 1)
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={lo}-{last}"}
        response = self._request("GET", url, key, headers, ok=(200, 206, 416))
        if response.status == 416:
            response.release_conn()
            return io.BytesIO()
        stream = cast(BinaryStream, ResponseBody(response))
        if response.status == 200:  # the host ignored Range: skip to the start here
            skip(stream, lo)
        return limit(stream, hi, lo)

    def _request(
        self,
        method: str,
        url: str,
        key: str | None,
        headers: dict[str, str],
        ok: tuple[int, ...] = (200,),
    ) -> urllib3.BaseHTTPResponse:
        import urllib3

        pool = self._pool
        if pool is None:
            self._require_connection()
            raise BackendError(f"{type(self).__name__} has no connection pool")
        try:
            response = pool.request(
                method, url, headers={**self._headers, **headers}, preload_content=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise BackendUnavailableError(f"cannot reach {url}: {exc}") from exc
        if response.status in ok:
            return response
        response.drain_conn()
        response.release_conn()
        raise status_error(response.status, url, key)
