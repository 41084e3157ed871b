"""A faithful local stand-in for Octave's Sequence Agent endpoint (docs/octave-api.md).

Use :func:`serve_simulator` in tests (serves on 127.0.0.1, a free port, in a thread), the
:class:`Simulator` ASGI app with ``httpx.ASGITransport`` for unit tests, or
``octave-bulk simulate`` to run it standalone.
"""

from __future__ import annotations

from octave_bulk.simulator.app import Simulator
from octave_bulk.simulator.config import (
    FAULT_KINDS,
    LATENCY_PRESETS,
    Latency,
    RateLimit,
    RetryAfterMix,
    SimulatorConfig,
    parse_agents,
    parse_faults,
    parse_forced,
    parse_latency,
    parse_limit_change,
    parse_rate_limit,
    parse_retry_after_mix,
)
from octave_bulk.simulator.server import RunningSimulator, serve_simulator

__all__ = [
    "FAULT_KINDS",
    "LATENCY_PRESETS",
    "Latency",
    "RateLimit",
    "RetryAfterMix",
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "parse_agents",
    "parse_faults",
    "parse_forced",
    "parse_latency",
    "parse_limit_change",
    "parse_rate_limit",
    "parse_retry_after_mix",
    "serve_simulator",
]
