"""A virtual server and its clients in virtual time, to drive the limiter in tests.

The event loop is looptime's (time advances only when every task waits), so a run of
thousands of 40-s calls takes a fraction of a second and is deterministic for a seed.
The server is a rate limit and/or a cap on calls in flight; it refuses with a 429 at once,
like a gateway. The rate limit is one of the shapes API gateways and limiter libraries use:

* ``bucket``: a token bucket (``rate``, ``burst``) that starts full; its 429s say
  ``Retry-After: 1`` (``retry_after``);
* ``fixed``: a fixed window of ``rate`` x ``period`` calls per ``period`` seconds, counted from
  the first call (a per-minute quota: ``period`` 60), or with ``phase`` from the clock's
  windows, the first call coming ``phase`` seconds into one; its 429s say the seconds to the
  reset;
* ``moving``: a moving (sliding-log) window: a call is let through while fewer than
  ``rate`` x ``period`` were let through in the last ``period`` seconds; its 429s say the
  seconds until the oldest of them leaves the window.

With ``headers`` on, a rate limit's 429s say what limiter libraries' ``X-RateLimit-*`` headers
say (the limit per period, remaining 0, the reset: :class:`~octave_bulk.errors.RefusalHints`),
and with ``policy`` the period too (the IETF ``RateLimit-Policy``'s ``w=``); a cap's say nothing.

Each client retries a refused contact after the Retry-After it was given, as the engine's
workers do.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from dataclasses import dataclass, field

import anyio
import looptime

from octave_bulk.errors import RefusalHints
from octave_bulk.limits.adaptive import AdaptiveLimiter


@dataclass
class Server:
    """Token bucket ``rate``/``burst`` and/or ``cap`` calls in flight; lognormal latency."""

    rate: float | None = None
    burst: float = 1.0
    cap: int | None = None
    shape: str = "bucket"  # bucket, fixed or moving (see the module docstring)
    period: float = 1.0  # a window's length, seconds
    phase: float = 0.0  # a fixed window's: how far into a window the first call comes
    retry_after: float = 1.0  # what a bucket's (and a cap's) 429 says
    latency: float = 1.0
    sigma: float = 0.3
    change_at: float | None = None  # seconds after the first call ...
    change_factor: float = 1.0  # ... the limits are multiplied by this
    headers: bool = False  # a rate limit's 429s carry RefusalHints (module docstring)
    policy: bool = False  # ... and the period
    seed: int = 1
    calls: int = 0
    refused: int = 0
    first: float | None = None
    last_accepted: float = 0.0
    last_answer: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    accepted_at: list[float] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)  # every call, refused or not

    def __post_init__(self) -> None:
        self._tokens, self._stamp = self.burst, 0.0
        self._rng = random.Random(self.seed)
        self._window: deque[float] = deque()  # accepted calls' times (fixed: this window's)
        self._window_start = 0.0
        self.wait = self.retry_after  # the last refusal's Retry-After
        self.hints: RefusalHints | None = None  # ... and its rate limit headers

    def _rate_refuses(self, now: float) -> bool:
        assert self.rate is not None
        quota = max(1, round(self.rate * self.period))
        if self.shape == "fixed":
            assert self.first is not None
            origin = self.first - self.phase  # windows start at origin + k x period
            start = origin + (now - origin) // self.period * self.period
            if start != self._window_start:
                self._window_start = start
                self._window.clear()
            self.wait = math.ceil(start + self.period - now)
        elif self.shape == "moving":
            while self._window and self._window[0] <= now - self.period:
                self._window.popleft()
            if self._window:
                self.wait = math.ceil(self._window[0] + self.period - now)
        else:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self.wait = self.retry_after
            if self._tokens < 1:
                return True
            self._tokens -= 1
            return False
        if len(self._window) >= quota:
            return True
        self._window.append(now)
        return False

    def take(self, now: float) -> bool:
        """Whether a call arriving now is accepted (else ``wait`` is its Retry-After)."""
        if self.first is None:
            self.first = now
        if self.change_at is not None and now - self.first >= self.change_at:
            self.rate = self.rate and self.rate * self.change_factor
            self.cap = self.cap and max(1, round(self.cap * self.change_factor))
            self.change_at = None
        self.calls += 1
        self.arrived_at.append(now)
        self.hints = None
        if self.cap is not None and self.in_flight >= self.cap:
            self.refused += 1
            self.wait = self.retry_after
            return False
        if self.rate is not None and self._rate_refuses(now):
            self.refused += 1
            if self.headers:
                quota = max(1, round(self.rate * self.period))
                window = self.period if self.policy else None
                self.hints = RefusalHints(quota, 0, self.wait, window)
            return False
        self.last_accepted = now
        self.accepted_at.append(now)
        return True

    def draw(self) -> float:
        return self.latency * math.exp(self.sigma * self._rng.gauss(0, 1))


async def _run(server: Server, contacts: int, limiter: AdaptiveLimiter, workers: int) -> None:
    loop = asyncio.get_running_loop()
    todo = contacts

    async def client() -> None:
        nonlocal todo
        while todo:
            todo -= 1
            while True:
                ticket = await limiter.acquire()
                if server.take(loop.time()):
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    await asyncio.sleep(server.draw())
                    server.in_flight -= 1
                    server.last_answer = loop.time()
                    await limiter.on_answer(ticket)
                    break
                wait = server.wait
                await asyncio.sleep(0.002)  # a refusal's round trip
                pause = await limiter.on_429(ticket, wait, server.hints)
                await asyncio.sleep(max(wait, pause))  # the retry waits out its Retry-After

    async with anyio.create_task_group() as tasks:
        for _ in range(workers):
            tasks.start_soon(client)


def simulate(
    server: Server,
    contacts: int,
    *,
    rate_ceiling: float | None,
    window_ceiling: int,
    **limiter_options: object,
) -> AdaptiveLimiter:
    """Run ``contacts`` contacts through a limiter against ``server``; returns the limiter."""
    loop = looptime.new_event_loop(start=0.0)
    try:

        async def main() -> AdaptiveLimiter:
            limiter = AdaptiveLimiter(
                rate_ceiling,
                window_ceiling,
                clock=asyncio.get_running_loop().time,
                **limiter_options,  # type: ignore[arg-type]
            )
            await _run(server, contacts, limiter, window_ceiling)
            return limiter

        return loop.run_until_complete(main())
    finally:
        loop.close()
