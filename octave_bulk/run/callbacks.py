"""The callback receiver: a callback is a hint to poll a job now, never its result.

With ``callback_listen`` (HOST:PORT) in async mode the run serves callbacks there (aiohttp's
server, in the run's own event loop); the user makes ``callback_url`` reach it (a tunnel, an
ingress: Octave requires a public HTTPS URL).

**Never trusted as a result.** Octave documents no signature for its callbacks
(docs/octave-api.md, section "Async API"), so whoever reaches the port could otherwise forge
a job's success (with any result and any usage), its failure (the next run pays again), or
end it for good. A callback only names a job handle (under ``async_handle_fields``, at the
top level or under ``data``); the job is then polled at once (:meth:`~octave_bulk.run.jobs.
Jobs.hint`: the same authenticated poll, limiter, budget and deadlines as every poll), and
the poll's answer is the outcome. So callbacks make results arrive sooner and polls fewer,
and a forged one costs one poll at most. A hint for a handle not awaited (yet) is kept a
little while (its submit may not be durable yet), else ignored.

**Only on the output's secret path.** The URL Octave is given is ``callback_url`` plus
``/TOKEN``: a random token (``secrets.token_urlsafe``, 256 bits) kept in the output's
``OUT.callback-token`` side file (0600), so that a resumed run - whose jobs' callbacks were
sent to the earlier run's URL - accepts them too; removing the file makes a new one (the
callbacks of jobs already submitted then miss, and polling finds their results). A request is
accepted when the last segment of its path is the token (the last one, so that a tunnel
may add or strip a prefix; compared in constant time); any other path gets a 404. The token
is a registered secret (:mod:`octave_bulk.redact`): no other file or log line ever holds it.

**Bounded.** At most ``MAX_CONNECTIONS`` connections are served at once (the next wait in
the listen backlog, then the kernel refuses more); a request's headers must arrive within
``READ_TIMEOUT`` seconds of its connection (or of the previous request on it) and its body
within ``READ_TIMEOUT`` more (408); a body is at most ``MAX_BODY`` bytes (413: a hint needs a
few hundred; a result comes from a poll, which honours ``max_response_bytes``); a compressed
body (``Content-Encoding`` other than ``identity``) is refused unread (415); anything else that
is not a JSON object gets a 400. Refusals are counted (the summary's ``async_jobs.callbacks``)
and the first of each run is logged as one line, never with a traceback, never with its path
(aiohttp's own error reports go to the same count).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
from aiohttp import web

from octave_bulk.errors import ConfigError
from octave_bulk.http.async_api import HANDLE_FIELDS
from octave_bulk.observe.log import log_event
from octave_bulk.redact import register_secret
from octave_bulk.run.jobs import Jobs
from octave_bulk.run.summary import RunStats
from octave_bulk.state.files import open_private, write_atomic
from octave_bulk.state.jobs import PendingJob

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "READ_TIMEOUT", "CallbackReceiver", "load_token"]

MAX_BODY = 64 << 10
MAX_CONNECTIONS = 32
READ_TIMEOUT = 10.0
_FULL_PAUSE = 0.05  # while every connection slot is taken: how often to look again
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43,}")


def load_token(path: Path) -> str:
    """The output's callback token: read from ``path``, or made and written there (0600) when
    the file is missing or does not hold one."""
    token = ""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    else:
        try:
            token = os.read(fd, 256).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
    if not _TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(32)
        write_atomic(path, token.encode() + b"\n")  # before it is a secret: scrubbed after
    register_secret(token)
    return token


class CallbackReceiver:
    """Serves callbacks on ``listen`` (HOST:PORT) until stopped (see the module docstring).

    Args:
        listen: where to listen.
        token: the secret last segment of the path a callback must come to.
        stats: counters (``callbacks``, ``callbacks_refused``).
        handle_fields: the names a job handle may go by (``async_handle_fields``).

    ``jobs`` is the poller each hint goes to (set once it exists; a callback before that is
    answered and ignored). ``adopt`` (a shared ledger's store, ``TakesOverJobs.adopt_job``)
    takes over a job this run does not await when the database has it submitted and no
    live run polls it: a forged handle is not in the database, and gives nothing.
    """

    def __init__(
        self,
        listen: str,
        token: str,
        stats: RunStats,
        handle_fields: tuple[str, ...] = HANDLE_FIELDS,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._handle_fields = handle_fields
        self.host, self.port = host.strip("[]"), int(port)
        self._token = token.encode()
        self.stats = stats
        self.jobs: Jobs | None = None
        self.adopt: Callable[[str], Awaitable[PendingJob | None]] | None = None
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._logged = False

    def url(self, callback_url: str) -> str:
        """The URL Octave is given: ``callback_url`` with the secret segment appended."""
        return f"{callback_url.rstrip('/')}/{self._token.decode()}"

    async def start(self) -> None:
        """Listen (aiohttp serves from the event loop; a port that cannot be bound is a
        :class:`ConfigError`, raised before any call)."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._receive)
        quiet = logging.Logger("octave_bulk.callbacks.server", logging.WARNING)
        quiet.addFilter(self._aiohttp_report)
        self._runner = runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            logger=quiet,
            auto_decompress=False,  # a compressed body is refused, never inflated
            keepalive_timeout=READ_TIMEOUT,  # a connection without a whole request: closed
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            self._socket = await _listening_socket(self.host, self.port)
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"callback_listen {self.host}:{self.port}: cannot listen ({exc.strerror})"
            ) from None
        self._accepting = asyncio.get_running_loop().create_task(self._accept(self._socket))
        log_event("callbacks_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening (callbacks that come later are lost: the next run polls)."""
        with anyio.CancelScope(shield=True):
            if self._accepting is not None:
                self._accepting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._accepting
            if self._socket is not None:
                self._socket.close()
            if self._runner is not None:
                await self._runner.cleanup()
        self._runner = self._socket = self._accepting = None

    async def _accept(self, listening: socket.socket) -> None:
        """Hand each connection to aiohttp, ``MAX_CONNECTIONS`` at most at once: the next
        waits in the listen backlog (then the kernel refuses more) until one ends."""
        loop = asyncio.get_running_loop()
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return
        while True:
            # aiohttp tells no one when a connection ends: looked at again every 50 ms, only
            # while every slot is taken.
            while len(server.connections) >= MAX_CONNECTIONS:  # noqa: ASYNC110
                await asyncio.sleep(_FULL_PAUSE)
            try:
                connection, _ = await loop.sock_accept(listening)
            except OSError as exc:  # out of descriptors: the run's own calls come first
                self._count(f"a connection not accepted ({exc.strerror})")
                await asyncio.sleep(_FULL_PAUSE)
                continue
            try:
                await loop.connect_accepted_socket(server, connection)
            except OSError:
                connection.close()

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        segment = request.path.rstrip("/").rpartition("/")[2]
        if not hmac.compare_digest(segment.encode("utf-8", "surrogateescape"), self._token):
            return self._refuse(404, "not this output's callback path")
        if request.method != "POST":
            return self._refuse(405, "not a POST")
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            return self._refuse(415, "a compressed body")
        if (request.content_length or 0) > MAX_BODY:
            return self._refuse(413, f"a body over {MAX_BODY} bytes")
        try:
            with anyio.fail_after(READ_TIMEOUT):
                body = await request.read()
        except TimeoutError:
            return self._refuse(408, "a body not sent in time")
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"a body over {MAX_BODY} bytes")
        except Exception:  # a cut or broken body: answered, never a traceback
            return self._refuse(400, "a malformed body")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._refuse(400, "a body that is not JSON")
        if not isinstance(payload, dict):
            return self._refuse(400, "a body that is not a JSON object")
        inner = payload.get("data")
        names = self._handle_fields
        handle = _handle(payload, names) or (
            _handle(inner, names) if isinstance(inner, dict) else None
        )
        self.stats.callbacks += 1
        jobs = self.jobs
        if handle is not None and jobs is not None:
            if self.adopt is not None and not jobs.awaits(handle):  # another run's job?
                adopted = await self.adopt(handle)
                if adopted is not None:
                    jobs.add(adopted)
            jobs.hint(handle)  # polled now: the poll's answer is the outcome
        return web.json_response({"ok": True})

    def _refuse(self, status: int, why: str) -> web.Response:
        self._count(why)
        return web.json_response({"ok": False}, status=status)

    def _count(self, why: str) -> None:
        """Count a refused callback; the first of the run is logged (one line)."""
        self.stats.callbacks_refused += 1
        if not self._logged:
            self._logged = True
            log_event(
                "callback_refused",
                level=logging.WARNING,
                why=why,
                note="a callback is only a hint to poll; later refusals are counted, not logged",
            )

    def _aiohttp_report(self, record: logging.LogRecord) -> bool:
        """aiohttp's own report of a request it could not serve (a malformed request line or
        header): counted as a refusal, never printed (its traceback would break the log)."""
        self._count(f"a malformed request ({record.getMessage().split(' from ')[0]})")
        return False


async def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (its first address)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, protocol, _, address = infos[0]
    listening = socket.socket(family, kind, protocol)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(MAX_CONNECTIONS)
        listening.setblocking(False)
    except OSError:
        listening.close()
        raise
    return listening


def _handle(record: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None
