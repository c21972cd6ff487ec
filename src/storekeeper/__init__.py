"""storekeeper: keep application data safely, fast, and the same way wherever it lives.

The package root re-exports the public names; see ``__all__``.
"""

from __future__ import annotations

from storekeeper.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BackendUnavailableError,
    ConflictError,
    CorruptFileError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidValueError,
    KeyNotFoundError,
    LockedStorageError,
    LockTimeoutError,
    MissingDependencyError,
    NotConnectedError,
    ReadOnlyStoreError,
    StorekeeperError,
    TransactionError,
    UnknownSchemeError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BackendUnavailableError",
    "ConflictError",
    "CorruptFileError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidValueError",
    "KeyNotFoundError",
    "LockTimeoutError",
    "LockedStorageError",
    "MissingDependencyError",
    "NotConnectedError",
    "ReadOnlyStoreError",
    "StorekeeperError",
    "TransactionError",
    "UnknownSchemeError",
    "__version__",
]
