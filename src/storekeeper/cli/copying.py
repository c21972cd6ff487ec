"""``cp`` and ``sync``: copy keys between stores, or between a store and a local folder.

Both are :func:`storekeeper.store.transfer.iter_transfer`; ``sync`` can also delete
what the source lacks. A SRC or DST that starts like a URL (``scheme:``) is a store,
anything else a local folder of plain files.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from storekeeper.cli.conventions import (
    creates,
    echo_json,
    looks_like_url,
    progress_events,
    read_store,
    write_store,
)

if TYPE_CHECKING:
    from storekeeper.store.abstract import AbstractStore

__all__ = ["cp", "sync"]

F = TypeVar("F", bound=Callable[..., Any])


def _shared_options(function: F) -> F:
    options = [
        click.argument("source", metavar="SRC"),
        click.argument("target", metavar="DST"),
        click.option("--prefix", default="", metavar="P", help="Only keys starting with P."),
        click.option(
            "--checksum",
            is_flag=True,
            help="Compare data by SHA-256 instead of size and modified time.",
        ),
        click.option("--dry-run", is_flag=True, help="Print what would be done; do nothing."),
        click.option("-v", "--verbose", is_flag=True, help="Print each key copied or deleted."),
        click.option("--json", "as_json", is_flag=True, help="Print each action as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run(
    source: str,
    target: str,
    prefix: str,
    *,
    compare: str,
    delete: bool,
    dry_run: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    from storekeeper.store.transfer import Folder, TransferReport, check_apart, iter_transfer

    report = TransferReport(dry_run=dry_run)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(read_store(source)) if looks_like_url(source) else None
        if src is not None and source == target and src.capabilities.persistent:
            raise click.UsageError("SRC and DST are the same store")
        dst = _target(target, dry_run)
        apart = (
            src if src is not None else Folder(source),
            dst if dst is not None else Folder(target),
        )
        check_apart(*apart)  # before DST is connected: a refused copy creates nothing
        if dst is not None:
            stack.enter_context(dst)
        manager = stack.enter_context(progress_events())
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        actions = iter_transfer(
            *apart,
            prefix,
            delete=delete,
            dry_run=dry_run,
            compare=compare,
            event_manager=manager,
            report=report,
        )
        for action in actions:
            _show(action, as_json=as_json, verbose=verbose or dry_run)
        for warning in caught:
            click.echo(f"warning: {warning.message}", err=True)
    verb = "would copy" if dry_run else "copied"
    keys = "key" if report.copied == 1 else "keys"
    click.echo(
        f"{verb} {report.copied} {keys} ({report.bytes} bytes), {report.skipped} unchanged"
        + (f", {'would delete' if dry_run else 'deleted'} {report.deleted}" if delete else ""),
        err=True,
    )
    if report.unsettled:
        count = len(report.unsettled)
        click.echo(
            f"warning: {count} {'key' if count == 1 else 'keys'} kept changing while copied "
            f"(first: {report.unsettled[0]!r}); run again with --checksum once the source "
            "is quiet",
            err=True,
        )


def _target(target: str, dry_run: bool) -> AbstractStore | None:
    """The store DST names (``None`` for a folder): for a real run not connected yet
    (connecting may create it); a dry run creates none, and sees a store that a real
    run would create as empty."""
    from storekeeper.store.registry import create_store

    if not looks_like_url(target):
        return None
    if not dry_run:
        return create_store(target)
    try:
        return write_store(target, create=False)
    except FileNotFoundError:
        if not creates(target):
            raise
    return write_store("memory://")


def _show(action: Any, *, as_json: bool, verbose: bool) -> None:
    """Print one TransferAction: as JSON, as a line when *verbose*, else not at all."""
    if as_json:
        fields = ("action", "key", "reason", "size", "done")
        echo_json({name: getattr(action, name) for name in fields})
    elif verbose:
        would = "" if action.done else "would "
        click.echo(f"{would}{action.action} {action.key} ({action.reason})")


@click.command()
@_shared_options
@click.option("--all", "copy_all", is_flag=True, help="Copy every key, changed or not.")
def cp(
    source: str,
    target: str,
    prefix: str,
    checksum: bool,
    dry_run: bool,
    verbose: bool,
    as_json: bool,
    copy_all: bool,
) -> None:
    """Copy the keys of SRC (with their metadata) to DST: stores or local folders.

    Only keys that differ are copied (size, metadata, then modified time, or the
    data itself with --checksum), so an interrupted cp run again picks up where it
    stopped, and a second run copies nothing. A folder keeps data only. The summary
    line ("copied N keys ...") and warnings go to stderr; -v and --json print the
    actions to stdout.

    \b
    Examples:
      storekeeper cp sqlite:///app.db 'file:///backup/app?create=true'
      storekeeper cp ./photos sqlite:///app.db --prefix 2024/
      storekeeper cp sqlite:///app.db ./export --dry-run
    """
    compare = "always" if copy_all else "checksum" if checksum else "quick"
    _run(
        source,
        target,
        prefix,
        compare=compare,
        delete=False,
        dry_run=dry_run,
        verbose=verbose,
        as_json=as_json,
    )


@click.command()
@_shared_options
@click.option("--delete", is_flag=True, help="Delete keys of DST that SRC lacks (under P).")
def sync(
    source: str,
    target: str,
    prefix: str,
    checksum: bool,
    dry_run: bool,
    verbose: bool,
    as_json: bool,
    delete: bool,
) -> None:
    """Make DST hold what SRC holds: copy the keys that differ and, with --delete,
    remove the keys SRC lacks. Running it again copies nothing.

    A key differs when it is missing from DST or its size or metadata differ, or (by
    modified times) SRC changed it after DST's copy was made. A DST key changed after
    the copy with its size and metadata kept (a file edited in a mirror folder) is
    left alone: --checksum compares the data itself and finds it. SRC and DST must
    not be the same store, however its URL is spelled. The summary line ("copied N
    keys ...") and warnings go to stderr; -v and --json print the actions to stdout.

    \b
    Examples:
      storekeeper sync ./site sqlite:///site.db --delete
      storekeeper sync sqlite:///app.db 'file:///mirror?create=true' --checksum -v
      storekeeper sync sqlite:///app.db ./out --delete --dry-run --json
    """
    _run(
        source,
        target,
        prefix,
        compare="checksum" if checksum else "quick",
        delete=delete,
        dry_run=dry_run,
        verbose=verbose,
        as_json=as_json,
    )
