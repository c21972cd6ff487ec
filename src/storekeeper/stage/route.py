"""Routes: where each staged document type lives in the store, as attributes of a stage.

A :class:`Route` is a descriptor on a :class:`~storekeeper.stage.BaseStage` subclass. Its
*key_spec* is a sequence of format strings, one per key component; the components are
escaped (see :func:`escape_component`) and joined with ``/``. One component carries
``{session.identifier}``: every session writes its own copy there, and reading merges
all copies. Positional fields ``{0}``, ``{1}``, ... (one per component, before the
session's) make the route a :class:`Directory`, a mapping per level.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload
from urllib.parse import quote, unquote

from storekeeper.stage.document import MergeableDocument

if TYPE_CHECKING:
    from storekeeper.stage.stage import BaseStage

__all__ = [
    "Directory",
    "KeySpec",
    "Route",
    "compile_format_to_pattern",
    "escape_component",
    "join_key",
    "unescape_component",
]

_D = TypeVar("_D", bound=MergeableDocument)
_FORMATTER = string.Formatter()


def compile_format_to_pattern(format_string: str) -> re.Pattern[str]:
    """An anchored regular expression matching what *format_string* formats to: every
    replacement field becomes ``(.*?)``, literal text (``{{``/``}}`` included) is
    escaped. ``'string{0}like{1}this{{2}}'`` gives ``^string(.*?)like(.*?)this\\{2\\}$``."""
    if not isinstance(format_string, str):
        raise TypeError(f"expected a format string, not {type(format_string)!r}")
    parts = ["^"]
    for literal, field, _, _ in _FORMATTER.parse(format_string):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append("(.*?)")
    parts.append("$")
    return re.compile("".join(parts))


def escape_component(component: str) -> str:
    """*component* made safe as one part of a ``/``-joined key, reversibly
    (percent-encoding ``/``, ``%`` and other characters outside a safe set)."""
    return quote(component, safe="@:+,=!$&'()*;")


def unescape_component(name: str) -> str:
    """The component :func:`escape_component` turned into *name*."""
    return unquote(name)


def join_key(components: Sequence[str]) -> str:
    """The store key of a sequence of components."""
    return "/".join(map(escape_component, components))


def _check_document(document_type: type, document: object) -> None:
    if not isinstance(document, document_type):
        raise TypeError(f"this route holds {document_type.__name__} documents, not {document!r}")


def _fields(component: str) -> list[str]:
    return [f for _, f, _, _ in _FORMATTER.parse(component) if f is not None]


class KeySpec:
    """A parsed key spec: which component carries the session (``session_index``) and
    which the directory levels (``levels``); ValueError/TypeError for a spec a route
    cannot use."""

    def __init__(self, key_spec: Sequence[str]) -> None:
        if isinstance(key_spec, str) or not isinstance(key_spec, Sequence):
            raise TypeError(f"key_spec must be a sequence of format strings, not {key_spec!r}")
        if not key_spec or not all(isinstance(c, str) for c in key_spec):
            raise TypeError("key_spec must be a non-empty sequence of format strings")
        self.components = tuple(key_spec)
        self.session_index = -1
        self.levels: list[int] = []
        for index, component in enumerate(self.components):
            self._parse(index, component)
        if self.session_index < 0:
            raise ValueError(f"key_spec {key_spec!r} has no {{session.identifier}} component")
        self._patterns = [compile_format_to_pattern(c) for c in self.components]
        self._weight = sum(
            len(text) for c in self.components for text, _, _, _ in _FORMATTER.parse(c)
        )

    def _parse(self, index: int, component: str) -> None:
        fields = _fields(component)
        sessions = [f for f in fields if f.split(".")[0] == "session"]
        positions = [f for f in fields if f not in sessions]
        if sessions and (positions or len(sessions) > 1 or self.session_index >= 0):
            raise ValueError(f"one component must carry the session, alone: {component!r}")
        if sessions:
            self.session_index = index
        elif positions:
            if len(positions) > 1 or not positions[0].isdigit() or self.session_index >= 0:
                raise ValueError(
                    f"a directory level is one positional field before the session: {component!r}"
                )
            if int(positions[0]) != len(self.levels):
                raise ValueError(f"positional fields must be numbered in order: {component!r}")
            self.levels.append(index)

    def claim(self, components: Sequence[str]) -> tuple[int, str] | None:
        """How specifically this spec matches the complete key *components* (unescaped):
        the length of its literal text and the session part, or ``None`` if no key of
        this spec looks like that.

        Session identifiers may hold ``.``, so the specs ``doc.{session.identifier}``
        and ``doc.extra.{session.identifier}`` both match ``doc.extra.x``; a stage gives
        such a key to the spec that claims it with more literal text."""
        if len(components) != len(self.components):
            return None
        session = ""
        for index, (pattern, name) in enumerate(zip(self._patterns, components, strict=True)):
            match = pattern.match(name)
            if match is None:
                return None
            if index == self.session_index:
                session = match.group(1)
        return self._weight, session

    def format(self, index: int, indices: Sequence[str], session: object) -> str:
        """Component *index* formatted with the directory *indices* and *session*."""
        return self.components[index].format(*indices, session=session)


class Route(Generic[_D]):
    """Routes *document_type* (a :class:`MergeableDocument` subclass) to *key_spec*.

    Without positional fields, the attribute reads the merged document (``None`` when
    none exists) and assigning writes the current session's copy; with positional
    fields it is a :class:`Directory`. Both need an open transaction (``with stage:``).
    """

    def __init__(self, document_type: type[_D], key_spec: Sequence[str]) -> None:
        if not (isinstance(document_type, type) and issubclass(document_type, MergeableDocument)):
            raise TypeError(f"expected a MergeableDocument subclass, not {document_type!r}")
        self.document_type = document_type
        self.key_spec = list(key_spec) if not isinstance(key_spec, str) else key_spec
        self.spec = KeySpec(key_spec)

    @overload
    def __get__(self, stage: None, owner: type) -> Route[_D]: ...
    @overload
    def __get__(self, stage: BaseStage, owner: type) -> Any: ...
    def __get__(self, stage: BaseStage | None, owner: type) -> Any:
        if stage is None:
            return self
        if self.spec.levels:
            return Directory(stage, self.document_type, self.key_spec, (), [])
        key = [self.spec.format(i, (), stage.session) for i in range(self.spec.session_index)]
        return stage.read_merged_document(self.document_type, self.key_spec, key)

    def __set__(self, stage: BaseStage, document: _D) -> None:
        if self.spec.levels:
            raise AttributeError("cannot set the directory")
        _check_document(self.document_type, document)
        spec = self.spec
        key = [spec.format(i, (), stage.session) for i in range(len(spec.components))]
        stage.check_own_key(spec, key)
        stage.write(key, document)


class Directory(Mapping[str, Any], Generic[_D]):
    """One level of a routed key path: index -> deeper :class:`Directory`, or document.

    Built by :class:`Route`, not directly. Iteration, ``len`` and ``in`` cover the
    level's indices in key order, including those written in the open transaction and
    leaving out deleted documents -- and, above the last level, indices below which
    every document was deleted; a missing level is empty. ``directory[i] = doc`` writes
    the current session's copy; ``del directory[i]`` writes a tombstone to it, after
    which (in this transaction, and in every session that reads the copies) reading
    ``directory[i]`` raises KeyError until a document is assigned there again. Reading
    ``in``, ``len`` or iterating counts as reading the copies for the session's clock.
    Assigning a document where the document is deleted re-adds it, whatever the object's
    origin (built by its constructor, read from that key before the delete or from
    another key, or copied): it is stamped after every copy already there, written with
    every field as it shows at the assignment, seen at once in the transaction, and wins
    over every delete that was in the store. Assigning a read document where the
    document exists is an edit of the fields changed since the read.
    """

    def __init__(
        self,
        stage: BaseStage,
        document_type: type[_D],
        key_spec: Sequence[str],
        indices: Sequence[str],
        key: Sequence[str],
    ) -> None:
        self.stage = stage
        self.document_type = document_type
        self.key_spec = key_spec
        self.spec = KeySpec(key_spec)
        self.indices = tuple(indices)
        level = len(self.indices)
        if level >= len(self.spec.levels):
            raise ValueError("key seems already complete")
        self.level_index = self.spec.levels[level]
        # The key up to this level: the literal components before it, formatted.
        first = self.spec.levels[level - 1] + 1 if level else 0
        self.key = list(key) + [
            self.spec.format(i, self.indices, stage.session) for i in range(first, self.level_index)
        ]
        self.pattern = compile_format_to_pattern(self.spec.components[self.level_index])

    def _last_level(self) -> bool:
        return len(self.indices) + 1 == len(self.spec.levels)

    def _candidates(self) -> list[str]:
        """The indices with keys at this level (the open transaction's included), in
        order, whether or not a document below them still exists."""
        found = set()
        for name in self.stage.list_level(self.key):
            match = self.pattern.match(name)
            if match is not None:
                found.add(match.group(1))
        return sorted(found)

    def _holds(self, index: str) -> bool:
        """Whether a document that exists (not deleted, as this transaction sees it) is
        at *index*, or anywhere below it when this is not the last level."""
        if self._last_level():
            return self.stage.document_exists(self.spec, self._complete(index))
        key, _ = self._descend(index)
        below = Directory(
            self.stage, self.document_type, self.key_spec, (*self.indices, index), key
        )
        return any(below._holds(i) for i in below._candidates())

    def __iter__(self) -> Iterator[str]:
        return iter([index for index in self._candidates() if self._holds(index)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _descend(self, index: str) -> tuple[list[str], bool]:
        """The key of *index*'s level (up to the session component when complete)."""
        if not isinstance(index, str):
            raise TypeError(f"directory indices are str, not {type(index)!r}")
        indices = (*self.indices, index)
        component = self.spec.format(self.level_index, indices, self.stage.session)
        return [*self.key, component], len(indices) == len(self.spec.levels)

    def _complete(self, index: str) -> list[str]:
        key, _ = self._descend(index)
        spec, indices = self.spec, (*self.indices, index)
        rest = range(self.level_index + 1, spec.session_index)
        return key + [spec.format(i, indices, self.stage.session) for i in rest]

    def __getitem__(self, index: str) -> Any:
        key, complete = self._descend(index)
        if not complete:
            return Directory(
                self.stage, self.document_type, self.key_spec, (*self.indices, index), key
            )
        document = self.stage.read_merged_document(
            self.document_type, self.key_spec, self._complete(index)
        )
        if document is None:
            raise KeyError(index)
        return document

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, str):
            return False
        return self._holds(index)

    def _full_key(self, index: str) -> list[str]:
        if not self._last_level():
            raise TypeError(f"{self!r}[{index!r}] is a directory; index it further")
        indices = (*self.indices, index)
        return [
            self.spec.format(i, indices, self.stage.session)
            for i in range(len(self.spec.components))
        ]

    def __setitem__(self, index: str, document: _D) -> None:
        self._descend(index)
        _check_document(self.document_type, document)
        key = self._full_key(index)
        self.stage.check_own_key(self.spec, key)
        self.stage.write(key, document)

    def __delitem__(self, index: str) -> None:
        self._descend(index)
        if not self.stage.delete_document(self.document_type, self.key_spec, self._complete(index)):
            raise KeyError(index)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.key!r}>"
