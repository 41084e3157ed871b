"""Octave's async agent API: the submit body, the submit receipt and the status answer.

What is documented, and where its sources disagree, is in docs/octave-api.md, section
"Async API". Each conflict is a setting, not a guess:

- body shape ``flat`` (the agent's inputs at the top level, per the API reference; default) or
  ``nested`` (``{callbackUrl, agentOId, inputs: {...}}``, as Octave's n8n node sends);
- the status endpoint's query parameter (``requestId``, per the reference);
- the names of the job handle in a submit's answer (:data:`HANDLE_FIELDS`: ``requestId`` per
  the reference, ``agentRunOId`` per the callbacks concept page); a 2xx answer without any is
  a contract error (``no_handle``): the submit was paid, so it is never retried;
- the status words: no status field is documented on the status endpoint, so a job is done
  when ``data.result`` or ``data.error`` is there; a ``status`` field, when present, is read
  too (``completed`` and ``succeeded`` both mean done, ``failed`` failed).

A job's result is judged like a synchronous answer (:mod:`octave_bulk.http.client`): the
result is stored as the synchronous response would be - ``{_metadata, found, message, data}``.
A result that already has ``found`` is taken as that envelope (``_metadata`` added from the
status answer when missing); any other result is the agent's ``data``, with ``found: true``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from octave_bulk.agents.base import Agent
from octave_bulk.agents.fields import read_usage
from octave_bulk.errors import ErrorKind, RetryableApiError, TerminalApiError
from octave_bulk.http.retry import status_error

__all__ = [
    "DONE_WORDS",
    "FAILED_WORDS",
    "HANDLE_FIELDS",
    "AsyncContract",
    "JobAnswer",
    "JobState",
    "Receipt",
    "job_answer",
    "judged",
    "read_receipt",
    "read_status",
    "submit_body",
]

DONE_WORDS = frozenset({"completed", "succeeded", "success", "done"})
"""Status words that mean the job produced its result (the sources use both of the first two)."""
FAILED_WORDS = frozenset({"failed", "error", "cancelled", "canceled"})
"""Status words that mean the job ended without a result."""
HANDLE_FIELDS = ("requestId", "agentRunOId")
"""The names Octave's docs give an async run's handle, tried in order (docs/octave-api.md,
section "Async API"); the ``async_handle_fields`` setting replaces them."""


@dataclass(frozen=True, slots=True)
class AsyncContract:
    """The async API as this run reads it (each field a setting: see the module docstring)."""

    submit_path: str = "/api/v2/async/agent/run"
    status_path: str = "/api/v2/async/agent/run/status"
    status_param: str = "requestId"
    body_shape: str = "flat"
    callback_url: str = "https://callback.invalid/octave-bulk"
    handle_fields: tuple[str, ...] = HANDLE_FIELDS


class JobState(enum.StrEnum):
    """Where one async job stands, as the status endpoint (or a callback) tells."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Receipt:
    """The submit's answer: the job handle (Octave's async ``requestId``) and its status."""

    handle: str
    status: str | None


@dataclass(frozen=True, slots=True)
class JobAnswer:
    """A job's state; for a finished one, the stored body (the synchronous response's shape)
    and its credits, or the job's error text."""

    state: JobState
    raw: bytes = b""
    credits: float = 0.0
    error: str | None = None
    word: str | None = None
    """The ``status`` field as sent, when there was one (``running``, ``queued``...)."""
    nothing: str | None = None
    """For a done job whose agent produced nothing (``found: false``, no payload): why."""
    usage_anomaly: str | None = None
    """Why ``_metadata.usage`` was not counted as given (``agents.fields.read_usage``)."""


def submit_body(body: bytes, shape: str, callback_url: str) -> bytes:
    """The async submit body for a synchronous request body (``flat`` or ``nested``)."""
    wire = orjson.loads(body)
    if shape == "nested":
        target = {k: wire.pop(k) for k in ("agentOId", "experimentOId") if k in wire}
        return orjson.dumps({"callbackUrl": callback_url, **target, "inputs": wire})
    return orjson.dumps({"callbackUrl": callback_url, **wire})


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise RetryableApiError(
            f"{what}: HTTP 200 with a body that is not JSON",
            kind=ErrorKind.INVALID_JSON,
            status=200,
        ) from None
    if not isinstance(payload, dict):
        raise RetryableApiError(
            f"{what}: HTTP 200 with a JSON {type(payload).__name__}, not an object",
            kind=ErrorKind.INVALID_BODY,
            status=200,
        )
    return payload


