"""PostgreSQL and Redis servers of the tests' own, to stop, crash and restart at will.

The machine's shared servers must never be restarted by a test (other people's tests
use them), so the fault tests start private ones: a PostgreSQL cluster made by
``initdb`` in a temporary directory, and ``redis-server`` processes, each on a free
loopback port. Without the binaries the tests skip, except under ``CI=true``, where a
missing binary fails them (:func:`~storekeeper.testing.plugin.require_service`).

PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user
(``runuser``), which then owns the cluster's directory. ``STOREKEEPER_PG_BIN`` names
the directory of ``initdb`` and ``pg_ctl`` when they are not found by themselves.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from storekeeper.testing.plugin import require_service

__all__ = ["PrivatePostgres", "PrivateRedis", "free_port"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(ready: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


# -- PostgreSQL ------------------------------------------------------------------------------------
def _postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest installed version)."""
    named = os.environ.get("STOREKEEPER_PG_BIN")
    candidates = [named] if named else []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PrivatePostgres:
    """A PostgreSQL cluster in a new temporary directory (made on :meth:`start`: the
    ``postgres`` user must reach it, which pytest's own directories forbid), listening
    on 127.0.0.1 at a free port, superuser ``postgres`` without password; :attr:`url`
    reaches its ``postgres`` database. *settings* are extra ``-c name=value`` server
    settings."""

    def __init__(
        self, settings: dict[str, str] | None = None, environment: dict[str, str] | None = None
    ) -> None:
        binaries = _postgres_bin()
        if binaries is None:
            require_service("PostgreSQL binaries", "no initdb/pg_ctl (set STOREKEEPER_PG_BIN)")
        assert binaries is not None
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="storekeeper-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = settings or {}
        self.environment = environment or {}
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                require_service("PostgreSQL", "running as root and there is no postgres user")
            self._user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        variables = [f"{name}={value}" for name, value in self.environment.items()]
        return subprocess.run(
            [*self._user, "env", *variables, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def add_locale(self, name: str) -> bool:
        """Make the locale *name* (e.g. ``de_DE.UTF-8``) available to this server, in its
        directory (``localedef``, ``LOCPATH``): the machine need not have it installed.
        Whether that worked (call before :meth:`start`)."""
        source, _, charset = name.partition(".")
        where = self.root / "locales"
        where.mkdir(exist_ok=True)
        made = subprocess.run(
            ["localedef", "-c", "-i", source, "-f", charset or "UTF-8", str(where / name)],
            capture_output=True,
            check=False,
        )
        if made.returncode != 0 or not (where / name).exists():
            return False
        if self._user:
            for path in [where, *where.rglob("*")]:
                shutil.chown(path, "postgres", "postgres")
        self.environment["LOCPATH"] = str(where)
        return True

    def start(self) -> None:
        """Start the server (making the cluster first if there is none yet)."""
        if not self.data.exists():
            if self._user:
                shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o700)
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",  # a test cluster: its creation need not survive a power cut
                "--no-instructions",
            )
        options = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            " ".join(options),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (a clean shutdown) or ``immediate`` (a crash: no
        checkpoint, the next start recovers from the write-ahead log)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """Whether the server answers."""
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def library(self, name: str) -> bool:
        """Whether the server has the loadable module *name* (e.g. an extension's)."""
        places = [self.bin.parent / "lib"]
        config = self.bin / "pg_config"
        if config.exists():
            found = subprocess.run(
                [str(config), "--pkglibdir"], capture_output=True, text=True, check=True
            )
            places.insert(0, Path(found.stdout.strip()))
        return any((place / f"{name}.so").exists() for place in places)

    def close(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False
        )
        shutil.rmtree(self.root, ignore_errors=True)


# -- Redis -----------------------------------------------------------------------------------------
class PrivateRedis:
    """A ``redis-server`` on a free port of 127.0.0.1, its files in *root*. Without
    *persistent* it keeps nothing on disk (``--save '' --appendonly no``, as the
    machine's shared server); with it, every write is in the append-only file before
    the server answers (``--appendonly yes --appendfsync always``)."""

    def __init__(self, root: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_service("Redis", "no redis-server binary")
        assert binary is not None
        self.binary = binary
        self.root = root
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (reloading its append-only file when persistent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        durability = ["--appendonly", "no"]
        if self.persistent:
            durability = ["--appendonly", "yes", "--appendfsync", "always"]
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *durability,
                "--dir",
                str(self.root),
                "--logfile",
                str(self.root / "server.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(self.running, f"redis-server on port {self.port}")

    def crash(self) -> None:
        """Kill the server at once (SIGKILL: no chance to save anything)."""
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(30)

    def running(self) -> bool:
        """Whether the server answers."""
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def close(self) -> None:
        """Stop the server if it runs and delete its files."""
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)
