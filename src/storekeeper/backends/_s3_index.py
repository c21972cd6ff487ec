"""The metadata index of an S3Store: queries without reading every object each time.

S3 lists names and ETags (1,000 per request) but not user metadata, and reading every
object's headers costs one request per key. The index keeps ``name -> (ETag, metadata
JSON)`` and is checked against a fresh listing on every query: an entry whose ETag
matches the listed one is current (every write has a new ETag, see
:mod:`storekeeper.backends._s3_objects`), a listed name without a current entry is read
with one HEAD (several at once), an entry whose name is no longer listed is dropped. So a
query is exact as of its listing, whatever other processes or hosts wrote, and costs
``ceil(keys / 1000)`` LIST requests plus one request per key changed since this index
last looked.

A new store object starts from what the bucket keeps (see
:mod:`storekeeper.backends._s3_snapshots`): the *snapshot*, a full index, and the
*deltas* writers leave behind, each the ``(name, ETag, metadata JSON)`` of up to
:data:`DELTA_SIZE` writes of one store object (one PUT per that many writes, and one at
``disconnect`` for the rest). Its first query costs the listing, one GET for the
snapshot, one LIST of the deltas and one GET per delta (read only when fewer than the
keys the snapshot does not cover), plus one HEAD per key written since by a store object
still running and not yet at its next delta, or written by a store object that crashed.
A query that read deltas or learned many entries writes a new snapshot and deletes the
deltas it saw, so they do not pile up.

Concurrent writers of snapshots and deltas need no coordination: an entry is used only
when its ETag is the listed one (every write has a new ETag, and the metadata is part of
the write that has it), so any mix of old, partial, lost or racing snapshots and deltas
is still exact and only costs extra HEADs.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storekeeper.backends._s3_client import MissingObjectError
from storekeeper.backends._s3_snapshots import Snapshots
from storekeeper.errors import StorekeeperError

__all__ = ["DELTA_SIZE", "MetadataIndex"]

#: Listed objects read at once when the index catches up.
FETCH_THREADS = 8
#: Writes a store object notes before it leaves them in the bucket as a delta.
DELTA_SIZE = 64
_SNAPSHOT_FORMAT = 1

#: ``name -> (ETag, metadata JSON)``.
Entries = dict[str, tuple[str, str]]


class MetadataIndex:
    """The index of one store object (thread-safe).

    *fetch(name)* reads one object's ``(ETag, metadata JSON)`` (``None`` if it is not a
    value of this store); *snapshots* keeps the snapshot and deltas in the bucket.
    """

    def __init__(
        self, fetch: Callable[[str], tuple[str, str] | None], snapshots: Snapshots
    ) -> None:
        self._fetch = fetch
        self._snapshots = snapshots
        self._entries: Entries = {}
        self._unsent: Entries = {}  # noted writes not yet in a delta
        self._learned = 0  # entries noted or fetched since the last snapshot
        self._lock = threading.Lock()
        self._loaded = False
        #: Requests the last :meth:`refresh` made for HEADs (for tests and benchmarks).
        self.last_fetches = 0

    def note(self, name: str, etag: str, metadata_json: str) -> None:
        """Record a value this store object has just written (every
        :data:`DELTA_SIZE` of them go to the bucket as a delta)."""
        with self._lock:
            self._entries[name] = self._unsent[name] = (etag, metadata_json)
            self._learned += 1
            if len(self._unsent) < DELTA_SIZE:
                return
            unsent, self._unsent = self._unsent, {}
        self._send(unsent)

    def flush(self) -> None:
        """Leave the writes not yet sent as a delta (before the store disconnects)."""
        with self._lock:
            unsent, self._unsent = self._unsent, {}
        if unsent:
            self._send(unsent)

    def forget(self, name: str) -> None:
        """Drop *name* (deleted by this store object)."""
        with self._lock:
            self._entries.pop(name, None)
            self._unsent.pop(name, None)

    def refresh(self, listed: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``(name, metadata JSON)`` for every ``(name, ETag)`` of a fresh listing, in
        listing order, reading the objects the index does not know at this ETag."""
        listing = list(listed)
        deltas = self._load_once(dict(listing))
        with self._lock:
            entries = self._entries
            stale = [(name, etag) for name, etag in listing if entries.get(name, ("",))[0] != etag]
        fetched = self._fetch_all([name for name, _ in stale])
        stale_names = {name for name, _ in stale}
        with self._lock:
            fresh: Entries = {}
            for name, _ in listing:
                # A stale name not fetched was deleted since the listing; any other entry
                # is the listed write or a newer one (this object wrote it meanwhile).
                entry = fetched.get(name) if name in stale_names else self._entries.get(name)
                if entry is not None:
                    fresh[name] = entry
            self._entries = fresh
            result = [(name, fresh[name][1]) for name, _ in listing if name in fresh]
            self._learned += len(stale)
            compact = bool(deltas) or self._learned > max(64, len(listing) // 20)
            if compact:
                self._learned = 0
                # what the snapshot about to be written holds need not go in a delta
                self._unsent = {n: e for n, e in self._unsent.items() if fresh.get(n) != e}
        self.last_fetches = len(stale)
        if compact:
            self._compact(fresh, deltas)
        return result

    def _load_once(self, listed: dict[str, str]) -> list[str]:
        """(First refresh only.) Take from the snapshot, and from the deltas when they
        are fewer than the listed keys it lacks, the entries at their listed ETag; the
        names of the deltas seen."""
        with self._lock:
            if self._loaded:
                return []
            self._loaded = True
        self._merge(self._snapshots.load(), listed)
        deltas = self._snapshots.deltas()
        with self._lock:
            lacking = sum(
                self._entries.get(name, ("",))[0] != etag for name, etag in listed.items()
            )
        if deltas and len(deltas) < lacking:
            for data in self._snapshots.read_deltas(deltas):
                self._merge(data, listed)
        return deltas

    def _merge(self, data: bytes | None, listed: dict[str, str]) -> None:
        if data is None:
            return
        try:
            document: Any = json.loads(zlib.decompress(data))
            if document.get("format") != _SNAPSHOT_FORMAT:
                return
            found = [
                (name, (etag, text))
                for name, etag, text in document["entries"]
                if listed.get(name) == etag
            ]
        except (ValueError, TypeError, KeyError, zlib.error):
            return  # an unreadable document only costs HEADs
        with self._lock:
            self._entries.update(found)

    def _fetch_all(self, names: list[str]) -> dict[str, tuple[str, str]]:
        if not names:
            return {}

        def one(name: str) -> tuple[str, tuple[str, str] | None]:
            try:
                return name, self._fetch(name)
            except MissingObjectError:  # deleted since the listing
                return name, None

        if len(names) == 1:
            results = [one(names[0])]
        else:
            with ThreadPoolExecutor(min(FETCH_THREADS, len(names))) as pool:
                results = list(pool.map(one, names))
        return {name: entry for name, entry in results if entry is not None}

    def _send(self, entries: Entries) -> None:
        try:
            self._snapshots.add_delta(_document(entries))
        except StorekeeperError:
            return  # the write it describes succeeded; a lost delta only costs HEADs

    def _compact(self, entries: Entries, deltas: list[str]) -> None:
        """Write *entries* as the snapshot, then delete the *deltas* it covers (never
        before: a reader in between would lose them)."""
        try:
            self._snapshots.save(_document(entries))
            if deltas:
                self._snapshots.drop_deltas(deltas)
        except StorekeeperError:
            return  # the query's answer stands; a missing snapshot only costs HEADs


def _document(entries: Entries) -> bytes:
    document = {
        "format": _SNAPSHOT_FORMAT,
        "entries": [[name, etag, text] for name, (etag, text) in entries.items()],
    }
    return zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)
