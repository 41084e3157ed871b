"""The simulator's HTTP plumbing: raw ASGI sends, Octave's error envelope, a token bucket,
and :class:`AgentServer`, what the routes share of the simulator.

Shared by the synchronous agent routes (``app.py``), the workspace routes (``workspace.py``)
and the async job routes (``jobs.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from octave_bulk.agents.base import Agent
from octave_bulk.simulator.config import SimulatorConfig

__all__ = [
    "AgentServer",
    "Receive",
    "Scope",
    "Send",
    "TokenBucket",
    "Window",
    "changed_burst",
    "envelope",
    "header",
    "now_iso",
    "read_body",
    "send_body",
    "send_json",
    "send_start",
    "uniforms",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AgentServer(Protocol):
    """What the async routes share with the synchronous agent route: its settings, its
    counters, its key check and each (requestId, attempt)'s fate.
    :class:`~octave_bulk.simulator.app.Simulator` is the one implementation."""

    config: SimulatorConfig
    calls: Counter[str]
    successes: Counter[str]
    totals: Counter[str]
    by_status: Counter[int]
    credits_used: float
    first_call_unix: float | None

    def key_error(self, scope: Scope) -> bytes | None: ...
    def retry_after(self, wait: float) -> bytes: ...
    def draw_fate(self, rid: str) -> tuple[str, float, float]: ...
    def success_body(self, request: BaseModel, agent: Agent, rid: str) -> bytes: ...


def now_iso() -> str:
    """Now, as Octave writes timestamps (UTC, milliseconds, ``Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def uniforms(*parts: object) -> tuple[float, float, float]:
    """Three uniform draws in [0, 1) that depend on ``parts`` only (fates are deterministic)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=24).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8, 16))  # type: ignore[return-value]


class TokenBucket:
    """A token bucket that starts full: ``rate`` tokens/s, at most ``burst`` banked."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()
        self.change: tuple[float, float] | None = None
        """(monotonic time, factor) of a change of rate and burst still to come."""

    def _refill(self, until: float) -> None:
        if until > self.stamp:
            self.tokens = min(self.burst, self.tokens + (until - self.stamp) * self.rate)
            self.stamp = until

    def take(self, now: float) -> float:
        """Take a token; return 0 on success, else the seconds until one is available."""
        if self.change is not None and now >= self.change[0]:
            at, factor = self.change
            self.change = None
            self._refill(at)  # the old rate up to the change, the new one from it
            self.rate *= factor
            self.burst = changed_burst(self.burst, factor)
            self.tokens = min(self.tokens, self.burst)
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Window:
    """A fixed or moving window (see :class:`~octave_bulk.simulator.config.RateLimit`):
    ``quota`` calls per ``period`` seconds. ``take`` answers like the bucket's: 0, or the
    seconds until a call would pass (a fixed window's reset, a moving window's oldest call
    leaving it)."""

    def __init__(self, quota: int, period: float, *, moving: bool, phase: float = 0.0) -> None:
        self.quota, self.period, self.moving, self.phase = quota, period, moving, phase
        self.passed: deque[float] = deque()  # the calls let through in the (current) window
        self.start: float | None = None  # a fixed window's start
        self.change: tuple[float, float] | None = None
        """(monotonic time, factor) of a change of the quota still to come."""

    def take(self, now: float) -> float:
        if self.change is not None and now >= self.change[0]:
            self.quota = max(1, round(self.quota * self.change[1]))
            self.change = None
        passed = self.passed
        if self.moving:
            while passed and passed[0] <= now - self.period:
                passed.popleft()
            wait = passed[0] + self.period - now if passed else 0.0
        else:
            if self.start is None:  # the first call comes ``phase`` into a window
                self.start = now - self.phase
            if now >= self.start + self.period:
                self.start += (now - self.start) // self.period * self.period
                passed.clear()
            wait = self.start + self.period - now
        if len(passed) >= self.quota:
            return max(wait, 1e-6)
        passed.append(now)
        return 0.0


def changed_burst(burst: float, factor: float) -> float:
    """A bucket's burst after a limit change by ``factor`` (at least 1)."""
    return max(1.0, burst * factor)


def envelope(title: str, detail: str | None) -> dict[str, Any]:
    """Octave's error envelope: ``_metadata`` (with ``message`` = title) and ``message``."""
    return {
        "_metadata": {
            "usage": 0,
            "requestId": "sim_"
            + hashlib.blake2b(str(time.time_ns()).encode(), digest_size=8).hexdigest(),
            "message": title,
            "timestamp": now_iso(),
        },
        "message": detail,
    }


def header(scope: Scope, name: bytes) -> bytes:
    """A request header's value (empty when absent)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_start(send: Send, status: int, length: int, ctype: bytes, extra: Any = ()) -> None:
    """The response start: status, content type and length, ``extra`` headers."""
    headers = [(b"content-type", ctype), (b"content-length", str(length).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    ctype: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A whole response with a body."""
    await send_start(send, status, len(body), ctype, headers or ())
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON response."""
    await send_body(send, status, orjson.dumps(payload), b"application/json", headers)
