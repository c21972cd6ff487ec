"""Layered stores: the machinery shared by :class:`JoinedStore` and :class:`MountedStore`.

An overlay stacks *layers*, each a child store with a key mapping. A key is looked up in
the layers in order and the first layer that has it wins. Every write goes to the top
layer (layer 0); a key that only a lower layer holds is copied up when it is partly
changed (``set_data``, ``set_metadata``, ``update_metadata``), so the untouched part is
kept.

Deleting a key that a lower layer would show through writes a *whiteout* in the top
layer: an empty entry whose metadata holds the reserved name :data:`WHITEOUT`. A
whiteout hides the key in every lower layer, is never returned by reads, queries or
globs, and is replaced by the next write of the key. Lower layers are never written.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storekeeper.composite._wrapper import CompositeStore, refuse_reserved, retarget_event
from storekeeper.errors import ReadOnlyStoreError
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    check_key,
    check_precondition,
    check_select,
    check_write,
    copy_metadata,
    missing,
    pass_terms,
    query_terms,
)
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreModificationEvent,
    StoreSetEvent,
    StoreUpdateEvent,
)
from storekeeper.store.listing import check_listing, filter_listing, fold_keys
from storekeeper.store.value import Value

__all__ = ["WHITEOUT", "Layer", "OverlayStore", "is_whiteout"]

_SET_EVENTS = (StoreSetEvent,)

#: Metadata name marking a whiteout entry; reserved (NUL cannot appear in a key).
WHITEOUT = "\x00storekeeper:whiteout"


def is_whiteout(value: Value) -> bool:
    """Whether *value* is a whiteout (checked without decoding non-empty values)."""
    if value.size:
        return False
    return WHITEOUT in value.metadata


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer: a child store whose key ``k`` the overlay shows as ``prefix + k``.

    Overlay keys that do not start with *prefix*, or equal it, are not in this layer.
    With the empty prefix the layer's keys are the overlay's keys.
    """

    store: AbstractReadOnlyStore
    prefix: str = ""

    def inner(self, key: str) -> str | None:
        """The child's key for the overlay key *key*, or ``None`` if it is not here."""
        prefix = self.prefix
        if not prefix:
            return key
        inner = key.removeprefix(prefix)
        # Same length: the prefix was not there; empty: the key is the prefix itself.
        return inner if inner and len(inner) != len(key) else None

    def outer(self, key: str) -> str:
        """The overlay's key for the child's key *key*."""
        return self.prefix + key

    def listing(self, prefix: str, delimiter: str | None) -> Iterator[str]:
        """The overlay's listing of *prefix* with *delimiter* over this layer's keys
        alone (whiteouts included, other layers ignored)."""
        mine, store = self.prefix, self.store
        if prefix.startswith(mine):
            return (mine + entry for entry in store.list_keys(prefix[len(mine) :], delimiter))
        if not mine.startswith(prefix):
            return iter(())
        # The layer's keys all start with the prefix and then the rest of the layer's own.
        rest = mine[len(prefix) :]
        if delimiter is not None:
            index = rest.find(delimiter)
            if index >= 0:  # every key of the layer is in this one folder
                return iter((prefix + rest[: index + len(delimiter)],))
            if len(delimiter) > 1:  # a delimiter may straddle the layer's prefix
                return fold_keys((mine + key for key in store.list_keys()), prefix, delimiter)
        return (mine + entry for entry in store.list_keys("", delimiter))


