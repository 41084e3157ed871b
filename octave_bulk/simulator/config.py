"""Simulator settings and the small text formats the ``simulate`` command accepts.

- latency: ``instant``, ``fast`` (median 50 ms), ``realistic`` (median 40 s), or
  ``MEDIAN[:SIGMA]`` such as ``1s``, ``200ms:0.3`` (lognormal: median and log-space sigma).
- rate limit: ``none`` or ``RATE/s`` / ``RATE/min`` with an optional ``:BURST`` (token bucket).
  The bucket starts full and banks at most BURST tokens (BURST >= 1, decimals allowed), so a
  burst of BURST calls passes at once, then one per 1/RATE s: ``50/s:5``, ``600/min:20``.
  Without ``:BURST`` it is a tenth of a second's worth, at least 1 (``50/s`` -> 5).
  ``fixed:COUNT/UNIT`` is a fixed window instead: COUNT calls per second (``/s``) or per
  minute (``/min``, a per-minute quota), counted from the first call, then 429s until the
  window resets, their Retry-After the seconds to the reset (``fixed:120/min``); with
  ``@SECONDS`` its windows are the clock's, the first call coming SECONDS into one (as
  gateways that count per calendar minute do: the first window is a partial one,
  ``fixed:120/min@40``);
  ``moving:COUNT/UNIT`` a moving (sliding-log) window: a call passes while fewer than COUNT
  passed in the last second or minute, the Retry-After the seconds until the oldest of them
  leaves it. These are the shapes widely used limiter libraries offer (fixed window, moving
  window) beside the token bucket.
- rate limit headers (``rate_limit_headers``): the rate limit's 429s also say
  ``X-RateLimit-Limit`` (the calls per period: a window's quota, a bucket's rate per second),
  ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset`` (seconds, scaled like Retry-After), as
  limiter libraries send them; a concurrency cap's 429s never do.
- concurrency cap (``max_inflight``): a call arriving while K are being processed gets a 429
  at once; it carries ``Retry-After: 1`` only with ``inflight_retry_after``.
- limit change: ``none`` or ``AT:FACTOR`` such as ``30s:0.5``: AT after the first counted
  call, the rate and burst (at least 1) and the concurrency cap (rounded half up, at least 1)
  are multiplied by FACTOR.
- time scale F: durations divided by F, rates multiplied by F, so ``realistic`` latency
  (median 40 s) has a 4 s median at F=10. Stats report F; arrival times are real seconds.
  Retry-After values are the whole seconds an unscaled server would send, divided by F:
  decimals when F > 1 (``1`` -> ``0.2`` at F=5, rounded up to the millisecond; the client
  parses decimals), whole seconds rounded up when F <= 1. The HTTP-date form has
  one-second resolution, so at F > 1 prefer the seconds and absent forms.
- faults: ``kind=rate`` pairs, comma separated, e.g. ``500=0.02,reset=0.01``; ``all=0.1``
  spreads 10 % evenly over every random fault kind.
- Retry-After mix: ``seconds=1,date=1,absent=1`` (weights of the three forms a 429 carries).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from octave_bulk.settings.model import parse_rate

__all__ = [
    "FAULT_KINDS",
    "FORCEABLE_KINDS",
    "LATENCY_PRESETS",
    "Latency",
    "RateLimit",
    "RetryAfterMix",
    "SimulatorConfig",
    "parse_agents",
    "parse_faults",
    "parse_forced",
    "parse_latency",
    "parse_limit_change",
    "parse_rate_limit",
    "parse_retry_after_mix",
]

FAULT_KINDS: tuple[str, ...] = (
    "429",
    "500",
    "502",
    "503",
    "504",
    "hang",
    "reset",
    "truncate",
    "invalid_json",
    "not_found",
)
"""Kinds that can be injected at a random rate, in the fixed order used to pick a fate."""

FORCEABLE_KINDS: tuple[str, ...] = (*FAULT_KINDS, "empty", "400", "401", "402", "403", "ok")
"""Kinds that can be forced for one requestId (``--force RID=KIND``); ``empty`` is a 200 with
``found: true`` and an empty payload (the agent produced nothing)."""


@dataclass(frozen=True, slots=True)
class Latency:
    """Lognormal service time: ``median`` seconds, ``sigma`` the log-space spread."""

    median: float = 0.0
    sigma: float = 0.0


LATENCY_PRESETS: dict[str, Latency] = {
    "instant": Latency(0.0, 0.0),
    "fast": Latency(0.05, 0.4),
    # The real agent: 30-60 s typical (docs/octave-api.md, section "Latency and timeouts");
    # median 40 s with a long right tail.
    "realistic": Latency(40.0, 0.3),
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Server-side rate limit. A token bucket (``shape`` ``bucket``): ``rate`` tokens per
    second, at most ``burst`` banked; it starts full, so ``burst`` calls pass at once, then
    one per ``1 / rate`` s. A ``fixed`` or ``moving`` window: ``rate`` x ``period`` calls per
    ``period`` seconds (``burst`` unused)."""

    rate: float
    burst: float
    shape: str = "bucket"
    period: float = 1.0
    phase: float = 0.0
    """A fixed window's: how far into a window the first call comes, seconds (unscaled)."""

    @property
    def quota(self) -> int:
        """A window's calls per period."""
        return max(1, round(self.rate * self.period))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            msg = "rate-limit rate must be > 0"
            raise ValueError(msg)
        if not (math.isfinite(self.burst) and self.burst >= 1):
            msg = "rate-limit burst must be >= 1"
            raise ValueError(msg)
        if not (0 <= self.phase < self.period):
            msg = "a fixed window's @SECONDS must be >= 0 and below its period"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class RetryAfterMix:
    """Relative weights of the three Retry-After forms a 429 carries."""

    seconds: float = 1.0
    date: float = 1.0
    absent: float = 1.0


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything that shapes the simulator's behaviour. Same config + seed = same fates."""

    seed: int = 0
    latency: Latency = field(default_factory=Latency)
    rate_limit: RateLimit | None = None
    retry_after_mix: RetryAfterMix = field(default_factory=RetryAfterMix)
    faults: dict[str, float] = field(default_factory=dict)
    forced: dict[str, str] = field(default_factory=dict)
    """requestId -> kind, applied to every attempt of that id (``ok`` forces success)."""
    emails_min: int = 2
    emails_max: int = 3
    api_key: str | None = None
    """When set, only this key is accepted; otherwise any non-empty key is."""
    hang_seconds: float = 3600.0
    usage_per_run: float = 1.0
    agents: dict[str, str] = field(default_factory=dict)
    """The workspace's agents, oId -> type (``EMAIL``, ``QUALIFY_PERSON``...), for
    ``GET /api/v2/agents/list`` and ``/get``. Empty: no workspace is modelled, and ``/get``
    knows every ``ca_`` id, without a type (runs themselves never check)."""
    credits_max: float = 100_000.0
    arrivals_kept: int = 100_000
    """How many arrival times the stats keep (the latest calls'), so memory stays bounded."""
    max_inflight: int | None = None
    """Concurrency cap: a call arriving while this many are being processed gets a 429 at
    once, like a gateway's cap (None: no cap)."""
    inflight_retry_after: bool = False
    """Whether a 429 from the concurrency cap carries ``Retry-After: 1`` (default: none)."""
    rate_limit_headers: bool = False
    """Whether the rate limit's 429s carry ``X-RateLimit-Limit/Remaining/Reset`` (see the
    module docstring); the cap's never do."""
    rate_limit_change: tuple[float, float] | None = None
    """(at_seconds, factor): from ``at_seconds`` after the first counted call on, the rate
    limit's rate and burst (at least 1) and the concurrency cap (rounded half up, at least 1)
    are multiplied by ``factor`` (0.5 halves them, 2 doubles them). Once, for good."""
    async_parallelism: int = 500
    """Async jobs running at once server-side; more wait in the queue."""
    async_submit_limit: RateLimit | None = None
    """Token bucket of the async submit endpoint (429 beyond it)."""
    async_status_limit: RateLimit | None = None
    """Token bucket of the async status endpoint (429 beyond it)."""
    async_retention: float = 86_400.0
    """Seconds a finished job's result stays readable; then its handle gets a 404."""
    async_body: str = "any"
    """Async body shapes accepted: ``any``, ``flat`` or ``nested`` (the other gets a 400)."""
    async_status_field: bool = False
    """Whether status answers carry ``data.status`` (undocumented; off like the reference)."""
    async_handle_field: str = "requestId"
    """The submit answer's field for the job handle (the reference's ``requestId``; a server
    may use ``agentRunOId``, a name Octave's docs use too); empty: a 200 without any handle."""
    async_repeat_handle_every: int = 0
    """Every Nth accepted submit is answered with the handle of the submit before it (a server
    repeating a handle; that handle's status is then the later job's); 0: never."""
    async_status_lag: float = 0.0
    """Seconds after its submit during which a job's status answers 404 (read-after-write
    lag: the status store has not seen the job yet)."""
    callback_attempts: int = 3
    """Tries per callback (1, 2, 4 s apart, scaled) before it is given up."""
    time_scale: float = 1.0
    """Run the server's clock F times faster: every duration it applies (latency draws,
    ``hang_seconds``, the change time, Retry-After values) is divided by F and the rate
    limit's rate multiplied by F (its burst and the concurrency cap, counts, are not)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            msg = "time_scale must be > 0"
            raise ValueError(msg)
        if self.rate_limit_change is not None:
            at, factor = self.rate_limit_change
            if not (math.isfinite(at) and at >= 0 and math.isfinite(factor) and factor > 0):
                msg = "rate_limit_change needs at_seconds >= 0 and a factor > 0"
                raise ValueError(msg)
        if self.max_inflight is not None and self.max_inflight < 1:
            msg = "max_inflight must be 1 or more"
            raise ValueError(msg)
        if self.arrivals_kept < 0:
            msg = "arrivals_kept must be 0 or more"
            raise ValueError(msg)
        if not 1 <= self.emails_min <= self.emails_max <= 7:
            msg = "emails range must satisfy 1 <= min <= max <= 7"
            raise ValueError(msg)
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            msg = f"unknown fault kind(s): {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}"
            raise ValueError(msg)
        if sum(self.faults.values()) > 1.0 + 1e-9:
            msg = "fault rates add up to more than 1"
            raise ValueError(msg)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def _parse_seconds(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        msg = f"bad duration {text!r}: use e.g. 50ms, 1.5s, 2m"
        raise ValueError(msg)
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def parse_latency(text: str) -> Latency:
    """Parse a latency preset name or ``MEDIAN[:SIGMA]``."""
    text = text.strip().lower()
    if text in LATENCY_PRESETS:
        return LATENCY_PRESETS[text]
    median_text, _, sigma_text = text.partition(":")
    sigma = float(sigma_text) if sigma_text else 0.4
    if sigma < 0:
        msg = "latency sigma must be >= 0"
        raise ValueError(msg)
    return Latency(_parse_seconds(median_text), sigma)


def parse_rate_limit(text: str) -> RateLimit | None:
    """Parse ``none``, ``RATE[:BURST]`` (the burst defaults to one second's worth / 10, min 1)
    or ``fixed:COUNT/UNIT[@SECONDS]`` / ``moving:COUNT/UNIT`` (a window of a second or a
    minute; ``@SECONDS``: the fixed window's phase at the first call)."""
    text = text.strip().lower()
    if text in {"", "none", "off", "0"}:
        return None
    shape, _, window = text.partition(":")
    if shape in {"fixed", "moving"}:
        window, at, phase_text = window.partition("@")
        if at and shape != "fixed":
            msg = "only a fixed window takes @SECONDS (its phase at the first call)"
            raise ValueError(msg)
        count_text, _, unit = window.partition("/")
        periods = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "m": 60.0, "minute": 60.0}
        try:
            count, period = int(count_text), periods[unit.strip()]
        except (ValueError, KeyError):
            msg = f"bad {shape} window {window!r}: use e.g. {shape}:5/s or {shape}:120/min"
            raise ValueError(msg) from None
        if count < 1:
            msg = f"a {shape} window lets at least 1 call through"
            raise ValueError(msg)
        phase = _parse_seconds(phase_text) if at else 0.0
        return RateLimit(count / period, 1.0, shape=shape, period=period, phase=phase)
    rate_text, _, burst_text = text.partition(":")
    rate = parse_rate(rate_text)  # the same rates as the client's --rate
    if rate is None:
        msg = f"bad rate {rate_text!r}: use e.g. 2/s or 90/min"
        raise ValueError(msg)
    try:
        burst = float(burst_text) if burst_text else max(1.0, rate / 10)
    except ValueError:
        msg = f"bad rate-limit burst {burst_text!r}: use a number >= 1, e.g. 50/s:5"
        raise ValueError(msg) from None
    return RateLimit(rate=rate, burst=burst)


def parse_limit_change(text: str) -> tuple[float, float] | None:
    """Parse ``none`` or ``AT:FACTOR`` such as ``30s:0.5`` into (at_seconds, factor)."""
    text = text.strip().lower()
    if text in {"", "none", "off"}:
        return None
    at_text, sep, factor_text = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        change = (_parse_seconds(at_text), float(factor_text))
    except ValueError:
        msg = f"bad limit change {text!r}: use AT:FACTOR, e.g. 30s:0.5 or 2m:2"
        raise ValueError(msg) from None
    if not (math.isfinite(change[1]) and change[1] > 0):
        msg = "limit-change factor must be > 0"
        raise ValueError(msg)
    return change


def _pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            msg = f"bad {what} entry {item!r}: use key=value"
            raise ValueError(msg)
        pairs[key.strip().lower()] = value.strip()
    return pairs


def parse_faults(text: str) -> dict[str, float]:
    """Parse ``kind=rate,...``; ``all=R`` spreads R evenly over every random fault kind."""
    rates: dict[str, float] = {}
    for kind, value in _pairs(text, "fault").items():
        rate = float(value)
        if not 0 <= rate <= 1:
            msg = f"fault rate for {kind} must be between 0 and 1"
            raise ValueError(msg)
        if kind == "all":
            for each in FAULT_KINDS:
                rates[each] = rates.get(each, 0.0) + rate / len(FAULT_KINDS)
        elif kind in FAULT_KINDS:
            rates[kind] = rates.get(kind, 0.0) + rate
        else:
            msg = f"unknown fault kind {kind!r}; known: all, {', '.join(FAULT_KINDS)}"
            raise ValueError(msg)
    return rates


def parse_agents(text: str) -> dict[str, str]:
    """Parse ``ca_x=EMAIL,ca_y=QUALIFY_PERSON`` (oId=type, ...)."""
    agents = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        o_id, sep, kind = item.partition("=")
        if not sep or not o_id.startswith("ca_") or not kind.isupper():
            raise ValueError(f"bad agent {item!r}: use ca_ID=TYPE, e.g. ca_1=EMAIL")
        agents[o_id] = kind
    return agents


def parse_forced(text: str) -> dict[str, str]:
    """Parse ``requestId=kind,...`` (kinds: the fault kinds, 400, 401, 402, 403, ok)."""
    forced = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        rid, sep, kind = item.rpartition("=")
        if not sep or kind not in FORCEABLE_KINDS:
            msg = f"bad forced fault {item!r}: use requestId=kind, kind in {FORCEABLE_KINDS}"
            raise ValueError(msg)
        forced[rid] = kind
    return forced


def parse_retry_after_mix(text: str) -> RetryAfterMix:
    """Parse ``seconds=W,date=W,absent=W`` weights (missing forms weigh 0)."""
    weights = {k: float(v) for k, v in _pairs(text, "retry-after").items()}
    unknown = set(weights) - {"seconds", "date", "absent"}
    if unknown or not weights or any(w < 0 for w in weights.values()):
        msg = "retry-after mix takes non-negative weights for seconds, date, absent"
        raise ValueError(msg)
    return RetryAfterMix(
        seconds=weights.get("seconds", 0.0),
        date=weights.get("date", 0.0),
        absent=weights.get("absent", 0.0),
    )
