"""The key-value store API: abstract read-only, writable and authorizing stores.

A store maps keys (non-empty ``str`` without NUL) to a byte stream plus a JSON metadata
dict. Backends implement a small abstract core; everything else has a default here, built
on that core. A default that is slow or only atomic inside a transaction says so.

Read core: :meth:`AbstractReadOnlyStore.get` and :meth:`AbstractReadOnlyStore.query`.
Write core: :meth:`AbstractStore.set` and :meth:`AbstractStore.delete`, plus the
transaction hooks (``_begin_transaction``, ``_commit_transaction``,
``_rollback_transaction``, ``_savepoint``, ``_rollback_to_savepoint``,
``_release_savepoint``) for backends that have transactions.

Optional surfaces are declared here too: :attr:`AbstractReadOnlyStore.capabilities`
(what a store promises beyond this contract) and :class:`VersionedStore` (``version_of``).
The helpers a backend builds its methods from are in :mod:`storekeeper.store.backend`.

Every operation on a store that is not connected raises
:class:`~storekeeper.errors.NotConnectedError`; ``with store:`` connects and disconnects.
"""

from __future__ import annotations

import abc
import contextvars
import fnmatch
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Protocol, Self, runtime_checkable

from storekeeper.errors import InvalidValueError, NotConnectedError
from storekeeper.events import BaseEvent, BaseEventManager, get_event_manager

