"""A short, readable tour of storekeeper: ``python -m storekeeper.tour`` (``make run``)."""

from __future__ import annotations

import storekeeper


def main() -> None:
    """Print a walk through the library's main features."""
    print(f"storekeeper {storekeeper.__version__}")
    print("errors share one root:", storekeeper.StorekeeperError.__name__)


if __name__ == "__main__":
    main()