class OverlayStore(CompositeStore):
    """A store made of :class:`Layer` objects; see the module docstring for the rules."""

    emits_own_events = True

    def __init__(
        self, layers: Sequence[Layer], event_manager: BaseEventManager | None = None
    ) -> None:
        if not layers:
            raise ValueError(f"{type(self).__name__} needs at least one store")
        if not isinstance(layers[0].store, AbstractStore):
            raise TypeError(f"the top store of {type(self).__name__} must be writable")
        super().__init__([layer.store for layer in layers], event_manager)
        self._layers = tuple(layers)
        self._top: AbstractStore = layers[0].store

    def _transactional_children(self) -> list[int]:
        # The top layer only: it is the one every write goes to. Lower layers are only
        # read (MountedStore.push writes the backing store and enlists it then), and
        # holding their transactions would lock them for nothing, or wait for ourselves
        # when two layers are tables of one SQLite database.
        return [0]

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Value:
        """The value of *key* from the first layer that has it."""
        if type(key) is not str or not key or "\x00" in key:  # check_key's test, inlined
            check_key(key)  # raises the specific error
        if not self._connected:  # checked inline: this is the most frequent call
            self._require_connection()
        visible = self._find(key, 0)
        if visible is None:
            raise missing(key)
        return visible

    def exists(self, key: str) -> bool:
        """Whether some layer shows *key* (a whiteout hides it)."""
        check_key(key)
        self._require_connection()
        return self._find(key, 0) is not None

    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matches from every layer; a key a higher layer holds is never taken from below.

        A higher layer hides a lower layer's entry even when the higher entry does not
        match the query, so a shadowed entry can never leak into the results.
        """
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        if names is not None:
            names.append(WHITEOUT)
        results: list[tuple[str, Metadata]] = []
        hidden: set[str] = set()
        for index, layer in enumerate(self._layers):
            for inner, metadata in pass_terms(layer.store.query, terms, names):
                key = layer.outer(inner)
                if key in hidden or metadata.pop(WHITEOUT, None) is not None:
                    continue
                results.append((key, metadata))
            if index + 1 < len(self._layers):
                hidden.update(_outer_keys(layer))
        return results

    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* that some layer shows (see
        :meth:`AbstractReadOnlyStore.list_keys`): the layers' listings merged as they
        are read. For each key the first layer that holds it decides, and a whiteout
        there hides it (one metadata lookup per key listed tells); a folder is listed
        when it shows a key (its keys are looked at until one is shown).
        """
        check_listing(prefix, delimiter)
        self._require_connection()
        return filter_listing(self._merged_listing, self._shows, prefix, delimiter)

    def _merged_listing(self, prefix: str, delimiter: str | None) -> Iterator[str]:
        """Each entry of the layers' listings once, in order."""
        previous = None
        listings = [layer.listing(prefix, delimiter) for layer in self._layers]
        for entry in heapq.merge(*listings):
            if entry != previous:
                yield entry
            previous = entry

    def _shows(self, key: str) -> bool:
        """Whether the overlay shows *key*, looking at metadata only (as queries do)."""
        for layer in self._layers:
            inner = layer.inner(key)
            if inner is None:
                continue
            try:
                metadata = layer.store.get_metadata(inner, [WHITEOUT])
            except KeyError:
                continue
            return WHITEOUT not in metadata
        return False

    def _find(self, key: str, start: int) -> Value | None:
        """The visible value of *key* looking from layer *start* down; None if hidden."""
        layers = self._layers if start == 0 else self._layers[start:]
        for layer in layers:
            # Layer.inner, inlined: this runs for every read.
            prefix = layer.prefix
            if not prefix:
                inner = key
            else:
                inner = key.removeprefix(prefix)
                if not inner or len(inner) == len(key):
                    continue
            try:
                value = layer.store.get(inner)
            except KeyError:
                continue
            # Only empty values can be whiteouts; skip the metadata check for the rest.
            return None if not value.size and is_whiteout(value) else value
        return None

    def _lookup(self, key: str) -> tuple[Value | None, Value | None]:
        """``(top layer's own entry or None, visible value or None)``."""
        inner = self._layers[0].inner(key)
        if inner is not None:
            try:
                raw = self._layers[0].store.get(inner)
            except KeyError:
                pass
            else:
                return raw, None if is_whiteout(raw) else raw
        return None, self._find(key, 1)

    # -- writes --------------------------------------------------------------------------
    def _top_key(self, key: str, if_version: object = None, if_exists: object = None) -> str:
        """The top layer's key for *key*; ReadOnlyStoreError where writes are not allowed.
        Checks the write's arguments first (:func:`check_write`)."""
        check_write(key, if_version, if_exists)
        if not self._connected:
            self._require_connection()
        top = self._layers[0]
        if not top.prefix:
            return key
        inner = top.inner(key)
        if inner is None:
            raise ReadOnlyStoreError(f"key {key!r} is read-only in {type(self).__name__}")
        return inner

    def set(
        self,
        key: str,
        value: Value | tuple[Any, Any],
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> str | None:
        """Write *value* into the top layer (see :meth:`AbstractStore.set`); the top
        layer's version of it, which is what this store shows."""
        top = self._top_key(key, if_version, if_exists)
        refuse_reserved(value, WHITEOUT, type(self).__name__)
        if if_version is None and if_exists is None:
            # Nothing to check and nobody to tell of the write: the lookup can be skipped.
            if not self._forwarding and not self._in_transaction():
                # Not subscribed to the top store either: its event cannot come back.
                return self._top.set(top, value, buffer_size)
            if not self._observed(*_SET_EVENTS):
                writer = self._writer(0)
                token = self._quiet.set(True)  # _quietly, inlined for the frequent case
                try:
                    return writer.set(top, value, buffer_size)
                finally:
                    self._quiet.reset(token)
        raw, visible = self._lookup(key)
        pins = _pins(key, raw, visible, if_version, if_exists)
        version = self._quietly(self._writer(0).set, top, value, buffer_size, **pins)
        self._changed(StoreSetEvent, key, _metadata_of(value))
        return version

    def set_data(
        self,
        key: str,
        data: object,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s data, keeping the metadata it shows (from whichever layer)."""
        top = self._top_key(key, if_version, if_exists)
        raw, visible = self._lookup(key)
        pins = _pins(key, raw, visible, if_version, if_exists)
        writer = self._writer(0)
        if raw is not None and raw is visible:
            self._quietly(writer.set_data, top, data, buffer_size, **pins)
            metadata = raw.metadata
        else:
            metadata = {} if visible is None else visible.metadata
            self._quietly(writer.set, top, (data, metadata), buffer_size, **pins)
        self._changed(StoreSetEvent, key, metadata)

    def set_metadata(
        self,
        key: str,
        metadata: Mapping[str, Any],
        *,
        if_version: str | None = None,
        if_exists: bool | None = None,
    ) -> None:
        """Replace *key*'s metadata, keeping the data it shows (copied up if needed)."""
        top = self._top_key(key, if_version, if_exists)
        refuse_reserved(metadata, WHITEOUT, type(self).__name__)
        raw, visible = self._lookup(key)
        pins = _pins(key, raw, visible, if_version, if_exists)
        stored = copy_metadata(metadata)
        self._write_metadata(top, raw, visible, stored, pins)
        self._changed(StoreSetEvent, key, stored)

    def update_metadata(
        self, key: str, metadata: Mapping[str, Any], *, if_version: str | None = None
    ) -> None:
        """Merge *metadata* into what *key* shows; :class:`KeyNotFoundError` if hidden."""
        top = self._top_key(key, if_version)
        refuse_reserved(metadata, WHITEOUT, type(self).__name__)
        update = copy_metadata(metadata)
        raw, visible = self._lookup(key)
        if visible is None:
            raise missing(key)
        pins = _pins(key, raw, visible, if_version, None)
        merged = visible.metadata
        merged.update(update)
        if raw is visible:
            pin = pins.get("if_version")
            self._quietly(self._writer(0).update_metadata, top, update, if_version=pin)
        else:
            self._write_metadata(top, raw, visible, merged, pins)
        self._changed(StoreUpdateEvent, key, merged)

    def _write_metadata(
        self,
        top: str,
        raw: Value | None,
        visible: Value | None,
        metadata: Metadata,
        pins: dict[str, Any],
    ) -> None:
        writer = self._writer(0)
        if raw is not None and raw is visible:
            self._quietly(writer.set_metadata, top, metadata, **pins)
        elif visible is None:
            self._quietly(writer.set, top, (b"", metadata), **pins)
        else:
            with visible.data as stream:
                self._quietly(writer.set, top, (stream, metadata), **pins)

    def delete(self, key: str, *, if_version: str | None = None) -> None:
        """Make *key* disappear: delete it from the top layer, and white it out if a
        lower layer would otherwise show it. Lower layers keep their entries."""
        top = self._top_key(key, if_version)
        raw, visible = self._lookup(key)
        if visible is None:
            raise missing(key)
        check_precondition(key, visible.version, if_version, None)
        writer = self._writer(0)
        below = visible if raw is None else self._find(key, 1)
        if below is None:
            assert raw is not None  # otherwise visible would come from below
            pin = raw.version if if_version is not None else None
            self._quietly(writer.delete, top, if_version=pin)
        else:
            pins = _pins(key, raw, visible, if_version, None)
            self._quietly(writer.set, top, (b"", {WHITEOUT: True}), **pins)
        self._emit(StoreDeleteEvent(self, key=key, metadata=visible.metadata))

    def _changed(self, event: type[StoreModificationEvent], key: str, metadata: Metadata) -> None:
        self._emit(event(self, key=key, metadata=metadata))

    # -- events from the layers -------------------------------------------------------------
    def _outer_key(self, index: int, key: str) -> str | None:
        return self._layers[index].outer(key)

    def _translate_change(self, index: int, event: StoreModificationEvent) -> BaseEvent | None:
        """An outside change to a layer, as this overlay sees it (None: not visible).

        A change under a key that a higher layer holds is invisible. A whiteout written
        into a layer is a deletion; a deletion that uncovers a lower entry is a set (the
        key now shows that entry's data and metadata).
        """
        key = self._layers[index].outer(event.key)
        if self._shadowed(key, index):
            return None
        metadata = event.metadata if isinstance(event.metadata, dict) else {}
        if WHITEOUT in metadata:
            return StoreDeleteEvent(self, key=key, metadata={})
        if isinstance(event, StoreDeleteEvent):
            below = self._find(key, index + 1)
            if below is None:
                return retarget_event(event, self, key=key)
            return StoreSetEvent(self, key=key, metadata=below.metadata)
        return retarget_event(event, self, key=key)

    def _shadowed(self, key: str, index: int) -> bool:
        for layer in self._layers[:index]:
            inner = layer.inner(key)
            if inner is not None and layer.store.exists(inner):
                return True
        return False


def _outer_keys(layer: Layer) -> Iterable[str]:
    return (layer.outer(inner) for inner in layer.store.query_keys())


def _pins(
    key: str,
    raw: Value | None,
    visible: Value | None,
    if_version: str | None,
    if_exists: bool | None,
) -> dict[str, Any]:
    """Check a precondition against what the overlay shows, and return the conditions
    that make the top layer's write fail if its entry changed since it was looked at."""
    if if_version is None and if_exists is None:
        return {}
    check_precondition(key, None if visible is None else visible.version, if_version, if_exists)
    if raw is None:
        return {"if_exists": False}
    if raw.version is None:
        return {"if_exists": True}
    return {"if_version": raw.version}


def _metadata_of(value: object) -> Metadata:
    """The metadata a successful ``set(key, value)`` stored, as a fresh dict."""
    if isinstance(value, Value):
        return value.metadata
    assert isinstance(value, tuple | list)  # the child accepted it, so it is a pair
    metadata = value[1]
    return {} if metadata is None else copy_metadata(metadata)
