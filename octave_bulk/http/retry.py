"""What a failed call means, and how long to wait before the next attempt.

Classification of an answer that is not a success (docs/design.md, section "Classification"):

- retryable: transport errors, timeouts, 408/425/429/500/502/503/504, truncated or invalid
  bodies;
- fatal: 401/403 (key), 402 (credits), and a redirect, 404 or 405 from the endpoint (a wrong
  base URL or agent: every other contact would fail the same way): the whole run stops;
- other 4xx: this contact fails for good.

Waiting: :class:`wait_full_jitter_or_retry_after` is a tenacity wait strategy: AWS-style full
jitter, ``uniform(0, min(cap, initial * 2^(n-1)))``, but never less than the ``Retry-After``
the server sent with the failure (capped as well).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import time
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError
from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_random_exponential

from octave_bulk.agents.envelope import ErrorResponse
from octave_bulk.errors import (
    ApiError,
    ErrorKind,
    FatalApiError,
    RefusalHints,
    RetryableApiError,
    TerminalApiError,
    status_kind,
)

__all__ = [
    "FATAL_STATUSES",
    "RETRYABLE_STATUSES",
    "parse_reset",
    "parse_retry_after",
    "refusal_hints",
    "retry_after_of",
    "status_error",
    "transport_error",
    "wait_full_jitter_or_retry_after",
]

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = {
    401: ErrorKind.UNAUTHORIZED,
    402: ErrorKind.PAYMENT_REQUIRED,
    403: ErrorKind.FORBIDDEN,
    **dict.fromkeys((301, 302, 303, 307, 308, 404, 405), ErrorKind.BAD_ENDPOINT),
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds (decimals tolerated) or an
    HTTP date (RFC 9110 §10.2.3). None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


_RESET_IN_FIELD = re.compile(r"(?:^|[,;\s])(?:reset|t)\s*=\s*(\d+(?:\.\d+)?)")
_EPOCH_SINCE = 1_000_000_000  # a reset this large is a UNIX time (some servers send that)


def parse_reset(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds until a rate limit's window resets, from the headers servers send beside (or
    instead of) ``Retry-After``: ``RateLimit-Reset`` / ``X-RateLimit-Reset`` (delta seconds,
    or a UNIX time), or the IETF draft's ``RateLimit`` field (``reset=N`` or ``t=N``). Evidence,
    not an order: None when absent, unreadable or in the past."""
    current = time.time() if now is None else now
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        value = headers.get(name)
        if value:
            try:
                reset = float(value.strip())
            except ValueError:
                continue
            seconds = reset - current if reset >= _EPOCH_SINCE else reset
            return seconds if seconds > 0 else None
    field = headers.get("ratelimit")
    match = _RESET_IN_FIELD.search(field) if field else None
    if match is None or float(match.group(1)) <= 0:
        return None
    return float(match.group(1))


def retry_after_of(response: httpx.Response) -> float | None:
    """How long a refused call should wait: its ``Retry-After``, else the reset its rate
    limit headers announce (:func:`parse_reset`: a reset time teaches the limiter the
    window, docs/design.md "Pacing")."""
    said = parse_retry_after(response.headers.get("retry-after"))
    return said if said is not None else parse_reset(response.headers)


_LEADING_NUMBER = re.compile(r"^\s*(\d+)")
_LIMIT_IN_FIELD = re.compile(r"(?:^|[,;\s])(?:limit|q)\s*=\s*(\d+)")
_REMAINING_IN_FIELD = re.compile(r"(?:^|[,;\s])(?:remaining|r)\s*=\s*(\d+)")
_WINDOW_IN_FIELD = re.compile(r"(?:^|[,;\s])w\s*=\s*(\d+(?:\.\d+)?)")


def _first(pattern: re.Pattern[str], *values: str | None) -> str | None:
    for value in values:
        match = pattern.search(value) if value else None
        if match is not None:
            return match.group(1)
    return None


def refusal_hints(headers: httpx.Headers, *, now: float | None = None) -> RefusalHints | None:
    """What a 429's rate limit headers say, beside its ``Retry-After``: ``X-RateLimit-Limit`` /
    ``-Remaining`` / ``-Reset``, the IETF draft's ``RateLimit-Limit`` / ``-Remaining`` /
    ``-Reset`` / ``-Policy`` (``10;w=1``), or its ``RateLimit`` field (``limit=10, remaining=0,
    reset=4``, or ``"default";r=0;t=6`` with ``RateLimit-Policy: "default";q=10;w=60``).
    Evidence for the limiter, never a setting; None when none of them was said."""
    limit_text = headers.get("x-ratelimit-limit") or headers.get("ratelimit-limit")
    remaining_text = headers.get("x-ratelimit-remaining") or headers.get("ratelimit-remaining")
    field, policy = headers.get("ratelimit"), headers.get("ratelimit-policy")
    limit = _first(_LEADING_NUMBER, limit_text) or _first(_LIMIT_IN_FIELD, field, policy)
    remaining = _first(_LEADING_NUMBER, remaining_text) or _first(_REMAINING_IN_FIELD, field)
    window = _first(_WINDOW_IN_FIELD, policy, limit_text, field)
    hints = RefusalHints(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        reset=parse_reset(headers, now=now),
        window=None if window is None or float(window) <= 0 else float(window),
    )
    return None if hints == RefusalHints() else hints


