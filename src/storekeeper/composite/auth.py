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
behave as owned by :data:`EVERYONE`, which is the seed's "all authenticated users have full
access".
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from storekeeper.composite._wrapper import CompositeStore, retarget_event
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidValueError,
    NotConnectedError,
)
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.store._validate import (
    _SCAN,
    DEFAULT_BUFFER_SIZE,
    Metadata,
    check_key,
    check_select,
    check_write,
    copy_metadata,
    decode_metadata,
)
from storekeeper.store.abstract import (
    AbstractAuthorizingStore,
    AbstractStore,
    check_precondition,
    missing,
)
from storekeeper.store.events import StoreModificationEvent, StoreProgressEvent
from storekeeper.store.listing import check_listing, filter_listing
from storekeeper.store.query import pass_terms, query_terms
from storekeeper.store.utils import read_stream
from storekeeper.store.value import BytesValue, StreamValue, Value

__all__ = [
    "EVERYONE",
    "PERMISSIONS",
    "PasswordEncoder",
    "SimpleAuthStore",
    "make_encoder",
    "sha1_hasher",
]

#: Metadata name under which a key's permissions are kept (never shown to callers).
PERMISSIONS = "\x00storekeeper:permissions"
#: The tag every authenticated user has.
EVERYONE = "*"
#: Everything :meth:`SimpleAuthStore.check_permissions` can grant.
ALL_PERMISSIONS = frozenset({"connect", "exists", "get", "set", "delete"})
_KEY_ACTIONS = ("exists", "get", "set", "delete")
#: Permission name -> tags granted it (a name, since ``set`` is also a method name here).
PermissionMap = dict[str, set[str]]
_RETRIES = 20
# Keys whose last version written through a store, and its permission record, it keeps.
_KNOWN_KEYS = 4096
# The score of recent writes of unknown keys that created them (see _learn), its ceiling,
# and from where a plain set tries a creation before any lookup.
_FRESH_MAX = 4
_FRESH_LIKELY = 2
_SALT_BYTES = 16
#: What an owner may do with a key (frozen, so one object serves every check).
_EVERYTHING = frozenset({*_KEY_ACTIONS, "owned"})
#: The backends' own value types: exactly these keep the metadata text that their
#: ``metadata`` property parses with ``decode_metadata`` (a subclass might not).
_PLAIN_VALUES = (BytesValue, StreamValue)


def sha1_hasher(s: bytes) -> bytes:
    """SHA-1 digest of *s*: the legacy fast hash, for reading user records made with it.

    Never used unless passed explicitly to :func:`make_encoder`: SHA-1 is fast, which
    makes stolen password hashes cheap to brute-force.
    """
    return hashlib.sha1(s).digest()  # noqa: S324 - explicit legacy opt-in, see docstring


class PasswordEncoder:
    """Turns ``(password, per-user salt)`` into a password hash.

    The default is :func:`hashlib.scrypt` (cost *n*, block size *r*, parallelism *p*)
    keyed with the secret *salt* given to :func:`make_encoder` plus the per-user salt. With
    a *hasher*, the hash is ``hasher(secret + user_salt + password)``; with an empty
    per-user salt that is exactly the original's encoder.
    """

    def __init__(
        self,
        secret: bytes,
        hasher: Callable[[bytes], bytes] | None = None,
        *,
        n: int = 2**14,
        r: int = 8,
        p: int = 1,
    ) -> None:
        if not isinstance(secret, bytes):
            raise TypeError(f"the encoder's salt is bytes, not {type(secret).__name__}")
        self._secret = secret
        self._hasher = hasher
        self._cost = (n, r, p)

    @property
    def scheme(self) -> str:
        """``'scrypt'`` or the name of the explicit hasher."""
        if self._hasher is None:
            return "scrypt"
        return getattr(self._hasher, "__name__", "custom")

    def __call__(self, password: bytes, salt: bytes = b"") -> bytes:
        """The hash of *password* with the per-user *salt*."""
        if self._hasher is not None:
            return self._hasher(self._secret + salt + password)
        n, r, p = self._cost
        # scrypt needs about 128 * r * n bytes; leave OpenSSL headroom above that.
        maxmem = 256 * r * n + (1 << 20)
        return hashlib.scrypt(
            password, salt=self._secret + salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32
        )

    def __repr__(self) -> str:
        return f"<PasswordEncoder {self.scheme}>"  # never shows the secret


