"""Staged document types: declared like dataclasses, stored as JSON, merged as a join.

Declare a document with annotations, as a dataclass::

    class Entry(Element):
        id: str
        title: str = ""
        tags: list[str] = dataclasses.field(default_factory=list)

    class Feed(MergeableDocument):
        id: str
        title: str = ""
        entries: Entities[Entry] = entities(key="id")

and build it with keywords: ``Feed(id="x", title="Example")``.

How fields merge (each session writes only its own copy; reading merges every copy):

- A field keeps its newest write, by ``(clock time, session id)``: last writer wins.
  A field never assigned in a session is not a write, so a freshly built object does
  not erase what other sessions wrote; nor does a default.
- A nested :class:`Element` merges field by field; assigning ``None`` deletes it.
- ``Entities[T]`` fields are mutable mappings from entity id to entity, merged entity by
  entity. ``del`` leaves a tombstone, so another session's older copy cannot bring the
  entity back, while assigning the entity again after the delete wins -- "after" as the
  session's clock sees it: a session that read the delete stamps the re-add after it,
  however skewed the wall clocks (see :mod:`storekeeper.stage.session`).
- ``list`` fields of ``str``/``int``/``float``/``bool`` are grow-only ordered unions:
  items added anywhere appear everywhere, in the order they were added; removing an
  item from the list is not a write.
- Other fields hold a JSON value (``datetime`` fields a time) replaced as a whole.

The merge is a join (commutative, associative, idempotent), so all sessions converge on
the same document whatever order they read the copies in. For people porting libearth
code: there is no XML, and no ``__merge_entities__`` hook -- a custom merge could break
the join, so there is none.
"""

from __future__ import annotations

import copy
from collections.abc import ItemsView, Iterator, MutableMapping, ValuesView
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any, Generic, NamedTuple, Self, TypeVar

from storekeeper.stage._lattice import (
    Slot,
    Stamp,
    State,
    alive,
)
from storekeeper.stage._schema import FieldSpec, Kind, entities, field_specs
from storekeeper.stage.session import Revision, RevisionSet

__all__ = [
    "Element",
    "Entities",
    "MergeableDocument",
    "MergeableDocumentElement",
    "entities",
]

_E = TypeVar("_E", bound="Element")
_SCALAR = Kind.SCALAR
_MUTABLE = (list, dict)
_D = TypeVar("_D", bound="MergeableDocument")


_FIELDS: dict[type, dict[str, FieldSpec]] = {}


def fields_of(cls: type) -> dict[str, FieldSpec]:
    """The declared fields of the element type *cls* (resolved once, then cached)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = field_specs(cls, Element, Entities)
    return found


def encode_value(spec: FieldSpec, value: Any) -> Any:
    """A field's value in its JSON form (a copy of a list or dict)."""
    if spec.kind is Kind.DATETIME and isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{spec.name}: times must be timezone-aware, not {value!r}")
        return value.isoformat()
    if isinstance(value, list | dict):
        _check_keys(spec.name, value)
        return copy.deepcopy(value)
    return value


def _check_keys(name: str, value: Any) -> None:
    """TypeError if a dict inside *value* has a key that is not a ``str``: JSON would
    turn ``{1: 'a'}`` into ``{'1': 'a'}`` (and merge ``1`` with ``'1'``), so the copy
    other sessions read would differ from the document written."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{name}: dict keys must be str, not {key!r}")
            _check_keys(name, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(name, item)


_DYNAMIC: Any = object()


class _Plan(NamedTuple):
    """How to build an element of one type from its state: each field with its default
    when that is an immutable value (else a marker: made each time); for types whose
    fields are all scalars with such defaults, those defaults as one dict (``flat``)
    and the names of the time fields."""

    fields: list[tuple[str, FieldSpec, Any]]
    flat: dict[str, Any] | None
    times: list[str]


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    found = _PLANS.get(cls)
    if found is None:
        fields = []
        for name, spec in fields_of(cls).items():
            static = _DYNAMIC
            if spec.kind is not Kind.ENTITIES and spec.factory is None:
                default = spec.make_default()
                if default is None or type(default) in (str, int, float, bool, bytes):
                    static = default
            fields.append((name, spec, static))
        scalar = all(
            spec.kind in (Kind.SCALAR, Kind.DATETIME) and static is not _DYNAMIC
            for _, spec, static in fields
        )
        flat = {name: static for name, _, static in fields} if scalar else None
        times = [name for name, spec, _ in fields if spec.kind is Kind.DATETIME]
        found = _PLANS[cls] = _Plan(fields, flat, times)
    return found


def decode_value(spec: FieldSpec, value: Any) -> Any:
    """A field's value as the attribute shows it, from its JSON form (a copy)."""
    if spec.kind is Kind.DATETIME and isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(value, list | dict):
        return copy.deepcopy(value)
    return value


