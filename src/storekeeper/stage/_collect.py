"""What a compaction forgets: deleted elements at every depth of a state.

A compaction at a *floor* stamp writes a snapshot that is complete up to the floor: it
holds everything any copy wrote at or before the floor, except the deleted elements
:func:`collect` drops -- those (entities, and nested elements set to ``None``) whose
every stamp, their contents' included, is at or before the floor. A copy made before
the snapshot therefore adds nothing at or before its floor, and the join prunes it to
what it wrote later (see :func:`storekeeper.stage.merge.join_documents`): a stale copy
cannot bring a dropped element back, while its later edits survive.
"""

from __future__ import annotations

from storekeeper.stage._lattice import Slot, Specs, Stamp, State, alive, newest_stamp
from storekeeper.stage._schema import Kind

__all__ = ["collect", "newest_in_slot"]


def newest_in_slot(specs: Specs, cls: type, slot: Slot) -> Stamp | None:
    """The newest stamp of *slot* (element type *cls*): its own and its contents'."""
    newest = newest_stamp(specs, cls, slot.state)
    for stamp in (slot.added, slot.deleted):
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
    return newest


def _gone(specs: Specs, cls: type, slot: Slot, floor: Stamp) -> bool:
    if alive(slot):
        return False
    newest = newest_in_slot(specs, cls, slot)
    return newest is None or newest <= floor


def _collect_slot(specs: Specs, cls: type, slot: Slot, floor: Stamp) -> Slot:
    state = collect(specs, cls, slot.state, floor)
    return slot if state is slot.state else Slot(slot.added, slot.deleted, state)


def collect(specs: Specs, cls: type, state: State, floor: Stamp) -> State:
    """*state* (element type *cls*) without the deleted elements, at any depth, whose
    every stamp is at or before *floor* (*state* itself when there are none)."""
    out = state
    for name, spec in specs(cls).items():
        register = state.get(name)
        if register is None or spec.kind not in (Kind.ELEMENT, Kind.ENTITIES):
            continue
        item = spec.item
        kept: Slot | dict[str, Slot] | None
        if spec.kind is Kind.ELEMENT:
            gone = _gone(specs, item, register, floor)
            kept = None if gone else _collect_slot(specs, item, register, floor)
        else:
            kept = {
                key: _collect_slot(specs, item, slot, floor)
                for key, slot in register.items()
                if not _gone(specs, item, slot, floor)
            }
            if len(kept) == len(register) and all(kept[k] is s for k, s in register.items()):
                kept = register
            elif not kept:
                kept = None
        if kept is register:
            continue
        if out is state:
            out = dict(state)
        if kept is None:
            del out[name]
        else:
            out[name] = kept
    return out
