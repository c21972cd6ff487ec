"""The intent log and garbage collection of :mod:`storekeeper.backends.filesystem`.

A multi-key transaction commits in four steps, each one safe to interrupt:

1. every new record is written to a *staged* file (``keys/.stage-...``) and, when
   durable, fsynced together with the directory;
2. the journal (``.journal``: the renames, deletions and obsolete data files) is written
   atomically and durably: this is the commit point;
3. the journal is applied: staged files renamed over the records, records deleted;
4. the journal is removed (durably) and obsolete data files are unlinked.

A crash before step 2 leaves staged files nobody refers to (collected); a crash after it
leaves a complete journal that the next writer or ``connect`` applies again. Applying is
idempotent: a staged file that is already renamed and a record that is already deleted
are skipped. Writing and applying run under the store's lock.

Readers take no lock and never wait for a writer: they read the journal *before* a
record (:class:`JournalReader`) and, while a complete journal exists, take the keys it
names from its staged files (or treat them as deleted). A committed transaction is
therefore visible in full from its commit point on, whether its writer is still
renaming, frozen or dead, and invisible before it. Why reading the journal first is
enough: with no journal at that moment, every record on disk was committed, and a
record read a little later is either that state or a newer committed one; with a
journal, the keys it names are read from staged files, which exist until renamed over
their records (after which the record holds the same or a newer version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import NamedTuple

from storekeeper.backends._fs_names import is_record_name
from storekeeper.backends._fs_records import Record, load_record, record_names
from storekeeper.errors import CorruptFileError
from storekeeper.files import atomic_write, fsync_directory

__all__ = [
    "JOURNAL_NAME",
    "STAGE_PREFIX",
    "Journal",
    "JournalReader",
    "OnDamaged",
    "Pending",
    "collect_garbage",
    "commit_journal",
    "is_orphan",
    "load_visible",
    "recover",
    "visible_keys",
    "visible_names",
    "visible_records",
]

_log = logging.getLogger(__name__)

JOURNAL_NAME = ".journal"
STAGE_PREFIX = ".stage-"
_FORMAT = "storekeeper-journal-1"


@dataclass
class Journal:
    """The intent of one transaction: ``puts`` are ``(staged name, record name)`` pairs."""

    puts: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        """The journal file's content: JSON and a SHA-256 line that proves it complete."""
        text = json.dumps(
            {
                "format": _FORMAT,
                "puts": self.puts,
                "deletes": self.deletes,
                "garbage": self.garbage,
            },
            separators=(",", ":"),
        )
        return f"{text}\n{hashlib.sha256(text.encode()).hexdigest()}\n".encode()

    @classmethod
    def decode(cls, content: bytes) -> Journal:
        """Parse a journal file; :class:`CorruptFileError` unless it is complete."""
        text, _, digest = content.decode("utf-8", "replace").rstrip("\n").rpartition("\n")
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise CorruptFileError("the journal is incomplete (checksum mismatch)")
        try:
            body = json.loads(text)
            if body["format"] != _FORMAT:
                raise CorruptFileError(f"unknown journal format {body['format']!r}")
            return cls(
                [(str(staged), str(record)) for staged, record in body["puts"]],
                [str(name) for name in body["deletes"]],
                [str(name) for name in body["garbage"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"the journal cannot be parsed: {exc}") from exc


class Pending(NamedTuple):
    """What a committed journal still in place means for readers.

    ``puts`` maps a record name to the staged file holding its new record; ``deletes``
    holds the record names the transaction deleted.
    """

    puts: dict[str, str]
    deletes: frozenset[str]

    def covers(self, name: str) -> bool:
        """Whether the transaction changes the record *name*."""
        return name in self.puts or name in self.deletes

    def load(self, keys_dir: str, name: str, *, with_data: bool) -> Record | None:
        """The committed record *name* as of this journal (``None``: deleted or absent)."""
        if name in self.deletes:
            return None
        staged = self.puts.get(name)
        if staged is not None:
            record = load_record(os.path.join(keys_dir, staged), with_data=with_data)
            if record is not None:
                return record
            # Renamed over the record meanwhile: the record is this version or newer.
        return load_record(os.path.join(keys_dir, name), with_data=with_data)


class JournalReader:
    """Reads the journal of the store at *root* for readers, parsing each one once.

    :meth:`pending` costs one ``access`` call when no transaction is being applied.
    """

    __slots__ = ("_cached", "_path")

    def __init__(self, root: str) -> None:
        self._path = os.path.join(root, JOURNAL_NAME)
        self._cached: tuple[bytes, Pending] | None = None

    def pending(self) -> Pending | None:
        """The committed transaction not yet fully applied, or ``None``."""
        # Runs on every read: access() says "no journal" without building an exception.
        if not os.access(self._path, os.F_OK):
            return None
        try:
            fd = os.open(self._path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        try:
            content = _read_all(fd)
        finally:
            os.close(fd)
        cached = self._cached
        if cached is not None and cached[0] == content:
            return cached[1]
        try:
            journal = Journal.decode(content)
        except CorruptFileError:
            return None  # never complete, so never committed: recovery discards it
        pending = Pending(
            {record: staged for staged, record in journal.puts}, frozenset(journal.deletes)
        )
        self._cached = (content, pending)
        return pending


#: Called with the name of a record file found damaged, and the error, by the listings.
OnDamaged = Callable[[str, CorruptFileError], None]


def load_visible(
    keys_dir: str, name: str, pending: Pending | None, *, with_data: bool
) -> Record | None:
    """The committed record *name* as a reader must see it, given *pending*."""
    if pending is not None and pending.covers(name):
        return pending.load(keys_dir, name, with_data=with_data)
    return load_record(os.path.join(keys_dir, name), with_data=with_data)


def visible_names(keys_dir: str, pending: Pending | None) -> Iterator[str]:
    """The record names a reader must see (a new key may still be a staged file)."""
    if pending is None:
        yield from record_names(keys_dir)
        return
    for name in record_names(keys_dir):
        if not pending.covers(name):
            yield name
    yield from pending.puts


def visible_records(
    keys_dir: str, pending: Pending | None, on_damaged: OnDamaged
) -> Iterator[Record]:
    """The committed records (metadata only); damaged ones go to *on_damaged*."""
    for name in visible_names(keys_dir, pending):
        try:
            record = load_visible(keys_dir, name, pending, with_data=False)
        except CorruptFileError as exc:
            on_damaged(name, exc)
            continue
        if record is not None:  # None: deleted while we listed
            yield record


def visible_keys(keys_dir: str, pending: Pending | None, on_damaged: OnDamaged) -> Iterator[str]:
    """The keys of :func:`visible_records`.

    Every record is read, not just its file name: a damaged record must be left out
    here as the queries leave it out, so that ``query_keys()`` lists exactly the keys
    ``query()`` returns.
    """
    return (record.key for record in visible_records(keys_dir, pending, on_damaged))


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def commit_journal(root: str, journal: Journal, *, durable: bool) -> None:
    """Commit *journal* (its staged files must be written already) and apply it."""
    atomic_write(os.path.join(root, JOURNAL_NAME), journal.encode(), durable=durable)
    _apply(root, journal, durable=durable)


def recover(root: str, *, durable: bool) -> bool:
    """Finish the transaction a crashed writer committed; return whether there was one.

    A complete journal is applied (rolled forward); an incomplete one (which the atomic
    journal write makes impossible short of outside damage) is discarded.
    """
    path = os.path.join(root, JOURNAL_NAME)
    try:
        with open(path, "rb") as stream:
            content = stream.read()
    except FileNotFoundError:
        return False
    try:
        journal = Journal.decode(content)
    except CorruptFileError:
        _log.warning("discarding the incomplete journal %s", path)
        _remove_journal(root, durable=durable)
        return True
    _apply(root, journal, durable=durable)
    return True


def _apply(root: str, journal: Journal, *, durable: bool) -> None:
    keys = os.path.join(root, "keys")
    for staged, record in journal.puts:
        # A missing staged file was renamed before a crash interrupted the journal's removal.
        with suppress(FileNotFoundError):
            os.replace(os.path.join(keys, staged), os.path.join(keys, record))
    for record in journal.deletes:
        _unlink(os.path.join(keys, record))
    if durable:
        fsync_directory(keys)
    _remove_journal(root, durable=durable)
    data = os.path.join(root, "data")
    for name in journal.garbage:
        _unlink(os.path.join(data, name))


def _remove_journal(root: str, *, durable: bool) -> None:
    # Removal must be durable before the lock is released: a journal that came back
    # after a power loss would replay its deletions over newer writes.
    _unlink(os.path.join(root, JOURNAL_NAME))
    if durable:
        fsync_directory(root)


def collect_garbage(root: str, grace: float) -> int:
    """Remove files no record refers to; return how many were removed.

    In ``keys/`` everything that is not a record name is left over by an interrupted
    write (writes there happen under the lock, so nothing is in progress). In ``data/``
    a file is garbage when its record does not name it; data files are written before
    the lock is taken, so only files older than *grace* seconds are removed.
    """
    removed = 0
    keys = os.path.join(root, "keys")
    for entry in os.scandir(keys):
        if not is_record_name(entry.name):
            removed += _unlink(entry.path)
    deadline = time.time() - grace
    data = os.path.join(root, "data")
    for entry in os.scandir(data):
        if is_orphan(keys, entry.name) and _older_than(entry.path, deadline):
            removed += _unlink(entry.path)
    return removed


def is_orphan(keys: str, data_name: str) -> bool:
    """Whether the data file *data_name* is named by no record in the directory *keys*."""
    record_name, dot, _ = data_name.partition(".")
    if not dot or not is_record_name(record_name):
        return True
    try:
        record = load_record(os.path.join(keys, record_name), with_data=False)
    except CorruptFileError:
        return False  # never discard data a damaged record may still point to
    return record is None or record.data_file != data_name


def _older_than(path: str, deadline: float) -> bool:
    try:
        return os.stat(path).st_mtime < deadline
    except FileNotFoundError:
        return False


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1
