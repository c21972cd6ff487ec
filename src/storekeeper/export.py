"""Exporting a store as static files that any web server can serve.

:func:`export_static` writes the layout :class:`~storekeeper.backends.static.StaticURLStore`
reads (and the original encore ``StaticURLStore`` too)::

    DIRECTORY/index.json        {"key": {metadata}, ...}: ASCII-only JSON, keys sorted
    DIRECTORY/data/KEY          each key's value; the "/"-separated segments of a key are
                                directories and a file name
    DIRECTORY/generation.json   {"generation": "GEN"}: the name of this export
    DIRECTORY/generations/GEN/  index.json and data/ again (hard links to the same files,
                                copies where links are impossible), under the export's name,
                                and digests.json: {"key": "SHA-256 of its data, hex"}

Every export gets a new generation name (the UTC time and random hex digits). Readers
that know the layout read ``generation.json`` and then only files under
``generations/GEN/``: a key's metadata, size and data all come from one export, and a
path of a replaced export answers "not found" instead of another export's bytes (see
:class:`~storekeeper.backends.static.StaticURLStore`); ``digests.json`` tells them which
values' data changed since the export they read before. ``index.json`` and ``data/`` at
the top serve readers that do not know generations.

An earlier export in *DIRECTORY* is replaced as a whole: the new export is built in a
sibling temporary directory and then swapped in with one atomic exchange of the two
directories (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader of any file sees the
old export or the new one, never a missing or half-written file, and a crash at any
moment leaves the old export or the new one whole. The result equals a fresh export
(but for the generation name). Leftover temporary directories of crashed exports are
removed by the next export.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import IO, NamedTuple

from storekeeper.backends.static import DIGESTS_FILE, layout_problem
from storekeeper.errors import InvalidKeyError
from storekeeper.files import fsync, fsync_directory, process_alive, write_all
from storekeeper.store.abstract import AbstractReadOnlyStore

__all__ = [
    "GENERATIONS",
    "GENERATION_FILE",
    "ExportSummary",
    "ExportWarning",
    "NotAnExportError",
    "export_static",
    "layout_problems",
]

#: The file naming an export's generation, and the folder holding each generation's files.
GENERATION_FILE = "generation.json"
GENERATIONS = "generations"
_EXPORT_ENTRIES = frozenset({"index.json", "data", GENERATION_FILE, GENERATIONS})

_RENAME_EXCHANGE = 2
_CHUNK = 1 << 20
_SHOWN = 10  # keys named in an error; the rest are counted


class ExportWarning(UserWarning):
    """Keys were left out of an export (``skip_invalid=True``); the message names them."""


class NotAnExportError(FileExistsError):
    """The target directory exists and is not an earlier export: it is left untouched."""


class ExportSummary(NamedTuple):
    """What :func:`export_static` did: how many keys it wrote, and which it skipped."""

    exported: int
    skipped: tuple[str, ...]


def layout_problems(keys: Iterable[str]) -> dict[str, str]:
    """The keys among *keys* that cannot be files of one export, each with the reason.

    A key fails alone when :func:`~storekeeper.backends.static.layout_problem` says so
    (an empty, ``.`` or ``..`` segment, a segment over 255 bytes); a key that is also
    the folder of another key (``a`` beside ``a/b``: ``data/a`` cannot be a file and a
    directory) fails with the other key named. Leaving out every key listed here leaves
    keys that can all be laid out.
    """
    unique = set(keys)
    problems: dict[str, str] = {}
    for key in sorted(unique):
        problem = layout_problem(key)
        if problem is not None:
            problems[key] = problem
            continue
        segments = key.split("/")
        for end in range(1, len(segments)):
            folder = "/".join(segments[:end])
            if folder in unique and folder not in problems:
                problems[folder] = f"it is also the folder of the key {key!r}"
    return problems


def export_static(
    store: AbstractReadOnlyStore,
    directory: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    durable: bool = True,
) -> ExportSummary:
    """Write every key of *store* to *directory* in the static layout.

    Keys that cannot be laid out as paths (see :func:`layout_problems`) raise
    :class:`~storekeeper.errors.InvalidKeyError` naming them, before anything is
    written; with ``skip_invalid=True`` they are left out and an :class:`ExportWarning`
    names them. A key deleted from *store* while the export runs is left out.

    *directory* is created, or atomically replaced when it holds an earlier export (a
    directory with ``index.json`` and nothing but ``data``, ``generation.json`` and
    ``generations`` besides, or an empty one); any other
    existing path raises :class:`NotAnExportError` and is not touched. With
    ``durable=True`` every file and directory is fsynced before the swap, so the new
    export also survives power loss once this returns.
    """
    target = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(target)
    _check_target(target)
    index = dict(store.query())
    problems = layout_problems(index)
    if problems and not skip_invalid:
        raise InvalidKeyError(_describe(problems, "cannot be laid out as files"))
    if problems:
        warnings.warn(_describe(problems, "left out of the export"), ExportWarning, stacklevel=2)
    for key in problems:
        del index[key]
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(parent, name)
    temp = os.path.join(parent, f".{name}.export-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        exported = _write_tree(store, temp, index, durable)
        _swap_in(temp, target, durable)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return ExportSummary(exported, tuple(problems))


def _describe(problems: dict[str, str], what: str) -> str:
    shown = [f"{key!r} ({reason})" for key, reason in list(problems.items())[:_SHOWN]]
    more = len(problems) - len(shown)
    tail = f" and {more} more" if more > 0 else ""
    return f"{len(problems)} keys {what}: {'; '.join(shown)}{tail}"


def _check_target(target: str) -> None:
    if not os.path.lexists(target):
        return
    if os.path.islink(target) or not os.path.isdir(target):
        raise NotAnExportError(f"{target} exists and is not a directory of an earlier export")
    entries = set(os.listdir(target))
    if entries and (entries - _EXPORT_ENTRIES or "index.json" not in entries):
        raise NotAnExportError(
            f"{target} is not an earlier export (it holds more than index.json, data/, "
            f"{GENERATION_FILE} and {GENERATIONS}/): refusing to replace it"
        )


def _remove_stale_temps(parent: str, name: str) -> None:
    """Remove temporary directories left by exports whose process is gone."""
    stem = f".{name}.export-"
    with os.scandir(parent) as entries:
        for entry in entries:
            if not entry.name.startswith(stem):
                continue
            pid_text = entry.name[len(stem) :].partition("-")[0]
            if pid_text.isdigit() and not process_alive(int(pid_text)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _write_tree(
    store: AbstractReadOnlyStore, root: str, index: dict[str, dict[str, object]], durable: bool
) -> int:
    """Write the export into the new directory *root*: the generation's files first,
    then the same files linked at the top, then ``generation.json``."""
    generation = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(6).hex()}"
    own = os.path.join(root, GENERATIONS, generation)
    os.makedirs(own)
    directories = {root, os.path.join(root, GENERATIONS), own}
    digests: dict[str, str] = {}
    directories.update(_write_generation(store, own, index, digests, durable))
    directories.update(_link_tree(own, root, durable))
    # After the links: the digests are the generation's own, not a top-level file.
    text = json.dumps(digests, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    _write_file(os.path.join(own, DIGESTS_FILE), [text.encode("ascii")], durable)
    text = json.dumps({"generation": generation}, sort_keys=True)
    _write_file(os.path.join(root, GENERATION_FILE), [text.encode("ascii")], durable)
    if durable:
        for path in sorted(directories, key=len, reverse=True):
            fsync_directory(path)
    return len(index)


def _write_generation(
    store: AbstractReadOnlyStore,
    root: str,
    index: dict[str, dict[str, object]],
    digests: dict[str, str],
    durable: bool,
) -> set[str]:
    """Write ``index.json`` and ``data/`` under *root*, and each key's data digest into
    *digests*; the directories made."""
    data_root = os.path.join(root, "data")
    os.mkdir(data_root)
    directories = {data_root}
    for key in sorted(index):
        *folders, file_name = key.split("/")
        folder = os.path.join(data_root, *folders)
        if folder not in directories:
            os.makedirs(folder, exist_ok=True)
            directories.update(_parents(folder, data_root))
        try:
            stream = store.get_data(key)
        except KeyError:
            del index[key]  # deleted since the index was read
            continue
        digest = hashlib.sha256()
        with stream:
            _write_file(os.path.join(folder, file_name), _hashed(stream, digest.update), durable)
        digests[key] = digest.hexdigest()
    text = json.dumps(index, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    _write_file(os.path.join(root, "index.json"), [text.encode("ascii")], durable)
    return directories


def _link_tree(source: str, target: str, durable: bool) -> set[str]:
    """Give every file under *source* a second name under *target* (a hard link, or a
    copy where the file system refuses links); the directories made."""
    made: set[str] = set()
    for folder, _, files in os.walk(source):
        twin = os.path.join(target, os.path.relpath(folder, source))
        if not os.path.isdir(twin):
            os.mkdir(twin)
            made.add(twin)
        for name in files:
            original, copy = os.path.join(folder, name), os.path.join(twin, name)
            try:
                os.link(original, copy)
            except OSError:
                with open(original, "rb") as stream:
                    _write_file(copy, _chunks(stream), durable)
    return made


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _hashed(stream: IO[bytes], update: Callable[[bytes], object]) -> Iterator[bytes]:
    for chunk in _chunks(stream):
        update(chunk)
        yield chunk


def _parents(folder: str, top: str) -> list[str]:
    found = []
    while folder != top:
        found.append(folder)
        folder = os.path.dirname(folder)
    return found


def _write_file(path: str, chunks: Iterable[bytes], durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        if durable:
            fsync(fd)
    finally:
        os.close(fd)


def _swap_in(temp: str, target: str, durable: bool) -> None:
    """Put *temp* at *target*; the earlier export, if any, ends up at *temp*."""
    try:
        os.rename(temp, target)  # no earlier export (or an empty directory)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _exchange(temp, target)
    if durable:
        fsync_directory(os.path.dirname(target))


def _exchange(first: str, second: str) -> None:
    """Swap two directories atomically; where the kernel or file system cannot, move
    the old one aside and the new one in (a reader may then find neither in between)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd = -100
        result = renameat2(
            at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), second)
    aside = first + ".old"
    os.rename(second, aside)
    os.rename(first, second)
    with contextlib.suppress(OSError):
        os.rename(aside, first)
