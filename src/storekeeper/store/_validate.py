"""Validation of keys, metadata and data sources, shared by every backend.

Everything a caller hands to a store passes through here before anything is written, so
bad input fails with a specific error and leaves stored data untouched.
"""

from __future__ import annotations

import io
import json
import json.encoder
import json.scanner
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from storekeeper._nonblocking import read_chunk
from storekeeper.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidValueError,
)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "MAX_METADATA_DEPTH",
    "check_batch_keys",
    "check_buffer_size",
    "check_conditions",
    "check_json_value",
    "check_key",
    "check_keys",
    "check_pattern",
    "check_read",
    "check_select",
    "check_types",
    "check_write",
    "copy_metadata",
    "decode_metadata",
    "encodable",
    "encode_metadata",
    "iter_source",
    "pick_metadata",
    "select_metadata",
]

#: The default chunk size for streaming reads and writes (1 MiB).
DEFAULT_BUFFER_SIZE = 1048576

#: The deepest metadata a store holds: the metadata dict is level 1 and each list, tuple
#: or dict inside it one level more. Deeper (or circular) metadata is refused before
#: json's encoder sees it. The encoder recurses once per level, in C, up to the
#: interpreter's recursion limit: a garbage collection that starts down there (any
#: allocation can start one) runs every pending finalizer (``__del__``, weakref
#: callbacks, generators being closed: any object's, not the store's) with no stack
#: left, so each fails with RecursionError and is lost as an "unraisable" exception. A
#: fixed bound keeps encoding (and decoding what was stored) far from that limit, and
#: answers the same whatever the caller's own stack depth.
MAX_METADATA_DEPTH = 128

Metadata = dict[str, Any]

# (typeshed types the scanner's context loosely; json itself passes its decoder, as here.)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_CEncoder = Callable[[object, int], Sequence[str]]


def _build_c_encoder(make: object) -> _CEncoder | None:
    """The C encoder that ``_ENCODER.encode`` builds on every call, built once by *make*
    (``json.encoder.c_make_encoder``, a private API), or ``None`` to use ``_ENCODER``.

    ``None`` when *make* is missing (no C module), refuses these arguments or encodes a
    probe differently from ``_ENCODER`` (its signature changed): :func:`encode_metadata`
    then takes the public path, which writes the same text. Without a markers dict the C
    encoder does not look for cycles: :func:`_check_nesting` refuses circular values first.
    """
    if not callable(make):
        return None
    probe = {"a": [1, -2.5, None, True, "\u00e9\n"], "b": {"c": ""}, "": ()}
    try:  # json.encoder's order: markers, default, encoder, indent, key and item separators,
        # sort_keys, skipkeys, allow_nan
        encode = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )
        text = "".join(encode(probe, 0))
    except Exception:  # noqa: BLE001 - any failure of a private API means: do without it
        return None
    if text != _ENCODER.encode(probe) or _accepts_nan(encode):
        return None
    return cast(_CEncoder, encode)


def _accepts_nan(encode: _CEncoder) -> bool:
    """Whether *encode* writes NaN (metadata must refuse it, as ``allow_nan=False`` does)."""
    try:
        encode({"a": float("nan")}, 0)
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - a different failure is a changed API too
        return True
    return True


_C_ENCODE = _build_c_encoder(getattr(json.encoder, "c_make_encoder", None))


# Integers below this need no look at their size (json writes at most 4300 digits).
_SMALL_INT = 2**64
# What json encodes as objects and arrays (a tuple, not a union: isinstance is faster).
_CONTAINERS = (dict, list, tuple)
# Types of values with nothing below them (subclasses are looked at more closely).
_LEAVES = frozenset({str, int, float, bool, type(None)})


def check_key(key: object) -> str:
    """Return *key* if it is a valid store key, else raise :class:`InvalidKeyError`.

    A valid key is a non-empty ``str`` without NUL characters or lone surrogates (which
    no text encoding can store). Everything else about a key is the backend's business:
    backends that map keys onto restricted namespaces (file names, URLs) encode them
    reversibly.
    """
    if type(key) is not str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"store keys are str, not {type(key).__name__}: {key!r}")
        key = str(key)
    if not key:
        raise InvalidKeyError("store keys must not be empty")
    if "\x00" in key:
        raise InvalidKeyError(f"store keys must not contain NUL characters: {key!r}")
    if not key.isascii() and not encodable(key):  # isascii reads a flag: no scan
        raise InvalidKeyError(f"store keys must not contain lone surrogates: {key!r}")
    return key


