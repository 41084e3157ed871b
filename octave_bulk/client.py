"""One contact, one API call: the HTTP client, its headers, and outcome classification.

Transport: httpx's API on the ``httpx-aiohttp`` transport by default. Measured on this kind of
machine against an instant local server, httpx's own transport managed 120-550 req/s and got
slower as concurrency grew, while httpx on aiohttp reached ~2,000-3,400 req/s (perf-notes §2,
benchmarks/bench_simulator.py). ``Settings.transport = "httpx"`` swaps it back; tests inject
any ``httpx.AsyncClient`` (e.g. on ``httpx.ASGITransport``).

Classification (SPEC.md §6.3-6.4):

- success: HTTP 200, valid JSON, ``found: true`` and at least one email;
- ``not_found``: 200 with ``found: false`` or no emails (permanent, not retried);
- retryable: transport errors, timeouts, 408/425/429/500/502/503/504, truncated or invalid
  bodies;
- fatal: 401/403 (key) and 402 (credits) stop the whole run;
- other 4xx: this contact fails for good.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import orjson
from pydantic import SecretStr, ValidationError

from octave_bulk.errors import ApiError, FatalApiError, RetryableApiError, TerminalApiError
from octave_bulk.models import ErrorResponse, SequenceResponse
from octave_bulk.pacing import parse_retry_after

__all__ = ["RUN_PATH", "CallSuccess", "OctaveClient", "make_http_client"]

RUN_PATH = "/api/v2/agents/sequence/run"
VALIDATE_PATH = "/api/v2/api-key/validate"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = {401: "unauthorized", 402: "payment_required", 403: "forbidden"}
USER_AGENT = "octave-bulk"


@dataclass(frozen=True, slots=True)
class CallSuccess:
    """A complete, valid response: the raw body (kept byte for byte) and its parsed form."""

    raw: bytes
    response: SequenceResponse


def make_http_client(
    *,
    base_url: str,
    concurrency: int,
    timeout: float,
    connect_timeout: float,
    transport: str = "aiohttp",
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with explicit timeouts and a pool at least the in-flight cap."""
    limits = httpx.Limits(
        max_connections=concurrency + 8,  # a little headroom over the worker count
        max_keepalive_connections=concurrency + 8,
        keepalive_expiry=30.0,
    )
    timeouts = httpx.Timeout(
        connect=connect_timeout, read=timeout, write=30.0, pool=connect_timeout
    )
    chosen: httpx.AsyncBaseTransport
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        chosen = AiohttpTransport(limits=limits, trust_env=True)
    elif transport == "httpx":
        chosen = httpx.AsyncHTTPTransport(limits=limits, retries=0, trust_env=True)
    else:
        raise ValueError(f"unknown transport {transport!r}: use aiohttp or httpx")
    return httpx.AsyncClient(base_url=base_url, timeout=timeouts, limits=limits, transport=chosen)


class OctaveClient:
    """Sends one request at a time; never retries (the engine owns retries and pacing).

    Args:
        http: the shared client (its base_url points at the API or a simulator).
        api_key: sent as the ``api_key`` header; never logged, never part of an error.
    """

    def __init__(self, http: httpx.AsyncClient, api_key: SecretStr) -> None:
        self._http = http
        self._headers = {
            "api_key": api_key.get_secret_value(),
            "content-type": "application/json",
            "accept": "application/json",
            "x-request-source": USER_AGENT,
            "user-agent": USER_AGENT,
        }

    async def run_sequence(self, body: bytes, request_id: str) -> CallSuccess:
        """POST one sequence request.

        Raises:
            RetryableApiError, TerminalApiError, FatalApiError: see the module docstring.
        """
        headers = {**self._headers, "x-external-request-id": request_id}
        try:
            response = await self._http.post(RUN_PATH, content=body, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise _transport_error(exc, request_id) from None
        return _classify(response, request_id)

    async def validate_key(self) -> dict[str, object]:
        """``GET /api/v2/api-key/validate``: the key's workspace and credits."""
        try:
            response = await self._http.get(VALIDATE_PATH, headers=self._headers)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, None) from None
        if response.status_code != 200:
            raise _status_error(response, None)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RetryableApiError("validate: body is not JSON", kind="invalid_body") from None
        return payload if isinstance(payload, dict) else {}


_CAUSE_KINDS = (  # (fragment of the exception class name, kind), first match wins
    ("Timeout", "timeout"),
    ("Payload", "truncated_body"),
    ("Disconnected", "disconnected"),
    ("Connector", "connect"),
    ("ConnectError", "connect"),
    ("Reset", "connection_reset"),
    ("ClientOSError", "connection_reset"),
)


def _transport_error(exc: httpx.HTTPError | OSError, request_id: str | None) -> RetryableApiError:
    # httpx-aiohttp maps several aiohttp errors onto a few httpx classes (a reset becomes
    # ConnectTimeout); the original cause names what actually happened.
    cause = exc.__cause__ or exc
    name = type(cause).__name__
    if isinstance(cause, TimeoutError | asyncio.TimeoutError):
        kind = "timeout"
    else:
        kind = next((k for fragment, k in _CAUSE_KINDS if fragment in name), "transport")
    detail = str(cause) or name
    return RetryableApiError(f"{name}: {detail}"[:300], kind=kind, request_id=request_id)


def _error_message(response: httpx.Response) -> str:
    try:
        envelope = ErrorResponse.model_validate_json(response.content)
        message = envelope.message or envelope.metadata.message
    except ValidationError:
        message = None
    if not message:
        text = response.content[:200].decode("utf-8", "replace").strip()
        message = text if text and not text.startswith("<") else response.reason_phrase
    return f"HTTP {response.status_code}: {message}"[:500]


def _status_error(response: httpx.Response, request_id: str | None) -> ApiError:
    status = response.status_code
    message = _error_message(response)
    if status in RETRYABLE_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RetryableApiError(
            message,
            kind="rate_limited" if status == 429 else f"http_{status}",
            status=status,
            request_id=request_id,
            retry_after=retry_after,
        )
    if status in FATAL_STATUSES:
        return FatalApiError(
            message, kind=FATAL_STATUSES[status], status=status, request_id=request_id
        )
    return TerminalApiError(message, kind=f"http_{status}", status=status, request_id=request_id)


def _classify(response: httpx.Response, request_id: str) -> CallSuccess:
    if response.status_code != 200:
        raise _status_error(response, request_id)
    raw = response.content
    try:
        parsed = SequenceResponse.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        kind = "invalid_json" if first["type"] == "json_invalid" else "invalid_body"
        where = ".".join(str(p) for p in first["loc"])
        raise RetryableApiError(
            f"HTTP 200 with an unusable body: {where + ': ' if where else ''}{first['msg']}",
            kind=kind,
            status=200,
            request_id=request_id,
        ) from None
    if not parsed.found or not parsed.emails:
        why = parsed.message or ("found: false" if not parsed.found else "no emails")
        raise TerminalApiError(
            f"no sequence produced: {why}"[:500],
            kind="not_found",
            status=200,
            request_id=request_id,
        )
    return CallSuccess(raw=raw, response=parsed)
