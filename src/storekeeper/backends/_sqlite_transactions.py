"""The transactions of a :class:`SqliteStore`, and what their outcome settles.

A transaction runs on a connection of its own (:class:`Connections`) and nests with
savepoints. Value files follow its outcome (see ``_sqlite_files``): the files a
transaction created are removed if it rolls back, the files its writes made obsolete
once it commits; a savepoint rolled back to removes the files created since. A
transaction that wrote enough data that SQLite would copy its pages into the database
inside the COMMIT leaves that copy to the checkpointer's thread instead.
"""

from __future__ import annotations

from typing import NamedTuple

from storekeeper.backends._sqlite_checkpoint import Checkpointer
from storekeeper.backends._sqlite_connections import Connections, translate
from storekeeper.backends._sqlite_files import FileLog, FileMarks, ValueFiles, is_file_ref
from storekeeper.backends._sqlite_indexes import Indexes
from storekeeper.store.backend import OwnedVar

__all__ = ["Savepoint", "Transactions"]


class Savepoint(NamedTuple):
    """A savepoint's name and where the transaction's file log stood when it opened."""

    name: str
    marks: FileMarks


class Transactions:
    """Transactions over *connections*; rollbacks reload *indexes*, outcomes settle
    *files* (``None`` in memory)."""

    def __init__(
        self, connections: Connections, indexes: Indexes, files: ValueFiles | None
    ) -> None:
        self.connections = connections
        self.indexes = indexes
        self.files = files
        self._log: OwnedVar[FileLog] = OwnedVar(f"sqlite-{id(self):x}-files")

    def log(self) -> FileLog | None:
        """The file log of the caller's open transaction, or ``None``."""
        return self._log.get()

    def files_replaced(self, created: str | None, obsolete: str | None) -> None:
        """A write that created and/or made obsolete a value file has succeeded.

        Outside a transaction it is committed: the obsolete file goes now. Inside one,
        both wait for the outcome.
        """
        if self.files is None or (created is None and obsolete is None):
            return
        log = self._log.get()
        if log is None:
            self.files.remove([obsolete])
            return
        if created is not None:
            log.created.append(created)
        if obsolete is not None and is_file_ref(obsolete):
            log.obsolete.append(obsolete)

    def begin(self) -> None:
        """Begin a transaction for the caller."""
        self.connections.begin()
        self._log.set(FileLog())

    def commit(self) -> None:
        """Commit the caller's transaction; on failure its files are settled as rolled
        back and the error propagates (the rollback that follows ends it)."""
        connections = self.connections
        conn = connections.conn()
        deferring = self._deferring(self._log.get())
        connections.holder = None  # nothing else runs in this thread until the lock goes
        try:
            with translate("committing a transaction"):
                if deferring is None:
                    connections.commit(conn)
                else:
                    with deferring.deferred(conn):
                        connections.commit(conn)
        except BaseException:
            self._settle(committed=False)
            raise
        try:
            if deferring is not None:
                deferring.poke(conn)
            elif connections.background_checkpoints:
                connections.after_commit(conn)
            self._settle(committed=True)
        finally:
            connections.end()

    def rollback(self) -> None:
        """Roll the caller's transaction back and end it."""
        self._settle(committed=False)
        try:
            conn = self.connections.rollback()
            with translate("rolling back"):
                # An index the transaction created is gone with it.
                self.indexes.load(conn)
        finally:
            self.connections.end()

    def savepoint(self) -> Savepoint:
        """Open a savepoint in the caller's transaction."""
        name = self.connections.savepoint()
        log = self._log.get()
        return Savepoint(name, FileMarks(0, 0) if log is None else log.marks())

    def rollback_to(self, savepoint: Savepoint) -> None:
        """Undo what followed *savepoint*, its value files included."""
        conn = self.connections.rollback_to(savepoint.name)
        with translate("rolling back to a savepoint"):
            self.indexes.load(conn)
        log = self._log.get()
        if log is not None and self.files is not None:
            self.files.remove(log.rewind(savepoint.marks))

    def release(self, savepoint: Savepoint) -> None:
        """Keep what followed *savepoint*."""
        self.connections.release(savepoint.name)

    def _settle(self, committed: bool) -> None:
        log = self._log.get()
        self._log.set(None)
        if log is not None and self.files is not None:
            self.files.remove(log.obsolete if committed else log.created)

    def _deferring(self, log: FileLog | None) -> Checkpointer | None:
        """The checkpointer, if the committing transaction wrote enough that SQLite would
        copy its pages into the database inside the COMMIT; the thread does it instead."""
        checkpointer = self.connections.checkpointer
        if checkpointer is None or log is None or not checkpointer.is_large(log.inline):
            return None
        return checkpointer
