"""Where the metadata index of an S3Store keeps its snapshot and deltas in the bucket.

Under the store's own subtree (:func:`storekeeper.backends._s3_names.internal_root`):
``index`` is the full snapshot, ``index.d/<time>-<random>`` the deltas writers leave
(see :mod:`storekeeper.backends._s3_index`). Every object here is a cache: a missing,
old or unreadable one only costs HEADs, so nothing is conditional and errors of the
best-effort writes are left to the caller to ignore.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storekeeper.backends import _s3_names as names
from storekeeper.backends._s3_client import MissingObjectError, call

__all__ = ["Snapshots"]

#: Deltas read at once.
READ_THREADS = 8


class Snapshots:
    """The snapshot and deltas of the index of the store under *prefix* in *bucket*;
    *client()* is the store's current boto3 client."""

    def __init__(self, bucket: str, prefix: str, client: Callable[[], Any]) -> None:
        self.bucket = bucket
        self._client = client
        self._snapshot = names.internal_root(prefix) + "index"
        self._deltas = names.internal_root(prefix) + "index.d/"

    def load(self) -> bytes | None:
        """The snapshot's bytes (one GET), ``None`` when there is none."""
        return self._read(self._snapshot)

    def save(self, data: bytes) -> None:
        """Replace the snapshot (one PUT; the last writer wins)."""
        self._put(self._snapshot, data)

    def deltas(self) -> list[str]:
        """The names of the deltas, oldest first (one LIST per 1,000)."""
        found: list[str] = []
        paginator = self._client().get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self._deltas))
        while (page := call("index deltas", lambda: next(pages, None))) is not None:
            found.extend(item["Key"] for item in page.get("Contents", ()))
        return found

    def read_deltas(self, found: list[str]) -> list[bytes]:
        """The bytes of the deltas *found*, in that order (one GET each, several at
        once); a delta deleted meanwhile is skipped."""
        with ThreadPoolExecutor(max(1, min(READ_THREADS, len(found)))) as pool:
            return [data for data in pool.map(self._read, found) if data is not None]

    def add_delta(self, data: bytes) -> None:
        """Write a new delta (one PUT). Its name starts with the time, so deltas list
        about in the order they were written; the random part keeps writers apart."""
        self._put(f"{self._deltas}{time.time_ns():020d}-{uuid.uuid4().hex}", data)

    def drop_deltas(self, found: list[str]) -> None:
        """Delete the deltas *found* (one DELETE each, several at once: a batch delete
        is an XML body, which cannot hold the control character these names start
        with)."""

        def drop(name: str) -> None:
            call("index delta", self._client().delete_object, Bucket=self.bucket, Key=name)

        with ThreadPoolExecutor(max(1, min(READ_THREADS, len(found)))) as pool:
            list(pool.map(drop, found))

    def _read(self, name: str) -> bytes | None:
        try:
            response = call(
                "index snapshot", self._client().get_object, Bucket=self.bucket, Key=name
            )
        except MissingObjectError:
            return None
        with response["Body"] as body:
            data: bytes = body.read()
            return data

    def _put(self, name: str, data: bytes) -> None:
        call("index snapshot", self._client().put_object, Bucket=self.bucket, Key=name, Body=data)
