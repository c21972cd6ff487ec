"""Reading store URLs the same way in every backend's ``from_url``.

:func:`~storekeeper.store.registry.open_store` splits a URL with
:func:`urllib.parse.urlsplit` and hands the parts to the backend's ``from_url``. These
helpers give every backend the same rules:

- :func:`split_url` splits a URL as :func:`urllib.parse.urlsplit` does, remembering
  whether ``//`` followed the scheme (:func:`has_authority`): ``sqlite:/x.db`` and
  ``sqlite:///x.db`` split alike, but only a backend that sees the difference can refuse
  the first.
- :func:`url_path` percent-decodes the path as UTF-8, as ``file://`` URLs are read
  everywhere (``my%20store`` is ``my store``), and refuses what no path may hold.
- :func:`url_options` reads the ``?name=value&...`` options against the backend's table
  of accepted names and converters (:func:`flag`, :func:`count`, :func:`seconds`,
  :func:`text`, :func:`names`, :func:`choice`). A misspelt name, a repeated name or a
  value the converter refuses is an :class:`~storekeeper.errors.InvalidURLError` that
  names the valid options, never silently ignored: ``?durabel=false`` must not leave a
  store durable while its author believes otherwise.
- :func:`create` builds the store from what a URL and keyword options give: a keyword
  the constructor does not take is an :class:`~storekeeper.errors.InvalidArgumentError`
  naming the valid ones, and a value the constructor refuses (``ValueError``) an
  :class:`~storekeeper.errors.InvalidURLError`.

Third-party backends may use them in their own ``from_url``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from storekeeper.errors import InvalidArgumentError, InvalidURLError, StorekeeperError

__all__ = [
    "choice",
    "count",
    "create",
    "flag",
    "has_authority",
    "names",
    "seconds",
    "split_url",
    "text",
    "url_options",
    "url_path",
]

_Store = TypeVar("_Store")

#: Turns an option's text into its value; raises ValueError saying what it expected.
Converter = Callable[[str], Any]

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def flag(value: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``, any case)."""
    word = value.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected true or false (or 1/0, yes/no, on/off)")


def count(value: str) -> int:
    """A non-negative integer written in decimal digits."""
    if not value.isascii() or not value.isdigit():
        raise ValueError("expected a non-negative integer")
    return int(value)


