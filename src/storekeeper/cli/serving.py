"""``serve`` and ``export-static``: a store over HTTP, or laid out for any static host."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import click

from storekeeper.cli.conventions import read_store, store_url

__all__ = ["export_static", "serve"]

SECRET_ENV = "STOREKEEPER_AUTH_SECRET"  # noqa: S105 - the name of a variable, not a secret


@click.command()
@click.argument("store", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Refuse every write (405).")
@click.option(
    "--auth",
    is_flag=True,
    help="Require a login checked against the users kept in STORE (see `users add`).",
)
@click.option(
    "--secret",
    envvar=SECRET_ENV,
    help=f"The password-hashing secret the users were added with (or ${SECRET_ENV}).",
)
@click.option("--user-prefix", default=".user_", show_default=True, help="Key prefix of users.")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="TLS cert.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS key.")
@click.option(
    "--insecure-auth",
    is_flag=True,
    help="Allow --auth over plain HTTP on an address that is not loopback.",
)
@click.option(
    "--token-lifetime",
    type=click.FloatRange(0, min_open=True),
    default=12 * 3600,
    show_default=True,
    help="Seconds a login token lasts at most.",
)
@click.option(
    "--token-idle",
    type=click.FloatRange(0, min_open=True),
    default=3600,
    show_default=True,
    help="Seconds a login token lasts unused.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Live login tokens at most (the oldest make room).",
)
@click.option(
    "--max-failed-logins",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Wrong passwords per address or user name before 429.",
)
@click.option(
    "--failed-login-window",
    type=click.FloatRange(0, min_open=True),
    default=300,
    show_default=True,
    help="Seconds over which wrong passwords are counted.",
)
def serve(
    store: str | None,
    host: str,
    port: int,
    read_only: bool,
    auth: bool,
    secret: str | None,
    user_prefix: str,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    insecure_auth: bool,
    token_lifetime: float,
    token_idle: float,
    max_tokens: int,
    max_failed_logins: int,
    failed_login_window: float,
) -> None:
    """Serve STORE over HTTP (REST under /store, queries at /query, events at
    /events, a web page at /) until interrupted.

    With --auth, POST /login gives a token that ends after --token-idle seconds
    unused, after --token-lifetime seconds in any case, or at DELETE /login; too many
    wrong passwords from one address or for one user name answer 429 for a while.

    \b
    Examples:
      storekeeper serve sqlite:///app.db --port 8765
      storekeeper serve file:///srv/data --read-only --host 0.0.0.0
      STOREKEEPER_AUTH_SECRET=... storekeeper serve sqlite:///app.db --auth
    """
    from storekeeper.server import serve as run_server

    guard = None
    if auth:
        if not secret:
            raise click.UsageError(f"--auth needs --secret (or ${SECRET_ENV})")
        from storekeeper.backends.memory import DictMemoryStore
        from storekeeper.composite.auth import SimpleAuthStore, make_encoder

        # A template: the server wraps STORE with its encoder and user prefix.
        guard = SimpleAuthStore(DictMemoryStore(), make_encoder(secret.encode()), user_prefix)
    # Ctrl-C is how a server is meant to stop: a normal end, exit status 0.
    with contextlib.suppress(KeyboardInterrupt):
        run_server(
            store_url(store),
            host,
            port,
            read_only,
            guard,
            insecure_auth=insecure_auth,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            token_lifetime=token_lifetime,
            token_idle=token_idle,
            max_tokens=max_tokens,
            max_failed_logins=max_failed_logins,
            failed_login_window=failed_login_window,
        )


@click.command("export-static")
@click.argument("operands", nargs=-1, required=True, metavar="[STORE] DIRECTORY")
@click.option("--skip-invalid", is_flag=True, help="Skip keys that cannot be paths (a warning).")
def export_static(operands: tuple[str, ...], skip_invalid: bool) -> None:
    """Write STORE as a static site in DIRECTORY (index.json plus data/, and the same
    files under generations/NAME/ with generation.json naming the export), replacing an
    earlier export in one step; a StaticURLStore reads it from any static host and never
    mixes two exports.

    \b
    Examples:
      storekeeper export-static sqlite:///app.db ./site
      storekeeper export-static file:///srv/data /var/www/data --skip-invalid
    """
    from storekeeper.cli.conventions import take_store
    from storekeeper.export import export_static as export

    url, (directory,) = take_store(operands, 1)
    with read_store(url) as opened, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped keys are listed below instead
        summary = export(opened, Path(directory), skip_invalid=skip_invalid)
    for key in summary.skipped:
        click.echo(f"skipped {key!r}: it cannot be a path", err=True)
    click.echo(f"exported {summary.exported} keys to {directory}")
