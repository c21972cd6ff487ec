"""Object names of an S3Store: storekeeper keys mapped reversibly, in key order.

A key becomes ``prefix + encoded key``. Every character is kept as it is except the
control characters U+0001..U+001F and U+007F (some servers and proxies refuse a newline
in a request path), which become two characters: ``\\x01`` followed by the code point
plus 0x21 (``\\x7f`` as ``\\x01\\x40``). The escape starts with the lowest character a
key can hold, so the encoded names sort in UTF-8 byte order exactly as the keys sort in
code-point order, with one exception: U+007F sorts above ``~`` as a key but its
escape sorts below the space, so a name holding it is listed *earlier* than its key's
place (never later: at the first character where two keys differ, only a U+007F on one
side can invert their order, and it moves that side forward). :func:`in_key_order`
puts a listing back in key order while streaming.

The store's own objects (metadata sidecars, the index snapshot) live under
``prefix + "\\x01~sk/"``: ``\\x01`` followed by ``~`` never starts an encoded key, so no
key can collide with them; listings skip that subtree.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator

from storekeeper.errors import InvalidKeyError

__all__ = [
    "MAX_NAME_BYTES",
    "decode_name",
    "encode_name",
    "encode_prefix",
    "in_key_order",
    "internal_root",
    "needs_escape",
]

#: S3 limits object names to 1024 bytes of UTF-8.
MAX_NAME_BYTES = 1024
_ESCAPE = "\x01"
_INTERNAL = "\x01~sk/"
_CONTROL = re.compile("[\x01-\x1f\x7f]")
_ESCAPED = re.compile("\x01(.)", re.DOTALL)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return _ESCAPE + chr(0x40 if code == 0x7F else code + 0x20)


def _unescape(match: re.Match[str]) -> str:
    code = ord(match.group(1))
    return "\x7f" if code == 0x40 else chr(code - 0x20)


def needs_escape(text: str) -> bool:
    """Whether *text* holds a character the encoding changes."""
    return _CONTROL.search(text) is not None


def encode_name(prefix: str, key: str) -> str:
    """The object name of *key* under *prefix*; :class:`InvalidKeyError` when it would
    exceed S3's 1024-byte limit (the key is valid elsewhere, but not storable here)."""
    name = prefix + (_CONTROL.sub(_escape, key) if needs_escape(key) else key)
    if len(name) * 4 > MAX_NAME_BYTES and len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidKeyError(
            f"key {key[:40]!r}... is too long for S3: its object name takes "
            f"{len(name.encode())} bytes of UTF-8, the limit is {MAX_NAME_BYTES}"
        )
    return name


def encode_prefix(prefix: str, key_prefix: str) -> str:
    """The object-name prefix of the keys starting with *key_prefix* (no length check:
    a listing prefix names no object)."""
    return prefix + _CONTROL.sub(_escape, key_prefix)


def decode_name(prefix: str, name: str) -> str | None:
    """The key stored as object *name*, or ``None`` for a name that is not a key's
    (the store's own objects, or anything outside *prefix*)."""
    if not name.startswith(prefix):
        return None
    encoded = name[len(prefix) :]
    if _ESCAPE not in encoded:
        return encoded or None
    if encoded.startswith("\x01~"):  # the store's own subtree (or a folder of it)
        return None
    return _ESCAPED.sub(_unescape, encoded)


def internal_root(prefix: str) -> str:
    """Where the store keeps its own objects under *prefix*."""
    return prefix + _INTERNAL


def in_key_order(keys: Iterable[str]) -> Iterator[str]:
    """The decoded *keys* (or folders) of a listing, in key order.

    A key holding U+007F may come before keys that sort below it (see above), never
    after a key above it. So it waits in a heap until a key without U+007F above it
    arrives (or the listing ends); every other key goes out at once after the waiting
    ones below it. Memory grows with the keys holding U+007F that wait, not with the
    listing."""
    waiting: list[str] = []
    for key in keys:
        if "\x7f" in key:
            heapq.heappush(waiting, key)
            continue
        while waiting and waiting[0] < key:
            yield heapq.heappop(waiting)
        yield key
    while waiting:
        yield heapq.heappop(waiting)
