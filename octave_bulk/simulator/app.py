"""The simulator's ASGI application: Octave's agent endpoints plus its test routes.

Routes:
- ``POST /api/v2/agents/sequence/run``: checks ``api_key`` (401), validates the body with the
  same request model the client uses (400 naming the field), applies the concurrency cap and
  then the rate limit (429 at once; a refused call never counts as in flight), then the
  request's fate (success or one fault kind) after a latency draw
  (:mod:`octave_bulk.simulator.answers`).
- the key check and the workspace's agents: :mod:`octave_bulk.simulator.workspace`.
- the async agent API (submit, status, callbacks): :mod:`octave_bulk.simulator.jobs`.
- ``GET /__simulator/stats`` (``?detail=0`` leaves out the per-requestId maps and the arrival
  times; ``first_call_unix`` is the Unix time the first run call arrived, for start-up
  benchmarks) and ``POST /__simulator/reset``.

Determinism: a request's fate and latency are a function of (seed, requestId, attempt), where
attempt counts the calls for that requestId that got past both limits. Timing and
concurrency therefore never change which requests fail; only the limits depend on them.

Limits: the token bucket or window (``rate_limit``) and the concurrency cap (``max_inflight``) can change
once, ``rate_limit_change`` = (at, factor), at the first counted call's arrival + at. With
``time_scale`` F, the server runs F times faster (durations / F, the bucket's rate * F), and
its stats carry F; see :mod:`octave_bulk.simulator.config`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError

from octave_bulk.agents import AGENT_KINDS, get_agent
from octave_bulk.agents.base import Agent
from octave_bulk.agents.sequence import SEQUENCE, SequenceRequest
from octave_bulk.simulator import answers, workspace
from octave_bulk.simulator.config import SimulatorConfig
from octave_bulk.simulator.jobs import ASYNC_STATUS_PATH, ASYNC_SUBMIT_PATH, AsyncJobs
from octave_bulk.simulator.wire import (
    Receive,
    Scope,
    Send,
    TokenBucket,
    Window,
    changed_burst,
    envelope,
    header,
    read_body,
    send_body,
    send_json,
    send_start,
    uniforms,
)

__all__ = ["ABORT_EXTENSION", "Receive", "Scope", "Send", "Simulator"]


ABORT_EXTENSION = "octave_bulk.abort"
"""Scope extension set by our uvicorn protocol: ``abort(reset)`` drops the TCP connection,
with an RST when ``reset`` is true, else with a normal close (a truncated response)."""

RUN_PATH = SEQUENCE.path
AGENT_PATHS = {agent.path: agent for agent in map(get_agent, AGENT_KINDS)}
"""Every agent's endpoint (the same faults, latency and limits for all)."""


