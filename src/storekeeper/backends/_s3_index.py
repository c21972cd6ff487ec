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

A new store object starts from the *snapshot* in the bucket (one GET), which any store
object rewrites after a query that had to read many keys. Concurrent snapshot writers
need no coordination: the last one wins, and every snapshot entry is verified against
the listing before use, so an old or partial snapshot only costs extra HEADs.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storekeeper.backends._s3_client import MissingObjectError

__all__ = ["MetadataIndex"]

#: Listed objects read at once when the index catches up.
FETCH_THREADS = 8
_SNAPSHOT_FORMAT = 1

#: ``name -> (ETag, metadata JSON)``.
Entries = dict[str, tuple[str, str]]


class MetadataIndex:
    """The index of one store object (thread-safe).

    *fetch(name)* reads one object's ``(ETag, metadata JSON)`` (``None`` if it is not a
    value of this store); *load_snapshot()* returns the snapshot's bytes or ``None``;
    *save_snapshot(data)* writes it.
    """

    def __init__(
        self,
        fetch: Callable[[str], tuple[str, str] | None],
        load_snapshot: Callable[[], bytes | None],
        save_snapshot: Callable[[bytes], None],
    ) -> None:
        self._fetch = fetch
        self._load = load_snapshot
        self._save = save_snapshot
        self._entries: Entries = {}
        self._lock = threading.Lock()
        self._loaded = False
        #: Requests the last :meth:`refresh` made for HEADs (for tests and benchmarks).
        self.last_fetches = 0

    def note(self, name: str, etag: str, metadata_json: str) -> None:
        """Record a value this store object has just written."""
        with self._lock:
            self._entries[name] = (etag, metadata_json)

    def forget(self, name: str) -> None:
        """Drop *name* (deleted by this store object)."""
        with self._lock:
            self._entries.pop(name, None)

    def refresh(self, listed: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``(name, metadata JSON)`` for every ``(name, ETag)`` of a fresh listing, in
        listing order, reading the objects the index does not know at this ETag."""
        self._load_snapshot_once()
        listing = list(listed)
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
        self.last_fetches = len(stale)
        if len(stale) > max(64, len(listing) // 20):
            self._save_snapshot(fresh)
        return result

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

    def _load_snapshot_once(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
        data = self._load()
        if data is None:
            return
        try:
            snapshot: Any = json.loads(zlib.decompress(data))
            if snapshot.get("format") != _SNAPSHOT_FORMAT:
                return
            loaded = {name: (etag, text) for name, etag, text in snapshot["entries"]}
        except (ValueError, TypeError, KeyError, zlib.error):
            return  # an unreadable snapshot only costs HEADs
        with self._lock:
            for name, entry in loaded.items():
                self._entries.setdefault(name, entry)

    def _save_snapshot(self, entries: Entries) -> None:
        document = {
            "format": _SNAPSHOT_FORMAT,
            "entries": [[name, etag, text] for name, (etag, text) in entries.items()],
        }
        self._save(zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6))
