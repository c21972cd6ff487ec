"""Password hashing for :class:`~storekeeper.composite.SimpleAuthStore`.

A password encoder turns ``(password, per-user salt)`` into the hash kept in a user
record. The default is scrypt keyed with a secret that stays out of the store; a
one-argument hasher can be passed explicitly to read records made with one. Users import
these names from :mod:`storekeeper.composite`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from storekeeper.errors import AuthenticationError

__all__ = [
    "LegacyEncoder",
    "PasswordEncoder",
    "as_encoder",
    "make_encoder",
    "password_bytes",
    "sha1_hasher",
]


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
    per-user salt that is the classic ``hasher(secret + password)``.
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
        """``'scrypt'`` or the name of the explicit hasher (kept in each user record)."""
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


class LegacyEncoder(PasswordEncoder):
    """Adapts a one-argument encoder *encode*: the hash is ``encode(user_salt +
    password)``, so records without a per-user salt hash as ``encode(password)``."""

    def __init__(self, encode: Callable[[bytes], bytes]) -> None:
        super().__init__(b"", encode)


def make_encoder(
    salt: bytes, hasher: Callable[[bytes], bytes] | None = None, *, n: int = 2**14
) -> PasswordEncoder:
    """A password encoder keyed with the secret *salt* (keep it out of the store).

    Without *hasher* it uses scrypt with cost *n* (a power of two; lower it only in
    tests). Pass :func:`sha1_hasher` explicitly to check records hashed with salted
    SHA-1 (``sha1(salt + password)``).
    """
    return PasswordEncoder(salt, hasher, n=n)


def as_encoder(encoder: Callable[..., bytes]) -> PasswordEncoder:
    """*encoder* itself if it is a :class:`PasswordEncoder`, else a :class:`LegacyEncoder`
    around the one-argument callable."""
    return encoder if isinstance(encoder, PasswordEncoder) else LegacyEncoder(encoder)


def password_bytes(password: object) -> bytes:
    """*password* as bytes (a str is UTF-8 encoded); AuthenticationError for anything
    but str or bytes."""
    if isinstance(password, str):
        return password.encode("utf-8")
    if isinstance(password, bytes):
        return password
    raise AuthenticationError("the password must be a str")
