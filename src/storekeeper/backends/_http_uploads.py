"""The upload side of :class:`~storekeeper.backends.http.DynamicURLStore`: values, data,
metadata and deletes sent to the server, with progress events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from storekeeper.backends._http_wire import etag_version, prefixed, watched
from storekeeper.backends.http_protocol import METADATA_LENGTH, quote_key
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    encode_metadata,
    iter_source,
    source_size,
)
from storekeeper.store.utils import StoreProgressManager

__all__ = ["Uploads"]


class Uploads:
    """Sending writes to the server (see the module)."""

    base_url: str
    url_format_no_part: str

    if TYPE_CHECKING:

        def _call(
            self, method: str, url: str, key: str | None, ok: tuple[int, ...] = ..., **kwargs: Any
        ) -> Any: ...
        def _url(self, key: str, part: str) -> str: ...
        def _observed(self, *classes: type) -> bool: ...
        def _progress_observed(self) -> bool: ...
        def _progress_metadata(self, metadata_json: str | None) -> Metadata | None: ...
        def _progress(
            self, message: str, key: str, size: int | None, metadata: Metadata | None = None
        ) -> StoreProgressManager: ...
        def get_metadata(self, key: str, select: Any = None) -> Metadata: ...

    def _send_value(
        self,
        key: str,
        source: object,
        metadata_json: str,
        buffer_size: int,
        conditions: dict[str, str],
    ) -> str | None:
        head = metadata_json.encode("utf-8")
        headers = {**conditions, METADATA_LENGTH: str(len(head))}
        if isinstance(source, bytes):
            body: Any = head + source
            response = self._upload("PUT", self._url(key, "value"), key, body, headers, None)
        else:
            chunks = self._chunks(key, source, buffer_size, metadata_json)
            size = source_size(source)
            body = prefixed(head, chunks)
            response = self._upload(
                "PUT",
                self._url(key, "value"),
                key,
                body,
                headers,
                None if size is None else len(head) + size,
            )
        return etag_version(response.headers.get("ETag"))

    def _replay_set(self, key: str, data: bytes, metadata_json: str) -> None:
        """A transaction's ``set``, sent at the commit to a server without ``/batch``."""
        self._send_value(key, data, metadata_json, DEFAULT_BUFFER_SIZE, {})

    def _send_data(
        self, key: str, data: object, buffer_size: int, conditions: dict[str, str]
    ) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            self._upload("PUT", self._url(key, "data"), key, bytes(data), conditions, None)
            return
        chunks = self._chunks(key, data, buffer_size, None)
        self._upload("PUT", self._url(key, "data"), key, chunks, conditions, source_size(data))

    def _upload(
        self,
        method: str,
        url: str,
        key: str,
        body: Any,
        headers: dict[str, str],
        length: int | None,
    ) -> Any:
        """Send *body* (bytes, or chunks of *length* bytes or of unknown length, then
        chunked); an error raised by the chunks' source is re-raised as it was."""
        failure: list[BaseException] = []
        if not isinstance(body, bytes):
            body = watched(body, failure)
            if length is not None:
                headers = {**headers, "Content-Length": str(length)}
        try:
            return self._call(
                method,
                url,
                key,
                body=body,
                headers=headers,
                chunked=not isinstance(body, bytes) and length is None,
            )
        except Exception:
            if failure:
                raise failure[0] from None
            raise

    def _chunks(
        self, key: str, source: object, buffer_size: int, metadata_json: str | None
    ) -> Iterator[bytes]:
        chunks = iter_source(source, buffer_size)
        if not self._progress_observed():
            yield from chunks
            return
        metadata = self._progress_metadata(metadata_json)
        total = 0
        with self._progress(f"Setting key {key!r}", key, source_size(source), metadata) as bar:
            for chunk in chunks:
                total += len(chunk)
                yield chunk
                bar.step(step=total)

    def _send_metadata(
        self, method: str, key: str, metadata_json: str, conditions: dict[str, str]
    ) -> None:
        body = metadata_json.encode("utf-8")
        self._call(method, self._url(key, "metadata"), key, body=body, headers=conditions)

    def _send_delete(self, key: str) -> None:
        url = self.url_format_no_part.format(base=self.base_url, key=quote_key(key))
        self._call("DELETE", url, key, (200, 204, 404))

    def _metadata_for_event(self, key: str, cls: type) -> str | None:
        """*key*'s metadata as JSON for an event of *cls*, read only if it can be heard."""
        if not self._observed(cls):
            return None
        try:
            return encode_metadata(self.get_metadata(key))
        except KeyError:
            return None
