"""The Redis server side of :class:`~storekeeper.backends.redis.RedisStore`: reading its
URLs and describing the server's persistence (what a write survives).

Persistence is the server's setting, not the store's: ``save`` (RDB snapshots: a crash
loses the writes since the last snapshot), ``appendonly`` with ``appendfsync`` (an
append-only file: ``always`` loses nothing acknowledged, ``everysec`` about a second,
``no`` what the kernel had not written), or neither (everything lives in the server's
memory: a restart of the server loses every key, acknowledged or not).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult

from storekeeper.errors import InvalidURLError
from storekeeper.store import urls

__all__ = ["URL_OPTIONS", "durability", "persistence", "server_url"]

#: The storekeeper options a ``redis://`` URL may carry; the rest of the URL is redis-py's.
URL_OPTIONS: dict[str, urls.Converter] = {
    "prefix": urls.text,
    "inline_limit": urls.count,
    "chunk_size": urls.count,
    "grace": urls.seconds,
    "stream_length": urls.count,
    "events": urls.flag,
    "timeout": urls.seconds,
}


def server_url(parts: SplitResult) -> str:
    """The connection URL of *parts* (scheme, credentials, host, port and database),
    checked: the path is empty or ``/<database number>``."""
    scheme = parts.scheme.lower()
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidURLError(f"invalid port in {scheme}:// URL: {exc}") from None
    if not parts.hostname:
        raise InvalidURLError(f"a {scheme}:// URL names a host: {scheme}://host:6379/0")
    database = urls.url_path(parts).strip("/") or "0"
    if not database.isascii() or not database.isdigit():
        raise InvalidURLError(
            f"the path of a {scheme}:// URL is a database number (/0, /1, ...), not {parts.path!r}"
        )
    return f"{scheme}://{parts.netloc}/{int(database)}"


def persistence(client: Any) -> dict[str, Any]:
    """The server's persistence settings: ``save``, ``appendonly``, ``appendfsync``
    (from ``CONFIG GET``; ``None`` where the server refuses it, as managed services
    may) and ``aof_enabled`` / ``rdb_last_save_time`` from ``INFO persistence``."""
    found: dict[str, Any] = {"save": None, "appendonly": None, "appendfsync": None}
    for name in found:
        try:
            value = client.config_get(name).get(name)
        except Exception:  # noqa: BLE001 - CONFIG may be disabled; INFO still answers
            value = None
        found[name] = value.decode() if isinstance(value, bytes) else value
    info = client.info("persistence")
    found["aof_enabled"] = bool(info.get("aof_enabled"))
    found["rdb_last_save_time"] = info.get("rdb_last_save_time")
    return found


def durability(settings: dict[str, Any]) -> str:
    """One sentence on what an acknowledged write survives under *settings*."""
    if settings.get("aof_enabled") or settings.get("appendonly") == "yes":
        fsync = settings.get("appendfsync") or "unknown"
        loss = {
            "always": "a crash loses no acknowledged write",
            "everysec": "a crash of the server's host may lose about the last second of writes",
            "no": "a crash of the server's host may lose what the kernel had not yet written",
        }.get(fsync, "what a crash loses depends on appendfsync")
        return f"append-only file (appendfsync {fsync}): {loss}"
    if settings.get("save"):
        return (
            f"snapshots only (save {settings['save']!r}): a crash or restart of the server "
            "loses the writes made since the last snapshot"
        )
    if settings.get("save") == "":
        return (
            "none: the server keeps nothing on disk, so a restart of the server loses "
            "every key (writes are still atomic and shared between processes)"
        )
    return "unknown: the server did not tell its save and appendonly settings"
