"""``S3Store``: keys as objects in an S3-compatible bucket (``s3://bucket/prefix``).

Each key is one object under the store's prefix (names encoded reversibly and in key
order, see :mod:`storekeeper.backends._s3_names`), holding the data and, in the object's
own headers, the metadata JSON (a sidecar object when it is over S3's 2 KB limit), so a
``get`` is one request (see :mod:`storekeeper.backends._s3_objects`). Writes stream the
data (multipart over one part, about two parts in memory); ranged reads are HTTP
ranges. The client is boto3; credentials come from the usual places (environment,
shared profile, instance role) or the ``credentials`` option, and are never logged.

Promises (:attr:`S3Store.capabilities`):

- *Conditional writes*, across processes and hosts: ``if_version`` / ``if_exists`` map
  to ``If-Match`` on the ETag and ``If-None-Match: *``, checked by the server in the same
  step as the write. AWS S3 (since August/November 2024) and most compatible servers
  enforce them atomically: of racing conditional writers exactly one wins. A plain
  ``set`` of a value that fits one part is itself conditional (``If-None-Match`` for a
  key this store object has not seen, ``If-Match`` for one it has), looked up and
  retried after a lost race, so a new key costs one PUT and the creation time is carried
  forward exactly; a larger one (its stream cannot be sent twice) completes without a
  condition: the last writer wins.
- *Transactions* are isolated but *not atomic* across keys; exactly what they promise
  is in :mod:`storekeeper.backends._s3_transactions`.
- *Queries* use a metadata index checked against the listing (see
  :mod:`storekeeper.backends._s3_index`): exact, and ``ceil(keys / 1000)`` LIST requests
  plus one per key changed since the store object last looked. A new store object starts
  from the snapshot and deltas that queries and writers leave in the bucket (writers:
  one PUT per 64 writes and one at ``disconnect``), so its first query costs a few
  requests more, plus one HEAD per key whose write is in no snapshot or delta yet.
- *Values keep their version*: a value of up to ``inline_limit`` bytes is read whole by
  ``get``; a larger one streams when its data is read, by its object version on a
  versioned bucket, otherwise on the condition that the key is unchanged (a
  :class:`~storekeeper.errors.ConflictError` says its data is gone).
"""

from __future__ import annotations

import io
import operator
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import SplitResult

from storekeeper.backends import _s3_names as names
from storekeeper.backends._s3_bucket import (
    RACE_ATTEMPTS,
    Objects,
    SidecarGoneError,
    known_of,
)
from storekeeper.backends._s3_client import (
    MAX_ATTEMPTS,
    MissingObjectError,
    PreconditionError,
    call,
    make_client,
)
from storekeeper.backends._s3_objects import PART_SIZE, Head, chain, new_tag, take
from storekeeper.backends._s3_transactions import Base, Change, Transaction, apply
from storekeeper.errors import (
    AuthorizationError,
    BackendError,
    ConflictError,
    InvalidURLError,
)
from storekeeper.events import BaseEventManager
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Claim,
    Metadata,
    StoreCapabilities,
    check_key,
    check_precondition,
    check_select,
    check_write,
    decode_metadata,
    encode_metadata,
    iter_source,
    matches,
    missing,
    pick_metadata,
    query_terms,
    select_metadata,
    source_size,
    unpack_value,
)
from storekeeper.store.events import StoreDeleteEvent, StoreSetEvent
from storekeeper.store.listing import check_listing, fold_keys, walk, with_changes
from storekeeper.store.owners import busy, may_wait
from storekeeper.store.urls import count, create, text, url_options, url_path
from storekeeper.store.value import BytesValue, StreamValue, Value

__all__ = ["S3Store"]

BinaryStream = IO[bytes]

_CAPABILITIES = StoreCapabilities(
    conditional_writes=True,
    atomic_transactions=False,
    isolated_transactions=True,
    cross_process=True,
    server_side_queries=False,
    ranges=True,
    persistent=True,
)
_URL_OPTIONS = {
    "endpoint_url": text,
    "region": text,
    "inline_limit": count,
    "part_size": count,
    "max_connections": count,
    "max_attempts": count,
    "profile": text,
}


