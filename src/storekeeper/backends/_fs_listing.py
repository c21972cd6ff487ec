"""Prefix listing for :mod:`storekeeper.backends.filesystem`, from file names alone.

Keys are escaped to file names byte by byte (see ``_fs_names``), so the name of a key
that starts with a prefix starts with the prefix's escaped form, with two exceptions
that are checked too: hashed names (long keys, whose key is inside the record) and
the few device names. A listing therefore reads the names of ``keys/`` once, keeps those
that may match, and decodes them; no record is opened, except a hashed one the first
time this object meets it: a hashed name is the SHA-256 of its key, so it always holds
the same key, which is remembered.

The directory is flat and its order is the file system's, so every name in it is read
(a C-level list and prefix test per name); only the matching keys are decoded and
sorted. Like ``query_keys``, a listing reads a committed journal first and takes the
keys it names from it (see ``_fs_journal``), and lists a damaged record under its
name; only a damaged hashed record, whose key cannot be read, is left out and
reported to *on_damaged*.
"""

from __future__ import annotations

import os

from storekeeper.backends._fs_journal import OnDamaged, Pending, load_visible
from storekeeper.backends._fs_names import decode_name, is_hashed, is_record_name, name_starts
from storekeeper.errors import CorruptFileError

__all__ = ["KeyLister"]


class KeyLister:
    """Lists the keys of the records in *keys_dir* by prefix (see the module docstring)."""

    def __init__(self, keys_dir: str, on_damaged: OnDamaged) -> None:
        self._keys_dir = keys_dir
        self._on_damaged = on_damaged
        # Hashed record name -> its key; names never change keys, so this never goes stale.
        self._hashed: dict[str, str] = {}

    def keys(self, prefix: str, pending: Pending | None) -> set[str]:
        """The committed keys that start with *prefix*, as of the journal *pending*
        (read before this call, as readers must)."""
        starts = name_starts(prefix)
        names = [name for name in os.listdir(self._keys_dir) if name.startswith(starts)]
        if pending is not None:
            names = [name for name in names if not pending.covers(name)]
            names.extend(name for name in pending.puts if name.startswith(starts))
        keys = set()
        for name in names:
            key = self._key(name, pending) if is_record_name(name) else None
            if key is not None and key.startswith(prefix):
                keys.add(key)
        return keys

    def _key(self, name: str, pending: Pending | None) -> str | None:
        if not is_hashed(name):
            return decode_name(name)
        key = self._hashed.get(name)
        if key is not None:
            return key
        try:
            record = load_visible(self._keys_dir, name, pending, with_data=False)
        except CorruptFileError as exc:
            self._on_damaged(name, exc)
            return None
        if record is None:  # deleted since the directory was read
            return None
        self._hashed[name] = record.key
        return record.key
