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
  entity back, while assigning the entity again after the delete wins.
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
from datetime import datetime
from typing import Any, Generic, NamedTuple, Self, TypeVar

from storekeeper.stage._gc import paused_gc
from storekeeper.stage._lattice import (
    Slot,
    Stamp,
    State,
    alive,
    join,
    join_all,
    prune,
)
from storekeeper.stage._schema import FieldSpec, Kind, entities, field_specs
from storekeeper.stage.session import Revision, RevisionSet, Session, from_micros

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


def _encode(spec: FieldSpec, value: Any) -> Any:
    if spec.kind is Kind.DATETIME and isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{spec.name}: times must be timezone-aware, not {value!r}")
        return value.isoformat()
    if isinstance(value, list | dict):
        return copy.deepcopy(value)
    return value


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
    _assigned: set[str]

    def __init__(self, **values: Any) -> None:
        specs = fields_of(type(self))
        unknown = set(values) - set(specs)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        object.__setattr__(self, "_state", {})
        object.__setattr__(self, "_assigned", set())
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
            self._assigned.add(name)
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
                    values[name] = _materialize(spec, register)
        values["_state"] = state
        values["_assigned"] = set()
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


def _materialize(spec: FieldSpec, register: Any) -> Any:
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
        with paused_gc():
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
        _init_document(self, None, None, None, fresh=True)

    @classmethod
    def _from_state(cls, state: State) -> Self:
        self = super()._from_state(state)
        _init_document(self, None, None, None, fresh=False)
        return self


#: libearth's name for :class:`MergeableDocument`.
MergeableDocumentElement = MergeableDocument


def _init_document(
    doc: MergeableDocument,
    added: Stamp | None,
    deleted: Stamp | None,
    floor: Stamp | None,
    *,
    fresh: bool,
) -> None:
    object.__setattr__(doc, "__revision__", None)
    object.__setattr__(doc, "__base_revisions__", RevisionSet())
    object.__setattr__(doc, "_added", added)
    object.__setattr__(doc, "_deleted", deleted)
    object.__setattr__(doc, "_floor", floor)
    object.__setattr__(doc, "_fresh", fresh)


# -- capturing edits -----------------------------------------------------------------


class _Clock:
    """Stamps for one revise: one time, and positions for list items."""

    def __init__(self, micros: int, session: str) -> None:
        self.stamp: Stamp = (micros, session)
        self.position = 0

    def item(self) -> Stamp:
        self.position += 1
        return (self.stamp[0], self.stamp[1], self.position)


def _capture(element: Element, clock: _Clock | None) -> State:
    """*element*'s state with its pending edits stamped by *clock* (its own state,
    unchanged, when it has none; *clock* ``None`` only checks that)."""
    old = element._state
    state = old
    for name, spec in fields_of(type(element)).items():
        register = _capture_field(element, spec, old.get(name), clock)
        if register is not old.get(name):
            if state is old:
                state = dict(old)
            state[name] = register
    return state


class _PendingEditsError(Exception):
    """Raised by a capture without a clock when there are edits to stamp."""


def _capture_field(  # noqa: PLR0911 - one return per kind and case
    element: Element, spec: FieldSpec, register: Any, clock: _Clock | None
) -> Any:
    value = element.__dict__[spec.name]
    assigned = spec.name in element._assigned
    kind = spec.kind
    if kind is Kind.SCALAR or kind is Kind.DATETIME:
        encoded = _encode(spec, value)
        if assigned or (register is not None and register[1] != encoded):
            return _stamped(clock)[0], encoded
        if register is None and value != spec.make_default():
            return _stamped(clock)[0], encoded
        return register
    if kind is Kind.LIST:
        known = register or {}
        new = [item for item in value or () if item not in known]
        if not new:
            return register
        items = dict(known)
        for item in new:
            items[item] = _stamped(clock)[1].item()
        return items
    if kind is Kind.ELEMENT:
        return _capture_slot(spec, value, register, assigned, clock)
    return _capture_entities(value, register, clock)


def _stamped(clock: _Clock | None) -> tuple[Stamp, _Clock]:
    if clock is None:
        raise _PendingEditsError
    return clock.stamp, clock


def _capture_slot(
    spec: FieldSpec,
    value: Element | None,
    register: Slot | None,
    assigned: bool,
    clock: _Clock | None,
) -> Slot | None:
    slot = register or Slot(None, None, {})
    if assigned:
        stamp = _stamped(clock)[0]
        if value is None:
            return Slot(slot.added, stamp, prune(fields_of, spec.item, slot.state, stamp))
        sub = join(fields_of, spec.item, slot.state, _capture(value, clock))
        return Slot(stamp, slot.deleted, sub)
    if value is None:
        return register
    sub = _capture(value, clock)
    return register if sub is slot.state else Slot(slot.added, slot.deleted, sub)


