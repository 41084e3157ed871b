"""The simulator's async agent API: a server-side job queue, its status endpoint, callbacks.

Routes (docs/octave-api.md, section "Async API"):

- ``POST /api/v2/async/agent/run``: checks ``api_key`` (401), reads the body in either shape
  (``flat``: inputs at the top level; ``nested``: under ``inputs``; ``async_body`` may accept
  only one), validates the inputs with the agent's request model (400 naming the field), applies
  the submit rate limit (429), then answers at once ``{status: "pending", requestId:
  "asyncReqID_...", message, agentOId}``. Each accepted submit is a paid call (counted in
  ``calls``, ``totals.calls``, ``totals.async_submits``). A hostile contract is a setting:
  ``async_handle_field`` names the handle's field (empty: none at all),
  ``async_repeat_handle_every`` gives every Nth submit the handle of the one before it.
- ``GET /api/v2/async/agent/run/status?requestId=`` (``agentRunOId`` is accepted too): the
  status rate limit (429), then ``{_metadata, data{requestId, createdAt, result, error}}`` -
  ``result`` null while the job runs; with ``async_status_field`` also ``data.status``
  (``queued``, ``running``, ``completed``, ``failed``). A handle never issued, one whose
  result is older than ``async_retention``, or one submitted less than ``async_status_lag``
  seconds ago (read-after-write lag), gets a 404.

Jobs run ``async_parallelism`` at a time (more wait, queued); each takes a latency draw and
meets the fate the synchronous route would give its (requestId, attempt): ``ok`` -> ``result``
``{found: true, message, data}``; ``not_found`` / ``empty`` -> a result that says so; every
other fault -> ``data.error``. When the job ends, its ``callbackUrl`` (if it is not a no-op
``.invalid`` host) gets ``{requestId, status: succeeded|failed, result|error}``, retried up to
``callback_attempts`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
from pydantic import ValidationError

from octave_bulk.agents import AGENT_KINDS, get_agent
from octave_bulk.agents.base import Agent
from octave_bulk.simulator.wire import (
    AgentServer,
    Receive,
    Scope,
    Send,
    TokenBucket,
    envelope,
    header,
    now_iso,
    read_body,
    send_json,
)

__all__ = ["ASYNC_STATUS_PATH", "ASYNC_SUBMIT_PATH", "AsyncJobs"]

ASYNC_SUBMIT_PATH = "/api/v2/async/agent/run"
ASYNC_STATUS_PATH = "/api/v2/async/agent/run/status"
_KINDS_BY_TYPE = {get_agent(kind).api_type: kind for kind in AGENT_KINDS}
"""An agent type of the workspace (``config.agents``) -> the registry's kind."""


@dataclass(slots=True)
class _Job:
    handle: str
    rid: str
    agent: Agent
    request: Any
    callback_url: str | None
    created: str
    submitted: float = 0.0
    """When it was accepted (monotonic)."""
    state: str = "queued"
    result: Any = None
    error: str | None = None
    ended_at: float | None = None


