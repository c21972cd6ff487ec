"""What every composite store shares: children, connection, transactions and events.

A composite is a store built from other stores (its *children*). This module gives it:

- **Connection**: ``connect`` connects the children that are not connected yet, and
  ``disconnect`` disconnects exactly those again, so the composite can reconnect.
- **Transactions**: a composite transaction *enlists* a child by entering the child's
  own transaction (and one nested child transaction per savepoint). It enlists the
  children it reads and writes in transactions (:meth:`CompositeStore._transactional_children`,
  by default every writable child) when it begins, lowest index first, so everything the
  block reads from or writes to them goes through their transactions and is isolated as
  a transaction on the child itself would be. A writable child left out (one only a
  rare operation writes, such as ``MountedStore.push``'s backing store) is enlisted at
  its first write; every such child comes after all the others in index order, so two
  composites' transactions always take shared children in one order and cannot
  deadlock. Commit commits the enlisted children one after another,
  the highest child index first; rollback rolls them all back. Each child is
  all-or-nothing on its own; across children this is not a two-phase commit: if a
  child's commit fails after another child has committed, the committed child keeps
  its writes (the remaining children are rolled back).
- **Events**: the composite listens on its children's event managers and re-emits their
  key events (modifications and progress) with itself as ``source`` and the key
  translated into its own key space. Composites whose key space differs from their
  children's (overlays) emit their own modification events for the writes they make and
  only forward the changes other code made directly to a child.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast

from storekeeper.errors import InvalidMetadataError, ReadOnlyStoreError
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore
from storekeeper.store.backend import (
    OwnedVar,
)
from storekeeper.store.capabilities import StoreCapabilities
from storekeeper.store.events import (
    StoreKeyEvent,
    StoreModificationEvent,
    StoreProgressEvent,
)
from storekeeper.store.utils import SimpleTransactionContext
from storekeeper.store.value import Value

__all__ = ["CompositeStore", "CompositeTransaction", "refuse_reserved", "retarget_event"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


class _ChildRollbackError(Exception):
    """Handed to a child's transaction context to make it roll back."""


def refuse_reserved(given: object, name: str, owner: str) -> None:
    """Raise InvalidMetadataError if *given* (metadata, or a value or ``(data, metadata)``
    pair holding it) uses the metadata *name* that *owner* reserves for itself.

    Anything else about *given* is left for the wrapped store to check.
    """
    kind = type(given)
    if kind is tuple or kind is list:  # exact types first: isinstance(Value) costs more
        given = given[1] if len(given) == 2 else None  # type: ignore[index, arg-type]
    elif kind is not dict and isinstance(given, Value):
        given = given.metadata
    if (type(given) is dict or isinstance(given, Mapping)) and name in given:
        raise InvalidMetadataError(f"the metadata name {name!r} is reserved by {owner}")


def retarget_event(event: BaseEvent, source: object, **changes: Any) -> BaseEvent:
    """A copy of *event* with ``source`` and the given attributes replaced."""
    clone = copy.copy(event)
    clone.source = source
    for name, value in changes.items():
        setattr(clone, name, value)
    return clone


@dataclass
class _Enlistment:
    """The child transactions one composite transaction (in one context) has opened."""

    depth: int = 0
    contexts: dict[int, list[Any]] = field(default_factory=dict)


class CompositeTransaction(SimpleTransactionContext):
    """A composite's transaction: holds back child events released by the commit.

    Children emit the events they held during the transaction when the composite commits
    them; those are queued behind the composite's own ``StoreTransactionEndEvent``, as
    for any store.
    """

    store: CompositeStore

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self.store._transaction_state()
        held = state.events if state is not None and state.depth == 1 else None
        token = self.store._held_events.set(held)
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self.store._held_events.reset(token)


