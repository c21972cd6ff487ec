"""One S3Store's view of its bucket: the requests behind every store operation.

:class:`Objects` knows the object layout (:mod:`storekeeper.backends._s3_objects`), the
name encoding (:mod:`storekeeper.backends._s3_names`) and the index
(:mod:`storekeeper.backends._s3_index`), and remembers per key the last version it saw
(its ETag, created time and sidecar), so that a write after a read or write of the same
key needs no extra request. It knows nothing of transactions or events: the store
decides what to write and on which condition, this module makes the requests.
"""

from __future__ import annotations

import heapq
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from storekeeper.backends import _s3_names as names
from storekeeper.backends._s3_client import (
    MissingObjectError,
    PreconditionError,
    UnsatisfiableRangeError,
    call,
)
from storekeeper.backends._s3_index import MetadataIndex
from storekeeper.backends._s3_objects import (
    Head,
    fits_inline,
    header_fields,
    parse_head,
    upload,
)
from storekeeper.backends._s3_snapshots import Snapshots
from storekeeper.errors import ConflictError
from storekeeper.store.value import BytesValue, LimitedStream, StreamValue, Value

__all__ = ["Known", "Objects", "SidecarGoneError", "known_of"]

BinaryStream = IO[bytes]
#: Versions remembered per store object.
KNOWN_LIMIT = 4096
#: Attempts of a plain write that keeps losing races to other writers.
RACE_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class Known:
    """A key's object as last seen: version, ETag, created time, sidecar."""

    version: str
    etag: str
    created: float
    sidecar: str | None


def known_of(head: Head) -> Known:
    """The :class:`Known` of an object's *head*."""
    return Known(head.version, head.etag, head.created, head.sidecar)


class SidecarGoneError(Exception):
    """A sidecar vanished between the read of its object and its own (overwritten)."""


