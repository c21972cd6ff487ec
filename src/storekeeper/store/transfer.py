"""Copy keys between two stores, or between a store and a local folder: ``cp`` and ``sync``.

::

    from storekeeper.store.transfer import Folder, transfer

    transfer(open_store("sqlite:///app.db"), open_store("file:///backup?create=true"))
    transfer(Folder("photos"), store, prefix="")            # a folder of plain files in
    transfer(store, Folder("out"), delete=True)              # mirror a store out

Each key is copied with its metadata (a folder keeps data only, see :class:`Folder`),
its data streamed in chunks, never held whole in memory. Only keys that differ are
copied, so a second run copies nothing and a run that was interrupted (killed, crashed,
^C) picks up where it stopped: a key is written in one atomic step, so the target holds
each key's old value or its new one, never a part of it.
A key the source changes while it is being copied is copied again (that copy would
otherwise be younger than the change by its time, and no quick check would find it).
What "differ" means is the *compare* mode:

- ``"quick"`` (default): the target key is missing, or its size or metadata differ, or
  its modified time says it is not the source key's latest copy. A file written into a
  folder gets the source key's modified time, so there the times must be equal (as
  rsync compares them). A store sets its own keys' modified times when it writes them,
  so there the copy must be younger than the source key; a source time still in the
  future (a file stamped ahead of the clock, a source whose clock runs ahead) says
  nothing about that order, and such a key is compared by checksum instead, as is a
  key whose times are unknown. A target key changed after its copy with size and
  metadata kept (a file edited in a mirror folder, its mtime newer) is not found:
  use ``"checksum"``. Versions are not compared: they are tokens of one store and
  mean nothing to another.
- ``"checksum"``: missing, size or metadata differ, or the data's SHA-256 differs
  (every key present on both sides is read in full on both sides).
- ``"always"``: every key is copied.

With ``delete=True`` (``sync``), target keys under the prefix that the source lacks are
deleted after the copies, but for those in the way of a copy into a folder (a file
``a`` where ``a/b`` goes, or the files under ``a/`` where ``a`` goes): they are deleted
first, so a key that became a folder, or the reverse, is mirrored in one run.
``dry_run=True`` reports the same actions, in the same order, without writing.

The source and the target must be different storage: the same store object, two
objects on one SQLite table or one directory (as their
:meth:`~storekeeper.store.AbstractReadOnlyStore.storage_identity` tells),
overlapping folders, and a folder that overlaps a store's own files (as its
:meth:`~storekeeper.store.AbstractReadOnlyStore.storage_paths` tells: a folder
inside a file-system store's directory, or one holding a SQLite database file or the
files beside it) are refused before anything is read or written.

Writes into a store whose transactions are atomic are grouped (up to *batch_keys* keys
or *batch_bytes* bytes per transaction), which saves a durable commit per key; the
actions of a group are reported once it has committed. Progress (bytes copied of the
bytes to copy) is emitted as progress events on *event_manager* when one is given (for
:class:`~storekeeper.events.display.ProgressDisplay`). The total announced is the sum
of the sizes the listing gave (unknown, ``-1``, when one is missing), and each key
counts once, up to its listed size: a key copied again because it changed counts only
the bytes past those its earlier copies counted, one that grew while copied counts no
further than its size, and one that shrank moves progress to its size's end once done.
So the steps rise, never pass the total and end on it, while the report's ``bytes``
counts every byte written, copies again included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from storekeeper.errors import BackendError, InvalidArgumentError
from storekeeper.events import BaseEventManager, ProgressManager
from storekeeper.files import CountedFile
from storekeeper.store.abstract import AbstractReadOnlyStore
from storekeeper.store.backend import path_identity
from storekeeper.store.transfer_sides import Entry, Folder, Side, folder_side, store_side

__all__ = [
    "COMPARE_MODES",
    "Folder",
    "TransferAction",
    "TransferReport",
    "check_apart",
    "iter_transfer",
    "transfer",
]

COMPARE_MODES = ("quick", "checksum", "always")
#: Chunk size of the data streams: large enough that per-chunk costs vanish.
BUFFER_SIZE = 1 << 20
#: How many times a key the source changes while it is copied is copied again.
RECOPIES = 3

Location = AbstractReadOnlyStore | Folder


@dataclass(frozen=True, slots=True)
class TransferAction:
    """One thing a transfer did (or, in a dry run, would do) to the target.

    ``action`` is ``"copy"`` or ``"delete"``; ``reason`` says why: ``"new"`` (missing
    in the target), ``"size"``, ``"metadata"``, ``"newer"`` (the modified times say the
    source changed after the target's copy), ``"checksum"``, ``"always"``,
    ``"changed"`` (copied again: the source changed while it was copied), or
    ``"extra"`` for a delete (not in the source). ``size`` is the bytes copied
    (``None`` for a delete or when unknown); ``done`` is false in a dry run.
    """

    action: str
    key: str
    reason: str
    size: int | None
    done: bool


@dataclass(slots=True)
class TransferReport:
    """What :func:`transfer` did: keys ``copied`` (and their ``bytes``), ``skipped``
    (already the same) and ``deleted``; the counts are of planned actions in a dry run.
    ``unsettled`` lists the keys the source kept changing while they were copied (see
    :data:`RECOPIES`): their copies may be older than the source, so compare them with
    ``compare="checksum"`` once the source is quiet."""

    copied: int = 0
    bytes: int = 0
    skipped: int = 0
    deleted: int = 0
    dry_run: bool = False
    actions: list[TransferAction] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    copies: list[tuple[str, str, int | None]]  # key, reason, size
    clearing: list[str]  # deletes that must run before the copies
    deletes: list[str]  # deletes that run after them
    skipped: int


def transfer(
    source: Location,
    target: Location,
    prefix: str = "",
    *,
    delete: bool = False,
    dry_run: bool = False,
    compare: str = "quick",
    event_manager: BaseEventManager | None = None,
    batch_keys: int = 256,
    batch_bytes: int = 64 << 20,
) -> TransferReport:
    """Copy the keys under *prefix* that differ from *source* to *target* (see the
    module documentation for *compare*, *delete*, *dry_run* and the batching), and
    return a :class:`TransferReport` listing every action.

    *source* and *target* are connected stores or :class:`Folder` objects (the target
    folder is created if missing). Raises :class:`~storekeeper.errors.InvalidArgumentError`
    for an unknown *compare* mode, a transfer of a store onto itself (the same object,
    or two objects on the same storage as their ``storage_identity()`` tells: one
    SQLite table or one directory opened twice, however its path was spelled),
    between overlapping folders, or between a folder and a store whose own files it
    holds or lies inside (see the module documentation), :class:`FileNotFoundError`
    for a missing source folder, :class:`~storekeeper.errors.InvalidKeyError` when a
    key cannot be a file in a target folder, :class:`~storekeeper.errors.BackendError`
    (before anything is written) when a store lists its keys out of key order, and
    whatever the stores raise; keys copied before an error stay copied (run it again
    to finish).
    """
    report = TransferReport(dry_run=dry_run)
    actions = iter_transfer(
        source,
        target,
        prefix,
        delete=delete,
        dry_run=dry_run,
        compare=compare,
        event_manager=event_manager,
        batch_keys=batch_keys,
        batch_bytes=batch_bytes,
        report=report,
    )
    report.actions.extend(actions)
    return report


def iter_transfer(
    source: Location,
    target: Location,
    prefix: str = "",
    *,
    delete: bool = False,
    dry_run: bool = False,
    compare: str = "quick",
    event_manager: BaseEventManager | None = None,
    batch_keys: int = 256,
    batch_bytes: int = 64 << 20,
    report: TransferReport | None = None,
) -> Iterator[TransferAction]:
    """As :func:`transfer`, yielding each :class:`TransferAction` once it is done
    (once its group has committed) instead of collecting them; skipped keys yield
    nothing. *report*, when given, is kept up to date as the actions happen.
    The arguments are checked at the call; the work starts at the first ``next()``.
    Abandoning the iterator stops the transfer after the current group."""
    if compare not in COMPARE_MODES:
        raise InvalidArgumentError(f"compare is one of {COMPARE_MODES}, not {compare!r}")
    if batch_keys < 1 or batch_bytes < 1:
        raise InvalidArgumentError("batch_keys and batch_bytes must be positive")
    src, dst = _side(source, is_target=False), _side(target, is_target=True)
    check_apart(source, target)
    report = report if report is not None else TransferReport(dry_run=dry_run)
    return _run(
        src, dst, prefix, delete, dry_run, compare, event_manager, batch_keys, batch_bytes, report
    )


def _run(
    src: Side,
    dst: Side,
    prefix: str,
    delete: bool,
    dry_run: bool,
    compare: str,
    event_manager: BaseEventManager | None,
    batch_keys: int,
    batch_bytes: int,
    report: TransferReport,
) -> Iterator[TransferAction]:
    plan = _plan(src, dst, prefix, compare, delete)
    report.skipped = plan.skipped
    if dry_run:
        for key in plan.clearing:
            report.deleted += 1
            yield TransferAction("delete", key, "extra", None, done=False)
        for key, reason, size in plan.copies:
            report.copied += 1
            report.bytes += size or 0
            yield TransferAction("copy", key, reason, size, done=False)
        for key in plan.deletes:
            report.deleted += 1
            yield TransferAction("delete", key, "extra", None, done=False)
        return
    sizes = [size for _, _, size in plan.copies]
    total = -1 if None in sizes else sum(size or 0 for size in sizes)
    count = len(plan.copies)
    message = f"Copying {count} key{'' if count == 1 else 's'}"
    progress = None
    if event_manager is not None:
        progress = ProgressManager(event_manager, None, message=message, steps=total, unit="bytes")
    # Deletes that free a path a copy needs (a file "a" where "a/b" goes, or the files
    # under "a/" where "a" goes) run first; the others run after the copies, so that an
    # interrupted run has removed nothing it did not have to.
    yield from _deleting(dst, plan.clearing, report)
    with progress if progress is not None else contextlib.nullcontext():
        counter = _Counter(progress)
        for group in _groups(plan.copies, batch_keys, batch_bytes):
            done, unsettled = _copy_group(src, dst, group, counter)
            report.unsettled.extend(unsettled)
            for action in done:
                report.copied += 1
                report.bytes += action.size or 0
                yield action
    yield from _deleting(dst, plan.deletes, report)


def _deleting(dst: Side, keys: list[str], report: TransferReport) -> Iterator[TransferAction]:
    for key in keys:
        dst.delete(key)
        report.deleted += 1
        yield TransferAction("delete", key, "extra", None, done=True)


def check_apart(source: Location, target: Location) -> None:
    """Raise :class:`~storekeeper.errors.InvalidArgumentError` for a transfer
    :func:`transfer` refuses: of a store onto itself (the same object, or the same
    storage by ``storage_identity``: one database or directory opened twice), of a
    folder into itself or into one of its own subfolders (or the other way round):
    each run would copy what the last one wrote, and between a folder and a store
    whose files (``storage_paths``) are that folder, inside it or around it: writing
    plain files there overwrites the store's own. The stores need not be connected:
    check a target from :func:`~storekeeper.store.registry.create_store` before
    connecting it creates its files."""
    if source is target:
        raise InvalidArgumentError("the source and the target are the same store")
    if isinstance(source, Folder) or isinstance(target, Folder):
        overlap = _overlap(_paths(source), _paths(target))
        if overlap is not None:
            raise InvalidArgumentError(
                f"the source ({_named(source)}) and the target ({_named(target)}) overlap: "
                f"{overlap[0]!r} and {overlap[1]!r} are one inside the other"
            )
    identity = _identity(source)
    if identity is not None and identity == _identity(target):
        raise InvalidArgumentError(
            f"the source ({type(source).__name__}) and the target ({type(target).__name__}) "
            "are the same storage opened twice"
        )


def _paths(location: Location) -> tuple[str, ...]:
    """The local paths *location* keeps its data in: a folder's own, a store's
    ``storage_paths()``."""
    if isinstance(location, Folder):
        return (os.path.realpath(location.path),)
    return location.storage_paths()


def _overlap(first: Iterable[str], second: Iterable[str]) -> tuple[str, str] | None:
    """A pair of paths, one of each, that are equal or one inside the other, or None."""
    for a in first:
        for b in second:
            inner, outer = sorted((a.rstrip(os.sep), b.rstrip(os.sep)))
            if outer == inner or outer.startswith(inner + os.sep):
                return a, b
    return None


def _named(location: Location) -> str:
    if isinstance(location, Folder):
        return f"folder {os.fspath(location.path)!r}"
    return type(location).__name__


def _identity(location: Location) -> Hashable | None:
    """What *location* holds its keys in (see ``storage_identity``); a folder counts as
    its directory, so a :class:`Folder` over a file-system store's directory matches it."""
    if isinstance(location, Folder):
        found = path_identity(location.path)
        return None if found is None else ("directory", *found)
    return location.storage_identity()


def _side(location: Location, *, is_target: bool) -> Side:
    if isinstance(location, Folder):
        return folder_side(location, missing_ok=is_target)
    if isinstance(location, AbstractReadOnlyStore):
        return store_side(location)
    raise InvalidArgumentError(
        f"a transfer goes between stores and Folder objects, not {type(location).__name__}"
    )


def _plan(src: Side, dst: Side, prefix: str, compare: str, delete: bool) -> _Plan:
    """Decide, key by key, what to copy and delete: one listing of each side, walked
    together in key order (no data is read but for checksums)."""
    source = list(_in_order(src.entries(prefix, metadata=dst.keeps_metadata), "source"))
    dst.check_keys([key for key, _ in source])
    target = _in_order(dst.entries(prefix, metadata=src.keeps_metadata), "target")
    copies: list[tuple[str, str, int | None]] = []
    deletes: list[str] = []
    skipped = 0
    for key, mine, theirs in _side_by_side(iter(source), target):
        if mine is None:
            if delete:
                deletes.append(key)
            continue
        reason = _reason(src, dst, key, mine, theirs, compare)
        if reason is None:
            skipped += 1
        else:
            copies.append((key, reason, mine.size))
    clearing = _in_the_way(deletes, [key for key, _, _ in copies])
    later = [key for key in deletes if key not in clearing] if clearing else deletes
    return _Plan(copies, sorted(clearing), later, skipped)


def _in_the_way(deletes: list[str], copies: list[str]) -> set[str]:
    """The keys of *deletes* that share a path with a key of *copies* in a folder: one
    is a folder ("a/") of the other ("a/b"). A file cannot also be a directory, so the
    copy can only be written once the delete has removed the file or directory."""
    if not deletes or not copies:
        return set()
    copied, doomed = set(copies), set(deletes)
    folders_copied = {folder for key in copies for folder in _folders(key)}
    return {
        key
        for key in doomed
        if key in folders_copied or any(folder in copied for folder in _folders(key))
    }


def _folders(key: str) -> Iterator[str]:
    """The folders *key* is in as a file path: ``a``, ``a/b`` for ``a/b/c``."""
    parts = key.split("/")
    for depth in range(1, len(parts)):
        yield "/".join(parts[:depth])


def _in_order(listing: Iterator[tuple[str, Entry]], which: str) -> Iterator[tuple[str, Entry]]:
    """*listing*, checked to be in strictly increasing key order: the merge that follows
    would otherwise take a key both sides hold for one side's alone (and delete it)."""
    previous: str | None = None
    for item in listing:
        if previous is not None and item[0] <= previous:
            raise BackendError(
                f"the {which}'s listing is not in key order: {item[0]!r} came after {previous!r}"
            )
        previous = item[0]
        yield item


def _side_by_side(
    left: Iterator[tuple[str, Entry]], right: Iterator[tuple[str, Entry]]
) -> Iterator[tuple[str, Entry | None, Entry | None]]:
    """Merge two listings in key order: each key once, with its entry on each side
    (``None`` on the side that lacks it)."""
    mine, theirs = next(left, None), next(right, None)
    while mine is not None and theirs is not None:
        if mine[0] < theirs[0]:
            yield mine[0], mine[1], None
            mine = next(left, None)
        elif theirs[0] < mine[0]:
            yield theirs[0], None, theirs[1]
            theirs = next(right, None)
        else:
            yield mine[0], mine[1], theirs[1]
            mine, theirs = next(left, None), next(right, None)
    if mine is not None:
        yield mine[0], mine[1], None
        yield from ((key, entry, None) for key, entry in left)
    if theirs is not None:
        yield theirs[0], None, theirs[1]
        yield from ((key, None, entry) for key, entry in right)


def _reason(
    src: Side, dst: Side, key: str, mine: Entry, theirs: Entry | None, compare: str
) -> str | None:
    """Why *key* must be copied, or ``None`` when the target already has it."""
    if theirs is None:
        return "new"
    if compare == "always":
        return "always"
    if mine.size is not None and theirs.size is not None and mine.size != theirs.size:
        return "size"
    if src.keeps_metadata and dst.keeps_metadata and mine.metadata != theirs.metadata:
        return "metadata"
    known = None not in (mine.size, theirs.size, mine.modified, theirs.modified)
    fresh = dst.is_fresh(theirs, mine) if compare == "quick" and known else None
    if fresh is not None:
        return None if fresh else "newer"
    return None if _digest(src, key) == _digest(dst, key) else "checksum"


def _digest(side: Side, key: str) -> bytes | None:
    opened = side.read(key)
    if opened is None:
        return None
    stream, _ = opened
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(BUFFER_SIZE):
            digest.update(chunk)
    return digest.digest()


def _groups(
    copies: list[tuple[str, str, int | None]], batch_keys: int, batch_bytes: int
) -> Iterator[list[tuple[str, str, int | None]]]:
    group: list[tuple[str, str, int | None]] = []
    size = 0
    for item in copies:
        group.append(item)
        size += item[2] or 0
        if len(group) >= batch_keys or size >= batch_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def _copy_group(
    src: Side, dst: Side, group: list[tuple[str, str, int | None]], counter: _Counter
) -> tuple[list[TransferAction], list[str]]:
    """Copy *group* in one batch; then copy again (up to :data:`RECOPIES` times) each key
    the source changed while it was being copied. Returns the actions, one per key, and
    the keys still changing after that (their copies may be stale)."""
    done: dict[str, TransferAction] = {}
    shares = {key: size for key, _, size in group}
    pending = [(key, reason) for key, reason, _ in group]
    for _ in range(RECOPIES + 1):
        with dst.batch():
            written = [
                _copy_one(src, dst, key, reason, counter.start(key, shares[key]))
                for key, reason in pending
            ]
        pending = []
        for key, reason, entry, size in filter(None, written):
            done[key] = TransferAction("copy", key, reason, size, done=True)
            # A change between our read and our write leaves the target older than the
            # source but younger by its modified time: no later quick check would see it.
            now = src.entry(key, metadata=False)
            if now is not None and not entry.same_as(now):
                pending.append((key, "changed"))
        if not pending:
            break
    for key, share in shares.items():
        counter.finish(key, share)
    return list(done.values()), [key for key, _ in pending]


def _copy_one(
    src: Side, dst: Side, key: str, reason: str, copied: _Copied
) -> tuple[str, str, Entry, int] | None:
    """Copy *key*, counting into *copied*; what was copied (``None`` if the source no
    longer has it)."""
    opened = src.read(key)
    if opened is None:
        return None
    stream, entry = opened
    with stream:
        if entry.size is not None and entry.size <= BUFFER_SIZE:
            # One buffer's worth goes as bytes: the stores' fast path for small values
            # (no chunking, no per-key progress of their own).
            dst.write(key, copied.whole(stream), entry)
        else:
            dst.write(key, copied.stream(stream), entry)
    return key, reason, entry, copied.size


class _Counter:
    """The overall progress of a transfer: each key counts once, up to its *share* (its
    listed size; no limit when unknown), however often it is copied (see the module
    documentation). Steps are emitted only when the position moves on."""

    def __init__(self, progress: ProgressManager | None) -> None:
        self.progress = progress
        self.position = 0
        self.counted: dict[str, int] = {}  # key -> bytes of it in self.position

    def start(self, key: str, share: int | None) -> _Copied:
        """A new copy of *key*: what counts its bytes."""
        return _Copied(self, key, share)

    def advance(self, key: str, reached: int) -> None:
        """*key*'s bytes count up to *reached* now (less is ignored)."""
        before = self.counted.get(key, 0)
        if reached > before:
            self.counted[key] = reached
            self.position += reached - before
            if self.progress is not None:
                self.progress.step(step=self.position)

    def finish(self, key: str, share: int | None) -> None:
        """*key* is done: a known *share* counts whole, whatever was copied of it."""
        if share is not None:
            self.advance(key, share)


@dataclass(slots=True)
class _Copied:
    """One copy of *key*: ``size`` is the bytes it took, all counted in the report."""

    counter: _Counter
    key: str
    share: int | None
    size: int = 0

    def whole(self, stream: IO[bytes]) -> bytes:
        """All of *stream* (a small value) as bytes, counted."""
        data = stream.read()
        self._count(len(data))
        return data

    def stream(self, stream: IO[bytes]) -> CountedFile:
        """*stream* read through this counter: a target that copies a regular file inside
        the kernel (:class:`~storekeeper.files.FileTail`) still counts every block."""
        return CountedFile(stream, self._count)

    def _count(self, size: int) -> None:
        self.size += size
        reached = self.size if self.share is None else min(self.size, self.share)
        self.counter.advance(self.key, reached)
