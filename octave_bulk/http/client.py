"""One contact, one API call: the HTTP client and the judgement of what came back.

Transport: httpx's API (``httpx.Request`` / ``httpx.Response``) on the ``httpx-aiohttp``
transport by default: httpx's own transport slows down as concurrency grows, httpx on aiohttp
does not (docs/performance.md, section "HTTP stack"). ``Settings.transport = "httpx"`` swaps
it back; tests inject any transport (e.g. ``httpx.ASGITransport`` or ``httpx.MockTransport``).

What an answer means: :mod:`octave_bulk.http.answer` (a run call's) and
:mod:`octave_bulk.http.async_api` (a submit's, a poll's); error statuses and transport errors:
:mod:`octave_bulk.http.retry`.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
import httpx
import orjson
from pydantic import SecretStr

from octave_bulk.agents import get_agent
from octave_bulk.agents.base import Agent
from octave_bulk.errors import ApiError, ErrorKind, RetryableApiError
from octave_bulk.http.answer import CallSuccess, judge_body, past_deadline, too_large
from octave_bulk.http.async_api import (
    AsyncContract,
    JobAnswer,
    Receipt,
    judged,
    read_receipt,
    read_status,
    submit_body,
)
from octave_bulk.http.retry import status_error, transport_error
from octave_bulk.http.transport import TooLarge
from octave_bulk.redact import register_secret

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings

__all__ = [
    "AGENTS_GET_PATH",
    "AGENTS_LIST_PATH",
    "VALIDATE_PATH",
    "CallSuccess",
    "OctaveClient",
    "make_transport",
    "open_client",
]

VALIDATE_PATH = "/api/v2/api-key/validate"
AGENTS_GET_PATH = "/api/v2/agents/get"
AGENTS_LIST_PATH = "/api/v2/agents/list"
USER_AGENT = "octave-bulk"


def _env_proxy(base_url: str) -> httpx.Proxy | None:
    """The proxy for ``base_url`` from HTTP(S)_PROXY / NO_PROXY, as curl and httpx read them.

    Needed because requests go straight to the transport, past the AsyncClient that would
    otherwise apply these variables."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return httpx.Proxy(proxy)


def make_transport(
    *, concurrency: int, transport: str = "aiohttp", base_url: str | None = None
) -> httpx.AsyncBaseTransport:
    """The HTTP transport, with a connection pool a little above the in-flight cap and the
    environment's proxy for ``base_url`` (if any)."""
    limits = httpx.Limits(
        max_connections=concurrency + 8,
        max_keepalive_connections=concurrency + 8,
        keepalive_expiry=30.0,
    )
    proxy = _env_proxy(base_url) if base_url else None
    if transport == "aiohttp":
        from octave_bulk.http.transport import ReadingAiohttpTransport

        return ReadingAiohttpTransport(limits=limits, proxy=proxy)
    if transport == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits, retries=0, proxy=proxy)
    raise ValueError(f"unknown transport {transport!r}: use aiohttp or httpx")


