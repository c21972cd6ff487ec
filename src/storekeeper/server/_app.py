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

__all__ = ["STATIC_DIR", "StoreApplication", "create_app"]

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
    max_tracked_logins: int = LoginPolicy.max_tracked,
    static_dir: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> StoreApplication:
    """An ASGI application serving *store* (connected; the caller disconnects it).

    *read_only* refuses every write with 405 (a store that is read-only anyway is
    served so). *auth*, a :class:`~storekeeper.composite.auth.SimpleAuthStore`
    wrapping *store*, makes every request authenticate (HTTP Basic, or a bearer token
    from ``POST /login``) and see the store as that user may; *store* must then be
    ``auth.store``. *max_upload* bounds a value's size in bytes (413 beyond it).
    *static_dir* replaces the packaged web page directory.

    Logins (with *auth*): a token from ``POST /login`` lasts *token_lifetime* seconds
    at most (default 12 hours) and ends sooner when unused for *token_idle* seconds
    (default 1 hour) or revoked by ``DELETE /login``; at most *max_tokens* (default
    10000) live at once, and a new one pushes out the oldest. After
    *max_failed_logins* (default 10) wrong passwords within *failed_login_window*
    seconds (default 300) from one client address or for one user name, further
    attempts from that address or for that name answer 429 with ``Retry-After`` until
    the window ends, without the password being checked; the failures of at most
    *max_tracked_logins* addresses and names (default 10000) are remembered, the least
    recent forgotten first. *clock* gives the time in POSIX seconds (tests pass their
    own).
    """
    if auth is not None and auth.store is not store:
        raise ValueError("auth must be a SimpleAuthStore wrapping the served store")
    policy = LoginPolicy(
        token_lifetime=token_lifetime,
        token_idle=token_idle,
        max_tokens=max_tokens,
        max_failed_logins=max_failed_logins,
        failed_login_window=failed_login_window,
        max_tracked=max_tracked_logins,
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