class Simulator:
    """ASGI app mimicking Octave's Sequence Agent. One instance per server; not thread-safe
    beyond CPython's atomic dict updates (stats may be read from another thread)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget all counters and refill the rate-limit bucket."""
        limit = self.config.rate_limit
        scale = self.config.time_scale
        self._bucket: TokenBucket | Window | None = None
        if limit is not None and limit.shape == "bucket":
            self._bucket = TokenBucket(limit.rate * scale, limit.burst)
        elif limit is not None:
            moving = limit.shape == "moving"
            period = limit.period / scale
            self._bucket = Window(limit.quota, period, moving=moving, phase=limit.phase / scale)
        self.first_call_at: float | None = None
        self.limit_change_at: float | None = None
        self.calls: Counter[str] = Counter()
        self.arrivals: deque[tuple[float, str]] = deque(maxlen=self.config.arrivals_kept)
        """(arrival time, outcome) of the latest counted calls; outcome "ok" or "429"."""
        self.successes: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.credits_used = 0.0
        self.first_call_unix: float | None = None  # time.time() of the first run call's arrival
        self.jobs = AsyncJobs(self)

    def stats(self, *, detail: bool = True) -> dict[str, Any]:
        """Counters as served by ``GET /__simulator/stats``.

        With ``detail``, also ``calls`` and ``successes`` (requestId -> count) and
        ``arrivals``: the ``time.monotonic()`` at which each counted call (one that passed the
        key and body checks) reached the app, in order, for the latest
        ``config.arrivals_kept`` calls (on Linux the clock is system-wide, so a test in
        another process can compare it with its own ``time.monotonic()``), and
        ``arrival_outcomes``, a list of the same length: ``"ok"`` for a call that got past
        the concurrency cap and the rate limit (whatever its fate then, even an injected
        429), ``"429"`` for one that either limit refused.

        ``first_call_at`` is the first counted call's arrival (None before it),
        ``limit_change_at`` when ``rate_limit_change`` applies (None without one, or before
        the first call), both ``time.monotonic()`` seconds; ``time_scale`` is F, to convert
        real seconds back to the regime simulated (multiply by F); ``limits`` are the limits in
        force, in the simulated regime's units: ``max_inflight``, ``rate`` (per second),
        ``burst`` (None when unset).

        Totals: ``calls`` counts every counted call, ``rate_limited`` every 429 from a limit
        and ``over_capacity`` those of them from the concurrency cap. ``max_in_flight`` is
        the most calls being processed at once (refused calls never count).
        """
        out: dict[str, Any] = {
            "totals": dict(self.totals),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "credits_used": self.credits_used,
            "distinct_request_ids": len(self.calls),
            "time_scale": self.config.time_scale,
            "first_call_at": self.first_call_at,
            "first_call_unix": self.first_call_unix,
            "limit_change_at": self.limit_change_at,
            "limits": self._limits_now(time.monotonic()),
            "async": self.jobs.stats(),
        }
        if detail:
            out["calls"] = dict(self.calls)
            out["successes"] = dict(self.successes)
            ordered = sorted(self.arrivals.copy())
            out["arrivals"] = [at for at, _ in ordered]
            out["arrival_outcomes"] = [outcome for _, outcome in ordered]
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path in AGENT_PATHS and method == "POST":
            await self._run(scope, receive, send, AGENT_PATHS[path])
        elif path in (ASYNC_SUBMIT_PATH, ASYNC_STATUS_PATH):
            await self.jobs.handle(scope, receive, send)
        elif path == workspace.VALIDATE_PATH and method == "GET":
            await workspace.validate_key(self, scope, send)
        elif path in (workspace.AGENTS_LIST_PATH, workspace.AGENTS_GET_PATH) and method == "GET":
            listing = path == workspace.AGENTS_LIST_PATH
            await workspace.agents(self, scope, send, listing=listing)
        elif path == "/__simulator/stats" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            detail = query.get("detail", ["1"])[0] not in {"0", "false", "no"}
            await send_json(send, 200, self.stats(detail=detail))
        elif path == "/__simulator/reset" and method == "POST":
            self.reset()
            await send_json(send, 200, {"reset": True})
        else:
            await send_json(send, 404, envelope("Not found", f"no route {method} {path}"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def key_error(self, scope: Scope) -> bytes | None:
        """Why the request's key is refused (None when it is accepted)."""
        key = header(scope, b"api_key")
        expected = self.config.api_key
        if not key or (expected is not None and key != expected.encode()):
            return b"Invalid API key"
        return None

    async def _run(self, scope: Scope, receive: Receive, send: Send, agent: Agent) -> None:
        arrived = time.monotonic()
        if self.first_call_unix is None:
            self.first_call_unix = time.time()
        body = await read_body(receive)
        if self.key_error(scope):
            self.totals["unauthorized"] += 1
            await self._error(send, "401")
            return
        try:
            request = agent.request_model.model_validate_json(body)
        except ValidationError as exc:
            self.totals["bad_request"] += 1
            await send_json(send, 400, envelope("Bad request", answers.describe(exc)))
            self.by_status[400] += 1
            return
        own = request.request_id if isinstance(request, SequenceRequest) else None
        rid = own or header(scope, b"x-external-request-id").decode() or "-"
        self.calls[rid] += 1
        self.totals["calls"] += 1
        if self.first_call_at is None:
            self._start_clock(arrived)
        # From here to the in-flight count there is no await: the checks and the count are
        # one step, so the cap holds exactly.
        refused = self._refusal()
        self.arrivals.append((arrived, "ok" if refused is None else "429"))
        if refused is not None:
            self.totals["rate_limited"] += 1
            over_capacity, wait = refused
            if over_capacity:
                self.totals["over_capacity"] += 1
                retry_after = []
                if self.config.inflight_retry_after:
                    retry_after.append((b"retry-after", self.retry_after(1.0)))
                await self._error(send, "429", retry_after)
            else:
                await self._too_many(send, rid, wait * self.config.time_scale, spent=True)
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._answer(request, agent, rid, scope, receive, send)
        finally:
            self.in_flight -= 1

    def _start_clock(self, first: float) -> None:
        """The first counted call arrived at ``first``: schedule the limit change."""
        self.first_call_at = first
        change = self.config.rate_limit_change
        if change is not None:
            at, factor = change
            self.limit_change_at = first + at / self.config.time_scale
            if self._bucket is not None:
                self._bucket.change = (self.limit_change_at, factor)

    def _changed(self, now: float) -> float:
        """The factor the limits are multiplied by at ``now`` (1 before the change)."""
        change = self.config.rate_limit_change
        if change is None or self.limit_change_at is None or now < self.limit_change_at:
            return 1.0
        return change[1]

    def _limits_now(self, now: float) -> dict[str, float | None]:
        cfg, factor = self.config, self._changed(now)
        cap = cfg.max_inflight
        if cap is not None and factor != 1.0:
            cap = _changed_cap(cap, factor)
        limit = cfg.rate_limit
        if limit is None:
            return {"max_inflight": cap, "rate": None, "burst": None}
        burst = limit.burst if factor == 1.0 else changed_burst(limit.burst, factor)
        return {"max_inflight": cap, "rate": limit.rate * factor, "burst": burst}

    def _refusal(self) -> tuple[bool, float] | None:
        """None when a call may go ahead, else (over capacity?, seconds until a token)."""
        now = time.monotonic()
        cap = self.config.max_inflight
        if cap is not None:
            factor = self._changed(now)
            if factor != 1.0:
                cap = _changed_cap(cap, factor)
            if self.in_flight >= cap:
                return True, 0.0
        if self._bucket is not None and (wait := self._bucket.take(now)) > 0:
            return False, wait
        return None

    async def _answer(
        self,
        request: BaseModel,
        agent: Agent,
        rid: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        cfg = self.config
        kind, seconds, u_form = self.draw_fate(rid)
        if seconds > 0:
            await asyncio.sleep(seconds / cfg.time_scale)
        if kind == "ok":
            await self._success(request, agent, rid, send)
        elif kind == "empty":
            payload = {**envelope("Done", None), "found": True, "data": {}}
            await send_json(send, 200, payload)
            self.by_status[200] += 1
        elif kind == "not_found":
            payload = {**envelope("Nothing found", None), "found": False, "data": None}
            payload["message"] = f"The {agent.kind} agent produced nothing for this input"
            await send_json(send, 200, payload)
            self.by_status[200] += 1
        elif kind == "429":
            await self._too_many(send, rid, 1.0, u_form)
        elif kind == "502":
            await send_body(send, 502, answers.HTML_502, b"text/html; charset=utf-8")
            self.by_status[502] += 1
        elif kind == "503":
            await self._error(send, "503", [(b"retry-after", self.retry_after(1.0))])
        elif kind == "hang":
            await self._hang(receive, send)
        elif kind == "reset":
            await self._drop(scope, receive, send, reset=True)
        elif kind == "truncate":
            raw = self.success_body(request, agent, rid)
            await send_start(send, 200, len(raw), b"application/json")
            await send(
                {"type": "http.response.body", "body": raw[: len(raw) // 2], "more_body": True}
            )
            self.by_status[200] += 1
            await self._drop(scope, receive, send, reset=False)
        elif kind == "invalid_json":
            raw = b'{"_metadata": {"requestId": "sim_broken", "usage": 0}, "found": tr<upstream error>'
            await send_body(send, 200, raw, b"application/json")
            self.by_status[200] += 1
        else:  # 400, 401, 402, 403, 500, 504
            await self._error(send, kind)

    def draw_fate(self, rid: str) -> tuple[str, float, float]:
        """The next attempt of ``rid``: its fate, its latency (simulated seconds, 0 for the
        immediate fates) and a draw for the form of its answer."""
        cfg = self.config
        attempt = self._attempts[rid]
        self._attempts[rid] += 1
        u_fate, u_latency, u_form = uniforms(cfg.seed, rid, attempt)
        kind = cfg.forced.get(rid) or answers.pick_fate(cfg.faults, u_fate)
        self.totals[f"fate_{kind}"] += 1
        return kind, answers.latency_seconds(cfg, kind, u_latency), u_form

    def success_body(self, request: BaseModel, agent: Agent, rid: str) -> bytes:
        """A success's whole body for this request (deterministic per requestId)."""
        return answers.success_body(self.config, request, agent, rid)

    async def _success(self, request: BaseModel, agent: Agent, rid: str, send: Send) -> None:
        await send_body(send, 200, self.success_body(request, agent, rid), b"application/json")
        self.by_status[200] += 1
        self.successes[rid] += 1
        self.totals["successes"] += 1
        self.credits_used += self.config.usage_per_run

    async def _too_many(
        self, send: Send, rid: str, wait: float, u_form: float | None = None, spent: bool = False
    ) -> None:
        """A 429 with a Retry-After form from the mix; ``wait`` in the simulated regime's s;
        ``spent``: the rate limit refused it (its headers, when on, say so)."""
        mix = self.config.retry_after_mix
        if u_form is None:
            u_form = uniforms(self.config.seed, rid, "429", self.totals["rate_limited"])[0]
        total = mix.seconds + mix.date + mix.absent
        point = u_form * total
        seconds = self.retry_after(wait)
        headers: list[tuple[bytes, bytes]] = []
        limit = self.config.rate_limit
        if spent and self.config.rate_limit_headers and limit is not None:
            quota = limit.quota if limit.shape != "bucket" else max(1, round(limit.rate))
            headers += [
                (b"x-ratelimit-limit", str(quota).encode()),
                (b"x-ratelimit-remaining", b"0"),
                (b"x-ratelimit-reset", seconds),
            ]
        if point < mix.seconds:
            headers.append((b"retry-after", seconds))
        elif point < mix.seconds + mix.date:
            when = datetime.now(UTC) + timedelta(seconds=float(seconds))
            headers.append((b"retry-after", format_datetime(when, usegmt=True).encode()))
        await self._error(send, "429", headers)

    def retry_after(self, wait: float) -> bytes:
        """Retry-After delay-seconds for a wait in the simulated regime's seconds: the whole
        seconds (at least 1) an unscaled server sends, divided by the time scale and rounded
        up: to whole seconds when the scale is <= 1, else to the millisecond (``0.2``)."""
        whole = max(1, math.ceil(wait - 1e-9))
        scale = self.config.time_scale
        if scale <= 1:
            return str(math.ceil(whole / scale - 1e-9)).encode()
        millis = math.ceil(whole * 1000 / scale - 1e-6)
        return f"{millis / 1000:.3f}".rstrip("0").rstrip(".").encode()

    async def _error(
        self, send: Send, kind: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        title, detail = answers.ERROR_TEXT[kind]
        status = int(kind)
        await send_json(send, status, envelope(title, detail), headers)
        self.by_status[status] += 1

    async def _hang(self, receive: Receive, send: Send) -> None:
        """Hold the request open until the client gives up (or ``hang_seconds`` pass)."""
        try:
            async with asyncio.timeout(self.config.hang_seconds / self.config.time_scale):
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        except TimeoutError:
            await self._error(send, "504")

    async def _drop(self, scope: Scope, receive: Receive, send: Send, *, reset: bool) -> None:
        """Drop the connection, then wait for the server to notice (so it logs nothing)."""
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
        if abort is None:
            # In-process transports have no socket: a reset becomes an OSError, and a
            # truncated body simply ends short of its content-length.
            if reset:
                msg = "simulated connection reset"
                raise ConnectionResetError(msg)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        abort(reset)
        while (await receive())["type"] != "http.disconnect":
            pass
        if reset:
            self.by_status[0] += 1


def _changed_cap(cap: int, factor: float) -> int:
    return max(1, math.floor(cap * factor + 0.5))
