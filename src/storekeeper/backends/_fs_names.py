"""Reversible mapping of store keys to file names for :mod:`storekeeper.backends.filesystem`.

A key becomes a file name made only of ``[a-z0-9_-]``, ``%`` plus two *lowercase* hex
digits (each other UTF-8 byte of the key, uppercase letters included), or ``~`` plus 64
hex digits (the SHA-256 of the key, for keys whose escaped form would be too long; the
record then holds the real key). Consequences the store relies on:

- a name never contains ``/``, ``\\``, ``.`` or a drive letter, so no key can leave the
  directory, and names starting with ``.`` are free for the store's own files;
- every name is lowercase, so two keys never map to names that a case-insensitive file
  system would confuse;
- Windows device names (``con``, ``nul``, ``com1``, ...) get their last letter escaped.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_ESCAPED_LENGTH",
    "decode_name",
    "encode_key",
    "is_hashed",
    "is_record_name",
    "name_starts",
]

#: Longest escaped name kept as is; longer ones are hashed (file systems allow 255 bytes,
#: and the store appends suffixes to names of staged and data files).
MAX_ESCAPED_LENGTH = 200

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = [chr(byte) if byte in _SAFE else f"%{byte:02x}" for byte in range(256)]
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{device}{n}" for device in ("com", "lpt") for n in range(10)]
)
_PLAIN = re.compile(rf"[a-z0-9_-]{{1,{MAX_ESCAPED_LENGTH}}}")
_RECORD_NAME = re.compile(r"(?:[a-z0-9_-]|%[0-9a-f]{2})+|~[0-9a-f]{64}")
_HASH_PREFIX = "~"


def encode_key(key: str) -> str:
    """Return the file name of *key* (a valid store key): injective and lowercase."""
    if _PLAIN.fullmatch(key) is not None and key not in _RESERVED:
        return key  # the common case, and the escaping below would not change it
    raw = key.encode("utf-8", "surrogatepass")
    name = "".join([_ESCAPES[byte] for byte in raw])
    if name in _RESERVED:
        name = name[:-1] + f"%{raw[-1]:02x}"
    if len(name) > MAX_ESCAPED_LENGTH:
        return _HASH_PREFIX + hashlib.sha256(raw).hexdigest()
    return name


def name_starts(prefix: str) -> tuple[str, ...]:
    """How the names of the keys that start with *prefix* begin (any key; ``str.startswith``
    takes the tuple): with *prefix* escaped byte by byte, as a hashed name, or as one of
    the device names whose last letter :func:`encode_key` escapes. A name that begins so
    may still hold another key: decode it to be sure.
    """
    escaped = "".join([_ESCAPES[byte] for byte in prefix.encode("utf-8", "surrogatepass")])
    devices = [encode_key(name) for name in sorted(_RESERVED) if name.startswith(prefix)]
    return (escaped, _HASH_PREFIX, *devices)


def decode_name(name: str) -> str | None:
    """Return the key whose escaped name is *name*; ``None`` for a hashed name.

    A hashed name cannot be decoded: the key is read from the record instead.
    """
    if name.startswith(_HASH_PREFIX):
        return None
    if "%" not in name:
        return name  # nothing escaped: the key is the name (every listing decodes names)
    return unquote_to_bytes(name).decode("utf-8", "surrogatepass")


def is_hashed(name: str) -> bool:
    """Whether *name* is the hashed form used for keys with over-long escaped names."""
    return name.startswith(_HASH_PREFIX)


def is_record_name(name: str) -> bool:
    """Whether *name* could be produced by :func:`encode_key` (so it is not a temp file)."""
    return _RECORD_NAME.fullmatch(name) is not None