class CompositeStore(AbstractStore):
    """Base of the composite stores (see the module docstring for the shared contract).

    Subclasses list their children, say which of them to listen to, and translate child
    keys into their own key space with :meth:`_outer_key`.
    """

    #: True: the composite emits its own modification events for its writes, and drops
    #: the children's events those writes cause. False: it forwards children's events.
    emits_own_events: ClassVar[bool] = False
    #: True: the composite needs its children's events itself (not only to forward
    #: them), so it listens to them even when nobody listens to it.
    listens_always: ClassVar[bool] = False

    def __init__(
        self,
        children: Sequence[AbstractReadOnlyStore],
        event_manager: BaseEventManager | None = None,
    ) -> None:
        super().__init__(event_manager)
        self._children: tuple[AbstractReadOnlyStore, ...] = tuple(children)
        # Worked out once: _writer runs on every write, and an ABC isinstance is not free.
        self._writable = tuple(isinstance(child, AbstractStore) for child in self._children)
        self._connected_here: list[AbstractReadOnlyStore] = []
        self._listening: list[BaseEventManager] = []
        self._connection_lock = threading.RLock()
        # Whether children's events may be forwarded to someone; False only while the
        # event manager says nobody could receive them (see _follow_listeners).
        self._forwarding = True
        self._adjusting = False
        tag = f"{type(self).__name__}-{id(self):x}"
        self._enlisted: OwnedVar[_Enlistment] = OwnedVar(f"{tag}-enlisted")
        self._quiet: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"{tag}-quiet", default=False
        )
        self._held_events: contextvars.ContextVar[list[BaseEvent] | None] = contextvars.ContextVar(
            f"{tag}-held", default=None
        )

    # -- connection ----------------------------------------------------------------------
    def connect(self, credentials: Any = None) -> None:
        """Connect the children that are not connected (passing *credentials*), then self."""
        with self._connection_lock:
            if self._connected:
                return
            self._connect_children(credentials)
            self._follow_listeners()
            self._connected = True

    def disconnect(self) -> None:
        """Stop forwarding events and disconnect the children :meth:`connect` connected."""
        with self._connection_lock:
            self._connected = False
            self.event_manager.unwatch(self._listeners_changed)
            self._unlisten()
            self._forwarding = True
            while self._connected_here:
                self._connected_here.pop().disconnect()

    def _connect_children(self, credentials: Any) -> None:
        try:
            for child in self._children:
                if not child.is_connected():
                    child.connect(credentials)
                    self._connected_here.append(child)
        except BaseException:
            while self._connected_here:
                self._connected_here.pop().disconnect()
            raise

    def _listened_children(self) -> Sequence[AbstractReadOnlyStore]:
        """The children whose events are forwarded (default: all of them)."""
        return self._children

    def _follow_listeners(self) -> None:
        """Listen to the children only while someone listens to this store.

        A manager that reports changes of its listeners (its ``watch`` returns true, as
        :class:`~storekeeper.events.EventManager`'s does) has this store subscribe to
        the children when the first listener that could receive a key event connects
        (``may_deliver``), and unsubscribe when the last one disconnects; meanwhile the
        children's writes cost nothing here. Any other manager, or ``listens_always``:
        always subscribed.
        """
        if self.listens_always or not self.event_manager.watch(self._listeners_changed):
            self._listen()
            self._forwarding = True
            return
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        with self._connection_lock:
            if self._adjusting:
                return  # our own (un)subscription, on a manager the children share
            self._adjusting = True
            try:
                manager = self.event_manager
                needed = manager.may_deliver(StoreKeyEvent, ignore=self._on_child_event)
                if needed and not self._listening:
                    self._listen()
                elif not needed and self._listening:
                    self._unlisten()
                self._forwarding = needed
            finally:
                self._adjusting = False

    def _listen(self) -> None:
        for child in self._listened_children():
            manager = child.event_manager
            if all(manager is not seen for seen in self._listening):
                # A bound method: the manager holds it weakly, so a forgotten composite
                # does not stay alive (or keep listening) because of its children.
                manager.connect(StoreKeyEvent, self._on_child_event)
                self._listening.append(manager)

    def _unlisten(self) -> None:
        while self._listening:
            manager = self._listening.pop()
            try:
                manager.disconnect(StoreKeyEvent, self._on_child_event)
            except (KeyError, ValueError):
                continue

    @property
    def capabilities(self) -> StoreCapabilities:
        """What every child promises: the flags about writes (conditional writes,
        atomic and isolated transactions) from the writable children, the others from
        all of them. A composite whose own logic weakens a promise overrides this."""
        writable = [child for child, can in zip(self._children, self._writable, strict=True) if can]
        writes = StoreCapabilities.all_of(child.capabilities for child in writable)
        return StoreCapabilities.all_of(child.capabilities for child in self._children).but(
            conditional_writes=writes.conditional_writes,
            atomic_transactions=writes.atomic_transactions,
            isolated_transactions=writes.isolated_transactions,
        )

    def storage_paths(self) -> tuple[str, ...]:
        """The paths of every child (see :meth:`AbstractReadOnlyStore.storage_paths`):
        a copy into a folder must spare the files of each store this one writes or
        reads through."""
        return tuple(path for child in self._children for path in child.storage_paths())

    def info(self) -> dict[str, Any]:
        """The store description plus ``children``: each child's own ``info()``."""
        return {**super().info(), "children": [child.info() for child in self._children]}

    # -- helpers for subclasses --------------------------------------------------------------
    def _writer(self, index: int) -> AbstractStore:
        """Child *index* as a writable store, enlisted in the current transaction."""
        child = self._children[index]
        if not self._writable[index]:
            raise ReadOnlyStoreError(f"{type(child).__name__} child of {self!r} is read-only")
        state = self._enlisted.get()
        if state is not None and index not in state.contexts:
            self._open_child(state, index)  # after the others: see the module docstring
        return cast(AbstractStore, child)  # _writable said so

    def _transactional_children(self) -> list[int]:
        """Indexes of the children a transaction enlists when it begins, ascending.

        Default: every writable child. A subclass may leave out children that only some
        operations write, if they have higher indexes than every child it keeps.
        """
        return [index for index, writable in enumerate(self._writable) if writable]

    def _quietly(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a child write whose events this composite replaces with its own."""
        token = self._quiet.set(True)
        try:
            return call(*args, **kwargs)
        finally:
            self._quiet.reset(token)

    # -- events ------------------------------------------------------------------------------
    def _on_child_event(self, event: BaseEvent) -> None:
        # Checked first: this composite's own writes make every child write land here.
        if (
            self.emits_own_events
            and self._quiet.get()
            and isinstance(event, StoreModificationEvent)
        ):
            return
        source = getattr(event, "source", None)
        if not self._connected:
            return
        for child in self._listened_children():
            if child is source:
                break
        else:
            return
        index = next(i for i, each in enumerate(self._children) if each is source)
        if isinstance(event, StoreProgressEvent):
            relayed = self._relay_progress(index, event)
            if relayed is not None:
                self.event_manager.emit(relayed)
        elif isinstance(event, StoreModificationEvent):
            translated = self._translate_change(index, event)
            if translated is not None:
                self._deliver(translated)

    def _outer_key(self, index: int, key: str) -> str | None:
        """The composite's key for child *index*'s *key*; ``None`` if not visible."""
        return key

    def _relay_progress(self, index: int, event: StoreProgressEvent) -> BaseEvent | None:
        key = self._outer_key(index, event.key)
        return None if key is None else retarget_event(event, self, key=key)

    def _translate_change(self, index: int, event: StoreModificationEvent) -> BaseEvent | None:
        """The composite's event for a child's change (default: same event, new key)."""
        key = self._outer_key(index, event.key)
        return None if key is None else retarget_event(event, self, key=key)

    def _deliver(self, event: BaseEvent) -> None:
        """Emit a forwarded modification event now, or queue it behind a transaction."""
        if self._in_transaction():
            self._emit(event)
            return
        held = self._held_events.get()
        if held is not None:
            held.append(event)
            return
        self.event_manager.emit(event)

    # -- transactions --------------------------------------------------------------------------
    def transaction(self, notes: str = "", *, wait: bool = True) -> CompositeTransaction:
        """A re-entrant transaction over the children written inside it (module docs);
        ``wait=False`` as for any store (no child waits for another writer's lock)."""
        return CompositeTransaction(self, notes, wait=wait)

    def _open_child(self, state: _Enlistment, index: int) -> None:
        child = self._children[index]
        assert isinstance(child, AbstractStore)  # only writable children are enlisted
        contexts: list[Any] = []
        try:
            for _ in range(state.depth + 1):
                context = child.transaction(f"part of a {type(self).__name__} transaction")
                context.__enter__()
                contexts.append(context)
        except BaseException:
            _close_all(contexts, _ChildRollbackError())
            raise
        state.contexts[index] = contexts

    def _begin_transaction(self) -> None:
        self._require_connection()
        state = _Enlistment()
        try:
            for index in self._transactional_children():  # ascending: see the module docs
                self._open_child(state, index)
        except BaseException:
            _roll_back_children(state)
            raise
        self._enlisted.set(state)

    def _commit_transaction(self) -> None:
        state = self._enlisted.get()
        self._enlisted.set(None)
        if state is None:
            return
        token = self._quiet.set(self.emits_own_events)
        try:
            _commit_children(state)
        finally:
            self._quiet.reset(token)

    def _rollback_transaction(self) -> None:
        state = self._enlisted.get()
        self._enlisted.set(None)
        if state is not None:
            _roll_back_children(state)

    def _savepoint(self) -> object:
        state = self._enlisted.get()
        assert state is not None  # only called inside a transaction
        for index, contexts in state.contexts.items():
            child = self._children[index]
            assert isinstance(child, AbstractStore)
            context = child.transaction("savepoint")
            context.__enter__()
            contexts.append(context)
        state.depth += 1
        return state.depth

    def _rollback_to_savepoint(self, token: object) -> None:
        self._leave_savepoint(_ChildRollbackError())

    def _release_savepoint(self, token: object) -> None:
        self._leave_savepoint(None)

    def _leave_savepoint(self, failure: BaseException | None) -> None:
        state = self._enlisted.get()
        assert state is not None
        state.depth -= 1
        for contexts in state.contexts.values():
            _close(contexts.pop(), failure)


def _close(context: Any, failure: BaseException | None) -> None:
    if failure is None:
        context.__exit__(None, None, None)
    else:
        context.__exit__(type(failure), failure, None)


def _close_all(contexts: list[Any], failure: BaseException | None) -> None:
    while contexts:
        _close(contexts.pop(), failure)


def _roll_back_children(state: _Enlistment) -> None:
    """Roll back every enlisted child, highest index first; raise the first failure."""
    errors: list[BaseException] = []
    for index in sorted(state.contexts, reverse=True):
        try:
            _close_all(state.contexts[index], _ChildRollbackError())
        except Exception as exc:  # noqa: BLE001 - the others must still roll back
            errors.append(exc)
    if errors:
        raise errors[0]


def _commit_children(state: _Enlistment) -> None:
    """Commit every enlisted child, highest index first; after a failure roll back the rest."""
    failure: BaseException | None = None
    for index in sorted(state.contexts, reverse=True):
        contexts = state.contexts[index]
        if failure is not None:
            try:
                _close_all(contexts, _ChildRollbackError())
            except Exception:  # noqa: BLE001 - the commit's own error is what callers see
                _log.exception("rolling back child %d after a failed commit also failed", index)
            continue
        try:
            _close_all(contexts, None)
        except BaseException as exc:  # noqa: BLE001 - re-raised once the rest rolled back
            failure = exc
    if failure is not None:
        raise failure
