"""Who a transaction belongs to: the running asyncio task, else the thread.

A transaction is tracked per context with :mod:`contextvars`, but a context variable alone
does not make it private: a task created inside a ``with store.transaction():`` block
(``asyncio.create_task``, ``asyncio.to_thread``, ``copy_context().run``) starts with a
copy of the context and would find the transaction there. So every piece of per-transaction
state also records its *owner* (:func:`current_owner`) and is seen by that owner only:

- :class:`OwnedVar` is a context variable whose value only the owner that set it sees;
  anyone else gets ``None`` (so an inherited transaction is "no transaction" and the
  inheritor's ``transaction()`` begins its own).
- :class:`Claim` records which owner, on which thread, holds a store's transaction, so
  that an operation that would have to wait for it can tell whether waiting is possible.
- :class:`OwnerLock` is a lock re-entrant for its owner.

Waiting for another *thread* is fine. Waiting for another task of the *same* thread is not:
a synchronous call blocks the event loop, so the task it waits for never runs again. Such
a call raises :class:`~storekeeper.errors.TransactionError` at once instead
(:meth:`Claim.refusal` says why and what to do).

A transaction begun with ``store.transaction(wait=False)`` waits for nobody: its begin
runs under :func:`not_waiting`, and a store whose write lock another thread, task or
process holds raises :func:`busy` (a :class:`~storekeeper.errors.LockTimeoutError`)
instead of waiting (:func:`may_wait` tells a store which to do).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Generic, TypeVar

from storekeeper.errors import LockTimeoutError, TransactionError

__all__ = ["Claim", "OwnedVar", "OwnerLock", "busy", "current_owner", "may_wait", "not_waiting"]

_T = TypeVar("_T")
_get_ident = threading.get_ident
_patient: ContextVar[bool] = ContextVar("storekeeper-may-wait", default=True)


def may_wait() -> bool:
    """Whether the transaction beginning in this context may wait for another writer's
    lock: false inside :func:`not_waiting`."""
    return _patient.get()


@contextmanager
def not_waiting() -> Iterator[None]:
    """Around the begin of a ``transaction(wait=False)``: stores (and the children of a
    composite) raise :func:`busy` where they would wait for another writer."""
    token = _patient.set(False)
    try:
        yield
    finally:
        _patient.reset(token)


def busy(what: object) -> LockTimeoutError:
    """The error of a transaction begun with ``wait=False`` on *what* (a store, or a
    description of one) while another thread, task or process holds its write lock."""
    return LockTimeoutError(
        f"{what} is being written by another thread, task or process; a transaction "
        "begun with wait=False does not wait for it"
    )


def current_owner() -> object:
    """The asyncio task running in this thread, or the thread when no task runs."""
    # No event loop can run before asyncio is imported, and importing it here would make
    # every `import storekeeper` pay for it.
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        loop = asyncio._get_running_loop()  # in asyncio.events.__all__; never raises
        if loop is not None:
            task = asyncio.current_task(loop)
            if task is not None:
                return task
    return threading.current_thread()


@dataclass(frozen=True, slots=True)
class Claim:
    """An owner (task or thread) and the thread it runs on, taken by :meth:`take`."""

    owner: object
    thread: int

    @classmethod
    def take(cls) -> Claim:
        """The claim of the caller."""
        return cls(current_owner(), _get_ident())

    def is_mine(self) -> bool:
        """Whether the caller is the owner."""
        return self.owner is current_owner()

    def blocks_here(self) -> bool:
        """Whether waiting for this owner would block it: another task of this thread."""
        return self.thread == _get_ident() and self.owner is not current_owner()

    def refusal(self, what: object) -> TransactionError:
        """The error for a call that would have to wait for this owner's transaction
        on *what* (a store, or a description of one)."""
        return TransactionError(
            f"another asyncio task of this thread has a transaction open on {what}; "
            "this call would have to wait for it, which would block the event loop and "
            "with it that task. Finish that transaction first (let the task leave its "
            "'with store.transaction():' block), or run this call in a thread of its "
            "own (asyncio.to_thread)."
        )


class OwnedVar(Generic[_T]):
    """A context variable whose value is seen only by the owner that set it.

    ``get()`` returns ``None`` in any other task or thread, even one whose context was
    copied from the owner's.
    """

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[tuple[object, _T] | None] = ContextVar(name, default=None)

    def get(self) -> _T | None:
        """The value the current owner set, or ``None``."""
        pair = self._var.get()
        if pair is None or pair[0] is not current_owner():
            return None
        return pair[1]

    def set(self, value: _T | None) -> Token[tuple[object, _T] | None]:
        """Set the current owner's value (``None``: unset); a token for :meth:`reset`."""
        return self._var.set(None if value is None else (current_owner(), value))

    def reset(self, token: Token[tuple[object, _T] | None]) -> None:
        """Restore the value :meth:`set` replaced."""
        self._var.reset(token)


class OwnerLock:
    """A mutual-exclusion lock held by an owner (task or thread) and re-entrant for it.

    Another thread waits for it; another task of the holder's thread gets the
    :meth:`Claim.refusal` error at once (it could never be released while it waited).
    *what* names the protected object in that error.
    """

    def __init__(self, what: object) -> None:
        self._what = what
        self._lock = threading.Lock()
        # Written only by the holder; a thread reading its own ident here is the holder.
        self._claim: Claim | None = None
        self._depth = 0

    def acquire(self) -> None:
        """Take the lock (again, for its owner); raises TransactionError, see the class,
        and :func:`busy` instead of waiting for another owner inside :func:`not_waiting`."""
        claim = self._claim
        if claim is not None and claim.thread == _get_ident():
            if claim.is_mine():
                self._depth += 1
                return
            raise claim.refusal(self._what)
        if not self._lock.acquire(blocking=may_wait()):
            raise busy(self._what)
        self._claim = Claim.take()
        self._depth = 1

    def release(self) -> None:
        """Give back one acquisition; the last one unlocks."""
        self._depth -= 1
        if self._depth == 0:
            self._claim = None
            self._lock.release()
