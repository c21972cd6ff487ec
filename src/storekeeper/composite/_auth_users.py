"""User records and sessions of :class:`~storekeeper.composite.SimpleAuthStore`.

A user record lives at ``user_key_path + username`` in the store of the user records:
JSON with the scheme, the per-user salt and the hash of the password, and the user's
group tags. Data that is not such JSON is read as a bare hash without a per-user salt
(records written by a plain one-argument encoder). :class:`UserAdministration` holds
the store's user tools and the checks of a user's password; a :class:`Session` is what
a successful check leaves behind.

User names and group tags share one namespace (a key's permissions name both the same
way), so the tools keep them apart: no user is named like a reserved tag
(:data:`~storekeeper.composite._auth_permissions.RESERVED_TAGS`) or like another user's
group, and no group is named like a reserved tag or another user.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from storekeeper.composite._auth_passwords import PasswordEncoder, password_bytes
from storekeeper.composite._auth_permissions import EVERYONE, RESERVED_TAGS, normalize_tags
from storekeeper.errors import (
    AuthenticationError,
    InvalidKeyError,
    InvalidMetadataError,
    NotConnectedError,
)
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import check_key, read_stream

__all__ = ["Session", "UserAdministration", "UserRecord", "parse_credentials"]

_SALT_BYTES = 16


@dataclass
class Session:
    """A connected user: their name and tags (username, :data:`EVERYONE` and their
    groups), the password hash they proved (*proof*), when their record was last
    checked (``time.monotonic()``), and whether the session has ended."""

    username: str
    tags: frozenset[str]
    proof: bytes
    checked: float
    revoked: bool = False


@dataclass(frozen=True)
class UserRecord:
    """A user record: salt and hash of the password, the user's group tags, and the
    scheme that made the hash (``'legacy'``: a bare hash, no per-user salt)."""

    salt: bytes
    digest: bytes
    tags: tuple[str, ...]
    scheme: str = "scrypt"

    def dump(self) -> bytes:
        """The record as stored (JSON)."""
        fields = {
            "scheme": self.scheme,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
            "tags": list(self.tags),
        }
        return json.dumps(fields).encode()

    def with_tags(self, tags: tuple[str, ...]) -> UserRecord:
        """The same record with other group *tags*."""
        return UserRecord(self.salt, self.digest, tags, self.scheme)

    @classmethod
    def parse(cls, data: bytes) -> UserRecord:
        """Parse stored *data*; anything but a record's JSON is a bare legacy hash."""
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


def parse_credentials(credentials: object) -> tuple[str, bytes]:
    """``(username, password)`` from ``{'username': ..., 'password': ...}`` or a pair;
    AuthenticationError for anything else or an empty username."""
    if isinstance(credentials, Mapping):
        username, password = credentials.get("username"), credentials.get("password")
    elif isinstance(credentials, tuple | list) and len(credentials) == 2:
        username, password = credentials
    else:
        raise AuthenticationError("credentials {'username': ..., 'password': ...} are required")
    if not isinstance(username, str) or not username:
        raise AuthenticationError("credentials need a non-empty 'username'")
    return username, password_bytes(password)


