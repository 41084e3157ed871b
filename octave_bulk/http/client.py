"""One contact, one API call: the HTTP client, its headers, and outcome classification.

Transport: httpx's API (``httpx.Request`` / ``httpx.Response``) on the ``httpx-aiohttp``
transport by default. Measured on this kind of machine against an instant local server,
httpx's own transport managed 120-550 req/s and got slower as concurrency grew, while httpx on
aiohttp reached ~2,000-3,400 req/s (perf-notes §2, benchmarks/bench_simulator.py).
``Settings.transport = "httpx"`` swaps it back; tests inject any transport (e.g.
``httpx.ASGITransport`` or ``httpx.MockTransport``).

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
import json
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pydantic import SecretStr, ValidationError

from octave_bulk.agents.sequence import ErrorResponse, credits_of
from octave_bulk.errors import ApiError, FatalApiError, RetryableApiError, TerminalApiError
from octave_bulk.limits.adaptive import parse_retry_after

__all__ = ["RUN_PATH", "CallSuccess", "OctaveClient", "make_transport"]

RUN_PATH = "/api/v2/agents/sequence/run"
VALIDATE_PATH = "/api/v2/api-key/validate"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = {
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    # The endpoint itself is wrong (base URL, path, a redirect to a login page, an unknown
    # agent): every other contact would fail the same way, so the whole run stops.
    301: "bad_endpoint",
    302: "bad_endpoint",
    303: "bad_endpoint",
    307: "bad_endpoint",
    308: "bad_endpoint",
    404: "bad_endpoint",
    405: "bad_endpoint",
}
USER_AGENT = "octave-bulk"


@dataclass(frozen=True, slots=True)
class CallSuccess:
    """A complete, valid response: the raw body (kept byte for byte) and the credits it used."""

    raw: bytes
    credits: float


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
        from httpx_aiohttp import AiohttpTransport

        chosen: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, proxy=proxy)
        return chosen
    if transport == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits, retries=0, proxy=proxy)
    raise ValueError(f"unknown transport {transport!r}: use aiohttp or httpx")


class OctaveClient:
    """Sends one request at a time; never retries (the engine owns retries and pacing).

    Requests are ``httpx.Request`` objects handed straight to the transport: the client-level
    machinery of ``httpx.AsyncClient`` (URL merging, cookies, auth and event hooks, redirects)
    is not needed here and cost ~100 us of CPU per call (benchmarks/README.md).

    Args:
        transport: any httpx transport (aiohttp-backed by default; ASGI/Mock in tests).
        base_url: the API (or a simulator), e.g. ``https://app.octavehq.com``.
        api_key: sent as the ``api_key`` header; never logged, never part of an error.
        timeout: read timeout, seconds. connect_timeout: connect (and pool) timeout.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: SecretStr,
        timeout: float = 180.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._transport = transport
        self._run_url = httpx.URL(base_url.rstrip("/") + RUN_PATH)
        self._validate_url = httpx.URL(base_url.rstrip("/") + VALIDATE_PATH)
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
            }
        }

    async def _send(
        self, method: str, url: httpx.URL, headers: dict[str, str], body: bytes | None
    ) -> httpx.Response:
        request = httpx.Request(
            method, url, content=body, headers=headers, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def run_sequence(self, body: bytes, request_id: str) -> CallSuccess:
        """POST one sequence request.

        Raises:
            RetryableApiError, TerminalApiError, FatalApiError: see the module docstring.
        """
        # Header values must be ASCII; the body keeps the requestId exactly as given.
        header_id = request_id if request_id.isascii() else quote(request_id, safe="")
        headers = {**self._headers, "x-external-request-id": header_id}
        try:
            response = await self._send("POST", self._run_url, headers, body)
        except Exception as exc:
            raise _transport_error(exc, request_id) from None
        return _classify(response, request_id)

    async def validate_key(self) -> dict[str, object]:
        """``GET /api/v2/api-key/validate``: the key's workspace and credits."""
        try:
            response = await self._send("GET", self._validate_url, self._headers, None)
        except Exception as exc:
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


def _transport_error(exc: Exception, request_id: str | None) -> RetryableApiError:
    # httpx-aiohttp maps several aiohttp errors onto a few httpx classes (a reset becomes
    # ConnectTimeout) and some not at all (a bad status line from a proxy); the original cause
    # names what actually happened.
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    name = type(cause).__name__
    fallback = "transport" if isinstance(exc, httpx.HTTPError | OSError) else "protocol"
    kind = next((k for fragment, k in _CAUSE_KINDS if fragment in name), fallback)
    if isinstance(cause, TimeoutError | asyncio.TimeoutError):
        kind = "timeout"
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
    # orjson plus a few checks, not the pydantic model: the body is stored byte for byte, so
    # only what decides success is examined (half the CPU of a full model validation).
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        repaired = _lenient_json(raw)
        if repaired is None:
            raise RetryableApiError(
                f"HTTP 200 with a body that is not JSON: {exc}"[:300],
                kind="invalid_json",
                status=200,
                request_id=request_id,
            ) from None
        raw, payload = repaired
    metadata = payload.get("_metadata") if isinstance(payload, dict) else None
    found = payload.get("found") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict) or not isinstance(found, bool):
        raise RetryableApiError(
            "HTTP 200 without the response envelope (_metadata, found)",
            kind="invalid_body",
            status=200,
            request_id=request_id,
        )
    data = payload.get("data")
    emails = data.get("emails") if isinstance(data, dict) else None
    if not found or not isinstance(emails, list) or not emails:
        why = payload.get("message") or ("found: false" if not found else "no emails")
        raise TerminalApiError(
            f"no sequence produced: {why}"[:500],
            kind="not_found",
            status=200,
            request_id=request_id,
        )
    return CallSuccess(raw=raw, credits=credits_of(metadata.get("usage")))


def _lenient_json(raw: bytes) -> tuple[bytes, Any] | None:
    """A body that is valid JSON but that orjson refuses (a BOM, lone surrogate escapes from
    cut emoji, 1e400) is paid for: keep it, re-encoded so that every later reader can parse
    it (lone surrogates become U+FFFD). None when it is not JSON at all."""
    try:
        payload = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, UnicodeDecodeError):
        return None

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return value

    payload = clean(payload)
    return orjson.dumps(payload), payload
