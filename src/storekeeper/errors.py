"""The exceptions storekeeper raises.

Every error storekeeper raises on purpose derives from :class:`StorekeeperError`, and
also from the builtin exception whose meaning matches, so code written against the
builtins (``except KeyError``) keeps working::

    StorekeeperError (Exception)
    ├── KeyNotFoundError (KeyError)             a key, file or user that does not exist
    ├── InvalidKeyError (ValueError)            a key that is not a non-empty str without NUL
    ├── InvalidMetadataError (ValueError)       metadata that is not a JSON-representable dict
    ├── InvalidValueError (TypeError)           data that is not bytes / chunks / a file-like
    ├── InvalidArgumentError (TypeError)        an argument of the wrong type (if_exists, select...)
    ├── ReadOnlyStoreError (PermissionError)    a write to a store or key that is read-only
    ├── AuthenticationError (PermissionError)   missing or wrong credentials
    ├── AuthorizationError (PermissionError)    authenticated, but not allowed to do this
    ├── ConflictError                           a conditional write's precondition failed
    ├── TransactionError                        misuse or failure of a transaction
    ├── NotConnectedError (ConnectionError)     an operation on a store that is not connected
    ├── BackendError                            the underlying engine failed (wraps its error)
    │   └── BackendUnavailableError (ConnectionError)   the server cannot be reached
    ├── MissingDependencyError (ImportError)    an optional extra is not installed
    ├── InvalidURLError (ValueError)            a store URL that is malformed or has bad options
    │   └── UnknownSchemeError                  ``open_store`` got a URL scheme nobody handles
    ├── UnknownFormatError (ValueError)         ``atomic_store.open`` got a format it cannot use
    ├── CorruptFileError (ValueError)           a file exists but cannot be parsed
    ├── FileSystemStoreError (FileNotFoundError)   a FileSystemStore's directory is not a store
    ├── LockTimeoutError (TimeoutError)         an inter-process lock was not acquired in time
    ├── LockedStorageError (OSError)            session storage is locked by another writer
    └── OutputFileError (OSError)               a local file a value is saved to cannot be written

Backend SDK errors (``sqlite3``, ``psycopg``, ``redis``, S3 SDKs) are translated into
this tree at the backend edge with ``raise ... from exc``.

All classes pickle and unpickle to an equal exception, so they cross process
boundaries (multiprocessing, executors) intact.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BackendUnavailableError",
    "ConflictError",
    "CorruptFileError",
    "FileSystemStoreError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidURLError",
    "InvalidValueError",
    "KeyNotFoundError",
    "LockTimeoutError",
    "LockedStorageError",
    "MissingDependencyError",
    "NotConnectedError",
    "OutputFileError",
    "ReadOnlyStoreError",
    "StorekeeperError",
    "TransactionError",
    "UnknownFormatError",
    "UnknownSchemeError",
]


class StorekeeperError(Exception):
    """Root of every error storekeeper raises deliberately."""


class KeyNotFoundError(StorekeeperError, KeyError):
    """The key (or file, or user) does not exist.

    ``str()`` shows the message rather than ``KeyError``'s quoted repr.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class InvalidKeyError(StorekeeperError, ValueError):
    """A key is not a non-empty ``str`` free of NUL characters, or is otherwise unusable."""


class InvalidMetadataError(StorekeeperError, ValueError):
    """Metadata is not a ``dict`` with ``str`` keys and JSON-representable values."""


class InvalidValueError(StorekeeperError, TypeError):
    """Data is not bytes, an iterable of bytes chunks, or a readable binary file-like."""


class InvalidArgumentError(StorekeeperError, TypeError):
    """An argument has a type the method does not accept: ``if_exists`` that is not a
    ``bool``, ``if_version`` that is not a ``str``, ``select`` given as a single ``str``,
    a glob pattern that is not a ``str``, ... Raised before anything is written."""


class ReadOnlyStoreError(StorekeeperError, PermissionError):
    """A write was attempted on a read-only store, or outside a composite's writable part."""


class AuthenticationError(StorekeeperError, PermissionError):
    """Credentials are missing or wrong."""


class AuthorizationError(StorekeeperError, PermissionError):
    """The authenticated user lacks the permission the operation needs."""


class ConflictError(StorekeeperError):
    """A conditional write's precondition (``if_version`` / ``if_exists``) did not hold."""


class TransactionError(StorekeeperError):
    """A transaction was misused (for example committed twice) or could not be applied."""


class NotConnectedError(StorekeeperError, ConnectionError):
    """An operation needs a connected store and this one is not connected."""


class BackendError(StorekeeperError):
    """The underlying storage engine failed; ``__cause__`` holds the engine's own error."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The storage server cannot be reached."""


class MissingDependencyError(StorekeeperError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class InvalidURLError(StorekeeperError, ValueError):
    """A store URL is malformed, or has an unknown or invalid option; the message says
    which part and names the valid forms."""


class UnknownSchemeError(InvalidURLError):
    """``open_store`` was given a URL whose scheme no registered backend handles."""


class UnknownFormatError(StorekeeperError, ValueError):
    """A serialisation format was named that is unknown or has no dump/load methods."""


class CorruptFileError(StorekeeperError, ValueError):
    """A file exists but its content cannot be parsed; the message names the file."""


class OutputFileError(StorekeeperError, OSError):
    """A file a value is saved to (``to_file``) could not be opened or written; the
    message names it and ``__cause__`` holds the ``OSError``."""


class FileSystemStoreError(StorekeeperError, FileNotFoundError):
    """A :class:`~storekeeper.backends.FileSystemStore`'s directory or its magic file does
    not exist (the directory is not a store).

    A :class:`FileNotFoundError`, so ``except FileNotFoundError`` / ``OSError`` work.
    """


class LockTimeoutError(StorekeeperError, TimeoutError):
    """An inter-process lock could not be acquired within the timeout."""


class LockedStorageError(StorekeeperError, OSError):
    """Session storage is locked: another writer's ``next`` file is in place.

    Carries ``errno`` (``EEXIST``) and ``filename`` like any :class:`OSError`.
    """

    def __init__(
        self,
        message: str = "storage is locked",
        filename: str | os.PathLike[str] | None = None,
        errno: int = _errno.EEXIST,
    ) -> None:
        if filename is None:
            super().__init__(errno, message)
        else:
            super().__init__(errno, message, os.fspath(filename))

    def __reduce__(self) -> tuple[type[LockedStorageError], tuple[str, str | None, int]]:
        return (type(self), (self.strerror or "", self.filename, self.errno or _errno.EEXIST))
