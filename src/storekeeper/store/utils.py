"""Utilities for stores: streaming helpers, transaction contexts, progress reporting.

Streaming: :func:`buffer_iterator` turns a file-like into chunks without ever reading past
``max_bytes``; :class:`BufferIteratorIO` turns chunks back into a file-like; :func:`tee`
clones a stream.

Transactions: :class:`SimpleTransactionContext` gives any store re-entrant transactions
with begin/commit/rollback hooks, savepoints for nested blocks, and held-back events.
There is at most one active transaction per store *per owner*: the asyncio task or, outside
tasks, the thread that began it (see :mod:`storekeeper.store.owners`). A task created
inside the block, or a thread started with a copy of its context, is not in it: its own
``transaction()`` begins a transaction of its own.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from types import TracebackType
from typing import IO, Any, Protocol

from storekeeper._nonblocking import read_chunk
from storekeeper.errors import TransactionError
from storekeeper.events import BaseEvent, BaseEventManager
from storekeeper.events.progress import ProgressManager
from storekeeper.store._validate import DEFAULT_BUFFER_SIZE, check_buffer_size
from storekeeper.store.events import (
    StoreProgressEndEvent,
    StoreProgressStartEvent,
    StoreProgressStepEvent,
    StoreTransactionEndEvent,
    StoreTransactionStartEvent,
)
from storekeeper.store.owners import not_waiting

_log = logging.getLogger(__name__)

__all__ = [
    "BufferIteratorIO",
    "DummyTransactionContext",
    "SimpleTransactionContext",
    "StoreProgressManager",
    "TransactionHost",
    "TransactionState",
    "buffer_iterator",
    "read_stream",
    "source_size",
    "tee",
]


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def buffer_iterator(
    filelike: _Readable,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    progress: Callable[..., object] | None = None,
    max_bytes: int | None = None,
) -> Iterator[bytes]:
    """Yield the bytes of *filelike* in chunks of at most *buffer_size* bytes.

    Stops at the end of the stream or after *max_bytes* bytes, whichever comes first, and
    never asks the stream for more than *max_bytes* in total (the rest stays unread). A
    non-blocking stream is waited for, never taken as ended while it has no data yet.
    *progress*, when given, is called as ``progress(step=total_bytes_so_far)`` once per
    non-empty chunk.
    """
    check_buffer_size(buffer_size)
    total = 0
    while max_bytes is None or total < max_bytes:
        want = buffer_size if max_bytes is None else min(buffer_size, max_bytes - total)
        chunk = read_chunk(filelike, want)
        if not chunk:
            return
        total += len(chunk)
        if progress is not None:
            progress(step=total)
        yield chunk


def source_size(source: object) -> int | None:
    """How many bytes a data source will yield, when that can be told without reading it:
    the length of bytes-like data, the ``size`` of a ``Value``, what is left of a regular
    file or of a ``BytesIO``; ``None`` otherwise (iterators, pipes, sockets, files that
    report a size of 0, such as ``/proc`` files...)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    size = getattr(source, "size", None)
    if isinstance(size, int):
        return size
    try:
        if isinstance(source, io.BytesIO):
            return max(len(source.getbuffer()) - source.tell(), 0)
        return _file_size_left(source)
    except (OSError, ValueError):  # closed, unsupported or not a real file: unknown
        return None


def _file_size_left(source: object) -> int | None:
    """Bytes from the position of a regular file object to its end, else ``None``.

    A regular file reporting a size of 0 is either empty or a file whose size the system
    does not know (``/proc`` and some ``/sys`` files report 0, then read their bytes):
    its size is unknown (``None``), so progress announces -1 rather than 0 bytes and
    never steps past what it announced.
    """
    fileno = getattr(source, "fileno", None)
    tell = getattr(source, "tell", None)
    if fileno is None or tell is None:
        return None
    status = os.fstat(fileno())
    if not stat.S_ISREG(status.st_mode) or status.st_size == 0:
        return None
    return max(status.st_size - int(tell()), 0)


