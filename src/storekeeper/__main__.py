"""``python -m storekeeper``: the ``storekeeper`` command."""

from storekeeper.cli.main import main

if __name__ == "__main__":
    main()
