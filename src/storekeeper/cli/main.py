"""The ``storekeeper`` command group: global options, lazy commands, errors to exit codes.

To add a command, write a click command in a module of this package (import the library
inside the function, so the help stays fast) and add a line to :data:`COMMANDS`:
``"name": "storekeeper.cli.module:function"``. Errors it raises become one line on
stderr and the exit code of :mod:`storekeeper.cli.conventions`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, cast

import click

from storekeeper.cli.conventions import USAGE, CommandError, error_for

__all__ = ["COMMANDS", "cli", "main"]

#: Command name -> ``"module:attribute"`` of its click command, imported on first use.
COMMANDS: dict[str, str] = {
    "ls": "storekeeper.cli.listing:ls",
    "glob": "storekeeper.cli.listing:glob",
    "query": "storekeeper.cli.listing:query",
    "info": "storekeeper.cli.listing:info",
    "get": "storekeeper.cli.values:get",
    "cat": "storekeeper.cli.values:cat",
    "head": "storekeeper.cli.values:head",
    "put": "storekeeper.cli.values:put",
    "rm": "storekeeper.cli.values:rm",
    "meta": "storekeeper.cli.metadata:meta",
    "cp": "storekeeper.cli.copying:cp",
    "sync": "storekeeper.cli.copying:sync",
    "users": "storekeeper.cli.users:users",
    "serve": "storekeeper.cli.serving:serve",
    "export-static": "storekeeper.cli.serving:export_static",
    "completion": "storekeeper.cli.completion:completion",
}

_PASS_THROUGH = (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError)


class StorekeeperGroup(click.Group):
    """A group that imports each command on first use and turns the errors commands
    raise into :class:`~storekeeper.cli.conventions.CommandError` (one line, exit code)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command *cmd_name*, imported now; ``None`` if there is no such command."""
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        return cast(click.Command, getattr(importlib.import_module(module), attribute))

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """Parse the group's own options; a usage error is one line (see invoke)."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an exception that is not click's becomes a CommandError,
        and a usage error one line (``Error: ...``, exit 2), without click's preamble."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from exc
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            debug = bool(ctx.meta.get("storekeeper.debug"))
            raise error_for(exc, debug) from exc


def _one_line(exc: click.UsageError) -> click.ClickException:
    """*exc* as one line naming the help to read, exit 2 (a request for help, such as
    a group run without a command, stays as it is)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc
    path = exc.ctx.command_path if exc.ctx is not None else "storekeeper"
    message = exc.format_message().replace("\n", " ")
    return CommandError(f"{message} (see '{path} --help')", USAGE)


@click.group(
    cls=StorekeeperGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "\b\nExamples:\n"
        "  storekeeper put sqlite:///app.db#notes/today notes.txt -m kind=note\n"
        "  export STOREKEEPER_URL=sqlite:///app.db\n"
        "  storekeeper ls --prefix notes/ --long\n"
        "  storekeeper query kind=note year=range:2020..2025 --json\n"
        "  storekeeper sync ./photos 'file:///backup/photos?create=true'\n"
        "\b\nExit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 conflict.\n"
        'Shell completion: eval "$(storekeeper completion bash)".'
    ),
)
@click.version_option(package_name="storekeeper", prog_name="storekeeper")
@click.option(
    "--debug",
    is_flag=True,
    envvar="STOREKEEPER_DEBUG",
    help="Show the traceback of an error.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Look inside a store, copy data in and out, move it between backends.

    A STORE is a store URL (sqlite:///app.db, file:///srv/store, memory://, ...);
    left out, $STOREKEEPER_URL is used. A KEY is STORE_URL#key, #key or a bare key
    (in $STOREKEEPER_URL), or --key KEY after the STORE.
    """
    ctx.meta["storekeeper.debug"] = debug


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (*argv*: the arguments, default ``sys.argv[1:]``); exits."""
    cli.main(args=argv, prog_name="storekeeper", auto_envvar_prefix=None)
