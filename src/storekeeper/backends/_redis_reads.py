"""The read half of :class:`~storekeeper.backends.redis.RedisStore`: values, metadata,
queries and listings, each as the caller sees the store (its own transaction's writes
included, every key it reads watched; see ``_redis_transactions``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from redis.exceptions import RedisError

from storekeeper.backends._redis_errors import translate, translated
from storekeeper.backends._redis_index import Plan, plan
from storekeeper.backends._redis_transactions import FIELDS, Record, Transaction, as_record
from storekeeper.backends._redis_values import ChunkStream, chunk_set
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import (
    DEFAULT_BUFFER_SIZE,
    Metadata,
    check_batch_keys,
    check_key,
    check_pattern,
    check_read,
    check_select,
    decode_metadata,
    matches,
    missing,
    pick_metadata,
    query_terms,
    select_metadata,
)
from storekeeper.store.listing import check_listing, prefix_end, walk, with_changes
from storekeeper.store.query import QueryTerm
from storekeeper.store.value import BytesValue, StreamValue, Value

__all__ = ["Reads"]

_PAGE = 1000  # keys per round trip of a listing or a metadata fetch
_FIRST_PAGE = 64
_GLOB_SPECIAL = "*?["


class Reads(AbstractStore):
    """Reads of a Redis store; the store provides the attributes declared here."""

    root: str
    grace: int
    _client: Any

    def _mine(self) -> Transaction | None:
        raise NotImplementedError  # provided by the store

    # -- records and values ------------------------------------------------------------------
    def _record(self, key: str) -> Record | None:
        check_key(key)
        self._require_connection()
        transaction = self._mine()
        if transaction is not None:
            return transaction.record(key)
        try:  # not "with translate(...)": this runs on every read
            return as_record(self._client.hmget(f"{self.root}k:{key}", FIELDS))
        except RedisError as exc:
            raise translated(exc, f"reading {key!r}") from exc

    def _chunk(self, name: str, number: int, refresh: bool) -> bytes | None:
        """Chunk *number* of the chunk set *name* (``None``: the set is gone). With
        *refresh*, a set that expires (its value was replaced) has its expiry pushed
        back to the grace period; no script, so the chunk is copied once."""
        with translate(f"reading chunk {number} of {name!r}"):
            if not refresh:
                found: bytes | None = self._client.hget(name, str(number))
                return found
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(name, str(number))
            pipe.ttl(name)
            found, ttl = pipe.execute()
            if found is not None and 0 <= ttl < self.grace:
                self._client.expire(name, self.grace)
        return found

    def _value(self, key: str, record: Record) -> Value:
        common: dict[str, Any] = {
            "created": float(record[b"c"]),
            "modified": float(record[b"t"]),
            "version": record[b"v"].decode(),
            "metadata_json": record[b"m"].decode(),
        }
        blob = record.get(b"b")
        if blob is None:
            return BytesValue(record.get(b"d", b""), **common)
        size, chunk = int(record[b"z"]), int(record[b"h"])
        name = chunk_set(self.root, blob.decode())

        def opener(start: int = 0, end: int | None = None) -> Any:
            stop = size if end is None else min(end, size)
            return ChunkStream(self._chunk, name, key, chunk, start, stop)

        return StreamValue(opener, size=size, range_opener=opener, **common)

    def get(self, key: str) -> Value:
        """The value of *key*: in memory when inline, else streamed chunk by chunk."""
        record = self._record(key)
        if record is None:
            raise missing(key)
        return self._value(key, record)

    def exists(self, key: str) -> bool:
        """Whether *key* exists."""
        check_key(key)
        self._require_connection()
        transaction = self._mine()
        if transaction is not None:
            return transaction.record(key) is not None
        with translate(f"reading {key!r}"):
            return bool(self._client.exists(f"{self.root}k:{key}"))

    def get_metadata(self, key: str, select: Iterable[str] | None = None) -> Metadata:
        """A copy of *key*'s metadata, limited to *select* when given."""
        names = check_select(select)
        check_key(key)
        self._require_connection()
        if self._mine() is not None:
            record = self._record(key)
            text = None if record is None else record[b"m"]
        else:
            with translate(f"reading {key!r}"):
                text = self._client.hget(f"{self.root}k:{key}", "m")
        if text is None:
            raise missing(key)
        return select_metadata(decode_metadata(text.decode()), names)

    def to_bytes(self, key: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> bytes:
        """*key*'s data; an inline value in one round trip."""
        check_read(key, buffer_size)
        self._require_connection()
        if self._mine() is None:
            try:  # not "with translate(...)": this runs on every read
                data, blob = self._client.hmget(f"{self.root}k:{key}", b"d", b"b")
            except RedisError as exc:
                raise translated(exc, f"reading {key!r}") from exc
            # A value that fits one buffer emits no progress events.
            if data is not None and (len(data) <= buffer_size or not self._progress_observed()):
                return bytes(data)
            if data is None and blob is None:
                raise missing(key)
        return super().to_bytes(key, buffer_size)

    def multiget(self, keys: Iterable[str]) -> list[Value]:
        """The values of *keys* in input order, read in one round trip."""
        key_list = self._batch(keys)
        records = self._records(key_list)
        values = []
        for key, record in zip(key_list, records, strict=True):
            if record is None:
                raise missing(key)
            values.append(self._value(key, record))
        return values

    def multiget_metadata(
        self, keys: Iterable[str], select: Iterable[str] | None = None
    ) -> list[Metadata]:
        """Metadata of *keys* in input order, read in one round trip."""
        key_list = self._batch(keys)
        names = check_select(select)
        texts = self._metadata_texts(key_list)
        result = []
        for key, text in zip(key_list, texts, strict=True):
            if text is None:
                raise missing(key)
            result.append(select_metadata(decode_metadata(text), names))
        return result

    def _batch(self, keys: Iterable[str]) -> list[str]:
        check_batch_keys(keys)
        key_list = list(keys)
        for key in key_list:
            check_key(key)
        self._require_connection()
        return key_list

    def _records(self, keys: list[str]) -> list[Record | None]:
        transaction = self._mine()
        if transaction is not None:
            return [transaction.record(key) for key in keys]
        with translate(f"reading {len(keys)} keys"):
            pipe = self._client.pipeline(transaction=False)
            # HGETALL, not HMGET of the fields: the client encodes every argument of
            # every command in Python, which costs more than the index entries it
            # brings along.
            for key in keys:
                pipe.hgetall(f"{self.root}k:{key}")
            return [found or None for found in pipe.execute()]

    def _metadata_texts(self, keys: list[str]) -> list[str | None]:
        """The metadata JSON of *keys* as the caller sees them (``None``: missing)."""
        transaction = self._mine()
        changes: Mapping[str, Record | None] = {}
        if transaction is not None:
            changes = transaction.changes
            transaction.watch(f"{self.root}k:{key}" for key in keys if key not in changes)
        found: list[str | None] = []
        with translate(f"reading the metadata of {len(keys)} keys"):
            for start in range(0, len(keys), _PAGE):
                page = keys[start : start + _PAGE]
                pipe = self._client.pipeline(transaction=False)
                for key in page:
                    if key not in changes:
                        pipe.hget(f"{self.root}k:{key}", "m")
                fetched = iter(pipe.execute())
                for key in page:
                    record = changes[key] if key in changes else {b"m": next(fetched)}
                    text = None if record is None else record[b"m"]
                    found.append(None if text is None else text.decode())
        return found

    # -- queries ---------------------------------------------------------------------------------
    def query(
        self, select: Iterable[str] | None = None, *where: Mapping[str, Any], **kwargs: Any
    ) -> list[tuple[str, Metadata]]:
        """Matching ``(key, metadata)`` pairs: candidates from the indexes, every term
        then tested on their metadata (see ``_redis_index``)."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        names = check_select(select)
        result = []
        for key, metadata in self._matching(terms):
            result.append((key, pick_metadata(metadata, names)))
        return result

    def query_keys(self, *where: Mapping[str, Any], **kwargs: Any) -> list[str]:
        """Matching keys; with no terms, the key index alone (no metadata read)."""
        self._require_connection()
        terms = query_terms(where, kwargs)
        if terms:
            return [key for key, _ in self._matching(terms)]
        return list(self.list_keys())

    def _matching(self, terms: Mapping[str, QueryTerm]) -> Iterator[tuple[str, Metadata]]:
        candidates = self._candidates(plan(terms))
        texts = self._metadata_texts(candidates)
        for key, text in zip(candidates, texts, strict=True):
            if text is None:
                continue
            metadata = decode_metadata(text)
            if matches(metadata, terms):
                yield key, metadata

    def _candidates(self, query_plan: Plan) -> list[str]:
        """The keys that may match: the intersection of what the plan's indexes list
        (every key when none narrows it), plus the caller's transaction's writes."""
        transaction = self._mine()
        if query_plan.everything:
            return list(self.list_keys())
        root = self.root
        if any(not union for union in query_plan.sets):  # In([]): nothing can match
            return [] if transaction is None else list(transaction.changes)
        if transaction is not None:
            transaction.watch(root + name for name in query_plan.names())
        with translate("querying the metadata indexes"):
            pipe = self._client.pipeline(transaction=False)
            for union in query_plan.sets:
                pipe.sunion([root + name for name in union])
            for kind, name, low, high in query_plan.ranges:
                if kind == "score":
                    pipe.zrangebyscore(root + name, low, high)
                else:
                    pipe.zrangebylex(root + name, low, high)
            answers = pipe.execute()
        count = len(query_plan.sets)
        found = [set(answer) for answer in answers[:count]]
        found.extend({_range_key(member) for member in answer} for answer in answers[count:])
        found.sort(key=len)
        keys = set.intersection(*found)
        result = sorted(member.decode() for member in keys)
        if transaction is not None:
            extra = [key for key in transaction.changes if key not in keys]
            result.extend(extra)
        return result

    # -- listings ---------------------------------------------------------------------------------
    def list_keys(self, prefix: str = "", delimiter: str | None = None) -> Iterator[str]:
        """Keys under *prefix* in key order (see :meth:`AbstractReadOnlyStore.list_keys`),
        read a page at a time from the key index with ``ZRANGEBYLEX``."""
        check_listing(prefix, delimiter)
        self._require_connection()
        transaction = self._mine()
        source: Callable[[str], Iterable[str]] = self._keys_from(prefix)
        if transaction is not None:
            transaction.watch([self.root + "K"])
            changes = {key: record is not None for key, record in transaction.changes.items()}
            if changes:
                source = with_changes(source, changes)
        return walk(source, prefix, delimiter)

    def _keys_from(self, prefix: str) -> Callable[[str], Iterator[str]]:
        end = prefix_end(prefix)
        high = b"+" if end is None else b"(" + end.encode()
        name = self.root + "K"

        def keys_from(low: str) -> Iterator[str]:
            bound = b"[" + low.encode()
            size = _FIRST_PAGE  # small first: a listing often stops after a few keys
            while True:
                with translate("listing keys"):
                    page = self._client.zrangebylex(name, bound, high, start=0, num=size)
                for member in page:
                    yield member.decode()
                if len(page) < size:
                    return
                bound = b"(" + page[-1]
                size = min(size * 4, _PAGE)

        return keys_from

    def glob(self, pattern: str) -> list[str]:
        """Keys matching *pattern*: the key index read from the pattern's literal
        prefix on, each key tested with ``fnmatch`` rules."""
        check_pattern(pattern)
        cut = min((i for i in (pattern.find(c) for c in _GLOB_SPECIAL) if i >= 0), default=None)
        literal = pattern if cut is None else pattern[:cut]
        return [key for key in self.list_keys(literal) if fnmatch.fnmatchcase(key, pattern)]


def _range_key(member: bytes) -> bytes:
    # Lex index members are "escaped value NUL key" (the escaped value holds no NUL),
    # score index members the key itself.
    head, separator, tail = member.partition(b"\0")
    return tail if separator else head