def make_encoder(
    salt: bytes, hasher: Callable[[bytes], bytes] | None = None, *, n: int = 2**14
) -> PasswordEncoder:
    """A password encoder keyed with the secret *salt* (keep it out of the store).

    Without *hasher* it uses scrypt with cost *n* (a power of two; lower it only in
    tests). Pass :func:`sha1_hasher` explicitly to check records made by the original.
    """
    return PasswordEncoder(salt, hasher, n=n)


@dataclass
class _Session:
    username: str
    tags: frozenset[str]
    proof: bytes
    checked: float
    revoked: bool = False


class SimpleAuthStore(CompositeStore, AbstractAuthorizingStore):
    """A store wrapping *store* with password authentication and per-key permissions.

    *encoder* hashes passwords (:func:`make_encoder`; a plain one-argument callable, as
    in the seed, also works). User records live in *user_key_store* (default: *store*)
    under ``user_key_path + username``. ``connect(credentials)`` takes a dict with
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
    one only where that cannot be avoided: writing it fails (AuthorizationError) and
    :meth:`check_permissions` reports ``{'connect'}`` for it.

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
        self.encoder = encoder if isinstance(encoder, PasswordEncoder) else _Legacy(encoder)
        self.user_key_path = user_key_path
        self.recheck_interval = recheck_interval
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        self._custom_check = type(self).check_permissions is not SimpleAuthStore.check_permissions
        self._data: AbstractStore = store  # what the ``store`` property returns, without checks
        self._listened = (store,)  # built once: every child event asks for it
        # key -> (version, permission record) of the last value this store set (see
        # _write_known); a bounded hint, never trusted without a write pinned to it.
        self._known: dict[str, tuple[str, dict[str, list[str]] | None]] = {}
        self._known_lock = threading.Lock()
        self._fresh = 0  # see _learn
        # The key whose data this store is streaming into the wrapped store, per context.
        self._streaming: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"SimpleAuthStore-{id(self):x}-streaming", default=None
        )

    @property
    def store(self) -> AbstractStore:
        """The wrapped store that holds the data."""
        store = self._children[0]
        assert isinstance(store, AbstractStore)
        return store

    @property
    def user_key_store(self) -> AbstractStore:
        """The store that holds the user records."""
        store = self._children[-1]
        assert isinstance(store, AbstractStore)
        return store

    # -- connection -----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Authenticate as the user in *credentials*; AuthenticationError if they fail."""
        username, password = _parse_credentials(credentials)
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

    def _authenticate(self, username: str, password: bytes) -> _Session:
        record = self._read_user(username)
        if record is None:
            # Hash anyway, so that a missing user takes as long as a wrong password.
            self.encoder(password, secrets.token_bytes(_SALT_BYTES))
            raise AuthenticationError("unknown user or wrong password")
        proof = self.encoder(password, record.salt)
        if not hmac.compare_digest(proof, record.digest):
            raise AuthenticationError("unknown user or wrong password")
        tags = frozenset({username, EVERYONE, *record.tags})
        return _Session(username, tags, record.digest, time.monotonic())

    def _current(self) -> _Session:
        session = self._session
        if session is None or not self._connected:
            raise NotConnectedError(f"{type(self).__name__} is not connected: connect() first")
        if session.revoked:
            raise AuthenticationError(f"the session of {session.username!r} has ended: reconnect")
        if time.monotonic() - session.checked >= self.recheck_interval:
            self._recheck(session)
        return session

    def _recheck(self, session: _Session) -> None:
        record = self._read_user(session.username)
        if record is None or not hmac.compare_digest(record.digest, session.proof):
            session.revoked = True
            raise AuthenticationError(f"the session of {session.username!r} has ended: reconnect")
        session.tags = frozenset({session.username, EVERYONE, *record.tags})
        session.checked = time.monotonic()

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
        value = None if key is None else self._peek(key)
        if value is None:
            return set(ALL_PERMISSIONS)
        return set(_granted(_record(value), session.tags) - {"owned"}) | {"connect"}

    def _allowed(
        self, key: str, record: Mapping[str, Any] | None, session: _Session
    ) -> frozenset[str]:
        """What *session*'s user may do with *key*, whose permissions are *record*."""
        granted = _granted(record, session.tags)
        if self._custom_check:
            granted &= self.check_permissions(key) | {"owned"}
        return granted

    def _may_create(self) -> bool:
        return not self._custom_check or "set" in self.check_permissions(None)

    # -- reads ------------------------------------------------------------------------------
    def _reserved(self, key: str) -> bool:
        return key.startswith(self.user_key_path)

    def _peek(self, key: str) -> Value | None:
        """The wrapped store's value of *key*, or None (always None for user records)."""
        key = check_key(key)
        self._current()
        return self._lookup(key)

    def _lookup(self, key: str) -> Value | None:
        """:meth:`_peek` for a checked *key* once the session has been checked."""
        if key.startswith(self.user_key_path):
            return None
        try:
            return self._data.get(key)
        except KeyError:
            return None

    def _visible(
        self, key: str, action: str
    ) -> tuple[Value, dict[str, list[str]] | None, frozenset[str], _Session]:
        """*key*'s value, permission record and what the user may do with it, and the
        session; KeyNotFoundError if the user cannot see it, AuthorizationError if they
        may not do *action*."""
        key = check_key(key)
        session = self._current()
        value = self._lookup(key)
        if value is None:
            raise missing(key)
        record = _record(value)
        allowed = self._allowed(key, record, session)
        if "exists" not in allowed:
            raise missing(key)
        if action not in allowed:
            raise AuthorizationError(f"{session.username!r} may not {action} key {key!r}")
        return value, record, allowed, session

    def get(self, key: str) -> Value:
        """The value of *key*; needs the ``get`` permission."""
        value, _, allowed, _ = self._visible(key, "get")
        return _MaskedValue(value, "owned" in allowed)

    def exists(self, key: str) -> bool:
        """Whether *key* exists *for this user* (False without the ``exists`` permission)."""
        key = check_key(key)
        session = self._current()
        value = self._lookup(key)
        return value is not None and "exists" in self._allowed(key, _record(value), session)

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matches among the keys the user may see; metadata only where they may ``get``."""
        self._current()
        terms = query_terms(where, kwargs)
        if PERMISSIONS in terms:
            raise InvalidMetadataError("permissions cannot be queried")
        names = check_select(select)
        if names is not None:
            names.append(PERMISSIONS)
        # Listing keys needs only ``exists``; matching metadata terms reads the metadata.
        need = "exists" if names == [PERMISSIONS] and not terms else "get"
        results = []
        for key, metadata in pass_terms(self._data.query, terms, names):
            if self._reserved(key):
                continue
            record = metadata.pop(PERMISSIONS, None)
            # Checked per key: a long query still sees a re-check of the session when due.
            session = self._current()
            allowed = self._allowed(key, record if isinstance(record, dict) else None, session)
            if need in allowed:
                results.append((key, metadata))
        return results

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """The keys under *prefix* the user may see, and the folders holding one (see
        :meth:`AbstractReadOnlyStore.list_keys`): the wrapped store's listing, with each
        key's permissions read as it is listed (as :meth:`exists` reads them)."""
        check_listing(prefix, delimiter)
        self._current()
        return filter_listing(self._data.list_keys, self.exists, prefix, delimiter)

    # -- writes ------------------------------------------------------------------------------
    def _guarded(
        self,
        key: str,
        action: str,
        write: _Write,
        if_version: str | None,
        if_exists: bool | None,
        *,
        repeatable: bool = False,
        must_exist: bool = False,
    ) -> str | None:
        """Check the user may do *action* and the preconditions, then *write*, atomically.

        The write is pinned to the version that was checked, so a permission change or
        another write in between makes it fail; without caller preconditions it is then
        checked and tried again. *write* gets the permission record that was checked, so
        what it writes back is exactly what allowed the write. With *must_exist*, a key
        that is missing or that the user may not see raises KeyNotFoundError.

        A write whose data can be sent again (*repeatable*) is first tried without a
        lookup when that is likely to succeed (:meth:`_write_unchecked`).
        """
        key = check_write(key, if_version, if_exists)
        if key.startswith(self.user_key_path):
            if must_exist:
                raise missing(key)
            raise AuthorizationError(f"keys starting with {self.user_key_path!r} are reserved")
        if repeatable:
            done, version = self._write_unchecked(
                key, action, write, if_version, if_exists, must_exist
            )
            if done:
                return version
        return self._write_checked(key, action, write, if_version, if_exists, must_exist)

    def _write_unchecked(
        self,
        key: str,
        action: str,
        write: _Write,
        if_version: str | None,
        if_exists: bool | None,
        must_exist: bool,
    ) -> tuple[bool, str | None]:
        """Try *write* without looking the key up: ``(True, new version)`` if it was done.

        A key this store set last is written pinned to that version
        (:meth:`_write_known`). A key about to be created is written pinned to its
        absence (anyone who may create keys may do that): always for a create-only write
        (``if_exists=False``), and for a plain ``set`` while most keys written lately
        were new (a failed creation costs an overwrite a third operation, so this
        follows the workload, see :meth:`_learn`). If the key is not as expected, the
        pinned write changes nothing and ``(False, None)`` sends the caller down the
        checked path, which says what is wrong (a conflict, or no permission).
        """
        known = self._known.get(key)
        if known is not None and if_exists is not False and if_version in (None, known[0]):
            return self._write_known(key, action, write, known)
        if if_version is not None or if_exists is True or must_exist:
            return False, None
        if if_exists is None and self._fresh < _FRESH_LIKELY:
            return False, None
        session = self._current()
        if not self._may_create():
            return False, None
        try:
            version = write(_Checked(None, None, session, {"if_exists": False}))
        except ConflictError:
            self._learn(existed=True)
            return False, None
        self._learn(existed=False)
        return True, version

    def _learn(self, *, existed: bool) -> None:
        """Count whether a key written without being known existed (see _write_unchecked).

        A saturating score: a run of new keys turns creation-first on, a run of existing
        ones turns it off. Races between threads lose a step at worst: it is a hint.
        """
        fresh = self._fresh
        self._fresh = max(fresh - 1, 0) if existed else min(fresh + 1, _FRESH_MAX)

    def _write_checked(
        self,
        key: str,
        action: str,
        write: _Write,
        if_version: str | None,
        if_exists: bool | None,
        must_exist: bool,
    ) -> str | None:
        """:meth:`_guarded` on a fresh lookup of *key*, retried while it keeps changing."""
        for _ in range(_RETRIES):
            session = self._current()
            value = self._lookup(key)
            if not must_exist:
                self._learn(existed=value is not None)
            record = None if value is None else _record(value)
            self._authorize_write(key, action, value, record, session, must_exist)
            if if_version is not None or if_exists is not None:
                current = None if value is None else value.version
                check_precondition(key, current, if_version, if_exists)
            pins = {"if_exists": False} if value is None else _version_pin(value)
            self._forget(key)
            try:
                return write(_Checked(value, record, session, pins))
            except ConflictError:
                if if_version is not None or if_exists is not None:
                    raise
                continue
        raise ConflictError(f"key {key!r} kept changing while it was being written")

    def _write_known(
        self,
        key: str,
        action: str,
        write: _Write,
        known: tuple[str, dict[str, list[str]] | None],
    ) -> tuple[bool, str | None]:
        """*write*, allowed by the permission record *key* had at the version this store
        last set, and pinned to that version: ``(True, new version)``. Sound without a
        lookup because the pinned write succeeds only while the key is exactly that
        value (a permission change, here or anywhere else, changes the version).
        ``(False, None)`` when the record does not allow it (the checked path then
        decides, on a fresh lookup) or the key has changed since.
        """
        version, record = known
        session = self._current()
        if action not in self._allowed(key, record, session):
            return False, None
        self._forget(key)
        try:
            return True, write(_Checked(_EXISTING, record, session, {"if_version": version}))
        except ConflictError:
            return False, None

    def _remember(self, key: str, version: str | None, record: object) -> None:
        """Keep *key*'s *version* and permission *record* after this store set it."""
        if version is None or not (record is None or isinstance(record, dict)):
            return
        with self._known_lock:
            known = self._known
            known.pop(key, None)
            if len(known) >= _KNOWN_KEYS:
                # The older half goes at once: removing the oldest entry on every write
                # leaves a dict whose iteration must first skip all the removed ones.
                self._known = known = dict(list(known.items())[_KNOWN_KEYS // 2 :])
            known[key] = (version, record)

    def _forget(self, key: str) -> None:
        if key in self._known:
            with self._known_lock:
                self._known.pop(key, None)

    def _authorize_write(
        self,
        key: str,
        action: str,
        value: Value | None,
        record: Mapping[str, Any] | None,
        session: _Session,
        must_exist: bool,
    ) -> None:
        if value is None:
            if must_exist:
                raise missing(key)
            # Without an overridden check_permissions anyone may create: skip the call.
            if self._custom_check and not self._may_create():
                raise AuthorizationError(f"{session.username!r} may not create keys")
            return
        allowed = self._allowed(key, record, session)
        if action not in allowed:
            if must_exist and "exists" not in allowed:
                raise missing(key)
            raise AuthorizationError(f"{session.username!r} may not {action} key {key!r}")

    def _new_record(self, session: _Session) -> dict[str, list[str]]:
        return {"owned": [session.username]}

    def _stored(self, metadata: object, checked: _Checked) -> Metadata:
        """*metadata* with the key's permissions: the record checked for this write (none
        stored: none written), or for a new key, owned by the user."""
        # A shallow copy of a dict is enough to add the permissions without touching the
        # caller's dict: the wrapped store validates and copies what it stores. (set's
        # None for {} was mapped by _split: None here is refused.)
        stored = dict(metadata) if type(metadata) is dict else copy_metadata(metadata)
        if PERMISSIONS in stored:
            raise InvalidMetadataError("the permissions entry is set through set_permissions")
        if checked.old is None:
            stored[PERMISSIONS] = self._new_record(checked.session)
        elif checked.record is not None:
            stored[PERMISSIONS] = checked.record
        return stored

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
        data, metadata = _split(value)
        source: object = data

        def write(checked: _Checked) -> str | None:
            stored = self._stored(metadata, checked)
            version = self._writer(0).set(key, (source, stored), buffer_size, **checked.pins)
            self._remember(key, version, stored.get(PERMISSIONS))
            return version

        if isinstance(data, _LazyData):
            with data.value.data as source:
                return self._write_once(key, source, write, if_version, if_exists)
        # No context manager for plain data: it would cost more than the checks.
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

        def write(checked: _Checked) -> None:
            if checked.old is None:
                stored = self._stored({}, checked)
                self._writer(0).set(key, (data, stored), buffer_size, **checked.pins)
            else:
                self._writer(0).set_data(key, data, buffer_size, **checked.pins)

        self._write_once(key, data, write, if_version, if_exists)

    def _write_once(
        self,
        key: str,
        data: object,
        write: _Write,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str | None:
        """Run a guarded ``set`` whose data can be read only once when it is a stream.

        Bytes can be written again after a lost race; a stream cannot, so it is written
        inside a transaction of the wrapped store, where nothing changes in between.
        """
        # The exact-type test first: a union isinstance costs more than it looks.
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

        def write(checked: _Checked) -> None:
            stored = self._stored(metadata, checked)
            if checked.old is None:
                self._writer(0).set(key, (b"", stored), **checked.pins)
            else:
                self._writer(0).set_metadata(key, stored, **checked.pins)

        self._guarded(key, "set", write, if_version, if_exists, repeatable=True)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into *key*'s metadata; needs ``set``."""
        update = copy_metadata(metadata)
        if PERMISSIONS in update:
            raise InvalidMetadataError("the permissions entry is set through set_permissions")

        def write(checked: _Checked) -> None:
            version = checked.pins.get("if_version")
            self._writer(0).update_metadata(key, update, if_version=version)

        self._guarded(key, "set", write, if_version, None, repeatable=True, must_exist=True)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Delete *key*; needs ``delete``."""

        def write(checked: _Checked) -> None:
            self._writer(0).delete(key, if_version=checked.pins.get("if_version"))

        self._guarded(key, "delete", write, if_version, None, repeatable=True, must_exist=True)

    # -- permission records -----------------------------------------------------------------
    def get_permissions(self, key: str) -> PermissionMap:
        """*key*'s permissions; KeyNotFoundError if not visible, AuthorizationError if not owned."""
        _, record, allowed, session = self._visible(key, "exists")
        if "owned" not in allowed:
            raise AuthorizationError(f"{session.username!r} does not own key {key!r}")
        if record is None:
            return {"owned": {EVERYONE}}
        return {name: set(tags) for name, tags in record.items()}

    def set_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Replace *key*'s permissions (owners only); ``'owned'`` needs at least one tag."""
        record = _normalize(permissions)
        self._change_permissions(key, lambda _old: record)

    def update_permissions(self, key: str, permissions: Mapping[str, Iterable[str]]) -> None:
        """Add the tags in *permissions* to *key*'s permissions (owners only)."""
        extra = _normalize(permissions, require_owner=False)

        def merge(old: Mapping[str, list[str]]) -> dict[str, list[str]]:
            merged = {name: set(tags) for name, tags in old.items()}
            for name, tags in extra.items():
                merged.setdefault(name, set()).update(tags)
            return {name: sorted(tags) for name, tags in merged.items()}

        self._change_permissions(key, merge)

    def _change_permissions(
        self, key: str, build: Callable[[Mapping[str, list[str]]], dict[str, list[str]]]
    ) -> None:
        for _ in range(_RETRIES):
            value, record, allowed, session = self._visible(key, "exists")
            if "owned" not in allowed:
                raise AuthorizationError(f"{session.username!r} does not own key {key!r}")
            self._forget(key)
            old = record or {"owned": [EVERYONE]}
            try:
                self._writer(0).update_metadata(
                    key, {PERMISSIONS: build(old)}, if_version=value.version
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

        Only when nobody listens now and no transaction (of this store, or one that holds
        its events for later delivery) is open; a manager that cannot tell is observed.
        """
        if self._held_events.get() is not None or self._in_transaction():
            return False
        has_listeners = getattr(self.event_manager, "has_listeners", None)
        return has_listeners is not None and not has_listeners(cls)

    def _translate_change(self, index: int, event: StoreModificationEvent) -> BaseEvent | None:
        """The child's change as this user may see it: dropped for a key they may not
        see (or whose permissions the event does not tell), without metadata where they
        may not ``get`` it, and never with the permissions entry."""
        key = self._outer_key(index, event.key)
        metadata = event.metadata
        if key is None or not isinstance(metadata, dict):
            return None
        record = metadata.get(PERMISSIONS)
        allowed = self._allowed_now(key, record if isinstance(record, dict) else None)
        if "exists" not in allowed:
            return None
        if "get" not in allowed:
            metadata = None
        elif PERMISSIONS in metadata:
            metadata = {name: item for name, item in metadata.items() if name != PERMISSIONS}
        return retarget_event(event, self, key=key, metadata=metadata)

    def _allowed_now(self, key: str, record: dict[str, list[str]] | None) -> frozenset[str]:
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
        if isinstance(metadata, dict) and PERMISSIONS in metadata:
            metadata = {name: item for name, item in metadata.items() if name != PERMISSIONS}
        return retarget_event(event, self, key=key, metadata=metadata)

    # -- user administration ------------------------------------------------------------------
    def add_user(self, username: str, password: str | bytes, tags: Iterable[str] = ()) -> None:
        """Create a user; ConflictError if they exist. *tags* are the user's groups."""
        record = self._make_record(password, tags)
        self._user_store("add_user").set(self._user_key(username), (record, {}), if_exists=False)

    def change_user(
        self,
        username: str,
        password: str | bytes | None = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Change a user's password and/or tags; KeyNotFoundError if there is no such user.

        A new password ends the user's open sessions (at their next re-check).
        """
        key = self._user_key(username)
        users = self._user_store("change_user")
        value = users.get(key)
        current = _UserRecord.parse(read_stream(value.data))
        if password is None:
            new_tags = current.tags if tags is None else _tags(tags)
            record = current.with_tags(new_tags).dump()
        else:
            record = self._make_record(password, current.tags if tags is None else tags)
        users.set(key, (record, {}), if_version=value.version)

    def remove_user(self, username: str) -> None:
        """Delete a user record; KeyNotFoundError if there is no such user."""
        self._user_store("remove_user").delete(self._user_key(username))

    def users(self) -> list[str]:
        """The names of all users, sorted."""
        prefix = self.user_key_path
        keys = self._user_store("users").query_keys()
        return sorted(key[len(prefix) :] for key in keys if key.startswith(prefix))

    def _user_key(self, username: str) -> str:
        if not isinstance(username, str) or not username:
            raise InvalidKeyError(f"a username is a non-empty str, not {username!r}")
        return check_key(self.user_key_path + username)

    def _make_record(self, password: str | bytes, tags: Iterable[str]) -> bytes:
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = self.encoder(_password_bytes(password), salt)
        return _UserRecord(salt, digest, _tags(tags), self.encoder.scheme).dump()

    def _read_user(self, username: str) -> _UserRecord | None:
        try:
            data = self.user_key_store.to_bytes(self._user_key(username))
        except KeyError:
            return None
        return _UserRecord.parse(data)

    def _user_store(self, method: str) -> AbstractStore:
        """The store of the user records, which *method* needs connected.

        Never connected here for the call: a store that keeps its data only while
        connected (an in-memory SQLite database) would drop the record on the disconnect
        that followed, and the user would silently vanish.
        """
        users = self.user_key_store
        if not users.is_connected():
            raise NotConnectedError(
                f"{method}() needs the {type(users).__name__} holding the user records "
                "connected: connect it first (connect(), 'with', or open_store, which gives "
                "a connected store), or connect this store as an existing user"
            )
        return users


@dataclass(frozen=True)
class _UserRecord:
    """A user record: salt and hash of the password, and the user's group tags."""

    salt: bytes
    digest: bytes
    tags: tuple[str, ...]
    scheme: str = "scrypt"

    def dump(self) -> bytes:
        return json.dumps(
            {
                "scheme": self.scheme,
                "salt": self.salt.hex(),
                "hash": self.digest.hex(),
                "tags": list(self.tags),
            }
        ).encode()

    def with_tags(self, tags: tuple[str, ...]) -> _UserRecord:
        return _UserRecord(self.salt, self.digest, tags, self.scheme)

    @classmethod
    def parse(cls, data: bytes) -> _UserRecord:
        """Parse a record; anything else is the original's bare hash (no per-user salt)."""
        try:
            fields = json.loads(data)
            return cls(
                bytes.fromhex(fields["salt"]),
                bytes.fromhex(fields["hash"]),
                tuple(fields["tags"]),
                str(fields["scheme"]),
            )
        except (ValueError, TypeError, KeyError):
            return cls(b"", data, (), "legacy")


class _Legacy(PasswordEncoder):
    """Adapts a seed-style one-argument encoder; the per-user salt is prepended."""

    def __init__(self, encode: Callable[[bytes], bytes]) -> None:
        super().__init__(b"", encode)


class _MaskedValue(Value):
    """A wrapped store's value without the permissions entry in its metadata."""

    def __init__(self, inner: Value, owner: bool) -> None:
        self._inner = inner
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
        metadata = self._inner.metadata
        metadata.pop(PERMISSIONS, None)
        return metadata

    @property
    def permissions(self) -> dict[str, set[str]]:
        """The key's permissions, for its owners; AuthorizationError for anyone else."""
        if not self._owner:
            return super().permissions
        record = _record(self._inner)
        if record is None:
            return {"owned": {EVERYONE}}
        return {name: set(tags) for name, tags in record.items()}


def _granted(record: Mapping[str, Any] | None, tags: frozenset[str]) -> frozenset[str]:
    """What *tags* may do with a key whose permissions are *record* (None: everyone owns)."""
    if record is None or not tags.isdisjoint(record.get("owned", ())):
        return _EVERYTHING
    granted = {action for action in _KEY_ACTIONS if not tags.isdisjoint(record.get(action, ()))}
    if granted:
        granted.add("exists")
    return frozenset(granted)


def _record(value: Value) -> dict[str, list[str]] | None:
    """*value*'s permission record (None: none stored). Never mutate the result: values
    holding the same record may share it.

    The backends' own value types have their metadata text read directly, without the
    copy ``value.metadata`` makes (the record is needed on every operation), and a text
    that ends with the record read last is not parsed at all (see :func:`_same_tail`).
    """
    if type(value) not in _PLAIN_VALUES:
        return _record_of(value.metadata)
    text = value._metadata_json  # type: ignore[attr-defined]
    if type(text) is not str:
        return _record_of(decode_metadata(text))
    tail, record = _last_tail
    if _same_tail(text, tail):
        return record
    found = _record_of(decode_metadata(text))
    if found is not None:
        _keep_tail(text, found)
    return found


def _record_of(metadata: Metadata) -> dict[str, list[str]] | None:
    record = metadata.get(PERMISSIONS)
    return record if isinstance(record, dict) else None


#: How the permissions entry's name starts in metadata text written by encode_metadata.
_RECORD_NAME = json.dumps(PERMISSIONS) + ":"
#: ``(tail, record)``: metadata text ending in *tail* holds *record* (see _same_tail).
#: The first never matches: JSON text cannot hold a raw NUL.
_last_tail: tuple[str, dict[str, list[str]]] = ("\x00", {})


def _same_tail(text: str, tail: str) -> bool:
    """Whether the metadata JSON *text* ends with *tail*: the permissions entry and its
    record, then the final ``}``, right after a ``,`` or ``{``.

    Sound for any valid JSON text: a quote right after ``,`` or ``{`` is a real string
    delimiter (inside a string a quote is always escaped), the string it opens is a
    member name exactly ``PERMISSIONS`` (its backslash cannot stand outside a string),
    the record in *tail* is one complete JSON object, so it is that member's whole value,
    and the final ``}`` therefore closes the top-level object.
    """
    size = len(tail)
    return len(text) > size and text.endswith(tail) and text[-size - 1] in ",{"


def _keep_tail(text: str, record: dict[str, list[str]]) -> None:
    """Remember how *text* spells its permission *record*, if it is its last entry."""
    global _last_tail  # one tuple, replaced whole: safe across threads
    at = text.rfind(_RECORD_NAME)
    if at <= 0 or text[at - 1] not in ",{" or text[-1] != "}":
        return
    try:
        parsed, end = _SCAN(text, at + len(_RECORD_NAME))
    except StopIteration:
        return
    if end == len(text) - 1 and parsed == record:
        _last_tail = (text[at:], record)


@dataclass(slots=True)
class _Checked:
    """What a guarded write was allowed on: the key's value (None: a new key), its
    permission record, the session, and the preconditions that pin the write to them.
    Never changed once made (not frozen: a frozen dataclass costs every write ~1 us)."""

    old: object  # the Value looked up, _EXISTING (known to exist), or None (a new key)
    record: dict[str, list[str]] | None
    session: _Session
    pins: dict[str, Any]


#: A guarded write, given what was checked; returns the new version when it knows it.
_Write = Callable[[_Checked], "str | None"]
#: _Checked.old of a key known to exist without a lookup (see _write_known).
_EXISTING = object()


def _version_pin(value: Value) -> dict[str, Any]:
    return {"if_exists": True} if value.version is None else {"if_version": value.version}


def _normalize(
    permissions: Mapping[str, Iterable[str]], *, require_owner: bool = True
) -> dict[str, list[str]]:
    if not isinstance(permissions, Mapping):
        raise InvalidMetadataError("permissions are a dict of permission -> set of tags")
    record = {}
    for name, tags in permissions.items():
        if not isinstance(name, str):
            raise InvalidMetadataError(f"permission names are str, not {name!r}")
        record[name] = sorted(_tags(tags))
    if require_owner and not record.get("owned"):
        raise InvalidMetadataError("permissions need an 'owned' entry with at least one tag")
    return record


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise InvalidMetadataError(f"tags are an iterable of str, not a single str: {tags!r}")
    result = tuple(sorted(set(tags)))
    if not all(isinstance(tag, str) and tag for tag in result):
        raise InvalidMetadataError(f"tags are non-empty str: {result!r}")
    return result


def _password_bytes(password: object) -> bytes:
    if isinstance(password, str):
        return password.encode("utf-8")
    if isinstance(password, bytes):
        return password
    raise AuthenticationError("the password must be a str")


def _parse_credentials(credentials: object) -> tuple[str, bytes]:
    if isinstance(credentials, Mapping):
        username, password = credentials.get("username"), credentials.get("password")
    elif isinstance(credentials, tuple | list) and len(credentials) == 2:
        username, password = credentials
    else:
        raise AuthenticationError("credentials {'username': ..., 'password': ...} are required")
    if not isinstance(username, str) or not username:
        raise AuthenticationError("credentials need a non-empty 'username'")
    return username, _password_bytes(password)


def _split(value: object) -> tuple[object, object]:
    """``(data, metadata)`` of what ``set`` accepts; a Value's data is opened lazily.
    Metadata ``None`` means ``{}`` here, in ``set``'s pair only (``set_metadata(key,
    None)`` is refused)."""
    if type(value) is tuple and len(value) == 2:
        # The usual pair, recognised before the slower Value check.
        return value if value[1] is not None else (value[0], {})
    if isinstance(value, Value):
        return _LazyData(value), value.metadata
    if isinstance(value, tuple | list) and len(value) == 2:
        return value[0], {} if value[1] is None else value[1]
    raise InvalidValueError(
        f"a store value is a Value or a (data, metadata) pair, not {type(value).__name__}"
    )


class _LazyData:
    """Marks a Value's data, which is opened only when the write happens."""

    def __init__(self, value: Value) -> None:
        self.value = value
