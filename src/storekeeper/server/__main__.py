"""``python -m storekeeper.server STORE_URL [--host H] [--port P] [--read-only]``."""

from __future__ import annotations

import argparse

from storekeeper.server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the store it names."""
    parser = argparse.ArgumentParser(
        prog="python -m storekeeper.server", description="Serve a store over HTTP."
    )
    parser.add_argument("store_url", help="the store to serve, e.g. sqlite:///data.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--read-only", action="store_true", help="refuse every write")
    arguments = parser.parse_args(argv)
    serve(arguments.store_url, arguments.host, arguments.port, arguments.read_only)


if __name__ == "__main__":
    main()
