"""The index of :mod:`storekeeper.backends.static`: which keys can be file paths, and
the parsing of ``index.json`` and ``digests.json`` (damage of either is a
:class:`~storekeeper.errors.CorruptFileError` naming the file).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from storekeeper.errors import CorruptFileError
from storekeeper.store.backend import Metadata, encode_metadata

__all__ = [
    "EMPTY",
    "MAX_SEGMENT",
    "Index",
    "data_segments",
    "layout_problem",
    "parse_digests",
    "parse_index",
]

# Under the public module's name: that is where users look for these warnings.
_log = logging.getLogger("storekeeper.backends.static")

#: The longest file name common file systems take, in bytes of UTF-8.
MAX_SEGMENT = 255


def layout_problem(key: str) -> str | None:
    """Why *key* cannot be a file path under ``data/`` (``None`` if it can).

    A key is split at ``/``; every segment must be non-empty, neither ``.`` nor ``..``,
    and at most 255 bytes of UTF-8. Clashes between keys (``a`` beside ``a/b``) are a
    property of a set of keys: see :func:`storekeeper.export.layout_problems`.
    """
    for segment in key.split("/"):
        if not segment:
            return "it has an empty path segment (a leading, trailing or doubled '/')"
        if segment in (".", ".."):
            return f"it has a {segment!r} path segment"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT:
            return f"a path segment is longer than {MAX_SEGMENT} bytes"
    return None


def data_segments(key: str) -> list[str]:
    """The path segments of *key*'s data file under ``data/``; ``ValueError`` (naming
    the reason) for a key that cannot be laid out (see :func:`layout_problem`)."""
    problem = layout_problem(key)
    if problem is not None:
        raise ValueError(f"key {key!r} cannot be a file path: {problem}")
    return key.split("/")


@dataclass(frozen=True, slots=True)
class Index:
    """One reading of ``index.json``: never changed, replaced whole."""

    texts: dict[str, str]  # key -> metadata as compact JSON
    parsed: dict[str, Metadata]
    keys: list[str]  # sorted
    generation: str | None = None  # the export's name, None for a tree without one
    data_prefix: str = ""  # where this index's data files are (URL, or path for file:)
    digests: dict[str, str] | None = None  # key -> data digest, None where not known


EMPTY = Index({}, {}, [])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _load(raw: bytes, source: str) -> Any:
    """The JSON document in *raw*, read from *source*."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{source} is not a JSON document: {exc}") from None
    except RecursionError:  # the decoder recurses per nesting level: hostile depth
        raise CorruptFileError(f"{source} holds JSON nested too deeply") from None


def parse_index(raw: bytes, source: str) -> Index:
    """The index in *raw* (the bytes of ``index.json`` read from *source*)."""
    document = _load(raw, source)
    if not isinstance(document, dict):
        raise CorruptFileError(f"{source} is not a JSON object of key -> metadata")
    texts: dict[str, str] = {}
    parsed: dict[str, Metadata] = {}
    for key, metadata in document.items():
        if not isinstance(metadata, dict):
            raise CorruptFileError(f"{source}: the metadata of {key!r} is not a JSON object")
        problem = "it holds NUL" if "\x00" in key or not key else layout_problem(key)
        if problem is not None:
            _log.warning("%s: ignoring key %r: %s", source, key, problem)
            continue
        texts[key] = encode_metadata(metadata)
        parsed[key] = metadata
    return Index(texts, parsed, sorted(texts))


def parse_digests(raw: bytes, source: str) -> dict[str, str]:
    """The key -> data digest map in *raw* (the bytes of ``digests.json`` read from
    *source*)."""
    document = _load(raw, source)
    if not isinstance(document, dict) or not all(
        isinstance(digest, str) for digest in document.values()
    ):
        raise CorruptFileError(f"{source} is not a JSON object of key -> digest")
    return document