class BufferIteratorIO(io.RawIOBase):
    """A read-only binary file-like object over an iterator of ``bytes`` chunks.

    ``read()`` and ``read(-1)`` return everything that is left; ``read(n)`` (also spelt
    ``read(buffer_size=n)``) returns at most ``n`` bytes (fewer only at the end).
    Closing it closes the iterator when the iterator is a generator, so the producer's
    clean-up runs.
    """

    def __init__(self, iterator: Iterable[bytes]) -> None:
        super().__init__()
        self._iterator: Iterator[bytes] | None = iter(iterator)
        self._buffer = b""

    def readable(self) -> bool:
        """Always true: this is a read-only stream."""
        return True

    def read(self, buffer_size: int | None = -1) -> bytes:
        """Read up to *buffer_size* bytes; everything left when it is ``None`` or negative."""
        self._check_open()
        if buffer_size is None or buffer_size < 0:
            parts = [self._buffer, *self._drain()]
            self._buffer = b""
            return b"".join(parts)
        while len(self._buffer) < buffer_size:
            chunk = self._next_chunk()
            if chunk is None:
                break
            self._buffer += chunk
        result, self._buffer = self._buffer[:buffer_size], self._buffer[buffer_size:]
        return result

    def readall(self) -> bytes:
        """Read everything that is left."""
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        """Read into a writable buffer; returns the number of bytes read."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Close the stream and the underlying generator (if it is one)."""
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if callable(close):
            close()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed BufferIteratorIO")

    def _next_chunk(self) -> bytes | None:
        if self._iterator is None:
            return None
        for chunk in self._iterator:
            if chunk:
                return bytes(chunk)
        self._iterator = None
        return None

    def _drain(self) -> Iterator[bytes]:
        while (chunk := self._next_chunk()) is not None:
            yield chunk


def tee(
    filelike: _Readable, n: int = 2, buffer_size: int = DEFAULT_BUFFER_SIZE
) -> list[BufferIteratorIO]:
    """Clone the stream *filelike* into *n* independent readable streams.

    Built on :func:`itertools.tee`: chunks one clone has read and another has not are
    kept in memory, so read the clones roughly in step. Not thread-safe.
    """
    return [BufferIteratorIO(it) for it in itertools.tee(buffer_iterator(filelike, buffer_size), n)]


class StoreProgressManager(ProgressManager):
    """A :class:`ProgressManager` that emits the ``StoreProgress*Event`` classes.

    Pass ``key=`` and ``metadata=`` as extra keyword arguments so listeners know which
    key the operation concerns.
    """

    StartEventType = StoreProgressStartEvent
    StepEventType = StoreProgressStepEvent
    EndEventType = StoreProgressEndEvent


class DummyTransactionContext:
    """The transaction context of a store that has no transactions.

    Entering and leaving it does nothing: writes inside the block apply immediately and
    are not rolled back on error. There is one instance per store.
    """

    def __new__(cls, store: object) -> DummyTransactionContext:
        existing = getattr(store, "_dummy_transaction", None)
        if isinstance(existing, cls):
            return existing
        instance = super().__new__(cls)
        instance.store = store
        store._dummy_transaction = instance  # type: ignore[attr-defined]
        return instance

    store: object

    def __enter__(self) -> DummyTransactionContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class TransactionState:
    """What one outermost transaction of one owner has accumulated: its *notes*, how
    deeply it is nested (``depth``), the events held back until the commit
    (``events``) and the open savepoints (``savepoints``: the store's token and the
    number of held events when it was taken)."""

    __slots__ = ("depth", "events", "notes", "savepoints")

    def __init__(self, notes: str) -> None:
        self.notes = notes
        self.depth = 0
        self.events: list[BaseEvent] = []
        self.savepoints: list[tuple[object, int]] = []


class TransactionHost(Protocol):
    """What :class:`SimpleTransactionContext` needs of a store (every
    :class:`~storekeeper.store.AbstractReadOnlyStore` has it): where to emit, the
    current owner's :class:`TransactionState`, and the transaction hooks."""

    event_manager: BaseEventManager

    def _transaction_state(self) -> TransactionState | None: ...
    def _set_transaction_state(self, state: TransactionState | None) -> None: ...
    def _begin_transaction(self) -> None: ...
    def _commit_transaction(self) -> None: ...
    def _rollback_transaction(self) -> None: ...
    def _savepoint(self) -> object: ...
    def _rollback_to_savepoint(self, token: object) -> None: ...
    def _release_savepoint(self, token: object) -> None: ...


