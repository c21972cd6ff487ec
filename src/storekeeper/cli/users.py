"""``users add|rm|list``: the user records of a :class:`~storekeeper.SimpleAuthStore`
kept in a store (the same records an application's SimpleAuthStore over that store
checks passwords against)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from storekeeper.cli.conventions import (
    CONFLICT,
    NOT_FOUND,
    CommandError,
    echo_json,
    json_option,
    take_store,
    write_store,
)

if TYPE_CHECKING:
    from storekeeper.composite.auth import SimpleAuthStore

__all__ = ["users"]

F = TypeVar("F", bound=Callable[..., Any])
SECRET_ENV = "STOREKEEPER_AUTH_SECRET"  # noqa: S105 - the name of a variable, not a secret


def _user_prefix(function: F) -> F:
    return click.option(
        "--user-prefix",
        default=".user_",
        show_default=True,
        help="The key prefix of the user records (the store's user_key_path).",
    )(function)


@contextmanager
def _auth_store(url: str, user_prefix: str, secret: str | None) -> Iterator[SimpleAuthStore]:
    from storekeeper.composite.auth import SimpleAuthStore, make_encoder

    # Listing and removing users hash nothing: any key will do for them. Only adding
    # one may create the store.
    encoder = make_encoder(secret.encode("utf-8") if secret else b"unused")
    with write_store(url, create=secret is not None) as store:
        yield SimpleAuthStore(store, encoder, user_prefix)


@click.group()
def users() -> None:
    """Manage the users of a SimpleAuthStore kept in a store.

    \b
    Examples:
      storekeeper users add sqlite:///app.db alice --secret "$APP_SECRET"
      storekeeper users list sqlite:///app.db
    """


@users.command("add")
@click.argument("operands", nargs=-1, required=True, metavar="[STORE] USERNAME")
@click.option("--tag", "tags", multiple=True, metavar="GROUP", help="A group (repeatable).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@click.option(
    "--secret",
    envvar=SECRET_ENV,
    required=True,
    help=f"The application's password-hashing secret (or ${SECRET_ENV}).",
)
@_user_prefix
def add(
    operands: tuple[str, ...],
    tags: tuple[str, ...],
    password_stdin: bool,
    secret: str,
    user_prefix: str,
) -> None:
    """Create the user USERNAME (exit 4 if they exist); the password is prompted for.

    \b
    Examples:
      STOREKEEPER_AUTH_SECRET=... storekeeper users add sqlite:///app.db alice --tag staff
      printf 's3cret\\n' | storekeeper users add alice --password-stdin --secret "$KEY"
    """
    url, (username,) = take_store(operands, 1)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password must not be empty")
    from storekeeper.errors import ConflictError

    with _auth_store(url, user_prefix, secret) as auth:
        try:
            auth.add_user(username, password, tags)
        except ConflictError:  # its message names the record's key, not the user
            raise CommandError(f"user {username!r} already exists", CONFLICT) from None


@users.command("rm")
@click.argument("operands", nargs=-1, required=True, metavar="[STORE] USERNAME")
@_user_prefix
def remove(operands: tuple[str, ...], user_prefix: str) -> None:
    """Remove the user USERNAME (exit 3 if there is none).

    \b
    Examples:
      storekeeper users rm sqlite:///app.db alice
    """
    url, (username,) = take_store(operands, 1)
    with _auth_store(url, user_prefix, None) as auth:
        try:
            auth.remove_user(username)
        except KeyError:  # its message names the record's key, not the user
            raise CommandError(f"no user {username!r}", NOT_FOUND) from None


@users.command("list")
@click.argument("operands", nargs=-1, metavar="[STORE]")
@_user_prefix
@json_option
def list_(operands: tuple[str, ...], user_prefix: str, as_json: bool) -> None:
    """List the users, sorted.

    \b
    Examples:
      storekeeper users list sqlite:///app.db --json
    """
    url, _ = take_store(operands, 0)
    with _auth_store(url, user_prefix, None) as auth:
        for name in auth.users():
            echo_json({"username": name}) if as_json else click.echo(name)
