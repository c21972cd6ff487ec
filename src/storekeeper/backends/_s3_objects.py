"""How an S3Store lays out one key's value in one object, and moves it in and out.

An object holds the key's data followed by a 16-byte *write tag* drawn at random for
every write. The tag makes every write's ETag different, even when the data is the same
(a metadata-only change included), so a conditional write on the ETag cannot be fooled
by a concurrent write of equal data, and an index entry checked against the listing's
ETag is never stale. The tag's hex text is the value's version.

The object's user metadata (``x-amz-meta-*``) holds:

- ``sk-v``: the version (the tag's hex), ``sk-c`` / ``sk-t``: created and modified
  (POSIX seconds);
- ``sk-m``: the key's metadata as JSON with every non-ASCII character escaped (HTTP
  headers are ASCII), when it fits S3's 2 KB limit for user metadata;
- ``sk-x``: otherwise the name of a *sidecar* object holding that JSON. A sidecar is
  written under a fresh name before the object that points to it, and never changed, so
  a reader that has an object always finds the metadata of that very write.

Data goes up as one PUT when it fits one part (:data:`PART_SIZE`), otherwise as a
multipart upload assembling one part at a time (about two in memory); the condition of
a conditional write is on the PUT or on the CompleteMultipartUpload, so nothing is
visible before the whole value is.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from storekeeper.backends._s3_client import call

__all__ = [
    "PART_SIZE",
    "TAG_SIZE",
    "Head",
    "Written",
    "chain",
    "header_fields",
    "new_tag",
    "parse_head",
    "take",
    "upload",
]

TAG_SIZE = 16
#: Multipart part size: values up to this size go up in one PUT.
PART_SIZE = 8 * 1024 * 1024
#: The most metadata JSON kept in the object's own headers (S3 allows 2 KB of user
#: metadata in all; the other fields take about 150 bytes).
INLINE_METADATA = 1800
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def new_tag() -> bytes:
    """A fresh write tag."""
    return os.urandom(TAG_SIZE)


def _escape_char(match: re.Match[str]) -> str:
    # json.dumps of one character gives its \\u escape (a surrogate pair above the BMP).
    return json.dumps(match.group())[1:-1]


def ascii_json(metadata_json: str) -> str:
    """*metadata_json* with non-ASCII characters escaped: the same JSON, header-safe."""
    if metadata_json.isascii():
        return metadata_json
    return _NON_ASCII.sub(_escape_char, metadata_json)


@dataclass(frozen=True, slots=True)
class Head:
    """What an object's headers say about the value it holds."""

    etag: str
    version: str
    size: int
    created: float
    modified: float
    metadata_json: str | None  # None: in the sidecar
    sidecar: str | None
    version_id: str | None
    tag_size: int = TAG_SIZE


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of an upload: the new object's ETag (quoted, as S3 gives it)."""

    etag: str
    version_id: str | None


def header_fields(
    version: str, created: float, modified: float, metadata_json: str, sidecar: str | None
) -> dict[str, str]:
    """The user metadata of a new object (``sk-m`` or ``sk-x`` per *sidecar*)."""
    fields = {"sk-v": version, "sk-c": repr(created), "sk-t": repr(modified)}
    if sidecar is None:
        fields["sk-m"] = ascii_json(metadata_json)
    else:
        fields["sk-x"] = sidecar
    return fields


def fits_inline(metadata_json: str) -> bool:
    """Whether *metadata_json* can live in the object's headers."""
    return len(metadata_json) <= INLINE_METADATA and len(ascii_json(metadata_json)) <= (
        INLINE_METADATA
    )


def parse_head(response: dict[str, Any]) -> Head:
    """The :class:`Head` of a HEAD/GET *response*. An object this store did not write
    (no version field: uploaded by another tool) reads as its bytes with metadata
    ``{}`` and its ETag as version."""
    fields = response.get("Metadata") or {}
    size = int(response.get("ContentLength", 0))
    content_range = response.get("ContentRange")
    if content_range:  # a ranged GET: the total follows the slash
        size = int(content_range.rpartition("/")[2])
    version = fields.get("sk-v")
    try:
        created = float(fields.get("sk-c", "nan"))
        modified = float(fields.get("sk-t", created))
    except ValueError:
        version = None
    if version is None or created != created:  # noqa: PLR0124 - the NaN check
        stamp = response.get("LastModified")
        when = stamp.timestamp() if stamp is not None else 0.0
        return Head(
            etag=response["ETag"],
            version=response["ETag"].strip('"'),
            size=size,
            created=when,
            modified=when,
            metadata_json="{}",
            sidecar=None,
            version_id=response.get("VersionId"),
            tag_size=0,
        )
    return Head(
        etag=response["ETag"],
        version=version,
        size=max(0, size - TAG_SIZE),
        created=created,
        modified=modified,
        metadata_json=fields.get("sk-m"),
        sidecar=fields.get("sk-x"),
        version_id=response.get("VersionId"),
    )


