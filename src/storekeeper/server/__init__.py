"""``storekeeper.server``: any store over HTTP (extra ``[server]``: Starlette, uvicorn).

:func:`create_app` builds the ASGI application for a connected store; :func:`serve`
opens a store URL and runs the application under uvicorn until interrupted. The HTTP
layout is described in :mod:`storekeeper.backends.http_protocol`; the original encore
``DynamicURLStore`` client works against it unchanged, and so does
:class:`storekeeper.backends.http.DynamicURLStore`.

Keys and line breaks: keys may hold CR and LF like any other character (every store
round-trips them), but ``GET /query`` answers one key per line, so when a key it
would list holds a line break it answers 409 ``UnlistableKey`` instead of letting
the key forge lines. ``POST /query`` (JSON) and ``GET /list`` list such keys.

Conditional requests: ``If-Match`` (a tag, a list of tags, or ``*``) guards reads
and writes of a key and uses the strong comparison, so weak tags (``W/"..."``) never
match (412); ``If-None-Match`` on reads compares weakly (304). Deeply nested JSON in
a request body answers 400, and a 405 names the allowed methods in ``Allow``.

Also ``python -m storekeeper.server STORE_URL [--host H] [--port P] [--read-only]``.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from storekeeper.composite.auth import SimpleAuthStore
from storekeeper.server._app import STATIC_DIR, check_max_upload, create_app
from storekeeper.server._limits import LoginPolicy
from storekeeper.server._threaded import ServerThread
from storekeeper.store.registry import open_read_only_store

__all__ = [
    "STATIC_DIR",
    "InsecureAuthError",
    "ServerThread",
    "create_app",
    "is_loopback",
    "serve",
]

#: Connections a listening socket queues before the server accepts them.
BACKLOG = 2048


class InsecureAuthError(ValueError):
    """Authentication would be served without TLS on an address others can reach."""


def is_loopback(host: str) -> bool:
    """Whether *host* is only reachable from this machine (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    read_only: bool = False,
    auth: SimpleAuthStore | None = None,
    *,
    insecure_auth: bool = False,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    ssl_keyfile_password: str | None = None,
    ssl_ca_certs: str | None = None,
    max_upload: int | None = None,
    token_lifetime: float = LoginPolicy.token_lifetime,
    token_idle: float = LoginPolicy.token_idle,
    max_tokens: int = LoginPolicy.max_tokens,
    max_failed_logins: int = LoginPolicy.max_failed_logins,
    failed_login_window: float = LoginPolicy.failed_login_window,
    max_tracked_logins: int = LoginPolicy.max_tracked_logins,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> None:
    """Serve the store at *store_url* on *host*:*port* until interrupted.

    *auth*, when given, is a :class:`~storekeeper.composite.auth.SimpleAuthStore`
    (unconnected is fine) built over any store: the store at *store_url* is then
    wrapped the same way (same encoder, user key path and user store) and every
    request must authenticate. Authentication over plain HTTP on an address that is not
    loopback raises :class:`InsecureAuthError` unless *insecure_auth* is true (pass
    *ssl_certfile* and *ssl_keyfile* for TLS). *token_lifetime*, *token_idle*,
    *max_tokens*, *max_failed_logins*, *failed_login_window* and *max_tracked_logins*
    bound login tokens and failed logins, and *max_upload* bounds a value's size, as
    :func:`create_app` describes (a bad value raises before the store is opened).
    Remaining options go to ``uvicorn.Config``.
    """
    import uvicorn

    check_max_upload(max_upload)
    LoginPolicy(  # only to refuse bad settings before the store is opened
        token_lifetime=token_lifetime,
        token_idle=token_idle,
        max_tokens=max_tokens,
        max_failed_logins=max_failed_logins,
        failed_login_window=failed_login_window,
        max_tracked_logins=max_tracked_logins,
    )
    tls = ssl_certfile is not None
    if auth is not None and not tls and not is_loopback(host) and not insecure_auth:
        raise InsecureAuthError(
            f"refusing to serve passwords over plain HTTP on {host}: pass a TLS certificate "
            "and key, bind to a loopback address, or allow it explicitly (insecure_auth)"
        )
    store = open_read_only_store(store_url)
    try:
        guard_store = None
        if auth is not None:
            users = auth.user_key_store if auth.user_key_store is not auth.store else None
            guard_store = SimpleAuthStore(
                store,  # type: ignore[arg-type]
                auth.encoder,
                auth.user_key_path,
                users,
                recheck_interval=auth.recheck_interval,
            )
        app = create_app(
            store,
            read_only=read_only,
            auth=guard_store,
            max_upload=max_upload,
            token_lifetime=token_lifetime,
            token_idle=token_idle,
            max_tokens=max_tokens,
            max_failed_logins=max_failed_logins,
            failed_login_window=failed_login_window,
            max_tracked_logins=max_tracked_logins,
        )
        uvicorn_options.setdefault("backlog", BACKLOG)
        uvicorn_options.setdefault("timeout_graceful_shutdown", 5)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_keyfile_password=ssl_keyfile_password,
            ssl_ca_certs=ssl_ca_certs,
            **uvicorn_options,
        )
        uvicorn.Server(config).run()
    finally:
        store.disconnect()
