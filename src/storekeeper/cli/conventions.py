"""What every ``storekeeper`` command shares: how it names stores and keys, how it prints,
how errors become exit codes.

- **Exit codes**: :data:`OK` 0, :data:`ERROR` 1, :data:`USAGE` 2 (bad arguments: also a
  malformed URL, key or JSON), :data:`NOT_FOUND` 3 (a key, user, file or store that does
  not exist), :data:`CONFLICT` 4 (a precondition failed: ``--if-version``,
  ``--create-only``, an existing user).
- **Errors**: one line on stderr, ``Error: <message>``; the traceback too with ``--debug``.
- **Stores**: a ``STORE`` operand is a store URL; left out, ``$STOREKEEPER_URL`` is used.
  A store a command only reads (ls, cat, get, head, glob, query, info, meta get, the
  SRC of cp/sync, rm, a dry run's DST) is never created: a missing one is exit 3.
- **Keys**: ``STORE_URL#key``, ``#key`` or a bare key (both in ``$STOREKEEPER_URL``), or
  ``--key KEY`` with the store as the operand. A bare key that looks like a URL
  (``a:b``) must be written ``#a:b``; one that does not is a key whole, ``#`` included
  (``k#2``).
- **Values** given on the command line (``-m name=value``, query terms) are JSON when
  they parse as JSON (``5``, ``true``, ``"007"``, ``[1,2]``) and strings otherwise.
- **Output**: ``--json`` prints one JSON object per line; progress goes to stderr, and
  only when stderr is a terminal.

This module imports only the standard library and click, so ``storekeeper --help``
stays fast; command modules import the library inside their functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

if TYPE_CHECKING:
    from storekeeper.events import BaseEventManager
    from storekeeper.store.abstract import AbstractReadOnlyStore, AbstractStore

__all__ = [
    "CONFLICT",
    "ENV_URL",
    "ERROR",
    "NOT_FOUND",
    "OK",
    "USAGE",
    "CommandError",
    "creates",
    "echo_json",
    "error_for",
    "iso_time",
    "json_option",
    "key_option",
    "looks_like_url",
    "parse_json",
    "parse_metadata",
    "parse_value",
    "progress_events",
    "read_store",
    "split_key",
    "store_progress",
    "store_url",
    "take_store",
    "write_store",
]

OK, ERROR, USAGE, NOT_FOUND, CONFLICT = 0, 1, 2, 3, 4
#: The environment variable naming the default store.
ENV_URL = "STOREKEEPER_URL"
# A scheme of two or more characters then ":", so "C:\\data" stays a path on Windows.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """An error a command reports as one line, with its exit code."""

    def __init__(self, message: str, exit_code: int = ERROR) -> None:
        super().__init__(message)
        # click declares exit_code on the class; each instance here carries its own.
        self.exit_code = exit_code  # type: ignore[misc]


def error_for(exc: BaseException, debug: bool = False) -> CommandError:
    """The :class:`CommandError` (message and exit code) for an exception a command
    raised; with *debug*, the traceback is printed to stderr first."""
    from storekeeper import errors  # the exception tree only: cheap, no backend

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) if isinstance(exc, errors.StorekeeperError) else _describe(exc)
    if isinstance(exc, errors.FileSystemStoreError):
        message += " (a file: URL with ?create=true creates the store)"
    if isinstance(exc, errors.ConflictError):
        return CommandError(message, CONFLICT)
    if isinstance(exc, KeyError | FileNotFoundError):
        return CommandError(message, NOT_FOUND)
    usage = (
        errors.InvalidURLError,
        errors.InvalidKeyError,
        errors.InvalidMetadataError,
        errors.InvalidArgumentError,
    )
    return CommandError(message, USAGE if isinstance(exc, usage) else ERROR)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return f"not found: {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename!r}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- naming stores and keys --------------------------------------------------------------
def looks_like_url(text: str) -> bool:
    """Whether *text* starts like a URL (``scheme:``), rather than a path or a key."""
    return bool(_URL.match(text))


def store_url(given: str | None = None) -> str:
    """*given*, or ``$STOREKEEPER_URL``; a usage error if neither names a store."""
    url = given or os.environ.get(ENV_URL)
    if not url:
        raise click.UsageError(f"name a STORE URL, or set {ENV_URL}")
    return url


def take_store(operands: tuple[str, ...], after: int) -> tuple[str, tuple[str, ...]]:
    """Split *operands* into ``[STORE] REST`` where REST has *after* items: the store is
    the first operand when there is one more than *after*, else ``$STOREKEEPER_URL``."""
    if len(operands) == after + 1:
        return store_url(operands[0]), operands[1:]
    if len(operands) == after:
        return store_url(None), operands
    raise click.UsageError(f"expected [STORE] and {after} more argument(s), got {len(operands)}")


def split_key(target: str | None, key: str | None = None) -> tuple[str, str]:
    """The ``(store URL, key)`` a key operand names (see the module documentation);
    *key* is the ``--key`` option, which makes *target* the store."""
    if key is not None:
        if target is not None and "#" in target:
            raise click.UsageError("give the key once: STORE_URL#key or --key KEY")
        if not key:
            raise click.UsageError("--key needs a non-empty key")
        return store_url(target), key
    if not target:
        raise click.UsageError("name a key: STORE_URL#key, #key or --key KEY")
    url, hashmark, name = target.partition("#")
    if not looks_like_url(target):
        if url:  # a bare key, "#" and all ("k#2"); "#k" names k in $STOREKEEPER_URL
            url, name = "", target
    elif not hashmark:
        raise click.UsageError(f"{target!r} names no key: add #key or --key KEY")
    if not name:
        raise click.UsageError(f"{target!r} names an empty key")
    return store_url(url or None), name


# Schemes whose stores take a ``create`` option: a store only read from is never created
# (a mistyped sqlite path must be "not found", not an empty store).
_CREATING = ("sqlite", "file")


def _no_create(url: str) -> dict[str, Any]:
    scheme = url.partition(":")[0].lower()
    return {"create": False} if scheme in _CREATING else {}


def creates(url: str) -> bool:
    """Whether opening *url* for writing would create a store that does not exist yet
    (an ``sqlite:`` file unless ``create=false``, a ``file:`` URL with ``create=true``)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    given = parse_qs(parts.query).get("create", [])
    default = parts.scheme.lower() == "sqlite"
    return given[-1].lower() in ("true", "1", "yes", "on") if given else default


