"""A hostile front for the simulator: the answers an adversarial API gives (issue 11).

:class:`HostileApp` wraps a :class:`~octave_bulk.simulator.app.Simulator` (an ASGI app) and,
for a share of the run calls (or for requestIds named in ``forced``), answers itself instead:

``echo_500``       500 whose body repeats the caller's key (``error for key <key>``, and the
                   ``api_key`` header echoed as a field)
``echo_401``       401 ``Invalid API key <key>`` (stops a run: exit 3)
``echo_not_found`` 200 ``found: false`` whose message repeats the key
``dribble``        the simulator's own answer, sent one byte every ``dribble_interval`` s
``huge``           a 200 body of ``huge_bytes`` bytes
``deep``           a 200 body nested ``deep_levels`` levels deep
``empty_emails``   a 200 ``found: true`` with ``"emails": [{}]``
``bad_usage``      the simulator's own success, its ``_metadata.usage`` replaced by the next of
                   ``usage_tokens`` (raw JSON, in turn: ``1e308``, ``-1000``, 30 digits,
                   ``NaN``, ``"5"``, ``1e400``)

``dribble_gets`` names GET paths (their endings: ``agents/get``, ``api-key/validate``, the
async status path) whose simulator answers are dribbled too (not paid calls: the checks before
a run, polls); and ``streak_429 = (period, length)``: every call in the first ``length`` seconds of each
``period`` gets a 429 with ``Retry-After: retry_after_429`` (an exhausted quota, coming and
going). The async routes (submit, status, callbacks) have hostile kinds of their own:
:mod:`octave_bulk.simulator.hostile_async`. Everything else passes through
to the simulator unchanged. A fate is a function of ``seed``, the requestId and the attempt
number, as in the simulator. :func:`serve_hostile` serves the pair on loopback for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import uvicorn

from octave_bulk.simulator.app import Simulator
from octave_bulk.simulator.config import SimulatorConfig
from octave_bulk.simulator.hostile_async import AsyncHostility
from octave_bulk.simulator.jobs import ASYNC_STATUS_PATH, ASYNC_SUBMIT_PATH
from octave_bulk.simulator.server import RunningSimulator, bind_socket, uvicorn_config

__all__ = ["HOSTILE_KINDS", "HostileApp", "HostileConfig", "RunningHostile", "serve_hostile"]

HOSTILE_KINDS = (
    "echo_500",
    "echo_401",
    "echo_not_found",
    "dribble",
    "huge",
    "deep",
    "empty_emails",
    "bad_usage",
)

Scope = dict[str, Any]


@dataclass(frozen=True)
class HostileConfig:
    """What the hostile front does (see the module docstring)."""

    seed: int = 0
    faults: dict[str, float] = field(default_factory=dict)
    forced: dict[str, str] = field(default_factory=dict)
    dribble_interval: float = 0.2
    huge_bytes: int = 20 * 1024 * 1024
    deep_levels: int = 100_000
    streak_429: tuple[float, float] | None = None
    retry_after_429: str = "1"
    usage_tokens: tuple[bytes, ...] = (
        b"1e308", b"-1000", b"1" + b"0" * 29, b"NaN", b'"5"', b"1e400"
    )  # fmt: skip
    dribble_gets: tuple[str, ...] = ()


class HostileApp:
    """The ASGI front (see the module docstring); ``counts`` says what it did, per kind, and
    ``fated`` to whom."""

    def __init__(self, inner: Simulator, config: HostileConfig) -> None:
        self.inner, self.config = inner, config
        self.counts: Counter[str] = Counter()
        self.fated: dict[str, list[str]] = {}
        """requestId -> the kinds this front answered it with, in order."""
        self._attempts: Counter[str] = Counter()
        self._started = time.monotonic()
        self.asynchronous = AsyncHostility(self)
        """The async routes' hostility (its ``callback_answers``, ``callback_urls``)."""

    def draw(self, rid: str, kinds: tuple[str, ...]) -> str | None:
        """The fate of a call of ``rid`` among ``kinds`` (None: it passes through)."""
        fate = self._fate(rid)
        if fate not in kinds:
            return None
        self.fated.setdefault(rid, []).append(fate)
        if fate.startswith("echo_"):  # answered at once (a poll's or callback's kind: later)
            self.counts[fate] += 1
        return fate

    def _fate(self, rid: str) -> str | None:
        self._attempts[rid] += 1
        forced = self.config.forced.get(rid)
        if forced is not None:
            return forced
        if self.config.streak_429 is not None:
            period, length = self.config.streak_429
            if (time.monotonic() - self._started) % period < length:
                return "429"
        digest = hashlib.sha256(f"{self.config.seed}|{rid}|{self._attempts[rid]}".encode())
        u = int.from_bytes(digest.digest()[:8], "big") / 2**64
        for kind, rate in sorted(self.config.faults.items()):
            if u < rate:
                return kind
            u -= rate
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        gets = self.config.dribble_gets
        get = scope["type"] == "http" and scope["method"] == "GET"
        if gets and get and scope["path"].endswith(gets):
            self.counts["dribble_get"] += 1
            await self._dribble(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] in (ASYNC_SUBMIT_PATH, ASYNC_STATUS_PATH):
            await self.asynchronous(scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] != "POST" or "/agents/" not in scope["path"]:
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        rid = _header(scope, b"x-external-request-id")
        key = _header(scope, b"api_key")
        fate = self._fate(rid)
        if fate is not None:
            self.counts[fate] += 1
            self.fated.setdefault(rid, []).append(fate)

        replayed = False

        async def replay() -> dict[str, Any]:
            # The body once, then the connection's own messages (http.disconnect): the
            # simulator waits for those on a hang or a dropped connection.
            nonlocal replayed
            if replayed:
                return await receive()  # type: ignore[no-any-return]
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if fate is None:
            await self.inner(scope, replay, send)
        elif fate == "429":
            await _send(
                send,
                429,
                orjson.dumps({"message": "quota exhausted"}),
                [(b"retry-after", self.config.retry_after_429.encode())],
            )
        elif fate == "echo_500":
            echo: dict[str, Any] = {"message": f"error for key {key}", "headers": {"api_key": key}}
            await _send(send, 500, orjson.dumps(echo))
        elif fate == "echo_401":
            await _send(send, 401, orjson.dumps({"message": f"Invalid API key {key}"}))
        elif fate == "echo_not_found":
            refusal: dict[str, Any] = {"_metadata": {"usage": 0}, "found": False}
            refusal["message"] = f"no match for {key}"
            await _send(send, 200, orjson.dumps(refusal))
        elif fate == "huge":
            filler = b"x" * self.config.huge_bytes
            await _send(
                send, 200, b'{"_metadata":{},"found":true,"data":{"pad":"' + filler + b'"}}'
            )
        elif fate == "deep":
            levels = self.config.deep_levels
            await _send(
                send,
                200,
                b'{"_metadata":{},"found":true,"data":' + b"[" * levels + b"]" * levels + b"}",
            )
        elif fate == "empty_emails":
            payload = {"_metadata": {"usage": 1}, "found": True, "data": {"emails": [{}]}}
            await _send(send, 200, orjson.dumps(payload))
        elif fate == "dribble":
            await self._dribble(scope, replay, send)
        elif fate == "bad_usage":
            status, answer = await _answer_of(self.inner, scope, replay)
            tokens = self.config.usage_tokens
            token = tokens[(self.counts[fate] - 1) % len(tokens)]
            payload = orjson.loads(answer)
            payload["_metadata"]["usage"] = "__usage__"
            await _send(send, status, orjson.dumps(payload).replace(b'"__usage__"', token))
        else:
            raise ValueError(f"unknown hostile kind {fate!r}")

    async def _dribble(self, scope: Scope, replay: Any, send: Any) -> None:
        """The simulator's answer, its body one byte at a time."""
        messages: list[MutableMapping[str, Any]] = []

        async def keep(message: MutableMapping[str, Any]) -> None:
            messages.append(message)

        await self.inner(scope, replay, keep)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        start = next(m for m in messages if m["type"] == "http.response.start")
        await send(start)
        async with anyio.create_task_group() as group:

            async def until_disconnected() -> None:  # the client gave up: stop dribbling
                while (await replay())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(until_disconnected)
            for index in range(len(body)):
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[index : index + 1],
                        "more_body": True,
                    }
                )
                await anyio.sleep(self.config.dribble_interval)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()


async def _answer_of(app: Simulator, scope: Scope, receive: Any) -> tuple[int, bytes]:
    """The status and whole body ``app`` answers."""
    messages: list[MutableMapping[str, Any]] = []

    async def keep(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, keep)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return int(start["status"]), body


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class RunningHostile(RunningSimulator):
    """A hostile front serving on loopback: ``app`` is the simulator behind it."""

    front: HostileApp | None = None


@contextlib.contextmanager
def serve_hostile(
    config: SimulatorConfig | None = None, hostile: HostileConfig | None = None
) -> Iterator[RunningHostile]:
    """Serve a simulator behind a hostile front in a background thread (see
    ``server.serve_simulator``)."""
    inner = Simulator(config)
    front = HostileApp(inner, hostile or HostileConfig())
    sock = bind_socket()
    server = uvicorn.Server(uvicorn_config(front, "asyncio"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the hostile simulator did not start")
        time.sleep(0.01)
    try:
        yield RunningHostile(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}", app=inner, front=front
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