def read_receipt(
    response: httpx.Response, request_id: str, handle_fields: tuple[str, ...] = HANDLE_FIELDS
) -> Receipt:
    """The handle from a submit's answer (the first of ``handle_fields`` found, at the top
    level or under ``data``).

    Raises:
        ApiError: an error status; a job refused at once (``status: failed``: this contact
            fails for good); a 2xx answer without a handle (``no_handle``, terminal: the
            submit was accepted, so paid, and sending it again would pay again).
    """
    if response.status_code not in (200, 201, 202):
        raise status_error(response, request_id)
    try:
        payload = _json_object(response, "submit")
    except RetryableApiError as exc:  # accepted, so paid: never sent again in this run
        raise _no_handle(response.status_code, request_id, exc.message, handle_fields) from None
    inner = payload.get("data")
    data: dict[str, Any] = inner if isinstance(inner, dict) else payload
    status = data.get("status") or payload.get("status")
    word = status.lower() if isinstance(status, str) else None
    if word in FAILED_WORDS:
        message = data.get("message") or payload.get("message") or "the job was refused"
        raise TerminalApiError(
            f"submit answered status {status!r}: {message}"[:500],
            kind=ErrorKind.AGENT_ERROR,
            status=response.status_code,
            request_id=request_id,
        )
    for record, name in ((r, n) for n in handle_fields for r in (data, payload)):
        handle = record.get(name)
        if isinstance(handle, str) and handle.strip():
            return Receipt(handle, word)
    found = f"fields {', '.join(sorted(map(str, data)))[:200]}" if data else "an empty object"
    raise _no_handle(response.status_code, request_id, found, handle_fields)


def _no_handle(
    status: int, request_id: str, found: str, handle_fields: tuple[str, ...]
) -> TerminalApiError:
    return TerminalApiError(
        f"submit accepted (HTTP {status}, so paid) without a job handle "
        f"({' or '.join(handle_fields)}; found {found}): its result cannot be fetched and the "
        "run stops; if the API names the handle otherwise, set async_handle_fields; to pay for "
        "this contact again, run with --retry-failed",
        kind=ErrorKind.NO_HANDLE,
        status=status,
        request_id=request_id,
    )


def read_status(response: httpx.Response, handle: str) -> JobAnswer:
    """A status answer's meaning. 404 (and 410): the server no longer knows the handle.

    Raises:
        ApiError: any other error status, or a 200 that is not a JSON object.
    """
    if response.status_code in (404, 410):
        return JobAnswer(JobState.EXPIRED, error=f"the status endpoint does not know {handle}")
    if response.status_code != 200:
        raise status_error(response, None)
    payload = _json_object(response, "status")
    inner = payload.get("data")
    return job_answer(payload.get("_metadata"), inner if isinstance(inner, dict) else payload)


def job_answer(metadata: Any, data: dict[str, Any]) -> JobAnswer:
    """A job's state from a status answer's ``data`` (or a callback's body)."""
    status = data.get("status")
    word = status.lower() if isinstance(status, str) else None
    result = data.get("result", data.get("output"))
    error = data.get("error")
    if word in FAILED_WORDS or (error and result is None):
        return JobAnswer(JobState.FAILED, error=str(error or "the job failed")[:500], word=word)
    if result is None:
        return JobAnswer(JobState.PENDING, word=word)
    if not isinstance(metadata, dict):
        metadata = {}
    if isinstance(result, dict) and "found" in result:
        body = {"_metadata": result.get("_metadata", metadata), **result}
    else:
        body = {"_metadata": metadata, "found": True, "data": result}
    usage = body["_metadata"].get("usage") if isinstance(body["_metadata"], dict) else None
    credits, anomaly = read_usage(usage)
    return JobAnswer(JobState.DONE, orjson.dumps(body), credits, word=word, usage_anomaly=anomaly)


def judged(answer: JobAnswer, agent: Agent) -> JobAnswer:
    """A done job's result judged as a synchronous answer is: ``nothing`` says why when the
    agent produced nothing (``found: false``, no payload)."""
    if answer.state is not JobState.DONE:
        return answer
    payload = orjson.loads(answer.raw)
    why = "found: false" if payload.get("found") is False else agent.failure(payload)
    if why is None:
        return answer
    return JobAnswer(
        JobState.DONE,
        answer.raw,
        answer.credits,
        nothing=why[:500],
        usage_anomaly=answer.usage_anomaly,
    )
