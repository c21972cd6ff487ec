"""The transaction half of :class:`~storekeeper.backends.redis.RedisStore`: writes kept
aside by an open transaction, and the hooks that begin, commit and roll it back (see
``_redis_transactions`` for how a transaction watches what it reads)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from storekeeper.backends._redis_errors import lost_watch, translate
from storekeeper.backends._redis_transactions import Record, Transaction
from storekeeper.backends._redis_values import Staged, chunk_set
from storekeeper.errors import BackendError, BackendUnavailableError
from storekeeper.store.abstract import AbstractStore
from storekeeper.store.backend import Claim, OwnerLock, check_precondition, new_version
from storekeeper.store.events import StoreKeyEvent, StoreSetEvent

__all__ = ["Transactional"]


class Transactional(AbstractStore):
    """Transactions of a Redis store; the store provides the attributes declared here."""

    root: str
    chunk_size: int
    stream_length: int
    _client: Any
    _apply_script: Any
    _turn: OwnerLock
    _transaction: Transaction | None

    def _args(
        self,
        key: str,
        mode: str,
        staged: Staged | None,
        metadata_json: str,
        version: str,
        now: float,
        action: str,
        if_version: str | None = None,
        if_exists: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        raise NotImplementedError  # provided by the store

    def _enqueue(self, pipe: Any, args: list[Any]) -> bool:
        raise NotImplementedError  # provided by the store

    def _reload(self) -> None:
        raise NotImplementedError  # provided by the store

    def _emit_local(self, cls: type[StoreKeyEvent], key: str, metadata: str, version: str) -> None:
        raise NotImplementedError  # provided by the store

    def _write_in(
        self,
        transaction: Transaction,
        key: str,
        staged: Staged,
        metadata_json: str,
        if_version: str | None,
        if_exists: bool | None,
    ) -> str:
        """A write kept aside in *transaction*; returns the version it will have."""
        old = (
            transaction.record(key)
            if if_version is not None or if_exists is not None or key in transaction.changes
            else None
        )
        if if_version is not None or if_exists is not None:
            check_precondition(
                key, None if old is None else old[b"v"].decode(), if_version, if_exists
            )
        version = new_version()
        now = repr(time.time()).encode()
        record: Record = {
            b"v": version.encode(),
            b"t": now,
            b"c": old[b"c"] if old is not None and b"c" in old else now,
            b"z": str(staged.size).encode(),
            b"m": metadata_json.encode(),
        }
        if staged.blob is None:
            record[b"d"] = staged.inline or b""
        else:
            record[b"b"] = staged.blob.encode()
            record[b"h"] = str(staged.chunk_size).encode()
        transaction.put(key, record)
        self._emit_local(StoreSetEvent, key, metadata_json, version)
        return version

    def _begin_transaction(self) -> None:
        self._require_connection()
        self._turn.acquire()
        try:
            pipe = self._client.pipeline(transaction=True)
            self._transaction = Transaction(Claim.take(), pipe, self.root)
        except BaseException:
            self._turn.release()
            raise

    def _own_transaction(self) -> Transaction:
        transaction = self._transaction
        assert transaction is not None and transaction.claim.is_mine()  # hooks run in it
        return transaction

    def _commit_transaction(self) -> None:
        transaction = self._own_transaction()
        committed = False
        try:
            if transaction.changes:
                self._send(transaction)
            committed = True
        finally:
            blobs = (
                transaction.unclaimed()
                if committed
                else [chunk_set(self.root, blob) for blob in transaction.staged]
            )
            self._end(transaction, blobs)

    def _send(self, transaction: Transaction) -> None:
        """Apply the transaction's writes in one ``MULTI``/``EXEC``."""
        now = time.time()
        pipe = transaction.pipe
        with translate("committing a transaction"):
            pipe.multi()
            for key, record in transaction.changes.items():
                args = self._commit_args(key, record, now)
                args[16] = 0  # the events below, not the net change, go to the stream
                self._enqueue(pipe, args)
            # Every write's event, in order, as local listeners receive them; in the
            # same MULTI, so the entries exist exactly when the writes were applied.
            if self.stream_length > 0:
                for _, fields in transaction.events:
                    stream = self.root + "X"
                    pipe.xadd(stream, fields, maxlen=self.stream_length, approximate=True)
            try:
                pipe.execute()
            except redis.exceptions.NoScriptError as exc:
                self._reload()
                raise BackendError(
                    "Redis had lost the store's write script (SCRIPT FLUSH or a restart) "
                    "when this transaction committed; nothing of it was applied: run it again"
                ) from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise _lost_commit() from exc
            except redis.WatchError as exc:
                if lost_watch(exc):
                    raise _lost_commit() from exc
                raise

    def _commit_args(self, key: str, record: Record | None, now: float) -> list[Any]:
        if record is None:
            return self._args(key, "del", None, "{}", new_version(), now, "delete")
        staged = Staged(
            record.get(b"d"),
            record[b"b"].decode() if b"b" in record else None,
            int(record[b"z"]),
            int(record.get(b"h", self.chunk_size)),
        )
        metadata_json, version = record[b"m"].decode(), record[b"v"].decode()
        return self._args(key, "set", staged, metadata_json, version, float(record[b"t"]), "set")

    def _rollback_transaction(self) -> None:
        transaction = self._transaction
        if transaction is None or not transaction.claim.is_mine():
            return
        self._end(transaction, [chunk_set(self.root, blob) for blob in transaction.staged])

    def _end(self, transaction: Transaction, blobs: list[str]) -> None:
        self._transaction = None
        try:
            transaction.close(self._client, blobs)
        finally:
            self._turn.release()

    def _savepoint(self) -> object:
        return len(self._own_transaction().log)

    def _rollback_to_savepoint(self, token: object) -> None:
        assert isinstance(token, int)  # made by _savepoint
        self._own_transaction().rollback_to(token)

    def _release_savepoint(self, token: object) -> None:
        return None


def _lost_commit() -> BackendUnavailableError:
    return BackendUnavailableError(
        "the connection to Redis was lost while committing a transaction: Redis applies "
        "a transaction whole or not at all, but whether this one was applied is unknown"
    )
