"""Keys from request paths: ``{base}/{key}/{part}``, decoded exactly once."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import Scope

from storekeeper.server._http import HTTPProblem

__all__ = ["PARTS", "key_and_part", "raw_remainder"]

#: The parts a key has under the base URL.
PARTS = frozenset({"data", "metadata", "auth", "value"})


def raw_remainder(scope: Scope, mount: str) -> bytes:
    """The still-escaped path after the mount point *mount* (``"/store"``).

    The raw path is used rather than the server's decoded one so that the key is
    decoded exactly once, here, and strictly as UTF-8.
    """
    raw: bytes | None = scope.get("raw_path")
    if raw is None:  # a server that does not give the raw path: re-escape nothing
        raw = scope["path"].encode("utf-8")
    raw = raw.split(b"?", 1)[0]
    marker = mount.encode("ascii") + b"/"
    index = raw.find(marker)
    if index < 0:
        raise HTTPProblem(404, "not a store path", "NotFound")
    return raw[index + len(marker) :]


def decode(raw: bytes) -> str:
    """*raw* percent-decoded once as UTF-8 (``+`` stays a plus); 400 if it is not UTF-8."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(400, "the key is not UTF-8 once decoded", "InvalidKeyError") from None


def key_and_part(raw: bytes, with_part: bool) -> tuple[str, str | None]:
    """The key (and, when *with_part*, the part: the last segment) of the path *raw*."""
    if not with_part:
        return _checked(decode(raw)), None
    key_raw, slash, part_raw = raw.rpartition(b"/")
    if not slash:
        raise HTTPProblem(
            404, "a store URL is {base}/{key}/{part} (data, metadata, auth, value)", "NotFound"
        )
    part = decode(part_raw)
    if part not in PARTS:
        raise HTTPProblem(
            404, f"unknown part {part!r}: use data, metadata, auth or value", "NotFound"
        )
    return _checked(decode(key_raw)), part


def _checked(key: str) -> str:
    if not key:
        raise HTTPProblem(400, "the key is empty", "InvalidKeyError")
    if "\x00" in key:
        raise HTTPProblem(400, "the key holds NUL", "InvalidKeyError")
    return key
