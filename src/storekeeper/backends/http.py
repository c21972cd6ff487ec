"""``DynamicURLStore``: a store on an HTTP server (``http://`` and ``https://``; extra ``[http]``).

The server is :mod:`storekeeper.server` (or any server with the same layout, see
:mod:`storekeeper.backends.http_protocol`); the basic operations are the plain REST
calls encore's ``DynamicURLStore`` made, so a server written for that client serves
reads, ``set_data``, metadata, permissions, deletes and ``query_keys`` to this one too.
A ``set`` sends data and metadata in one request, so a key's data and metadata change
together. Values stream both ways: ``get_data`` reads the response as it arrives, an
upload is sent as it is read, and ``get`` keeps a large value in a temporary file (so a
:class:`~storekeeper.store.Value` keeps the data it was read with).

Transactions are kept by the client (see :mod:`storekeeper.backends._http_transactions`):
isolated between the threads and tasks sharing this store object, replayed key by key
at the commit, so not atomic for other clients.

Built on urllib3: pooled connections, streaming in both directions, no other dependency.
"""

from __future__ import annotations

import builtins
import contextlib
import email.utils
import importlib
import io
import json
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import IO, Any
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit, urlunsplit

from storekeeper.backends._http_events import EventFollower
from storekeeper.backends._http_streams import ResponseStream, SpooledCopy, window
from storekeeper.backends._http_transactions import Op, Overlay, PendingTransaction
from storekeeper.backends._http_transport import Transport, basic_header
from storekeeper.backends.http_protocol import (
    CREATED,
    METADATA_LENGTH,
    MODIFIED,
    ORIGIN,
    encode_batch,
    encode_terms,
    quote_key,
)
from storekeeper.errors import (
    AuthenticationError,
    BackendError,
    InvalidURLError,
    NotConnectedError,
)
from storekeeper.events import BaseEventManager
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractAuthorizingStore, AbstractReadOnlyStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Claim,
    Metadata,
    StoreCapabilities,
    check_key,
    check_precondition,
    check_read,
    check_select,
    check_write,
    decode_metadata,
    encode_metadata,
    iter_source,
    matches,
    missing,
    new_version,
    pick_metadata,
    query_terms,
    source_size,
    unpack_value,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_listing
from storekeeper.store.owners import busy, may_wait
from storekeeper.store.query import QueryTerm
from storekeeper.store.value import BytesValue, StreamValue, Value, normalize_range

__all__ = ["DEFAULT_PARTS", "URL_CLIENTS", "DynamicURLStore"]

#: The URL part names, as encore's client had them, plus ``value`` (data and metadata).
DEFAULT_PARTS = {"permissions": "auth", "data": "data", "metadata": "metadata", "value": "value"}
#: How many versions returned inside transactions a store object remembers.
ALIASES = 4096
#: Values up to this size are kept in memory by ``get``; larger ones in a temporary file.
INLINE_LIMIT = 1024 * 1024
_URL_OPTIONS = {"query_url": urls.text, "timeout": urls.seconds, "remote_events": urls.flag}
#: Options of an ``http(s)://`` store URL that select another client than this one:
#: ``(name, value)`` -> ``"module:Class"``, whose ``from_url(parts, **options)`` gets the
#: whole URL. A client registers itself here, e.g. ``("static", "true")``.
URL_CLIENTS: dict[tuple[str, str], str] = {
    ("static", word): "storekeeper.backends.static:StaticURLStore"
    for word in ("true", "1", "yes", "on")
}
_CAPABILITIES = StoreCapabilities(ranges=True, server_side_queries=True)


