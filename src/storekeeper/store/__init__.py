"""The key-value store API: values, abstract stores, events, utilities and ``open_store``.

Backend authors find the helpers every store implementation uses in
:mod:`storekeeper.store.backend` (the backend kit).
"""

from __future__ import annotations

from storekeeper.store.abstract import (
    AbstractAuthorizingStore,
    AbstractReadOnlyStore,
    AbstractStore,
    VersionedStore,
)
from storekeeper.store.capabilities import StoreCapabilities
from storekeeper.store.events import (
    StoreDeleteEvent,
    StoreEvent,
    StoreKeyEvent,
    StoreModificationEvent,
    StoreProgressEndEvent,
    StoreProgressEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
    StoreSetEvent,
    StoreTransactionEndEvent,
    StoreTransactionEvent,
    StoreTransactionStartEvent,
    StoreUpdateEvent,
)
from storekeeper.store.mapping import StoreMapping
from storekeeper.store.query import Equals, Exists, In, Prefix, QueryTerm, Range
from storekeeper.store.registry import (
    open_read_only_store,
    open_store,
    register_backend,
    registered_schemes,
)
from storekeeper.store.utils import (
    BufferIteratorIO,
    DummyTransactionContext,
    SimpleTransactionContext,
    StoreProgressManager,
    buffer_iterator,
    tee,
)
from storekeeper.store.value import BytesValue, Head, KeyInfo, StreamValue, StringValue, Value

__all__ = [
    "AbstractAuthorizingStore",
    "AbstractReadOnlyStore",
    "AbstractStore",
    "BufferIteratorIO",
    "BytesValue",
    "DummyTransactionContext",
    "Equals",
    "Exists",
    "Head",
    "In",
    "KeyInfo",
    "Prefix",
    "QueryTerm",
    "Range",
    "SimpleTransactionContext",
    "StoreCapabilities",
    "StoreDeleteEvent",
    "StoreEvent",
    "StoreKeyEvent",
    "StoreMapping",
    "StoreModificationEvent",
    "StoreProgressEndEvent",
    "StoreProgressEvent",
    "StoreProgressManager",
    "StoreProgressStartEvent",
    "StoreProgressStepEvent",
    "StoreSetEvent",
    "StoreTransactionEndEvent",
    "StoreTransactionEvent",
    "StoreTransactionStartEvent",
    "StoreUpdateEvent",
    "StreamValue",
    "StringValue",
    "Value",
    "VersionedStore",
    "buffer_iterator",
    "open_read_only_store",
    "open_store",
    "register_backend",
    "registered_schemes",
    "tee",
]