def check_write(
    key: object,
    if_version: object = None,
    if_exists: object = None,
    buffer_size: object = DEFAULT_BUFFER_SIZE,
) -> str:
    """:func:`check_key` for a single-key write, plus :func:`check_conditions` of its
    preconditions and :func:`check_buffer_size` of its *buffer_size*: every write method
    and ``delete`` starts with it, so wrong input fails before anything is read or
    written. Returns *key*."""
    # The valid case is decided inline (a few `is` tests): this runs before every write.
    if (if_version is not None and type(if_version) is not str) or (
        if_exists is not None and if_exists is not True and if_exists is not False
    ):
        check_conditions(if_version, if_exists)
    return check_read(key, buffer_size)


def check_read(key: object, buffer_size: object) -> str:
    """:func:`check_key` and :func:`check_buffer_size` for a read that takes a
    *buffer_size* (``to_bytes``, ``to_file``), before anything is read, and the key and
    buffer checks of :func:`check_write`. Returns *key*."""
    if type(buffer_size) is not int or buffer_size <= 0:
        check_buffer_size(buffer_size)
    if type(key) is str and key and key.isascii() and "\x00" not in key:
        return key
    return check_key(key)


def check_conditions(if_version: object, if_exists: object) -> None:
    """Raise :class:`InvalidArgumentError` unless *if_version* is ``None`` or a ``str``
    and *if_exists* is ``None``, ``True`` or ``False``.

    Anything else (``if_exists=0``, ``"no"``, ``if_version=3``) is refused rather than
    read as truthy or falsy: a precondition that silently means something else lets a
    write overwrite what it was meant to protect.
    """
    if if_version is not None and not isinstance(if_version, str):
        raise InvalidArgumentError(
            f"if_version is a version str or None, not {type(if_version).__name__}: {if_version!r}"
        )
    if if_exists is not None and if_exists is not True and if_exists is not False:
        raise InvalidArgumentError(
            f"if_exists is True, False or None, not {type(if_exists).__name__}: {if_exists!r}"
        )


def check_batch_keys(keys: object) -> None:
    """Raise :class:`InvalidArgumentError` unless *keys*, the keys argument of a batch
    method (``multiget``, ``multiset``...), is an iterable other than ``str`` or
    ``bytes``: ``multiget("ab")`` would otherwise read the keys ``"a"`` and ``"b"``."""
    if isinstance(keys, str | bytes | bytearray | memoryview) or not isinstance(keys, Iterable):
        raise InvalidArgumentError(
            f"the keys of a batch call are an iterable of keys, not {type(keys).__name__}: {keys!r}"
        )


def check_keys(keys: Sequence[object]) -> None:
    """Raise :class:`InvalidKeyError` for the first invalid key in *keys*, as
    :func:`check_key` would; nothing happens when all are valid."""
    # Whole-list checks run in C; only a list holding a bad key is walked key by key.
    try:
        joined = "".join(keys)  # type: ignore[arg-type]
    except TypeError:  # a key that is not a str
        joined = None
    if (
        joined is not None
        and "\x00" not in joined
        and (joined.isascii() or encodable(joined))
        and all(keys)
    ):
        return
    for key in keys:
        check_key(key)


def check_select(select: object) -> list[str] | None:
    """The metadata names of a ``select`` argument as a list (``None`` stays ``None``).

    *select* is an iterable of ``str``; a single ``str`` (which would be read as its
    characters) or names that are not ``str`` raise :class:`InvalidArgumentError`.
    """
    if select is None:
        return None
    if isinstance(select, str | bytes) or not isinstance(select, Iterable):
        raise InvalidArgumentError(
            f"select is an iterable of metadata names (or None), not {type(select).__name__}: "
            f"{select!r}"
        )
    names = list(select)
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"select holds metadata names (str), not {name!r}")
    return names


