"""Bounded login state: bearer tokens that expire, and a limit on failed logins.

:class:`LoginPolicy` holds the settings. :class:`TokenTable` keeps at most
``max_tokens`` live tokens: a token ends after ``token_idle`` seconds without use, after
``token_lifetime`` seconds in any case, when it is revoked, or when newer tokens push
it out (the oldest goes first). :class:`FailureLimiter` counts failed password checks
per client address and per user name over a sliding window: while ``max_failed_logins``
failures lie within the last ``failed_login_window`` seconds, further attempts for that
address or name are refused (HTTP 429 with ``Retry-After``) without looking at the
password, until the oldest of them is ``failed_login_window`` seconds old. A password
check also holds a place while it runs: an attempt is refused when the failures in the
window plus the checks still running for its address or name reach the limit, so
wrong passwords, even sent together, are never checked more than ``max_failed_logins``
times within any ``failed_login_window`` seconds for an address or a name (while it is
remembered; a right password clears the name's failures). It remembers the failures of
at most ``max_tracked_logins`` addresses and names (the least recently failing are
forgotten first), so no table grows without bound whatever clients send.

Both read the time from the policy's ``clock`` (``time.time`` unless a test gives
another), so expiry can be tested without sleeping.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["FailureLimiter", "LoginPolicy", "TokenTable"]

_S = TypeVar("_S")


@dataclass(frozen=True)
class LoginPolicy:
    """How long login tokens live and how failed logins are limited (see the module).

    Times are in seconds. ``token_idle`` and ``token_lifetime`` bound a token's life
    since its last use and since the password login it descends from;
    ``max_tokens`` bounds the live tokens of all users together; ``max_failed_logins``
    failures within the last ``failed_login_window`` seconds block an address or a user
    name; ``max_tracked_logins`` bounds the addresses and names remembered. Every time
    is a finite number > 0, every count an int >= 1 (``ValueError`` naming the setting
    otherwise), and ``clock`` a callable (``TypeError`` otherwise).
    """

    token_lifetime: float = 12 * 3600
    token_idle: float = 3600
    max_tokens: int = 10_000
    max_failed_logins: int = 10
    failed_login_window: float = 300
    max_tracked_logins: int = 10_000
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        for name in ("token_lifetime", "token_idle", "failed_login_window"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise ValueError(f"{name} is a finite number of seconds > 0, not {value!r}")
        for name in ("max_tokens", "max_failed_logins", "max_tracked_logins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is an int >= 1, not {value!r}")
        if not callable(self.clock):
            raise TypeError(f"clock is a callable giving POSIX seconds, not {self.clock!r}")


@dataclass
class _Token(Generic[_S]):
    session: _S
    ends: float  # the absolute end, inherited by tokens issued on this one
    used: float


class TokenTable(Generic[_S]):
    """Bearer tokens, each standing for one user's session *_S* (see the module)."""

    def __init__(self, policy: LoginPolicy) -> None:
        self.policy = policy
        self._tokens: OrderedDict[str, _Token[_S]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, session: _S, ends: float | None = None) -> tuple[str, float]:
        """A new token for *session* and when it ends at the latest: ``token_lifetime``
        from now, or *ends* (the end of the token it was asked for with) if sooner."""
        now = self.policy.clock()
        self._drop_ended(now)
        while len(self._tokens) >= self.policy.max_tokens:
            self._tokens.popitem(last=False)
        limit = now + self.policy.token_lifetime
        end = limit if ends is None else min(ends, limit)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Token(session, end, now)
        return token, end

    def use(self, token: str) -> tuple[_S, float] | None:
        """The session of *token* and its absolute end, counting this as a use;
        ``None`` for a token that is unknown, revoked, pushed out or ended."""
        found = self._tokens.get(token)
        if found is None:
            return None
        now = self.policy.clock()
        if now >= found.ends or now - found.used >= self.policy.token_idle:
            del self._tokens[token]
            return None
        found.used = now
        return found.session, found.ends

    def revoke(self, token: str) -> bool:
        """Forget *token*; whether it was live."""
        return self._tokens.pop(token, None) is not None

    def _drop_ended(self, now: float) -> None:
        """Drop tokens past their absolute end from the front (where the oldest are);
        idle ones elsewhere end when used or pushed out."""
        while self._tokens:
            oldest = next(iter(self._tokens.values()))
            if now < oldest.ends and now - oldest.used < self.policy.token_idle:
                return
            self._tokens.popitem(last=False)


