"""Commands that look inside a store: ``ls``, ``glob``, ``query`` and ``info``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click

from storekeeper.cli.conventions import (
    echo_json,
    iso_time,
    json_option,
    looks_like_url,
    parse_value,
    read_store,
    store_url,
    take_store,
)

__all__ = ["glob", "info", "ls", "parse_term", "query"]


@click.command()
@click.argument("store", required=False)
@click.option("--prefix", default="", metavar="P", help="Only keys starting with P.")
@click.option(
    "--delimiter",
    metavar="D",
    help="List one level: keys holding D after the prefix fold into their folder.",
)
@click.option("-l", "--long", "long_", is_flag=True, help="Show size, modified time and version.")
@json_option
def ls(store: str | None, prefix: str, delimiter: str | None, long_: bool, as_json: bool) -> None:
    """List the keys of STORE, in key order.

    Each key is printed as it is, one per line, so a key holding a newline spans two
    lines (and one holding other control characters prints them): use --json, which
    escapes them, when keys may hold such characters. A key you may see but not read
    (a SimpleAuthStore "exists" grant) shows "-" for its size, time and version.

    \b
    Examples:
      storekeeper ls sqlite:///app.db
      storekeeper ls --prefix photos/ --delimiter / --long
      storekeeper ls --json | jq -r .key
    """
    with read_store(store_url(store)) as opened:
        for record in _records(opened, prefix, delimiter or None, long_):
            if as_json:
                echo_json(record)
            elif long_:
                size = "-" if record.get("size") is None else record["size"]
                click.echo(
                    f"{size:>12}  {record.get('modified') or '-':20}  "
                    f"{record.get('version') or '-'}  {record['key']}"
                )
            else:
                click.echo(record["key"])


def _records(
    store: Any, prefix: str, delimiter: str | None, long_: bool
) -> Iterator[dict[str, Any]]:
    """``ls``'s records: keys (and folders), with size, modified time and version when
    *long_* (one listing with details when there are no folders to fold)."""
    from storekeeper.store.listing import is_folder

    if long_ and delimiter is None:
        for key, info in store.list_info(prefix):
            yield _long_record(key, info.size, info.modified, info.version)
        return
    for entry in store.list_keys(prefix, delimiter):
        if is_folder(entry, prefix, delimiter):
            yield {"key": entry, "folder": True}
        elif not long_:
            yield {"key": entry}
        else:
            try:
                value = store.get(entry)
            except KeyError:  # deleted since it was listed
                continue
            yield _long_record(entry, value.size, value.modified, value.version)


def _long_record(
    key: str, size: int | None, modified: float | None, version: str | None
) -> dict[str, Any]:
    """``ls --long``'s record of *key*: size, modified time, version."""
    return {"key": key, "size": size, "modified": iso_time(modified), "version": version}


@click.command()
@click.argument("operands", nargs=-1, required=True, metavar="[STORE] PATTERN")
@json_option
def glob(operands: tuple[str, ...], as_json: bool) -> None:
    """List the keys of STORE matching the glob PATTERN (*, ?, [abc]; * crosses /).

    \b
    Examples:
      storekeeper glob sqlite:///app.db 'photos/*.jpg'
      storekeeper glob '*.txt' --json
    """
    url, (pattern,) = take_store(operands, 1)
    with read_store(url) as opened:
        for key in sorted(opened.glob(pattern)):
            echo_json({"key": key}) if as_json else click.echo(key)


def parse_term(text: str) -> tuple[str, Any]:
    """A query term ``name=value`` as ``(name, value or term)``.

    ``value`` is JSON or a string (exact match); ``in:a,b`` is :class:`In`,
    ``range:low..high`` a :class:`Range` ``low <= value < high`` (``..=high`` includes
    high; either bound may be left out), ``prefix:text`` a :class:`Prefix`, ``exists``
    / ``!exists`` an :class:`Exists`. A JSON string (``'"exists"'``) is always exact.
    """
    from storekeeper.store.query import Exists, In, Prefix, Range

    name, equals, value = text.partition("=")
    if not equals or not name:
        raise click.BadParameter(f"a query term is name=value, not {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        pass
    if value in ("exists", "!exists"):
        return name, Exists(value == "exists")
    kind, colon, rest = value.partition(":")
    if colon and kind == "in":
        return name, In(parse_value(item) for item in rest.split(","))
    if colon and kind == "prefix":
        return name, Prefix(rest)
    if colon and kind == "range":
        low, dots, high = rest.partition("..")
        if not dots:
            raise click.BadParameter(f"a range is range:low..high, not {value!r}")
        inclusive = high.startswith("=")
        high = high.removeprefix("=")
        bounds = [parse_value(bound) if bound else None for bound in (low, high)]
        return name, Range(bounds[0], bounds[1], include_high=inclusive)
    return name, value


@click.command()
@click.argument("operands", nargs=-1, metavar="[STORE] [TERM]...")
@click.option("--select", metavar="NAMES", help="Comma-separated metadata names to show.")
@json_option
def query(operands: tuple[str, ...], select: str | None, as_json: bool) -> None:
    """List the keys whose metadata matches every TERM (all keys without terms).

    \b
    TERM is one of:
      name=value           exact match; value is JSON (5, true, "007") or a string
      name=in:a,b          one of the values
      name=range:1..5      1 <= value < 5 (range:1..=5 includes 5; range:..5, range:1..)
      name=prefix:abc      strings starting with abc
      name=exists          has the name (name=!exists: has not)

    \b
    Examples:
      storekeeper query sqlite:///app.db kind=photo year=range:2020..2025
      storekeeper query tag=in:cat,dog --select title,year --json
    """
    if operands and looks_like_url(operands[0].partition("=")[0]):
        url, terms = operands[0], operands[1:]
    else:
        url, terms = store_url(None), operands
    where = dict(parse_term(term) for term in terms)
    names = None if select is None else [name for name in select.split(",") if name]
    with read_store(url) as opened:
        results = opened.query(names, where) if names is not None else None
        if results is None:
            keys = opened.query_keys(where)
            for key in sorted(keys):
                echo_json({"key": key}) if as_json else click.echo(key)
            return
        for key, metadata in sorted(results, key=lambda item: item[0]):
            if as_json:
                echo_json({"key": key, "metadata": metadata})
            else:
                click.echo(f"{key}\t{json.dumps(metadata, ensure_ascii=False)}")


@click.command()
@click.argument("store", required=False)
@json_option
def info(store: str | None, as_json: bool) -> None:
    """Describe STORE: its type, what it promises (capabilities) and backend details.

    \b
    Examples:
      storekeeper info sqlite:///app.db
      storekeeper info file:///srv/store --json
    """
    import dataclasses

    with read_store(store_url(store)) as opened:
        details = {**opened.info(), "capabilities": dataclasses.asdict(opened.capabilities)}
    if as_json:
        echo_json(details)
        return
    for name, value in details.items():
        if isinstance(value, dict):
            flags = ", ".join(key for key, flag in value.items() if flag) or "none"
            click.echo(f"{name}: {flags}")
        else:
            click.echo(f"{name}: {value}")
