"""Pacing in Octave's own regime (issue 23), in virtual time: calls slower than the gaps
between sends (latency x R >= 4), so refusals arrive before anything has come back.

The limiter runs against the virtual server of ``tests/limiter_model.py`` (looptime: a 30-min
night of 45-s calls takes a second or two, deterministically), the same one its tests use, with
the engine's defaults around it: ``--concurrency`` unset (the window searched from 32 up to 512)
and ``--rate`` none (the search starts at 16/s) or 4R. Each cell runs twice: a first run, then
a second one on a fresh server that starts from what the first would have remembered
(``OUT.limits.json``: the rate when a rate limit was met, the window when a cap was), with no
``--rate``, as the engine's second night would.

Shapes (R the limit's rate; a cap's K = R x mean latency, the same throughput):

* ``bucket1``, ``bucket2``, ``bucketR``: a token bucket of R/s with a burst of 1, 2, R;
* ``fixed``, ``moving``: a fixed or moving window of R calls per second;
* ``quota_fixed``, ``quota_moving``: 60 R calls per minute, fixed (Retry-After: the reset)
  or moving (Retry-After: until the oldest call leaves it);
* ``quota_clock``: the fixed one on the clock's minutes (gateways that count per calendar
  minute), the run's first call coming :data:`CLOCK_PHASE` seconds into one: its first,
  partial minute lets a whole quota through, so its ratio may be under 1;
* ``cap``: K calls in flight (Retry-After: 1).

Each rate shape also runs with ``+hdr``: its 429s carry what limiter libraries'
``X-RateLimit-Limit/Remaining/Reset`` say (the limit per period, remaining 0, the reset), which
the limiter takes as evidence of a rate (user "none" only).

Regimes: R = 2/s with median latency 45 s (sigma 0.2: 30-60 s; R x L = 90 in flight), and
R = 5/s with 3-s calls (R x L = 15). N such that the ideal is 1, 5 and 30 minutes.

Measures: rate shapes, first call -> last accepted call over (N - 1) / R; caps, first call ->
last answer over N x mean latency / K. 429 share: refusals over calls. Targets: <= 1.25 at 1
minute, <= 1.10 at 5 and 30; the second run <= 1.05 and never slower than the first; 429s
<= 3 % at 5 minutes and up.

A cap's N x mean latency / K is a bound no client reaches at 1 or 5 minutes: its last wave of
K calls ends with the slowest of them (121 calls of 45 s through 92 slots are two waves). So a
cap row also gives ``floor``, the ratio of a client that knew K from the start (the same
server and seed, K calls sent at once, no search), and is judged on ``ratio / floor``: what the
search costs. Rate rows have no floor (1.0: a rate's ideal is reached by pacing at R).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from octave_bulk.limits.adaptive import FIRST_WINDOW, WINDOW_BOUND
from tests.limiter_model import Server, simulate

SHAPES = (
    "bucket1", "bucket2", "bucketR", "fixed", "moving", "quota_fixed", "quota_moving",
    "quota_clock", "cap",
)  # fmt: skip
CLOCK_PHASE = 40.0  # seconds into a clock minute the first call of a quota_clock cell comes
REGIMES = ((2.0, 45.0, 0.2), (5.0, 3.0, 0.3))  # (R, median latency, sigma)
MINUTES = (1, 5, 30)
TARGET_SHORT, TARGET, TARGET_MEMORY, MAX_429_SHARE = 1.25, 1.10, 1.05, 0.03


@dataclass(frozen=True)
class SlowCell:
    shape: str
    rate: float
    latency: float
    sigma: float
    minutes: int
    user: str  # "none" or "4R"
    headers: bool = False  # the rate limit's 429s say X-RateLimit-* (RefusalHints)

    @property
    def n(self) -> int:
        return int(self.rate * 60 * self.minutes) + 1

    @property
    def mean_latency(self) -> float:
        return self.latency * math.exp(self.sigma**2 / 2)

    @property
    def cap(self) -> int:
        return round(self.rate * self.mean_latency)

    @property
    def name(self) -> str:
        shape = self.shape + ("+hdr" if self.headers else "")
        return f"{shape} R={self.rate:g}/s L={self.latency:g}s {self.minutes}min"

    def server(self) -> Server:
        common: dict[str, Any] = {
            "latency": self.latency,
            "sigma": self.sigma,
            "headers": self.headers,
        }
        rate = self.rate
        if self.shape == "cap":
            return Server(cap=self.cap, **common)
        if self.shape.startswith("bucket"):
            burst = {"bucket1": 1.0, "bucket2": 2.0, "bucketR": rate}[self.shape]
            return Server(rate=rate, burst=burst, **common)
        if self.shape == "quota_clock":
            return Server(rate=rate, shape="fixed", period=60.0, phase=CLOCK_PHASE, **common)
        shape = self.shape.removeprefix("quota_")
        period = 60.0 if self.shape.startswith("quota") else 1.0
        return Server(rate=rate, shape=shape, period=period, **common)

    def ideal(self) -> float:
        if self.shape == "cap":
            return self.n * self.mean_latency / self.cap
        return (self.n - 1) / self.rate

    def target(self, run: int) -> float:
        if run == 2:
            return TARGET_MEMORY
        return TARGET_SHORT if self.minutes == 1 else TARGET


def _span(cell: SlowCell, server: Server) -> float:
    assert server.first is not None
    end = server.last_answer if cell.shape == "cap" else server.last_accepted
    return end - server.first


def _remembered(found: dict[str, Any], period: float | None) -> dict[str, Any]:
    """What the engine would store in OUT.limits.json and start the next run from (the rate
    window's length with the rate, as ``limits/factory.py`` hands it on)."""
    start: dict[str, Any] = {}
    if found.get("rate") is not None:
        start["start_rate"] = found["rate"]
        start["start_period"] = period
    if found.get("concurrency_limited_at"):
        start["start_window"] = found["window"]
    return start


def floor(cell: SlowCell) -> float:
    """The ratio of a client that knew the limit: for a cap, K calls in flight from the start
    (no search, no 429); 1.0 for a rate (paced at R, its ideal is reached)."""
    if cell.shape != "cap":
        return 1.0
    server = cell.server()
    simulate(server, cell.n, rate_ceiling=None, window_ceiling=cell.cap, adaptive=False)
    return _span(cell, server) / cell.ideal()


def run_cell(cell: SlowCell) -> list[dict[str, Any]]:
    """The cell's two runs (first, then from memory); one row each."""
    rows = []
    reached = floor(cell)
    options: dict[str, Any] = {
        "rate_ceiling": 4 * cell.rate if cell.user == "4R" else None,
        "window_ceiling": WINDOW_BOUND,
        "first_window": FIRST_WINDOW,
    }
    first_ratio = None
    for run in (1, 2):
        server = cell.server()
        started = time.monotonic()
        limiter = simulate(server, cell.n, **options)
        report = limiter.report()
        found = report.summary()
        ratio = _span(cell, server) / cell.ideal()
        share = server.refused / max(1, server.calls)
        missed = []
        if ratio / reached > cell.target(run):
            missed.append("time")
        if run == 2 and first_ratio is not None and ratio > first_ratio + 0.01:
            missed.append("slower than run 1")
        if cell.minutes >= 5 and share > MAX_429_SHARE:
            missed.append("429s")
        rows.append(
            {
                "cell": cell.name,
                "user": cell.user if run == 1 else "(remembered)",
                "run": run,
                "N": cell.n,
                "ideal_s": cell.ideal(),
                "ratio": ratio,
                "floor": None if cell.shape != "cap" else reached,
                "target": f"<= {cell.target(run):g}",
                "429_share": share,
                "found_rate": found["rate"],
                "window": found["window"],
                "cap_at": found["concurrency_limited_at"],
                "max_in_flight": server.max_in_flight,
                "verdict": f"MISS ({', '.join(missed)})" if missed else "met",
                "cpu_s": time.monotonic() - started,
                "started_from": {k: v for k, v in options.items() if k.startswith("start")},
            }
        )
        first_ratio = ratio
        options = {
            "rate_ceiling": None,
            "window_ceiling": WINDOW_BOUND,
            "first_window": FIRST_WINDOW,
            **_remembered(found, report.period),
        }
    return rows


def matrix(smoke: bool = False) -> list[SlowCell]:
    if smoke:
        return [
            SlowCell("bucket2", 2.0, 45.0, 0.2, 5, "4R"),
            SlowCell("cap", 5.0, 3.0, 0.3, 5, "none"),
        ]
    return [
        SlowCell(shape, rate, latency, sigma, minutes, user)
        for rate, latency, sigma in REGIMES
        for shape in SHAPES
        for minutes in MINUTES
        for user in ("none", "4R")
    ] + [
        SlowCell(shape, rate, latency, sigma, minutes, "none", headers=True)
        for rate, latency, sigma in REGIMES
        for shape in SHAPES
        if shape != "cap"
        for minutes in MINUTES
    ]


TABLE_KEYS = (
    "cell", "user", "N", "ideal_s", "ratio", "floor", "target", "429_share", "found_rate", "window",
    "cap_at", "max_in_flight", "verdict",
)  # fmt: skip
