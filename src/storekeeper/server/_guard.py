"""Authentication: HTTP Basic and bearer tokens, checked against a SimpleAuthStore.

Each user gets one :class:`~storekeeper.composite.auth.SimpleAuthStore` session (a
store object connected with their credentials, over the served store) that every
request of theirs goes through, so a user sees, lists, queries and hears of exactly the
keys the store lets them. Verified passwords are remembered as keyed digests, so the
slow password hash runs once per user and password, not once per request. A session
is re-checked against the user record by the store itself (``recheck_interval``), so a
removed user or a changed password locks the old credentials out.

``POST /login`` trades credentials for a bearer token and ``DELETE /login`` revokes
it; tokens end after an idle time and a lifetime, and at most a set number live at once
(see :mod:`storekeeper.server._limits`). Password checks are limited per client address
and per user name: too many failures answer 429 with ``Retry-After`` before any
password is looked at. A check that must run the slow password hash holds a place in
the limit while it runs, so guesses sent together are never checked more often than
the limit allows; a password the server verified before is accepted without holding
one (while neither the address nor the name is blocked).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from storekeeper.composite.auth import SimpleAuthStore
from storekeeper.errors import AuthenticationError
from storekeeper.events import EventManager
from storekeeper.server._context import BASIC_CHALLENGE, ServerContext
from storekeeper.server._http import HTTPProblem, json_response
from storekeeper.server._limits import FailureLimiter, LoginPolicy, TokenTable
from storekeeper.store.abstract import AbstractReadOnlyStore

__all__ = ["UserGuard", "login", "logout"]

BEARER_CHALLENGE = 'Bearer realm="storekeeper"'
#: Sent by a script (the web page) that handles 401 itself: no browser login dialog.
NO_CHALLENGE_HEADER = "x-storekeeper-no-challenge"


@dataclass
class _Session:
    store: SimpleAuthStore
    digest: bytes


class UserGuard:
    """Authenticates requests against the users of *auth* under *policy* (see the
    module)."""

    def __init__(self, auth: SimpleAuthStore, policy: LoginPolicy) -> None:
        self.auth = auth
        self.policy = policy
        self.tokens: TokenTable[_Session] = TokenTable(policy)
        self.failures = FailureLimiter(policy)
        self._sessions: dict[str, _Session] = {}
        self._key = secrets.token_bytes(32)

    def challenge(self, request: Request) -> str:
        """Basic, unless the request used a token or asked for no login dialog."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") or NO_CHALLENGE_HEADER in request.headers:
            return BEARER_CHALLENGE
        return BASIC_CHALLENGE

    async def store_for(self, request: Request) -> AbstractReadOnlyStore:
        """The requesting user's session store; AuthenticationError without valid
        credentials (Basic, ``Bearer TOKEN``, or ``?access_token=`` on GET/HEAD)."""
        return (await self.session_for(request)).store

    async def session_for(self, request: Request) -> _Session:
        """The requesting user's session (see :meth:`store_for`)."""
        return (await self.authenticate(request))[0]

    async def authenticate(self, request: Request) -> tuple[_Session, float | None]:
        """The requesting user's session, and the end of the token it came with
        (``None`` for a password)."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "basic":
                username, password = _basic(credentials.strip())
                return await self._password(request, username, password), None
            if scheme.lower() == "bearer":
                return self._bearer(credentials.strip())
            raise AuthenticationError(f"unsupported authorization scheme {scheme!r}")
        token = request.query_params.get("access_token")
        if token is not None and request.method in {"GET", "HEAD"}:
            return self._bearer(token)
        raise AuthenticationError("this server requires authentication")

    async def _password(self, request: Request, username: str, password: str) -> _Session:
        """The session of *username* if *password* is right: a remembered one at once,
        else :meth:`_verify` holding a place in the failed-login limit; 429 while the
        address or the name is blocked, whatever the password."""
        address = request.client.host if request.client is not None else "unknown"
        subjects = (f"address:{address}", f"user:{username}")
        _refuse_after(self.failures.retry_after(*subjects))
        digest = hmac.new(
            self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        known = self._sessions.get(username)
        if (
            known is not None
            and hmac.compare_digest(known.digest, digest)
            and known.store.is_connected()
        ):
            self.failures.forget(subjects[1])
            return known
        _refuse_after(self.failures.reserve(*subjects))
        wrong = False
        try:
            session = await self._verify(username, password, digest)
        except AuthenticationError:
            wrong = True
            raise
        finally:  # also when the client went away: the place is given back
            self.failures.finished(*subjects, failed=wrong)
        self.failures.forget(subjects[1])
        return session

    async def _verify(self, username: str, password: str, digest: bytes) -> _Session:
        """A new session of *username* checked with *password* (the slow hash runs in
        a worker thread); *digest* is the password's keyed digest, remembered with it."""
        store = SimpleAuthStore(
            self.auth.store,
            self.auth.encoder,
            self.auth.user_key_path,
            None if self.auth.user_key_store is self.auth.store else self.auth.user_key_store,
            EventManager(),
            recheck_interval=self.auth.recheck_interval,
        )
        credentials = {"username": username, "password": password}
        await run_in_threadpool(store.connect, credentials)
        session = _Session(store, digest)
        # A session replaced here lives on while tokens issued on it do.
        self._sessions[username] = session
        return session

    def _bearer(self, token: str) -> tuple[_Session, float]:
        found = self.tokens.use(token)
        if found is None:
            raise AuthenticationError("the token is unknown or has expired: log in again")
        return found


def _refuse_after(wait: int | None) -> None:
    """Answer 429 with ``Retry-After: wait`` unless *wait* is ``None``."""
    if wait is not None:
        raise HTTPProblem(
            429,
            f"too many failed logins from this address or for this user: try again in {wait} s",
            "TooManyRequests",
            {"Retry-After": str(wait)},
        )


def _basic(credentials: str) -> tuple[str, str]:
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("malformed Basic credentials") from None
    username, colon, password = text.partition(":")
    if not colon or not username:
        raise AuthenticationError("malformed Basic credentials")
    return username, password


async def login(context: ServerContext, request: Request) -> Response:
    """``POST /login`` with ``Authorization: Basic ...`` (or ``Bearer TOKEN`` for a fresh
    token; the request body is not read): ``{"token", "user",
    "expires", "idle_timeout"}``; send ``Authorization: Bearer TOKEN`` (or
    ``?access_token=TOKEN`` on a GET) afterwards. ``expires`` is the token's last moment
    (POSIX seconds; a token asked for with a token ends no later than that one), and
    unused for ``idle_timeout`` seconds it ends sooner."""
    guard = context.guard
    if not isinstance(guard, UserGuard):
        return json_response({"token": None, "user": None, "expires": None, "idle_timeout": None})
    session, ends = await guard.authenticate(request)
    token, expires = guard.tokens.issue(session, ends)
    return json_response(
        {
            "token": token,
            "user": session.store.user_tag,
            "expires": expires,
            "idle_timeout": guard.policy.token_idle,
        }
    )


async def logout(context: ServerContext, request: Request) -> Response:
    """``DELETE /login`` with ``Authorization: Bearer TOKEN``: the token stops working."""
    guard = context.guard
    header = request.headers.get("authorization", "")
    if isinstance(guard, UserGuard) and header.lower().startswith("bearer "):
        guard.tokens.revoke(header[7:].strip())
    return Response(status_code=204)
