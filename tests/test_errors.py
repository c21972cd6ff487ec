"""The error tree: every class pickles intact and is caught by its builtin mix-in."""

from __future__ import annotations

import errno
import inspect
import pickle

import pytest

import storekeeper
from storekeeper import errors

BUILTIN_OF = {
    errors.KeyNotFoundError: KeyError,
    errors.InvalidKeyError: ValueError,
    errors.InvalidMetadataError: ValueError,
    errors.InvalidValueError: TypeError,
    errors.ReadOnlyStoreError: PermissionError,
    errors.AuthenticationError: PermissionError,
    errors.AuthorizationError: PermissionError,
    errors.NotConnectedError: ConnectionError,
    errors.BackendUnavailableError: ConnectionError,
    errors.MissingDependencyError: ImportError,
    errors.InvalidURLError: ValueError,
    errors.UnknownSchemeError: ValueError,
    errors.UnknownFormatError: ValueError,
    errors.CorruptFileError: ValueError,
    errors.FileSystemStoreError: FileNotFoundError,
    errors.LockTimeoutError: TimeoutError,
    errors.LockedStorageError: OSError,
}

ALL_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, errors.StorekeeperError)
]


def test_every_public_class_is_in_all_and_re_exported() -> None:
    names = {cls.__name__ for cls in ALL_CLASSES}
    assert names == set(errors.__all__)
    for name in names:
        assert getattr(storekeeper, name) is getattr(errors, name)


def test_every_class_is_drawn_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in ALL_CLASSES:
        assert cls.__name__ in doc


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[errors.StorekeeperError]) -> None:
    exc = cls("something about 'key'")
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is cls
    assert str(clone) == str(exc)
    assert clone.args == exc.args


@pytest.mark.parametrize(("cls", "builtin"), list(BUILTIN_OF.items()), ids=lambda c: c.__name__)
def test_caught_by_builtin(cls: type[Exception], builtin: type[Exception]) -> None:
    with pytest.raises(builtin):
        raise cls("boom")
    with pytest.raises(errors.StorekeeperError):
        raise cls("boom")


def test_key_not_found_str_is_the_message_not_a_repr() -> None:
    assert str(errors.KeyNotFoundError("no key 'a'")) == "no key 'a'"


def test_locked_storage_error_carries_errno_and_filename() -> None:
    exc = errors.LockedStorageError("session is locked", "/tmp/x/session.next")
    assert exc.errno == errno.EEXIST
    assert exc.filename == "/tmp/x/session.next"
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.errno, clone.filename, clone.strerror) == (
        exc.errno,
        exc.filename,
        exc.strerror,
    )


def test_backend_unavailable_is_a_backend_error() -> None:
    assert issubclass(errors.BackendUnavailableError, errors.BackendError)
