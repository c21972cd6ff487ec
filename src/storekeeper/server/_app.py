"""The ASGI application: routes, the static web page, the event stream and the guard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from storekeeper.composite.auth import SimpleAuthStore
from storekeeper.server._batch import batch
from storekeeper.server._context import ServerContext, handled
from storekeeper.server._events import EventHub, events_endpoint
from storekeeper.server._guard import UserGuard, login, logout
from storekeeper.server._limits import LoginPolicy
from storekeeper.server._query_routes import info, list_keys, query_get, query_post
from storekeeper.server._store_routes import StoreEndpoint
from storekeeper.store.abstract import AbstractReadOnlyStore

__all__ = ["STATIC_DIR", "StoreApplication", "check_max_upload", "create_app"]

#: Where the web page's files are: served at ``/`` (``index.html``) and ``/static``.
STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(
    store: AbstractReadOnlyStore,
    *,
    read_only: bool = False,
    auth: SimpleAuthStore | None = None,
    max_upload: int | None = None,
    token_lifetime: float = LoginPolicy.token_lifetime,
    token_idle: float = LoginPolicy.token_idle,
    max_tokens: int = LoginPolicy.max_tokens,
    max_failed_logins: int = LoginPolicy.max_failed_logins,
    failed_login_window: float = LoginPolicy.failed_login_window,
    max_tracked_logins: int = LoginPolicy.max_tracked_logins,
    static_dir: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> StoreApplication:
    """An ASGI application serving *store* (connected; the caller disconnects it).

    *read_only* refuses every write with 405 (a store that is read-only anyway is
    served so). *auth*, a :class:`~storekeeper.composite.auth.SimpleAuthStore`
    wrapping *store*, makes every request authenticate (HTTP Basic, or a bearer token
    from ``POST /login``) and see the store as that user may; *store* must then be
    ``auth.store``. *max_upload* (an int >= 0, or ``None`` for no bound) bounds a
    value's size in bytes (413 beyond it). *static_dir* replaces the packaged web page
    directory.

    Logins (with *auth*): ``POST /login`` with HTTP Basic credentials (or with a bearer
    token, to get a fresh one) answers ``{"token", "user", "expires", "idle_timeout"}``.
    A token lasts *token_lifetime* seconds at most (default 12 hours) and ends sooner
    when unused for *token_idle* seconds (default 1 hour) or revoked by
    ``DELETE /login``; at most *max_tokens* (default 10000) live at once, and a new one
    pushes out the oldest. While *max_failed_logins* (default 10) wrong passwords from
    one client address or for one user name lie within the last *failed_login_window*
    seconds (default 300), further password attempts from that address or for that
    name answer 429 with ``Retry-After`` (until the oldest of those failures is
    *failed_login_window* seconds old) without the password being checked: the right
    password is refused too, so wrong guesses for a name lock its password logins out
    for up to one window (tokens already issued keep working); otherwise a guesser
    could go on testing passwords and learn the right one from the answer. A password
    check in progress counts against the limit, so attempts sent together are checked
    at most *max_failed_logins* times per window; the others answer 429 with
    ``Retry-After: 1``. The failures of at most *max_tracked_logins* addresses and
    names (default 10000) are remembered, the least recent forgotten first. A removed
    user or a changed password takes effect within *auth*'s ``recheck_interval``
    (default 5 s): until then the old password and the tokens issued to that user
    still work. Times are
    finite numbers of seconds > 0 and counts ints >= 1 (``ValueError`` naming the
    keyword otherwise). *clock*, a callable, gives the time in POSIX seconds (tests
    pass their own).
    """
    if auth is not None and auth.store is not store:
        raise ValueError("auth must be a SimpleAuthStore wrapping the served store")
    check_max_upload(max_upload)
    policy = LoginPolicy(
        token_lifetime=token_lifetime,
        token_idle=token_idle,
        max_tokens=max_tokens,
        max_failed_logins=max_failed_logins,
        failed_login_window=failed_login_window,
        max_tracked_logins=max_tracked_logins,
        clock=clock,
    )
    guard = None if auth is None else UserGuard(auth, policy)
    context = ServerContext(store, read_only=read_only, guard=guard, max_upload=max_upload)
    hub = EventHub()
    static = Path(static_dir) if static_dir is not None else STATIC_DIR
    routes = [
        Route("/query", handled(context, query_get), methods=["GET"]),
        Route("/query", handled(context, query_post), methods=["POST"]),
        Route("/list", handled(context, list_keys), methods=["GET"]),
        Route("/info", handled(context, info), methods=["GET"]),
        Route("/batch", handled(context, batch), methods=["POST"]),
        Route("/login", handled(context, login), methods=["POST"]),
        Route("/login", handled(context, logout), methods=["DELETE"]),
        Route("/events", handled(context, events_endpoint(hub)), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=static, check_dir=False)),
        Mount("/", app=StaticFiles(directory=static, html=True, check_dir=False)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            hub.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.context = context
    app.state.hub = hub
    return StoreApplication(app, StoreEndpoint(context))


def check_max_upload(max_upload: object) -> None:
    """``ValueError`` unless *max_upload* is ``None`` or an int >= 0 (a size in bytes)."""
    if max_upload is not None and (
        isinstance(max_upload, bool) or not isinstance(max_upload, int) or max_upload < 0
    ):
        raise ValueError(f"max_upload is an int >= 0 (bytes) or None, not {max_upload!r}")


class StoreApplication:
    """The server's ASGI application: ``/store/...`` straight to the store endpoint
    (whose keys may hold any character, newlines included, which Starlette's routes
    do not match), everything else to the Starlette application ``app``."""

    def __init__(self, app: Starlette, store_endpoint: StoreEndpoint) -> None:
        self.app = app
        self.store_endpoint = store_endpoint
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/store/"):
            await self.store_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
