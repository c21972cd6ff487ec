"""Commands on one key's value: ``get``, ``cat``, ``head``, ``put`` and ``rm``."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from typing import IO, Any

import click

from storekeeper.cli.conventions import (
    echo_json,
    iso_time,
    json_option,
    key_option,
    looks_like_url,
    parse_metadata,
    read_store,
    split_key,
    store_progress,
    store_url,
    write_store,
)

__all__ = ["cat", "get", "head", "put", "rm"]

_CHUNK = 1 << 20


def _copy_out(stream: IO[bytes]) -> None:
    with stream:
        shutil.copyfileobj(stream, sys.stdout.buffer, _CHUNK)
        sys.stdout.buffer.flush()


@click.command()
@click.argument("target", required=False, metavar="KEY")
@key_option
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write to FILE ('-': stdout). Default: the key's last path part, here.",
)
def get(target: str | None, key: str | None, output: str | None) -> None:
    """Save the data of KEY to a file, replaced atomically once all of it is read
    (a FIFO or device, such as /dev/null or >(sha256sum), is written into instead).

    \b
    Examples:
      storekeeper get sqlite:///app.db#photos/cat.jpg          # writes ./cat.jpg
      storekeeper get sqlite:///app.db --key notes/today -o today.txt
      storekeeper get '#notes/today' -o - | less
      storekeeper get '#backups/docs.tar' -o >(sha256sum)
    """
    url, name = split_key(target, key)
    path = output if output is not None else name.rstrip("/").rsplit("/", 1)[-1]
    if path in ("", ".", ".."):
        raise click.UsageError(f"key {name!r} names no file here: give -o FILE")
    with read_store(url) as opened:
        if path == "-":
            _copy_out(opened.get_data(name))
            return
        with store_progress():
            opened.to_file(name, path)


@click.command()
@click.argument("targets", nargs=-1, metavar="KEY...")
@key_option
def cat(targets: tuple[str, ...], key: str | None) -> None:
    """Print the data of each KEY to stdout, in order.

    \b
    Examples:
      storekeeper cat sqlite:///app.db#notes/today
      storekeeper cat notes/a notes/b          # keys in $STOREKEEPER_URL
    """
    if key is not None and len(targets) > 1:
        raise click.UsageError("with --key, name at most one STORE")
    if key is not None:
        names = [split_key(targets[0] if targets else None, key)]
    else:
        names = [split_key(target) for target in targets]
    if not names:
        raise click.UsageError("name a key: STORE_URL#key, #key or --key KEY")
    for url, name in names:
        with read_store(url) as opened:
            _copy_out(opened.get_data(name))


@click.command()
@click.argument("target", required=False, metavar="KEY")
@key_option
@json_option
def head(target: str | None, key: str | None, as_json: bool) -> None:
    """Show the metadata of KEY, with its size, times and version (no data is read).

    \b
    Examples:
      storekeeper head sqlite:///app.db#photos/cat.jpg
      storekeeper head '#photos/cat.jpg' --json | jq .metadata
    """
    url, name = split_key(target, key)
    with read_store(url) as opened:
        value = opened.get(name)
        record: dict[str, Any] = {
            "key": name,
            "size": value.size,
            "created": iso_time(value.created),
            "modified": iso_time(value.modified),
            "version": value.version,
            "metadata": value.metadata,
        }
    if as_json:
        echo_json(record)
        return
    for field, shown in record.items():
        text = json.dumps(shown, ensure_ascii=False, indent=2) if field == "metadata" else shown
        click.echo(f"{field}: {'-' if text is None else text}")


def _put_operands(operands: tuple[str, ...], key: str | None) -> tuple[str, str, str]:
    """``(url, key, file)`` of ``put``'s operands: KEY [FILE], or [STORE] [FILE] with --key."""
    if len(operands) > 2:
        raise click.UsageError("put takes KEY [FILE]")
    if key is None:
        if not operands:
            raise click.UsageError("name a key: STORE_URL#key, #key or --key KEY")
        url, name = split_key(operands[0])
        return url, name, operands[1] if len(operands) == 2 else "-"
    if len(operands) == 2:
        return (*split_key(operands[0], key), operands[1])
    if len(operands) == 1 and not looks_like_url(operands[0]):
        return store_url(None), key, operands[0]
    return (*split_key(operands[0] if operands else None, key), "-")


