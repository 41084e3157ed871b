"""The callback receiver: Octave POSTs each finished async job to ``callbackUrl``.

With ``callback_listen`` (HOST:PORT) the run serves any POST path there (aiohttp's server, in
the run's own event loop) and hands each callback to :meth:`~octave_bulk.run.jobs.Jobs.
complete` - the same path a poll's answer takes, so a job finished by both is written once.
The user makes ``callback_url`` reach it (a tunnel, an ingress: Octave requires a public HTTPS
URL). The callback's schema is not documented (docs/octave-api.md, section "Async API"): the
job handle is read from ``requestId`` (or ``agentRunOId``, at the top level or under
``data``), the result from ``result`` or ``output``, a failure from ``error`` or ``status:
failed``. Every callback is answered 200 at once (an unknown or early one too: polling remains
the fallback); a body that is not a JSON object gets a 400. Bodies over 32 MB are refused.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
from aiohttp import web

from octave_bulk.agents.base import Agent
from octave_bulk.errors import ConfigError
from octave_bulk.http.async_api import job_answer, judged
from octave_bulk.observe.log import log_event
from octave_bulk.run.jobs import Jobs

__all__ = ["CallbackReceiver"]

_MAX_BODY = 32 << 20


class CallbackReceiver:
    """Serves callbacks on ``listen`` (HOST:PORT) until cancelled.

    Args:
        listen: where to listen.
        agent: judges a result (as a poll's).

    ``jobs`` is where each callback's answer goes (set once the poller exists; a callback
    before that is answered and ignored).
    """

    def __init__(self, listen: str, agent: Agent) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.agent = agent
        self.jobs: Jobs | None = None
        self.received = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (aiohttp serves from the event loop; a port that cannot be bound is a
        :class:`ConfigError`, raised before any call)."""
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"callback_listen {self.host}:{self.port}: cannot listen ({exc.strerror})"
            ) from None
        log_event("callbacks_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening (callbacks that come later are lost: the next run polls)."""
        if self._runner is not None:
            with anyio.CancelScope(shield=True):
                await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
        except (orjson.JSONDecodeError, web.HTTPException):
            return web.json_response({"ok": False, "error": "not JSON"}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"ok": False, "error": "not an object"}, status=400)
        inner = payload.get("data")
        data: dict[str, Any] = inner if isinstance(inner, dict) else payload
        handle = _handle(payload) or _handle(data)
        if handle is not None and self.jobs is not None:
            self.received += 1
            answer = judged(job_answer(payload.get("_metadata"), data), self.agent)
            if self.jobs.complete(handle, answer):
                log_event("callback", level=logging.DEBUG, handle=handle, state=answer.state)
        return web.json_response({"ok": True})


def _handle(record: dict[str, Any]) -> str | None:
    for name in ("requestId", "agentRunOId"):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None