class OctaveClient:
    """Sends one request at a time; never retries (the run owns retries and pacing).

    Requests are ``httpx.Request`` objects handed straight to the transport: the client-level
    machinery of ``httpx.AsyncClient`` (URL merging, cookies, auth and event hooks, redirects)
    is not needed here and cost ~100 us of CPU per call (docs/performance.md, section
    "HTTP stack").

    Args:
        transport: any httpx transport (aiohttp-backed by default; ASGI/Mock in tests).
        base_url: the API (or a simulator), e.g. ``https://app.octavehq.com``.
        api_key: sent as the ``api_key`` header; never logged, never part of an error.
        agent: the agent whose endpoint :meth:`run` calls (the Sequence Agent by default).
        timeout: read timeout, seconds; a check (:meth:`get_json`) gets it as its whole
            deadline. connect_timeout: connect (and pool) timeout.
        deadline: the whole attempt (connect, send, the entire answer) of a run call, a
            submit or a poll, seconds; None: none.
        max_body: the largest answer body accepted, bytes; None: no cap.
        contract: the async API's endpoints and body shape (for :meth:`submit`, :meth:`poll`).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: SecretStr,
        agent: Agent | None = None,
        timeout: float = 180.0,
        connect_timeout: float = 10.0,
        deadline: float | None = None,
        max_body: int | None = None,
        contract: AsyncContract | None = None,
    ) -> None:
        self._transport = transport
        self.checks_answered = 0
        """Checks (the GETs: lookups, polls) a server answered, with any status."""
        self.checks_unreachable = 0
        """Checks that could not connect: with none answered, no server is there."""
        self.last_check_error = ""
        self._contract = contract or AsyncContract()
        self._deadline, self._max_body = deadline, max_body
        # A check (agent lookup, key and credits, doctor) is a small answer: the read timeout
        # bounds it as a whole, so a hung or dribbling server cannot hold a run before its
        # first call for longer than that (or the call deadline, if shorter).
        self._check = timeout if deadline is None else min(timeout, deadline)
        # The default transport enforces both itself (aiohttp's total timeout, a capped read);
        # any other is bounded here, around the call.
        self._bounded_inside = bool(getattr(transport, "enforces_call_bounds", False))
        # Errors made from answers and the files they reach are scrubbed of it (octave_bulk.
        # redact): a server may echo it in any answer.
        register_secret(api_key.get_secret_value())
        self._agent = agent or get_agent()
        self._run_url = httpx.URL(base_url.rstrip("/") + self._agent.path)
        self._validate_url = httpx.URL(base_url.rstrip("/") + VALIDATE_PATH)
        self._root = base_url.rstrip("/")
        self._headers = {
            "api_key": api_key.get_secret_value(),
            "content-type": "application/json",
            "accept": "application/json",
            "x-request-source": USER_AGENT,
            "user-agent": USER_AGENT,
        }
        self._extensions = {
            "timeout": {
                "connect": connect_timeout,
                "read": timeout,
                "write": 30.0,
                "pool": connect_timeout,
                "total": deadline,
            },
            "max_body": max_body,
        }
        # The run's fixed headers as httpx would order and encode them (Host first, then ours;
        # the call's id and Content-Length are appended per call), built once: a dict merged
        # and normalised by httpx.Request per call cost ~8 us (docs/performance.md, section
        # "Per-contact CPU"). None when a value is not ASCII: then httpx's own path is taken,
        # and fails per call exactly as before.
        self._run_head: list[tuple[bytes, bytes]] | None
        try:
            self._run_head = [
                (b"Host", self._run_url.netloc),
                *(
                    (name.encode("ascii"), value.encode("ascii"))
                    for name, value in self._headers.items()
                ),
            ]
        except UnicodeEncodeError:
            self._run_head = None
        # The default transport can take a run's calls without httpx's request and response
        # objects (its ``poster``: the same request on the wire; docs/performance.md, section
        # "Second pass"); it bounds each call itself.
        self._post: Callable[[bytes, str], Awaitable[bytes | httpx.Response]] | None = None
        poster = getattr(transport, "poster", None)
        if poster is not None and self._bounded_inside and self._run_head is not None:
            head = [(name.decode().lower(), value.decode()) for name, value in self._run_head]
            self._post = poster(self._run_url, head, self._extensions)

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        body: bytes | None,
        *,
        deadline: float | None = None,
    ) -> httpx.Response:
        """One request other than a run call (a submit, a poll, a check), bounded as a whole -
        connect, send, the entire answer - by ``deadline`` (default: the call deadline): a
        server dribbling a byte under the read timeout is cut there. Raises TimeoutError."""
        request = httpx.Request(
            method, url, content=body, headers=headers, extensions=self._extensions
        )
        limit = self._deadline if deadline is None else deadline
        if limit is None:
            return await self._receive(request)
        with anyio.move_on_after(limit):
            return await self._receive(request)
        raise TimeoutError(f"no complete answer within {limit:g} s")

    async def _receive(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def run(self, body: bytes, request_id: str) -> CallSuccess:
        """POST one request to the agent's endpoint.

        Raises:
            RetryableApiError, TerminalApiError, FatalApiError: see :mod:`octave_bulk.http.retry`.
        """
        # Header values must be ASCII; the body keeps the requestId exactly as given.
        header_id = request_id if request_id.isascii() else quote(request_id, safe="")
        try:
            if self._post is not None:
                answer = await self._post(body, header_id)
            else:
                answer = await self._run_via_httpx(body, header_id, request_id)
        except ApiError:
            raise
        except TooLarge as exc:
            raise too_large(exc.size, self._max_body, request_id) from None
        except Exception as exc:
            raise transport_error(exc, request_id) from None
        raw = answer if isinstance(answer, bytes) else answer.content
        cap = self._max_body
        if cap is not None and len(raw) > cap:
            raise too_large(len(raw), cap, request_id)
        if not isinstance(answer, bytes) and answer.status_code != 200:
            raise status_error(answer, request_id)
        return judge_body(raw, request_id, self._agent)

    async def _run_via_httpx(self, body: bytes, header_id: str, request_id: str) -> httpx.Response:
        """The run call through any httpx transport, bounded by the call deadline here unless
        the transport enforces it itself."""
        if self._bounded_inside or self._deadline is None:
            # Inlined _receive: every await layer is paid again on each resumption.
            response = await self._transport.handle_async_request(
                self._run_request(body, header_id)
            )
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        try:
            with anyio.fail_after(self._deadline):
                return await self._receive(self._run_request(body, header_id))
        except TimeoutError:
            raise past_deadline(self._deadline, request_id) from None

    def _run_request(self, body: bytes, header_id: str) -> httpx.Request:
        """The run call's request: the same method, URL, headers (names, values, order) and
        body as ``httpx.Request(..., content=body, headers={...})`` builds, without merging
        and re-normalising the fixed headers on every call."""
        head = self._run_head
        if head is None:
            headers = {**self._headers, "x-external-request-id": header_id}
            return httpx.Request(
                "POST", self._run_url, content=body, headers=headers, extensions=self._extensions
            )
        request = httpx.Request(
            "POST",
            self._run_url,
            headers=httpx.Headers(
                [
                    *head,
                    (b"x-external-request-id", header_id.encode("ascii")),
                    (b"Content-Length", b"%d" % len(body)),
                ]
            ),
            stream=httpx.ByteStream(body),
            extensions=self._extensions,
        )
        request.headers.encoding = "ascii"  # what httpx would find, by scanning every header
        request.read()
        return request

    async def submit(self, body: bytes, request_id: str) -> Receipt:
        """POST one request to the async endpoint (reshaped per the contract): its handle.

        Raises:
            ApiError: as :meth:`run`; a 2xx without a handle is ``no_handle`` (terminal).
        """
        contract = self._contract
        header_id = request_id if request_id.isascii() else quote(request_id, safe="")
        wire = submit_body(body, contract.body_shape, contract.callback_url)
        headers = {**self._headers, "x-external-request-id": header_id}
        url = httpx.URL(self._root + contract.submit_path)
        try:
            response = await self._send("POST", url, headers, wire)
        except Exception as exc:
            raise transport_error(exc, request_id) from None
        return read_receipt(response, request_id, contract.handle_fields)

    async def poll(self, handle: str) -> JobAnswer:
        """GET one job's status (not paid); a done job's result is judged as :meth:`run`'s
        answer is (``nothing`` says why when the agent produced nothing).

        Raises:
            ApiError: an error status other than 404/410 (those mean the handle expired); an
                answer over ``max_body`` (``response_too_large``).
        """
        contract = self._contract
        url = httpx.URL(self._root + contract.status_path, params={contract.status_param: handle})
        try:
            response = await self._send("GET", url, self._headers, None)
        except TooLarge as exc:  # a result over the cap: the job fails as a sync call would
            raise too_large(exc.size, self._max_body, handle) from None
        except Exception as exc:
            raise transport_error(exc, None) from None
        return judged(read_status(response, handle), self._agent)

    async def validate_key(self) -> dict[str, object]:
        """``GET /api/v2/api-key/validate``: the key's workspace and credits."""
        return await self.get_json(self._validate_url)

    async def get_agent_info(self, o_id: str) -> dict[str, object]:
        """``GET /api/v2/agents/get?oId=``: one agent (type, name, costToRun); an agent that
        does not exist is an ApiError with status 404."""
        return await self.get_json(httpx.URL(self._root + AGENTS_GET_PATH, params={"oId": o_id}))

    async def list_agents(self, api_type: str, limit: int = 50) -> dict[str, object]:
        """``GET /api/v2/agents/list?type=``: the workspace's agents of one type."""
        params = {"type": api_type, "limit": str(limit)}
        return await self.get_json(httpx.URL(self._root + AGENTS_LIST_PATH, params=params))

    async def get_json(self, url: httpx.URL) -> dict[str, object]:
        """A GET (no retries: these are checks, not paid calls) and its JSON object, within
        the read timeout as a whole (and the call deadline)."""
        try:
            response = await self._send("GET", url, self._headers, None, deadline=self._check)
        except Exception as exc:
            error = transport_error(exc, None)
            if error.kind == ErrorKind.CONNECT:
                self.checks_unreachable += 1
                self.last_check_error = error.message
            raise error from None
        self.checks_answered += 1
        if response.status_code != 200:
            raise status_error(response, None)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RetryableApiError(
                f"{url.path}: body is not JSON", kind=ErrorKind.INVALID_BODY
            ) from None
        return payload if isinstance(payload, dict) else {}


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    read_timeout: float | None = None,
    callback_url: str | None = None,
) -> AsyncIterator[OctaveClient]:
    """A client built from settings (``read_timeout`` replaces ``settings.timeout``,
    ``callback_url`` the async ``settings.callback_url``); a transport is made (and closed)
    unless one is given."""
    async with contextlib.AsyncExitStack() as stack:
        if transport is None:
            transport = make_transport(
                concurrency=settings.concurrency,
                transport=settings.transport,
                base_url=settings.base_url,
            )
            await stack.enter_async_context(transport)
        yield OctaveClient(
            transport,
            base_url=settings.base_url,
            api_key=settings.api_key or SecretStr(""),
            timeout=settings.timeout if read_timeout is None else read_timeout,
            connect_timeout=settings.connect_timeout,
            deadline=settings.call_deadline,
            max_body=settings.max_response_bytes,
            agent=get_agent(settings.agent_type),
            contract=AsyncContract(
                settings.async_path,
                settings.async_status_path,
                settings.async_status_param,
                settings.async_body,
                callback_url or settings.callback_url,
                settings.async_handle_fields,
            ),
        )