class S3Store(AbstractStore):
    """A store in the S3 bucket *bucket*, its keys' objects under *prefix*.

    *endpoint_url* and *region* select the server (default: AWS and boto3's region
    lookup); *credentials* (``aws_access_key_id``, ``aws_secret_access_key``,
    ``aws_session_token``) or a named *profile* override the standard lookup.
    *inline_limit*: values up to this size are read whole by ``get``. *part_size*:
    values over it go up as multipart uploads of parts this size (at least 5 MiB on
    AWS). *max_attempts*: attempts per request on throttling and server errors
    (botocore's standard retry mode: capped exponential backoff with jitter).
    *max_connections*: the connection pool shared by threads. The bucket must exist.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: Mapping[str, str] | None = None,
        inline_limit: int = 8 * 1024 * 1024,
        part_size: int = PART_SIZE,
        max_connections: int = 16,
        max_attempts: int = MAX_ATTEMPTS,
        profile: str | None = None,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        if not bucket:
            raise ValueError("an S3Store needs a bucket name")
        if part_size < 1 or inline_limit < 0 or max_connections < 1 or max_attempts < 1:
            raise ValueError("part_size, max_connections and max_attempts must be positive")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = dict(credentials) if credentials else None
        self.inline_limit = inline_limit
        self.part_size = part_size
        self._max_connections = max_connections
        self.max_attempts = max_attempts
        self.profile = profile
        self._objects = Objects(bucket, prefix, part_size)
        self._lock = threading.RLock()
        self._turn = threading.Condition(self._lock)
        self._transaction: Transaction | None = None
        self._writers = 0  # plain writes in flight (a transaction begins once none are)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @classmethod
    def from_url(cls, url: SplitResult, **options: Any) -> S3Store:
        """Build a store for ``s3://bucket/prefix?endpoint_url=...&region=...`` (also
        ``profile``, ``inline_limit``, ``part_size``, ``max_connections``,
        ``max_attempts``; credentials never go in a URL). The prefix is the path
        after the bucket, percent-decoded, as given (``s3://b/data/`` keeps keys under
        ``data/``)."""
        settings = url_options(url, _URL_OPTIONS)
        if not url.netloc or "@" in url.netloc or ":" in url.netloc:
            raise InvalidURLError(
                "an s3:// URL is s3://bucket/prefix, with no credentials or port in it "
                f"(got {url.geturl()!r}); give the server as ?endpoint_url=..."
            )
        prefix = url_path(url).removeprefix("/")
        return create(cls, url, url.netloc, prefix, **{**settings, **options})

    @property
    def capabilities(self) -> StoreCapabilities:
        """Conditional writes, isolated (not atomic) transactions, ranges; shared by any
        number of processes and hosts; persistent."""
        return _CAPABILITIES

    def info(self) -> dict[str, Any]:
        """Store description; adds the bucket, prefix and endpoint."""
        return {
            **super().info(),
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint_url,
        }

    # -- connection ----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Create the client and check that the bucket is reachable."""
        given = credentials if credentials is not None else self._credentials
        client = make_client(
            self.endpoint_url,
            self.region,
            given,
            self._max_connections,
            self.max_attempts,
            self.profile,
        )
        try:
            call(f"bucket {self.bucket!r}", client.head_bucket, Bucket=self.bucket)
        except MissingObjectError as exc:  # HEAD answers a bare 404, without a code
            client.close()
            raise BackendError(f"the S3 bucket {self.bucket!r} does not exist") from exc
        except AuthorizationError:
            # HEAD's 403 has no body to say why; a request with one tells unknown
            # credentials (AuthenticationError) from a real denial.
            try:
                call(
                    f"bucket {self.bucket!r}",
                    client.list_objects_v2,
                    Bucket=self.bucket,
                    Prefix=self.prefix,
                    MaxKeys=1,
                )
            finally:
                client.close()
            raise
        self._objects.client = client
        super().connect()

    def disconnect(self) -> None:
        """Leave this store object's last writes to the index in the bucket (a delta,
        one PUT, see :mod:`storekeeper.backends._s3_index`); close the client's
        connections."""
        if self._objects.client is not None:
            self._objects.index.flush()
        client, self._objects.client = self._objects.client, None
        if client is not None:
            client.close()
        super().disconnect()

    # -- reads -------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        return self._objects.name(key)

    def get(self, key: str) -> Value:
        """*key*'s value in one GET (two when its metadata is in a sidecar)."""
        check_key(key)
        self._require_connection()
        transaction = self._own_transaction_or_none()
        if transaction is not None and key in transaction.changes:
            return self._pending_value(key, transaction.changes[key])
        name = self._name(key)
        for _ in range(3):
            try:
                value, head = self._objects.fetch_value(key, name, self.inline_limit)
            except MissingObjectError:
                if transaction is not None:
                    transaction.bases.setdefault(key, Base(None))
                raise missing(key) from None
            except SidecarGoneError:
                continue  # overwritten between the two requests: read the new one
            if transaction is not None:
                transaction.bases.setdefault(key, _base_of(head))
            return value
        raise ConflictError(f"key {key!r} kept changing while it was read")

    def _pending_value(self, key: str, change: Change) -> Value:
        if change.data is None:
            raise missing(key)
        if isinstance(change.data, bytes):
            return BytesValue(
                change.data, version=change.version, metadata_json=change.metadata_json
            )
        path = change.data
        return StreamValue(
            lambda: open(path, "rb"),
            size=change.size,
            version=change.version,
            metadata_json=change.metadata_json,
        )

    def exists(self, key: str) -> bool:
        """Whether *key* exists (one HEAD)."""
        check_key(key)
        self._require_connection()
        transaction = self._own_transaction_or_none()
        if transaction is not None:
            # recorded, so the commit checks that the key is still as this read found it
            return self._visible_version(transaction, key, self._name(key)) is not None
        return self._objects.head(key, self._name(key)) is not None

    def version_of(self, key: str) -> str:
        """*key*'s current version, from one HEAD (no data transferred)."""
        check_key(key)
        self._require_connection()
        transaction = self._own_transaction_or_none()
        if transaction is not None:
            version = self._visible_version(transaction, key, self._name(key))
            if version is None:
                raise missing(key)
            return version
        head = self._objects.head(key, self._name(key))
        if head is None:
            raise missing(key)
        return head.version

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """*key*'s metadata from a HEAD (no data transferred)."""
        check_key(key)
        self._require_connection()
        names_ = check_select(select)
        transaction = self._own_transaction_or_none()
        if transaction is not None and key in transaction.changes:
            change = transaction.changes[key]
            if change.data is None:
                raise missing(key)
            return select_metadata(decode_metadata(change.metadata_json), names_)
        for _ in range(3):
            head = self._objects.head(key, self._name(key))
            if transaction is not None:
                transaction.bases.setdefault(key, Base(None) if head is None else _base_of(head))
            if head is None:
                raise missing(key)
            try:
                return select_metadata(decode_metadata(self._objects.metadata_json(head)), names_)
            except MissingObjectError:
                continue
        raise ConflictError(f"key {key!r} kept changing while it was read")

    def get_data_range(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> BinaryStream:
        """Bytes ``[start, end)`` of *key*'s data in one ranged GET."""
        check_key(key)
        self._require_connection()
        # Offsets are integers as a slice takes them (True is 1, 1.5 a TypeError), like
        # every backend that slices a value.
        start = None if start is None else operator.index(start)
        end = None if end is None else operator.index(end)
        negative = (start is not None and start < 0) or (end is not None and end < 0)
        if negative or self._own_transaction_or_none() is not None:
            return super().get_data_range(key, start, end)
        lo = start or 0
        if end is not None and end <= lo:
            if not self.exists(key):
                raise missing(key)
            return io.BytesIO()
        try:
            return self._objects.read_range(self._name(key), lo, end)
        except MissingObjectError:
            raise missing(key) from None

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs, in key order, from the metadata index
        brought up to date with one listing (see :mod:`storekeeper.backends._s3_index`)."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        names_ = check_select(select)
        entries = self._objects.index.refresh(self._objects.listed())
        pending = self._pending_changes()
        result = []
        for name, metadata_json in entries:
            key = names.decode_name(self.prefix, name)
            if key is None or key in pending:
                continue
            metadata = decode_metadata(metadata_json)
            if matches(metadata, terms):
                result.append((key, pick_metadata(metadata, names_)))
        for key, change in pending.items():
            if change.data is not None:
                metadata = decode_metadata(change.metadata_json)
                if matches(metadata, terms):
                    result.append((key, pick_metadata(metadata, names_)))
        result.sort(key=lambda item: item[0])  # the listing's order is not quite key order
        return result

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys; with no terms, the listing alone (no metadata read)."""
        if where or kwargs:
            return super().query_keys(*where, **kwargs)
        return list(self.list_keys())

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* in key order (see :meth:`AbstractStore.list_keys`): the
        bucket's listing, with S3's own delimiter folding when the delimiter is one an
        object name holds as it is."""
        check_listing(prefix, delimiter)
        self._require_connection()
        changes = {key: change.data is not None for key, change in self._pending_changes().items()}
        if changes:

            def keys_from(low: str) -> Iterator[str]:
                return (key for key in self._objects.keys_under(prefix) if key >= low)

            return walk(with_changes(keys_from, changes), prefix, delimiter)
        if delimiter is None or names.needs_escape(delimiter) or "\x01" in delimiter:
            return fold_keys(self._objects.keys_under(prefix), prefix, delimiter)
        return self._objects.folded(prefix, delimiter)

    # -- writes --------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str:
        """Replace *key*'s value (see :meth:`AbstractStore.set`), as one object write
        conditional on the key's version."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        try:
            metadata_json = encode_metadata(metadata)
            name = self._name(key)
            chunks = self._chunks(key, source, buffer_size, metadata_json)
            transaction = self._enter_write()
            try:
                if transaction is not None:
                    return self._set_in(
                        transaction, key, name, chunks, metadata_json, if_version, if_exists
                    )
                return self._put(key, name, chunks, metadata_json, if_version, if_exists)
            finally:
                self._leave_write(transaction)
        finally:
            if owned:
                source.close()  # type: ignore[attr-defined]

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data: the object is written again (S3
        cannot change an object's headers in place), in a transaction on its version."""
        check_write(key, if_version, if_exists)
        encode_metadata(metadata)  # refuse bad metadata (None included) before any request
        super().set_metadata(key, metadata, if_version=if_version, if_exists=if_exists)

    def _chunks(
        self, key: str, source: object, buffer_size: int, metadata_json: str
    ) -> Iterator[bytes]:
        """*source* as chunks, with progress events for streams when anyone listens."""
        chunks = iter_source(source, buffer_size)
        if isinstance(source, bytes) or not self._progress_observed():
            return chunks
        return self._with_progress(key, chunks, source_size(source), metadata_json)

    def _with_progress(
        self, key: str, chunks: Iterator[bytes], size: int | None, metadata_json: str
    ) -> Iterator[bytes]:
        metadata = self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            total = 0
            for chunk in chunks:
                total += len(chunk)
                yield chunk
                progress.step(step=total)

    def _put(
        self,
        key: str,
        name: str,
        chunks: Iterator[bytes],
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """Write *key* now (no transaction): read the data, then put it on the right
        condition, retrying a plain set that lost a race."""
        first = b"".join(take(chunks, self.part_size))
        small = len(first) < self.part_size
        source: Iterable[bytes] = [first] if small else chain([first], chunks)
        del first  # a large value's first part is not kept for the whole upload
        conditional = if_version is not None or if_exists is not None
        known = None if (if_exists is True or not small) else self._objects.recall(key)
        # A small plain set or create-only set goes straight to the conditional PUT (the
        # server checks; a lost race looks then): one request for a new key.
        blind = small and if_version is None and if_exists is not True
        if (known is None and not blind) or (
            if_version is not None and (known is None or known.version != if_version)
        ):
            head = self._objects.head(key, name)
            check_precondition(key, None if head is None else head.version, if_version, if_exists)
            known = None if head is None else known_of(head)
        if if_exists is False:
            known = None
        try:
            written = self._objects.write(
                key,
                name,
                lambda: source,
                new_tag(),
                metadata_json,
                known,
                # A small value is in memory and may be sent again after losing a race: a
                # plain set or if_exists=True then looks again; a large one cannot, so a
                # plain set of it does not wait for a condition (the last writer wins).
                retry=small and if_version is None and if_exists is not False,
                must_exist=if_exists is True,
                condition={} if not (small or conditional) else None,
            )
        except PreconditionError:
            raise ConflictError(_conflict_message(key, if_version, if_exists)) from None
        self._emit_change(StoreSetEvent, key, metadata_json)
        return written.version

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing. A conditional delete on
        the object's ETag, so a concurrent write is never deleted unseen."""
        check_write(key, if_version)
        self._require_connection()
        name = self._name(key)
        transaction = self._enter_write()
        try:
            if transaction is not None:
                self._delete_in(transaction, key, name, if_version)
                return
            metadata_json = self._delete_now(key, name, if_version)
        finally:
            self._leave_write(transaction)
        self._emit_change(StoreDeleteEvent, key, metadata_json)

    def _delete_now(self, key: str, name: str, if_version: str | None) -> str:
        """Delete *key*'s object on the condition that it is the one just looked at;
        its metadata JSON (``{}`` when no listener wants it)."""
        for _ in range(RACE_ATTEMPTS):
            head = self._objects.head(key, name)
            if head is None:
                raise missing(key)
            check_precondition(key, head.version, if_version, None)
            observed = self._observed(StoreDeleteEvent)
            metadata_json = self._objects.metadata_json(head) if observed else "{}"
            try:
                self._objects.delete(key, name, head.etag, head.sidecar)
            except PreconditionError:
                if if_version is not None:
                    raise ConflictError(_conflict_message(key, if_version, None)) from None
                continue
            except MissingObjectError:
                raise missing(key) from None
            return metadata_json
        raise ConflictError(_conflict_message(key, None, None))

    # -- transactions --------------------------------------------------------------------
    def _own_transaction_or_none(self) -> Transaction | None:
        transaction = self._transaction
        if transaction is not None and transaction.claim.is_mine():
            return transaction
        return None

    def _pending_changes(self) -> dict[str, Change]:
        transaction = self._own_transaction_or_none()
        return {} if transaction is None else dict(transaction.changes)

    def _await_turn(self) -> Transaction | None:
        """(Lock held.) The caller's own transaction, or ``None`` once no transaction is
        open; waits for another thread's, refuses where waiting would deadlock."""
        while True:
            transaction = self._transaction
            if transaction is None:
                return None
            claim = transaction.claim
            if claim.is_mine():
                return transaction
            if claim.blocks_here():
                raise claim.refusal(self)
            if not may_wait():
                raise busy(self)
            self._turn.wait()

    def _enter_write(self) -> Transaction | None:
        with self._lock:
            transaction = self._await_turn()
            if transaction is None:
                self._writers += 1
            return transaction

    def _leave_write(self, transaction: Transaction | None) -> None:
        if transaction is None:
            with self._lock:
                self._writers -= 1
                self._turn.notify_all()

    def _base(self, transaction: Transaction, key: str, name: str) -> Base:
        base = transaction.bases.get(key)
        if base is None:
            head = self._objects.head(key, name)
            base = Base(None) if head is None else _base_of(head)
            transaction.bases[key] = base
        return base

    def _visible_version(self, transaction: Transaction, key: str, name: str) -> str | None:
        change = transaction.changes.get(key)
        if change is not None:
            return None if change.data is None else change.version
        return self._base(transaction, key, name).version

    def _set_in(
        self,
        transaction: Transaction,
        key: str,
        name: str,
        chunks: Iterator[bytes],
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        if if_version is not None or if_exists is not None:
            check_precondition(
                key, self._visible_version(transaction, key, name), if_version, if_exists
            )
        first = b"".join(take(chunks, self.part_size))
        if len(first) < self.part_size:
            data: bytes | str = first
            size = len(first)
        else:
            data, size = transaction.spill(chain([first], chunks))
        change = Change(name, data, metadata_json, new_tag(), size)
        transaction.record(key, change)
        self._emit_change(StoreSetEvent, key, metadata_json)
        return change.version

    def _delete_in(
        self, transaction: Transaction, key: str, name: str, if_version: str | None
    ) -> None:
        current = self._visible_version(transaction, key, name)
        if current is None:
            raise missing(key)
        check_precondition(key, current, if_version, None)
        change = transaction.changes.get(key)
        base = self._base(transaction, key, name)  # what the commit deletes, if anything
        if change is not None:
            metadata_json = change.metadata_json
        elif base.metadata_json is not None:
            metadata_json = base.metadata_json
        else:
            metadata_json = self._objects.sidecar_json(base.sidecar)
        transaction.record(key, Change(name, None, metadata_json, b"", 0))
        self._emit_change(StoreDeleteEvent, key, metadata_json)

    def _begin_transaction(self) -> None:
        self._require_connection()
        with self._lock:
            while True:
                mine = self._await_turn()
                assert mine is None  # a block inside a transaction nests instead
                if self._writers == 0:
                    break
                if not may_wait():
                    raise busy(self)
                self._turn.wait()
            self._transaction = Transaction(Claim.take())

    def _commit_transaction(self) -> None:
        transaction = self._own_transaction()
        try:
            apply(self._objects, transaction)
        finally:
            self._end(transaction)

    def _rollback_transaction(self) -> None:
        self._end(self._own_transaction())

    def _own_transaction(self) -> Transaction:
        transaction = self._transaction
        assert transaction is not None and transaction.claim.is_mine()  # hooks run in it
        return transaction

    def _end(self, transaction: Transaction) -> None:
        transaction.discard_files()
        with self._lock:
            self._transaction = None
            self._turn.notify_all()

    def _savepoint(self) -> object:
        return len(self._own_transaction().log)

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, int)  # made by _savepoint
        self._own_transaction().rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None


def _base_of(head: Head) -> Base:
    return Base(head.etag, head.version, head.created, head.sidecar, head.metadata_json)


def _conflict_message(key: str, if_version: str | None, if_exists: bool | None) -> str:
    if if_exists is False:
        return f"key {key!r} already exists (if_exists=False)"
    if if_version is not None:
        return f"key {key!r} is no longer at version {if_version!r}"
    if if_exists is True:
        return f"key {key!r} changed or was deleted meanwhile (if_exists=True)"
    return f"key {key!r} kept changing under other writers"
