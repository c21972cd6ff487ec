"""``FileSystemStore``: a store in a directory, safe across threads and processes.

``file:///abs/path`` (see :meth:`FileSystemStore.from_url`). Layout of the directory::

    .FSStore        the magic file that marks the directory as a store
    .lock           the store-wide inter-process lock (storekeeper.files.FileLock)
    .journal        present only while a multi-key transaction is being applied
    keys/<name>     one record per key: key, metadata, version, timestamps and either the
                    data (values up to ``inline_limit`` bytes) or a data file's name
    data/<name>.<v> immutable data files of large values

- **Keys** are escaped to lowercase names of ``[a-z0-9_-%~]`` (see ``_fs_names``), so no
  key escapes the directory or collides with another on a case-insensitive file system;
  very long keys get a hashed name and the record keeps the real key.
- **Atomicity**: a key's record is replaced by one atomic rename, so data and metadata
  change together and readers see the old value or the new one, never a mix. A large
  value's data file is written (and fsynced) before the record naming it.
- **Durability**: with ``durable=True`` (default) every write fsyncs the files and their
  directories before returning; ``durable=False`` skips the fsyncs (a returned write
  survives a crash of the process, not a power loss).
- **Concurrency**: writers serialise through a store-wide ``FileLock`` (a dead holder is
  detected), under which conditional writes are checked, so two racing writers never
  both win. Transactions hold the lock from begin to end, see their own writes, nest
  with savepoints and commit through an intent log that the next writer (or
  ``connect``) rolls forward after a crash: all-or-nothing.
- **Readers** take no lock and never wait: they read the intent log before a record and
  see every key of a committed transaction from its commit point on, even while its
  writer is still applying it, frozen or dead (see ``_fs_journal``).
- **Damage**: a record file that fails its checksum makes reads of its key raise
  :class:`~storekeeper.errors.CorruptFileError`; listings and queries skip it with a
  logged warning, :meth:`FileSystemStore.info` lists it, and ``set`` or ``delete`` of
  the key replaces or removes it.
- Reading a large value needs POSIX ``pread``; a value keeps reading the data it was
  created with even if the key is overwritten meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult

from storekeeper.backends._fs_errors import from_source, translated
from storekeeper.backends._fs_journal import (
    collect_garbage,
    recover,
    visible_keys,
    visible_records,
)
from storekeeper.backends._fs_layout import (
    DEFAULT_MAGIC_FNAME,
    StoreLayout,
    init_shared_store,
    key_of_name,
)
from storekeeper.backends._fs_listing import KeyLister
from storekeeper.backends._fs_lock import StoreLock
from storekeeper.backends._fs_names import encode_key
from storekeeper.backends._fs_records import Record, SharedFile, is_damaged, record_value
from storekeeper.backends._fs_transactions import Staging, commit_staging, remove_staged_files
from storekeeper.backends._fs_url import URL_OPTIONS, url_directory
from storekeeper.errors import (
    BackendError,
    CorruptFileError,
    FileSystemStoreError,
    NotConnectedError,
    TransactionError,
)
from storekeeper.events import BaseEventManager
from storekeeper.files import FileTail, copyable
from storekeeper.store import urls
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    OwnedVar,
    StoreCapabilities,
    check_key,
    check_precondition,
    check_read,
    check_select,
    check_types,
    check_write,
    decode_metadata,
    encode_metadata,
    iter_source,
    matches,
    missing,
    new_version,
    path_identity,
    pick_metadata,
    query_terms,
    select_metadata,
    source_size,
    unpack_value,
)
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.listing import check_list_info, check_listing, fold_keys
from storekeeper.store.value import Head, KeyInfo, Value

# FileSystemStoreError is defined in storekeeper.errors (with the whole error tree) and
# init_shared_store in _fs_layout; both stay importable from here.
__all__ = ["FileSystemStore", "FileSystemStoreError", "init_shared_store"]

_LOCK_NAME = ".lock"
# A reader that finds a record's data file gone (the key was just overwritten) re-reads
# the record; this bounds the retries under pathological churn.
_READ_RETRIES = 100
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Payload:
    inline: bytes | None
    data_file: str | None
    size: int


_CAPABILITIES = StoreCapabilities(
    conditional_writes=True,
    atomic_transactions=True,
    isolated_transactions=True,
    cross_process=True,
    ranges=True,
    persistent=True,
)


class FileSystemStore(AbstractStore):
    """A store kept in the directory *path* (see the module documentation).

    The directory must have been made a store with :func:`init_shared_store`; the
    constructor and :meth:`connect` raise :class:`FileSystemStoreError` otherwise. With
    ``create=True`` the constructor checks nothing and :meth:`connect` initialises the
    store first, so nothing is written before the store is connected.
    Keyword options: ``durable`` (fsync, default true), ``lock_timeout`` (seconds to wait
    for the store lock before :class:`~storekeeper.errors.LockTimeoutError`),
    ``inline_limit`` (values up to this size live inside their record) and
    ``orphan_grace`` (age in seconds after which an unreferenced data file is garbage).

    Listing cost: records live in one flat directory whose order is the file system's,
    so every :meth:`list_keys` reads all its names (no record is opened): listing 100
    keys among 100,000 reads 100,000 names. Avoiding that needs an ordered index next to
    the records, and an index readers can trust without a lock must change with every
    record in one atomic step, which costs every write a second file and fsync (a
    journal entry); an index rebuilt on the side and checked against the directory's
    modification time would be trusted while stale whenever two changes land within one
    tick of the file system's clock. Neither is worth a slower or less certain ``set``;
    a store with many keys listed by prefix is better served by :class:`~storekeeper.SqliteStore`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        magic_fname: str = DEFAULT_MAGIC_FNAME,
        *,
        durable: bool = True,
        event_manager: BaseEventManager | None = None,
        lock_timeout: float = 60.0,
        inline_limit: int = 65536,
        orphan_grace: float = 3600.0,
        create: bool = False,
    ) -> None:
        super().__init__(event_manager)
        check_types(bool, durable=durable, create=create)
        check_types(int, inline_limit=inline_limit)
        check_types(float, lock_timeout=lock_timeout, orphan_grace=orphan_grace)
        check_types(str, magic_fname=magic_fname)
        self.path = os.path.abspath(os.fspath(path))
        self.magic_fname = magic_fname
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.inline_limit = inline_limit
        self.orphan_grace = orphan_grace
        self.create = create
        self._layout = StoreLayout(self.path)
        self._lister = KeyLister(self._layout.keys, self._on_damaged)
        self._lock: StoreLock | None = None
        # Seen only by the transaction's owner, not by tasks that inherit its context.
        self._staging_var: OwnedVar[Staging] = OwnedVar(f"storekeeper-fs-staging-{id(self):x}")
        if not create:
            self._layout.check(self.magic_fname)

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> FileSystemStore:
        """The store in the directory a ``file:`` URL names.

        ``file:///absolute/dir`` (also ``file://localhost/absolute/dir`` and
        ``file:/absolute/dir``) or ``file:relative/dir`` (relative to the working
        directory when opened); the path is percent-decoded (``my%20store``). Options:
        ``create`` and ``durable`` (true/false), ``inline_limit`` (bytes),
        ``lock_timeout`` and ``orphan_grace`` (seconds); keyword *options* win over
        them. With ``create=true`` the store is initialised when connected (see
        :func:`init_shared_store`); without it a missing store is an error. A host
        part, an unknown option or a bad value is an
        :class:`~storekeeper.errors.InvalidURLError`.
        """
        settings = urls.url_options(parts, URL_OPTIONS)
        settings.update(options)
        return urls.create(cls, parts, url_directory(parts), **settings)

    @property
    def capabilities(self) -> StoreCapabilities:
        """Everything but server-side queries: a query reads every record's metadata."""
        return _CAPABILITIES

    def storage_identity(self) -> Hashable | None:
        """The store's directory (its device and inode): equal for every path to it."""
        found = path_identity(self.path)
        return None if found is None else ("directory", *found)

    def storage_paths(self) -> tuple[str, ...]:
        """The store's directory, links resolved."""
        return (os.path.realpath(self.path),)

    def info(self) -> dict[str, Any]:
        """Store description with ``path``, ``durable`` and, when connected,
        ``damaged_keys``: the keys whose record file is damaged (found by reading every
        record; a damaged record whose long key is stored hashed is listed by file name).
        """
        info = {**super().info(), "path": self.path, "durable": self.durable}
        if self.is_connected():
            damaged: list[str] = []
            layout = self._layout
            pending = layout.journal_reader.pending()
            for _ in visible_records(layout.keys, pending, lambda n, e: damaged.append(n)):
                pass
            info["damaged_keys"] = sorted(key_of_name(name) for name in damaged)
        return info

    # -- connection ----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Initialise the store if created with ``create=True``, check the directory,
        finish a crashed transaction and collect garbage."""
        if self.create:
            init_shared_store(self.path, self.magic_fname)
        self._layout.check(self.magic_fname)
        lock = StoreLock(os.path.join(self.path, _LOCK_NAME), self.lock_timeout, self._recover)
        with lock.held():
            collect_garbage(self.path, self.orphan_grace)
        self._lock = lock
        super().connect(credentials)

    def disconnect(self) -> None:
        """Forget the lock object; the data stays on disk."""
        super().disconnect()
        self._lock = None

    def collect_garbage(self, grace: float | None = None) -> int:
        """Remove files no record refers to; return their number.

        Data files younger than *grace* seconds (default ``orphan_grace``) are kept,
        because another process may be about to link them.
        """
        self._require_connection()
        with translated("collecting garbage"), self._locked().held():
            return collect_garbage(self.path, self.orphan_grace if grace is None else grace)

    # -- locking ---------------------------------------------------------------------------
    def _locked(self) -> StoreLock:
        lock = self._lock
        if lock is None:
            raise NotConnectedError(f"{type(self).__name__} is not connected")
        return lock

    def _recover(self) -> None:
        # A writer that died after committing a journal left it for the next one to
        # finish before anything else changes.
        if os.path.exists(self._layout.journal):
            recover(self.path, durable=self.durable)

    # -- reading ---------------------------------------------------------------------------
    def _load(self, key: str, name: str, *, with_data: bool) -> Record | None:
        """*key*'s record as this context sees it; :class:`CorruptFileError` if damaged."""
        staging = self._staging_var.get()
        if staging is not None and key in staging.changes:
            return staging.changes[key]
        return self._layout.load(key, name, with_data=with_data)

    def _load_replaced(self, key: str, name: str, *, with_data: bool) -> Record | None:
        """As :meth:`_load`, for a write that replaces or deletes the whole record: a
        damaged record comes back as a :func:`damaged_record` stand-in."""
        try:
            return self._load(key, name, with_data=with_data)
        except CorruptFileError as exc:
            _log.warning("replacing the damaged record of key %r: %s", key, exc)
            return self._layout.clear_damaged(key, name)

    def _record(self, key: str, *, with_data: bool) -> Record:
        check_key(key)
        self._require_connection()
        record = self._load(key, encode_key(key), with_data=with_data)
        if record is None:
            raise missing(key)
        return record

    def _on_damaged(self, name: str, error: CorruptFileError) -> None:
        _log.warning("skipping the damaged record of key %r: %s", key_of_name(name), error)

    def get(self, key: str) -> Value:
        """The value of *key*: in memory for small values, streamed from disk otherwise.

        A large value whose data file is missing or shorter than its record says raises
        :class:`CorruptFileError` (so do its streams if the file is truncated later).
        """
        seen = None
        for _ in range(_READ_RETRIES):
            record = self._record(key, with_data=True)
            if record.data_file is None:
                return record_value(record, None)
            try:
                shared = SharedFile(self._layout.data_path(record.data_file), f"key {key!r}")
            except FileNotFoundError:
                # Overwritten between reading the record and opening its data, unless
                # the record is still the same: then its data file is gone (damage).
                if record.version == seen:
                    raise _missing_data(key, record.data_file) from None
                seen = record.version
                continue
            shared.check_size(record.size)
            return record_value(record, shared)
        raise BackendError(f"key {key!r} changed {_READ_RETRIES} times while being read")

    def exists(self, key: str) -> bool:
        """Whether *key* exists (one ``stat`` for most keys)."""
        check_key(key)
        self._require_connection()
        name = encode_key(key)
        staging = self._staging_var.get()
        found = (
            None if staging is not None and key in staging.changes else self._layout.exists(name)
        )
        if found is None:
            return self._load(key, name, with_data=False) is not None
        return found

    def head(self, key: str) -> Head | None:
        """*key*'s version, size and metadata, or ``None`` if missing: one read of its
        record (a large value's data file is not opened)."""
        check_key(key)
        self._require_connection()
        record = self._load(key, encode_key(key), with_data=False)
        if record is None:
            return None
        return Head(record.version, record.size, decode_metadata(record.metadata_json))

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata (the data is not read)."""
        record = self._record(key, with_data=False)
        return select_metadata(decode_metadata(record.metadata_json), select)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data as bytes (a small value costs one read of its record)."""
        check_read(key, buffer_size)
        if self._progress_observed():
            return super().to_bytes(key, buffer_size)
        record = self._record(key, with_data=True)
        if record.data_file is None:
            return record.inline or b""
        return super().to_bytes(key, buffer_size)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs; reads every record's metadata.

        Damaged records are skipped with a logged warning (see :meth:`info`).
        """
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        result = []
        staging = self._staging_var.get()
        changes = staging.changes if staging is not None else {}
        layout = self._layout
        records = visible_records(layout.keys, layout.journal_reader.pending(), self._on_damaged)
        committed = (r for r in records if r.key not in changes)
        staged = (r for r in changes.values() if r is not None)
        for record in itertools.chain(committed, staged):
            metadata = decode_metadata(record.metadata_json)
            if matches(metadata, terms):
                result.append((record.key, pick_metadata(metadata, names)))
        return result

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys: exactly the keys :meth:`query` returns (damaged records
        skipped), without decoding any metadata when there are no terms."""
        if where or kwargs:
            return super().query_keys(*where, **kwargs)
        self._require_connection()
        staging = self._staging_var.get()
        changes = staging.changes if staging is not None else {}
        layout = self._layout
        listed = visible_keys(layout.keys, layout.journal_reader.pending(), self._on_damaged)
        keys = [key for key in listed if key not in changes]
        keys.extend(key for key, record in changes.items() if record is not None)
        return keys

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* (see :meth:`AbstractReadOnlyStore.list_keys`) from file
        names: one read of the directory, no record opened (a long key's hashed record
        once per store object), the matching keys sorted in memory (see ``_fs_listing``).

        Because no record is read, a damaged record is listed under its name, where
        :meth:`query` and :meth:`query_keys` (which read records) leave it out."""
        check_listing(prefix, delimiter)
        return fold_keys(self._sorted_keys(prefix), prefix, delimiter)

    def _sorted_keys(self, prefix: str) -> list[str]:
        """The keys under *prefix* this context sees, sorted (see :meth:`list_keys`)."""
        self._require_connection()
        keys = self._lister.keys(prefix, self._layout.journal_reader.pending())
        staging = self._staging_var.get()
        for key, record in staging.changes.items() if staging is not None else ():
            if record is None:
                keys.discard(key)
            elif key.startswith(prefix):
                keys.add(key)
        return sorted(keys)

    def list_info(
        self, prefix: str = "", *, metadata: bool = False
    ) -> Iterator[tuple[str, KeyInfo]]:
        """``(key, info)`` under *prefix* (see :meth:`AbstractReadOnlyStore.list_info`):
        the names :meth:`list_keys` reads, then each record's header (a damaged record
        raises CorruptFileError, as :meth:`get` does); no data file is opened."""
        check_list_info(prefix, metadata)
        return self._described(self._sorted_keys(prefix), metadata)

    def _described(self, keys: Iterable[str], metadata: bool) -> Iterator[tuple[str, KeyInfo]]:
        for key in keys:
            record = self._load(key, encode_key(key), with_data=False)
            if record is None:  # deleted since it was listed
                continue
            chosen = decode_metadata(record.metadata_json) if metadata else None
            info = KeyInfo(record.size, record.created, record.modified, record.version, chosen)
            yield key, info

    # -- writing ---------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str:
        """Replace *key*'s data and metadata (see :meth:`AbstractStore.set`)."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        source, metadata, owned = unpack_value(value)
        with translated("writing", key):
            try:
                metadata_json = encode_metadata(metadata)
                payload = self._ingest(key, source, buffer_size, metadata_json)
            finally:
                if owned:
                    source.close()  # type: ignore[attr-defined]
            return self._write(
                key, payload, lambda old: metadata_json, if_version, if_exists, replaces=True
            )

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata (``{}`` for a new key)."""
        check_write(key, if_version, if_exists, buffer_size)
        self._require_connection()
        with translated("writing", key):
            payload = self._ingest(key, data, buffer_size)
            self._write(key, payload, _kept_metadata, if_version, if_exists)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data (empty for a new key)."""
        check_write(key, if_version, if_exists)
        self._require_connection()
        metadata_json = encode_metadata(metadata)
        with translated("writing", key):
            self._write(key, None, lambda old: metadata_json, if_version, if_exists)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        encode_metadata(metadata)  # reject bad input before taking the lock

        def merge(old: Record | None) -> str:
            if old is None:
                raise missing(key)
            merged = decode_metadata(old.metadata_json)
            merged.update(metadata)
            return encode_metadata(merged)

        with translated("writing", key):
            self._write(key, None, merge, if_version, None, StoreUpdateEvent)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; :class:`KeyNotFoundError` if missing."""
        check_write(key, if_version)
        self._require_connection()
        name = encode_key(key)
        with translated("deleting", key), self._locked().held():
            old = self._load_replaced(key, name, with_data=False)
            if old is None:
                raise missing(key)
            check_precondition(key, old.version, if_version, None)
            self._store(key, name, old, None)
        self._emit_change(StoreDeleteEvent, key, old.metadata_json)

    def _write(
        self,
        key: str,
        payload: _Payload | None,
        metadata_for: Callable[[Record | None], str],
        if_version: str | None,
        if_exists: bool | None,
        event: type[StoreModificationEvent] = StoreSetEvent,
        *,
        replaces: bool = False,
    ) -> str:
        """Under the lock: check the precondition and store the new record; its version.

        ``payload=None`` keeps the current data; *metadata_for* gives the new metadata
        JSON from the current record. A write that *replaces* data and metadata also
        replaces a damaged record (others raise :class:`CorruptFileError`). A data file
        written for *payload* is removed if the write does not happen. Emits *event* for
        the key.
        """
        name = encode_key(key)
        load = self._load_replaced if replaces else self._load
        try:
            with self._locked().held():
                old = load(key, name, with_data=payload is None)
                current = None if is_damaged(old) else old
                metadata_json = metadata_for(current)
                check_precondition(key, None if old is None else old.version, if_version, if_exists)
                new = self._new_record(key, current, payload, metadata_json)
                self._store(key, name, old, new)
        except BaseException:
            if payload is not None and payload.data_file is not None:
                self._layout.discard_data(payload.data_file)
            raise
        self._emit_change(event, key, new.metadata_json)
        return new.version

    @staticmethod
    def _new_record(
        key: str, old: Record | None, payload: _Payload | None, metadata_json: str
    ) -> Record:
        now = time.time()
        if payload is None:
            payload = (
                _Payload(b"", None, 0)
                if old is None
                else _Payload(old.inline, old.data_file, old.size)
            )
        return Record(
            key=key,
            version=new_version(),
            created=now if old is None else old.created,
            modified=now,
            size=payload.size,
            data_file=payload.data_file,
            metadata_json=metadata_json,
            inline=payload.inline,
        )

    def _store(self, key: str, name: str, old: Record | None, new: Record | None) -> None:
        """Make *new* (``None``: deletion) the committed or staged record of *key*."""
        staging = self._staging_var.get()
        if staging is not None:
            staging.record(key, new)
            return
        self._layout.put(name, old, new, durable=self.durable)

    def _ingest(
        self, key: str, source: object, buffer_size: int, metadata_json: str | None = None
    ) -> _Payload:
        """Read *source*: into memory up to ``inline_limit``, else into a new data file.
        Streams report progress, with *metadata_json* (what is being written) if known."""
        if isinstance(source, bytes):
            if len(source) <= self.inline_limit:
                return _Payload(source, None, len(source))
            return self._write_data_file(key, source)
        chunks = from_source(iter_source(source, buffer_size))
        head: list[bytes] = []
        total = 0
        size, metadata = source_size(source), self._progress_metadata(metadata_json)
        with self._progress(f"Setting key {key!r}", key, size, metadata) as progress:
            for chunk in chunks:
                head.append(chunk)
                total += len(chunk)
                progress.step(step=total)
                if total > self.inline_limit:
                    if copyable(source):  # the file's rest is copied inside the kernel
                        tail = FileTail(b"".join(head), source, lambda n: progress.step(step=n))
                        return self._write_data_file(key, tail)
                    rest = _stepped(chunks, progress.step, total)
                    return self._write_data_file(key, itertools.chain(head, rest))
        return _Payload(b"".join(head), None, total)

    def _write_data_file(self, key: str, chunks: bytes | Iterator[bytes] | FileTail) -> _Payload:
        data_file = self._layout.write_data(key, chunks, durable=self.durable)
        staging = self._staging_var.get()
        if staging is not None:
            staging.created_data.append(data_file)
        return _Payload(None, data_file, os.stat(self._layout.data_path(data_file)).st_size)

    # -- transactions ----------------------------------------------------------------------
    def _staging(self) -> Staging:
        staging = self._staging_var.get()
        if staging is None:
            raise TransactionError("no transaction is active in this thread or task")
        return staging

    def _begin_transaction(self) -> None:
        with translated("beginning a transaction"):
            self._locked().acquire()
        self._staging_var.set(Staging())

    def _commit_transaction(self) -> None:
        # A failure here leaves the staging and the lock to _rollback_transaction.
        with translated("committing a transaction"):
            unused = commit_staging(
                self.path, self._staging(), self._store_committed, durable=self.durable
            )
            for data_file in unused:
                self._layout.unlink_data(data_file)
        self._staging_var.set(None)
        self._locked().release()

    def _rollback_transaction(self) -> None:
        staging = self._staging()
        self._staging_var.set(None)
        try:
            with translated("rolling back a transaction"):
                if not staging.journaled:
                    for data_file in staging.created_data:
                        self._layout.discard_data(data_file)
                    remove_staged_files(self.path)
        finally:
            self._locked().release()

    def _savepoint(self) -> object:
        return self._staging().savepoint()

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, int)  # made by _savepoint
        self._staging().rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None

    def _store_committed(self, key: str, old: Record | None, new: Record | None) -> None:
        token = self._staging_var.set(None)
        try:
            self._store(key, encode_key(key), old, new)
        finally:
            self._staging_var.reset(token)


def _missing_data(key: str, data_file: str) -> CorruptFileError:
    return CorruptFileError(
        f"the data file {data_file!r} of key {key!r} is missing; set or delete the key "
        "to replace it"
    )


def _kept_metadata(old: Record | None) -> str:
    return "{}" if old is None else old.metadata_json


def _stepped(chunks: Iterator[bytes], step: Callable[..., object], done: int) -> Iterator[bytes]:
    """Pass *chunks* through, reporting the running byte count after each one."""
    for chunk in chunks:
        done += len(chunk)
        step(step=done)
        yield chunk