class DynamicURLStore(AbstractAuthorizingStore):
    """A store served over HTTP at *base_url*, queried at *query_url*.

    *url_format* builds a key's URL from ``{base}``, ``{key}`` (percent-escaped) and
    ``{part}`` (a value of *parts*: ``data``, ``metadata``, ``permissions``, ``value``);
    *url_format_no_part* the URL a ``DELETE`` goes to. *timeout* bounds each wait on
    the server, in seconds; *pool_size* is how many connections are kept open;
    *credentials* are what :meth:`connect` uses when given none. With *remote_events*,
    other clients' changes are emitted on this store's ``event_manager`` as the usual
    store events with ``remote=True`` (see :mod:`storekeeper.backends._http_events`).
    """

    def __init__(
        self,
        base_url: str,
        query_url: str | None = None,
        url_format: str = "{base}/{key}/{part}",
        url_format_no_part: str = "{base}/{key}",
        parts: Mapping[str, str] | None = None,
        event_manager: BaseEventManager | None = None,
        *,
        timeout: float = 60.0,
        pool_size: int = 16,
        credentials: Any = None,
        remote_events: bool = False,
    ) -> None:
        super().__init__(event_manager)
        self.base_url = base_url.rstrip("/")
        root = self.base_url.rsplit("/", 1)[0] if urlsplit(self.base_url).path else self.base_url
        self.query_url = query_url if query_url is not None else root + "/query"
        self.root_url = self.query_url.rsplit("/", 1)[0]
        self.url_format = url_format
        self.url_format_no_part = url_format_no_part
        self.parts = {**DEFAULT_PARTS, **(parts or {})}
        self.timeout = timeout
        self.pool_size = pool_size
        self._default_credentials = credentials
        self.remote_events = remote_events
        #: Names this store object to the server (``X-Storekeeper-Origin``).
        self.origin = secrets.token_hex(8)
        self._follower: EventFollower | None = None
        self._transport: Transport | None = None
        self._user_tag: str | None = None
        self._server: dict[str, Any] = {}
        self._pending: PendingTransaction | None = None
        # Guards _pending and _writers; plain writes run side by side, a transaction alone.
        self._turn = threading.Condition()
        self._writers = 0
        # Versions set() returned inside transactions, and the server's versions for them.
        self._aliases: dict[str, str] = {}
        self._reals: dict[str, str] = {}

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> AbstractReadOnlyStore:
        """The store for ``http://HOST:PORT/store`` (or ``https://``).

        A URL holding an option of :data:`URL_CLIENTS` (``?static=true``) is handed,
        whole, to the client class that option names. Options of this class:
        ``query_url`` (default: ``/query`` beside the base path) and ``timeout`` (seconds);
        ``user:password@`` in the URL are the credentials ``connect()`` uses when given
        none.
        """
        other = _other_client(parts)
        if other is not None:
            return other.from_url(parts, **options)  # type: ignore[no-any-return]
        settings = urls.url_options(parts, _URL_OPTIONS)
        if not parts.hostname:
            raise InvalidURLError(f"{parts.scheme}:// store URLs name a host: {parts.geturl()!r}")
        settings.update(options)
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        if parts.username is not None:
            settings.setdefault(
                "credentials", (unquote(parts.username), unquote(parts.password or ""))
            )
        return urls.create(cls, parts, base, **settings)

    # -- connection ----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Open the connection pool and check *credentials* with the server.

        *credentials*: ``None`` (anonymous, or the URL's), ``{'username', 'password'}``
        or a ``(username, password)`` pair (HTTP Basic), ``{'token': ...}`` or a ``str``
        (a bearer token), or encore's ``(user_tag, session)`` pair, whose session's
        ``headers`` and ``auth`` (a ``(username, password)`` pair) are adopted.
        Raises :class:`~storekeeper.errors.AuthenticationError` if the server refuses
        them, :class:`~storekeeper.errors.BackendUnavailableError` if it cannot be
        reached.
        """
        transport = Transport(self.timeout, self.pool_size)
        transport.headers[ORIGIN] = self.origin
        tag = self._authorize(transport, credentials or self._default_credentials)
        response = transport.request("GET", self.root_url + "/info")
        if response.status in (401, 403):
            transport.close()
            raise transport.fail(response, None)
        server: dict[str, Any] = {}
        if response.status == 200:
            try:
                server = json.loads(response.data)
            except ValueError:
                server = {}
        if self._transport is not None:
            self._transport.close()
        self._transport, self._server = transport, server
        self._user_tag = server.get("user") or tag
        super().connect(credentials)
        if self.remote_events and self._follower is None:
            self._follower = EventFollower(
                self, transport, self.root_url + "/events", self.origin, self.event_manager.emit
            )
            self._follower.start()

    def _authorize(self, transport: Transport, credentials: Any) -> str | None:
        if credentials is None:
            return None
        if isinstance(credentials, str):
            transport.headers["Authorization"] = "Bearer " + credentials
            return None
        if isinstance(credentials, Mapping):
            if "token" in credentials:
                transport.headers["Authorization"] = "Bearer " + str(credentials["token"])
                return None
            username, password = credentials.get("username"), credentials.get("password")
            credentials = (username, password)
        if isinstance(credentials, tuple | list) and len(credentials) == 2:
            first, second = credentials
            if isinstance(first, str) and isinstance(second, str | bytes):
                password = second.decode() if isinstance(second, bytes) else second
                transport.headers["Authorization"] = basic_header(first, password)
                return first
            if isinstance(first, str):  # encore's (user_tag, session)
                transport.headers.update(dict(getattr(second, "headers", {}) or {}))
                auth = getattr(second, "auth", None)
                if isinstance(auth, tuple) and len(auth) == 2:
                    transport.headers["Authorization"] = basic_header(*auth)
                return first
        raise AuthenticationError(
            "credentials are {'username', 'password'}, a (username, password) pair, "
            "a token, or a (user_tag, session) pair"
        )

    def disconnect(self) -> None:
        """Stop following events and close the pooled connections."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        super().disconnect()

    @property
    def capabilities(self) -> StoreCapabilities:
        """Ranges and server-side queries; conditional writes and persistence as the
        served store declares them (``/info``); atomic transactions when the server
        commits batches and the served store's transactions are atomic."""
        served = self._server.get("capabilities", {})
        return _CAPABILITIES.but(
            conditional_writes=bool(served.get("conditional_writes")),
            persistent=bool(served.get("persistent")),
            atomic_transactions=bool(self._server.get("batch"))
            and bool(served.get("atomic_transactions")),
        )

    def info(self) -> dict[str, Any]:
        """The store description plus ``base_url`` and the signed-in ``user``."""
        return {**super().info(), "base_url": self.base_url, "user": self._user_tag}

    @property
    def user_tag(self) -> str:
        """The signed-in user's tag (``''`` when anonymous)."""
        return self._user_tag or ""

    # -- requests ------------------------------------------------------------------------
    def _http(self) -> Transport:
        transport = self._transport
        if transport is None or not self._connected:
            raise NotConnectedError(
                f"{type(self).__name__} is not connected: call connect() or use 'with store:'"
            )
        return transport

    def _url(self, key: str, part: str) -> str:
        return self.url_format.format(base=self.base_url, key=quote_key(key), part=self.parts[part])

    def _call(
        self,
        method: str,
        url: str,
        key: str | None,
        ok: tuple[int, ...] = (200, 204),
        **kwargs: Any,
    ) -> Any:
        transport = self._http()
        response = transport.request(method, url, **kwargs)
        if response.status not in ok:
            raise transport.fail(response, key)
        return response

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """*key*'s value, read in one request (in memory up to ``INLINE_LIMIT`` bytes,
        else in a temporary file)."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return self._overlay_value(key, entry)
        response = self._call("GET", self._url(key, "value"), key, (200,), stream=True)
        stream = ResponseStream(response)
        try:
            length = int(response.headers.get(METADATA_LENGTH, "0"))
            metadata_json = _read_exactly(stream, length).decode("utf-8")
            total = response.headers.get("Content-Length")
            size = None if total is None else int(total) - length
            version = self._alias(_version(response.headers.get("ETag")))
            created, modified = _times(response.headers)
            if size is not None and size <= INLINE_LIMIT:
                data = _read_exactly(stream, size)
                return BytesValue(
                    data,
                    created=created,
                    modified=modified,
                    version=version,
                    metadata_json=metadata_json,
                )
            copy = SpooledCopy(stream)
        finally:
            stream.close()
        return StreamValue(
            copy.open,
            size=copy.size,
            created=created,
            modified=modified,
            version=version,
            metadata_json=metadata_json,
            range_opener=copy.open,
        )

    def exists(self, key: str) -> bool:
        """Whether *key* exists (a HEAD request)."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return not entry.deleted
        return self._head(key) is not None

    def version_of(self, key: str) -> str:
        """*key*'s current version (a HEAD request); KeyError if it is missing."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return self.get(key).version or ""
        found = self._head(key)
        if found is None:
            raise missing(key)
        return found.get("version") or ""

    def _head(self, key: str) -> dict[str, Any] | None:
        response = self._call("HEAD", self._url(key, "data"), key, (200, 404))
        if response.status == 404:
            return None
        length = response.headers.get("Content-Length")
        return {
            "size": None if length is None else int(length),
            "version": self._alias(_version(response.headers.get("ETag"))),
        }

    def get_data(self, key: str) -> IO[bytes]:
        """A stream over *key*'s data as the server sends it; close it when done."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return self._overlay_value(key, entry).data
        response = self._call("GET", self._url(key, "data"), key, (200,), stream=True)
        return io.BufferedReader(ResponseStream(response))

    def get_data_range(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> IO[bytes]:
        """Bytes ``start`` up to, not including, ``end`` (sent as ``bytes=S-(E-1)``)."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return self._overlay_value(key, entry).range(start, end)
        if (start is not None and start < 0) or (end is not None and end < 0):
            found = self._head(key)
            if found is None:
                raise missing(key)
            start, end = normalize_range(start, end, found["size"])
        low = start or 0
        if end is not None and end <= low:
            if self._head(key) is None:
                raise missing(key)
            return io.BytesIO(b"")
        wanted = f"bytes={low}-" if end is None else f"bytes={low}-{end - 1}"
        response = self._call(
            "GET",
            self._url(key, "data"),
            key,
            (200, 206, 416),
            headers={"Range": wanted},
            stream=True,
        )
        if response.status == 416:
            response.drain_conn()
            response.release_conn()
            return io.BytesIO(b"")
        stream = ResponseStream(response)
        if response.status == 206:
            return io.BufferedReader(stream)
        return window(stream, low, None if end is None else end - low)  # Range ignored

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """*key*'s metadata, limited to *select* when given (selected by the server)."""
        check_key(key)
        names = check_select(select)
        entry = self._overlay(key)
        if entry is not None:
            return pick_metadata(decode_metadata(self._overlay_metadata(key, entry)), names)
        url = self._url(key, "metadata")
        if names is not None:
            url += "?" + urlencode([("select", name) for name in names] or [("select", "")])
        response = self._call("GET", url, key, (200,))
        metadata = decode_metadata(response.data.decode("utf-8"))
        return metadata if names is None else pick_metadata(metadata, names)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs, found by the server."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        return self._query(terms, names)

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys, found by the server."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        if self._own_pending() is not None:
            return [key for key, _ in self._query(terms, [])]
        return list(self._post_query(terms, None, keys=True))

    def _post_query(
        self, terms: Mapping[str, QueryTerm], names: list[str] | None, keys: bool
    ) -> Any:
        body = json.dumps({"where": encode_terms(terms), "select": names, "keys": keys})
        response = self._call(
            "POST",
            self.query_url,
            None,
            (200,),
            body=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        return json.loads(response.data)

    def _query(
        self, terms: Mapping[str, QueryTerm], names: list[str] | None
    ) -> list[tuple[str, Metadata]]:
        pending = self._own_pending()
        found = [(key, metadata) for key, metadata in self._post_query(terms, names, False)]
        if pending is None or not pending.overlay:
            return found
        result = [(key, metadata) for key, metadata in found if key not in pending.overlay]
        for key, entry in pending.overlay.items():
            if entry.deleted:
                continue
            metadata = decode_metadata(self._overlay_metadata(key, entry))
            if matches(metadata, terms):
                result.append((key, pick_metadata(metadata, names)))
        return result

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* in key order, folded at *delimiter* (listed by the server)."""
        check_listing(prefix, delimiter)
        self._require_connection()
        if self._own_pending() is not None:
            return super().list_keys(prefix, delimiter)
        fields = [("prefix", prefix)] + ([] if delimiter is None else [("delimiter", delimiter)])
        url = self.root_url + "/list?" + urlencode(fields, quote_via=quote)
        headers = {"Accept": "application/x-ndjson"}
        response = self._call("GET", url, None, (200,), stream=True, headers=headers)
        return _lines(ResponseStream(response))

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data in one request (progress events as the base class sends them)."""
        check_read(key, buffer_size)
        if self._progress_observed() or self._overlay(key) is not None:
            return super().to_bytes(key, buffer_size)
        return bytes(self._call("GET", self._url(key, "data"), key, (200,)).data)

    # -- writes --------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str | None:
        """Replace *key*'s data and metadata in one request; the version written
        (``None`` inside a transaction: the server assigns it at the commit)."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            with self._writing() as pending:
                if pending is None:
                    version = self._send_value(
                        key,
                        source,
                        metadata_json,
                        buffer_size,
                        _conditions(self._real(if_version), if_exists),
                    )
                else:
                    data = self._read_source(key, source, buffer_size, metadata_json)
                    if if_version is not None or if_exists is not None:
                        self._check_pending(key, if_version, if_exists)
                    version = new_version()
                    send = partial(self._replay_set, key, data, metadata_json, version)
                    op = Op(_header("set", key, metadata_json), data, version)
                    pending.record(key, Overlay(False, data, metadata_json), send, op)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]
        self._emit_change(StoreSetEvent, key, metadata_json)
        return version

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data (``PUT {key}/data``), keeping its metadata."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        with self._writing() as pending:
            if pending is None:
                conditions = _conditions(self._real(if_version), if_exists)
                self._send_data(key, data, buffer_size, conditions)
                metadata_json = self._metadata_for_event(key, StoreSetEvent)
            else:
                content = self._read_source(key, data, buffer_size)
                exists = self._check_pending(key, if_version, if_exists)
                entry = pending.overlay.get(key)
                metadata_json = (
                    entry.metadata_json
                    if entry is not None and not entry.deleted
                    else (None if exists else "{}")
                )
                send = partial(self._send_data, key, content, buffer_size, {})
                op = Op(_header("set_data", key), content)
                pending.record(key, Overlay(False, content, metadata_json), send, op)
                metadata_json = metadata_json or self._metadata_for_event(key, StoreSetEvent)
        if metadata_json is not None:
            self._emit_change(StoreSetEvent, key, metadata_json)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata (``PUT {key}/metadata``), keeping its data."""
        check_write(key, if_version, if_exists)
        self._require_connection()
        metadata_json = encode_metadata(metadata)
        with self._writing() as pending:
            if pending is None:
                self._send_metadata(
                    "PUT", key, metadata_json, _conditions(self._real(if_version), if_exists)
                )
            else:
                exists = self._check_pending(key, if_version, if_exists)
                entry = pending.overlay.get(key)
                data = (
                    entry.data
                    if entry is not None and not entry.deleted
                    else (None if exists else b"")
                )
                send = partial(self._send_metadata, "PUT", key, metadata_json, {})
                op = Op(_header("set_metadata", key, metadata_json))
                pending.record(key, Overlay(False, data, metadata_json), send, op)
        self._emit_change(StoreSetEvent, key, metadata_json)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s (``POST {key}/metadata``); KeyError if missing."""
        check_write(key, if_version)
        self._require_connection()
        given = encode_metadata(metadata)
        with self._writing() as pending:
            if pending is None:
                self._send_metadata("POST", key, given, _conditions(self._real(if_version), None))
                merged_json = self._metadata_for_event(key, StoreUpdateEvent)
            else:
                self._check_pending(key, if_version, True)
                entry = pending.overlay.get(key)
                merged = self.get_metadata(key)
                merged.update(metadata)
                merged_json = encode_metadata(merged)
                data = None if entry is None else entry.data
                send = partial(self._send_metadata, "POST", key, given, {})
                op = Op(_header("update_metadata", key, given))
                pending.record(key, Overlay(False, data, merged_json), send, op)
        if merged_json is not None:
            self._emit_change(StoreUpdateEvent, key, merged_json)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key* (``DELETE {key}``); KeyError if it is missing."""
        check_write(key, if_version)
        self._require_connection()
        with self._writing() as pending:
            old_json = self._metadata_for_event(key, StoreDeleteEvent)
            if pending is None:
                headers = _conditions(self._real(if_version), None)
                url = self.url_format_no_part.format(base=self.base_url, key=quote_key(key))
                self._call("DELETE", url, key, (200, 204), headers=headers)
            else:
                if not self._check_pending(key, if_version, None):
                    raise missing(key)
                send = partial(self._send_delete, key)
                pending.record(key, Overlay(deleted=True), send, Op(_header("delete", key)))
        if old_json is not None:
            self._emit_change(StoreDeleteEvent, key, old_json)

    # -- permissions ---------------------------------------------------------------------
    def get_permissions(self, key: str) -> dict[str, builtins.set[str]]:
        """*key*'s permissions (``GET {key}/auth``); the server decides who may see them."""
        check_key(key)
        response = self._call("GET", self._url(key, "permissions"), key, (200,))
        return {name: set(tags) for name, tags in json.loads(response.data).items()}

    def set_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Replace *key*'s permissions (``PUT {key}/auth``)."""
        self._send_permissions("PUT", key, permissions)

    def update_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Add tags to *key*'s permissions (``POST {key}/auth``)."""
        self._send_permissions("POST", key, permissions)

    def _send_permissions(
        self, method: str, key: str, permissions: Mapping[str, Iterable[str]]
    ) -> None:
        check_key(key)
        body = json.dumps({name: sorted(tags) for name, tags in permissions.items()})
        self._call(method, self._url(key, "permissions"), key, body=body.encode())

    # -- sending -------------------------------------------------------------------------
    def _send_value(
        self,
        key: str,
        source: object,
        metadata_json: str,
        buffer_size: int,
        conditions: dict[str, str],
    ) -> str | None:
        head = metadata_json.encode("utf-8")
        headers = {**conditions, METADATA_LENGTH: str(len(head))}
        if isinstance(source, bytes):
            body: Any = head + source
            response = self._upload("PUT", self._url(key, "value"), key, body, headers, None)
        else:
            chunks = self._chunks(key, source, buffer_size, metadata_json)
            size = source_size(source)
            body = _prefixed(head, chunks)
            response = self._upload(
                "PUT",
                self._url(key, "value"),
                key,
                body,
                headers,
                None if size is None else len(head) + size,
            )
        return _version(response.headers.get("ETag"))

    def _replay_set(self, key: str, data: bytes, metadata_json: str, alias: str) -> None:
        """A transaction's ``set`` at the commit: the version the server gives the value
        is known to this store object by the *alias* the ``set`` returned."""
        self._remember(alias, self._send_value(key, data, metadata_json, DEFAULT_BUFFER_SIZE, {}))

    def _remember(self, alias: str, real: str | None) -> None:
        if real is None:
            return
        with self._turn:
            self._aliases[real] = alias
            self._reals[alias] = real
            while len(self._aliases) > ALIASES:
                oldest = next(iter(self._aliases))
                self._reals.pop(self._aliases.pop(oldest), None)

    def _alias(self, version: str | None) -> str | None:
        """The version to report for the server's *version*."""
        if version is None or not self._aliases:
            return version
        return self._aliases.get(version, version)

    def _real(self, version: str | None) -> str | None:
        """The server's version for a reported *version*."""
        if version is None or not self._reals:
            return version
        return self._reals.get(version, version)

    def _send_data(
        self, key: str, data: object, buffer_size: int, conditions: dict[str, str]
    ) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            self._upload("PUT", self._url(key, "data"), key, bytes(data), conditions, None)
            return
        chunks = self._chunks(key, data, buffer_size, None)
        self._upload("PUT", self._url(key, "data"), key, chunks, conditions, source_size(data))

    def _upload(
        self,
        method: str,
        url: str,
        key: str,
        body: Any,
        headers: dict[str, str],
        length: int | None,
    ) -> Any:
        """Send *body* (bytes, or chunks of *length* bytes or of unknown length, then
        chunked); an error raised by the chunks' source is re-raised as it was."""
        failure: list[BaseException] = []
        if not isinstance(body, bytes):
            body = _watched(body, failure)
            if length is not None:
                headers = {**headers, "Content-Length": str(length)}
        try:
            return self._call(
                method,
                url,
                key,
                body=body,
                headers=headers,
                chunked=not isinstance(body, bytes) and length is None,
            )
        except Exception:
            if failure:
                raise failure[0] from None
            raise

    def _chunks(
        self, key: str, source: object, buffer_size: int, metadata_json: str | None
    ) -> Iterator[bytes]:
        chunks = iter_source(source, buffer_size)
        if not self._progress_observed():
            yield from chunks
            return
        metadata = self._progress_metadata(metadata_json)
        total = 0
        with self._progress(f"Setting key {key!r}", key, source_size(source), metadata) as bar:
            for chunk in chunks:
                total += len(chunk)
                yield chunk
                bar.step(step=total)

    def _send_metadata(
        self, method: str, key: str, metadata_json: str, conditions: dict[str, str]
    ) -> None:
        body = metadata_json.encode("utf-8")
        self._call(method, self._url(key, "metadata"), key, body=body, headers=conditions)

    def _send_delete(self, key: str) -> None:
        url = self.url_format_no_part.format(base=self.base_url, key=quote_key(key))
        self._call("DELETE", url, key, (200, 204, 404))

    def _metadata_for_event(self, key: str, cls: type) -> str | None:
        """*key*'s metadata as JSON for an event of *cls*, read only if it can be heard."""
        if not self._observed(cls):
            return None
        try:
            return encode_metadata(self.get_metadata(key))
        except KeyError:
            return None

    # -- transactions ----------------------------------------------------------------------
    def _own_pending(self) -> PendingTransaction | None:
        pending = self._pending
        if pending is not None and pending.claim.is_mine():
            return pending
        return None

    def _overlay(self, key: str) -> Overlay | None:
        pending = self._pending
        if pending is None or not pending.overlay or not pending.claim.is_mine():
            return None
        self._require_connection()
        return pending.overlay.get(key)

    def _overlay_metadata(self, key: str, entry: Overlay) -> str:
        if entry.deleted:
            raise missing(key)
        if entry.metadata_json is not None:
            return entry.metadata_json
        response = self._call("GET", self._url(key, "metadata"), key, (200,))
        return str(response.data.decode("utf-8"))

    def _overlay_value(self, key: str, entry: Overlay) -> Value:
        metadata_json = self._overlay_metadata(key, entry)
        data = entry.data
        if data is None:
            data = bytes(self._call("GET", self._url(key, "data"), key, (200,)).data)
        return BytesValue(data, metadata_json=metadata_json)

    def _check_pending(self, key: str, if_version: str | None, if_exists: bool | None) -> bool:
        """Check a transaction's write to *key* now; whether *key* exists for it. A key
        the transaction wrote has no version until the commit, so ``if_version`` fails."""
        entry = self._overlay(key)
        if entry is not None:
            exists = not entry.deleted
            current = "\x00pending" if exists else None
        else:
            found = self._head(key)
            exists = found is not None
            current = None if found is None else (found["version"] or "")
        if if_version is not None or if_exists is not None:
            check_precondition(key, current, if_version, if_exists)
        return exists

    def _writing(self) -> _Turn:
        return _Turn(self)

    def _begin_transaction(self) -> None:
        self._require_connection()
        with self._turn:
            while self._pending is not None or self._writers:
                self._wait_turn()
            self._pending = PendingTransaction(Claim.take())

    def _wait_turn(self) -> None:
        pending = self._pending
        if pending is not None and pending.claim.blocks_here():
            raise pending.claim.refusal(self)
        if not may_wait():
            raise busy(self)
        self._turn.wait()

    def _commit_transaction(self) -> None:
        pending = self._own_pending()
        assert pending is not None  # hooks run in the owner
        try:
            if not pending.log:
                return
            if not self._server.get("batch"):
                for write, _ in pending.log:
                    write()
                return
            ops = [op for _, op in pending.log]
            body = encode_batch([(op.header, op.data) for op in ops])
            response = self._call(
                "POST", self.root_url + "/batch", None, (200,), body=b"".join(body)
            )
            for op, version in zip(ops, json.loads(response.data), strict=False):
                if op.alias is not None and isinstance(version, str):
                    self._remember(op.alias, version)
        finally:
            self._end()

    def _rollback_transaction(self) -> None:
        if self._own_pending() is not None:
            self._end()

    def _end(self) -> None:
        with self._turn:
            self._pending = None
            self._turn.notify_all()

    def _savepoint(self) -> object:
        pending = self._own_pending()
        assert pending is not None
        return pending.savepoint()

    def _rollback_to_savepoint(self, token: object) -> None:
        pending = self._own_pending()
        assert pending is not None
        pending.rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None


class _Turn:
    """``with store._writing() as pending``: the caller's own transaction, or ``None``
    once no other owner's transaction is open (counted as a running plain write)."""

    def __init__(self, store: DynamicURLStore) -> None:
        self._store = store
        self._counted = False

    def __enter__(self) -> PendingTransaction | None:
        store = self._store
        with store._turn:
            while True:
                pending = store._pending
                if pending is None:
                    store._writers += 1
                    self._counted = True
                    return None
                if pending.claim.is_mine():
                    return pending
                store._wait_turn()

    def __exit__(self, *exc: object) -> None:
        if self._counted:
            store = self._store
            with store._turn:
                store._writers -= 1
                store._turn.notify_all()


def _other_client(parts: SplitResult) -> Any:
    """The class another client of :data:`URL_CLIENTS` that *parts* ask for, or ``None``."""
    if not URL_CLIENTS:
        return None
    for field in parts.query.split("&"):
        name, _, value = field.partition("=")
        target = URL_CLIENTS.get((unquote(name), unquote(value).lower()))
        if target is not None:
            module, _, attribute = target.partition(":")
            return getattr(importlib.import_module(module), attribute)
    return None


def _header(operation: str, key: str, metadata_json: str | None = None) -> dict[str, object]:
    header: dict[str, object] = {"op": operation, "key": key}
    if metadata_json is not None:
        header["metadata"] = decode_metadata(metadata_json)
    return header


def _conditions(if_version: str | None, if_exists: bool | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if if_version is not None:  # (translated by the store: see _real)
        headers["If-Match"] = '"' + if_version.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if if_exists is True:
        headers.setdefault("If-Match", "*")
    elif if_exists is False:
        headers["If-None-Match"] = "*"
    return headers


def _version(tag: str | None) -> str | None:
    if tag is None:
        return None
    tag = tag.removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    out, escaped = [], False
    for char in tag:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def _times(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """``(created, modified)`` from a response's headers (``None`` where not told)."""
    found: list[float | None] = []
    for name, fallback in ((CREATED, None), (MODIFIED, "Last-Modified")):
        text = headers.get(name)
        try:
            found.append(float(text) if text is not None else None)
        except ValueError:
            found.append(None)
        if found[-1] is None and fallback is not None and headers.get(fallback):
            with contextlib.suppress(TypeError, ValueError):
                found[-1] = email.utils.parsedate_to_datetime(headers[fallback]).timestamp()
    return found[0], found[1]


def _read_exactly(stream: ResponseStream, count: int) -> bytes:
    parts, left = [], count
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            raise BackendError("the server's answer ended early")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _lines(stream: ResponseStream) -> Iterator[str]:
    """The JSON strings of a ``/list`` answer, one per line, read as they arrive."""
    with io.BufferedReader(stream, 8192) as reader:
        for line in reader:
            yield json.loads(line)


def _prefixed(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from chunks


def _watched(chunks: Iterable[bytes], failure: list[BaseException]) -> Iterator[bytes]:
    """*chunks*, noting in *failure* an error their source raises (urllib3 wraps it)."""
    try:
        yield from chunks
    except BaseException as exc:
        failure.append(exc)
        raise
