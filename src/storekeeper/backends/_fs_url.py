"""How a ``file:`` URL names a :class:`~storekeeper.backends.filesystem.FileSystemStore`.

``file:///absolute/dir`` (also ``file://localhost/absolute/dir`` and ``file:/absolute/dir``)
or ``file:relative/dir``, percent-decoded, with the options in :data:`URL_OPTIONS`.
"""

from __future__ import annotations

import os
from urllib.parse import SplitResult

from storekeeper.errors import InvalidURLError
from storekeeper.store import urls

__all__ = ["URL_OPTIONS", "url_directory"]

#: The options a ``file:`` URL may carry, with the converter of each value.
URL_OPTIONS = {
    "create": urls.flag,
    "durable": urls.flag,
    "inline_limit": urls.count,
    "lock_timeout": urls.seconds,
    "orphan_grace": urls.seconds,
}
_FORMS = "file:///absolute/dir, or file:relative/dir relative to the working directory"


def url_directory(parts: SplitResult) -> str:
    """The absolute directory a ``file:`` URL names; InvalidURLError for a host part or
    no path."""
    if parts.netloc not in ("", "localhost"):
        raise InvalidURLError(
            f"file://{parts.netloc}{parts.path} names the host {parts.netloc!r}, but a store "
            f"URL names a local directory: write {_FORMS}"
        )
    path = urls.url_path(parts)
    if not path:
        raise InvalidURLError(f"a file: URL needs a directory: write {_FORMS}")
    return os.path.abspath(path)