_CAUSE_KINDS = (  # (fragment of the exception class name, kind), first match wins
    ("Timeout", ErrorKind.TIMEOUT),
    ("Payload", ErrorKind.TRUNCATED_BODY),
    ("Disconnected", ErrorKind.DISCONNECTED),
    ("Connector", ErrorKind.CONNECT),
    ("ConnectError", ErrorKind.CONNECT),
    ("Reset", ErrorKind.CONNECTION_RESET),
    ("ClientOSError", ErrorKind.CONNECTION_RESET),
)


def transport_error(exc: Exception, request_id: str | None) -> RetryableApiError:
    """A call that got no complete answer, named after what actually happened."""
    # httpx-aiohttp maps several aiohttp errors onto a few httpx classes (a reset becomes
    # ConnectTimeout) and some not at all (a bad status line from a proxy); the original cause
    # names what actually happened.
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    name = type(cause).__name__
    fallback = (
        ErrorKind.TRANSPORT if isinstance(exc, httpx.HTTPError | OSError) else ErrorKind.PROTOCOL
    )
    kind = next((k for fragment, k in _CAUSE_KINDS if fragment in name), fallback)
    if isinstance(cause, TimeoutError | asyncio.TimeoutError):
        kind = ErrorKind.TIMEOUT
    local = _local_errno(exc)
    if local is not None:  # this machine refused: the call never reached a server
        return RetryableApiError(
            f"local error, not the API: {os.strerror(local)} ({errno.errorcode[local]})",
            kind=ErrorKind.LOCAL,
            request_id=request_id,
        )
    detail = str(cause)
    if not detail:  # asyncio's and anyio's timeouts say nothing: the name, and what it means
        message = f"{name} (no complete answer in time)" if kind == ErrorKind.TIMEOUT else name
    elif detail.startswith(name):
        message = detail
    else:
        message = f"{name}: {detail}"
    return RetryableApiError(message[:300], kind=kind, request_id=request_id)


_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _local_errno(exc: BaseException) -> int | None:
    """The errno of a local resource limit (out of file descriptors, buffers, memory) among
    the exception's causes, if any."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        for candidate in (current, getattr(current, "os_error", None)):
            if isinstance(candidate, OSError) and candidate.errno in _LOCAL_ERRNOS:
                return candidate.errno
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _error_message(response: httpx.Response) -> str:
    try:
        envelope = ErrorResponse.model_validate_json(response.content)
        message = envelope.message or envelope.metadata.message
    except ValidationError:
        message = None
    if not message:
        text = response.content[:200].decode("utf-8", "replace").strip()
        message = text if text and not text.startswith("<") else response.reason_phrase
    prefix = f"HTTP {response.status_code}"
    if message.startswith(prefix):  # the server's message names the status already
        return message[:500]
    return f"{prefix}: {message}"[:500]


def status_error(response: httpx.Response, request_id: str | None) -> ApiError:
    """The error an HTTP status other than 200 stands for (see the module docstring)."""
    status = response.status_code
    message = _error_message(response)
    if status in RETRYABLE_STATUSES:
        return RetryableApiError(
            message,
            kind=status_kind(status),
            status=status,
            request_id=request_id,
            retry_after=retry_after_of(response),
            hints=refusal_hints(response.headers) if status == 429 else None,
        )
    if status in FATAL_STATUSES:
        return FatalApiError(
            message, kind=FATAL_STATUSES[status], status=status, request_id=request_id
        )
    return TerminalApiError(message, kind=status_kind(status), status=status, request_id=request_id)


class wait_full_jitter_or_retry_after(wait_base):
    """Full jitter growing from ``initial`` up to ``cap``, at least the failure's Retry-After.

    Args:
        initial: the first attempt's jitter window, seconds.
        cap: the largest window, and the longest Retry-After honoured here (a longer one is
            the limiter's business: it pauses the whole pool).
    """

    def __init__(self, initial: float, cap: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial, max=cap)
        self._cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self._jitter(retry_state))
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, ApiError) and failure.retry_after is not None:
            wait = max(wait, min(failure.retry_after, self._cap))
        return wait
