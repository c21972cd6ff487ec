"""``CachedStore``: a read-through cache in front of a slow or remote store.

Reads are served from a *cache* store when its copy is still valid and fetched from the
*source* (and copied into the cache) otherwise. Validity is decided by the source's
version token, which the cache remembers next to each copy:

- ``policy='always'`` (default): every read asks the source for the key's current version
  and uses the copy only if it matches: one cheap round trip, no data transferred.
- ``policy='immutable'``: keys never change once written, so a copy is always valid and a
  hit never touches the source.
- ``policy='max_age'``: a copy is trusted for *max_age* seconds after it was fetched or
  last validated, then validated again as under ``'always'``.

**Asking for a version.** If the source has a ``version_of(key) -> str`` method (the
:class:`~storekeeper.store.VersionedStore` protocol; ``KeyError`` for a missing key)
the cache calls it; otherwise it calls
``source.get(key)`` and reads only ``.version``, never ``.data``. That is free of data
transfer for every built-in backend because their values open their data lazily (memory
and small SQLite values are already local; files and remote values are opened only when
``.data`` is read), so a remote backend's ``get`` is a metadata request. A backend whose
``get`` downloads the data should provide ``version_of``. A source that reports no
versions (``version`` is ``None``) cannot be validated: its keys are read through and not
cached.

**Size.** The cache holds at most *max_size* bytes of data (and *max_entries* keys, when
given), up to the overshoot between processes below: when a fill crosses a bound, the
least recently used copies are evicted until the cache is 10% under it. Use times are
recorded in each copy's bookkeeping at most every *touch_interval* seconds, so a hit
rarely writes.

**Several processes** may share one cache store (for example a SQLite file). Each keeps
an estimate of the cache's size, which only a *look* at the cache store corrects for
the others' fills: a *scan* reads every copy's bookkeeping and, if the cache is over a
bound, evicts as above; a *count* lists the keys only and scans if they are over
*max_entries*. A process scans when its estimate crosses a bound and once its fills
since its last scan reach a *step* of ``max_size / 20`` bytes; it counts once its new
keys since its last look reach ``max(1, max_entries // 20)``. So each process's fills
that no look has seen are under one step (plus the value just filled), and with *P*
processes filling it the cache holds at most ``max_size + P * (max_size / 20 + the
largest value)`` bytes and ``max_entries + P * max(1, max_entries // 20)`` keys (one
process filling from one thread keeps the bounds exactly; threads that fill while their
process's look runs may add one more step). An excess left by fills racing the others'
looks lasts until the next scan (for keys, count) of any process. The steps cost a full
cache about 20 bookkeeping rows read per fill (fewer when *max_entries* is what limits
it) and, with *max_entries*, about 20 keys listed per fill, besides eviction's scans.

Sharing is safe: a copy's data and bookkeeping are written together by one atomic write,
fills are conditional writes (of two processes filling the same key one wins and the
other keeps its copy of the source value), eviction tolerates keys deleted by someone
else, and a reader whose copy is evicted before it opens the data falls back to the
source if the version still matches (``ConflictError`` otherwise).

**Writes** go through to the source, and the cache's copy of the key is dropped. Metadata
holding the reserved name :data:`BOOKKEEPING` is refused with ``InvalidMetadataError``
before anything is written (a source value that holds it is read through, not cached).
Inside a transaction reads bypass the cache so the transaction sees its own writes, and
the written keys are dropped again after the commit. Events are the source's, forwarded;
the cache store's own events are not (filling a cache changes no data).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import IO, Any, Literal, TypeVar

from storekeeper.composite._wrapper import CompositeStore, refuse_reserved
from storekeeper.errors import ConflictError, LockTimeoutError
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore, VersionedStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    OwnedVar,
    StoreCapabilities,
    check_key,
    check_pattern,
    check_select,
    check_write,
    missing,
    pair_up,
    pass_terms,
    query_terms,
)
from storekeeper.store.events import StoreModificationEvent
from storekeeper.store.value import Value

__all__ = ["BOOKKEEPING", "CachedStore", "Policy"]

#: Metadata name of a cached copy's bookkeeping in the cache store (never returned).
BOOKKEEPING = "\x00storekeeper:cache"
Policy = Literal["always", "immutable", "max_age"]
_POLICIES = ("always", "immutable", "max_age")
_T = TypeVar("_T")
_LOW_WATER = 0.9
# A process looks at the shared cache after filling 1/_STEPS of a bound (see the module
# docstring): this trades the overshoot per process against the cost of looks per fill.
_STEPS = 20
# Keys hash into this many fences (see _Fences); collisions only cost a skipped fill.
_FENCES = 64


class _Fences:
    """Keep fills from installing a copy that a concurrent write made stale.

    A write through this store bumps its key's epoch when it begins and when it ends
    (:meth:`begin`, :meth:`end`); it ends once the write is committed and the copy
    dropped, which for a write inside a transaction is after the commit. A fill installs
    its copy only if no write of that fence was in progress when it read the source and
    the epoch has not moved since, checked under the fence's lock while installing.
    Without this, a fill that read the source just before a write committed could
    install the old value after the write dropped the copy.
    """

    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(_FENCES)]
        self._epochs = [0] * _FENCES
        self._writing = [0] * _FENCES

    def _slot(self, key: str) -> int:
        return hash(key) % _FENCES

    def begin(self, key: str) -> None:
        """A write of *key* begins: no fill of its fence installs until :meth:`end`."""
        self._bump(key, 1)

    def end(self, key: str) -> None:
        """The write :meth:`begin` announced is committed (or undone) and the copy dropped."""
        self._bump(key, -1)

    def _bump(self, key: str, writers: int) -> None:
        slot = self._slot(key)
        with self._locks[slot]:
            self._writing[slot] += writers
            self._epochs[slot] += 1

    def ticket(self, key: str) -> int | None:
        """The epoch to pass to :meth:`install`, or ``None`` while a write is running."""
        slot = self._slot(key)
        with self._locks[slot]:
            return None if self._writing[slot] else self._epochs[slot]

    @contextlib.contextmanager
    def install(self, key: str, ticket: int | None) -> Iterator[bool]:
        """Yield whether a copy read under *ticket* may be installed (lock held)."""
        slot = self._slot(key)
        with self._locks[slot]:
            yield ticket is not None and ticket == self._epochs[slot]


class CachedStore(CompositeStore):
    """A read-through, write-through cache of *source* kept in the store *cache*.

    See the module docstring for the validation policies, the ``version_of`` protocol,
    the size bound and multi-process use. *cache* must be dedicated to this cache; its
    keys are the source's keys. ``connect``/``disconnect`` manage both stores.
    """

    # A change to the source made in this process drops the copy at once (the only way
    # the immutable policy notices it), so the source's events matter with no listener.
    listens_always = True

    def __init__(
        self,
        source: AbstractReadOnlyStore,
        cache: AbstractStore,
        *,
        policy: Policy = "always",
        max_age: float | None = None,
        max_size: int = 256 * 1024 * 1024,
        max_entries: int | None = None,
        touch_interval: float = 10.0,
        event_manager: BaseEventManager | None = None,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, not {policy!r}")
        if (policy == "max_age") != (max_age is not None):
            raise ValueError("max_age is required by, and only by, policy='max_age'")
        if source is cache:
            raise ValueError("the cache must be a different store from the source")
        super().__init__([source, cache], event_manager)
        self.policy: Policy = policy
        self.max_age = max_age
        self.max_size = max_size
        self.max_entries = max_entries
        self.touch_interval = touch_interval
        self._usage_lock = threading.Lock()
        self._usage: tuple[int, int] | None = None  # (bytes, keys) estimate since last scan
        self._unseen = (0, 0)  # (bytes since last scan, new keys since last scan or count)
        self._fences = _Fences()
        # Keys the open transaction wrote: their fences stay up until it ends.
        self._pending: OwnedVar[list[str]] = OwnedVar(f"cached-{id(self):x}-pending")
        # Decided once: a protocol isinstance check costs more than the rest of a hit.
        self._version_of = source.version_of if isinstance(source, VersionedStore) else None

    @property
    def source(self) -> AbstractReadOnlyStore:
        """The store being cached."""
        return self._children[0]

    @property
    def cache(self) -> AbstractStore:
        """The store holding the cached copies."""
        store = self._children[1]
        assert isinstance(store, AbstractStore)
        return store

    @property
    def capabilities(self) -> StoreCapabilities:
        """As its children's (the composite rule), but
        never ``cross_process``: a read that fills the cache writes to it, so a reader
        waits for another process's transaction on the cache (a frozen writer stalls
        every reader), which the cross-process promise rules out."""
        return super().capabilities.but(cross_process=False)

    def storage_identity(self) -> Hashable | None:
        """The source's: the cache holds copies, the keys live in the source."""
        return self.source.storage_identity()

    def info(self) -> dict[str, Any]:
        """The store description plus the cache's policy and bounds."""
        return {
            **super().info(),
            "readonly": not isinstance(self.source, AbstractStore),
            "policy": self.policy,
            "max_age": self.max_age,
            "max_size": self.max_size,
            "max_entries": self.max_entries,
        }

    def _listened_children(self) -> list[AbstractReadOnlyStore]:
        return [self.source]

    def _transactional_children(self) -> list[int]:
        # The source only: a transaction reads and writes the source, never the cache,
        # and holding the cache's transaction would make every other reader's fill wait.
        return [0] if self._writable[0] else []

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """*key*'s value: the cached copy if the policy says it is valid, else fetched."""
        check_key(key)
        self._require_connection()
        if self._in_transaction():
            return self.source.get(key)
        entry = self._cached(key)
        book = None if entry is None else _book(entry)
        if entry is not None and book is not None:
            if self._fresh(book):
                return self._hit(key, entry, book, revalidated=False)
            current = self._source_version(key, entry)
            if current is not None and current == book["v"]:
                return self._hit(key, entry, book, revalidated=True)
        return self._fill(key, entry)

    def exists(self, key: str) -> bool:
        """Whether *key* exists: a copy the policy trusts says yes, else the source."""
        check_key(key)
        self._require_connection()
        if not self._in_transaction() and self.policy != "always":
            entry = self._cached(key)
            book = None if entry is None else _book(entry)
            if book is not None and self._fresh(book):
                return True
        return self.source.exists(key)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """The source's answer (listings are never served from the cache)."""
        self._require_connection()
        return pass_terms(self.source.query, query_terms(where, kwargs), check_select(select))

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """The source's answer."""
        self._require_connection()
        return pass_terms(self.source.query_keys, query_terms(where, kwargs))

    def glob(self, pattern: str) -> list[str]:
        """The source's answer."""
        self._require_connection()
        return self.source.glob(check_pattern(pattern))

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """The source's listing (see :meth:`AbstractReadOnlyStore.list_keys`)."""
        self._require_connection()
        return self.source.list_keys(prefix, delimiter)

    def _cached(self, key: str) -> Value | None:
        try:
            return self.cache.get(key)
        except KeyError:
            return None

    def _fresh(self, book: Mapping[str, Any]) -> bool:
        if self.policy == "immutable":
            return True
        if self.policy == "max_age":
            assert self.max_age is not None
            return time.time() - float(book["t"]) < self.max_age
        return False

    def _source_version(self, key: str, entry: Value) -> str | None:
        """The source's current version of *key*; drops the copy if the key is gone."""
        try:
            if self._version_of is not None:
                return str(self._version_of(key))
            return self.source.get(key).version
        except KeyError:
            self._write_cache_now(lambda: self._drop(key))
            raise missing(key) from None

    def _hit(self, key: str, entry: Value, book: Mapping[str, Any], *, revalidated: bool) -> Value:
        now = time.time()
        changes: dict[str, Any] = {}
        if revalidated and self.policy == "max_age":
            changes["t"] = now
        if changes or now - float(book["u"]) >= self.touch_interval:
            changes["u"] = now
            self._update_book(key, entry, {**book, **changes})
        return _CachedValue(self, key, entry, book)

    def _update_book(self, key: str, entry: Value, book: Mapping[str, Any]) -> None:
        def update() -> None:
            self.cache.update_metadata(key, {BOOKKEEPING: dict(book)}, if_version=entry.version)

        try:
            self._write_cache_now(update)  # skipped while the cache is busy: a use time is lost
        except (KeyError, ConflictError):
            return  # another process evicted or refreshed the copy: nothing to record

    def _fill(self, key: str, stale: Value | None) -> Value:
        ticket = self._fences.ticket(key)
        try:
            value = self.source.get(key)
        except KeyError:
            if stale is not None:
                self._write_cache_now(lambda: self._drop(key))
            raise
        if value.version is None:
            return value
        metadata = value.metadata
        if BOOKKEEPING in metadata:
            return value  # a copy could not keep the source's entry under the reserved name
        now = time.time()
        book: dict[str, Any] = {"v": value.version, "t": now, "u": now, "n": value.size or 0}
        book.update(c=value.created, m=value.modified)
        metadata[BOOKKEEPING] = book
        pins = {"if_exists": False} if stale is None else {"if_version": stale.version}

        def install() -> bool:
            with self._fences.install(key, ticket) as allowed:
                if allowed:  # else a write raced this read: serve the value, do not keep it
                    with value.data as stream:
                        self.cache.set(key, (stream, metadata), **pins)
                return allowed

        try:
            if not self._write_cache_now(install):
                return value  # fenced off, or the cache is busy: served without a copy
        except ConflictError:
            return value  # another reader filled it first; this value is just as good
        entry = self._cached(key)
        if entry is None or _book(entry) is None:
            return value
        self._account(entry.size or 0, stale is None)
        return _CachedValue(self, key, entry, _book(entry) or book)

    def _reopen(self, key: str, version: str) -> IO[bytes]:
        """The source's data of *key* if it is still at *version* (the copy vanished)."""
        value = self.source.get(key)
        if value.version != version:
            raise ConflictError(f"key {key!r} changed while its cached copy was evicted")
        return value.data

    # -- size bound ----------------------------------------------------------------------
    def _account(self, size: int, new_key: bool) -> None:
        with self._usage_lock:
            look = self._look_due(size, new_key)
        if look == "scan":
            self._scan()
        elif look == "count":
            self._recount()

    def _look_due(self, size: int, new_key: bool) -> Literal["scan", "count"] | None:
        """Add a fill to the estimates (lock held); the look at the cache it makes due."""
        if self._usage is None:
            self._unseen = (0, 0)
            return "scan"
        total, count = self._usage
        self._usage = (total + size, count + int(new_key))
        unseen_bytes, unseen_keys = self._unseen[0] + size, self._unseen[1] + int(new_key)
        if self._over(*self._usage, 1.0) or unseen_bytes * _STEPS >= self.max_size:
            self._unseen = (0, 0)  # here too, so that other threads do not start more scans
            return "scan"
        if self.max_entries is not None and unseen_keys >= max(1, self.max_entries // _STEPS):
            self._unseen = (unseen_bytes, 0)
            return "count"
        self._unseen = (unseen_bytes, unseen_keys)
        return None

    def _over(self, total: int, count: int, fraction: float) -> bool:
        if total > self.max_size * fraction:
            return True
        return self.max_entries is not None and count > self.max_entries * fraction

    def _scan(self) -> None:
        """Re-sync the estimate from every copy's bookkeeping and, if the cache is over a
        bound, delete least recently used copies until it is under the low-water mark."""
        with self._usage_lock:
            self._unseen = (0, 0)  # fills from here on may miss the query: count them anew
        copies = []
        for key, metadata in self.cache.query([BOOKKEEPING]):
            book = metadata.get(BOOKKEEPING)
            if isinstance(book, dict):
                copies.append((float(book.get("u", 0.0)), key, int(book.get("n", 0))))
        total = sum(size for _, _, size in copies)
        count = len(copies)
        if self._over(total, count, 1.0):
            # While the cache is busy the estimate stays over the bound, so that a later
            # fill scans (and evicts) again.
            total, count = self._write_cache_now(lambda: self._evict(copies, total, count)) or (
                total,
                count,
            )
        with self._usage_lock:
            self._usage = (total, count)

    def _evict(
        self, copies: list[tuple[float, str, int]], total: int, count: int
    ) -> tuple[int, int]:
        """Drop the least recently used *copies* until under the low-water mark; the
        bytes and keys left."""
        copies.sort()
        for _, key, size in copies:
            if not self._over(total, count, _LOW_WATER):
                break
            self._drop(key)
            total -= size
            count -= 1
        return total, count

    def _recount(self) -> None:
        """Re-sync the key count from a key listing (cheaper than a scan); scan if over."""
        count = len(self.cache.query_keys())
        if self._over(0, count, 1.0):
            self._scan()
            return
        with self._usage_lock:
            if self._usage is not None:
                self._usage = (self._usage[0], count)

    def invalidate(self, key: str | None = None) -> None:
        """Forget the cached copy of *key*, or every copy when *key* is None."""
        self._require_connection()
        keys = self.cache.query_keys() if key is None else [check_key(key)]
        for name in keys:
            self._drop(name)
        if key is None:
            with self._usage_lock:
                self._usage, self._unseen = (0, 0), (0, 0)

    def _drop(self, key: str) -> None:
        try:
            self.cache.delete(key)
        except KeyError:
            return

    def _write_cache_now(self, write: Callable[[], _T]) -> _T | None:
        """Run *write* (cache writes made for a read) in a cache transaction if the cache's
        write lock is free now; ``None`` without running it if another thread or process
        holds it. A read never waits for a writer (perhaps a frozen process) to fill,
        touch or evict: it serves the source's value and leaves the cache as it is."""
        transaction = self.cache.transaction("cache upkeep for a read", wait=False)
        try:
            transaction.__enter__()
        except LockTimeoutError:
            return None
        try:
            result = write()
        except BaseException as exc:
            transaction.__exit__(type(exc), exc, exc.__traceback__)
            raise
        transaction.__exit__(None, None, None)
        return result

    # -- writes (through to the source) ----------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str | None:
        """Write *value* to the source and drop the cached copy; the source's version.

        ``InvalidMetadataError``, with nothing written, if its metadata holds :data:`BOOKKEEPING`.
        """
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        refuse_reserved(value, BOOKKEEPING, "CachedStore")
        source = self._writer(0)
        with self._writing_through(key):
            return source.set(key, value, buffer_size, if_version=if_version, if_exists=if_exists)

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Write *key*'s data to the source and drop the cached copy."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source = self._writer(0)
        with self._writing_through(key):
            source.set_data(key, data, buffer_size, if_version=if_version, if_exists=if_exists)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Write *key*'s metadata to the source and drop the cached copy.

        ``InvalidMetadataError``, with nothing written, if *metadata* holds :data:`BOOKKEEPING`.
        """
        check_write(key, if_version, if_exists)
        self._require_connection()
        refuse_reserved(metadata, BOOKKEEPING, "CachedStore")
        source = self._writer(0)
        with self._writing_through(key):
            source.set_metadata(key, metadata, if_version=if_version, if_exists=if_exists)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into the source's and drop the cached copy.

        ``InvalidMetadataError``, with nothing written, if *metadata* holds :data:`BOOKKEEPING`.
        """
        check_write(key, if_version)
        self._require_connection()
        refuse_reserved(metadata, BOOKKEEPING, "CachedStore")
        with self._writing_through(key):
            self._writer(0).update_metadata(key, metadata, if_version=if_version)

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """:meth:`set` each key to its value in one transaction; nothing written if any
        value's metadata holds :data:`BOOKKEEPING` (``InvalidMetadataError``)."""
        super().multiset(*_refused_in_batch(keys, values), buffer_size)

    def multiset_metadata(
        self, keys: Iterable[str], metadatas: Iterable[Mapping[str, Any]]
    ) -> None:
        """:meth:`set_metadata` for each key in one transaction; nothing written if any
        metadata holds :data:`BOOKKEEPING` (``InvalidMetadataError``)."""
        super().multiset_metadata(*_refused_in_batch(keys, metadatas))

    def multiupdate_metadata(
        self, keys: Iterable[str], metadatas: Iterable[Mapping[str, Any]]
    ) -> None:
        """:meth:`update_metadata` for each key in one transaction; nothing written if any
        metadata holds :data:`BOOKKEEPING` (``InvalidMetadataError``)."""
        super().multiupdate_metadata(*_refused_in_batch(keys, metadatas))

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key* from the source and drop the cached copy."""
        check_write(key, if_version)
        self._require_connection()
        with self._writing_through(key):
            self._writer(0).delete(key, if_version=if_version)

    @contextlib.contextmanager
    def _writing_through(self, key: str) -> Iterator[None]:
        """Around a write of *key* to the source: fence off fills until the write is
        committed (for a write in a transaction, until it ends), then drop the copy."""
        pending = self._pending.get()
        self._fences.begin(key)
        if pending is not None:
            pending.append(key)  # the commit drops the copy again and ends the fence
        try:
            yield
        finally:
            self._drop(key)
            if pending is None:
                self._fences.end(key)

    # -- transactions and events -------------------------------------------------------------
    def _begin_transaction(self) -> None:
        super()._begin_transaction()
        self._pending.set([])

    def _commit_transaction(self) -> None:
        pending = self._pending.get() or []
        self._pending.set(None)
        try:
            super()._commit_transaction()
            # Dropped again: a reader outside the transaction may have copied the old
            # value before the commit (the fence keeps it from doing so from now on).
            for key in pending:
                self._drop(key)
        finally:
            self._end_fences(pending)

    def _rollback_transaction(self) -> None:
        pending = self._pending.get() or []
        self._pending.set(None)
        try:
            super()._rollback_transaction()
        finally:
            self._end_fences(pending)

    def _end_fences(self, keys: list[str]) -> None:
        for key in keys:
            self._fences.end(key)

    def _translate_change(self, index: int, event: StoreModificationEvent) -> BaseEvent | None:
        # Someone changed the source: this process's copy is out of date.
        if not self._in_transaction():
            self._drop(event.key)
        return super()._translate_change(index, event)


def _refused_in_batch(keys: Iterable[str], items: Iterable[_T]) -> tuple[list[str], list[_T]]:
    """*keys* and *items* paired up (as ``zip``) and split again, once every item was
    checked for the reserved name: a batch is refused before any of it is written."""
    pairs = pair_up(keys, items)
    for _, item in pairs:
        refuse_reserved(item, BOOKKEEPING, "CachedStore")
    return [key for key, _ in pairs], [item for _, item in pairs]


def _book(entry: Value) -> dict[str, Any] | None:
    book = entry.metadata.get(BOOKKEEPING)
    return book if isinstance(book, dict) and isinstance(book.get("v"), str) else None


class _CachedValue(Value):
    """A cached copy as the source's value: source version and times, no bookkeeping."""

    def __init__(self, store: CachedStore, key: str, entry: Value, book: Mapping[str, Any]) -> None:
        self._store = store
        self._key = key
        self._entry = entry
        self.size = entry.size
        self.version = str(book["v"])
        self.created = book.get("c", entry.created)
        self.modified = book.get("m", entry.modified)

    @property
    def data(self) -> IO[bytes]:
        """A new stream over the cached data (from the source if the copy is gone)."""
        try:
            return self._entry.data
        except (KeyError, ConflictError):
            assert self.version is not None
            return self._store._reopen(self._key, self.version)

    def range(self, start: int | None = None, end: int | None = None) -> IO[bytes]:
        """A stream over ``[start, end)`` of the cached data."""
        try:
            return self._entry.range(start, end)
        except (KeyError, ConflictError):
            return super().range(start, end)

    @property
    def metadata(self) -> Metadata:
        """A fresh copy of the source's metadata."""
        metadata = self._entry.metadata
        metadata.pop(BOOKKEEPING, None)
        return metadata
