"""Capturing a document's pending edits as merge state, stamped by one revise.

Edits are assignments (tracked by :class:`~storekeeper.stage.document.Element`), in-place
changes of list and dict values (found by comparing with the state), and entities
added, deleted or changed through an :class:`~storekeeper.stage.document.Entities`
mapping. :func:`capture` turns them into a new state; :func:`settle` makes that state
the element's own once it is written.
"""

from __future__ import annotations

from typing import Any

from storekeeper.stage._lattice import Slot, Stamp, State, alive, join, prune
from storekeeper.stage._schema import FieldSpec, Kind
from storekeeper.stage.document import (
    Element,
    Entities,
    encode_value,
    fields_of,
    materialize,
)

__all__ = ["PendingEditsError", "StampClock", "capture", "settle"]


class StampClock:
    """Stamps for one revise: one time, and positions for list items."""

    def __init__(self, micros: int, session: str) -> None:
        self.stamp: Stamp = (micros, session)
        self.position = 0

    def item(self) -> Stamp:
        """The stamp of the next list item added in this revise (its position breaks
        the tie with the others, so they keep their order)."""
        self.position += 1
        return (self.stamp[0], self.stamp[1], self.position)


def capture(element: Element, clock: StampClock | None) -> State:
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


class PendingEditsError(Exception):
    """Raised by a capture without a clock when there are edits to stamp."""


def _capture_field(  # noqa: PLR0911 - one return per kind and case
    element: Element, spec: FieldSpec, register: Any, clock: StampClock | None
) -> Any:
    value = element.__dict__[spec.name]
    assigned = spec.name in element._assigned
    kind = spec.kind
    if kind is Kind.SCALAR or kind is Kind.DATETIME:
        encoded = encode_value(spec, value)
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


def _stamped(clock: StampClock | None) -> tuple[Stamp, StampClock]:
    if clock is None:
        raise PendingEditsError
    return clock.stamp, clock


def _capture_slot(
    spec: FieldSpec,
    value: Element | None,
    register: Slot | None,
    assigned: bool,
    clock: StampClock | None,
) -> Slot | None:
    slot = register or Slot(None, None, {})
    if assigned:
        stamp = _stamped(clock)[0]
        if value is None:
            return Slot(slot.added, stamp, prune(fields_of, spec.item, slot.state, stamp))
        sub = join(fields_of, spec.item, slot.state, capture(value, clock))
        return Slot(stamp, slot.deleted, sub)
    if value is None:
        return register
    sub = capture(value, clock)
    return register if sub is slot.state else Slot(slot.added, slot.deleted, sub)


def _capture_entities(
    value: Entities[Any], register: dict[str, Slot] | None, clock: StampClock | None
) -> dict[str, Slot] | None:
    slots = value._slots
    out = slots
    item = value._spec.item
    for key, entity in value._cache.items():
        old = slots[key]
        sub = capture(entity, clock)
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
        sub = join(fields_of, item, old.state, capture(entity, clock))
        out[key] = Slot(stamp, old.deleted, sub)
    if out is slots:
        return register
    return out


def settle(element: Element, state: State) -> None:
    """Make *state* (just written) *element*'s own: its edits are no longer pending, and
    where the join kept another session's newer write, the element shows that."""
    object.__setattr__(element, "_state", state)
    element.__dict__.pop("_assigned", None)
    for name, spec in fields_of(type(element)).items():
        value = element.__dict__[name]
        register = state.get(name)
        if spec.kind is Kind.ENTITIES:
            _settle_entities(value, register or {})
        elif register is None:
            continue
        elif spec.kind is not Kind.ELEMENT:
            object.__setattr__(element, name, materialize(spec, register))
        elif not alive(register):
            object.__setattr__(element, name, None)
        elif value is None:
            object.__setattr__(element, name, materialize(spec, register))
        else:
            settle(value, register.state)


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
            settle(entity, slot.state)
