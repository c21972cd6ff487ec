"""``StaticURLStore``: a read-only store over files served by any static host.

The layout (what :func:`storekeeper.export.export_static` writes)::

    ROOT/index.json      {"key": {metadata}, ...}, ASCII-only JSON
    ROOT/data/KEY        the value of KEY; each "/"-separated segment of KEY is one path
                         segment, percent-quoted in URLs

``root_url`` is ``http://``, ``https://`` (through urllib3, the ``[http]`` extra) or
``file:`` (plain file reads). The store reads ``index.json`` on :meth:`connect` and
again every ``poll`` seconds in a daemon thread; :meth:`StaticURLStore.update_index`
re-reads it at once and emits a set, update or delete event per key that appeared,
changed its metadata or vanished. Queries, listings and ``exists`` are answered from the
copy of the index held in memory (a snapshot replaced whole, so no lock is held while a
caller iterates); ``get`` reads the data file.

Keys whose path would be empty, ``.`` or ``..`` in a segment, or a segment longer than a
file name may be (255 bytes), cannot be laid out: :func:`layout_problem` says why, and
such keys in an index are ignored (with a warning) rather than followed outside the root.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult

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
from storekeeper.store.abstract import AbstractReadOnlyStore
from storekeeper.store.backend import (
    Metadata,
    StoreCapabilities,
    check_key,
    check_select,
    decode_metadata,
    encode_metadata,
    matches,
    pick_metadata,
    query_terms,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_listing, fold_keys
from storekeeper.store.urls import create, flag, seconds, text, url_options
from storekeeper.store.value import StreamValue, Value

if TYPE_CHECKING:
    import urllib3

__all__ = ["StaticURLStore", "data_segments", "layout_problem", "static_requested"]

_log = logging.getLogger(__name__)

_CAPABILITIES = StoreCapabilities(cross_process=True, ranges=True, persistent=True)
#: The longest file name common file systems take, in bytes of UTF-8.
_MAX_SEGMENT = 255
#: URL options a ``?static=true`` URL may carry besides ``static``.
URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "static": flag,
    "data_path": text,
    "query_path": text,
    "poll": seconds,
    "timeout": seconds,
}

BinaryStream = IO[bytes]


def layout_problem(key: str) -> str | None:
    """Why *key* cannot be a file path under ``data/`` (``None`` if it can).

    A key is split at ``/``; every segment must be non-empty, neither ``.`` nor ``..``,
    and at most 255 bytes of UTF-8. Clashes between keys (``a`` beside ``a/b``) are a
    property of a set of keys: see :func:`storekeeper.export.layout_problems`.
    """
    for segment in key.split("/"):
        if not segment:
            return "it has an empty path segment (a leading, trailing or doubled '/')"
        if segment in (".", ".."):
            return f"it has a {segment!r} path segment"
        if len(segment.encode("utf-8", "surrogatepass")) > _MAX_SEGMENT:
            return f"a path segment is longer than {_MAX_SEGMENT} bytes"
    return None


def data_segments(key: str) -> list[str]:
    """The path segments of *key*'s data file under ``data/``; ``ValueError`` (naming
    the reason) for a key that cannot be laid out (see :func:`layout_problem`)."""
    problem = layout_problem(key)
    if problem is not None:
        raise ValueError(f"key {key!r} cannot be a file path: {problem}")
    return key.split("/")


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


@dataclass(frozen=True, slots=True)
class _Index:
    """One reading of ``index.json``: never changed, replaced whole."""

    texts: dict[str, str]  # key -> metadata as compact JSON
    parsed: dict[str, Metadata]
    keys: list[str]  # sorted


_EMPTY = _Index({}, {}, [])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_index(raw: bytes, source: str) -> _Index:
    """The index in *raw* (the bytes of ``index.json`` read from *source*)."""
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{source} is not a JSON document: {exc}") from None
    if not isinstance(document, dict):
        raise CorruptFileError(f"{source} is not a JSON object of key -> metadata")
    texts: dict[str, str] = {}
    parsed: dict[str, Metadata] = {}
    for key, metadata in document.items():
        if not isinstance(metadata, dict):
            raise CorruptFileError(f"{source}: the metadata of {key!r} is not a JSON object")
        problem = "it holds NUL" if "\x00" in key or not key else layout_problem(key)
        if problem is not None:
            _log.warning("%s: ignoring key %r: %s", source, key, problem)
            continue
        texts[key] = encode_metadata(metadata)
        parsed[key] = metadata
    return _Index(texts, parsed, sorted(texts))


class StaticURLStore(AbstractReadOnlyStore):
    """A read-only store over ``index.json`` and ``data/`` files at *root_url*.

    *data_path* and *query_path* are joined to *root_url* (a URL ending in ``/``; one is
    added when missing). *poll* is the interval in seconds between re-reads of the
    index by a daemon thread (``0``: no thread; call :meth:`update_index`). *timeout*
    bounds each HTTP request. ``connect(credentials)`` takes ``{"username": ...,
    "password": ...}`` (HTTP Basic) or ``{"token": ...}`` (a bearer token), and raises
    :class:`~storekeeper.errors.AuthenticationError` when the host answers 401.

    What a reader sees is consistent per file but may lag the host by up to *poll*
    seconds; a key's data file is read when its value is, so it can be newer than the
    metadata of the index read earlier.
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
        # Where index.json and the data files are: URLs, or paths for a file: root.
        data_url = urllib.parse.urljoin(self.root_url, data_path)
        index_url = urllib.parse.urljoin(self.root_url, query_path)
        if scheme == "file":
            data_url, index_url = file_path(data_url), file_path(index_url)
        self._data_prefix = data_url
        self._index_location = index_url
        self._index = _EMPTY
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
        self._index = _EMPTY
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
        :class:`StoreSetEvent` for a new key, :class:`StoreUpdateEvent` for changed
        metadata, :class:`StoreDeleteEvent` for a key that is gone."""
        self._require_connection()
        self._refresh(None)

    def _refresh(self, stop: threading.Event | None) -> None:
        with self._update_lock:
            new = self._fetch_index()
            if stop is not None and stop.is_set():
                return  # disconnected while the request was in flight
            old, self._index = self._index, new
            self._emit_changes(old, new)

    def _emit_changes(self, old: _Index, new: _Index) -> None:
        for key, now in new.texts.items():
            before = old.texts.get(key)
            if before is None:
                self._emit(StoreSetEvent(self, key=key, metadata=decode_metadata(now)))
            elif before != now:
                self._emit(StoreUpdateEvent(self, key=key, metadata=decode_metadata(now)))
        for key, before in old.texts.items():
            if key not in new.texts:
                self._emit(StoreDeleteEvent(self, key=key, metadata=decode_metadata(before)))

    def _fetch_index(self) -> _Index:
        url = self._index_location
        with self._open(url, None) as response:
            raw = response.stream.read()
        return parse_index(raw, url)

    # -- reads -------------------------------------------------------------------------------
    def _metadata_text(self, key: str) -> str:
        check_key(key)
        self._require_connection()
        text = self._index.texts.get(key)
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
        (one ``HEAD`` request over HTTP), data read when the value's stream is opened."""
        text = self._metadata_text(key)
        url = self._data_location(key)
        info = self._head(url, key)
        stamp = f"{text}\x00{info.stamp}".encode()
        return StreamValue(
            lambda: self._open(url, key).stream,
            metadata_json=text,
            size=info.size,
            created=info.modified,
            modified=info.modified,
            version=hashlib.sha256(stamp).hexdigest()[:20],
            range_opener=lambda lo, hi: self._open_range(url, key, lo, hi),
        )

    def version_of(self, key: str) -> str:
        """*key*'s version, as ``get(key).version`` reports it (one ``HEAD`` over HTTP, no
        data transferred)."""
        return cast(str, self.get(key).version)

    def get_data(self, key: str) -> BinaryStream:
        """A stream over *key*'s data (one ``GET`` over HTTP)."""
        self._metadata_text(key)
        return self._open(self._data_location(key), key).stream

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
    def _data_location(self, key: str) -> str:
        """The URL (or, for a file: root, the path) of *key*'s data file."""
        segments = data_segments(key)
        if self._scheme == "file":
            return self._data_prefix + "/".join(segments)
        return self._data_prefix + "/".join(urllib.parse.quote(part, safe="") for part in segments)

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
