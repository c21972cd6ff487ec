"""The merge of staged documents, as a join of plain states.

An element's *state* maps field names to registers (a field never written has none):

- scalar / datetime: ``(stamp, value)``, a last-writer-wins register. Stamps are
  ``(microseconds, session id)``; equal stamps with different values (two processes of
  one session in the same microsecond) are ordered by the values' JSON text, so the
  maximum is always defined.
- list: ``{item: stamp}``, a grow-only set; each item keeps the newest stamp of its
  additions (``(microseconds, session id, position)``) and items are listed in stamp order.
- element: a :class:`Slot`; entities: ``{entity id: Slot}``. A slot is
  ``(added, deleted, state)``: the newest stamp at which the element was assigned, the
  newest at which it was deleted, and its fields' state. It is present iff
  ``added > deleted``; writes stamped at or before ``deleted`` are dropped from it, so
  an older copy cannot resurrect what a delete removed, while a later assignment wins.

Every register is a join-semilattice (pointwise maxima), and dropping what a delete
covers is compatible with it, so :func:`join` is commutative, associative and
idempotent: whatever order copies are merged in, the result is the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from storekeeper.stage._schema import FieldSpec, Kind

__all__ = [
    "Slot",
    "Specs",
    "Stamp",
    "State",
    "alive",
    "flat_field_names",
    "join",
    "join_all",
    "join_slot",
    "join_slot_all",
    "newest_stamp",
    "prune",
]

Stamp = tuple[Any, ...]
State = dict[str, Any]
Specs = Callable[[type], dict[str, FieldSpec]]
_SCALAR, _DATETIME, _LIST, _ELEMENT = Kind.SCALAR, Kind.DATETIME, Kind.LIST, Kind.ELEMENT


class Slot(NamedTuple):
    """An element that can be deleted: ``added`` and ``deleted`` stamps (or ``None``)
    and the element's state."""

    added: Stamp | None
    deleted: Stamp | None
    state: State


def alive(slot: Slot) -> bool:
    """Whether *slot*'s element is present: assigned after its newest delete."""
    added, deleted = slot.added, slot.deleted
    return added is not None and (deleted is None or added > deleted)


