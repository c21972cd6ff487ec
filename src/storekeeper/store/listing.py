"""Prefix listing: the building blocks of ``list_keys(prefix, delimiter)``.

A listing yields the keys that start with *prefix* in key order (the order of code
points, as Python sorts ``str``). With a *delimiter*, a key that holds the delimiter
after the prefix is replaced by its *folder*: the key up to and including the first
delimiter after the prefix, listed once, at its own place in the order.

Why folding keeps the order: the strings that start with a folder form one contiguous
run in key order, and the folder itself is the least of them, so the folder can stand
where the first key of its run was. A source that can start reading anywhere skips a
folder's whole run by starting again just above it (:func:`walk`).

Backends use these helpers; they hold no private state of any store.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping

from storekeeper.errors import InvalidArgumentError, InvalidKeyError
from storekeeper.store._validate import encodable
from storekeeper.store.value import KeyInfo, Value

__all__ = [
    "SortedKeys",
    "check_list_info",
    "check_listing",
    "details_by_get",
    "filter_listing",
    "fold_keys",
    "is_folder",
    "prefix_end",
    "walk",
    "with_changes",
]


def check_listing(prefix: object, delimiter: object) -> None:
    """Raise unless ``list_keys(prefix, delimiter)`` has valid arguments.

    *prefix* must be a ``str`` and *delimiter* ``None`` or a non-empty ``str``
    (:class:`InvalidArgumentError` otherwise). Either holding a lone surrogate raises
    :class:`InvalidKeyError`, as a glob pattern does: no key can hold one, so such a
    listing is a mistake rather than a question with an empty answer.
    """
    if not isinstance(prefix, str):
        raise InvalidArgumentError(
            f"a key prefix is a str, not {type(prefix).__name__}: {prefix!r}"
        )
    if delimiter is not None:
        if not isinstance(delimiter, str):
            raise InvalidArgumentError(
                f"a delimiter is a non-empty str or None, not {type(delimiter).__name__}: "
                f"{delimiter!r}"
            )
        if not delimiter:
            raise InvalidArgumentError("a delimiter is a non-empty str or None, not ''")
    for name, text in (("key prefix", prefix), ("delimiter", delimiter)):
        if text is not None and not text.isascii() and not encodable(text):
            raise InvalidKeyError(f"a {name} must not contain lone surrogates: {text!r}")


def check_list_info(prefix: object, metadata: object) -> None:
    """Raise unless ``list_info(prefix, metadata=metadata)`` has valid arguments: the
    *prefix* as :func:`check_listing` checks it, and *metadata* a ``bool``
    (:class:`InvalidArgumentError` otherwise: a truthy string is a mistake, not a yes)."""
    check_listing(prefix, None)
    if not isinstance(metadata, bool):
        raise InvalidArgumentError(
            f"metadata is True or False, not {type(metadata).__name__}: {metadata!r}"
        )


def prefix_end(prefix: str) -> str | None:
    """The least key above every key that starts with *prefix*: the exclusive end of
    the prefix's range in key order; ``None`` when there is none (*prefix* is empty or
    only U+10FFFF characters, so every key from *prefix* up starts with it).

    It is *prefix* less its trailing U+10FFFF characters, with its last character
    incremented (past the surrogates, which no key holds).
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return stem[:-1] + chr(following)


def is_folder(entry: str, prefix: str, delimiter: str | None) -> bool:
    """Whether *entry* of a listing of *prefix* with *delimiter* is a folder (it holds
    the delimiter after the prefix) rather than a key."""
    return delimiter is not None and entry.find(delimiter, len(prefix)) >= 0


def fold_keys(keys: Iterable[str], prefix: str, delimiter: str | None) -> Iterator[str]:
    """The listing of *keys* (sorted, each starting with *prefix*): with a
    *delimiter*, each folder once in place of the keys it holds. Lazy."""
    if delimiter is None:
        yield from keys
        return
    start, width = len(prefix), len(delimiter)
    folder: str | None = None
    for key in keys:
        if folder is not None and key.startswith(folder):
            continue
        index = key.find(delimiter, start)
        if index < 0:
            yield key
        else:
            folder = key[: index + width]
            yield folder


def walk(
    keys_from: Callable[[str], Iterable[str]], prefix: str, delimiter: str | None
) -> Iterator[str]:
    """The listing of a source that can start anywhere. Lazy.

    ``keys_from(low)`` yields in order the stored keys from *low* (included) on; it may
    stop at the end of *prefix*'s range or go on past it. After each folder the walk
    asks again from just above the folder's run instead of reading through it.
    """
    start = len(prefix)
    low = prefix
    while True:
        for key in keys_from(low):
            if not key.startswith(prefix):
                return
            index = -1 if delimiter is None else key.find(delimiter, start)
            if index < 0:
                yield key
                continue
            folder = key[: index + len(delimiter)]  # type: ignore[arg-type]
            yield folder
            above = prefix_end(folder)
            if above is None:
                return
            low = above
            break
        else:
            return