def _chunks_of(source: Iterable[bytes], size: int) -> Iterator[bytes]:
    """*source*'s bytes regrouped into pieces of exactly *size* (the last one shorter,
    possibly empty). The chunks of one piece are joined once, so a piece costs one
    copy and about twice its size at the moment it is made."""
    held: list[bytes] = []
    total = 0
    for given in source:
        chunk = given
        while total + len(chunk) >= size:
            cut = size - total
            with memoryview(chunk) as view:
                held.append(view[:cut].tobytes() if cut < len(chunk) else chunk)
                chunk = view[cut:].tobytes() if cut < len(chunk) else b""
            piece = b"".join(held)
            held.clear()
            total = 0
            yield piece
            del piece
        if chunk:
            held.append(chunk)
            total += len(chunk)
    yield b"".join(held)


def upload(
    client: Any,
    bucket: str,
    name: str,
    source: Iterable[bytes],
    tag: bytes,
    fields: dict[str, str],
    condition: dict[str, str],
    part_size: int = PART_SIZE,
) -> Written:
    """Write *source* plus *tag* as object *name* with user metadata *fields*.

    *condition* is ``{"IfMatch": etag}``, ``{"IfNoneMatch": "*"}`` or empty. Raises
    :class:`~storekeeper.backends._s3_client.PreconditionError` when it fails; an
    error while reading *source* aborts the upload and propagates, leaving the object
    as it was.
    """
    pieces = _chunks_of(source, part_size)
    first = next(pieces)
    if len(first) < part_size:  # the whole value: one PUT
        response = call(
            name,
            client.put_object,
            Bucket=bucket,
            Key=name,
            Body=first + tag,
            Metadata=fields,
            **condition,
        )
        return Written(response["ETag"], response.get("VersionId"))
    pieces = _owned(first, pieces)
    del first
    return _multipart(client, bucket, name, pieces, part_size, tag, fields, condition)


def _owned(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """*first*, then *rest*, keeping no reference to a piece once it is handed out."""
    pieces = [first]
    del first
    while pieces:
        yield pieces.pop()
    yield from rest


def _multipart(
    client: Any,
    bucket: str,
    name: str,
    pieces: Iterator[bytes],
    part_size: int,
    tag: bytes,
    fields: dict[str, str],
    condition: dict[str, str],
) -> Written:
    """Upload *pieces* (full parts, then one shorter, possibly empty, piece: see
    :func:`_chunks_of`) as parts; the tag goes with the last one."""
    created = call(name, client.create_multipart_upload, Bucket=bucket, Key=name, Metadata=fields)
    upload_id = created["UploadId"]
    parts: list[dict[str, Any]] = []
    try:
        for piece in pieces:
            number = len(parts) + 1
            last = len(piece) < part_size
            body = piece + tag if last else piece
            del piece  # not kept while the next part is assembled
            parts.append(_part(client, bucket, name, upload_id, number, body))
            del body
            if last:
                break
        response = call(
            name,
            client.complete_multipart_upload,
            Bucket=bucket,
            Key=name,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **condition,
        )
    except BaseException:
        _abort(client, bucket, name, upload_id)
        raise
    return Written(response["ETag"], response.get("VersionId"))


def _part(client: Any, bucket: str, name: str, upload_id: str, number: int, body: bytes) -> Any:
    answer = call(
        name,
        client.upload_part,
        Bucket=bucket,
        Key=name,
        UploadId=upload_id,
        PartNumber=number,
        Body=body,
    )
    return {"PartNumber": number, "ETag": answer["ETag"]}


def _abort(client: Any, bucket: str, name: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)
    except Exception:  # noqa: BLE001 - the original error matters; S3 expires leftovers
        return


def now() -> float:
    """The current POSIX time (a seam for tests)."""
    return time.time()


BinaryStream = IO[bytes]


def take(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Chunks from *chunks* until at least *limit* bytes were taken (the last chunk is
    taken whole)."""
    taken = 0
    while taken < limit:
        chunk = next(chunks, None)
        if chunk is None:
            return
        taken += len(chunk)
        yield chunk


def chain(firsts: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """*firsts* (emptied as they are handed out, so none is kept alive), then *rest*."""
    while firsts:
        yield firsts.pop(0)
    yield from rest