def _max(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _join_register(a: tuple[Stamp, Any], b: tuple[Stamp, Any]) -> tuple[Stamp, Any]:
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    if a[1] == b[1]:
        return a
    return a if _text(a[1]) >= _text(b[1]) else b


def _join_items(a: dict[Any, Stamp], b: dict[Any, Stamp]) -> dict[Any, Stamp]:
    out = a
    for item, stamp in b.items():
        known = out.get(item)
        if known is None or stamp > known:
            if out is a:
                out = dict(a)
            out[item] = stamp
    if out is not a and out == b:
        return b
    return out


def join_slot(specs: Specs, cls: type, a: Slot, b: Slot) -> Slot:
    """The join of two slots of element type *cls* (one of them when it is the join)."""
    if a is b:
        return a
    added, deleted = _max(a.added, b.added), _max(a.deleted, b.deleted)
    state = join(specs, cls, a.state, b.state)
    if deleted is not None and (deleted is not a.deleted or deleted is not b.deleted):
        state = prune(specs, cls, state, deleted)
    if state is a.state and added is a.added and deleted is a.deleted:
        return a
    if state is b.state and added is b.added and deleted is b.deleted:
        return b
    return Slot(added, deleted, state)


def _join_slots(specs: Specs, cls: type, a: dict[str, Slot], b: dict[str, Slot]) -> dict[str, Slot]:
    out = a
    all_b = len(a) <= len(b)
    for key, slot in b.items():
        known = a.get(key)
        joined = slot if known is None else join_slot(specs, cls, known, slot)
        if joined is not known:
            if out is a:
                out = dict(a)
            out[key] = joined
        if joined is not slot:
            all_b = False
    if all_b and len(out) == len(b):
        return b
    return out


_FLAT: dict[type, frozenset[str] | None] = {}


def flat_field_names(specs: Specs, cls: type) -> frozenset[str] | None:
    """The field names of *cls* if every field is a scalar (entries of a feed usually
    are), else ``None``: such states are decoded and joined by one tight loop."""
    try:
        return _FLAT[cls]
    except KeyError:
        fields = specs(cls)
        flat = all(f.kind is _SCALAR or f.kind is _DATETIME for f in fields.values())
        names = _FLAT[cls] = frozenset(fields) if flat else None
        return names


def _join_flat(a: State, b: State) -> State:
    out = a
    for name, rb in b.items():
        ra = a.get(name)
        if ra is rb:
            continue
        if ra is not None:
            stamp_a, stamp_b = ra[0], rb[0]
            if stamp_a > stamp_b or (stamp_a == stamp_b and _join_register(ra, rb) is ra):
                continue
        if out is a:
            out = dict(a)
        out[name] = rb
    if out is a or (len(out) == len(b) and all(out[k] is r for k, r in b.items())):
        return a if out is a else b
    return out


def _join_field(specs: Specs, spec: FieldSpec, ra: Any, rb: Any) -> Any:
    kind = spec.kind
    if kind is _SCALAR or kind is _DATETIME:
        return _join_register(ra, rb)
    if kind is _LIST:
        return _join_items(ra, rb)
    if kind is _ELEMENT:
        return join_slot(specs, spec.item, ra, rb)
    return _join_slots(specs, spec.item, ra, rb)


def join(specs: Specs, cls: type, a: State, b: State) -> State:
    """The join of two states of element type *cls* (one of the inputs when every
    register of the join is that input's)."""
    if a is b:
        return a
    if flat_field_names(specs, cls) is not None:
        return _join_flat(a, b)
    out: State = {}
    all_a = all_b = True
    for name, spec in specs(cls).items():
        ra, rb = a.get(name), b.get(name)
        if ra is rb:
            if ra is not None:
                out[name] = ra
            continue
        if ra is None or rb is None:
            out[name] = rb if ra is None else ra
            all_a, all_b = all_a and ra is not None, all_b and rb is not None
            continue
        register = _join_field(specs, spec, ra, rb)
        out[name] = register
        all_a, all_b = all_a and register is ra, all_b and register is rb
    if all_a:
        return a
    return b if all_b else out


def join_all(specs: Specs, cls: type, states: list[State]) -> State:
    """The join of every state in *states* (at least one) of element type *cls*, in one
    pass: equal to folding :func:`join` over them, with one new dict per element
    instead of one per element and step (reading a feed merges every entry of every
    session's copy)."""
    if len(states) == 1:
        return states[0]
    if flat_field_names(specs, cls) is not None:
        return _join_flat_all(states)
    out = {}
    for name, spec in specs(cls).items():
        registers = [r for r in (state.get(name) for state in states) if r is not None]
        if not registers:
            continue
        head = registers[0]
        if all(r is head for r in registers):
            out[name] = head
        elif spec.kind is Kind.ENTITIES:
            out[name] = _join_entities_all(specs, spec.item, registers)
        elif spec.kind is _ELEMENT:
            out[name] = join_slot_all(specs, spec.item, registers)
        else:
            joined = head
            for register in registers[1:]:
                joined = _join_field(specs, spec, joined, register)
            out[name] = joined
    return out


def _join_flat_all(states: list[State]) -> State:
    out = dict(states[0])
    for state in states[1:]:
        _join_flat_into(out, state)
    return out


def _join_flat_into(out: State, state: State) -> None:
    """Join the flat *state* into *out* (a new dict of the caller's), in place."""
    for name, rb in state.items():
        ra = out.get(name)
        if ra is None:
            out[name] = rb
        elif ra is not rb:
            stamp_a, stamp_b = ra[0], rb[0]
            if stamp_b > stamp_a or (stamp_b == stamp_a and _join_register(ra, rb) is rb):
                out[name] = rb


def _join_entities_all(
    specs: Specs, cls: type, registers: list[dict[str, Slot]]
) -> dict[str, Slot]:
    groups: dict[str, list[Slot]] = {}
    for register in registers:
        for key, slot in register.items():
            group = groups.get(key)
            if group is None:
                groups[key] = [slot]
            else:
                group.append(slot)
    join = _join_flat_slot_all if flat_field_names(specs, cls) is not None else join_slot_all
    return {
        key: group[0] if len(group) == 1 else join(specs, cls, group)
        for key, group in groups.items()
    }


def _join_flat_slot_all(specs: Specs, cls: type, slots: list[Slot]) -> Slot:
    """:func:`join_slot_all` for an element type whose fields are all scalars (the
    entries of a feed): one loop over the slots joins their stamps and states."""
    head = slots[0]
    added, deleted, state = head.added, head.deleted, head.state
    for slot in slots[1:]:
        if slot is head:
            continue
        stamp = slot.added
        if stamp is not None and (added is None or stamp > added):
            added = stamp
        stamp = slot.deleted
        if stamp is not None and (deleted is None or stamp > deleted):
            deleted = stamp
        if state is head.state:
            state = dict(state)
        _join_flat_into(state, slot.state)
    if state is head.state:
        return head
    if deleted is not None and any(slot.deleted != deleted for slot in slots):
        state = prune(specs, cls, state, deleted)
    return Slot(added, deleted, state)


def join_slot_all(specs: Specs, cls: type, slots: list[Slot]) -> Slot:
    """:func:`join_all` for slots."""
    head = slots[0]
    added, deleted, same = head.added, head.deleted, True
    for slot in slots[1:]:  # plain loops: this runs once per entity of a merged read
        if slot is not head:
            same = False
        stamp = slot.added
        if stamp is not None and (added is None or stamp > added):
            added = stamp
        stamp = slot.deleted
        if stamp is not None and (deleted is None or stamp > deleted):
            deleted = stamp
    if same:
        return head
    state = join_all(specs, cls, [s.state for s in slots])
    if deleted is not None:
        for slot in slots:
            if slot.deleted != deleted:
                state = prune(specs, cls, state, deleted)
                break
    return Slot(added, deleted, state)


def _prune_slot(specs: Specs, cls: type, slot: Slot, floor: Stamp) -> Slot | None:
    added = None if slot.added is None or slot.added <= floor else slot.added
    deleted = None if slot.deleted is None or slot.deleted <= floor else slot.deleted
    state = prune(specs, cls, slot.state, floor)
    if added is None and deleted is None and not state:
        return None  # nothing left: the same, to every join, as no slot at all
    return Slot(added, deleted, state)


def prune(specs: Specs, cls: type, state: State, floor: Stamp) -> State:
    """*state* without the writes stamped at or before *floor* (what a delete at
    *floor* covers, or what a compaction at *floor* supersedes), leaving out the
    elements nothing is left of. It distributes over :func:`join`: pruning a join is
    joining the pruned states."""
    out: State = {}
    for name, spec in specs(cls).items():
        register = state.get(name)
        if register is None:
            continue
        kind = spec.kind
        if kind is Kind.SCALAR or kind is Kind.DATETIME:
            if register[0] > floor:
                out[name] = register
        elif kind is Kind.LIST:
            items = {item: stamp for item, stamp in register.items() if stamp > floor}
            if items:
                out[name] = items
        elif kind is Kind.ELEMENT:
            slot = _prune_slot(specs, spec.item, register, floor)
            if slot is not None:
                out[name] = slot
        else:
            item = spec.item
            slots = ((k, _prune_slot(specs, item, s, floor)) for k, s in register.items())
            kept = {k: s for k, s in slots if s is not None}
            if kept:
                out[name] = kept
    return out


def newest_stamp(specs: Specs, cls: type, state: State) -> Stamp | None:
    """The newest stamp anywhere in *state* (``None`` if it holds none)."""
    newest: Stamp | None = None
    for name, spec in specs(cls).items():
        register = state.get(name)
        if register is None:
            continue
        kind = spec.kind
        if kind is Kind.SCALAR or kind is Kind.DATETIME:
            newest = _max(newest, register[0])
        elif kind is Kind.LIST:
            for stamp in register.values():
                newest = _max(newest, stamp[:2])
        else:
            slots = [register] if kind is Kind.ELEMENT else register.values()
            for slot in slots:
                newest = _max(_max(newest, slot.added), slot.deleted)
                newest = _max(newest, newest_stamp(specs, spec.item, slot.state))
    return newest
