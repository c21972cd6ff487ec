"""The backend kit: what every store implementation uses, in one public module.

A backend (or composite) subclasses :class:`~storekeeper.store.AbstractStore` and builds
its methods from the helpers here, so every store checks input, reports errors and
versions values the same way. Nothing here is specific to one backend; nothing a backend
needs is private elsewhere.

- **Keys**: :func:`check_key`, :func:`check_keys`, :func:`check_pattern`.
- **Writes**: :func:`check_write` (key plus preconditions, before anything is read),
  :func:`check_conditions`, :func:`check_precondition` (the decision, given the key's
  current version), :func:`exists_conflict`, :func:`unpack_value`.
- **Reads**: :func:`missing` (the error of a missing key), :func:`check_select`,
  :func:`select_metadata`, :func:`pick_metadata`, :func:`check_buffer_size`;
  :class:`KeyInfo`, the entry of a detailed listing (``list_info``).
- **Metadata**: :func:`encode_metadata` (validates and serialises to compact JSON text),
  :func:`decode_metadata`, :func:`copy_metadata`, :func:`check_json_value`,
  :func:`encodable` (no lone surrogates). ``Metadata`` is the type of a metadata dict
  (``dict[str, Any]``); :data:`MAX_METADATA_DEPTH` bounds its nesting.
- **Versions**: :func:`new_version` (text tokens), :func:`version_numbers` (integers).
- **Batches**: :func:`pair_up`, :func:`split_pairs` (keys and values paired like ``zip``,
  every key checked before anything is written).
- **Streams**: :func:`iter_source` (any accepted data source as chunks),
  :func:`read_stream`, :func:`source_size`, :func:`buffer_iterator`,
  :class:`LimitedStream` (the first bytes of another stream), :data:`DEFAULT_BUFFER_SIZE`.
- **Queries**: :func:`query_terms`, :func:`pass_terms`, :func:`compile_terms`,
  :func:`matches` (for stores that evaluate queries in Python).
- **Transactions per owner**: :class:`OwnedVar`, :class:`OwnerLock`, :class:`Claim`,
  :func:`current_owner` (see :mod:`storekeeper.store.owners`).
- **Capabilities**: :class:`StoreCapabilities`, what the store declares as its
  ``capabilities`` property; :func:`path_identity`, for a ``storage_identity()``
  built on a file or directory.

Most names are defined in the topical modules (:mod:`storekeeper.store.query`,
:mod:`storekeeper.store.owners`, :mod:`storekeeper.store.utils`, the package's private
validation module) and re-exported here; this module defines the write, batch and
version helpers. Import them from here: this is the stable address.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from collections.abc import Iterable, Sized
from operator import itemgetter
from typing import Any

from storekeeper.errors import ConflictError, InvalidValueError, KeyNotFoundError
from storekeeper.store._validate import (
    DEFAULT_BUFFER_SIZE,
    MAX_METADATA_DEPTH,
    Metadata,
    check_batch_keys,
    check_buffer_size,
    check_conditions,
    check_json_value,
    check_key,
    check_keys,
    check_pattern,
    check_read,
    check_select,
    check_types,
    check_write,
    copy_metadata,
    decode_metadata,
    encodable,
    encode_metadata,
    iter_source,
    pick_metadata,
    select_metadata,
)
from storekeeper.store.capabilities import StoreCapabilities
from storekeeper.store.owners import Claim, OwnedVar, OwnerLock, current_owner
from storekeeper.store.query import compile_terms, matches, pass_terms, query_terms
from storekeeper.store.utils import buffer_iterator, read_stream, source_size
from storekeeper.store.value import KeyInfo, LimitedStream, Value

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "MAX_METADATA_DEPTH",
    "SHOWN_KEY_LENGTH",
    "Claim",
    "KeyInfo",
    "LimitedStream",
    "Metadata",
    "OwnedVar",
    "OwnerLock",
    "StoreCapabilities",
    "buffer_iterator",
    "check_batch_keys",
    "check_buffer_size",
    "check_conditions",
    "check_json_value",
    "check_key",
    "check_keys",
    "check_pattern",
    "check_precondition",
    "check_read",
    "check_select",
    "check_types",
    "check_write",
    "compile_terms",
    "copy_metadata",
    "current_owner",
    "decode_metadata",
    "encodable",
    "encode_metadata",
    "exists_conflict",
    "iter_source",
    "matches",
    "missing",
    "new_version",
    "pair_up",
    "pass_terms",
    "path_identity",
    "pick_metadata",
    "query_terms",
    "read_stream",
    "select_metadata",
    "shown_key",
    "source_size",
    "split_pairs",
    "unpack_value",
    "version_numbers",
]


# -- versions ------------------------------------------------------------------------------
def new_version() -> str:
    """Return a fresh opaque version token, unique across processes and hosts.

    A random 64-bit prefix chosen per process (and again after ``fork``) plus a counter:
    as unique as random tokens, at a fraction of the cost of drawing random bytes.
    """
    return f"{_version_prefix}{next(_version_counter):x}"


def version_numbers(count: int) -> range:
    """Reserve *count* fresh version numbers: distinct 64-bit integers, for backends that
    store versions as integers (cheaper to store and compare than text tokens).

    Numbers run upwards from a random 62-bit start chosen per process (and again after
    ``fork``): two processes collide only if their ranges overlap, which for a 62-bit
    start takes about 10**18 / (numbers drawn) processes. ``str()`` of a number is the
    version token callers see.
    """
    global _next_number
    with _number_lock:
        start = _next_number
        _next_number = start + count
    return range(start, start + count)


def _reset_version_source() -> None:
    global _version_prefix, _version_counter, _next_number, _number_lock
    _version_prefix = secrets.token_hex(8) + "-"
    _version_counter = itertools.count(1)
    _next_number = secrets.randbits(62)
    _number_lock = threading.Lock()


_version_prefix = ""
_version_counter = itertools.count(1)
_next_number = 0
_number_lock = threading.Lock()
_reset_version_source()
os.register_at_fork(after_in_child=_reset_version_source)


# -- storage identity --------------------------------------------------------------------------
def path_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """The ``(st_dev, st_ino)`` of the file or directory *path* names (links followed):
    equal for every spelling of one path (relative, absolute, through a link), different
    for two files; ``None`` when *path* cannot be examined (missing, no permission).
    For a store's ``storage_identity()``."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