def with_changes(
    keys_from: Callable[[str], Iterable[str]], changes: Mapping[str, bool]
) -> Callable[[str], Iterator[str]]:
    """*keys_from* (as :func:`walk` takes it) with uncommitted *changes* applied: a
    key mapped to ``True`` is added, one mapped to ``False`` removed. *changes* is
    read once, now (pass a copy that nobody changes while the listing runs)."""
    added = sorted(key for key, present in changes.items() if present)
    removed = frozenset(key for key, present in changes.items() if not present)

    def merged(low: str) -> Iterator[str]:
        extra = added[bisect_left(added, low) :]
        previous = None
        for key in heapq.merge(keys_from(low), extra):
            if key != previous and key not in removed:
                yield key
            previous = key

    return merged


def filter_listing(
    list_keys: Callable[[str, str | None], Iterable[str]],
    shown: Callable[[str], bool],
    prefix: str,
    delimiter: str | None,
) -> Iterator[str]:
    """The listing *list_keys* gives, keeping only the keys for which *shown* is true
    and the folders that hold at least one such key. Lazy.

    For wrappers that hide some keys of the store they wrap (permissions, whiteouts):
    *shown* is called once per key listed, and for a folder on its keys in order until
    one is shown.
    """
    for entry in list_keys(prefix, delimiter):
        if is_folder(entry, prefix, delimiter):
            if any(map(shown, list_keys(entry, None))):
                yield entry
        elif shown(entry):
            yield entry


class SortedKeys:
    """A sorted list of a changing set of keys, for stores that keep keys unordered.

    The owner reports each key it adds or removes (:meth:`add`, :meth:`discard`) and
    asks for :meth:`snapshot`: a sorted list never modified afterwards, so a listing
    can read it without a lock while the store changes. Costs: with no change since the
    last snapshot, nothing; after a few changes, a copy of the list plus a binary
    insertion or deletion per change (memory moves, no comparisons of the other keys);
    after many, one merge of the sorted changes into the list (linear); after more
    changes than there are keys, a full sort (``n log n``) of *source*'s keys.

    Not locked: the owner calls every method under the lock that guards its keys, so
    that a snapshot and the changes it reports are ordered.
    """

    #: Up to this many changes are applied by binary insertion, more by one merge.
    few_changes = 32

    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self._source = source
        self._sorted: list[str] | None = None
        self._changes: dict[str, bool] = {}

    def add(self, key: str) -> None:
        """Note that *key* is now in the set."""
        self._note(key, True)

    def discard(self, key: str) -> None:
        """Note that *key* is no longer in the set."""
        self._note(key, False)

    def _note(self, key: str, present: bool) -> None:
        if self._sorted is None:
            return  # the next snapshot sorts the source anyway
        self._changes[key] = present
        if len(self._changes) > len(self._sorted):
            self._sorted = None
            self._changes.clear()

    def snapshot(self) -> list[str]:
        """The keys, sorted. Do not modify the list."""
        keys = self._sorted
        if keys is None:
            keys = sorted(self._source())
        elif self._changes:
            keys = _applied(keys, self._changes, self.few_changes)
        self._sorted = keys
        self._changes.clear()
        return keys


def _applied(keys: list[str], changes: Mapping[str, bool], few: int) -> list[str]:
    """A new sorted list: *keys* with *changes* (key -> present) applied."""
    if len(changes) <= few:
        result = keys.copy()
        for key, present in changes.items():
            index = bisect_left(result, key)
            found = index < len(result) and result[index] == key
            if present and not found:
                result.insert(index, key)
            elif not present and found:
                del result[index]
        return result
    removed = {key for key, present in changes.items() if not present}
    kept = [key for key in keys if key not in removed] if removed else keys.copy()
    added = sorted(key for key, present in changes.items() if present)
    fresh = [key for key in added if not _contains(keys, key)]
    kept.extend(fresh)
    kept.sort()  # two sorted runs: the sort merges them in linear time
    return kept


def _contains(keys: list[str], key: str) -> bool:
    index = bisect_left(keys, key)
    return index < len(keys) and keys[index] == key


def details_by_get(
    get: Callable[[str], Value], keys: Iterable[str], metadata: bool
) -> Iterator[tuple[str, KeyInfo]]:
    """``(key, info)`` for each of *keys* that *get* still finds (a key deleted since it
    was listed is left out): the details of a listing read value by value, for stores
    whose listing holds no more than the keys."""
    for key in keys:
        try:
            value = get(key)
        except KeyError:
            continue
        chosen = value.metadata if metadata else None
        yield key, KeyInfo(value.size, value.created, value.modified, value.version, chosen)
