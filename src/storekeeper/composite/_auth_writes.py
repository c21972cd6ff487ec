"""Guarded writes of :class:`~storekeeper.composite.SimpleAuthStore`.

Every write through the store is checked first (may the user do it?) and then made
*pinned* to what was checked: to the version looked up, or to the key's absence, so a
permission change or another write in between makes it fail rather than slip through.
:class:`GuardedWrites` does that for the store's write methods; :class:`WriteCheck` is
what the check hands the write.

Two writes need no lookup, because the pinned write alone decides them: a create-only
write (``if_exists=False``) pinned to the key's absence, and a rewrite of a key the store
wrote last, pinned to the version it wrote (:class:`RecentWrites`). Every other write
looks the key up first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storekeeper.composite._auth_permissions import (
    PERMISSIONS,
    Record,
    owned_by,
    record_in,
    record_of,
)
from storekeeper.composite._auth_users import Session
from storekeeper.errors import (
    AuthorizationError,
    ConflictError,
    InvalidMetadataError,
    InvalidValueError,
)
from storekeeper.store.backend import (
    Metadata,
    check_precondition,
    check_write,
    copy_metadata,
    missing,
)
from storekeeper.store.value import Head, Value

__all__ = [
    "EXISTING",
    "GuardedWrites",
    "LazyData",
    "RecentWrites",
    "Write",
    "WriteCheck",
    "Written",
    "pins_for",
    "split_value",
]

#: How often a write is checked and tried again while other writes keep changing its key.
RETRIES = 20

#: :attr:`WriteCheck.old` of a key known to exist without a lookup (a remembered rewrite).
EXISTING = object()

#: The preconditions that pin a write to the key's absence (shared: never changed).
_ABSENT_PINS: dict[str, Any] = {"if_exists": False}


@dataclass(slots=True)
class WriteCheck:
    """What a guarded write was allowed on, and what it writes back: the key as looked
    up (its :class:`~storekeeper.store.value.Head`; :data:`EXISTING` when known to
    exist without a lookup; None for a new key), the permissions *entry* the write
    stores (the key's own, exactly as found, or for a new key its creator's; None: the
    key has none, and gets none), and the preconditions (*pins*) that tie the write to
    what was checked.

    Never changed once made (not frozen: every write builds one, and a frozen dataclass
    is slower to build).
    """

    old: object
    entry: object
    pins: dict[str, Any]


#: A guarded write, given what was checked; returns the new version when it knows it.
Write = Callable[[WriteCheck], "str | None"]


def pins_for(head: Head | None) -> dict[str, Any]:
    """The preconditions that pin a write to the key looked up as *head* (None: to the
    key's absence)."""
    if head is None:
        return _ABSENT_PINS
    if head.version is None:
        return {"if_exists": True}
    return {"if_version": head.version}


#: What a store remembers of a key it wrote: ``(version, entry)``, the version written and
#: the permissions entry written with it; one fact (at that version the key holds that
#: entry). A plain pair: one is built on every write.
Written = tuple[str, object]


class RecentWrites:
    """The version and permissions entry of the keys a store wrote last, bounded.

    A hint for skipping the lookup before a rewrite: a write pinned to the remembered
    version succeeds only while the key is exactly what the store wrote, so a stale
    entry (a race between two writers of one key, or a write that failed after the
    wrapped store took it) can make a write fail (and be checked afresh) but never let
    one through. Hence no lock: a lost or stale entry costs a lookup, nothing more.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[str, Written] = {}

    def recall(self, key: str) -> Written | None:
        """What is remembered of *key*, or None."""
        return self._entries.get(key)

    def remember(self, key: str, version: str | None, entry: object) -> None:
        """Keep *key*'s *version* and permissions *entry* after the store wrote them
        (nothing is kept without a version)."""
        if version is None:
            return
        entries = self._entries
        entries.pop(key, None)  # to the end: the dict's order is the order of writes
        if len(entries) >= self.capacity:
            # The older half goes at once: removing the oldest entry on every write
            # leaves a dict whose iteration must first skip all the removed ones.
            self._entries = entries = dict(list(entries.items())[self.capacity // 2 :])
        entries[key] = (version, entry)

    def forget(self, key: str) -> None:
        """Drop what is remembered of *key* (before a write that changes it otherwise)."""
        self._entries.pop(key, None)


class LazyData:
    """Marks a Value's data, which is opened only when the write happens."""

    def __init__(self, value: Value) -> None:
        self.value = value


def split_value(value: object) -> tuple[object, object]:
    """``(data, metadata)`` of what ``set`` accepts; a Value's data is a
    :class:`LazyData`. InvalidValueError for anything else. Metadata ``None`` means ``{}``
    here, in ``set``'s pair only (``set_metadata(key, None)`` is refused)."""
    if type(value) is tuple and len(value) == 2:
        # The usual pair, recognised before the slower Value check.
        return value if value[1] is not None else (value[0], {})
    if isinstance(value, Value):
        return LazyData(value), value.metadata
    if isinstance(value, tuple | list) and len(value) == 2:
        return value[0], {} if value[1] is None else value[1]
    raise InvalidValueError(
        f"a store value is a Value or a (data, metadata) pair, not {type(value).__name__}"
    )


class GuardedWrites:
    """The checked, pinned write path of an authenticating store.

    The store provides :attr:`user_key_path` (the reserved prefix), :attr:`_recent`
    (the keys it wrote last) and the checks below; its write methods hand
    :meth:`_guarded` a :data:`Write`.
    """

    user_key_path: str
    _recent: RecentWrites

    def _current(self) -> Session:
        """The live session; raises without one."""
        raise NotImplementedError

    def _head(self, key: str) -> Head | None:
        """The wrapped store's head of *key*, or None."""
        raise NotImplementedError

    def _allowed(self, key: str, record: Record | None, session: Session) -> frozenset[str]:
        """What *session*'s user may do with *key*, whose permissions are *record*."""
        raise NotImplementedError

    def _may_create(self) -> bool:
        """Whether the connected user may create keys."""
        raise NotImplementedError

    def _guarded(
        self,
        key: str,
        action: str,
        write: Write,
        if_version: str | None,
        if_exists: bool | None,
        *,
        repeatable: bool = False,
        must_exist: bool = False,
    ) -> str | None:
        """Check the user may do *action* and the preconditions, then *write*, atomically.

        The write is pinned to what was checked (see the module docstring), so a
        permission change or another write in between makes it fail; without caller
        preconditions it is then checked and tried again. *write* gets the permissions
        entry that was checked, so what it writes back is exactly what allowed the
        write. With *must_exist*, a key that is missing or that the user may not see
        raises KeyNotFoundError.

        A write whose data can be sent again (*repeatable*) skips the lookup where the
        outcome is known without it (:meth:`_write_unchecked`).
        """
        key = check_write(key, if_version, if_exists)
        if key.startswith(self.user_key_path):
            if must_exist:
                raise missing(key)
            raise AuthorizationError(f"keys starting with {self.user_key_path!r} are reserved")
        if repeatable and (if_exists is False or self._recent.recall(key) is not None):
            done, version = self._write_unchecked(key, action, write, if_version, if_exists)
            if done:
                return version
        return self._write_checked(key, action, write, if_version, if_exists, must_exist)

    def _write_unchecked(
        self,
        key: str,
        action: str,
        write: Write,
        if_version: str | None,
        if_exists: bool | None,
    ) -> tuple[bool, str | None]:
        """Try *write* without looking the key up: ``(True, new version)`` if it was done.

        Two cases need no lookup: a key this store wrote last, rewritten pinned to the
        version it wrote (:meth:`_write_known`), and a create-only write
        (``if_exists=False``) of a user who may create keys, pinned to the key's
        absence. If the key is not as expected, the pinned write changes nothing and
        ``(False, None)`` sends the caller down the checked path, which says what is
        wrong (a conflict, or no permission).
        """
        known = self._recent.recall(key)
        if known is not None and if_exists is not False and if_version in (None, known[0]):
            return self._write_known(key, action, write, known)
        if if_exists is not False or if_version is not None:
            return False, None
        session = self._current()
        if not self._may_create():
            return False, None
        try:
            return True, write(WriteCheck(None, owned_by(session.username), _ABSENT_PINS))
        except ConflictError:
            return False, None

    def _write_known(
        self, key: str, action: str, write: Write, known: Written
    ) -> tuple[bool, str | None]:
        """*write*, allowed by the permissions *key* had at the version this store last
        wrote, and pinned to that version: ``(True, new version)``. Sound without a
        lookup because the pinned write succeeds only while the key is exactly that
        value (a permission change, here or anywhere else, changes the version).
        ``(False, None)`` when the permissions do not allow it (the checked path then
        decides, on a fresh lookup) or the key has changed since.
        """
        version, entry = known
        session = self._current()
        record = None if entry is None else record_of(entry)
        if action not in self._allowed(key, record, session):
            return False, None
        self._recent.forget(key)
        try:
            return True, write(WriteCheck(EXISTING, entry, {"if_version": version}))
        except ConflictError:
            return False, None

    def _write_checked(
        self,
        key: str,
        action: str,
        write: Write,
        if_version: str | None,
        if_exists: bool | None,
        must_exist: bool,
    ) -> str | None:
        """:meth:`_guarded` on a fresh lookup of *key*, retried while it keeps changing."""
        for _ in range(RETRIES):
            session = self._current()
            head = self._head(key)
            if head is None:
                if must_exist:
                    raise missing(key)
                if not self._may_create():
                    raise AuthorizationError(f"{session.username!r} may not create keys")
                entry: object = owned_by(session.username)
            else:
                entry = head.metadata.get(PERMISSIONS)
                self._authorize(key, action, record_in(head.metadata), session, must_exist)
            if if_version is not None or if_exists is not None:
                current = None if head is None else head.version
                check_precondition(key, current, if_version, if_exists)
            self._recent.forget(key)
            try:
                return write(WriteCheck(head, entry, pins_for(head)))
            except ConflictError:
                if if_version is not None or if_exists is not None:
                    raise
                continue
        raise ConflictError(f"key {key!r} kept changing while it was being written")

    def _authorize(
        self, key: str, action: str, record: Record | None, session: Session, must_exist: bool
    ) -> None:
        """AuthorizationError unless the user may do *action* with the existing *key*
        (KeyNotFoundError instead, with *must_exist*, if they may not even see it)."""
        allowed = self._allowed(key, record, session)
        if action not in allowed:
            if must_exist and "exists" not in allowed:
                raise missing(key)
            raise AuthorizationError(f"{session.username!r} may not {action} key {key!r}")

    def _stored(self, metadata: object, check: WriteCheck) -> Metadata:
        """*metadata* with the key's permissions entry as *check* says (none: none
        written). InvalidMetadataError if *metadata* holds the permissions entry itself."""
        # A shallow copy of a dict is enough to add the permissions without touching the
        # caller's dict: the wrapped store validates and copies what it stores. (set's
        # None for {} was mapped by split_value: None here is refused.)
        stored = dict(metadata) if type(metadata) is dict else copy_metadata(metadata)
        if PERMISSIONS in stored:
            raise InvalidMetadataError("the permissions entry is set through set_permissions")
        if check.entry is not None:
            stored[PERMISSIONS] = check.entry
        return stored