class AsyncJobs:
    """The async routes of one agent server (the simulator's synchronous side)."""

    def __init__(self, sim: AgentServer) -> None:
        self.sim = sim
        cfg = sim.config
        scale = cfg.time_scale
        self.submit_bucket = (
            TokenBucket(cfg.async_submit_limit.rate * scale, cfg.async_submit_limit.burst)
            if cfg.async_submit_limit
            else None
        )
        self.status_bucket = (
            TokenBucket(cfg.async_status_limit.rate * scale, cfg.async_status_limit.burst)
            if cfg.async_status_limit
            else None
        )
        self.jobs: dict[str, _Job] = {}
        self.running = 0
        self.max_running = 0
        self._slots: asyncio.Semaphore | None = None  # made in the server's loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._last_handle: str | None = None

    def stats(self) -> dict[str, Any]:
        """The queue's state, for ``GET /__simulator/stats`` (``async``)."""
        states = [job.state for job in self.jobs.values()]
        return {
            "jobs": len(states),
            "queued": states.count("queued"),
            "running": self.running,
            "max_running": self.max_running,
            "completed": states.count("completed"),
            "failed": states.count("failed"),
        }

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one async route (the caller matched the path)."""
        if scope["path"] == ASYNC_SUBMIT_PATH and scope["method"] == "POST":
            await self._submit(scope, receive, send)
        elif scope["path"] == ASYNC_STATUS_PATH and scope["method"] == "GET":
            await self._status(scope, send)
        else:
            await send_json(send, 405, envelope("Method not allowed", scope["method"]))

    async def _refuse(self, send: Send, bucket: TokenBucket | None, total: str) -> bool:
        if bucket is None or (wait := bucket.take(time.monotonic())) <= 0:
            return False
        sim = self.sim
        sim.totals[total] += 1
        sim.by_status[429] += 1
        headers = [(b"retry-after", sim.retry_after(wait * sim.config.time_scale))]
        body = envelope("Too many requests", "Rate limit exceeded, slow down")
        await send_json(send, 429, body, headers)
        return True

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        sim, cfg = self.sim, self.sim.config
        body = await read_body(receive)
        if sim.key_error(scope):
            sim.totals["unauthorized"] += 1
            await send_json(send, 401, envelope("Unauthorized", "Invalid API key"))
            return
        try:
            wire = orjson.loads(body)
            if not isinstance(wire, dict):
                raise ValueError("the body is not a JSON object")
            inputs, agent_oid, callback = self._inputs(wire)
            agent = self._agent(agent_oid)
            request = agent.request_model.model_validate({**inputs, "agentOId": agent_oid})
        except (ValueError, ValidationError) as exc:
            sim.totals["bad_request"] += 1
            sim.by_status[400] += 1
            await send_json(send, 400, envelope("Bad request", str(exc)[:300]))
            return
        if await self._refuse(send, self.submit_bucket, "async_submit_429"):
            return
        rid = header(scope, b"x-external-request-id").decode() or "-"
        sim.calls[rid] += 1
        sim.totals["calls"] += 1
        sim.totals["async_submits"] += 1
        if sim.first_call_unix is None:
            sim.first_call_unix = time.time()
        number = next(self._numbers)
        digest = hashlib.blake2b(f"{cfg.seed}:{rid}:{number}".encode(), digest_size=12)
        handle = "asyncReqID_" + digest.hexdigest()
        every = cfg.async_repeat_handle_every
        if every and number % every == 0 and self._last_handle is not None:
            handle = self._last_handle  # the earlier job's result is unreachable from now on
        self._last_handle = handle
        job = _Job(handle, rid, agent, request, callback, now_iso(), time.monotonic())
        self.jobs[handle] = job
        task = asyncio.get_running_loop().create_task(self._work(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        answer: dict[str, Any] = {"status": "pending", "message": None, "agentOId": agent_oid}
        if cfg.async_handle_field:
            answer[cfg.async_handle_field] = handle
        sim.by_status[200] += 1
        await send_json(send, 200, answer)

    def _inputs(self, wire: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
        """(agent inputs, agentOId, callbackUrl) from a body of either shape."""
        accepted = self.sim.config.async_body
        nested = isinstance(wire.get("inputs"), dict)
        if accepted != "any" and accepted != ("nested" if nested else "flat"):
            raise ValueError(f"this server expects the {accepted} body shape")
        agent_oid = wire.get("agentOId")
        if not isinstance(agent_oid, str) or not agent_oid.startswith("ca_"):
            raise ValueError("agentOId: required, a ca_ id")
        callback = wire.get("callbackUrl")
        if not isinstance(callback, str) or not callback.startswith(("http://", "https://")):
            raise ValueError("callbackUrl: required, a URL")
        skip = {"agentOId", "callbackUrl", "inputs"}
        inputs = wire["inputs"] if nested else {k: v for k, v in wire.items() if k not in skip}
        return inputs, agent_oid, callback

    def _agent(self, agent_oid: str) -> Agent:
        kind = _KINDS_BY_TYPE.get(self.sim.config.agents.get(agent_oid, ""), "sequence")
        return get_agent(kind)

    async def _work(self, job: _Job) -> None:
        sim, cfg = self.sim, self.sim.config
        if self._slots is None:
            self._slots = asyncio.Semaphore(cfg.async_parallelism)
        async with self._slots:
            job.state = "running"
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                kind, seconds, _ = sim.draw_fate(job.rid)
                if kind == "hang":
                    seconds = cfg.hang_seconds
                await asyncio.sleep(seconds / cfg.time_scale)
                self._end(job, kind)
            finally:
                self.running -= 1
        if job.callback_url and not (urlsplit(job.callback_url).hostname or "").endswith(
            ".invalid"
        ):
            await self._call_back(job)

    def _end(self, job: _Job, kind: str) -> None:
        sim = self.sim
        job.ended_at = time.monotonic()
        if kind == "ok":
            body = orjson.loads(sim.success_body(job.request, job.agent, job.rid))
            body.pop("_metadata", None)
            job.result, job.state = body, "completed"
            sim.successes[job.rid] += 1
            sim.totals["successes"] += 1
            sim.credits_used += sim.config.usage_per_run
        elif kind in ("not_found", "empty"):
            found = kind == "empty"
            message = f"The {job.agent.kind} agent produced nothing for this input"
            job.result = {"found": found, "message": message, "data": {} if found else None}
            job.state = "completed"
        else:
            job.error, job.state = f"Agent run failed ({kind})", "failed"

    async def _call_back(self, job: _Job) -> None:
        sim, cfg = self.sim, self.sim.config
        usage = cfg.usage_per_run if job.state == "completed" and job.error is None else 0
        payload: dict[str, Any] = {
            "_metadata": {"requestId": "sim_" + job.handle[-12:], "usage": usage},
            "requestId": job.handle,
            "status": "succeeded" if job.state == "completed" else "failed",
        }
        payload["result" if job.state == "completed" else "error"] = job.result or job.error
        async with httpx.AsyncClient(timeout=10.0) as client:
            for attempt in range(cfg.callback_attempts):
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(job.callback_url or "", json=payload)
                    if response.status_code < 300:
                        sim.totals["callbacks_sent"] += 1
                        return
                await asyncio.sleep(2**attempt / cfg.time_scale)
        sim.totals["callbacks_failed"] += 1

    async def _status(self, scope: Scope, send: Send) -> None:
        sim, cfg = self.sim, self.sim.config
        if sim.key_error(scope):
            await send_json(send, 401, envelope("Unauthorized", "Invalid API key"))
            return
        if await self._refuse(send, self.status_bucket, "status_429"):
            return
        sim.totals["status_polls"] += 1
        query = parse_qs(scope.get("query_string", b"").decode())
        handle = (query.get("requestId") or query.get("agentRunOId") or [""])[0]
        job = self.jobs.get(handle)
        retention = cfg.async_retention / cfg.time_scale
        if job is not None and job.ended_at and time.monotonic() - job.ended_at > retention:
            del self.jobs[handle]
            job = None
        lag = cfg.async_status_lag / cfg.time_scale
        if job is not None and time.monotonic() - job.submitted < lag:
            job = None  # not readable yet
        if job is None:
            await send_json(send, 404, envelope("Not found", f"no async run {handle!r}"))
            return
        data: dict[str, Any] = {
            "requestId": handle,
            "createdAt": job.created,
            "result": job.result,
            "error": job.error,
        }
        if cfg.async_status_field:
            data["status"] = job.state
        usage = cfg.usage_per_run if job.state == "completed" else 0
        metadata = {"requestId": "sim_" + handle[-12:], "timestamp": now_iso(), "usage": usage}
        await send_json(send, 200, {"_metadata": metadata, "data": data})
