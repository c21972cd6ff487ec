"""The HTTP side of :class:`~storekeeper.backends.http.DynamicURLStore`: one pooled
urllib3 manager, credentials as headers, and server answers turned into store errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from storekeeper.backends.http_protocol import error_class
from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    KeyNotFoundError,
    ReadOnlyStoreError,
    StorekeeperError,
)
from storekeeper.store.backend import missing

__all__ = ["Transport", "authorize", "basic_header"]

#: Statuses that mean "the request was understood"; others raise (see :meth:`Transport.fail`).
_FALLBACK: dict[int, type[StorekeeperError]] = {
    401: AuthenticationError,
    403: AuthorizationError,
    405: ReadOnlyStoreError,
    409: ConflictError,
    412: ConflictError,
}


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic *username* and *password* (UTF-8)."""
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class Transport:
    """A connection pool plus the headers every request carries."""

    def __init__(self, timeout: float, pool_size: int) -> None:
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        # One Retry object for every request (no retries, no redirects followed): a
        # bare ``False`` would be turned into a new Retry object per request.
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            retries=urllib3.Retry(total=False, redirect=False),
            timeout=self.timeout,
        )
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.clear()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        chunked: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; :class:`BackendUnavailableError` when the server cannot be
        reached. With *stream* the body is left unread (release it after use)."""
        sent = {**self.headers, **(headers or {})}
        try:
            return self.pool.request(
                method,
                url,
                body=body,
                headers=sent,
                preload_content=not stream,
                decode_content=False,
                redirect=False,
                chunked=chunked,
            )
        except Urllib3Error as exc:
            raise BackendUnavailableError(f"{method} {url} failed: {exc}") from exc

    def fail(self, response: urllib3.BaseHTTPResponse, key: str | None) -> StorekeeperError:
        """The error an unsuccessful *response* (about *key*, if any) stands for: the
        class the server named, else one chosen by the status."""
        try:
            text = response.data
        except Urllib3Error:
            text = b""
        response.release_conn()
        name, message = None, ""
        try:
            payload: Any = json.loads(text)
            if isinstance(payload, dict):
                name, message = payload.get("error"), str(payload.get("message", ""))
        except ValueError:
            message = text[:200].decode("utf-8", "replace")
        status = response.status
        cls = error_class(name)
        if cls is KeyNotFoundError or (cls is None and status == 404):
            return missing(key) if key is not None and cls is None else KeyNotFoundError(message)
        if cls is not None:
            return cls(message)
        if status in (400, 413, 416):
            return InvalidArgumentError(f"the server refused the request ({status}): {message}")
        fallback = _FALLBACK.get(status)
        if fallback is not None:
            return fallback(message or f"HTTP {status}")
        return BackendError(f"the server answered {status}: {message}")


def authorize(transport: Transport, credentials: Any) -> str | None:
    """Set *transport*'s ``Authorization`` header for *credentials* (see
    :meth:`~storekeeper.backends.http.DynamicURLStore.connect` for the forms taken);
    the user tag they name, if any."""
    if credentials is None:
        return None
    if isinstance(credentials, str):
        transport.headers["Authorization"] = "Bearer " + credentials
        return None
    if isinstance(credentials, Mapping):
        if "token" in credentials:
            transport.headers["Authorization"] = "Bearer " + str(credentials["token"])
            return None
        username, password = credentials.get("username"), credentials.get("password")
        credentials = (username, password)
    if isinstance(credentials, tuple | list) and len(credentials) == 2:
        first, second = credentials
        if isinstance(first, str) and isinstance(second, str | bytes):
            password = second.decode() if isinstance(second, bytes) else second
            transport.headers["Authorization"] = basic_header(first, password)
            return first
        if isinstance(first, str):  # encore's (user_tag, session)
            transport.headers.update(dict(getattr(second, "headers", {}) or {}))
            auth = getattr(second, "auth", None)
            if isinstance(auth, tuple) and len(auth) == 2:
                transport.headers["Authorization"] = basic_header(*auth)
            return first
    raise AuthenticationError(
        "credentials are {'username', 'password'}, a (username, password) pair, "
        "a token, or a (user_tag, session) pair"
    )
