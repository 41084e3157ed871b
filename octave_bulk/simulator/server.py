"""Serving the simulator: in a background thread for tests, or in the foreground for the CLI.

Both use uvicorn with the httptools parser and a protocol subclass that hands the app a way to
drop its TCP connection (``ABORT_EXTENSION``), because plain ASGI cannot reset a socket.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from octave_bulk.simulator.app import ABORT_EXTENSION, Simulator
from octave_bulk.simulator.config import SimulatorConfig

__all__ = ["RunningSimulator", "bind_socket", "run_forever", "serve_simulator", "uvicorn_config"]


class _AbortableProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the abort extension in every request's scope."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope["extensions"] = {ABORT_EXTENSION: self._abort}

    def _abort(self, reset: bool) -> None:
        if not reset:
            self.transport.close()
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send an RST: the client sees "connection reset by peer".
            with contextlib.suppress(OSError):  # the client may be gone already
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


_BACKLOG = 4096


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A socket bound to (host, port) and listening; port 0 picks a free one.

    It listens at once, so a client that connects as soon as the URL is known (``simulate``
    prints it before the server has started) waits in the backlog until the server accepts,
    rather than being refused."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle holds each response body for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    return sock


def uvicorn_config(app: Simulator, loop: str) -> uvicorn.Config:
    """The uvicorn server settings every simulator (and the hostile front) is served with."""
    return uvicorn.Config(
        app,
        http=_AbortableProtocol,
        loop=loop,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=_BACKLOG,
        # Hanging requests must not hold up shutdown.
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving on loopback: its base URL and the app (for counters)."""

    url: str
    app: Simulator

    def stats(self, *, detail: bool = True) -> dict[str, Any]:
        """The same counters as ``GET /__simulator/stats``."""
        return self.app.stats(detail=detail)


@contextlib.contextmanager
def serve_simulator(
    config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningSimulator]:
    """Serve a simulator in a background thread for the duration of the ``with`` block.

    Args:
        config: simulator behaviour; the default answers every request at once.
        host: interface to bind, loopback by default.
        port: 0 picks a free port; read the result from ``.url``.
    """
    app = Simulator(config)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "asyncio"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="octave-simulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = "the simulator did not start"
            raise RuntimeError(msg)
        time.sleep(0.01)
    try:
        yield RunningSimulator(url=f"http://{host}:{bound_port}", app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def run_forever(app: Simulator, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` in the foreground until SIGINT/SIGTERM (uvloop when present)."""
    uvicorn.Server(uvicorn_config(app, "auto")).run(sockets=[sock])