# The helpers below were importable from here; their home is the backend kit now. They
# stay importable from this module (they are in __all__) for code written against it.
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    OwnedVar,
    StoreCapabilities,
    check_batch_keys,
    check_buffer_size,
    check_pattern,
    check_precondition,
    check_read,
    check_select,
    check_write,
    decode_metadata,
    exists_conflict,
    iter_source,
    missing,
    new_version,
    pair_up,
    pass_terms,
    query_terms,
    select_metadata,
    source_size,
    split_pairs,
    unpack_value,
    version_numbers,
)
from storekeeper.store.events import (
    StoreKeyEvent,
    StoreProgressEndEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.listing import check_list_info, check_listing, details_by_get, fold_keys
from storekeeper.store.mapping import StoreMapping
from storekeeper.store.utils import (
    SimpleTransactionContext,
    StoreProgressManager,
    TransactionState,
    buffer_iterator,
    read_stream,
)
from storekeeper.store.value import Head, KeyInfo, Value

__all__ = [
    "AbstractAuthorizingStore",
    "AbstractReadOnlyStore",
    "AbstractStore",
    "VersionedStore",
    # Kept for code that imported them from here; new code uses storekeeper.store.backend.
    "check_precondition",
    "exists_conflict",
    "missing",
    "new_version",
    "pair_up",
    "split_pairs",
    "unpack_value",
    "version_numbers",
]

BinaryStream = IO[bytes]
PathLike = str | os.PathLike[str]

_NO_CAPABILITIES = StoreCapabilities()
_PROGRESS_EVENTS = (StoreProgressStartEvent, StoreProgressStepEvent, StoreProgressEndEvent)
#: ``(store, key)`` while the default :meth:`AbstractStore.update_metadata` runs: its
#: inner ``set_metadata`` emits a set event that is really the update.
_updating: contextvars.ContextVar[tuple[object, str] | None] = contextvars.ContextVar(
    "storekeeper-updating", default=None
)


def _as_update(event: BaseEvent, key: str) -> BaseEvent:
    """*event* (a StoreSetEvent) as a StoreUpdateEvent if it concerns *key*, with every
    attribute the set event carried (a backend may add ``version`` or ``remote``)."""
    if getattr(event, "key", None) != key:
        return event
    attributes = {name: value for name, value in vars(event).items() if not name.startswith("_")}
    attributes.pop("source", None)
    return StoreUpdateEvent(event.source, **attributes)


@runtime_checkable
class VersionedStore(Protocol):
    """A store that can tell a key's current version without reading its data.

    Optional: stores whose ``get`` downloads the data (remote ones) provide it so that
    a cache can validate an entry cheaply (see :mod:`storekeeper.composite.cached`).
    """

    def version_of(self, key: str) -> str | None:
        """*key*'s current version (what ``get(key).version`` would report), without
        transferring its data; a ``KeyError`` (:class:`~storekeeper.errors.KeyNotFoundError`)
        if the key is missing. ``None`` when the store cannot tell: for example a key
        written in the caller's open transaction of a store whose server assigns the
        version only at the commit."""


class AbstractReadOnlyStore(abc.ABC):
    """Base of every store: the read half of the API.

    ``event_manager`` is where the store emits its events (default: the process-wide
    manager from :func:`storekeeper.events.get_event_manager`). Instances are safe to
    share between threads.
    """

    event_manager: BaseEventManager

    def __init__(self, event_manager: BaseEventManager | None = None) -> None:
        self.event_manager = event_manager if event_manager is not None else get_event_manager()
        self._connected = False
        # Seen only by the task or thread that began the transaction (see owners.py).
        self._transaction_var: OwnedVar[TransactionState] = OwnedVar(
            f"storekeeper-transaction-{id(self):x}"
        )

    # -- connection ----------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Acquire the store's long-lived resources; *credentials* are backend-specific.

        Raises :class:`~storekeeper.errors.AuthenticationError` for bad credentials.
        """
        self._connected = True

    def disconnect(self) -> None:
        """Release the store's long-lived resources. Connecting again is allowed."""
        self._connected = False

    def is_connected(self) -> bool:
        """Whether the store is connected."""
        return self._connected

    def info(self) -> dict[str, Any]:
        """A dict describing the store: at least ``type``, ``readonly``, ``authorizing``."""
        return {"type": type(self).__name__, "readonly": True, "authorizing": False}

    @property
    def capabilities(self) -> StoreCapabilities:
        """What this store promises beyond the contract (see
        :class:`~storekeeper.store.StoreCapabilities`). Default: nothing; every backend
        declares its own, composites derive theirs from their children."""
        return _NO_CAPABILITIES

    def storage_identity(self) -> Hashable | None:
        """A value equal for two store objects that hold their keys in the same storage
        (one database table or one directory opened twice, whatever path or URL spelled
        it), and different for different storage; ``None`` when the store cannot tell,
        and then only the same object is known to be the same store.

        Tools compare it to refuse work of a store onto itself
        (:func:`~storekeeper.store.transfer.transfer`). Default: ``None``;
        :class:`~storekeeper.SqliteStore` and :class:`~storekeeper.FileSystemStore`
        tell theirs (the database file's or the directory's device and inode, see
        :func:`~storekeeper.store.backend.path_identity`);
        :class:`~storekeeper.composite.SimpleAuthStore` and
        :class:`~storekeeper.composite.CachedStore` tell that of the store they wrap
        (a cache's source).
        """
        return None

    def storage_paths(self) -> tuple[str, ...]:
        """The real paths of the local files and directories holding this store's
        data (a database file and the files beside it, a store's directory); empty
        when there are none or the store cannot tell (the default). Tools refuse a
        :class:`~storekeeper.store.transfer.Folder` that is one, lies inside one or
        holds one (:func:`~storekeeper.store.transfer.transfer`); composites tell
        those of all their children."""
        return ()

    def __enter__(self) -> Self:
        if not self.is_connected():
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def _require_connection(self) -> None:
        if not self._connected:
            raise NotConnectedError(
                f"{type(self).__name__} is not connected: call connect() or use 'with store:'"
            )

    # -- the read core -----------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> Value:
        """Return the :class:`Value` of *key*; :class:`KeyNotFoundError` if it is missing."""

    @abc.abstractmethod
    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Return ``(key, metadata)`` for every key whose metadata matches all terms.

        Terms map a metadata name to an exact value or a :mod:`storekeeper.store.query`
        term. They are given as keyword arguments, or as mappings after *select* for
        any name at all, including names a keyword cannot carry (``select``, names that
        are not identifiers): ``query(None, {"select": 1})``. A name given twice raises
        :class:`~storekeeper.errors.InvalidArgumentError`, as do a *select* that is a
        single ``str`` and a term name that is not a ``str``; a value that is not JSON
        raises :class:`~storekeeper.errors.InvalidMetadataError`.
        *select* limits the returned metadata to those names (missing ones are omitted).
        With no terms, every key is returned. The order is unspecified.
        """

    # -- defaults built on the core -----------------------------------------------------
    def exists(self, key: str) -> bool:
        """Whether *key* exists. Default: tries :meth:`get`."""
        try:
            self.get(key)
        except KeyError:
            return False
        return True

    def head(self, key: str) -> Head | None:
        """*key*'s version, size and metadata (a fresh copy) without its data, or
        ``None`` if *key* is missing: a lookup that raises nothing for a missing key.

        It answers as :meth:`get` would at the same moment (the same version, size and
        metadata; the same errors for an invalid key or an unconnected store).
        Default: from :meth:`get`; backends whose ``get`` costs more than reading the
        key's row or record override it.
        """
        try:
            value = self.get(key)
        except KeyError:
            return None
        return Head(value.version, value.size, value.metadata)

    def get_data(self, key: str) -> BinaryStream:
        """A new readable stream over *key*'s data; close it when done."""
        return self.get(key).data

    def get_data_range(
        self, key: str, start: int | None = None, end: int | None = None
    ) -> BinaryStream:
        """A stream over bytes ``start`` up to, not including, ``end`` of *key*'s data."""
        return self.get(key).range(start, end)

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to the names in *select* when given."""
        return select_metadata(self.get(key).metadata, select)

    def multiget(self, keys: Iterable[str]) -> list[Value]:
        """The values of *keys*, in input order; :class:`KeyNotFoundError` if any is missing."""
        check_batch_keys(keys)
        return [self.get(key) for key in keys]

    def multiget_data(self, keys: Iterable[str]) -> list[BinaryStream]:
        """Data streams of *keys*, in input order. Close each stream when done."""
        check_batch_keys(keys)
        return [self.get_data(key) for key in keys]

    def multiget_metadata(
        self, keys: Iterable[str], select: Iterable[str] | None = None
    ) -> list[Metadata]:
        """Metadata of *keys*, in input order, limited to *select* when given."""
        check_batch_keys(keys)
        names = check_select(select)
        return [self.get_metadata(key, names) for key in keys]

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """The keys :meth:`query` would return for the same terms. There is no *select*
        here, so every keyword names metadata, ``select`` included."""
        return [key for key, _ in pass_terms(self.query, query_terms(where, kwargs), ())]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching the glob *pattern* (``fnmatch`` rules, case-sensitive); a
        pattern that is not a ``str`` raises :class:`~storekeeper.errors.InvalidArgumentError`."""
        check_pattern(pattern)
        return [key for key in self.query_keys() if fnmatch.fnmatchcase(key, pattern)]

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """An iterator over the keys that start with *prefix*, in key order (code-point
        order, as Python sorts ``str``).

        With a *delimiter*, a key holding the delimiter after the prefix is listed as
        its *folder* (the key up to and including that first delimiter), each folder
        once, in its place in the order: ``list_keys("a/", "/")`` lists one level, as
        object stores do. The listing sees the caller's own transaction's writes, as
        :meth:`get` does; it is not a snapshot: a key that exists throughout is listed
        once, one added or deleted meanwhile may be listed or not. The arguments are
        checked when it is called: :class:`~storekeeper.errors.InvalidArgumentError`
        for a *prefix* that is not a ``str`` or a *delimiter* that is not ``None`` or
        a non-empty ``str``, :class:`~storekeeper.errors.InvalidKeyError` for a lone
        surrogate in either (no key holds one).

        Default: sorts the matching keys of :meth:`query_keys` (every key is read);
        backends override it with a scan of the prefix's range that yields as it reads.
        """
        check_listing(prefix, delimiter)
        keys = sorted(key for key in self.query_keys() if key.startswith(prefix))
        return fold_keys(keys, prefix, delimiter)

    def list_info(
        self, prefix: str = "", *, metadata: bool = False
    ) -> Iterator[tuple[str, KeyInfo]]:
        """An iterator over ``(key, info)`` for the keys that start with *prefix*, in key
        order: each key's size, times and version as a :class:`KeyInfo`, its metadata
        too when *metadata* is true; no data is read.

        It lists what :meth:`list_keys` lists (without folders) and sees what it sees; a
        key deleted between its listing and its details is left out. A store that may
        show a key without its details gives ``None`` for them (a
        :class:`~storekeeper.composite.SimpleAuthStore` user who may see a key but not
        read it). The arguments are checked when it is called: the *prefix* as
        :meth:`list_keys` checks it, and *metadata* must be a ``bool``
        (:class:`~storekeeper.errors.InvalidArgumentError` otherwise).

        Default: :meth:`list_keys`, then :meth:`get` per key; backends that hold these
        details in their listing's source override it with one scan of the range.
        """
        check_list_info(prefix, metadata)
        return details_by_get(self.get, self.list_keys(prefix), metadata)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data as ``bytes`` (read in chunks of *buffer_size*).

        Reading a value larger than one buffer (or of unknown size) emits store progress
        events, as :meth:`to_file` does, when anyone listens for them.
        """
        check_read(key, buffer_size)
        if not self._progress_observed():
            return read_stream(self.get_data(key), buffer_size)
        value = self.get(key)
        size = value.size
        if size is not None and size <= buffer_size:
            return read_stream(value.data, buffer_size)
        message = f"Reading key {key!r}"
        with self._progress(message, key, size, value.metadata) as progress, value.data as stream:
            return b"".join(buffer_iterator(stream, buffer_size, progress))

    def to_file(self, key: str, path: PathLike, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        """Write *key*'s data to the file *path*, atomically and durably.

        The file is replaced only once all the data has been written, so a missing key or
        a failure part-way leaves *path* as it was. A *path* that is a FIFO or a device
        (``/dev/null``, ``/dev/fd/N``) is written into instead (see
        :func:`~storekeeper.files.save_file`); an error opening or writing *path* is an
        :class:`~storekeeper.errors.OutputFileError`. Emits store progress events.
        """
        from storekeeper.files import save_file  # foundation; imported on first use

        check_read(key, buffer_size)
        value = self.get(key)
        message = f"Saving key {key!r} to file {os.fspath(path)!r}"
        progress = self._progress(message, key, value.size, value.metadata)
        with progress, value.data as stream:
            save_file(path, buffer_iterator(stream, buffer_size, progress))

    def as_mapping(self) -> StoreMapping:
        """A :class:`collections.abc.MutableMapping` view of key -> data bytes."""
        return StoreMapping(self)

    # -- events and transactions (shared machinery) -----------------------------------
    def _emit(self, event: BaseEvent) -> None:
        """Emit *event* now, or hold it until the current transaction commits."""
        updating = _updating.get()
        if updating is not None and updating[0] is self and type(event) is StoreSetEvent:
            event = _as_update(event, updating[1])
        state = self._transaction_var.get()
        if state is None:
            self.event_manager.emit(event)
        else:
            state.events.append(event)

    def _emit_change(self, cls: type[StoreKeyEvent], key: str, metadata_json: str) -> None:
        """Emit a *cls* event for *key* with the metadata parsed from *metadata_json*;
        neither is built when no listener could receive it."""
        if self._observed(cls):
            self._emit(cls(self, key=key, metadata=decode_metadata(metadata_json)))

    def _observed(self, *classes: type[BaseEvent]) -> bool:
        """Whether an event of one of *classes* emitted now could reach a listener.

        Inside a transaction the answer is always yes: listeners connected before the
        commit receive the held events. A manager that cannot tell counts as observed.
        """
        if self._transaction_var.get() is not None:
            return True
        has_listeners = self.event_manager.has_listeners
        # This runs before every write of some stores.
        for cls in classes:  # noqa: SIM110 - any() over a generator costs more here
            if has_listeners(cls):
                return True
        return False

    def _progress(
        self, message: str, key: str, size: int | None, metadata: Metadata | None = None
    ) -> StoreProgressManager:
        """Progress events of an operation on *key* of *size* bytes (``None``: unknown);
        *metadata* is the key's, where the operation knows it."""
        return StoreProgressManager(
            self.event_manager,
            self,
            message=message,
            steps=-1 if size is None else size,
            key=key,
            metadata=metadata,
        )

    def _progress_observed(self) -> bool:
        """Whether a store progress event emitted now could reach a listener (they are
        never held back by transactions). A manager that cannot tell counts as observed."""
        return any(map(self.event_manager.has_listeners, _PROGRESS_EVENTS))

    def _progress_metadata(self, metadata_json: str | None) -> Metadata | None:
        """The metadata for progress events from its JSON text, parsed only if someone
        listens for them."""
        if metadata_json is None or not self._progress_observed():
            return None
        return decode_metadata(metadata_json)

    def _transaction_state(self) -> TransactionState | None:
        return self._transaction_var.get()

    def _set_transaction_state(self, state: TransactionState | None) -> None:
        self._transaction_var.set(state)

    def _in_transaction(self) -> bool:
        return self._transaction_var.get() is not None

    def _begin_transaction(self) -> None:
        """Hook: start a transaction (default: nothing)."""

    def _commit_transaction(self) -> None:
        """Hook: make the transaction's writes durable; on failure, leave nothing applied."""

    def _rollback_transaction(self) -> None:
        """Hook: undo the transaction's writes (default: nothing)."""

    def _savepoint(self) -> object:
        """Hook: mark the current point of the transaction; returns a token."""
        return None

    def _rollback_to_savepoint(self, token: object) -> None:
        """Hook: undo the writes made since the savepoint *token*."""

    def _release_savepoint(self, token: object) -> None:
        """Hook: forget the savepoint *token*, keeping its writes."""


class AbstractStore(AbstractReadOnlyStore):
    """A writable store. Backends implement :meth:`set`, :meth:`delete` and transactions.

    Single-key writes accept the keyword-only preconditions ``if_version`` (the key's
    current :attr:`Value.version` must equal it) and ``if_exists`` (``True``: the key must
    exist, ``False``: it must not); a failed precondition raises
    :class:`~storekeeper.errors.ConflictError` and writes nothing. Backends check and
    write atomically, so of two racing conditional writers at most one succeeds.
    """

    def info(self) -> dict[str, Any]:
        """As :meth:`AbstractReadOnlyStore.info`, with ``readonly`` false."""
        return {**super().info(), "readonly": False}

    def transaction(self, notes: str = "", *, wait: bool = True) -> SimpleTransactionContext:
        """A re-entrant transaction context manager (see :class:`SimpleTransactionContext`).

        Writes in the block are applied together when the outermost block exits normally
        and rolled back if it raises; only the outermost block of a thread/task counts.
        ``wait=False``: entering the block raises
        :class:`~storekeeper.errors.LockTimeoutError` at once if another thread, task or
        process holds the store's write lock, instead of waiting for it.
        """
        return SimpleTransactionContext(self, notes, wait=wait)

    @abc.abstractmethod
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str | None:
        """Replace *key*'s data and metadata with *value* (a Value or ``(data, metadata)``).

        *data* may be bytes, a readable binary file-like, or an iterable of bytes chunks;
        *metadata* a JSON-representable dict (or ``None`` for ``{}``). If reading the data
        fails, the old value stays. Emits :class:`StoreSetEvent`, whether the key existed
        or not.

        Returns the version of the value written (what ``get(key).version`` reports
        until the next write: an ``if_version`` for the next conditional write, with no
        lookup), or ``None`` from a store that cannot tell. Inside a transaction it is
        the version the value has once the transaction commits, or ``None`` from a store
        that learns it only at the commit (then ``get(key).version`` is ``None`` too
        until the commit, and after it reports the version given).
        """

    @abc.abstractmethod
    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing. Emits StoreDeleteEvent."""

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata (``{}`` for a new key).

        Emits :class:`StoreSetEvent`. Default: reads the metadata and calls :meth:`set`
        inside a transaction.
        """
        check_write(key, if_version, if_exists, buffer_size)
        with self.transaction(f"Setting data of {key!r}"):
            try:
                metadata = self.get_metadata(key)
            except KeyError:
                metadata = {}
            self.set(key, (data, metadata), buffer_size, if_version=if_version, if_exists=if_exists)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data (empty for a new key).

        Emits :class:`StoreSetEvent`. Default: re-writes the data through :meth:`set`
        inside a transaction (slow for large values; backends override it).
        """
        check_write(key, if_version, if_exists)
        with self.transaction(f"Setting metadata of {key!r}"):
            try:
                data: object = self.get_data(key)
            except KeyError:
                data = b""
            try:
                self.set(key, (data, metadata), if_version=if_version, if_exists=if_exists)
            finally:
                if not isinstance(data, bytes):
                    data.close()  # type: ignore[attr-defined]

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata like ``dict.update``.

        :class:`KeyNotFoundError` if *key* is missing. Emits :class:`StoreUpdateEvent`.
        Default: read, merge and :meth:`set_metadata` inside a transaction (whose
        :class:`StoreSetEvent` for *key* is emitted as the update it is).
        """
        check_write(key, if_version)
        token = _updating.set((self, key))
        try:
            with self.transaction(f"Updating metadata of {key!r}"):
                merged = self.get_metadata(key)
                merged.update(metadata)
                self.set_metadata(key, merged, if_version=if_version, if_exists=True)
        finally:
            _updating.reset(token)

    def multiset(
        self,
        keys: Iterable[str],
        values: Iterable[Value | tuple[Any, Any]],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        """:meth:`set` each key to its value (paired like ``zip``), in one transaction;
        a :class:`StoreSetEvent` for every key."""
        check_buffer_size(buffer_size)
        pairs = pair_up(keys, values)
        with self.transaction(f"Setting {len(pairs)} keys"):
            for key, value in pairs:
                self.set(key, value, buffer_size)

    def multiset_data(
        self, keys: Iterable[str], datas: Iterable[object], buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> None:
        """:meth:`set_data` for each key (paired like ``zip``), in one transaction;
        a :class:`StoreSetEvent` for every key."""
        check_buffer_size(buffer_size)
        pairs = pair_up(keys, datas)
        with self.transaction(f"Setting data of {len(pairs)} keys"):
            for key, data in pairs:
                self.set_data(key, data, buffer_size)

    def multiset_metadata(
        self, keys: Iterable[str], metadatas: Iterable[Mapping[str, Any]]
    ) -> None:
        """:meth:`set_metadata` for each key (paired like ``zip``), in one transaction;
        a :class:`StoreSetEvent` for every key."""
        pairs = pair_up(keys, metadatas)
        with self.transaction(f"Setting metadata of {len(pairs)} keys"):
            for key, metadata in pairs:
                self.set_metadata(key, metadata)

    def multiupdate_metadata(
        self, keys: Iterable[str], metadatas: Iterable[Mapping[str, Any]]
    ) -> None:
        """:meth:`update_metadata` for each key (paired like ``zip``), in one transaction;
        a :class:`StoreUpdateEvent` for every key."""
        pairs = pair_up(keys, metadatas)
        with self.transaction(f"Updating metadata of {len(pairs)} keys"):
            for key, metadata in pairs:
                self.update_metadata(key, metadata)

    def _read_source(
        self, key: str, source: object, buffer_size: int, metadata_json: str | None = None
    ) -> bytes:
        """Read a whole data source into memory, reporting progress for streams (with
        *metadata_json*, the metadata being written, when it is known)."""
        if isinstance(source, bytes):
            return source
        chunks = iter_source(source, buffer_size)
        parts: list[bytes] = []
        total = 0
        size, metadata = source_size(source), self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            for chunk in chunks:
                parts.append(chunk)
                total += len(chunk)
                progress.step(step=total)
        return b"".join(parts)

    def from_bytes(self, key: str, data: bytes, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        """Set *key*'s data to *data*, keeping its metadata (``{}`` for a new key)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidValueError(f"from_bytes takes bytes, not {type(data).__name__}")
        check_buffer_size(buffer_size)
        self.set_data(key, bytes(data), buffer_size)

    def from_file(self, key: str, path: PathLike, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        """Set *key*'s data from the file at *path*, keeping its metadata."""
        check_write(key, buffer_size=buffer_size)
        with open(path, "rb") as stream:
            self.set_data(key, stream, buffer_size)


class AbstractAuthorizingStore(AbstractStore):
    """A store with per-key permissions: permission name -> set of tags granted it.

    A tag stands for a user, group or role. The permission ``'owned'`` is required on
    every key (with at least one tag); only owners may read or change permissions.
    """

    def info(self) -> dict[str, Any]:
        """As :meth:`AbstractStore.info`, with ``authorizing`` true."""
        return {**super().info(), "authorizing": True}

    @property
    @abc.abstractmethod
    def user_tag(self) -> str:
        """The tag that stands for the connected user."""

    def get_permissions(self, key: str) -> dict[str, set[str]]:
        """*key*'s permissions; KeyError if not visible, AuthorizationError if not owned."""
        return self.get(key).permissions

    @abc.abstractmethod
    def set_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Replace *key*'s permissions; ``'owned'`` must name at least one tag."""

    @abc.abstractmethod
    def update_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Add the given tags to *key*'s permissions."""