def _capture_entities(
    value: Entities[Any], register: dict[str, Slot] | None, clock: _Clock | None
) -> dict[str, Slot] | None:
    slots = value._slots
    out = slots
    item = value._spec.item
    for key, entity in value._cache.items():
        old = slots[key]
        sub = _capture(entity, clock)
        if sub is not old.state:
            out = dict(out) if out is slots else out
            out[key] = Slot(old.added, old.deleted, sub)
    for key in value._deleted:
        stamp = _stamped(clock)[0]
        old = out.get(key) or Slot(None, None, {})
        out = dict(out) if out is slots else out
        out[key] = Slot(old.added, stamp, prune(fields_of, item, old.state, stamp))
    for key, entity in value._added.items():
        stamp = _stamped(clock)[0]
        old = out.get(key) or Slot(None, None, {})
        out = dict(out) if out is slots else out
        sub = join(fields_of, item, old.state, _capture(entity, clock))
        out[key] = Slot(stamp, old.deleted, sub)
    if out is slots:
        return register
    return out


def _settle(element: Element, state: State) -> None:
    """Make *state* (just written) *element*'s own: its edits are no longer pending, and
    where the join kept another session's newer write, the element shows that."""
    object.__setattr__(element, "_state", state)
    element._assigned.clear()
    for name, spec in fields_of(type(element)).items():
        value = element.__dict__[name]
        register = state.get(name)
        if spec.kind is Kind.ENTITIES:
            _settle_entities(value, register or {})
        elif register is None:
            continue
        elif spec.kind is not Kind.ELEMENT:
            object.__setattr__(element, name, _materialize(spec, register))
        elif not alive(register):
            object.__setattr__(element, name, None)
        elif value is None:
            object.__setattr__(element, name, _materialize(spec, register))
        else:
            _settle(value, register.state)


def _settle_entities(ents: Entities[Any], slots: dict[str, Slot]) -> None:
    ents._slots = slots
    ents._cache.update(ents._added)
    ents._added.clear()
    ents._deleted.clear()
    for key, entity in list(ents._cache.items()):
        slot = slots.get(key)
        if slot is None or not alive(slot):
            del ents._cache[key]
        else:
            _settle(entity, slot.state)


# -- whole documents -----------------------------------------------------------------


class DocState(NamedTuple):
    """A document's full merge state: its own slot stamps (created, deleted), the floor
    of the last compaction that dropped tombstones, and its fields' state."""

    added: Stamp | None
    deleted: Stamp | None
    floor: Stamp | None
    state: State


def document_alive(doc: DocState) -> bool:
    """Whether *doc* exists: never deleted, or created again after its last delete."""
    return doc.deleted is None or (doc.added is not None and doc.added > doc.deleted)


def state_of(doc: MergeableDocument) -> DocState:
    """*doc*'s merge state as last revised (edits not yet revised are not in it)."""
    return DocState(doc._added, doc._deleted, doc._floor, doc._state)


def has_pending(doc: Element) -> bool:
    """Whether *doc* has edits that no revise has stamped yet."""
    if isinstance(doc, MergeableDocument) and doc._fresh:
        return True
    try:
        _capture(doc, None)
    except _PendingEditsError:
        return True
    return False


def _drop_compacted(cls: type, low: DocState, high: DocState) -> State:
    """*low*'s state without the entities a compaction (at *high*'s floor) dropped as
    deleted: absent from *high* and nothing newer than its floor."""
    floor = high.floor
    assert floor is not None
    state = low.state
    for name, spec in fields_of(cls).items():
        slots = state.get(name)
        if spec.kind is not Kind.ENTITIES or not slots:
            continue
        kept = high.state.get(name) or {}
        dropped = [k for k, s in slots.items() if k not in kept and _newest(spec, s) <= floor]
        if dropped:
            state = dict(state) if state is low.state else state
            state[name] = {k: s for k, s in slots.items() if k not in dropped}
    return state


def _newest(spec: FieldSpec, slot: Slot) -> Stamp:
    from storekeeper.stage._lattice import newest_stamp

    stamps = [s for s in (slot.added, slot.deleted) if s is not None]
    inner = newest_stamp(fields_of, spec.item, slot.state)
    if inner is not None:
        stamps.append(inner)
    return max(stamps) if stamps else (0, "")


def join_documents(cls: type, a: DocState, b: DocState) -> DocState:
    """The join of two merge states of document type *cls*."""
    if a is b or a == b:
        return a
    sa, sb = a.state, b.state
    if a.floor != b.floor:
        if b.floor is None or (a.floor is not None and a.floor > b.floor):
            sb = _drop_compacted(cls, b, a)
        else:
            sa = _drop_compacted(cls, a, b)
    state = join(fields_of, cls, sa, sb)
    deleted = _max_stamp(a.deleted, b.deleted)
    if deleted is not None:
        state = prune(fields_of, cls, state, deleted)
    added = _max_stamp(a.added, b.added)
    result = DocState(added, deleted, _max_stamp(a.floor, b.floor), state)
    if result == a:
        return a
    return b if result == b else result