class Objects:
    """The objects of the store on *bucket* under *prefix* (thread-safe); ``client`` is
    set when the store connects."""

    def __init__(self, bucket: str, prefix: str, part_size: int) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.client: Any = None
        self._lock = threading.Lock()
        self._known: OrderedDict[str, Known] = OrderedDict()
        self.index = MetadataIndex(
            self._fetch_entry, Snapshots(bucket, prefix, lambda: self.client)
        )

    def name(self, key: str) -> str:
        """*key*'s object name."""
        return names.encode_name(self.prefix, key)

    # -- what this store object last saw ----------------------------------------------------
    def remember(self, key: str, known: Known | None) -> None:
        """Note *key*'s current object (``None``: forget it)."""
        with self._lock:
            if known is None:
                self._known.pop(key, None)
                return
            self._known[key] = known
            self._known.move_to_end(key)
            if len(self._known) > KNOWN_LIMIT:
                self._known.popitem(last=False)

    def recall(self, key: str) -> Known | None:
        """*key*'s object as last seen, if remembered."""
        with self._lock:
            return self._known.get(key)

    def head(self, key: str, name: str) -> Head | None:
        """The head of *key*'s object (one HEAD), ``None`` when it is missing."""
        try:
            response = call(name, self.client.head_object, Bucket=self.bucket, Key=name)
        except MissingObjectError:
            return None
        head = parse_head(response)
        self.remember(key, known_of(head))
        return head

    # -- metadata sidecars -------------------------------------------------------------------
    def metadata_json(self, head: Head) -> str:
        """The metadata of the object of *head* (its sidecar read when it has one)."""
        if head.metadata_json is not None:
            return head.metadata_json
        return self.sidecar_json(head.sidecar)

    def sidecar_json(self, sidecar: str | None) -> str:
        """The metadata JSON in *sidecar* (``{}`` for none)."""
        if sidecar is None:
            return "{}"
        response = call("metadata sidecar", self.client.get_object, Bucket=self.bucket, Key=sidecar)
        with response["Body"] as body:
            return str(body.read().decode())

    def drop_sidecar(self, sidecar: str | None) -> None:
        """Delete a sidecar no object points to any more (best effort: an orphan left
        by a failure is harmless)."""
        if sidecar is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=sidecar)
        except Exception:  # noqa: BLE001 - see the docstring
            return

    # -- reads -------------------------------------------------------------------------------
    def fetch_value(self, key: str, name: str, inline_limit: int) -> tuple[Value, Head]:
        """*key*'s value from one GET (plus its sidecar): read whole up to
        *inline_limit* bytes, else streamed later. :class:`SidecarGoneError` when the
        object was replaced between the two reads."""
        response = call(name, self.client.get_object, Bucket=self.bucket, Key=name)
        body = response["Body"]
        head = parse_head(response)
        try:
            metadata_json = self.metadata_json(head)
        except MissingObjectError:
            body.close()
            raise SidecarGoneError from None
        self.remember(key, known_of(head))
        if head.size > inline_limit:
            return self._stream_value(name, head, metadata_json, body), head
        with body:
            data = body.read(head.size)
        value = BytesValue(
            data,
            created=head.created,
            modified=head.modified,
            version=head.version,
            metadata_json=metadata_json,
        )
        return value, head

    def _stream_value(self, name: str, head: Head, metadata_json: str, body: Any) -> Value:
        first: list[Any] = [body]

        def open_range(start: int, end: int | None) -> BinaryStream:
            stop = head.size if end is None else min(end, head.size)
            if start >= stop:
                return io.BytesIO()
            pinned = {"VersionId": head.version_id} if head.version_id else {"IfMatch": head.etag}
            try:
                response = call(
                    name,
                    self.client.get_object,
                    Bucket=self.bucket,
                    Key=name,
                    Range=f"bytes={start}-{stop - 1}",
                    **pinned,
                )
            except (PreconditionError, MissingObjectError) as exc:
                raise ConflictError(
                    f"{name!r} was overwritten or deleted after this value was read, and "
                    "the bucket keeps no old versions: its data is gone"
                ) from exc
            return stream(response["Body"], stop - start)

        def open_all() -> BinaryStream:
            if first:  # the GET that read the headers streams the first reader's data
                return stream(first.pop(), head.size)
            return open_range(0, None)

        return StreamValue(
            open_all,
            size=head.size,
            created=head.created,
            modified=head.modified,
            version=head.version,
            metadata_json=metadata_json,
            range_opener=open_range,
        )

    def read_range(self, name: str, start: int, end: int | None) -> BinaryStream:
        """Bytes ``[start, end)`` of object *name* in one ranged GET;
        :class:`MissingObjectError` when it is missing."""
        last = "" if end is None else str(end - 1)
        try:
            response = call(
                name,
                self.client.get_object,
                Bucket=self.bucket,
                Key=name,
                Range=f"bytes={start}-{last}",
            )
        except UnsatisfiableRangeError:
            return io.BytesIO()  # starts past the end of the object
        head = parse_head(response)
        stop = head.size if end is None else min(end, head.size)
        return stream(response["Body"], max(0, stop - start))

    # -- writes ------------------------------------------------------------------------------
    def write(
        self,
        key: str,
        name: str,
        source: Callable[[], Iterable[bytes]],
        tag: bytes,
        metadata_json: str,
        known: Known | None,
        *,
        retry: bool,
        must_exist: bool = False,
        condition: dict[str, str] | None = None,
    ) -> Known:
        """Write the value as *key*'s object: its sidecar first if it needs one, then the
        object on the condition that the key is still *known* (missing for ``None``),
        unless *condition* is given. On a lost race, with *retry* (and a *source* that can
        be read again) look again and write on the new condition (if the key still exists,
        with *must_exist*); else raise :class:`PreconditionError`. Returns what was
        written."""
        version = tag.hex()
        sidecar = None
        if not fits_inline(metadata_json):  # before the object, which will point to it
            sidecar = names.internal_root(self.prefix) + "m/" + version
            call(
                "metadata sidecar",
                self.client.put_object,
                Bucket=self.bucket,
                Key=sidecar,
                Body=metadata_json.encode(),
            )
        for attempt in range(RACE_ATTEMPTS):
            now = time.time()
            created = known.created if known else now
            fields = header_fields(version, created, now, metadata_json, sidecar)
            if condition is not None:
                wanted = condition
            else:
                wanted = {"IfMatch": known.etag} if known else {"IfNoneMatch": "*"}
            try:
                written = upload(
                    self.client, self.bucket, name, source(), tag, fields, wanted, self.part_size
                )
            except PreconditionError:
                self.remember(key, None)
                if not retry or attempt + 1 == RACE_ATTEMPTS:
                    self.drop_sidecar(sidecar)
                    raise
                head = self.head(key, name)
                if head is None and must_exist:
                    self.drop_sidecar(sidecar)
                    raise
                known = None if head is None else known_of(head)
                time.sleep(0.001 * attempt)
                continue
            break
        new = Known(version, written.etag, created, sidecar)
        self.remember(key, new)
        self.index.note(name, written.etag, metadata_json)
        if known is not None:
            self.drop_sidecar(known.sidecar)
        return new

    def delete(self, key: str, name: str, etag: str, sidecar: str | None) -> None:
        """Delete *key*'s object if its ETag is still *etag* (:class:`PreconditionError`
        otherwise), then its *sidecar*."""
        call(name, self.client.delete_object, Bucket=self.bucket, Key=name, IfMatch=etag)
        self.remember(key, None)
        self.index.forget(name)
        self.drop_sidecar(sidecar)

    # -- listing -------------------------------------------------------------------------------
    def pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """The pages of the bucket's listing of *prefix* (object names), one request each,
        fetched as they are consumed."""
        paginator = self.client.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter is not None:
            arguments["Delimiter"] = delimiter
        pages = iter(paginator.paginate(**arguments))
        while True:
            page = call(f"listing of {prefix!r}", lambda: next(pages, None))
            if page is None:
                return
            yield page

    def listed(self) -> Iterator[tuple[str, str]]:
        """``(name, ETag)`` of every key's object, in order."""
        for page in self.pages(self.prefix):
            for item in page.get("Contents", ()):
                if names.decode_name(self.prefix, item["Key"]) is not None:
                    yield item["Key"], item["ETag"]

    def keys_under(self, prefix: str) -> Iterator[str]:
        """The keys starting with *prefix*, in key order."""
        return names.in_key_order(self._keys_under(prefix))

    def _keys_under(self, prefix: str) -> Iterator[str]:
        for page in self.pages(names.encode_prefix(self.prefix, prefix)):
            for item in page.get("Contents", ()):
                key = names.decode_name(self.prefix, item["Key"])
                if key is not None:
                    yield key

    def folded(self, prefix: str, delimiter: str) -> Iterator[str]:
        """The keys and folders under *prefix* as S3 folds them at *delimiter*, in key
        order."""
        return names.in_key_order(self._folded(prefix, delimiter))

    def _folded(self, prefix: str, delimiter: str) -> Iterator[str]:
        for page in self.pages(names.encode_prefix(self.prefix, prefix), delimiter):
            objects = (item["Key"] for item in page.get("Contents", ()))
            folders = (item["Prefix"] for item in page.get("CommonPrefixes", ()))
            for name in heapq.merge(objects, folders, key=str.encode):
                key = names.decode_name(self.prefix, name)
                if key is not None:
                    yield key

    # -- the index's requests ------------------------------------------------------------------
    def _fetch_entry(self, name: str) -> tuple[str, str] | None:
        response = call(name, self.client.head_object, Bucket=self.bucket, Key=name)
        head = parse_head(response)
        return head.etag, self.metadata_json(head)


def stream(body: Any, limit: int) -> BinaryStream:
    """The first *limit* bytes of a response *body* as a binary stream."""
    return cast(BinaryStream, LimitedStream(body, limit))
