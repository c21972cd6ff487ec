"""Field declarations of staged document types: what kind of merge each field gets.

The kind of a field follows from its annotation (resolved on first use, so classes may
refer to each other): ``Entities[T]`` -> per-entity merge, an :class:`Element` subclass
(optionally ``| None``) -> nested merge, ``list`` of ``str``/``int``/``float``/``bool`` ->
grow-only ordered union, ``datetime`` -> a time kept as ISO text, anything else -> a
JSON value replaced as a whole (last writer wins).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["EntitiesDefault", "FieldSpec", "Kind", "entities", "field_specs"]


class Kind(enum.Enum):
    """How a field merges."""

    SCALAR = "scalar"
    DATETIME = "datetime"
    LIST = "list"
    ELEMENT = "element"
    ENTITIES = "entities"


_MISSING: Any = dataclasses.MISSING
_LIST_ITEMS = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class EntitiesDefault:
    """The default of an ``Entities[T]`` field, made by :func:`entities`: *key* names
    the entity type's field holding each entity's id."""

    key: str = "id"


def entities(key: str = "id") -> Any:
    """Declare an ``Entities[T]`` field: ``entries: Entities[Entry] = entities(key="id")``.
    Each entity's id is its field *key* (a ``str``)."""
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"the entity key must name a field, not {key!r}")
    return EntitiesDefault(key)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared field: *name*, merge *kind*, *item* (the element type of ELEMENT
    and ENTITIES fields), *key* (the entity id field) and its default."""

    name: str
    kind: Kind
    item: Any
    key: str
    default: Any
    factory: Callable[[], Any] | None

    def make_default(self) -> Any:
        """A fresh default value (never shared between instances): the declared
        default, else an empty list for a list field and ``None`` for any other."""
        if self.factory is not None:
            return self.factory()
        if self.default is _MISSING:
            return [] if self.kind is Kind.LIST else None
        if isinstance(self.default, list | dict | set):
            return copy.deepcopy(self.default)
        return self.default


def _strip_optional(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _kind(hint: Any, element_base: type, entities_type: type) -> tuple[Kind, type | None]:
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if origin is entities_type:
        (item,) = typing.get_args(hint)
        if not (isinstance(item, type) and issubclass(item, element_base)):
            raise TypeError(f"Entities[...] takes an Element subclass, not {item!r}")
        return Kind.ENTITIES, item
    if isinstance(hint, type) and issubclass(hint, element_base):
        return Kind.ELEMENT, hint
    if hint is datetime:
        return Kind.DATETIME, None
    if origin is list:
        args = typing.get_args(hint)
        if len(args) == 1 and args[0] in _LIST_ITEMS:
            return Kind.LIST, None
    return Kind.SCALAR, None


def field_specs(cls: type, element_base: type, entities_type: type) -> dict[str, FieldSpec]:
    """The fields *cls* declares (its annotations and its bases', private and
    ``ClassVar`` names left out), in declaration order."""
    hints = typing.get_type_hints(cls)
    specs: dict[str, FieldSpec] = {}
    for klass in reversed(cls.__mro__):
        for name in getattr(klass, "__annotations__", {}):
            if name.startswith("_") or name not in hints:
                continue
            hint = hints[name]
            if typing.get_origin(hint) is typing.ClassVar or hint is typing.ClassVar:
                continue
            specs[name] = _spec(cls, name, hint, element_base, entities_type)
    return specs


def _spec(cls: type, name: str, hint: Any, element_base: type, entities_type: type) -> FieldSpec:
    kind, item = _kind(hint, element_base, entities_type)
    declared = getattr(cls, name, _MISSING)
    default, key = declared, "id"
    factory: Callable[[], Any] | None = None
    if isinstance(declared, dataclasses.Field):
        default = declared.default
        made: Any = declared.default_factory
        factory = None if made is _MISSING else made
    if isinstance(default, EntitiesDefault):
        key, default = default.key, _MISSING
    if kind is Kind.ENTITIES and (default is not _MISSING or factory is not None):
        raise TypeError(f"{cls.__name__}.{name}: declare Entities fields with entities(key=...)")
    return FieldSpec(name, kind, item, key, default, factory)
