"""The simulator's socket listens as soon as its URL is known, before the server starts."""

from __future__ import annotations

import socket

from octave_bulk.simulator.server import bind_socket


def test_a_client_that_connects_before_the_server_starts_is_not_refused() -> None:
    sock = bind_socket()
    try:
        port = sock.getsockname()[1]
        # No server runs yet (``simulate`` prints the URL at this point): the connection waits
        # in the backlog instead of being refused.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()