class SimpleTransactionContext:
    """A re-entrant transaction on *store*, scoped to the current thread or task.

    On the outermost ``__enter__`` it calls :meth:`begin` (the store's
    ``_begin_transaction``) and emits :class:`StoreTransactionStartEvent`. Nested blocks
    open a savepoint (the store's ``_savepoint``); a nested block that raises rolls back to
    it, so catching the error inside the outer block leaves the outer work intact. On the
    outermost exit it calls :meth:`commit` or, if the block raised, :meth:`rollback`; then
    emits :class:`StoreTransactionEndEvent` (``state`` ``'done'`` or ``'failed'``) and,
    after a commit, the modification events held back during the transaction.
    ``__enter__`` returns the context itself.

    With ``wait=False`` the outermost ``__enter__`` raises
    :class:`~storekeeper.errors.LockTimeoutError` at once, beginning nothing, where the
    store would wait for another thread's, task's or process's write lock (see
    :func:`storekeeper.store.owners.not_waiting`).
    """

    def __init__(self, store: TransactionHost, notes: str = "", *, wait: bool = True) -> None:
        self.store = store
        self.notes = notes
        self.wait = wait

    # -- hooks (override in subclasses, or implement on the store) ---------------------
    def begin(self) -> None:
        """Begin a transaction: calls the store's ``_begin_transaction``."""
        self.store._begin_transaction()

    def commit(self) -> None:
        """Commit the transaction: calls the store's ``_commit_transaction``."""
        self.store._commit_transaction()

    def rollback(self) -> None:
        """Roll the transaction back: calls the store's ``_rollback_transaction``."""
        self.store._rollback_transaction()

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> SimpleTransactionContext:
        state = self.store._transaction_state()
        if state is None:
            state = TransactionState(self.notes)
            with nullcontext() if self.wait else not_waiting():
                self.begin()
            self.store._set_transaction_state(state)
            state.depth = 1
            self.store.event_manager.emit(StoreTransactionStartEvent(self.store, notes=self.notes))
            return self
        token = self.store._savepoint()
        state.savepoints.append((token, len(state.events)))
        state.depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self.store._transaction_state()
        if state is None or state.depth == 0:
            raise TransactionError("transaction exited more often than it was entered")
        state.depth -= 1
        if state.depth > 0:
            self._leave_nested(state, failed=exc_type is not None)
            return
        self.store._set_transaction_state(None)
        if exc_type is not None:
            self._finish(state, failed=True)
            return
        try:
            self.commit()
        except BaseException:
            self._rollback_after_failed_commit()
            self._finish(state, failed=True, rolled_back=True)
            raise
        self._finish(state, failed=False)

    def _rollback_after_failed_commit(self) -> None:
        # The commit's own error is what the caller must see; a second failure while
        # cleaning up is logged rather than allowed to replace it.
        try:
            self.rollback()
        except Exception:  # noqa: BLE001 - logged; the commit's error is re-raised
            _log.exception("rollback after a failed commit of %r also failed", self.store)

    def _leave_nested(self, state: TransactionState, *, failed: bool) -> None:
        token, event_count = state.savepoints.pop()
        if failed:
            self.store._rollback_to_savepoint(token)
            del state.events[event_count:]
        else:
            self.store._release_savepoint(token)

    def _finish(self, state: TransactionState, *, failed: bool, rolled_back: bool = False) -> None:
        if failed and not rolled_back:
            self.rollback()
        manager = self.store.event_manager
        manager.emit(
            StoreTransactionEndEvent(
                self.store, notes=state.notes, state="failed" if failed else "done"
            )
        )
        if not failed:
            for event in state.events:
                manager.emit(event)


def read_stream(stream: IO[bytes], buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
    """Read a whole stream in chunks and close it."""
    with stream:
        return b"".join(buffer_iterator(stream, buffer_size))
