"""The ``storekeeper`` command: every store from the shell (needs the ``[cli]`` extra).

:mod:`storekeeper.cli.main` holds the command group and the table of commands;
:mod:`storekeeper.cli.conventions` what every command shares; each other module a
family of commands, each a thin call of the public API.
"""
