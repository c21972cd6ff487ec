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
isolated between the threads and tasks sharing this store object, and optimistic
towards other clients: the commit is one ``POST /batch`` that the server applies in one
transaction of the served store (atomic where that store's transactions are), and
refuses with ``ConflictError`` if a key the transaction read has changed since. Inside
a transaction, a key it wrote has no version yet (``set`` returns ``None``).

Built on urllib3: pooled connections, streaming in both directions, no other dependency.
"""

from __future__ import annotations

import builtins
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
from storekeeper.backends._http_streams import ResponseStream, SpooledCopy, read_body, window
from storekeeper.backends._http_transactions import (
    ClientTransactions,
    Op,
    Overlay,
    PendingTransaction,
)
from storekeeper.backends._http_transport import Transport, authorize
from storekeeper.backends._http_uploads import Uploads
from storekeeper.backends._http_wire import (
    batch_header,
    condition_headers,
    etag_version,
    json_lines,
    read_exactly,
    value_times,
)
from storekeeper.backends.http_protocol import (
    METADATA_LENGTH,
    ORIGIN,
    encode_terms,
    quote_key,
)
from storekeeper.errors import (
    InvalidURLError,
    NotConnectedError,
)
from storekeeper.events import BaseEventManager
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractAuthorizingStore, AbstractReadOnlyStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    StoreCapabilities,
    check_key,
    check_read,
    check_select,
    check_write,
    decode_metadata,
    encode_metadata,
    matches,
    missing,
    pick_metadata,
    query_terms,
    unpack_value,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent, StoreUpdateEvent
from storekeeper.store.listing import check_listing
from storekeeper.store.query import QueryTerm
from storekeeper.store.value import BytesValue, StreamValue, Value, normalize_range

__all__ = ["DEFAULT_PARTS", "URL_CLIENTS", "DynamicURLStore"]

#: The URL part names, as encore's client had them, plus ``value`` (data and metadata).
DEFAULT_PARTS = {"permissions": "auth", "data": "data", "metadata": "metadata", "value": "value"}
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


class DynamicURLStore(Uploads, ClientTransactions, AbstractAuthorizingStore):
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
        #: Names this store object to the server (``X-Storekeeper-Origin``, sent with
        #: *remote_events*): the server's events repeat it, so that this object does
        #: not emit its own changes twice.
        self.origin = secrets.token_hex(8)
        self._follower: EventFollower | None = None
        self._transport: Transport | None = None
        self._user_tag: str | None = None
        self._server: dict[str, Any] = {}
        self._pending: PendingTransaction | None = None
        # Guards _pending and _writers; plain writes run side by side, a transaction alone.
        self._turn = threading.Condition()
        self._writers = 0

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
        if self.remote_events:
            transport.headers[ORIGIN] = self.origin
        tag = authorize(transport, credentials or self._default_credentials)
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
        """What this client promises over the server it is connected to (``/info``):
        ranges and server-side queries; conditional writes and persistence as the
        served store declares them; atomic transactions when the server commits batches
        in atomic transactions of the served store; isolated ones when those batches
        take read checks and the served store's transactions are isolated (optimistic
        isolation: see :mod:`storekeeper.backends._http_transactions`). Not
        ``cross_process``: a commit, once sent, is the server's to finish, so it may
        land after the client that sent it was stopped or killed."""
        served = self._server.get("capabilities", {})
        atomic = bool(self._server.get("batch")) and bool(served.get("atomic_transactions"))
        isolated = (
            bool(self._server.get("batch"))
            and bool(self._server.get("batch_checks"))
            and bool(served.get("isolated_transactions"))
        )
        return _CAPABILITIES.but(
            conditional_writes=bool(served.get("conditional_writes")),
            persistent=bool(served.get("persistent")),
            atomic_transactions=atomic,
            isolated_transactions=isolated,
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
        if key is not None and method in {"GET", "HEAD"} and self._pending is not None:
            self._note_read(key, response)
        if response.status not in ok:
            raise transport.fail(response, key)
        return response

    def _note_read(self, key: str, response: Any) -> None:
        """Inside a transaction, remember the version of *key* the server first showed."""
        pending = self._own_pending()
        if pending is None or key in pending.seen or key in pending.overlay:
            return
        if response.status == 404:
            pending.seen[key] = None
        elif response.status in (200, 206) and response.headers.get("ETag") is not None:
            pending.seen[key] = etag_version(response.headers["ETag"])

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """*key*'s value, read in one request (in memory up to ``INLINE_LIMIT`` bytes,
        else in a temporary file)."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            return self._overlay_value(key, entry)
        response = self._call("GET", self._url(key, "value"), key, (200,), stream=True)
        headers = response.headers
        length = int(headers.get(METADATA_LENGTH, "0"))
        total = headers.get("Content-Length")
        size = None if total is None else int(total) - length
        version = etag_version(headers.get("ETag"))
        created, modified = value_times(headers)
        if size is not None and 0 <= size <= INLINE_LIMIT:
            body = read_body(response, length + size)
            return BytesValue(
                body[length:],
                created=created,
                modified=modified,
                version=version,
                metadata_json=body[:length].decode("utf-8"),
            )
        stream = ResponseStream(response)
        try:
            metadata_json = read_exactly(stream, length).decode("utf-8")
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

    def version_of(self, key: str) -> str | None:
        """*key*'s current version (a HEAD request); KeyError if it is missing. ``None``
        for a key written in the caller's open transaction (its version is given at the
        commit) or when the server sends no ``ETag``."""
        check_key(key)
        entry = self._overlay(key)
        if entry is not None:
            if entry.deleted:
                raise missing(key)
            return None
        found = self._head(key)
        if found is None:
            raise missing(key)
        version: str | None = found["version"]
        return version

    def _head(self, key: str) -> dict[str, Any] | None:
        response = self._call("HEAD", self._url(key, "data"), key, (200, 404))
        if response.status == 404:
            return None
        length = response.headers.get("Content-Length")
        return {
            "size": None if length is None else int(length),
            "version": etag_version(response.headers.get("ETag")),
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
        return json_lines(ResponseStream(response))

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
        """Replace *key*'s data and metadata in one request; the version written.
        ``None`` inside a transaction: the server gives the version at the commit (see
        :mod:`storekeeper.backends._http_transactions`)."""
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
                        condition_headers(if_version, if_exists),
                    )
                else:
                    data = self._read_source(key, source, buffer_size, metadata_json)
                    if if_version is not None or if_exists is not None:
                        self._check_pending(key, if_version, if_exists)
                    version = None
                    send = partial(self._replay_set, key, data, metadata_json)
                    op = Op(batch_header("set", key, metadata_json), data)
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
                conditions = condition_headers(if_version, if_exists)
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
                op = Op(batch_header("set_data", key), content)
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
                    "PUT", key, metadata_json, condition_headers(if_version, if_exists)
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
                op = Op(batch_header("set_metadata", key, metadata_json))
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
                self._send_metadata("POST", key, given, condition_headers(if_version, None))
                merged_json = self._metadata_for_event(key, StoreUpdateEvent)
            else:
                self._check_pending(key, if_version, True)
                entry = pending.overlay.get(key)
                merged = self.get_metadata(key)
                merged.update(metadata)
                merged_json = encode_metadata(merged)
                data = None if entry is None else entry.data
                send = partial(self._send_metadata, "POST", key, given, {})
                op = Op(batch_header("update_metadata", key, given))
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
                headers = condition_headers(if_version, None)
                url = self.url_format_no_part.format(base=self.base_url, key=quote_key(key))
                self._call("DELETE", url, key, (200, 204), headers=headers)
            else:
                if not self._check_pending(key, if_version, None):
                    raise missing(key)
                send = partial(self._send_delete, key)
                pending.record(key, Overlay(deleted=True), send, Op(batch_header("delete", key)))
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
