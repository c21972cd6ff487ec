"""Per-key permissions of :class:`~storekeeper.composite.SimpleAuthStore`.

A key's permissions are a *record*: a dict of permission name -> sorted list of tags,
kept in the key's metadata under the reserved name :data:`PERMISSIONS`. The store writes
the record there as URL query text (``owned=alice&get=bob&get=carol``, names and tags
percent-encoded, as :func:`urllib.parse.urlencode` writes and
:func:`urllib.parse.parse_qs` reads it): a str with nothing the metadata's JSON must
escape, which costs less to store and read than a nested dict. A dict there, the form
earlier versions wrote, is read too. The record is read only from the top level of the
metadata as the shared metadata decoder returns it, never from the metadata's text: a
record anywhere else (nested, inside another string, under a name that merely looks
like the reserved one) is ordinary data and grants nothing. Writes through the store
refuse metadata that holds the reserved name, so only the store itself (and code
writing around it, to the wrapped store) puts a record there.

A key without the entry behaves as owned by :data:`EVERYONE`. A damaged entry (text
that is not query text, or anything but text or a dict) grants nothing to anyone, and
neither does an entry of a record that is not a list of tags.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import IO, Any
from urllib.parse import parse_qs, urlencode

from storekeeper.errors import InvalidMetadataError
from storekeeper.store.backend import Metadata
from storekeeper.store.value import Value

__all__ = [
    "ALL_PERMISSIONS",
    "DENIED",
    "EVERYONE",
    "PERMISSIONS",
    "RESERVED_TAGS",
    "MaskedValue",
    "PermissionMap",
    "Record",
    "as_permission_map",
    "entry_of",
    "granted",
    "grants_in",
    "normalize_permissions",
    "normalize_tags",
    "owned_by",
    "record_in",
    "record_of",
    "without_record",
]

#: Metadata name under which a key's permissions are kept (never shown to callers).
PERMISSIONS = "\x00storekeeper:permissions"
#: The tag every authenticated user has.
EVERYONE = "*"
#: Tags the permission model gives a meaning of its own: no user or group may be named so.
RESERVED_TAGS = frozenset({EVERYONE})
#: Everything :meth:`SimpleAuthStore.check_permissions` can grant.
ALL_PERMISSIONS = frozenset({"connect", "exists", "get", "set", "delete"})
#: Permission name -> tags granted it (a name, since ``set`` is also a method name here).
PermissionMap = dict[str, set[str]]
#: A permission record: permission name -> sorted tags. Never mutated once made: values,
#: caches and writes share one.
Record = dict[str, list[str]]
#: The record of a damaged entry: it grants nothing to anyone.
DENIED: Record = {}

_KEY_ACTIONS = ("exists", "get", "set", "delete")
#: What a record's entry may be to grant anything: a decoded one is a list; the metadata
#: of a change event may still hold the tuple its writer passed.
_TAG_LISTS = (list, tuple)
#: What an owner may do with a key (frozen, so one object serves every check).
_EVERYTHING = frozenset({*_KEY_ACTIONS, "owned"})
_NOTHING: frozenset[str] = frozenset()
#: How many distinct entry texts :func:`record_of` keeps parsed (most keys share a few).
_PARSED_ENTRIES = 1024
_ABSENT = object()


def granted(record: Record | None, tags: frozenset[str]) -> frozenset[str]:
    """What a user with *tags* may do with a key whose permissions are *record* (as
    :func:`record_in` returns it).

    A subset of ``{'owned', 'exists', 'get', 'set', 'delete'}``: everything for an owner
    (or when *record* is None: everyone owns the key); otherwise the actions whose tags
    meet *tags*, plus ``'exists'`` if any does.
    """
    if record is None:
        return _EVERYTHING
    owners = record.get("owned")  # the common case first
    if owners is not None and not tags.isdisjoint(owners):
        return _EVERYTHING
    allowed = {action for action in _KEY_ACTIONS if not tags.isdisjoint(record.get(action, ()))}
    if not allowed:
        return _NOTHING
    allowed.add("exists")
    return frozenset(allowed)


def grants_in(
    metadata: Mapping[str, Any], tags: frozenset[str]
) -> tuple[Record | None, frozenset[str]]:
    """``(record_in(metadata), granted(that record, tags))`` in one step: for the entry
    the store writes (text), both come from a cache keyed by the entry and the tags."""
    entry = metadata.get(PERMISSIONS, _ABSENT)
    if type(entry) is str:
        return _grants(entry, tags)
    record = None if entry is _ABSENT else record_of(entry)
    return record, granted(record, tags)


@functools.lru_cache(maxsize=_PARSED_ENTRIES)
def _grants(entry: str, tags: frozenset[str]) -> tuple[Record, frozenset[str]]:
    record = _parse(entry)
    return record, granted(record, tags)


def record_in(metadata: Mapping[str, Any]) -> Record | None:
    """The permission record in a key's decoded *metadata*: None without the entry,
    else :func:`record_of` the entry."""
    entry = metadata.get(PERMISSIONS, _ABSENT)
    if type(entry) is str:  # the form the store writes, before the call below
        return _parse(entry)
    return None if entry is _ABSENT else record_of(entry)


def record_of(entry: object) -> Record:
    """The record an entry under :data:`PERMISSIONS` holds: its query text (the form
    the store writes) or a dict (the form earlier versions wrote, of which only the
    permissions whose tags are a list of str count: others grant nothing).
    :data:`DENIED` for anything else: text that is not query text (a field without
    ``=``, a percent-escape that is not UTF-8), or an entry of another type."""
    if type(entry) is str:
        return _parse(entry)
    if isinstance(entry, dict):
        return _clean(entry)
    return DENIED


@functools.lru_cache(maxsize=_PARSED_ENTRIES)
def _parse(text: str) -> Record:
    try:  # (UnicodeDecodeError, of a bad percent-escape, is a ValueError)
        return parse_qs(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except ValueError:
        return DENIED


def _clean(raw: Mapping[Any, Any]) -> Record:
    """The permissions of *raw* whose tags are a list (or tuple) of str."""
    record = {}
    for name, tags in raw.items():
        if type(tags) in _TAG_LISTS and all(type(tag) is str for tag in tags):
            record[name] = list(tags)
    return record


def entry_of(record: Record) -> str:
    """The entry the store writes under :data:`PERMISSIONS` for *record*: its query
    text. A permission without tags is left out (it grants nothing either way).
    InvalidMetadataError for a name or tag with a lone surrogate (no UTF-8 form)."""
    try:
        return urlencode(record, doseq=True)
    except UnicodeEncodeError as exc:
        raise InvalidMetadataError(f"permissions must be UTF-8 text: {exc}") from None


@functools.lru_cache(maxsize=_PARSED_ENTRIES)
def owned_by(username: str) -> str:
    """The entry of a key owned by *username* alone (what a user's new key gets)."""
    return entry_of({"owned": [username]})


def without_record(metadata: Metadata) -> Metadata:
    """*metadata* without the permissions entry (the same dict when it has none)."""
    if PERMISSIONS not in metadata:
        return metadata
    return {name: item for name, item in metadata.items() if name != PERMISSIONS}


def as_permission_map(record: Record | None) -> PermissionMap:
    """*record* as callers see it: permission -> set of tags (no record: everyone owns)."""
    if record is None:
        return {"owned": {EVERYONE}}
    return {name: set(tags) for name, tags in record.items()}


def normalize_permissions(
    permissions: Mapping[str, Iterable[str]], *, require_owner: bool = True
) -> Record:
    """A record from caller-given *permissions*; InvalidMetadataError unless it maps str
    names to iterables of non-empty str tags (and, with *require_owner*, names at least
    one tag under ``'owned'``)."""
    if not isinstance(permissions, Mapping):
        raise InvalidMetadataError("permissions are a dict of permission -> set of tags")
    record = {}
    for name, tags in permissions.items():
        if not isinstance(name, str):
            raise InvalidMetadataError(f"permission names are str, not {name!r}")
        record[name] = list(normalize_tags(tags))
    if require_owner and not record.get("owned"):
        raise InvalidMetadataError("permissions need an 'owned' entry with at least one tag")
    return record


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """*tags* sorted without duplicates; InvalidMetadataError for a single str or for
    anything but non-empty str tags."""
    if isinstance(tags, str):
        raise InvalidMetadataError(f"tags are an iterable of str, not a single str: {tags!r}")
    result = tuple(sorted(set(tags)))
    if not all(isinstance(tag, str) and tag for tag in result):
        raise InvalidMetadataError(f"tags are non-empty str: {result!r}")
    return result


class MaskedValue(Value):
    """A wrapped store's *inner* value as a user sees it: its metadata without the
    permissions entry, and its permissions only for an *owner*.

    *metadata* is *inner*'s metadata as already decoded for the permission check: the
    first access to :attr:`metadata` returns it (no one else holds it), later ones
    decode a fresh copy. *record* is the permission record found in it.
    """

    def __init__(
        self, inner: Value, metadata: Metadata, record: Record | None, owner: bool
    ) -> None:
        self._inner = inner
        self._spare = [metadata]  # list.pop hands it out once, even across threads
        self._record = record
        self._owner = owner
        self.size = inner.size
        self.created = inner.created
        self.modified = inner.modified
        self.version = inner.version

    @property
    def data(self) -> IO[bytes]:
        """A new stream over the data."""
        return self._inner.data

    def range(self, start: int | None = None, end: int | None = None) -> IO[bytes]:
        """A stream over ``[start, end)`` of the data."""
        return self._inner.range(start, end)

    @property
    def metadata(self) -> Metadata:
        """A fresh copy of the metadata, without the permissions entry."""
        try:
            metadata = self._spare.pop()
        except IndexError:
            metadata = self._inner.metadata
        metadata.pop(PERMISSIONS, None)
        return metadata

    @property
    def permissions(self) -> dict[str, set[str]]:
        """The key's permissions, for its owners; AuthorizationError for anyone else."""
        if not self._owner:
            return super().permissions
        return as_permission_map(self._record)