def check_pattern(pattern: object) -> str:
    """Return the glob *pattern* if it is a ``str`` that could match a key, else raise
    :class:`InvalidArgumentError` (not a ``str``) or :class:`InvalidKeyError` (a lone
    surrogate, which no key can hold)."""
    if not isinstance(pattern, str):
        raise InvalidArgumentError(
            f"a glob pattern is a str, not {type(pattern).__name__}: {pattern!r}"
        )
    if not pattern.isascii() and not encodable(pattern):
        raise InvalidKeyError(f"glob patterns must not contain lone surrogates: {pattern!r}")
    return pattern


def encodable(text: str) -> bool:
    """Whether *text* has no lone surrogates (it encodes to UTF-8, as files, SQLite and
    JSON text need)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_metadata(metadata: object) -> str:
    """Serialise *metadata* to compact JSON text, validating it on the way.

    Raises :class:`InvalidMetadataError` unless *metadata* is a ``dict`` (or other
    mapping) with ``str`` keys whose values are JSON-representable: ``None``, ``bool``,
    ``int``, finite ``float``, ``str`` (without lone surrogates), and lists/tuples and
    dicts with ``str`` keys thereof, at every depth, nested at most
    :data:`MAX_METADATA_DEPTH` levels. Nothing is ever rewritten: json would turn a
    nested ``{1: "x"}`` into ``{"1": "x"}`` (and merge it with a ``"1"`` entry), so
    non-str keys are refused wherever they are.
    """
    if type(metadata) is dict:
        if not metadata:
            return "{}"
        if _C_ENCODE is not None:
            _check_nesting(metadata)
            return _unicode_checked(_encode_dict(metadata))
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata must be a dict, not {type(metadata).__name__}: {metadata!r}"
        )
    for name in metadata:
        if not isinstance(name, str):
            raise InvalidMetadataError(f"metadata keys must be str, not {name!r}")
    _check_nesting(metadata)
    try:
        text = _ENCODER.encode(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"metadata is not JSON-representable: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMetadataError("metadata is nested too deeply or is circular") from exc
    return _unicode_checked(text)


_STR_ONLY = frozenset({str})


def _unicode_checked(text: str) -> str:
    """*text* (encoded metadata) unless it holds a lone surrogate, which has no UTF-8
    form (ASCII text, the usual case, is told apart in C)."""
    if not text.isascii() and not encodable(text):
        raise InvalidMetadataError("metadata must not contain lone surrogates (not UTF-8)")
    return text


def _check_nesting(metadata: Mapping[Any, Any]) -> None:
    """Raise :class:`InvalidMetadataError` if *metadata* nests lists, tuples and dicts
    deeper than :data:`MAX_METADATA_DEPTH` (circular metadata included) or holds a dict
    with a key that is not a ``str`` at any depth (json would rewrite ``{1: "x"}`` as
    ``{"1": "x"}``). One walk, level by level, without recursing; a container of scalars
    only passes at C speed."""
    values: Iterable[Any] = metadata.values()
    if _LEAVES.issuperset(map(type, values)):
        return
    # Plain loops: metadata usually nests a small dict or list or two, for which a
    # comprehension's or generator's own call would cost more than the walk.
    level: list[Any] = []
    for value in values:
        if isinstance(value, _CONTAINERS):
            level.append(value)
    for _ in range(MAX_METADATA_DEPTH - 1):
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                if not _STR_ONLY.issuperset(map(type, item)):
                    _check_names(item)
                values = item.values()
            else:
                values = item
            if not _LEAVES.issuperset(map(type, values)):
                for value in values:
                    if isinstance(value, _CONTAINERS):
                        below.append(value)
        if not below:
            return
        level = below
    raise InvalidMetadataError(
        f"metadata is nested too deeply (more than {MAX_METADATA_DEPTH} levels of lists "
        "and dicts) or is circular"
    )


def _check_names(nested: dict[Any, Any]) -> None:
    """Raise :class:`InvalidMetadataError` unless every key of the *nested* dict is a str."""
    for name in nested:
        if not isinstance(name, str):
            raise InvalidMetadataError(f"metadata keys must be str at every depth, not {name!r}")


def _encode_dict(metadata: dict[Any, Any]) -> str:
    """:func:`encode_metadata` of a plain ``dict``, through the prebuilt C encoder."""
    assert _C_ENCODE is not None
    for name in metadata:
        if type(name) is not str:
            raise InvalidMetadataError(f"metadata keys must be str, not {name!r}")
    try:
        return "".join(_C_ENCODE(metadata, 0))
    except (TypeError, ValueError) as exc:
        raise InvalidMetadataError(f"metadata is not JSON-representable: {exc}") from exc
    except RecursionError as exc:
        raise InvalidMetadataError("metadata is nested too deeply or is circular") from exc


def check_json_value(value: object, what: str) -> None:
    """Raise :class:`InvalidMetadataError` unless *value* could be stored as a metadata
    value (see :func:`encode_metadata`); *what* names it in the message."""
    if _plain_scalar(value):
        return
    try:
        encode_metadata({"": value})
    except InvalidMetadataError as exc:
        raise InvalidMetadataError(f"{what} is not a JSON value: {exc}") from None


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

    Names in *select* that *metadata* lacks are omitted (not reported as ``None``). A
    *select* that :func:`check_select` refuses raises :class:`InvalidArgumentError`.
    """
    return pick_metadata(metadata, check_select(select))