def seconds(value: str) -> float:
    """A non-negative, finite number (a duration in seconds)."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError("expected a non-negative, finite number of seconds")
    return number


def text(value: str) -> str:
    """Any non-empty text."""
    if not value:
        raise ValueError("expected a non-empty value")
    return value


def names(value: str) -> list[str]:
    """A comma-separated list of non-empty names."""
    items = value.split(",")
    if not all(items):
        raise ValueError("expected comma-separated, non-empty names")
    return items


def choice(*words: str | None) -> Converter:
    """One of *words*; ``None`` among them is written ``none`` in a URL."""
    spelled = {("none" if word is None else word): word for word in words}

    def convert(value: str) -> str | None:
        try:
            return spelled[value.lower()]
        except KeyError:
            raise ValueError(f"expected one of {', '.join(spelled)}") from None

    return convert


def url_options(parts: SplitResult, accepted: Mapping[str, Converter]) -> dict[str, Any]:
    """The options in *parts*' query, each converted by its entry in *accepted*.

    Names and values are percent-decoded (``+`` is a space). Raises
    :class:`~storekeeper.errors.InvalidURLError`, naming the valid options, for an
    unknown or repeated name, a name without ``=value``, a value its converter refuses,
    or a ``#fragment`` (a store URL has none, so one is a mistake, not a comment).
    """
    scheme = parts.scheme
    if parts.fragment:
        raise InvalidURLError(f"{scheme}:// URLs take no #fragment (got #{parts.fragment})")
    settings: dict[str, Any] = {}
    for name, value in _query_fields(parts):
        convert = accepted.get(name)
        if convert is None:
            raise InvalidURLError(_unknown(scheme, name, accepted))
        if name in settings:
            raise InvalidURLError(f"{scheme}:// URL option {name!r} is given twice")
        if value is None:
            raise InvalidURLError(f"{scheme}:// URL option {name!r} has no value: {name}=...")
        try:
            settings[name] = convert(value)
        except ValueError as exc:
            raise InvalidURLError(
                f"invalid {scheme}:// URL option {name}={value!r}: {exc}"
            ) from None
    return settings


def _query_fields(parts: SplitResult) -> list[tuple[str, str | None]]:
    """``(name, value)`` pairs of the query, value None for a field without ``=``."""
    fields: list[tuple[str, str | None]] = []
    for field in parts.query.split("&"):
        if not field:
            continue  # "?a=1&" or "?&a=1": nothing there
        name, equals, value = field.partition("=")
        try:
            fields.append((_decode(name), _decode(value) if equals else None))
        except UnicodeDecodeError:
            raise InvalidURLError(
                f"{parts.scheme}:// URL option {field!r} has %-escapes that are not UTF-8"
            ) from None
    return fields


def _decode(part: str) -> str:
    return unquote(part.replace("+", " "), errors="strict")


def _unknown(scheme: str, name: str, accepted: Mapping[str, Converter]) -> str:
    if not accepted:
        return f"{scheme}:// URLs take no options (got {name!r})"
    return f"unknown {scheme}:// URL option {name!r}; valid options: {', '.join(sorted(accepted))}"


def url_path(parts: SplitResult) -> str:
    """*parts*' path, percent-decoded as UTF-8.

    Raises :class:`~storekeeper.errors.InvalidURLError` when the escapes do not decode
    as UTF-8 or the path would hold a NUL character.
    """
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURLError(
            f"the path of {parts.scheme}:// URL {parts.path!r} has %-escapes that are not UTF-8"
        ) from None
    if "\x00" in path:
        raise InvalidURLError(f"the path of {parts.scheme}:// URL {parts.path!r} holds NUL")
    return path


class _StoreURL(SplitResult):
    """A :class:`~urllib.parse.SplitResult` that remembers whether the URL had ``//``."""

    authority = True


def split_url(url: str) -> SplitResult:
    """*url* split by :func:`urllib.parse.urlsplit`, remembering whether ``//`` followed
    the scheme (see :func:`has_authority`); ``ValueError`` as ``urlsplit`` raises it."""
    parts = _StoreURL(*urlsplit(url))
    # The scheme ends at the first colon (urlsplit found it there).
    if parts.scheme and not url.partition(":")[2].startswith("//"):
        parts.authority = False
    return parts


def has_authority(parts: SplitResult) -> bool:
    """Whether the URL *parts* were split from had ``//`` after its scheme.

    ``urlsplit`` gives ``sqlite:/x.db`` and ``sqlite:///x.db`` the same parts; only
    :func:`split_url` keeps the difference. Parts split otherwise count as having it.
    """
    return getattr(parts, "authority", True) is not False


def create(cls: Callable[..., _Store], parts: SplitResult, *args: Any, **settings: Any) -> _Store:
    """``cls(*args, **settings)``, the store a ``from_url`` builds.

    *settings* are the URL's options merged with the keyword options of
    :func:`~storekeeper.store.registry.open_store`. A name the constructor does not
    take raises :class:`~storekeeper.errors.InvalidArgumentError` naming the ones it
    does (a ``TypeError``, as Python's own for an unexpected keyword); a value it
    refuses with a ``ValueError`` (``chunk_size=0``, a table name holding NUL) raises
    :class:`~storekeeper.errors.InvalidURLError`. Storekeeper errors pass unchanged.
    """
    _check_names(cls, parts.scheme, len(args), settings)
    try:
        return cls(*args, **settings)
    except StorekeeperError:
        raise
    except ValueError as exc:
        raise InvalidURLError(f"invalid option for a {parts.scheme}:// store: {exc}") from exc


def _check_names(cls: Callable[..., object], scheme: str, given: int, settings: Any) -> None:
    """Refuse keyword *settings* that the constructor *cls* (whose first *given*
    parameters are passed by position) does not take."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return  # no signature to check against: the constructor decides
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = [p.name for p in parameters[given:] if p.kind in keywords]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise InvalidArgumentError(
            f"unknown option {unknown[0]!r} for a {scheme}:// store; "
            f"valid options: {', '.join(sorted(valid))}"
        )
