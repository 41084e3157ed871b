"""The simulator's ASGI application: Octave's sequence endpoint plus its test routes.

Routes:
- ``POST /api/v2/agents/sequence/run``: checks ``api_key`` (401), validates the body with the
  same request model the client uses (400 naming the field), applies the server-side rate
  limit (429), then the request's fate (success or one fault kind) after a latency draw.
- ``GET /api/v2/api-key/validate``: the key's workspace and a credits object.
- ``GET /__simulator/stats`` (``?detail=0`` leaves out the per-requestId maps; its
  ``first_call_at`` is the Unix time the first run call arrived, for start-up benchmarks) and
  ``POST /__simulator/reset``.

Determinism: a request's fate and latency are a function of (seed, requestId, attempt), where
attempt counts the calls for that requestId that got past the rate limit. Timing and
concurrency therefore never change which requests fail; only the rate limit depends on time.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from statistics import NormalDist
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import ValidationError

from octave_bulk.agents.sequence import SequenceRequest
from octave_bulk.simulator.config import FAULT_KINDS, SimulatorConfig
from octave_bulk.simulator.content import generate_data

__all__ = ["ABORT_EXTENSION", "Receive", "Scope", "Send", "Simulator"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ABORT_EXTENSION = "octave_bulk.abort"
"""Scope extension set by our uvicorn protocol: ``abort(reset)`` drops the TCP connection,
with an RST when ``reset`` is true, else with a normal close (a truncated response)."""

RUN_PATH = "/api/v2/agents/sequence/run"
VALIDATE_PATH = "/api/v2/api-key/validate"
_NORMAL = NormalDist()
_IMMEDIATE = frozenset({"429", "400", "401", "402", "403"})
_ERROR_TEXT = {
    "400": ("Bad request", "Invalid request body"),
    "401": ("Unauthorized", "Invalid API key"),
    "402": ("Payment required", "Not enough credits to run this agent"),
    "403": ("Forbidden", "API key validation failed"),
    "429": ("Too many requests", "Rate limit exceeded, slow down"),
    "500": ("Internal server error", "Agent run failed unexpectedly"),
    "503": ("Service unavailable", "Agent capacity exhausted, retry later"),
    "504": ("Gateway timeout", "Agent run timed out upstream"),
}
_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uniforms(*parts: object) -> tuple[float, float, float]:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=24).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8, 16))  # type: ignore[return-value]


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> float:
        """Take a token; return 0 on success, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Simulator:
    """ASGI app mimicking Octave's Sequence Agent. One instance per server; not thread-safe
    beyond CPython's atomic dict updates (stats may be read from another thread)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget all counters and refill the rate-limit bucket."""
        limit = self.config.rate_limit
        self._bucket = _TokenBucket(limit.rate, limit.burst) if limit else None
        self.calls: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.credits_used = 0.0
        self.first_call_at: float | None = None  # time.time() of the first run call's arrival

    def stats(self, *, detail: bool = True) -> dict[str, Any]:
        """Counters as served by ``GET /__simulator/stats``."""
        out: dict[str, Any] = {
            "totals": dict(self.totals),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "credits_used": self.credits_used,
            "distinct_request_ids": len(self.calls),
            "first_call_at": self.first_call_at,
        }
        if detail:
            out["calls"] = dict(self.calls)
            out["successes"] = dict(self.successes)
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == RUN_PATH and method == "POST":
            await self._run(scope, receive, send)
        elif path == VALIDATE_PATH and method == "GET":
            await self._validate_key(scope, send)
        elif path == "/__simulator/stats" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode())
            detail = query.get("detail", ["1"])[0] not in {"0", "false", "no"}
            await _send_json(send, 200, self.stats(detail=detail))
        elif path == "/__simulator/reset" and method == "POST":
            self.reset()
            await _send_json(send, 200, {"reset": True})
        else:
            await _send_json(send, 404, _envelope("Not found", f"no route {method} {path}"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _key_error(self, scope: Scope) -> bytes | None:
        key = _header(scope, b"api_key")
        expected = self.config.api_key
        if not key or (expected is not None and key != expected.encode()):
            return b"Invalid API key"
        return None

    async def _validate_key(self, scope: Scope, send: Send) -> None:
        if self._key_error(scope):
            await _send_json(send, 401, _envelope("Unauthorized", "Invalid API key"))
            return
        cfg = self.config
        remaining = max(0.0, cfg.credits_max - self.credits_used)
        credits = {
            "totalUsed": self.credits_used,
            "totalRemaining": remaining,
            "totalMax": cfg.credits_max,
            "quotaUsed": self.credits_used,
            "quotaAvailable": remaining,
            "quotaMax": cfg.credits_max,
            "period": "month",
            "creditsUsed": 0,
            "creditsAvailable": 0,
        }
        data = {
            "valid": True,
            "workspaceOId": "wa_simulator",
            "workspaceName": "Octave simulator",
            "organizationOId": "og_simulator",
            "credits": credits,
        }
        await _send_json(send, 200, {**_envelope("API key is valid", None), "data": data})

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.first_call_at is None:
            self.first_call_at = time.time()
        body = await _read_body(receive)
        if self._key_error(scope):
            self.totals["unauthorized"] += 1
            await self._error(send, "401")
            return
        try:
            request = SequenceRequest.model_validate_json(body)
        except ValidationError as exc:
            self.totals["bad_request"] += 1
            await _send_json(send, 400, _envelope("Bad request", _describe(exc)))
            self.by_status[400] += 1
            return
        rid = request.request_id or _header(scope, b"x-external-request-id").decode() or "-"
        self.calls[rid] += 1
        self.totals["calls"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._answer(request, rid, scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, request: SequenceRequest, rid: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        cfg = self.config
        if self._bucket is not None and (wait := self._bucket.take()) > 0:
            self.totals["rate_limited"] += 1
            await self._too_many(send, rid, wait)
            return
        attempt = self._attempts[rid]
        self._attempts[rid] += 1
        u_fate, u_latency, u_form = _uniforms(cfg.seed, rid, attempt)
        kind = cfg.forced.get(rid) or _pick_fate(cfg.faults, u_fate)
        self.totals[f"fate_{kind}"] += 1
        if kind not in _IMMEDIATE and cfg.latency.median > 0:
            z = _NORMAL.inv_cdf(min(max(u_latency, 1e-9), 1 - 1e-9))
            await asyncio.sleep(cfg.latency.median * math.exp(cfg.latency.sigma * z))
        if kind == "ok":
            await self._success(request, rid, send)
        elif kind == "not_found":
            payload = {**_envelope("No sequence", None), "found": False, "data": None}
            payload["message"] = "No emails generated for this contact"
            await _send_json(send, 200, payload)
            self.by_status[200] += 1
        elif kind == "429":
            await self._too_many(send, rid, 1.0, u_form)
        elif kind == "502":
            await _send(send, 502, _HTML_502, b"text/html; charset=utf-8")
            self.by_status[502] += 1
        elif kind == "503":
            await self._error(send, "503", [(b"retry-after", b"1")])
        elif kind == "hang":
            await self._hang(receive, send)
        elif kind == "reset":
            await self._drop(scope, receive, send, reset=True)
        elif kind == "truncate":
            raw = self._success_body(request, rid)
            await _send_start(send, 200, len(raw), b"application/json")
            await send(
                {"type": "http.response.body", "body": raw[: len(raw) // 2], "more_body": True}
            )
            self.by_status[200] += 1
            await self._drop(scope, receive, send, reset=False)
        elif kind == "invalid_json":
            raw = b'{"_metadata": {"requestId": "sim_broken", "usage": 0}, "found": tr<upstream error>'
            await _send(send, 200, raw, b"application/json")
            self.by_status[200] += 1
        else:  # 400, 401, 402, 403, 500, 504
            await self._error(send, kind)

    def _success_body(self, request: SequenceRequest, rid: str) -> bytes:
        cfg = self.config
        content_seed = hashlib.blake2b(f"{cfg.seed}:{rid}:content".encode(), digest_size=8)
        rng = random.Random(int.from_bytes(content_seed.digest(), "big"))
        n_emails = rng.randint(cfg.emails_min, cfg.emails_max)
        payload = {
            "_metadata": {
                "requestId": "sim_" + hashlib.blake2b(rid.encode(), digest_size=8).hexdigest(),
                "timestamp": _now_iso(),
                "usage": cfg.usage_per_run,
                "message": "Sequence generated",
            },
            "found": True,
            "message": f"Generated {n_emails} emails",
            "data": generate_data(request, rng, n_emails),
        }
        return orjson.dumps(payload)

    async def _success(self, request: SequenceRequest, rid: str, send: Send) -> None:
        await _send(send, 200, self._success_body(request, rid), b"application/json")
        self.by_status[200] += 1
        self.successes[rid] += 1
        self.totals["successes"] += 1
        self.credits_used += self.config.usage_per_run

    async def _too_many(
        self, send: Send, rid: str, wait: float, u_form: float | None = None
    ) -> None:
        mix = self.config.retry_after_mix
        if u_form is None:
            u_form = _uniforms(self.config.seed, rid, "429", self.totals["rate_limited"])[0]
        total = mix.seconds + mix.date + mix.absent
        point = u_form * total
        seconds = max(1, math.ceil(wait))
        headers: list[tuple[bytes, bytes]] = []
        if point < mix.seconds:
            headers.append((b"retry-after", str(seconds).encode()))
        elif point < mix.seconds + mix.date:
            when = datetime.now(UTC) + timedelta(seconds=seconds)
            headers.append((b"retry-after", format_datetime(when, usegmt=True).encode()))
        await self._error(send, "429", headers)

    async def _error(
        self, send: Send, kind: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        title, detail = _ERROR_TEXT[kind]
        status = int(kind)
        await _send_json(send, status, _envelope(title, detail), headers)
        self.by_status[status] += 1

    async def _hang(self, receive: Receive, send: Send) -> None:
        """Hold the request open until the client gives up (or ``hang_seconds`` pass)."""
        try:
            async with asyncio.timeout(self.config.hang_seconds):
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


def _pick_fate(faults: dict[str, float], u: float) -> str:
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.get(kind, 0.0)
        if u < edge:
            return kind
    return "ok"


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _envelope(title: str, detail: str | None) -> dict[str, Any]:
    return {
        "_metadata": {
            "usage": 0,
            "requestId": "sim_"
            + hashlib.blake2b(str(time.time_ns()).encode(), digest_size=8).hexdigest(),
            "message": title,
            "timestamp": _now_iso(),
        },
        "message": detail,
    }


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_start(send: Send, status: int, length: int, ctype: bytes, extra: Any = ()) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(length).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send(
    send: Send,
    status: int,
    body: bytes,
    ctype: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _send_start(send, status, len(body), ctype, headers or ())
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, orjson.dumps(payload), b"application/json", headers)
