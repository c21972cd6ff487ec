"""What a store can promise beyond the abstract contract, declared rather than probed.

Every store has a :attr:`~storekeeper.store.AbstractReadOnlyStore.capabilities` property
returning a :class:`StoreCapabilities`. The default claims nothing (every flag false), so
a third-party store that says nothing is never trusted with more than it promised;
each built-in backend declares its own, and composites derive theirs from their children
(:meth:`StoreCapabilities.all_of`). Composites, tools and the conformance suite read
these flags instead of looking for methods with ``getattr``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["StoreCapabilities"]


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """The optional promises of one store. Every flag defaults to ``False`` (not promised).

    - ``conditional_writes``: ``if_version``/``if_exists`` are checked and the write made
      in one atomic step, so of two racing conditional writers at most one succeeds
      (in every process that shares the store, when ``cross_process`` is also true).
    - ``atomic_transactions``: a transaction over several keys is all-or-nothing: every
      write of the block is applied, or none is (also across a crash of the process,
      when ``persistent`` is also true).
    - ``isolated_transactions``: a transaction isolates its owner (thread or task): a
      read-modify-write inside it never loses a concurrent update, and other owners do
      not see its writes before the commit.
    - ``cross_process``: several store objects on the same storage, in different
      processes, may be used at once; each sees the others' committed writes and the
      promises above hold between them.
    - ``server_side_queries``: ``query`` is evaluated by the storage engine, without
      reading every key's metadata into this process.
    - ``ranges``: ``get_data_range`` reads only the requested bytes, not the whole value.
    - ``persistent``: the data outlives the store object and the process: a new store
      object opened on the same location (see the backend's documentation) finds it.
    """

    conditional_writes: bool = False
    atomic_transactions: bool = False
    isolated_transactions: bool = False
    cross_process: bool = False
    server_side_queries: bool = False
    ranges: bool = False
    persistent: bool = False

    @classmethod
    def everything(cls) -> StoreCapabilities:
        """Every flag true."""
        return cls(**{field.name: True for field in dataclasses.fields(cls)})

    @classmethod
    def all_of(cls, capabilities: Iterable[StoreCapabilities]) -> StoreCapabilities:
        """The promises that hold for a store built on all of *capabilities*: each flag
        is true only if it is true for every one of them (true for none given)."""
        items = list(capabilities)
        return cls(
            **{
                field.name: all(getattr(item, field.name) for item in items)
                for field in dataclasses.fields(cls)
            }
        )

    def but(self, **changes: bool) -> StoreCapabilities:
        """A copy with the named flags changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
