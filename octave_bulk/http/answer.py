"""What came back from a run call: a success (the raw body and the credits it used) or the
error it stands for.

A call succeeds when the answer is HTTP 200, valid JSON with the response envelope
(``_metadata``, ``found``) and the agent says its payload is there (e.g. at least one email);
a 200 without it is ``not_found``, permanent. Every other status is classified in
:mod:`octave_bulk.http.retry`. The body is judged with orjson and a few field checks, not the
pydantic response model: it is stored byte for byte, so only what decides success is examined
(half the CPU of a full model validation; docs/performance.md, section "Response handling").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from octave_bulk.agents.base import Agent
from octave_bulk.agents.fields import read_usage
from octave_bulk.errors import ErrorKind, RetryableApiError, TerminalApiError

__all__ = ["CallSuccess", "judge_body", "past_deadline", "too_large"]


@dataclass(frozen=True, slots=True)
class CallSuccess:
    """A complete, valid response: the raw body (kept byte for byte) and the credits it used."""

    raw: bytes
    credits: float
    usage_anomaly: str | None = None
    """Why ``_metadata.usage`` was not counted as given (``agents.fields.read_usage``)."""


def judge_body(raw: bytes, request_id: str, agent: Agent) -> CallSuccess:
    """A 200's body: a success, or the error it stands for (raised)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        repaired = _lenient_json(raw)
        if repaired is None:
            raise RetryableApiError(
                f"HTTP 200 with a body that is not JSON: {exc}"[:300],
                kind=ErrorKind.INVALID_JSON,
                status=200,
                request_id=request_id,
            ) from None
        raw, payload = repaired
    metadata = payload.get("_metadata") if isinstance(payload, dict) else None
    found = payload.get("found") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict) or not isinstance(found, bool):
        raise RetryableApiError(
            "HTTP 200 without the response envelope (_metadata, found)",
            kind=ErrorKind.INVALID_BODY,
            status=200,
            request_id=request_id,
        )
    why = agent.failure(payload)
    if why is not None:
        raise TerminalApiError(
            why[:500], kind=ErrorKind.NOT_FOUND, status=200, request_id=request_id
        )
    return CallSuccess(raw, *read_usage(metadata.get("usage")))


def too_large(size: int, cap: int | None, request_id: str) -> TerminalApiError:
    """An answer over ``max_response_bytes``: not kept, not retried."""
    return TerminalApiError(
        f"answer body of {size:,} bytes or more, over max_response_bytes ({cap:,}); "
        "not kept, not retried",
        kind=ErrorKind.RESPONSE_TOO_LARGE,
        status=200,
        request_id=request_id,
    )


def past_deadline(deadline: float, request_id: str | None) -> RetryableApiError:
    """No complete answer within the call deadline."""
    return RetryableApiError(
        f"no complete answer within the call deadline ({deadline:g} s)",
        kind=ErrorKind.TIMEOUT,
        request_id=request_id,
    )


def _lenient_json(raw: bytes) -> tuple[bytes, Any] | None:
    """A body that is valid JSON but that orjson refuses (a BOM, lone surrogate escapes from
    cut emoji, 1e400) is paid for: keep it, re-encoded so that every later reader can parse
    it (lone surrogates become U+FFFD). None when it is not JSON at all."""
    try:
        payload = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: not usable
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
