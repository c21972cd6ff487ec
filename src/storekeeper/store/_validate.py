"""Validation of keys, metadata and data sources, shared by every backend.

Everything a caller hands to a store passes through here before anything is written, so
bad input fails with a specific error and leaves stored data untouched.
"""

from __future__ import annotations

import io
import json
import json.encoder
import json.scanner
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from storekeeper.errors import InvalidKeyError, InvalidMetadataError, InvalidValueError

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "check_key",
    "check_keys",
    "copy_metadata",
    "decode_metadata",
    "encode_metadata",
    "iter_source",
    "select_metadata",
]

#: The seed's default chunk size for streaming reads and writes (1 MiB).
DEFAULT_BUFFER_SIZE = 1048576

Metadata = dict[str, Any]

# (typeshed types the scanner's context loosely; json itself passes its decoder, as here.)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The C encoder _ENCODER.encode builds on every call, built once. Without a markers dict
# it does not look for cycles: a circular value ends in RecursionError instead (caught).
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
_C_ENCODE: Callable[[object, int], Sequence[str]] | None = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def check_key(key: object) -> str:
    """Return *key* if it is a valid store key, else raise :class:`InvalidKeyError`.

    A valid key is a non-empty ``str`` without NUL characters that UTF-8 can encode (no
    lone surrogates such as ``"\\udc80"``). Everything else about a key is the backend's
    business: backends that map keys onto restricted namespaces (file names, URLs)
    encode them reversibly.
    """
    if type(key) is not str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"store keys are str, not {type(key).__name__}: {key!r}")
        key = str(key)
    if not key:
        raise InvalidKeyError("store keys must not be empty")
    if "\x00" in key:
        raise InvalidKeyError(f"store keys must not contain NUL characters: {key!r}")
    if not key.isascii() and not _is_utf8(key):
        raise InvalidKeyError(f"store keys must be valid Unicode (no lone surrogates): {key!r}")
    return key


def _is_utf8(text: str) -> bool:
    """Whether UTF-8 can encode *text* (it cannot encode lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_text(text: str) -> str:
    """*text* (encoded metadata) if UTF-8 can encode it, else InvalidMetadataError."""
    if not text.isascii() and not _is_utf8(text):
        raise InvalidMetadataError("metadata text must be valid Unicode (no lone surrogates)")
    return text


def check_keys(keys: Sequence[object]) -> None:
    """Raise :class:`InvalidKeyError` for the first invalid key in *keys*, as
    :func:`check_key` would; nothing happens when all are valid."""
    # Whole-list checks run in C; only a list holding a bad key is walked key by key.
    if set(map(type, keys)) <= {str} and all(keys):
        joined = "".join(keys)  # type: ignore[arg-type]
        if "\x00" not in joined and (joined.isascii() or _is_utf8(joined)):
            return
    for key in keys:
        check_key(key)


def encode_metadata(metadata: object) -> str:
    """Serialise *metadata* to compact JSON text, validating it on the way.

    Raises :class:`InvalidMetadataError` unless *metadata* is a ``dict`` (or other
    mapping) with ``str`` keys whose values are JSON-representable (``None``, ``bool``,
    ``int``, finite ``float``, ``str``, lists/tuples and dicts with ``str`` keys thereof).
    """
    if type(metadata) is dict:
        if not metadata:
            return "{}"
        if _C_ENCODE is not None:
            return _encode_dict(metadata)
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata must be a dict, not {type(metadata).__name__}: {metadata!r}"
        )
    for name in metadata:
        if not isinstance(name, str):
            raise InvalidMetadataError(f"metadata keys must be str, not {name!r}")
    try:
        text = _ENCODER.encode(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"metadata is not JSON-representable: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMetadataError("metadata is nested too deeply or is circular") from exc
    return _valid_text(text)


def _encode_dict(metadata: dict[Any, Any]) -> str:
    """:func:`encode_metadata` of a plain ``dict``, through the prebuilt C encoder."""
    assert _C_ENCODE is not None
    for name in metadata:
        if type(name) is not str:
            raise InvalidMetadataError(f"metadata keys must be str, not {name!r}")
    try:
        text = "".join(_C_ENCODE(metadata, 0))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"metadata is not JSON-representable: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMetadataError("metadata is nested too deeply or is circular") from exc
    return _valid_text(text)


def decode_metadata(text: str | bytes) -> Metadata:
    """Parse JSON metadata written by :func:`encode_metadata` into a fresh dict."""
    if text == "{}":
        return {}
    if type(text) is str:
        # Text as encode_metadata writes it (no surrounding whitespace) goes straight to
        # json's C scanner: the same parse as json.loads without its Python layers, which
        # cost more than the scan itself for small metadata.
        try:
            result, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end == len(text) and type(result) is dict:
            return result
    # Anything else (bytes, whitespace, errors) gets the general decoder's answer.
    result = json.loads(text)
    if not isinstance(result, dict):
        raise InvalidMetadataError(f"stored metadata is not a JSON object: {text!r}")
    return result


def copy_metadata(metadata: object) -> Metadata:
    """Validate *metadata* and return an independent deep copy with JSON types.

    Tuples become lists, exactly as they would after a round trip through any backend.
    """
    return decode_metadata(encode_metadata(metadata))


def select_metadata(metadata: Metadata, select: Iterable[str] | None) -> Metadata:
    """Return the entries of *metadata* named by *select* (all when ``None``).

    Names in *select* that *metadata* lacks are omitted, as the seed documents.
    """
    if select is None:
        return metadata
    if isinstance(select, str):
        raise InvalidMetadataError(
            f"select is an iterable of metadata names, not a single str: {select!r}"
        )
    return {name: metadata[name] for name in select if name in metadata}


def iter_source(data: object, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Iterator[bytes]:
    """Turn any accepted data source into an iterator of non-empty ``bytes`` chunks.

    Accepted: ``bytes``/``bytearray``/``memoryview``, a readable binary file-like object
    (anything with ``read``), or an iterable of bytes-like chunks. ``str`` is rejected
    (stores hold bytes, never text) with :class:`InvalidValueError`, as is a file-like
    that yields ``str``. Errors raised by the source while it is read propagate unchanged,
    so a backend that reads the whole source before committing leaves the old value.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return _single_chunk(bytes(data))
    if isinstance(data, str):
        raise InvalidValueError("store data is bytes; encode str before storing it")
    if isinstance(data, io.TextIOBase):
        raise InvalidValueError("store data is bytes; open files in binary mode ('rb')")
    read = getattr(data, "read", None)
    if callable(read):
        return _read_chunks(read, buffer_size)
    if isinstance(data, Iterable):
        return _checked_chunks(data)
    raise InvalidValueError(
        f"data must be bytes, a binary file-like or an iterable of bytes, not {type(data).__name__}"
    )


def _single_chunk(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


def _read_chunks(read: Any, buffer_size: int) -> Iterator[bytes]:
    if buffer_size <= 0:
        raise InvalidValueError(f"buffer_size must be positive, not {buffer_size}")
    while True:
        chunk = read(buffer_size)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidValueError(
                f"the data stream returned {type(chunk).__name__}, not bytes; "
                "open files in binary mode"
            )
        yield bytes(chunk)


def _checked_chunks(chunks: Iterable[object]) -> Iterator[bytes]:
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidValueError(f"data chunks must be bytes-like, not {type(chunk).__name__}")
        if chunk:
            yield bytes(chunk)
