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
are skipped. Everything here runs under the store's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field

from storekeeper.backends._fs_names import is_record_name
from storekeeper.backends._fs_records import load_record
from storekeeper.errors import CorruptFileError
from storekeeper.files import atomic_write, fsync_directory

__all__ = [
    "JOURNAL_NAME",
    "STAGE_PREFIX",
    "Journal",
    "collect_garbage",
    "commit_journal",
    "is_orphan",
    "recover",
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
