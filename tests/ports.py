"""Loopback ports for servers a test starts later (a run's callback listener, PostgreSQL)."""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

_LOWEST_PORT = 10000  # the ports free_port() hands out start here, ...
_BLOCKS = 8  # ... in one block per pytest-xdist worker
_NEXT_PORT = itertools.count(random.randrange(10_000))  # where this process starts in its block


def free_port() -> int:
    """A loopback port free now, for a server a test starts later (a run's callback listener,
    PostgreSQL). Not one the kernel hands out (bound to 0, closed): that range is where every
    outgoing connection takes its local port, so another process may hold it by the time the
    server binds. Below that range, each pytest-xdist worker takes its own block, and a port
    in use is skipped."""
    try:  # Linux: "32768 60999"; elsewhere, no range to keep clear of
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    span = (low - _LOWEST_PORT) // _BLOCKS
    if span < 100:
        return _kernel_port()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = _LOWEST_PORT + span * (int(worker or 0) % _BLOCKS)
    for _ in range(span):
        port = start + next(_NEXT_PORT) % span
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        return port
    return _kernel_port()


def _kernel_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
