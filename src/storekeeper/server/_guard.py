"""Authentication: HTTP Basic and bearer tokens, checked against a SimpleAuthStore.

Each user gets one :class:`~storekeeper.composite.auth.SimpleAuthStore` session (a
store object connected with their credentials, over the served store) that every
request of theirs goes through, so a user sees, lists, queries and hears of exactly the
keys the store lets them. Verified passwords are remembered as keyed digests, so the
slow password hash runs once per user and password, not once per request. A session
is re-checked against the user record by the store itself (``recheck_interval``), so a
removed user or a changed password locks the old credentials out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from storekeeper.composite.auth import SimpleAuthStore
from storekeeper.errors import AuthenticationError
from storekeeper.events import EventManager
from storekeeper.server._context import BASIC_CHALLENGE, ServerContext
from storekeeper.server._http import json_response
from storekeeper.store.abstract import AbstractReadOnlyStore

__all__ = ["UserGuard", "login", "logout"]

BEARER_CHALLENGE = 'Bearer realm="storekeeper"'
#: Sent by a script (the web page) that handles 401 itself: no browser login dialog.
NO_CHALLENGE_HEADER = "x-storekeeper-no-challenge"


@dataclass
class _Session:
    store: SimpleAuthStore
    digest: bytes


@dataclass
class _Token:
    session: _Session
    expires: float


class UserGuard:
    """Authenticates requests against the users of *auth* (see the module)."""

    def __init__(self, auth: SimpleAuthStore, token_lifetime: float) -> None:
        self.auth = auth
        self.token_lifetime = token_lifetime
        self._sessions: dict[str, _Session] = {}
        self._tokens: dict[str, _Token] = {}
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
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "basic":
                username, password = _basic(credentials.strip())
                return await self._verify(username, password)
            if scheme.lower() == "bearer":
                return self._bearer(credentials.strip())
            raise AuthenticationError(f"unsupported authorization scheme {scheme!r}")
        token = request.query_params.get("access_token")
        if token is not None and request.method in {"GET", "HEAD"}:
            return self._bearer(token)
        raise AuthenticationError("this server requires authentication")

    async def _verify(self, username: str, password: str) -> _Session:
        digest = hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256)
        known = self._sessions.get(username)
        if (
            known is not None
            and hmac.compare_digest(known.digest, digest.digest())
            and known.store.is_connected()
        ):
            return known
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
        session = _Session(store, digest.digest())
        # A session replaced here lives on while tokens issued on it do.
        self._sessions[username] = session
        return session

    def _bearer(self, token: str) -> _Session:
        found = self._tokens.get(token)
        if found is None or found.expires < time.time():
            self._tokens.pop(token, None)
            raise AuthenticationError("the token is unknown or has expired: log in again")
        return found.session

    def issue(self, session: _Session) -> tuple[str, float]:
        """A new bearer token for *session* and when it expires."""
        now = time.time()
        for token, entry in list(self._tokens.items()):
            if entry.expires < now:
                del self._tokens[token]
        token = secrets.token_urlsafe(32)
        expires = now + self.token_lifetime
        self._tokens[token] = _Token(session, expires)
        return token, expires

    def revoke(self, token: str) -> None:
        """Forget *token* (nothing if unknown)."""
        self._tokens.pop(token, None)


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
    """``POST /login`` (with Basic credentials): ``{"token", "user", "expires"}``; send
    ``Authorization: Bearer TOKEN`` (or ``?access_token=TOKEN`` on a GET) afterwards."""
    guard = context.guard
    if not isinstance(guard, UserGuard):
        return json_response({"token": None, "user": None, "expires": None})
    session = await guard.session_for(request)
    token, expires = guard.issue(session)
    return json_response({"token": token, "user": session.store.user_tag, "expires": expires})


async def logout(context: ServerContext, request: Request) -> Response:
    """``DELETE /login`` with ``Authorization: Bearer TOKEN``: the token stops working."""
    guard = context.guard
    header = request.headers.get("authorization", "")
    if isinstance(guard, UserGuard) and header.lower().startswith("bearer "):
        guard.revoke(header[7:].strip())
    return Response(status_code=204)
