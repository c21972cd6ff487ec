"""``completion SHELL``: the script that turns on tab completion of storekeeper."""

from __future__ import annotations

import click

__all__ = ["completion"]


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (commands, options, choices).

    \b
    Examples:
      eval "$(storekeeper completion bash)"        # in ~/.bashrc
      storekeeper completion fish > ~/.config/fish/completions/storekeeper.fish
    """
    from click.shell_completion import get_completion_class

    from storekeeper.cli.main import cli

    completer = get_completion_class(shell)
    if completer is None:  # click knows the three choices; a guard for its future
        raise click.UsageError(f"no completion for {shell}")
    click.echo(completer(cli, {}, "storekeeper", "_STOREKEEPER_COMPLETE").source())