class Element:
    """A typed JSON object whose fields merge as the module docstring says.

    Subclasses declare fields with annotations; the constructor takes them as keywords
    (a field not given gets its default, or ``None``, and counts as never written).
    Equality compares the fields' current values.
    """

    _state: State
    #: The fields assigned since the last revise: none until the first assignment (an
    #: element read from a store gets its own set only then; a feed has many entries).
    _assigned: AbstractSet[str] = frozenset()

    def __init__(self, **values: Any) -> None:
        specs = fields_of(type(self))
        unknown = set(values) - set(specs)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        object.__setattr__(self, "_state", {})
        for name, spec in specs.items():
            if name in values:
                setattr(self, name, values[name])
            elif spec.kind is Kind.ENTITIES:
                object.__setattr__(self, name, Entities(spec, {}))
            else:
                object.__setattr__(self, name, spec.make_default())

    def __setattr__(self, name: str, value: Any) -> None:
        spec = fields_of(type(self)).get(name)
        if spec is not None:
            value = _checked(spec, value)
            assigned = self.__dict__.get("_assigned")
            if assigned is None:
                assigned = self.__dict__["_assigned"] = set()
            assigned.add(name)
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in fields_of(type(self)))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields_of(type(self)))
        return f"{type(self).__name__}({shown})"

    @classmethod
    def _from_state(cls, state: State) -> Self:
        self = object.__new__(cls)
        values = self.__dict__
        plan = _plan(cls)
        if plan.flat is not None:
            # Every field a scalar with an immutable default (feed entries): one pass.
            values.update(plan.flat)
            for name, register in state.items():
                value = register[1]
                values[name] = copy.deepcopy(value) if type(value) in _MUTABLE else value
            for name in plan.times:
                if type(values[name]) is str:
                    values[name] = datetime.fromisoformat(values[name])
        else:
            for name, spec, static in plan.fields:
                register = state.get(name)
                if register is None and static is not _DYNAMIC:
                    values[name] = static
                else:
                    values[name] = materialize(spec, register)
        values["_state"] = state
        return self


def _checked(spec: FieldSpec, value: Any) -> Any:
    kind = spec.kind
    if kind is Kind.ENTITIES:
        if isinstance(value, Entities):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{spec.name} takes a mapping of entities, not {type(value)!r}")
        fresh: Entities[Any] = Entities(spec, {})
        for key, entity in value.items():
            fresh[key] = entity
        return fresh
    if kind is Kind.ELEMENT and value is not None and not isinstance(value, spec.item):
        raise TypeError(f"{spec.name} takes a {spec.item.__name__} or None")
    return value


def materialize(spec: FieldSpec, register: Any) -> Any:
    """A field's value as the attribute shows it, from its register (``None``: its
    default)."""
    kind = spec.kind
    if kind is Kind.ENTITIES:
        return Entities(spec, register or {})
    if register is None:
        return spec.make_default()
    if kind is Kind.SCALAR or kind is Kind.DATETIME:
        return decode_value(spec, register[1])
    if kind is Kind.LIST:
        return [item for item, _ in sorted(register.items(), key=lambda pair: pair[1])]
    return spec.item._from_state(register.state) if alive(register) else None


