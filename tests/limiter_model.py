"""A virtual server and its clients in virtual time, to drive the limiter in tests.

The event loop is looptime's (time advances only when every task waits), so a run of
thousands of 40-s calls takes a fraction of a second and is deterministic for a seed.
The server is a token bucket (rate, burst) and/or a cap on calls in flight; it refuses with a
429 at once, like a gateway. Each client retries a refused contact after the Retry-After it
was given (1 s), as the engine's workers do.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field

import anyio
import looptime

from octave_bulk.limits.adaptive import AdaptiveLimiter


@dataclass
class Server:
    """Token bucket ``rate``/``burst`` and/or ``cap`` calls in flight; lognormal latency."""

    rate: float | None = None
    burst: float = 1.0
    cap: int | None = None
    latency: float = 1.0
    sigma: float = 0.3
    change_at: float | None = None  # seconds after the first call ...
    change_factor: float = 1.0  # ... the limits are multiplied by this
    seed: int = 1
    calls: int = 0
    refused: int = 0
    first: float | None = None
    last_accepted: float = 0.0
    last_answer: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    accepted_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tokens, self._stamp = self.burst, 0.0
        self._rng = random.Random(self.seed)

    def take(self, now: float) -> bool:
        """Whether a call arriving now is accepted."""
        if self.first is None:
            self.first = now
        if self.change_at is not None and now - self.first >= self.change_at:
            self.rate = self.rate and self.rate * self.change_factor
            self.cap = self.cap and max(1, round(self.cap * self.change_factor))
            self.change_at = None
        self.calls += 1
        if self.cap is not None and self.in_flight >= self.cap:
            self.refused += 1
            return False
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                self.refused += 1
                return False
            self._tokens -= 1
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
                    limiter.on_answer(ticket)
                    break
                await asyncio.sleep(0.002)  # a refusal's round trip
                limiter.on_429(ticket, 1.0)
                await asyncio.sleep(1.0)  # the contact's own retry waits out its Retry-After

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