class UserAdministration:
    """The user tools and password checks of an authenticating store.

    The store provides :attr:`encoder`, :attr:`user_key_path` and
    :attr:`user_key_store`. The tools need no session (whoever holds the store object can
    reach the wrapped store anyway) but do need the store holding the records connected;
    they never connect it for one call.
    """

    encoder: PasswordEncoder
    user_key_path: str

    @property
    def user_key_store(self) -> AbstractStore:
        """The store that holds the user records."""
        raise NotImplementedError

    def add_user(self, username: str, password: str | bytes, tags: Iterable[str] = ()) -> None:
        """Create a user; ConflictError if they exist. *tags* are the user's groups.

        User names and group tags share one namespace: InvalidKeyError for a
        *username* that is a reserved tag (:data:`EVERYONE`) or another user's group
        tag, InvalidMetadataError for a tag that is reserved or another user's name.
        """
        users = self._user_store("add_user")
        key = self._user_key(username)
        self._check_new_name(username)
        group_tags = self._check_group_tags(username, normalize_tags(tags))
        record = self._make_record(password, group_tags)
        users.set(key, (record, {}), if_exists=False)

    def change_user(
        self,
        username: str,
        password: str | bytes | None = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Change a user's password and/or tags; KeyNotFoundError if there is no such user.

        A new password ends the user's open sessions (at their next re-check). New
        *tags* are checked as :meth:`add_user` checks them (InvalidMetadataError).
        """
        key = self._user_key(username)
        users = self._user_store("change_user")
        value = users.get(key)
        current = UserRecord.parse(read_stream(value.data))
        new_tags = current.tags
        if tags is not None:
            new_tags = self._check_group_tags(username, normalize_tags(tags))
        if password is None:
            record = current.with_tags(new_tags).dump()
        else:
            record = self._make_record(password, new_tags)
        users.set(key, (record, {}), if_version=value.version)

    def remove_user(self, username: str) -> None:
        """Delete a user record; KeyNotFoundError if there is no such user."""
        self._user_store("remove_user").delete(self._user_key(username))

    def users(self) -> list[str]:
        """The names of all users, sorted."""
        prefix = self.user_key_path
        keys = self._user_store("users").query_keys()
        return sorted(key[len(prefix) :] for key in keys if key.startswith(prefix))

    def _authenticate(self, username: str, password: bytes) -> Session:
        """A session for *username* if *password* is theirs; AuthenticationError if not."""
        if username in RESERVED_TAGS:
            # A record made before such names were refused: its user would own every
            # key they create for everyone, so it never connects (remove_user drops it).
            raise AuthenticationError(f"the user name {username!r} is reserved: it cannot connect")
        record = self._read_user(username)
        if record is None:
            # Hash anyway, so that a missing user takes as long as a wrong password.
            self.encoder(password, secrets.token_bytes(_SALT_BYTES))
            raise AuthenticationError("unknown user or wrong password")
        proof = self.encoder(password, record.salt)
        if not hmac.compare_digest(proof, record.digest):
            raise AuthenticationError("unknown user or wrong password")
        tags = frozenset({username, EVERYONE, *record.tags})
        return Session(username, tags, record.digest, time.monotonic())

    def _recheck(self, session: Session) -> None:
        """Refresh *session*'s tags from its user record; if the user is gone or their
        password changed, end it and raise AuthenticationError."""
        record = self._read_user(session.username)
        if record is None or not hmac.compare_digest(record.digest, session.proof):
            session.revoked = True
            raise AuthenticationError(f"the session of {session.username!r} has ended: reconnect")
        session.tags = frozenset({session.username, EVERYONE, *record.tags})
        session.checked = time.monotonic()

    def _check_new_name(self, username: str) -> None:
        """InvalidKeyError if *username* is a reserved tag or an existing user's group."""
        if username in RESERVED_TAGS:
            raise InvalidKeyError(f"the user name {username!r} is reserved (it means everyone)")
        for other, record in self._records():
            if username in record.tags:
                raise InvalidKeyError(
                    f"the user name {username!r} is a group tag of user {other!r}: user "
                    "names and group tags share one namespace"
                )

    def _check_group_tags(self, username: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        """*tags* for user *username*; InvalidMetadataError for a reserved tag or one
        that names another user (a user's own name adds nothing, and is allowed)."""
        reserved = RESERVED_TAGS.intersection(tags)
        if reserved:
            raise InvalidMetadataError(f"group tags {sorted(reserved)!r} are reserved")
        if tags:
            clashes = sorted(name for name in self.users() if name != username and name in tags)
            if clashes:
                raise InvalidMetadataError(
                    f"group tags {clashes!r} are user names: user names and group tags "
                    "share one namespace"
                )
        return tags

    def _records(self) -> Iterable[tuple[str, UserRecord]]:
        """``(username, record)`` of every user whose record can still be read."""
        for name in self.users():
            record = self._read_user(name)
            if record is not None:
                yield name, record

    def _user_key(self, username: str) -> str:
        if not isinstance(username, str) or not username:
            raise InvalidKeyError(f"a username is a non-empty str, not {username!r}")
        return check_key(self.user_key_path + username)

    def _make_record(self, password: str | bytes, tags: Iterable[str]) -> bytes:
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = self.encoder(password_bytes(password), salt)
        return UserRecord(salt, digest, normalize_tags(tags), self.encoder.scheme).dump()

    def _read_user(self, username: str) -> UserRecord | None:
        try:
            data = self.user_key_store.to_bytes(self._user_key(username))
        except KeyError:
            return None
        return UserRecord.parse(data)

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