def read_store(url: str) -> AbstractReadOnlyStore:
    """The connected store *url* opens, read-only ones included (use it in ``with``);
    a store that does not exist is not created (FileNotFoundError)."""
    from storekeeper.store.registry import open_read_only_store

    return open_read_only_store(url, **_no_create(url))


def write_store(url: str, *, create: bool = True) -> AbstractStore:
    """The connected writable store *url* opens (use it in ``with``); without *create*,
    one that does not exist is not created (FileNotFoundError), as for reading."""
    from storekeeper.store.registry import open_store

    return open_store(url, **({} if create else _no_create(url)))


# -- values on the command line ------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str, what: str) -> Any:
    """*text* parsed as strict JSON (no NaN); a usage error naming *what* otherwise."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise click.BadParameter(f"{what} is not valid JSON ({exc}): {_short(text)}") from None
    except RecursionError:
        raise click.BadParameter(f"{what} is JSON nested too deeply: {_short(text)}") from None


def parse_value(text: str) -> Any:
    """*text* as JSON if it is valid JSON, else the string itself; JSON nested too
    deeply to parse is a usage error (it is meant as JSON, and no store keeps it)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text
    except RecursionError:
        raise click.BadParameter(f"a value is JSON nested too deeply: {_short(text)}") from None


def _short(text: str) -> str:
    """*text* quoted, cut to a length that fits on one error line."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


def parse_metadata(
    meta: str | None, pairs: tuple[str, ...], what: str = "--meta"
) -> dict[str, Any] | None:
    """The metadata of a JSON object (the ``--meta`` option, or the argument *what*
    names in errors) and ``-m name=value`` options (the pairs win), ``None`` when
    neither was given."""
    if meta is None and not pairs:
        return None
    metadata: dict[str, Any] = {}
    if meta is not None:
        parsed = parse_json(meta, what)
        if not isinstance(parsed, dict):
            raise click.BadParameter(f"{what} must be a JSON object, not {_short(meta)}")
        metadata.update(parsed)
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"-m takes name=value, not {pair!r}")
        metadata[name] = parse_value(value)
    return metadata


# -- output ----------------------------------------------------------------------------------
def iso_time(timestamp: float | None) -> str | None:
    """A UTC POSIX *timestamp* as ISO 8601 to the second (``2026-12-06T23:01:29Z``)."""
    if timestamp is None:
        return None
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def echo_json(obj: Any) -> None:
    """Print *obj* as one line of JSON (what JSON cannot hold, as its str)."""
    click.echo(json.dumps(obj, ensure_ascii=False, default=str))


def json_option(function: F) -> F:
    """The ``--json`` flag of listing commands: one JSON object per line."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")(
        function
    )


def key_option(function: F) -> F:
    """The ``--key KEY`` option: the key, with the store as the operand."""
    return click.option(
        "--key", "key", metavar="KEY", help="The key (the operand is then the store)."
    )(function)


@contextlib.contextmanager
def progress_events(stream: TextIO | None = None) -> Iterator[BaseEventManager | None]:
    """A private event manager drawn as progress bars on stderr while the block runs,
    or ``None`` (no progress at all) when stderr is not a terminal."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        yield None
        return
    from storekeeper.events import EventManager
    from storekeeper.events.display import ProgressDisplay

    manager = EventManager()
    with ProgressDisplay(manager, stream):
        yield manager


@contextlib.contextmanager
def store_progress() -> Iterator[None]:
    """Draw the stores' own progress events (large reads and writes) on stderr while the
    block runs, when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    from storekeeper.events import get_event_manager
    from storekeeper.events.display import ProgressDisplay

    with ProgressDisplay(get_event_manager(), sys.stderr):
        yield
