"""``RedisStore``: a store in a Redis server (``redis://host:port/db?prefix=...``).

Needs the ``[redis]`` extra (redis-py with hiredis). Works with a standalone Redis 6.2
or newer (not Redis Cluster).

- **Layout**: every structure of a store lives under its root ``{prefix}`` (default
  ``{storekeeper}``), so stores with different prefixes share a server without seeing
  each other; the braces make the root unambiguous (a prefix holds neither brace), and
  a key, whatever it holds, only ever names a record under the root. See
  ``_redis_scripts`` for the structures.
- **Atomicity**: each write of a key is one Lua script that changes the record (data,
  metadata, version, times), the key index, the metadata indexes and the change stream
  together, after checking ``if_version`` / ``if_exists`` in the same step: of racing
  conditional writers, in any process, exactly one wins.
- **Transactions** are optimistic (see ``_redis_transactions``): reads ``WATCH`` what
  they read, writes are kept aside and applied together by ``MULTI``/``EXEC``; a
  transaction whose reads another writer changed raises
  :class:`~storekeeper.errors.ConflictError` at commit and applies nothing. Within one
  store object one transaction is open at a time: another thread's ``transaction()``
  waits for it to end, while another asyncio task of the same thread gets
  :class:`~storekeeper.errors.TransactionError` at once (waiting would block the event
  loop that must finish the first). So only other processes' writes and writes
  outside transactions can make one fail with a conflict.
- **Large values** (over ``inline_limit``, default 1 MiB) are streamed in and out in
  chunks of ``chunk_size`` bytes (default 1 MiB), never held whole in memory. A value
  replaced or deleted keeps its chunks for ``grace`` seconds (default 300) after its
  last read, so a value or stream read before an overwrite keeps reading its version.
- **Queries** read secondary indexes kept in sets and sorted sets by the same scripts
  (see ``_redis_index``), and ``list_keys`` / ``glob`` read the key index with
  ``ZRANGEBYLEX``; nothing scans the database (no ``KEYS``, no ``SCAN``).
- **Events across processes**: every write appends to the stream ``{prefix}X``
  (trimmed to about ``stream_length`` entries, default 100,000; ``events=False``
  writes and reads none), and each connected store runs a listener thread that
  delivers other store objects' changes (in this process or any other, on any host)
  to its ``event_manager`` as the usual :class:`StoreSetEvent`, :class:`StoreUpdateEvent`
  or :class:`StoreDeleteEvent`, after their commit, with ``event.remote`` true (false
  on the events of the store's own writes) and ``event.version``. A transaction's
  writes arrive as its own listeners receive them: one event per write, in order
  (none for writes a rolled-back savepoint undid), all appended by the commit itself.
  A listener that reconnects goes on from its cursor (:attr:`RedisStore.event_cursor`;
  pass it back as ``event_cursor=`` to a new store to resume), missing nothing the
  stream still holds.
- **Durability** is the server's: :meth:`RedisStore.info` reports its ``save`` and
  ``appendonly`` settings and what they mean. With neither (as on a cache-only server)
  everything lives in the server's memory and a restart of the server loses every key.
- **Errors** from redis-py are raised as storekeeper errors (see ``_redis_errors``).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import SplitResult

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from storekeeper.backends._redis_commits import Transactional
from storekeeper.backends._redis_errors import translate, translated
from storekeeper.backends._redis_events import Entry, Listener, checked_cursor, position
from storekeeper.backends._redis_index import index_entries
from storekeeper.backends._redis_reads import Reads
from storekeeper.backends._redis_scripts import (
    APPLY,
    STATUS_CONFLICT,
    STATUS_MISSING,
    STATUS_STAGING_GONE,
)
from storekeeper.backends._redis_server import URL_OPTIONS, durability, persistence, server_url
from storekeeper.backends._redis_transactions import Transaction
from storekeeper.backends._redis_values import STAGING_SECONDS, Staged, chunk_set, stage
from storekeeper.errors import BackendError
from storekeeper.events import BaseEventManager
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    OwnerLock,
    StoreCapabilities,
    check_buffer_size,
    check_precondition,
    check_write,
    decode_metadata,
    encode_metadata,
    missing,
    new_version,
    source_size,
    split_pairs,
    unpack_value,
)
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreKeyEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.value import Value

__all__ = ["RedisStore"]

_MIB = 1024 * 1024
#: Inline data longer than this goes to the write script through a staging hash.
_VIA_STAGING = 2048
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9:._/-]")
_ACTIONS: dict[bytes, type[StoreKeyEvent]] = {
    b"set": StoreSetEvent,
    b"update": StoreUpdateEvent,
    b"delete": StoreDeleteEvent,
}

_NAMES: dict[object, str] = {cls: name.decode() for name, cls in _ACTIONS.items()}


class RedisStore(Reads, Transactional, AbstractStore):
    """A store kept in a Redis server; safe to share between threads and processes.

    *url* is the server's ``redis://`` or ``rediss://`` URL (credentials, host, port,
    database number). *prefix* names the store on that server (no ``{`` or ``}``);
    *inline_limit* and *chunk_size* are in bytes; *grace* is how long (seconds) the
    data of a replaced value stays readable after its last read; *stream_length* bounds
    the change stream; *events* false turns cross-process events off; *event_cursor*
    resumes delivery after that stream id (``<milliseconds>-<sequence>``, as
    :attr:`event_cursor` gives it; anything else is a :class:`ValueError`); *timeout*
    bounds each server call (seconds).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "storekeeper",
        inline_limit: int = _MIB,
        chunk_size: int = _MIB,
        grace: float = 300.0,
        stream_length: int = 100_000,
        events: bool = True,
        event_cursor: str | None = None,
        timeout: float = 30.0,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"a Redis store prefix is a non-empty str without braces: {prefix!r}")
        if inline_limit < 0 or chunk_size < 1 or grace < 1 or timeout <= 0:
            raise ValueError("inline_limit >= 0, chunk_size >= 1, grace >= 1, timeout > 0")
        self.url = url
        self.prefix = prefix
        self.root = "{" + prefix + "}"
        self.inline_limit = inline_limit
        self.chunk_size = chunk_size
        self.grace = int(grace)
        self.stream_length = stream_length if events else 0
        self.timeout = timeout
        self._start_cursor = None if event_cursor is None else checked_cursor(event_cursor)
        self._client: Any = None
        self._listener: Listener | None = None
        self._origin_token = secrets.token_hex(8)
        self._start_added: int | None = None
        self._turn = OwnerLock(self)
        self._transaction: Transaction | None = None

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> RedisStore:
        """A store for ``redis://[user:password@]host[:port][/db][?options]`` (or
        ``rediss://`` for TLS). Options: ``prefix``, ``inline_limit``, ``chunk_size``,
        ``stream_length`` (integers), ``grace``, ``timeout`` (seconds), ``events``
        (true/false); keyword *options* win over them. Anything else is an
        :class:`~storekeeper.errors.InvalidURLError` naming the valid ones."""
        settings = urls.url_options(parts, URL_OPTIONS)
        settings.update(options)
        return urls.create(cls, parts, server_url(parts), **settings)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Every capability: conditional writes and atomic, isolated (optimistic)
        transactions across processes, server-side queries, chunked ranges, and data
        that outlives the process (as long as the server keeps it: see :meth:`info`)."""
        return StoreCapabilities.everything()

    def info(self) -> dict[str, Any]:
        """Store description: ``url`` (without password), ``prefix``, ``persistence``
        (the server's ``save`` / ``appendonly`` / ``appendfsync`` settings) and
        ``durability`` (one sentence on what an acknowledged write survives)."""
        self._require_connection()
        with translate("reading the server's persistence settings"):
            settings = persistence(self._client)
        return {
            **super().info(),
            "url": _without_password(self.url),
            "prefix": self.prefix,
            "persistence": settings,
            "durability": durability(settings),
        }

    @property
    def origin(self) -> str:
        """The id this store object writes into the change stream with each change:
        events whose entry carries it are this object's own and are not delivered to it
        as remote. One per store object and process (a copy in a forked child has its
        own)."""
        return f"{self._origin_token}-{os.getpid()}"

    @property
    def event_gaps(self) -> int:
        """How many times the listener found changes trimmed from the stream before it
        could deliver them (after being disconnected for longer than about
        ``stream_length`` changes); each is also logged as a warning."""
        return 0 if self._listener is None else self._listener.gaps

    @property
    def event_cursor(self) -> str | None:
        """The id of the last change-stream entry the listener has delivered (pass it
        as ``event_cursor=`` to resume there), or ``None`` without a listener."""
        return None if self._listener is None else self._listener.cursor

    # -- connection ------------------------------------------------------------------------
    @property
    def client_name(self) -> str:
        """The name the store's connections give themselves (``CLIENT SETNAME``), for
        ``CLIENT LIST``: ``storekeeper:<prefix>``, the listener's ``storekeeper-events:
        <prefix>`` (characters Redis refuses in a name are replaced by ``_``)."""
        return "storekeeper:" + _NAME_UNSAFE.sub("_", self.prefix)[:100]

    def _new_client(self) -> Any:
        # No automatic retries: a write whose reply was lost may have been applied, and
        # sending it again would apply it twice (its change event included).
        return redis.Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            client_name=self.client_name,
        )

    def connect(self, credentials: Any = None) -> None:
        """Connect to the server (checked with ``PING``) and start the event listener."""
        if self._connected:
            return
        client = self._new_client()
        with translate(f"connecting to {_without_password(self.url)}"):
            client.ping()
            self._apply_script = client.register_script(APPLY)
            self._apply_sha = client.script_load(APPLY)
            if self._start_cursor is None:
                cursor, added = position(client, self.root + "X")
            else:
                cursor, added = self._start_cursor, self._start_added
        self._client = client
        if self.stream_length:
            self._listener = Listener(
                self._listener_client,
                client,
                self.root + "X",
                cursor,
                added,
                self._deliver,
                self._listened,
            )
        super().connect(credentials)

    def _listener_client(self, read_timeout: float) -> Any:
        return redis.Redis.from_url(
            self.url,
            single_connection_client=True,
            socket_timeout=read_timeout,
            socket_connect_timeout=self.timeout,
            client_name=self.client_name.replace("storekeeper:", "storekeeper-events:", 1),
        )

    def disconnect(self) -> None:
        """Stop the listener and close the connections (connecting again is allowed)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            # Connecting again resumes where this listener stopped.
            self._start_cursor, self._start_added = listener.cursor, listener.added
        client, self._client = self._client, None
        if client is not None:
            client.close()
        super().disconnect()

    def _listened(self) -> bool:
        has_listeners = self.event_manager.has_listeners
        return any(has_listeners(cls) for cls in _ACTIONS.values())

    def _deliver(self, entry: Entry) -> None:
        """Emit the change in *entry* if another store object made it."""
        _, fields = entry
        if fields.get(b"o", b"").decode() == self.origin:
            return
        cls = _ACTIONS.get(fields.get(b"a", b""))
        if cls is None or not self.event_manager.has_listeners(cls):
            return
        self.event_manager.emit(
            cls(
                self,
                key=fields[b"k"].decode(),
                metadata=decode_metadata(fields[b"m"].decode()),
                version=fields[b"v"].decode(),
                remote=True,
                stream_id=entry[0],
            )
        )

    def _emit_local(self, cls: type[StoreKeyEvent], key: str, metadata: str, version: str) -> None:
        if self._observed(cls):
            self._emit(
                cls(
                    self, key=key, metadata=decode_metadata(metadata), version=version, remote=False
                )
            )
        transaction, state = self._mine(), self._transaction_state()
        if transaction is not None and state is not None and state.events:
            # The event as held for local listeners (a set inside update() is held as
            # an update): other processes receive the same one when the commit lands.
            action = _NAMES.get(type(state.events[-1]), _NAMES[cls])
            fields = {"o": self.origin, "a": action, "k": key, "m": metadata, "v": version}
            transaction.note_event(fields)

    # -- the write core ----------------------------------------------------------------------
    def _mine(self) -> Transaction | None:
        """The caller's own open transaction, if any."""
        transaction = self._transaction
        if transaction is not None and transaction.claim.is_mine():
            return transaction
        return None

    def _stage(
        self, key: str, source: object, buffer_size: int, metadata_json: str | None
    ) -> Staged:
        if isinstance(source, bytes) or not self._progress_observed():
            return stage(
                self._client, self.root, source, buffer_size, self.inline_limit, self.chunk_size
            )
        metadata = self._progress_metadata(metadata_json)
        size = source_size(source)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            return stage(
                self._client,
                self.root,
                source,
                buffer_size,
                self.inline_limit,
                self.chunk_size,
                lambda total: progress.step(step=total),
            )

    def _args(
        self,
        key: str,
        mode: str,
        staged: Staged | None,
        metadata_json: str,
        version: str,
        now: float,
        action: str,
        if_version: str | None = None,
        if_exists: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """The ARGV of one ``APPLY`` call (*metadata*: *metadata_json* decoded, when
        the caller has it, so the index entries need no second parse)."""
        if mode not in ("set", "meta"):
            entries = "[]"
        else:
            entries = index_entries(
                decode_metadata(metadata_json) if metadata is None else metadata
            )
        return [
            self.root,
            key,
            mode,
            "" if if_exists is None else ("1" if if_exists else "0"),
            "0" if if_version is None else "1",
            if_version or "",
            version,
            repr(now),
            b"" if staged is None or staged.inline is None else staged.inline,
            "" if staged is None or staged.blob is None else staged.blob,
            0 if staged is None else staged.size,
            self.chunk_size if staged is None else staged.chunk_size,
            metadata_json,
            entries,
            self.origin,
            action,
            self.stream_length,
            self.grace,
            "",
        ]

    def _enqueue(self, pipe: Any, args: list[Any]) -> bool:
        """Queue one ``APPLY`` on *pipe*, large inline data first into a staging hash
        (see ``_redis_scripts``); whether it took that path."""
        data = args[8]
        staged = args[2] in ("set", "data") and len(data) > _VIA_STAGING
        if staged:
            name = f"w:{secrets.token_hex(10)}"
            pipe.hset(self.root + name, mapping={"d": data, "z": args[10]})
            pipe.expire(self.root + name, STAGING_SECONDS)
            args[8], args[18] = b"", name
        # Not the Script object: in a pipeline it asks SCRIPT EXISTS first, a round trip
        # per pipeline. The script was loaded at connect; see _reload for NOSCRIPT.
        pipe.execute_command("EVALSHA", self._apply_sha, 0, *args)
        return staged

    def _reload(self) -> None:
        """Load the write script again (after ``SCRIPT FLUSH`` or a server restart)."""
        with translate("loading the store's write script"):
            self._apply_sha = self._client.script_load(APPLY)

    def _apply(self, key: str, args: list[Any], if_version: Any, if_exists: Any) -> str:
        """Run one ``APPLY``; the metadata JSON it reports, or the conflict raised."""
        try:  # not "with translate(...)": this runs on every write
            if len(args[8]) > _VIA_STAGING:
                pipe = self._client.pipeline(transaction=False)
                self._enqueue(pipe, args)
                try:
                    status, text = pipe.execute()[-1]
                except redis.exceptions.NoScriptError:
                    self._reload()  # the staging hash was written: run the script alone
                    status, text = self._apply_script(keys=[], args=args, client=self._client)
            else:
                status, text = self._apply_script(keys=[], args=args, client=self._client)
        except redis.RedisError as exc:
            raise translated(exc, f"writing {key!r}") from exc
        if status == STATUS_STAGING_GONE:
            raise BackendError(f"the data written to {key!r} expired before it was stored")
        found: str = text.decode()
        if status == STATUS_CONFLICT:
            check_precondition(key, found or None, if_version, if_exists)
        if status == STATUS_MISSING:
            raise missing(key)
        return found

    def _write(
        self,
        key: str,
        mode: str,
        staged: Staged | None,
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """A write outside transactions; emits its event and returns its version."""
        version = new_version()
        now = time.time()
        args = self._args(
            key, mode, staged, metadata_json, version, now, "set", if_version, if_exists, metadata
        )
        try:
            stored = self._apply(key, args, if_version, if_exists)
        except BaseException:
            if staged is not None and staged.blob is not None:
                self._client.unlink(chunk_set(self.root, staged.blob))
            raise
        self._emit_local(StoreSetEvent, key, stored, version)
        return version

    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str:
        """Replace *key*'s data and metadata in one atomic step (see
        :meth:`AbstractStore.set`); large data is streamed to the server first."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            staged = self._stage(key, source, buffer_size, metadata_json)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]
        transaction = self._mine()
        if transaction is None:
            checked = cast(Mapping[str, Any], metadata)  # encode_metadata accepted it
            return self._write(key, "set", staged, metadata_json, if_version, if_exists, checked)
        return self._write_in(transaction, key, staged, metadata_json, if_version, if_exists)

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata (``{}`` for a new key), in one step."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        if self._mine() is not None:
            super().set_data(key, data, buffer_size, if_version=if_version, if_exists=if_exists)
            return
        staged = self._stage(key, data, buffer_size, None)
        self._write(key, "data", staged, "{}", if_version, if_exists)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data (empty for a new key), in one step."""
        check_write(key, if_version, if_exists)
        self._require_connection()
        metadata_json = encode_metadata(metadata)
        if self._mine() is not None:
            super().set_metadata(key, metadata, if_version=if_version, if_exists=if_exists)
            return
        self._write(key, "meta", None, metadata_json, if_version, if_exists, metadata)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing.

        Outside a transaction: read, merge and write under ``WATCH``, again until no
        other writer changed the key in between (so no concurrent update is lost).
        """
        check_write(key, if_version)
        self._require_connection()
        encode_metadata(metadata)
        if self._mine() is not None:
            super().update_metadata(key, metadata, if_version=if_version)
            return
        name = f"{self.root}k:{key}"
        while True:
            with translate(f"updating {key!r}"), self._client.pipeline() as pipe:
                try:
                    pipe.watch(name)
                    current, text = pipe.hmget(name, "v", "m")
                    if current is None:
                        raise missing(key)
                    check_precondition(key, current.decode(), if_version, None)
                    merged = decode_metadata(text.decode())
                    merged.update(metadata)
                    merged_json = encode_metadata(merged)
                    version = new_version()
                    args = self._args(
                        key, "meta", None, merged_json, version, time.time(), "update"
                    )
                    pipe.multi()
                    self._enqueue(pipe, args)
                    pipe.execute()
                except redis.WatchError:
                    continue
                except redis.exceptions.NoScriptError:
                    self._reload()  # nothing was applied: read and merge again
                    continue
            self._emit_local(StoreUpdateEvent, key, merged_json, version)
            return

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        transaction = self._mine()
        if transaction is not None:
            old = transaction.record(key)
            if old is None:
                raise missing(key)
            check_precondition(key, old[b"v"].decode(), if_version, None)
            transaction.put(key, None)
            self._emit_local(StoreDeleteEvent, key, old[b"m"].decode(), "")
            return
        version = new_version()
        args = self._args(key, "del", None, "{}", version, time.time(), "delete", if_version)
        held = self._apply(key, args, if_version, None)
        self._emit_local(StoreDeleteEvent, key, held, version)

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """Set every key to its value (paired like ``zip``) in one ``MULTI``/``EXEC``:
        all of them or, if anything fails before it, none."""
        check_buffer_size(buffer_size)
        key_list, value_list = split_pairs(keys, values)
        if self._mine() is not None:
            super().multiset(key_list, value_list, buffer_size)
            return
        self._require_connection()
        now = time.time()
        calls: list[tuple[str, list[Any], str, str]] = []
        staged_sets: list[str] = []
        try:
            for key, value in zip(key_list, value_list, strict=True):
                source, metadata, owned = unpack_value(value)
                try:
                    metadata_json = encode_metadata(metadata)
                    staged = self._stage(key, source, buffer_size, metadata_json)
                finally:
                    if owned:
                        source.close()  # type: ignore[attr-defined]
                if staged.blob is not None:
                    staged_sets.append(chunk_set(self.root, staged.blob))
                version = new_version()
                args = self._args(
                    key,
                    "set",
                    staged,
                    metadata_json,
                    version,
                    now,
                    "set",
                    metadata=cast(Mapping[str, Any], metadata),  # encode_metadata accepted it
                )
                calls.append((key, args, metadata_json, version))
            with translate(f"setting {len(calls)} keys"):
                pipe = self._client.pipeline(transaction=True)
                for _, args, _, _ in calls:
                    self._enqueue(pipe, args)
                try:
                    pipe.execute()
                except redis.exceptions.NoScriptError:
                    # Every script failed alike, nothing but staging hashes was written:
                    # run the scripts again (the staging hashes are still there).
                    self._reload()
                    pipe = self._client.pipeline(transaction=True)
                    for _, args, _, _ in calls:
                        pipe.execute_command("EVALSHA", self._apply_sha, 0, *args)
                    pipe.execute()
        except BaseException:
            if staged_sets:
                self._client.unlink(*staged_sets)
            raise
        for key, _, metadata_json, version in calls:
            self._emit_local(StoreSetEvent, key, metadata_json, version)


def _without_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else ':***'}@{tail}"
