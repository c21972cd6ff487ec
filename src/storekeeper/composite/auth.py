"""``SimpleAuthStore``: password authentication and per-key permissions over any store.

Users connect with ``{'username': ..., 'password': ...}``. A user record (salted password
hash and the user's group tags) lives at ``user_key_path + username`` in the user store;
keys with that prefix are reserved: no ordinary read, write, query, glob or event ever
reaches them through the authenticating store.

Every key written through the store carries its permissions (permission -> tags) in a
reserved metadata entry that reads never return. A user's tags are their username,
:data:`EVERYONE` and the groups in their record. Tags in ``'owned'`` may do everything,
including reading and changing the permissions; tags in ``'exists'``, ``'get'``,
``'set'`` or ``'delete'`` may do that much (any of them also lets the key be seen). A new
key is owned by its creator alone. Keys written around the store, without permissions,
behave as owned by :data:`EVERYONE`: all authenticated users have full access.

The parts live in their own modules: password hashing in
:mod:`storekeeper.composite._auth_passwords`, permission records in
:mod:`~storekeeper.composite._auth_permissions`, user records, sessions and the user
tools in :mod:`~storekeeper.composite._auth_users`, and the checked, pinned write path
(with the keys the store wrote last) in :mod:`~storekeeper.composite._auth_writes`. This
module is the store, and the place to import every public name from.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, NoReturn

from storekeeper.composite._auth_passwords import (
    PasswordEncoder,
    as_encoder,
    make_encoder,
    sha1_hasher,
)
from storekeeper.composite._auth_permissions import (
    ALL_PERMISSIONS,
    EVERYONE,
    PERMISSIONS,
    MaskedValue,
    PermissionMap,
    Record,
    as_permission_map,
    entry_of,
    granted,
    grants_in,
    normalize_permissions,
    record_in,
    without_record,
)
from storekeeper.composite._auth_users import Session, UserAdministration, parse_credentials
from storekeeper.composite._auth_writes import (
    RETRIES,
    GuardedWrites,
    LazyData,
    RecentWrites,
    Write,
    WriteCheck,
    split_value,
)
from storekeeper.composite._wrapper import CompositeStore, retarget_event
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    InvalidMetadataError,
    NotConnectedError,
)
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.store.abstract import AbstractAuthorizingStore, AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    KeyInfo,
    Metadata,
    check_key,
    check_select,
    copy_metadata,
    missing,
    pass_terms,
    query_terms,
)
from storekeeper.store.events import StoreModificationEvent, StoreProgressEvent
from storekeeper.store.listing import check_list_info, check_listing, filter_listing
from storekeeper.store.value import Head, Value

__all__ = [
    "ALL_PERMISSIONS",
    "EVERYONE",
    "PERMISSIONS",
    "PasswordEncoder",
    "PermissionMap",
    "SimpleAuthStore",
    "make_encoder",
    "sha1_hasher",
]

#: How many keys a store remembers having written (see RecentWrites).
RECENT_WRITES = 4096


class _Found(NamedTuple):
    """A visible key as a check found it: its head (version and decoded metadata), the
    permission record in it, what the user may do, and the session checked."""

    head: Head
    record: Record | None
    allowed: frozenset[str]
    session: Session


class SimpleAuthStore(GuardedWrites, UserAdministration, CompositeStore, AbstractAuthorizingStore):
    """A store wrapping *store* with password authentication and per-key permissions.

    *encoder* hashes passwords (:func:`make_encoder`; a plain one-argument callable also
    works). User records live in *user_key_store* (default: *store*) under
    ``user_key_path + username``. ``connect(credentials)`` takes a dict with
    ``username`` and ``password`` (or a pair) and raises
    :class:`~storekeeper.errors.AuthenticationError` unless they match.

    Every operation checks the user's permissions: a key the user may not see raises
    :class:`~storekeeper.errors.KeyNotFoundError` (``exists`` is False, queries and globs
    skip it); a visible key the user may not read or change raises
    :class:`~storekeeper.errors.AuthorizationError`. The session is re-checked against
    the user record at most every *recheck_interval* seconds: once the user is removed
    or their password changed, operations raise ``AuthenticationError`` until the store
    is connected again.

    Events obey the same rules: a change of a key reaches this store's listeners only if
    the user may see the key (its metadata only if they may ``get`` it), and progress
    only for the user's own streamed writes. A hidden key is told apart from a missing
    one only where that cannot be avoided: :meth:`set`, :meth:`set_data` and
    :meth:`set_metadata` (which would create a missing key) and conditional writes
    (which would fail with ConflictError on a missing key) raise AuthorizationError
    for it, and :meth:`check_permissions` reports ``{'connect'}`` for it; every other
    call (reads, :meth:`update_metadata`, :meth:`delete`, the permission calls)
    raises KeyNotFoundError, as for a missing key.

    User names and group tags share one namespace: a key's permissions name a user by
    their name and a group by its tag, and a user holds both. So :meth:`add_user`
    refuses a name that is reserved (:data:`EVERYONE`, ``'*'``) or is another user's
    group tag (InvalidKeyError), and :meth:`add_user` and :meth:`change_user` refuse
    group tags that are reserved or name another user (InvalidMetadataError). These
    checks read every user record; two administrators adding at the same moment can
    still race past them. A record made before the checks existed keeps its tags
    (fix them with :meth:`change_user`), but a user named ``'*'`` can never connect
    (AuthenticationError), so no key is ever owned by such a user's name.

    :meth:`add_user`, :meth:`change_user`, :meth:`remove_user` and :meth:`users`
    administer the user records; they need no session (whoever holds this object can
    reach the wrapped store anyway), so expose only the store API to untrusted callers.
    They do need the store holding the records connected (by this store's
    :meth:`connect`, or by its owner: ``open_store`` returns a connected store) and raise
    :class:`~storekeeper.errors.NotConnectedError` otherwise, as every operation on an
    unconnected store does; they never connect it for one call.
    """

    def __init__(
        self,
        store: AbstractStore,
        encoder: Callable[..., bytes],
        user_key_path: str = ".user_",
        user_key_store: AbstractStore | None = None,
        event_manager: BaseEventManager | None = None,
        *,
        recheck_interval: float = 5.0,
    ) -> None:
        if not user_key_path or "\x00" in user_key_path:
            raise ValueError(f"user_key_path must be a non-empty str, not {user_key_path!r}")
        users = store if user_key_store is None else user_key_store
        children = [store] if users is store else [store, users]
        super().__init__(children, event_manager)
        self.encoder = as_encoder(encoder)
        self.user_key_path = user_key_path
        self.recheck_interval = recheck_interval
        self._session: Session | None = None
        self._custom_check = type(self).check_permissions is not SimpleAuthStore.check_permissions
        self._data: AbstractStore = store  # what the ``store`` property returns, without checks
        self._listened = (store,)  # built once: every child event asks for it
        # The keys this store wrote last: rewrites of them need no lookup (_write_known).
        self._recent = RecentWrites(RECENT_WRITES)
        # The key whose data this store is streaming into the wrapped store, per context.
        self._streaming: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"SimpleAuthStore-{id(self):x}-streaming", default=None
        )

    @property
    def store(self) -> AbstractStore:
        """The wrapped store that holds the data."""
        return self._data

    def storage_identity(self) -> Hashable | None:
        """The wrapped store's: a user's view holds its keys in the wrapped storage."""
        return self._data.storage_identity()

    @property
    def user_key_store(self) -> AbstractStore:
        """The store that holds the user records."""
        store = self._children[-1]
        assert isinstance(store, AbstractStore)
        return store

    # -- connection -----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Authenticate as the user in *credentials*; AuthenticationError if they fail."""
        username, password = parse_credentials(credentials)
        with self._connection_lock:
            if self._connected:
                self.disconnect()
            self._connect_children(None)
            try:
                self._session = self._authenticate(username, password)
            except BaseException:
                self.disconnect()
                raise
            self._follow_listeners()
            self._connected = True

    def disconnect(self) -> None:
        """End the session and disconnect the stores :meth:`connect` connected."""
        with self._connection_lock:
            self._session = None
            super().disconnect()

    def info(self) -> dict[str, Any]:
        """The store description plus ``user``: the connected user's name, or None."""
        info = super().info()
        del info["children"]  # the wrapped store's own description may count user records
        session = self._session
        return {**info, "user": None if session is None else session.username}

    @property
    def user_tag(self) -> str:
        """The connected user's tag: their username."""
        return self._current().username

    def _current(self) -> Session:
        """The live session (re-checked when due); NotConnectedError or
        AuthenticationError without one."""
        session = self._session
        if session is None or not self._connected:
            raise NotConnectedError(f"{type(self).__name__} is not connected: connect() first")
        if session.revoked:
            raise AuthenticationError(f"the session of {session.username!r} has ended: reconnect")
        if time.monotonic() - session.checked >= self.recheck_interval:
            self._recheck(session)
        return session

    # -- permissions ------------------------------------------------------------------------
    def check_permissions(self, key: str | None = None) -> set[str]:
        """The permissions the connected user has on *key* (globally when ``None``).

        A subset of ``{'connect', 'exists', 'get', 'set', 'delete'}``: everything
        globally, and on a key what its permissions grant the user's tags (a key that
        does not exist may be created, so it reports the global set). Subclasses may
        override this to restrict permissions further; every operation then consults it
        on top of the key's own permissions.
        """
        session = self._current()
        head = None if key is None else self._head(check_key(key))
        if head is None:
            return set(ALL_PERMISSIONS)
        return set(granted(record_in(head.metadata), session.tags) - {"owned"}) | {"connect"}

    def _allowed(self, key: str, record: Record | None, session: Session) -> frozenset[str]:
        """What *session*'s user may do with *key*, whose permissions are *record*."""
        allowed = granted(record, session.tags)
        if self._custom_check:
            allowed &= self.check_permissions(key) | {"owned"}
        return allowed

    def _permits(
        self, key: str, metadata: Metadata, session: Session
    ) -> tuple[Record | None, frozenset[str]]:
        """The permission record in *key*'s *metadata*, and what *session*'s user may
        do with *key* (:meth:`_allowed`, of that record)."""
        record, allowed = grants_in(metadata, session.tags)
        if self._custom_check:
            allowed &= self.check_permissions(key) | {"owned"}
        return record, allowed

    def _may_create(self) -> bool:
        return not self._custom_check or "set" in self.check_permissions(None)

    # -- reads ------------------------------------------------------------------------------
    def _reserved(self, key: str) -> bool:
        return key.startswith(self.user_key_path)

    def _head(self, key: str) -> Head | None:
        """The wrapped store's head of a checked *key*, or None (always None for user
        records)."""
        if key.startswith(self.user_key_path):
            return None
        return self._data.head(key)

    def _visible(self, key: str, action: str) -> _Found:
        """*key* as found for the user; KeyNotFoundError if they cannot see it,
        AuthorizationError if they may not do *action*."""
        key = check_key(key)
        session = self._current()
        head = self._head(key)
        if head is None:
            raise missing(key)
        record, allowed = self._permits(key, head.metadata, session)
        if action not in allowed:
            self._refuse(key, action, allowed, session)
        return _Found(head, record, allowed, session)

    def _refuse(self, key: str, action: str, allowed: frozenset[str], session: Session) -> NoReturn:
        """Raise for *action* on *key*, which the user may do only *allowed* with:
        KeyNotFoundError if they cannot see it, else AuthorizationError."""
        if "exists" not in allowed:
            raise missing(key)
        raise AuthorizationError(f"{session.username!r} may not {action} key {key!r}")

    def get(self, key: str) -> Value:
        """The value of *key*; needs the ``get`` permission."""
        key = check_key(key)
        session = self._current()
        if key.startswith(self.user_key_path):
            raise missing(key)
        value = self._data.get(key)
        metadata = value.metadata
        record, allowed = self._permits(key, metadata, session)
        if "get" not in allowed:
            self._refuse(key, "get", allowed, session)
        return MaskedValue(value, metadata, record, "owned" in allowed)

    def head(self, key: str) -> Head | None:
        """*key*'s version, size and metadata (without the permissions entry), or None
        if it is missing or the user cannot see it; needs the ``get`` permission
        (AuthorizationError without it)."""
        key = check_key(key)
        session = self._current()
        head = self._head(key)
        if head is None:
            return None
        allowed = self._allowed(key, record_in(head.metadata), session)
        if "get" not in allowed:
            if "exists" not in allowed:
                return None
            self._refuse(key, "get", allowed, session)
        head.metadata.pop(PERMISSIONS, None)
        return head

    def exists(self, key: str) -> bool:
        """Whether *key* exists *for this user* (False without the ``exists`` permission)."""
        key = check_key(key)
        session = self._current()
        head = self._head(key)
        if head is None:
            return False
        return "exists" in self._permits(key, head.metadata, session)[1]

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matches among the keys the user may see (see
        :meth:`AbstractReadOnlyStore.query`), without the permissions entry.

        With no terms, every key the user may see is returned, as :meth:`list_keys`
        and :meth:`query_keys` list them: a key the user may only see (an ``exists``
        grant without ``get``) comes with empty metadata. With terms, only keys the
        user may ``get`` can match: matching reads metadata, and a match would tell
        about metadata the user may not read.
        """
        self._current()
        terms = query_terms(where, kwargs)
        if PERMISSIONS in terms:
            raise InvalidMetadataError("permissions cannot be queried")
        names = check_select(select)
        if names is not None:
            names.append(PERMISSIONS)
        need = "get" if terms else "exists"
        results = []
        for key, metadata in pass_terms(self._data.query, terms, names):
            if self._reserved(key):
                continue
            record = record_in(metadata)
            metadata.pop(PERMISSIONS, None)
            # Checked per key: a long query still sees a re-check of the session when due.
            allowed = self._allowed(key, record, self._current())
            if need in allowed:
                results.append((key, metadata if "get" in allowed else {}))
        return results

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """The keys under *prefix* the user may see, and the folders holding one (see
        :meth:`AbstractReadOnlyStore.list_keys`): the wrapped store's listing, with each
        key's permissions read as it is listed (as :meth:`exists` reads them)."""
        check_listing(prefix, delimiter)
        self._current()
        return filter_listing(self._data.list_keys, self.exists, prefix, delimiter)

    def list_info(
        self, prefix: str = "", *, metadata: bool = False
    ) -> Iterator[tuple[str, KeyInfo]]:
        """``(key, info)`` for the keys :meth:`list_keys` lists (see
        :meth:`AbstractReadOnlyStore.list_info`): one detailed listing of the wrapped
        store, each key's permissions read from the metadata it carries.

        A key the user may ``get`` has its size, times and version (and its metadata,
        without the permissions entry, when asked). A key the user may only see (an
        ``exists`` grant without ``get``) is listed with every detail ``None``: its
        size, times and version tell about data the user may not read. Keys the user
        may not see at all are absent, as in :meth:`list_keys`.
        """
        check_list_info(prefix, metadata)
        self._current()
        return self._listed_info(self._data.list_info(prefix, metadata=True), metadata)

    def _listed_info(
        self, listing: Iterator[tuple[str, KeyInfo]], metadata: bool
    ) -> Iterator[tuple[str, KeyInfo]]:
        for key, info in listing:
            if self._reserved(key):
                continue
            stored = info.metadata if info.metadata is not None else {}
            # Checked per key: a long listing still sees a re-check of the session when due.
            allowed = self._allowed(key, record_in(stored), self._current())
            if "exists" not in allowed:
                continue
            if "get" not in allowed:
                yield key, KeyInfo(None, None, None, None, None)
                continue
            shown = without_record(stored) if metadata else None
            yield key, info._replace(metadata=shown)

    # -- writes --------------------------------------------------------------------------
    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str | None:
        """Replace *key*'s data and metadata; needs ``set`` (or the right to create).
        Returns the wrapped store's version of the value written."""
        data, metadata = split_value(value)
        source: object = data

        def write(check: WriteCheck) -> str | None:
            stored = self._stored(metadata, check)
            version = self._writer(0).set(key, (source, stored), buffer_size, **check.pins)
            self._recent.remember(key, version, check.entry)
            return version

        if type(data) is bytes:  # the usual data, which can be sent again: no transaction
            return self._guarded(key, "set", write, if_version, if_exists, repeatable=True)
        if isinstance(data, LazyData):
            with data.value.data as source:
                return self._write_once(key, source, write, if_version, if_exists)
        return self._write_once(key, source, write, if_version, if_exists)

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping its metadata and permissions."""

        def write(check: WriteCheck) -> None:
            if check.old is None:
                stored = self._stored({}, check)
                self._writer(0).set(key, (data, stored), buffer_size, **check.pins)
            else:
                self._writer(0).set_data(key, data, buffer_size, **check.pins)

        self._write_once(key, data, write, if_version, if_exists)

    def _write_once(
        self,
        key: str,
        data: object,
        write: Write,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str | None:
        """Run a guarded ``set`` whose data can be read only once when it is a stream.

        Bytes can be written again after a lost race; a stream cannot, so it is written
        inside a transaction of the wrapped store, where nothing changes in between.
        """
        if type(data) is bytes or isinstance(data, bytes | bytearray | memoryview):
            return self._guarded(key, "set", write, if_version, if_exists, repeatable=True)
        token = self._streaming.set(key)  # its progress events are this user's to see
        try:
            with self._writer(0).transaction(f"Setting {key!r}"):
                return self._guarded(key, "set", write, if_version, if_exists)
        finally:
            self._streaming.reset(token)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping its data and permissions."""

        def write(check: WriteCheck) -> None:
            stored = self._stored(metadata, check)
            if check.old is None:
                self._writer(0).set(key, (b"", stored), **check.pins)
            else:
                self._writer(0).set_metadata(key, stored, **check.pins)

        self._guarded(key, "set", write, if_version, if_exists, repeatable=True)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; needs ``set``."""
        update = copy_metadata(metadata)
        if PERMISSIONS in update:
            raise InvalidMetadataError("the permissions entry is set through set_permissions")

        def write(check: WriteCheck) -> None:
            version = check.pins.get("if_version")
            self._writer(0).update_metadata(key, update, if_version=version)

        self._guarded(key, "set", write, if_version, None, repeatable=True, must_exist=True)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; needs ``delete``."""

        def write(check: WriteCheck) -> None:
            self._writer(0).delete(key, if_version=check.pins.get("if_version"))

        self._guarded(key, "delete", write, if_version, None, repeatable=True, must_exist=True)

    # -- permission records -----------------------------------------------------------------
    def get_permissions(self, key: str) -> PermissionMap:
        """*key*'s permissions; KeyNotFoundError if not visible, AuthorizationError if not owned."""
        found = self._visible(key, "exists")
        if "owned" not in found.allowed:
            raise AuthorizationError(f"{found.session.username!r} does not own key {key!r}")
        return as_permission_map(found.record)

    def set_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Replace *key*'s permissions (owners only); ``'owned'`` needs at least one tag."""
        record = normalize_permissions(permissions)
        self._change_permissions(key, lambda _old: record)

    def update_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Add the tags in *permissions* to *key*'s permissions (owners only)."""
        extra = normalize_permissions(permissions, require_owner=False)

        def merge(old: Record) -> Record:
            merged = {name: set(tags) for name, tags in old.items()}
            for name, tags in extra.items():
                merged.setdefault(name, set()).update(tags)
            return {name: sorted(tags) for name, tags in merged.items()}

        self._change_permissions(key, merge)

    def _change_permissions(self, key: str, build: Callable[[Record], Record]) -> None:
        for _ in range(RETRIES):
            found = self._visible(key, "exists")
            if "owned" not in found.allowed:
                raise AuthorizationError(f"{found.session.username!r} does not own key {key!r}")
            self._recent.forget(key)
            old = {"owned": [EVERYONE]} if found.record is None else found.record
            try:
                self._writer(0).update_metadata(
                    key, {PERMISSIONS: entry_of(build(old))}, if_version=found.head.version
                )
            except ConflictError:
                continue
            return
        raise ConflictError(f"key {key!r} kept changing while its permissions were set")

    # -- events ------------------------------------------------------------------------------
    def _listened_children(self) -> tuple[AbstractStore]:
        return self._listened

    def _outer_key(self, index: int, key: str) -> str | None:
        return None if index != 0 or self._reserved(key) else key

    def _on_child_event(self, event: BaseEvent) -> None:
        # Every write through this store comes back here as the child's event: when no
        # copy of it could be seen, return before any of the translation work.
        if isinstance(event, StoreModificationEvent) and self._unobserved(type(event)):
            return
        super()._on_child_event(event)

    def _unobserved(self, cls: type[BaseEvent]) -> bool:
        """Whether an event of *cls* forwarded now would reach no listener at all.

        Only when nobody listens now (the manager promises it) and no transaction (of
        this store, or one that holds its events for later delivery) is open.
        """
        if self._held_events.get() is not None or self._in_transaction():
            return False
        return not self.event_manager.has_listeners(cls)

    def _translate_change(self, index: int, event: StoreModificationEvent) -> BaseEvent | None:
        """The child's change as this user may see it: dropped for a key they may not
        see (or whose permissions the event does not tell), without metadata where they
        may not ``get`` it, and never with the permissions entry."""
        key = self._outer_key(index, event.key)
        metadata = event.metadata
        if key is None or not isinstance(metadata, dict):
            return None
        allowed = self._allowed_now(key, record_in(metadata))
        if "exists" not in allowed:
            return None
        shown = without_record(metadata) if "get" in allowed else None
        return retarget_event(event, self, key=key, metadata=shown)

    def _allowed_now(self, key: str, record: Record | None) -> frozenset[str]:
        """What the connected user may do with *key*, given its *record*, for an event:
        nothing without a live session (events are delivered outside any operation)."""
        session = self._session
        if session is None or session.revoked:
            return frozenset()
        try:
            return self._allowed(key, record, session)
        except (AuthenticationError, NotConnectedError):
            return frozenset()

    def _relay_progress(self, index: int, event: StoreProgressEvent) -> BaseEvent | None:
        # Only the progress of this store's own streamed write: a progress event does not
        # tell who may see its key, and another user's may be a key this one may not.
        key = self._outer_key(index, event.key)
        if key is None or self._streaming.get() != key:
            return None
        metadata = event.metadata  # what this user is writing, less the permissions entry
        if isinstance(metadata, dict):
            metadata = without_record(metadata)
        return retarget_event(event, self, key=key, metadata=metadata)
