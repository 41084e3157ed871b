"""The hostile front's async API: submits, polls and callbacks an adversarial server sends.

:class:`~octave_bulk.simulator.hostile.HostileApp` hands the async routes here. A submit's
fate is drawn as a synchronous call's (``forced`` by requestId, or ``faults`` rates); the
kinds it can meet:

the submit itself
    ``echo_400``, ``echo_500``, ``echo_401`` (an error status whose message repeats the
    caller's key) and ``echo_refused`` (200 ``status: failed``, the message repeating it);
the job's status
    ``poll_echo_500`` (its first poll: a 500 that repeats the key), ``poll_echo_401`` (its
    first poll: a 401 that repeats it), ``poll_echo_failed`` (its first poll: the job failed,
    the error repeating the key), ``poll_echo_done`` (the poll that finds it done: the key
    put into the result's message and data);
a callback (to the ``callbackUrl`` of the submit, which the simulator itself then never calls)
    ``callback_echo_done`` (the poll that finds the job done answers "still running" instead,
    and the result, with the key put into it, is sent as a callback), ``callback_forged_done``
    (the same, with ``_metadata.usage`` -500 and ``data.forged: true``) and
    ``callback_forged_failed`` (at the job's first poll, while it runs: a callback saying it
    failed).

Every other submit passes through to the simulator unchanged. ``callback_answers`` counts
the HTTP statuses the hostile callbacks got (0: no answer); ``callback_urls`` are the
``callbackUrl`` values the submits carried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qs

import httpx
import orjson

from octave_bulk.simulator.jobs import ASYNC_STATUS_PATH, ASYNC_SUBMIT_PATH
from octave_bulk.simulator.wire import Receive, Scope, Send, envelope, header, read_body, send_json

__all__ = ["ASYNC_HOSTILE_KINDS", "AsyncHostility", "HostileFront"]

SUBMIT_KINDS = ("echo_400", "echo_500", "echo_401", "echo_refused")
POLL_KINDS = ("poll_echo_500", "poll_echo_401", "poll_echo_failed", "poll_echo_done")
CALLBACK_KINDS = ("callback_echo_done", "callback_forged_done", "callback_forged_failed")
ASYNC_HOSTILE_KINDS = SUBMIT_KINDS + POLL_KINDS + CALLBACK_KINDS
_SILENT_CALLBACK = "https://hostile-front.invalid/"  # the simulator never calls a .invalid host
_ERROR_STATUS = {"echo_400": 400, "echo_500": 500, "echo_401": 401}


class HostileFront(Protocol):
    """What the async routes use of the hostile front: the app it wraps, its fate draw and
    its counts. :class:`~octave_bulk.simulator.hostile.HostileApp` is the one implementation."""

    counts: Counter[str]

    @property
    def inner(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]: ...

    def draw(self, rid: str, kinds: tuple[str, ...]) -> str | None: ...


class AsyncHostility:
    """The async routes of one hostile front (see the module docstring)."""

    def __init__(self, front: HostileFront) -> None:
        self.front = front
        self.planned: dict[str, tuple[str, str]] = {}
        """handle -> (kind, callbackUrl) of a job whose poll or callback is still to come."""
        self.callback_answers: Counter[int] = Counter()
        self.callback_urls: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == ASYNC_SUBMIT_PATH and scope["method"] == "POST":
            await self._submit(scope, receive, send)
        elif scope["path"] == ASYNC_STATUS_PATH and scope["method"] == "GET":
            await self._status(scope, receive, send)
        else:
            await self.front.inner(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        body = await read_body(receive)
        rid = header(scope, b"x-external-request-id").decode("latin-1")
        key = header(scope, b"api_key").decode("latin-1")
        fate = front.draw(rid, ASYNC_HOSTILE_KINDS)
        if fate in _ERROR_STATUS:
            message = f"Invalid API key {key}" if fate == "echo_401" else f"error for key {key}"
            answer = envelope("Refused", message)
            answer["headers"] = {"api_key": key}
            await send_json(send, _ERROR_STATUS[fate], answer)
            return
        if fate == "echo_refused":
            refusal = {"status": "failed", "requestId": None, "message": f"refused for {key}"}
            await send_json(send, 200, refusal)
            return
        wire = _json(body)
        url = wire.get("callbackUrl") if isinstance(wire, dict) else None
        if isinstance(url, str):
            self.callback_urls.append(url)
        if fate in CALLBACK_KINDS and isinstance(wire, dict):  # only this front calls back
            wire["callbackUrl"] = _SILENT_CALLBACK
            body = orjson.dumps(wire)
        answered: list[MutableMapping[str, Any]] = []

        async def keep(message: MutableMapping[str, Any]) -> None:
            answered.append(message)

        await front.inner(scope, _replay(body, receive), keep)
        if fate in POLL_KINDS + CALLBACK_KINDS:
            handle = _handle(_json(_body_of(answered)))
            if handle:  # planned before the client can know the handle and poll it
                self.planned[handle] = (fate, url if isinstance(url, str) else "")
        await _forward(send, answered)

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        handle = (query.get("requestId") or query.get("agentRunOId") or [""])[0]
        plan = self.planned.get(handle)
        if plan is None:
            await self.front.inner(scope, receive, send)
            return
        kind, url = plan
        key = header(scope, b"api_key").decode("latin-1")
        if kind in ("poll_echo_500", "poll_echo_401", "poll_echo_failed"):
            self._applied(handle, kind)
            if kind == "poll_echo_failed":
                failed = {"requestId": handle, "result": None, "error": f"failed for key {key}"}
                await send_json(send, 200, {"_metadata": {"usage": 0}, "data": failed})
            else:
                status, word = (
                    (500, "error for key") if kind == "poll_echo_500" else (401, "Invalid API key")
                )
                await send_json(send, status, envelope("Refused", f"{word} {key}"))
            return
        if kind == "callback_forged_failed":  # while the job runs: its real poll, and a lie
            self._applied(handle, kind)
            self._call_back(url, {"requestId": handle, "status": "failed", "error": "forged"})
            await self.front.inner(scope, receive, send)
            return
        answered: list[MutableMapping[str, Any]] = []

        async def keep(message: MutableMapping[str, Any]) -> None:
            answered.append(message)

        await self.front.inner(scope, receive, keep)
        answer = _json(_body_of(answered))
        data = answer.get("data")
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(result, dict):  # running: as it is
            await _forward(send, answered)
            return
        self._applied(handle, kind)
        result["message"] = f"done for key {key}"
        if isinstance(result.get("data"), dict):
            result["data"]["note"] = key
        if kind == "poll_echo_done":
            await send_json(send, 200, answer)
            return
        metadata = dict(answer.get("_metadata") or {})
        if kind == "callback_forged_done":
            metadata["usage"] = -500
            if isinstance(result.get("data"), dict):
                result["data"]["forged"] = True
        self._call_back(
            url,
            {"_metadata": metadata, "requestId": handle, "status": "succeeded", "result": result},
        )
        data["result"] = None  # this poll is told the job still runs
        await send_json(send, 200, answer)

    def _applied(self, handle: str, kind: str) -> None:
        del self.planned[handle]
        self.front.counts[kind] += 1

    def _call_back(self, url: str, payload: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._post(url, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        status = 0
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=10.0) as client:
                status = (await client.post(url, content=orjson.dumps(payload))).status_code
        self.callback_answers[status] += 1


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _body_of(messages: list[MutableMapping[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the connection's own messages."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _forward(send: Send, messages: list[MutableMapping[str, Any]]) -> None:
    for message in messages:
        await send(message)


def _handle(receipt: Any) -> str | None:
    """A submit's job handle, under whichever name the simulator gave it (``async_handle_field``),
    at the top level or under ``data``."""
    for record in (receipt, receipt.get("data") if isinstance(receipt, dict) else None):
        if isinstance(record, dict):
            for name in ("requestId", "agentRunOId"):
                if isinstance(record.get(name), str) and record[name]:
                    return str(record[name])
    return None
