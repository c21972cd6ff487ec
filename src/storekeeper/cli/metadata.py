"""``meta get|set|update``: read and change a key's metadata without touching its data."""

from __future__ import annotations

import json

import click

from storekeeper.cli.conventions import (
    key_option,
    parse_metadata,
    read_store,
    split_key,
    write_store,
)

__all__ = ["meta"]

_META_PAIRS = click.option(
    "-m",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A metadata entry (repeatable); VALUE is JSON or a string.",
)
_IF_VERSION = click.option("--if-version", metavar="V", help="Only if the key's version is V.")


@click.group()
def meta() -> None:
    """Read or change the metadata of a key (a JSON object).

    \b
    Examples:
      storekeeper meta get sqlite:///app.db#photos/cat.jpg
      storekeeper meta update '#photos/cat.jpg' -m rating=5
    """


@meta.command("get")
@click.argument("target", required=False, metavar="KEY")
@key_option
@click.option("--select", metavar="NAMES", help="Comma-separated names to show.")
def get_(target: str | None, key: str | None, select: str | None) -> None:
    """Print the metadata of KEY as one JSON object.

    \b
    Examples:
      storekeeper meta get sqlite:///app.db#photos/cat.jpg
      storekeeper meta get '#photos/cat.jpg' --select title,year
    """
    url, name = split_key(target, key)
    names = None if select is None else [part for part in select.split(",") if part]
    with read_store(url) as opened:
        metadata = opened.get_metadata(name, names)
    click.echo(json.dumps(metadata, ensure_ascii=False))


def _operands(operands: tuple[str, ...], key: str | None) -> tuple[str, str, str | None]:
    """``(url, key, JSON text or None)`` of KEY [JSON], or [STORE] [JSON] with --key."""
    if len(operands) > 2:
        raise click.UsageError("expected KEY [JSON]")
    if key is None:
        if not operands:
            raise click.UsageError("name a key: STORE_URL#key, #key or --key KEY")
        return (*split_key(operands[0]), operands[1] if len(operands) == 2 else None)
    if len(operands) == 2:
        return (*split_key(operands[0], key), operands[1])
    if len(operands) == 1 and operands[0].lstrip().startswith("{"):
        return (*split_key(None, key), operands[0])
    return (*split_key(operands[0] if operands else None, key), None)


@meta.command("set")
@click.argument("operands", nargs=-1, metavar="KEY [JSON]")
@key_option
@_META_PAIRS
@_IF_VERSION
def set_(
    operands: tuple[str, ...], key: str | None, pairs: tuple[str, ...], if_version: str | None
) -> None:
    """Replace the metadata of KEY with JSON and/or the -m entries (a missing key is
    created with empty data).

    \b
    Examples:
      storekeeper meta set sqlite:///app.db#photos/cat.jpg '{"title": "Cat", "year": 2024}'
      storekeeper meta set '#photos/cat.jpg' -m title=Cat -m year=2024 --if-version 7
    """
    url, name, text = _operands(operands, key)
    metadata = parse_metadata(text, pairs, "the JSON argument")
    if metadata is None:
        raise click.UsageError("give the metadata: JSON and/or -m NAME=VALUE")
    with write_store(url) as opened:
        opened.set_metadata(name, metadata, if_version=if_version)


@meta.command("update")
@click.argument("operands", nargs=-1, metavar="KEY [JSON]")
@key_option
@_META_PAIRS
@_IF_VERSION
def update(
    operands: tuple[str, ...], key: str | None, pairs: tuple[str, ...], if_version: str | None
) -> None:
    """Merge JSON and/or the -m entries into the metadata of KEY (like dict.update);
    KEY must exist.

    \b
    Examples:
      storekeeper meta update sqlite:///app.db#photos/cat.jpg -m rating=5
      storekeeper meta update '#photos/cat.jpg' '{"tags": ["pet"]}'
    """
    url, name, text = _operands(operands, key)
    metadata = parse_metadata(text, pairs, "the JSON argument")
    if metadata is None:
        raise click.UsageError("give the metadata: JSON and/or -m NAME=VALUE")
    with write_store(url, create=False) as opened:  # KEY must exist: so must its store
        opened.update_metadata(name, metadata, if_version=if_version)
