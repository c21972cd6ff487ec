"""Decorators that serialise calls with a re-entrant lock."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["synchronized", "synchronized_method"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")

# Stored in the instance's __dict__ under a name no ordinary attribute uses.
_LOCK_ATTRIBUTE = "__storekeeper_synchronized_lock__"
# Guards only the first creation of an instance lock, never a call.
_creation_lock = threading.Lock()


def synchronized(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run every call of *func* while holding one re-entrant lock owned by *func*.

    There is exactly one lock per decorated function. On a method this means one lock
    shared by *every* instance of the class: two threads calling the method on two
    different objects still run one after the other. Use :func:`synchronized_method`
    to get one lock per instance instead.

    The lock is an ``RLock``, so a synchronized function may call itself (or be
    re-entered through a callback) from the thread that holds it.
    """
    lock = threading.RLock()

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with lock:
            return func(*args, **kwargs)

    return wrapper


def synchronized_method(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], _R]:
    """Run every call of *method* while holding a re-entrant lock owned by the instance.

    Each instance gets its own ``RLock``, created lazily (and thread-safely) on the
    first synchronized call and kept in the instance's ``__dict__``. All
    ``synchronized_method`` methods of one instance share that lock, like Java's
    ``synchronized`` methods: calls on one object run one at a time, calls on
    different objects run concurrently, and a synchronized method may call another
    synchronized method of the same object.

    Instances without a ``__dict__`` (``__slots__`` only) raise ``TypeError`` on the
    first call. Use :func:`synchronized` for one lock shared by all instances.
    """

    @functools.wraps(method)
    def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _instance_lock(self):
            return method(self, *args, **kwargs)

    return wrapper


def _instance_lock(instance: object) -> threading.RLock:
    """The re-entrant lock of *instance*, created on first use."""
    try:
        namespace = vars(instance)
    except TypeError:
        raise TypeError(
            f"synchronized_method needs an instance with a __dict__; "
            f"{type(instance).__name__} has none"
        ) from None
    lock: threading.RLock | None = namespace.get(_LOCK_ATTRIBUTE)
    if lock is None:
        with _creation_lock:
            lock = namespace.setdefault(_LOCK_ATTRIBUTE, threading.RLock())
    return lock