class FailureLimiter:
    """Failed password checks per address and per user name (see the module).

    Not thread-safe: the server calls it from its event loop only. A password check
    goes :meth:`retry_after` (blocked?), then :meth:`reserve` (a place while it runs),
    then :meth:`finished` (a failure or not).
    """

    def __init__(self, policy: LoginPolicy) -> None:
        self.policy = policy
        # By digest, least recently failing first: a name as long as a header costs no
        # more. Each holds the times of its latest failures, at most max_failed_logins.
        self._seen: OrderedDict[bytes, deque[float]] = OrderedDict()
        # Checks running now, per subject digest: bounded by the requests in flight,
        # so never forgotten to make room.
        self._running: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def retry_after(self, *subjects: str) -> int | None:
        """Whole seconds until an attempt for *subjects* is let through again, counting
        failures only (``None``: now). A subject is ``"address:..."`` or ``"user:..."``."""
        now = self.policy.clock()
        waits = [self._wait(_digest(subject), now) for subject in subjects]
        longest = max((wait for wait in waits if wait is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))

    def reserve(self, *subjects: str) -> int | None:
        """Hold a place for one password check of *subjects* and answer ``None``, or
        answer the whole seconds to wait (at least 1) when the failures in the window
        plus the checks running would reach the limit; :meth:`finished` gives the place
        back."""
        wait = self.retry_after(*subjects)
        if wait is not None:
            return wait
        names = [_digest(subject) for subject in subjects]
        limit = self.policy.max_failed_logins
        if any(self._count(name) + self._running.get(name, 0) >= limit for name in names):
            return 1  # the running checks end within a password hash's time
        for name in names:
            self._running[name] = self._running.get(name, 0) + 1
        return None

    def finished(self, *subjects: str, failed: bool) -> None:
        """Give back the place :meth:`reserve` held for *subjects*; count a failure
        against each of them if the check *failed*."""
        for subject in subjects:
            name = _digest(subject)
            left = self._running.get(name, 0) - 1
            if left > 0:
                self._running[name] = left
            else:
                self._running.pop(name, None)
        if failed:
            self.failed(*subjects)

    def failed(self, *subjects: str) -> None:
        """Count one failed attempt against each of *subjects*."""
        now = self.policy.clock()
        for subject in subjects:
            name = _digest(subject)
            times = self._seen.pop(name, None)
            if times is None:
                times = deque(maxlen=self.policy.max_failed_logins)
            times.append(now)
            self._seen[name] = times
        while len(self._seen) > self.policy.max_tracked_logins:
            self._seen.popitem(last=False)

    def forget(self, subject: str) -> None:
        """Clear *subject*'s failures (a user who just gave the right password)."""
        self._seen.pop(_digest(subject), None)

    def _count(self, name: bytes) -> int:
        times = self._seen.get(name)
        if times is None:
            return 0
        self._expire(name, times, self.policy.clock())
        return len(times)

    def _wait(self, name: bytes, now: float) -> float | None:
        """Seconds until *name* is under the limit again, ``None`` if it is now."""
        times = self._seen.get(name)
        if times is None:
            return None
        self._expire(name, times, now)
        if len(times) < self.policy.max_failed_logins:
            return None
        # The oldest failure kept leaving the window brings the count under the limit.
        return times[0] + self.policy.failed_login_window - now

    def _expire(self, name: bytes, times: deque[float], now: float) -> None:
        """Drop the failures of *name* older than the window (the entry, if none is left)."""
        window = self.policy.failed_login_window
        while times and now - times[0] >= window:
            times.popleft()
        if not times:
            del self._seen[name]


def _digest(subject: str) -> bytes:
    return hashlib.blake2b(subject.encode("utf-8", "surrogatepass"), digest_size=16).digest()