# -- error messages --------------------------------------------------------------------------
SHOWN_KEY_LENGTH = 200


def shown_key(key: str) -> str:
    """*key* as error messages show it: its ``repr``, cut after
    :data:`SHOWN_KEY_LENGTH` characters (with the key's length) so that a huge key does
    not make a huge message."""
    if len(key) <= SHOWN_KEY_LENGTH:
        return repr(key)
    return f"{key[:SHOWN_KEY_LENGTH]!r}... ({len(key):,} characters)"


# -- writes ----------------------------------------------------------------------------------
def exists_conflict(key: str) -> ConflictError:
    """The error of a create-only write (``if_exists=False``) of an existing *key*."""
    return ConflictError(f"key {shown_key(key)} already exists (if_exists=False)")


def check_precondition(
    key: str, current: str | None, if_version: object, if_exists: object
) -> None:
    """Raise :class:`~storekeeper.errors.ConflictError` unless a conditional write of
    *key* may proceed.

    *current* is the key's version, or ``None`` when the key does not exist.
    ``if_exists=True`` requires the key to exist, ``False`` requires it not to;
    ``if_version`` requires the key to exist with exactly that version. Preconditions
    of the wrong type raise :class:`~storekeeper.errors.InvalidArgumentError` (backends
    refuse them earlier, through :func:`check_write`). The caller makes the check and
    the write one atomic step (under its lock or inside its engine's transaction).
    """
    if if_exists is None:
        pass
    elif if_exists is True:
        if current is None:
            raise ConflictError(f"key {shown_key(key)} does not exist (if_exists=True)")
    elif if_exists is False:
        if current is not None:
            raise exists_conflict(key)
    else:
        check_conditions(if_version, if_exists)
    if if_version is not None and current != if_version:
        check_conditions(if_version, if_exists)
        found = "it does not exist" if current is None else f"its version is {current!r}"
        raise ConflictError(f"key {shown_key(key)} is not at version {if_version!r}: {found}")


def unpack_value(value: object) -> tuple[object, object, bool]:
    """Split what ``set`` accepts into ``(data source, metadata, owned)``.

    *value* is a :class:`~storekeeper.store.Value` or a ``(data, metadata)`` pair;
    *metadata* may be ``None`` (meaning ``{}``). *owned* is true when the data stream was
    opened here (from a ``Value``) and must be closed by the caller of this function;
    streams the user passed in are left open. Anything else raises
    :class:`~storekeeper.errors.InvalidValueError`. Neither part is validated here.
    """
    if type(value) is tuple and len(value) == 2:  # the common case, before an ABC check
        data, metadata = value
        return data, {} if metadata is None else metadata, False
    if isinstance(value, Value):
        return value.data, value.metadata, True
    if isinstance(value, tuple | list) and len(value) == 2:
        data, metadata = value
        return data, {} if metadata is None else metadata, False
    raise InvalidValueError(
        f"a store value is a Value or a (data, metadata) pair, not {type(value).__name__}"
    )


# -- reads -----------------------------------------------------------------------------------
def missing(key: str) -> KeyNotFoundError:
    """The error every backend raises for a missing *key* (a ``KeyError`` subclass)."""
    return KeyNotFoundError(f"key {shown_key(key)} does not exist")


# -- batches ---------------------------------------------------------------------------------
def split_pairs(keys: Iterable[str], values: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """*keys* and *values* paired like ``zip`` (the longer one's excess is ignored), as a
    list of keys and a list of values, every key validated (:func:`check_keys`).

    Materialised once because generators can be consumed a single time, and so that
    every key is checked before anything is written. *keys* that are a ``str`` (or not
    iterable) raise :class:`~storekeeper.errors.InvalidArgumentError`.
    """
    check_batch_keys(keys)
    if isinstance(keys, Sized) and isinstance(values, Sized):
        # Copying two lists makes no pair tuples: a large batch would otherwise
        # allocate one per key, and the garbage collector would walk them all.
        key_list, value_list = list(keys), list(values)
        count = min(len(key_list), len(value_list))
        del key_list[count:], value_list[count:]
    else:
        # zip stops at the shorter one, so an endless iterator of values still works.
        pairs = list(zip(keys, values, strict=False))
        key_list = list(map(itemgetter(0), pairs))
        value_list = list(map(itemgetter(1), pairs))
    check_keys(key_list)
    return key_list, value_list


def pair_up(keys: Iterable[str], values: Iterable[Any]) -> list[tuple[str, Any]]:
    """Like :func:`split_pairs`, but as a list of ``(key, value)`` pairs."""
    return list(zip(*split_pairs(keys, values), strict=True))
