"""``ServerThread``: an application served by uvicorn in a background thread (tests,
benchmarks, embedding)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any, Self

__all__ = ["ServerThread"]


class ServerThread:
    """Serve the ASGI *app* on *host* (a free port unless *port* is given) in a daemon
    thread; ``with ServerThread(app) as server:`` starts it and stops it at the end.

    ``url`` is the server's root URL (``http://127.0.0.1:PORT``). The listening socket
    is open before :meth:`start` returns, so requests can be sent at once.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any
    ) -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(uvicorn_options.pop("backlog", 2048))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        uvicorn_options.setdefault("log_level", "warning")
        uvicorn_options.setdefault("timeout_graceful_shutdown", 2)
        config = uvicorn.Config(app, **uvicorn_options)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> None:
        """Start serving; returns once the server accepts requests."""
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.01)
        if not self.server.started:
            raise RuntimeError("the server did not start")

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