def _plain_scalar(value: Any) -> bool:
    """Whether *value* is a scalar that is plainly JSON: a quick answer that spares
    most query values an encoding (False only means "look closer")."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii())
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool or (kind is int and -_SMALL_INT < value < _SMALL_INT)


def pick_metadata(metadata: Metadata, names: list[str] | None) -> Metadata:
    """:func:`select_metadata` for *names* that :func:`check_select` returned (queries
    check ``select`` once, then pick from each match)."""
    if names is None:
        return metadata
    return {name: metadata[name] for name in names if name in metadata}


def iter_source(data: object, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Iterator[bytes]:
    """Turn any accepted data source into an iterator of non-empty ``bytes`` chunks.

    Accepted: ``bytes``/``bytearray``/``memoryview``, a readable binary file-like object
    (anything with ``read``), or an iterable of bytes-like chunks. ``str`` is rejected
    (stores hold bytes, never text) with :class:`InvalidValueError`, as is a file-like
    that yields ``str``. Errors raised by the source while it is read propagate unchanged,
    so a backend that reads the whole source before committing leaves the old value. A
    non-blocking stream is read to its end, waiting while it has no data yet; one with no
    descriptor to wait on raises :class:`InvalidValueError` (never read as ended).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return _single_chunk(bytes(data))
    if isinstance(data, str):
        raise InvalidValueError("store data is bytes; encode str before storing it")
    if isinstance(data, io.TextIOBase):
        raise InvalidValueError("store data is bytes; open files in binary mode ('rb')")
    read = getattr(data, "read", None)
    if callable(read):
        check_buffer_size(buffer_size)
        return _read_chunks(data, buffer_size)
    if isinstance(data, Iterable):
        return _checked_chunks(data)
    raise InvalidValueError(
        f"data must be bytes, a binary file-like or an iterable of bytes, not {type(data).__name__}"
    )


def _single_chunk(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


def check_buffer_size(buffer_size: object) -> int:
    """Return *buffer_size* if it is a positive ``int`` (the chunk size of a streamed
    read or write), else raise :class:`InvalidArgumentError`. Every method taking a
    *buffer_size* checks it, even where it reads nothing in chunks (bytes data)."""
    if type(buffer_size) is not int and (
        isinstance(buffer_size, bool) or not isinstance(buffer_size, int)
    ):
        raise InvalidArgumentError(
            f"buffer_size is an int, not {type(buffer_size).__name__}: {buffer_size!r}"
        )
    if buffer_size <= 0:
        raise InvalidArgumentError(f"buffer_size must be positive, not {buffer_size}")
    return int(buffer_size)


def check_types(kind: type[bool | int | float | str], **values: object) -> None:
    """Raise :class:`InvalidArgumentError` unless every one of *values* (named by their
    keyword) is of *kind*: ``bool`` (only ``True`` or ``False``), ``int`` (not a
    ``bool``), ``float`` (an ``int`` or a ``float``, not a ``bool``) or ``str``.

    For constructor options, which are otherwise stored unchecked: ``durable="no"``
    would count as true. Their ranges are left to the constructor (``ValueError``).
    """
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    for name, value in values.items():
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            expected = "a number" if kind is float else kind.__name__
            raise InvalidArgumentError(
                f"{name} is {expected}, not {type(value).__name__}: {value!r}"
            )


def _read_chunks(source: Any, buffer_size: int) -> Iterator[bytes]:
    while True:
        chunk = read_chunk(source, buffer_size)
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