def join_all_documents(cls: type, docs: list[DocState]) -> DocState:
    """The join of every merge state in *docs* (at least one): equal to folding
    :func:`join_documents` over them, faster for many copies."""
    if len(docs) <= 2 or len({d.floor for d in docs}) > 1:
        result = docs[0]
        for doc in docs[1:]:
            result = join_documents(cls, result, doc)
        return result
    state = join_all(fields_of, cls, [d.state for d in docs])
    deleted = max((d.deleted for d in docs if d.deleted is not None), default=None)
    if deleted is not None and any(d.deleted != deleted for d in docs):
        state = prune(fields_of, cls, state, deleted)
    added = max((d.added for d in docs if d.added is not None), default=None)
    result = DocState(added, deleted, docs[0].floor, state)
    for doc in docs:
        if doc == result:
            return doc
    return result


def _max_stamp(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)


def build_document(
    cls: type[_D], doc: DocState, revision: Revision | None, bases: RevisionSet
) -> _D:
    """A document of type *cls* holding the merge state *doc*."""
    built = cls._from_state(doc.state)
    _init_document(built, doc.added, doc.deleted, doc.floor, fresh=False)
    object.__setattr__(built, "__revision__", revision)
    object.__setattr__(built, "__base_revisions__", bases)
    return built


def captured_state(doc: MergeableDocument, session: Session) -> tuple[DocState, int]:
    """*doc*'s merge state with its pending edits stamped by *session*'s next clock time
    (*doc* itself is left as it is), and that time."""
    micros = session.clock.now_micros()
    state = _capture(doc, _Clock(micros, session.identifier))
    added = (micros, session.identifier) if doc._fresh else doc._added
    return DocState(added, doc._deleted, doc._floor, state), micros


def adopted_state(doc: MergeableDocument) -> DocState:
    """The merge state of an unstamped document: all its fields written at the oldest
    possible stamp, the same for every reader, so adopting it again changes nothing and
    any real edit wins over it."""
    clock = _Clock(0, "")
    return DocState(clock.stamp, None, None, _capture(doc, clock))


def tombstone(cls: type, doc: DocState, stamp: Stamp) -> DocState:
    """*doc* deleted at *stamp* (what the delete covers dropped)."""
    return DocState(doc.added, stamp, doc.floor, prune(fields_of, cls, doc.state, stamp))


def collect_tombstones(cls: type, doc: DocState, floor: Stamp) -> DocState:
    """*doc* without the deleted entities (of its top-level ``Entities`` fields) whose
    every stamp is at or before *floor*, and with *floor* recorded, so a copy that still
    holds one of them cannot bring it back."""
    state = doc.state
    for name, spec in fields_of(cls).items():
        slots = state.get(name)
        if spec.kind is not Kind.ENTITIES or not slots:
            continue
        dead = [k for k, s in slots.items() if not alive(s) and _newest(spec, s) <= floor]
        if dead:
            state = dict(state) if state is doc.state else state
            state[name] = {k: s for k, s in slots.items() if k not in dead}
    if doc.floor is not None and doc.floor >= floor:
        floor = doc.floor
    return DocState(doc.added, doc.deleted, floor, state)


def revise_document(doc: MergeableDocument, session: Session) -> None:
    """Stamp *doc*'s pending edits by *session* and make it ``Revision(session, now)``."""
    merged, micros = captured_state(doc, session)
    _settle(doc, merged.state)
    object.__setattr__(doc, "_added", merged.added)
    object.__setattr__(doc, "_fresh", False)
    object.__setattr__(doc, "__revision__", Revision(session, from_micros(micros)))


def pull_document(doc: _D, session: Session) -> _D:
    """*doc* as *session*'s (see :meth:`Session.pull`)."""
    revision = doc.__revision__
    if revision is not None and revision.session is session:
        return doc
    if revision is not None:
        session.clock.observe(revision.updated_at)
    if revision is None or has_pending(doc):
        merged, micros = captured_state(doc, session)
        updated_at = from_micros(micros)
    else:
        merged, updated_at = state_of(doc), revision.updated_at
    return build_document(type(doc), merged, Revision(session, updated_at), doc.__base_revisions__)


def merge_documents(session: Session, a: _D, b: _D) -> _D:
    """The join of *a* and *b* as *session* sees it (see :meth:`Session.merge`)."""
    if type(a) is not type(b):
        raise TypeError(f"cannot merge a {type(a).__name__} with a {type(b).__name__}")
    for revision in (a.__revision__, b.__revision__):
        if revision is not None:
            session.clock.observe(revision.updated_at)
    pending_a, pending_b = has_pending(a), has_pending(b)
    sa = captured_state(a, session)[0] if pending_a else state_of(a)
    sb = captured_state(b, session)[0] if pending_b else state_of(b)
    merged = join_documents(type(a), sa, sb)
    if merged is sa and not pending_a:
        return pull_document(a, session)
    if merged is sb and not pending_b:
        return pull_document(b, session)
    revisions = [r for r in (a.__revision__, b.__revision__) if r is not None]
    bases = a.__base_revisions__.merge(b.__base_revisions__, RevisionSet(revisions))
    return build_document(type(a), merged, Revision(session, session.clock.now()), bases)