class Entities(MutableMapping[str, _E], Generic[_E]):
    """The value of an ``Entities[T]`` field: entity id -> entity, in id order.

    Assigning ``mapping[id] = entity`` adds (or re-adds) the entity, setting its key field
    to *id* when unset (a different one raises ValueError); ``del`` deletes it, leaving a
    tombstone; changing an entity's fields in place is an edit of those fields only.
    """

    def __init__(self, spec: FieldSpec, slots: dict[str, Slot]) -> None:
        self._spec = spec
        self._slots = slots
        self._cache: dict[str, _E] = {}
        self._added: dict[str, _E] = {}
        self._deleted: set[str] = set()

    def __getitem__(self, key: str) -> _E:
        found = self._added.get(key)
        if found is not None:
            return found
        found = self._cache.get(key)
        if found is not None:
            return found
        slot = self._slots.get(key)
        if slot is None or key in self._deleted or not alive(slot):
            raise KeyError(key)
        entity: _E = self._spec.item._from_state(slot.state)
        self._cache[key] = entity
        return entity

    def __setitem__(self, key: str, entity: _E) -> None:
        item = self._spec.item
        if not isinstance(key, str):
            raise TypeError(f"entity ids are str, not {type(key)!r}")
        if not isinstance(entity, item):
            raise TypeError(f"expected a {item.__name__}, not {type(entity)!r}")
        own = getattr(entity, self._spec.key, None)
        if own is None:
            setattr(entity, self._spec.key, key)
        elif own != key:
            raise ValueError(f"entity {self._spec.key}={own!r} stored under {key!r}")
        self._deleted.discard(key)
        self._cache.pop(key, None)
        self._added[key] = entity

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._added.pop(key, None)
        self._cache.pop(key, None)
        self._deleted.add(key)

    def __contains__(self, key: object) -> bool:
        if key in self._added:
            return True
        slot = self._slots.get(key)  # type: ignore[call-overload]
        return slot is not None and key not in self._deleted and alive(slot)

    def __iter__(self) -> Iterator[str]:
        keys = {k for k, s in self._slots.items() if alive(s) and k not in self._deleted}
        return iter(sorted(keys.union(self._added)))

    def values(self) -> ValuesView[_E]:
        """The entities, in id order (built together on first use: a reader usually
        walks them all)."""
        self._materialize_all()
        return super().values()

    def items(self) -> ItemsView[str, _E]:
        """``(id, entity)`` pairs, in id order."""
        self._materialize_all()
        return super().items()

    def _materialize_all(self) -> None:
        cache, build = self._cache, self._spec.item._from_state
        for key, slot in self._slots.items():
            absent = key not in cache and key not in self._added
            if absent and alive(slot) and key not in self._deleted:
                cache[key] = build(slot.state)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entities | dict):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Entities({dict(self.items())!r})"


class MergeableDocument(Element):
    """A document that sessions revise and merge: an :class:`Element` with a
    ``__revision__`` (a :class:`Revision`, or ``None`` before the first revise) and
    ``__base_revisions__`` (a :class:`RevisionSet` of what it was merged from)."""

    __revision__: Revision | None
    __base_revisions__: RevisionSet
    # The document's own slot stamps (created / deleted) and compaction floor.
    _added: Stamp | None
    _deleted: Stamp | None
    _floor: Stamp | None
    _fresh: bool

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        init_document(self, None, None, None, fresh=True)

    @classmethod
    def _from_state(cls, state: State) -> Self:
        self = super()._from_state(state)
        init_document(self, None, None, None, fresh=False)
        return self


#: libearth's name for :class:`MergeableDocument`.
MergeableDocumentElement = MergeableDocument


def init_document(
    doc: MergeableDocument,
    added: Stamp | None,
    deleted: Stamp | None,
    floor: Stamp | None,
    *,
    fresh: bool,
) -> None:
    """Set *doc*'s revision attributes, slot stamps and freshness (a fresh document,
    built by its constructor, counts as created when it is first revised)."""
    object.__setattr__(doc, "__revision__", None)
    object.__setattr__(doc, "__base_revisions__", RevisionSet())
    object.__setattr__(doc, "_added", added)
    object.__setattr__(doc, "_deleted", deleted)
    object.__setattr__(doc, "_floor", floor)
    object.__setattr__(doc, "_fresh", fresh)
