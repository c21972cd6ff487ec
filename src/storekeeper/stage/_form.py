"""The JSON form of a staged document's merge state: the body of a stored copy.

A body is a JSON object: the document's element (below) plus ``"#"``, the table of
the stamps the body uses (left out when it uses none), each ``[microseconds, session
id]``; everything else names a stamp by its position in that table. A copy is written
by one session, mostly in one revise, so a handful of stamps serve thousands of
registers: the body stays small and decoding it makes one stamp object per table
entry, shared by every register.

An element is a JSON object holding each field that has a register under its name:

- a scalar or time field: its value, as it is. Its stamp is the element's ``"@"`` (the
  stamp most of its scalar fields share) unless ``"!"`` maps the field's name to its own;
- a list field: ``[[item, stamp, position], ...]``;
- an element field: a slot, which is the element's object with ``"+"`` (added) and
  ``"-"`` (deleted) when the slot has those stamps;
- an entities field: ``{entity id: slot}``.

Field names are identifiers, so ``#``, ``@``, ``!``, ``+`` and ``-`` never clash with
one. Decoding checks the stamp table's types and raises ValueError for a malformed body.
"""

from __future__ import annotations

from typing import Any

from storekeeper.stage._lattice import Slot, Specs, Stamp, State, flat_field_names
from storekeeper.stage._schema import FieldSpec, Kind

__all__ = ["decode_body", "encode_body"]

_SCALAR, _DATETIME, _LIST, _ELEMENT = Kind.SCALAR, Kind.DATETIME, Kind.LIST, Kind.ELEMENT
_Table = dict[Stamp, int]
_Stamps = dict[int, Stamp]


def encode_body(specs: Specs, cls: type, state: State) -> dict[str, Any]:
    """The JSON-ready body holding *state* (of element type *cls*)."""
    table: _Table = {}
    element = _element_out(specs, cls, state, table)
    if not table:
        return element  # nothing stamped (an empty state): no table either
    return {"#": [[micros, session] for micros, session in table], **element}


def _index(table: _Table, stamp: Stamp) -> int:
    found = table.get(stamp)
    if found is None:
        found = table[stamp] = len(table)
    return found


def _common_stamp(fields: dict[str, FieldSpec], state: State) -> Stamp | None:
    counts: dict[Stamp, int] = {}
    for name, spec in fields.items():
        if spec.kind is _SCALAR or spec.kind is _DATETIME:
            register = state.get(name)
            if register is not None:
                counts[register[0]] = counts.get(register[0], 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _element_out(specs: Specs, cls: type, state: State, table: _Table) -> dict[str, Any]:
    fields = specs(cls)
    common = _common_stamp(fields, state)
    out: dict[str, Any] = {}
    if common is not None:
        out["@"] = _index(table, common)
    own: dict[str, int] = {}
    for name, spec in fields.items():
        if name not in state:
            continue
        register = state[name]
        kind = spec.kind
        if kind is _SCALAR or kind is _DATETIME:
            stamp, out[name] = register
            if stamp != common:
                own[name] = _index(table, stamp)
        elif kind is _LIST:
            out[name] = [
                [item, _index(table, stamp[:2]), stamp[2]] for item, stamp in register.items()
            ]
        elif kind is _ELEMENT:
            out[name] = _slot_out(specs, spec.item, register, table)
        else:
            out[name] = {k: _slot_out(specs, spec.item, s, table) for k, s in register.items()}
    if own:
        out["!"] = own
    return out


def _slot_out(specs: Specs, cls: type, slot: Slot, table: _Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if slot.added is not None:
        out["+"] = _index(table, slot.added)
    if slot.deleted is not None:
        out["-"] = _index(table, slot.deleted)
    out.update(_element_out(specs, cls, slot.state, table))
    return out


def decode_body(specs: Specs, cls: type, raw: Any) -> State:
    """The state held by the body *raw* (decoded JSON) of an element type *cls*
    document; ValueError if it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"a {cls.__name__} body must be a JSON object")  # noqa: TRY004
    try:
        return _element_in(specs, cls, _stamps(raw.get("#", [])), raw)
    except (TypeError, IndexError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed {cls.__name__} body: {exc!r}") from exc


def _stamps(table: Any) -> _Stamps:
    if not isinstance(table, list):
        raise TypeError("the stamp table must be a list")
    stamps = {}
    for index, (micros, session) in enumerate(table):
        if type(micros) is not int or type(session) is not str:
            raise TypeError(f"malformed stamp {[micros, session]!r}")
        stamps[index] = (micros, session)
    return stamps


def _common(stamps: _Stamps, raw: dict[str, Any]) -> Stamp | None:
    index = raw.get("@")
    return None if index is None else stamps[index]


def _own_stamps(stamps: _Stamps, raw: dict[str, Any], state: State, common: Stamp | None) -> None:
    """Give the fields ``"!"`` names their own stamps (in *state*, in place)."""
    own = raw.get("!")
    if own is not None:
        for name, index in own.items():
            state[name] = (stamps[index], state[name][1])
    if common is None and any(register[0] is None for register in state.values()):
        raise ValueError("a field has no stamp")


def _element_in(specs: Specs, cls: type, stamps: _Stamps, raw: dict[str, Any]) -> State:
    if not isinstance(raw, dict):
        raise TypeError(f"a {cls.__name__} element must be a JSON object")
    common = _common(stamps, raw)
    names = flat_field_names(specs, cls)
    if names is not None:
        flat = {name: (common, value) for name, value in raw.items() if name in names}
        _own_stamps(stamps, raw, flat, common)
        return flat
    state: State = {}
    scalars: State = {}
    for name, spec in specs(cls).items():
        if name not in raw:
            continue
        encoded = raw[name]
        kind = spec.kind
        if kind is _SCALAR or kind is _DATETIME:
            scalars[name] = (common, encoded)
        elif kind is _LIST:
            state[name] = {item: (*stamps[index], position) for item, index, position in encoded}
        elif kind is _ELEMENT:
            state[name] = _slot_in(specs, spec.item, stamps, encoded)
        else:
            state[name] = _entities_in(specs, spec.item, stamps, encoded)
    _own_stamps(stamps, raw, scalars, common)
    state.update(scalars)
    return state


def _entities_in(
    specs: Specs, item: type, stamps: _Stamps, encoded: dict[str, Any]
) -> dict[str, Slot]:
    if not isinstance(encoded, dict):
        raise TypeError("entities must be a JSON object")
    names = flat_field_names(specs, item)
    if names is None:
        return {key: _slot_in(specs, item, stamps, raw) for key, raw in encoded.items()}
    # Reading a feed decodes every entry of every copy: this loop is spelled out.
    slots = {}
    for key, raw in encoded.items():
        index = raw.get("@")
        common = None if index is None else stamps[index]
        state = {name: (common, value) for name, value in raw.items() if name in names}
        if common is None or "!" in raw:
            _own_stamps(stamps, raw, state, common)
        added, deleted = raw.get("+"), raw.get("-")
        slots[key] = Slot(
            None if added is None else stamps[added],
            None if deleted is None else stamps[deleted],
            state,
        )
    return slots


def _slot_in(specs: Specs, cls: type, stamps: _Stamps, raw: dict[str, Any]) -> Slot:
    state = _element_in(specs, cls, stamps, raw)
    added, deleted = raw.get("+"), raw.get("-")
    return Slot(
        None if added is None else stamps[added],
        None if deleted is None else stamps[deleted],
        state,
    )
