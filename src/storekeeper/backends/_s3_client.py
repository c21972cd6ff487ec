"""The S3 requests an S3Store makes, through boto3, with errors translated.

Every call goes through :func:`call`, which turns botocore's errors into storekeeper's
tree (``raise ... from``): a missing bucket or object, access denied, a failed
precondition (HTTP 412) and an unreachable server each get their own class. Throttling
and transient server errors are retried by botocore itself with capped exponential
backoff and jitter (its ``standard`` retry mode, :data:`MAX_ATTEMPTS` attempts); what
still fails after that is a :class:`~storekeeper.errors.BackendUnavailableError`.

Credentials come the standard boto3 way (environment, shared profile, instance role)
unless given explicitly; they are handed to boto3 only and never formatted into a
message or a log line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    KeyNotFoundError,
)

__all__ = [
    "MAX_ATTEMPTS",
    "MissingObjectError",
    "PreconditionError",
    "UnsatisfiableRangeError",
    "call",
    "make_client",
]

#: Attempts per request (the first plus retries) for throttling and 5xx answers.
MAX_ATTEMPTS = 6
_session: tuple[int, Any] | None = None
_session_lock = threading.Lock()
_T = TypeVar("_T")

_MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled", "Forbidden"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503"})


class MissingObjectError(KeyNotFoundError):
    """The object asked for does not exist (HTTP 404 on an object)."""


class UnsatisfiableRangeError(BackendError):
    """A ranged GET starting past the end of the object (HTTP 416)."""


class PreconditionError(ConflictError):
    """An ``If-Match`` / ``If-None-Match`` condition did not hold (HTTP 412 or 409)."""


def make_client(
    endpoint_url: str | None,
    region: str | None,
    credentials: dict[str, str] | None,
    max_pool_connections: int,
    max_attempts: int = MAX_ATTEMPTS,
    profile: str | None = None,
) -> Any:
    """A boto3 S3 client: standard retries, a connection pool shared by threads, and
    path-style addressing when an endpoint is given (S3-compatible servers).
    Credentials: *credentials* if given, else the named *profile*, else boto3's
    standard lookup (environment, default profile, instance role)."""
    config = botocore.config.Config(
        # botocore's "max_attempts" counts retries only; ours counts every attempt.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if endpoint_url else None,
        # Checksums on every request cost a full pass over the data; the S3 SDK
        # default of "when_supported" would also add trailers some servers refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    if profile is not None:  # a named profile of the shared AWS config files
        return boto3.session.Session(profile_name=profile).client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
    global _session
    # One session per process: it caches the parsed service model, which otherwise
    # costs about 0.1 s of CPU per client. Sessions are not thread-safe, hence the lock.
    with _session_lock:
        if _session is None or _session[0] != os.getpid():
            _session = (os.getpid(), boto3.session.Session())
        return _session[1].client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=config,
            **(credentials or {}),
        )


def call(what: str, function: Callable[..., _T], /, **arguments: Any) -> _T:
    """``function(**arguments)`` with botocore's errors translated; *what* names the
    request for messages (an object name, never a credential)."""
    try:
        return function(**arguments)
    except botocore.exceptions.ClientError as exc:
        translate(what, exc)
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectTimeoutError,
    ) as exc:
        raise BackendUnavailableError(f"S3 server unreachable during {what}: {exc}") from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise AuthenticationError(f"no S3 credentials found for {what}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise BackendError(f"S3 request failed: {what}: {type(exc).__name__}") from exc


def error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    """The S3 error code and HTTP status of *exc*."""
    response = exc.response
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate(what: str, exc: botocore.exceptions.ClientError) -> NoReturn:
    """Raise the storekeeper error for botocore's *exc* (from *exc*)."""
    code, status = error_code(exc)
    if code == "NoSuchBucket":
        raise BackendError(f"the S3 bucket does not exist ({what})") from exc
    if code in _MISSING_OBJECT or (status == 404 and code != "NoSuchUpload"):
        raise MissingObjectError(f"no S3 object for {what}") from exc
    if code == "InvalidRange" or status == 416:
        raise UnsatisfiableRangeError(f"range past the end of {what}") from exc
    if code in _PRECONDITION or status == 412:
        raise PreconditionError(f"S3 precondition failed for {what} ({code})") from exc
    if code in _BAD_CREDENTIALS:
        raise AuthenticationError(f"S3 refused the credentials ({code}) for {what}") from exc
    if code in _DENIED or status == 403:
        raise AuthorizationError(f"S3 access denied ({code}) for {what}") from exc
    if code in _THROTTLED or status in (500, 502, 503, 504):
        raise BackendUnavailableError(
            f"S3 kept failing ({code or status}) after its retries: {what}"
        ) from exc
    raise BackendError(f"S3 error {code or status} for {what}") from exc