@click.command()
@click.argument("operands", nargs=-1, metavar="KEY [FILE|-]")
@key_option
@click.option("--meta", metavar="JSON", help="The metadata, a JSON object (replaces it all).")
@click.option(
    "-m",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A metadata entry (repeatable); VALUE is JSON or a string.",
)
@click.option("--if-version", metavar="V", help="Write only if the key's version is V.")
@click.option("--create-only", is_flag=True, help="Write only if the key does not exist.")
@json_option
def put(
    operands: tuple[str, ...],
    key: str | None,
    meta: str | None,
    pairs: tuple[str, ...],
    if_version: str | None,
    create_only: bool,
    as_json: bool,
) -> None:
    """Store FILE (default '-': stdin) as the data of KEY, streamed.

    Without --meta or -m the key keeps its metadata ({} for a new key); with them the
    metadata is replaced by exactly what they give. A failed --if-version or
    --create-only writes nothing and exits with 4.

    \b
    Examples:
      storekeeper put sqlite:///app.db#photos/cat.jpg cat.jpg -m kind=photo -m year=2024
      tar c docs | storekeeper put '#backups/docs.tar' --create-only
      storekeeper put '#config' --meta '{"env": "prod"}' --if-version 3 < config.json
    """
    if if_version is not None and create_only:
        raise click.UsageError("--if-version and --create-only exclude each other")
    url, name, path = _put_operands(operands, key)
    metadata = parse_metadata(meta, pairs)
    if_exists = False if create_only else None
    with contextlib.ExitStack() as stack:
        source = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        opened = stack.enter_context(write_store(url))
        stack.enter_context(store_progress())
        version = None
        if metadata is None:
            opened.set_data(name, source, if_version=if_version, if_exists=if_exists)
            if as_json:  # set_data returns no version: ask (a racing writer may win)
                version = _version_now(opened, name)
        else:
            version = opened.set(
                name, (source, metadata), if_version=if_version, if_exists=if_exists
            )
    if as_json:
        echo_json({"key": name, "version": version})


@click.command()
@click.argument("targets", nargs=-1, metavar="[STORE] [KEY]...")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="A key to remove (repeatable).")
@click.option("--prefix", metavar="P", help="Remove every key starting with P.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("-f", "--force", is_flag=True, help="Ignore keys that do not exist.")
@click.option("--all", "every", is_flag=True, help="Allow --prefix '' (every key) to remove.")
@json_option
def rm(
    targets: tuple[str, ...],
    keys: tuple[str, ...],
    prefix: str | None,
    dry_run: bool,
    force: bool,
    every: bool,
    as_json: bool,
) -> None:
    """Remove keys: each KEY (STORE_URL#key, #key, or a bare key of the STORE
    operand or $STOREKEEPER_URL), each --key, and with --prefix every key under it
    (--prefix '' needs --all). A named key that does not exist removes nothing at all
    (unless -f).

    \b
    Examples:
      storekeeper rm sqlite:///app.db#tmp/a sqlite:///app.db#tmp/b
      storekeeper rm sqlite:///app.db old/1 old/2
      storekeeper rm sqlite:///app.db --prefix tmp/ --dry-run
    """
    stores = [target for target in targets if "#" not in target and looks_like_url(target)]
    if len(stores) > 1:
        raise click.UsageError("name one STORE; keys in other stores as STORE_URL#key")
    default = stores[0] if stores else None
    in_url = [t for t in targets if t.startswith("#") or ("#" in t and looks_like_url(t))]
    named = [split_key(t) for t in in_url]
    bare = [t for t in targets if t not in in_url and not looks_like_url(t)] + list(keys)
    named += [(store_url(default), name) for name in bare]
    if prefix is None and not named:
        raise click.UsageError("name the keys to remove, or --prefix P")
    if prefix == "" and not (dry_run or every):
        raise click.UsageError("--prefix '' names every key: remove them with --prefix '' --all")
    plan: dict[str, list[str]] = {}
    for url, name in named:
        plan.setdefault(url, []).append(name)
    if prefix is not None:
        plan.setdefault(store_url(default), [])
    with contextlib.ExitStack() as stack:
        work = []
        for url, names in plan.items():
            opened = stack.enter_context(write_store(url, create=False))
            # Every key named must exist before any is removed: all or nothing.
            _check_present(opened, names, force)
            found = list(opened.list_keys(prefix)) if prefix is not None else []
            work.append((opened, [*names, *found]))
        for opened, names in work:
            removed = _remove_all(opened, names, dry_run)
            for name in dict.fromkeys(names):
                if as_json:
                    echo_json({"key": name, "removed": name in removed, "dry_run": dry_run})
                elif dry_run and name in removed:
                    click.echo(f"would remove {name}")


def _version_now(store: Any, name: str) -> str | None:
    """*name*'s version in *store* now, ``None`` if it is gone."""
    try:
        return store.get(name).version  # type: ignore[no-any-return]
    except KeyError:
        return None


def _check_present(store: Any, names: list[str], force: bool) -> None:
    """Raise KeyNotFoundError for the first of *names* missing from *store* (unless
    *force*)."""
    from storekeeper.errors import KeyNotFoundError

    for name in names:
        if not force and not store.exists(name):
            raise KeyNotFoundError(f"no key {name!r} (nothing was removed)")


def _remove_all(store: Any, names: list[str], dry_run: bool) -> set[str]:
    """Remove *names* from *store* (in one transaction where it has them; a dry run only
    looks); the names that were there. A key gone meanwhile is no error."""
    removed = set()
    batch = (
        store.transaction("Removing keys")
        if not dry_run and store.capabilities.atomic_transactions
        else contextlib.nullcontext()
    )
    with batch:
        for name in dict.fromkeys(names):
            try:
                if dry_run:
                    if not store.exists(name):
                        continue
                else:
                    store.delete(name)
            except KeyError:
                continue
            removed.add(name)
    return removed
