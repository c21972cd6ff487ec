"""Per-key permissions of :class:`~storekeeper.composite.SimpleAuthStore`.

A key's permissions are a *record*: a dict of permission name -> sorted list of tags,
kept in the key's metadata under the reserved name :data:`PERMISSIONS`. The record is
read only from the top level of the metadata as the shared metadata decoder returns it,
never from the metadata's text: a record anywhere else (nested, inside a string, under
a name that merely looks like the reserved one) is ordinary data and grants nothing.
Writes through the store refuse metadata that holds the reserved name, so only the
store itself (and code writing around it, to the wrapped store) puts a record there.

A key without a record behaves as owned by :data:`EVERYONE`; an entry of a record that
is not a list of tags grants nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

from storekeeper.errors import InvalidMetadataError
from storekeeper.store.backend import Metadata
from storekeeper.store.value import Value

__all__ = [
    "ALL_PERMISSIONS",
    "EVERYONE",
    "PERMISSIONS",
    "MaskedValue",
    "PermissionMap",
    "Record",
    "as_permission_map",
    "granted",
    "normalize_permissions",
    "normalize_tags",
    "record_in",
    "without_record",
]

#: Metadata name under which a key's permissions are kept (never shown to callers).
PERMISSIONS = "\x00storekeeper:permissions"
#: The tag every authenticated user has.
EVERYONE = "*"
#: Everything :meth:`SimpleAuthStore.check_permissions` can grant.
ALL_PERMISSIONS = frozenset({"connect", "exists", "get", "set", "delete"})
#: Permission name -> tags granted it (a name, since ``set`` is also a method name here).
PermissionMap = dict[str, set[str]]
#: A stored permission record: permission name -> sorted tags. Never mutated once made:
#: values, caches and writes may share one.
Record = dict[str, list[str]]

_KEY_ACTIONS = ("exists", "get", "set", "delete")
#: What a record's entry may be to grant anything: a decoded one is a list; the metadata
#: of a change event may still hold the tuple its writer passed.
_TAG_LISTS = (list, tuple)
#: What an owner may do with a key (frozen, so one object serves every check).
_EVERYTHING = frozenset({*_KEY_ACTIONS, "owned"})


def granted(record: Mapping[str, Any] | None, tags: frozenset[str]) -> frozenset[str]:
    """What a user with *tags* may do with a key whose permissions are *record*.

    A subset of ``{'owned', 'exists', 'get', 'set', 'delete'}``: everything for an owner
    (or when *record* is None: everyone owns the key); otherwise the actions whose tags
    meet *tags*, plus ``'exists'`` if any does. An entry that is not a list of tags
    grants nothing.
    """
    if record is None:
        return _EVERYTHING
    owners: Any = record.get("owned")  # the common case first, without a call
    if type(owners) in _TAG_LISTS and not tags.isdisjoint(owners):
        return _EVERYTHING
    allowed = {action for action in _KEY_ACTIONS if _meets(record.get(action), tags)}
    if allowed:
        allowed.add("exists")
    return frozenset(allowed)


def _meets(entry: object, tags: frozenset[str]) -> bool:
    # A str entry would otherwise be read as a set of one-letter tags.
    return type(entry) in _TAG_LISTS and not tags.isdisjoint(entry)  # type: ignore[arg-type]


def record_in(metadata: Mapping[str, Any]) -> Record | None:
    """The permission record at the top level of decoded *metadata* (None: none, or an
    entry that is not a dict, which :func:`granted` then treats as no record)."""
    record = metadata.get(PERMISSIONS)
    return record if isinstance(record, dict) else None


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
