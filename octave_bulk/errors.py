"""Every error octave-bulk raises on purpose, in one tree, and the codes a run ends with.

::

    OctaveBulkError
    ├── ConfigError          bad settings, options or config file         (exit 2)
    ├── InputError           unreadable input file or bad header           (exit 2)
    ├── StateError           output files that cannot be used or locked    (exit 2)
    └── ApiError             the API refused or failed (carries kind, status, request_id)
        ├── RetryableApiError    408/425/429/5xx, transport errors, bad bodies
        ├── TerminalApiError     this contact failed for good: other 4xx, not_found
        └── FatalApiError        the key, credits or endpoint are unusable: stop the run (exit 3)

``FatalApiError`` stands beside ``TerminalApiError``, not under it: code that catches "this
contact failed, go on" must never swallow an error that stops the run.

Misuse of the library (wrong argument types) stays ``ValueError`` / ``TypeError``.
:class:`ExitCode` is the only exit table; :class:`StopReason` says why a run stopped early and
maps to its exit code; :class:`ErrorKind` names what went wrong with one call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from octave_bulk.redact import scrub

__all__ = [
    "NEVER_SENT",
    "ApiError",
    "ClaimRefused",
    "ConfigError",
    "ErrorKind",
    "ExitCode",
    "FailOn",
    "FatalApiError",
    "InputError",
    "OctaveBulkError",
    "RefusalHints",
    "RetryableApiError",
    "StateError",
    "StopReason",
    "TerminalApiError",
    "status_kind",
]


class ExitCode(enum.IntEnum):
    """How a command ends (docs/design.md, section "Exit codes")."""

    OK = 0
    """Every contact succeeded (or was already done)."""
    SOME_FAILED = 1
    """The run finished, but some contacts failed after their retries (or, with
    ``--fail-on-rejects``, some rows were rejected)."""
    USAGE = 2
    """Bad settings, input or output files, found before anything was sent."""
    FATAL = 3
    """The key, the credits or the endpoint were refused: the run stopped, resumably."""
    BREAKER = 4
    """The API kept failing: the run stopped, resumably."""
    MAX_CALLS = 5
    """``--max-calls`` or ``--budget`` was reached: the run stopped, resumably."""
    FILE_ERROR = 6
    """A file failed after calls were sent (the output's disk filled up, the metrics or summary
    file could not be written, the input broke mid-file): the run stopped, resumably once the
    file is fixed. Unlike 2 ("nothing sent"), calls may have been paid."""
    INTERNAL = 70
    """A bug in octave-bulk (EX_SOFTWARE): never 0 or 1, so it is never taken for success."""
    INTERRUPTED = 130
    """SIGINT or SIGTERM: calls in flight were drained, the run stopped, resumably."""


class FailOn(enum.StrEnum):
    """What makes a run that went through its input exit 1 (``--fail-on``; the default is
    ``failed``). Tonight's exit reflects tonight's work: contacts that failed for good in an
    earlier run are reported, and fail the night only when ``skipped-failed`` is chosen."""

    FAILED = "failed"
    """Contacts sent tonight that failed after their retries (and async jobs still pending at
    ``job_timeout``, left for the next run)."""
    REJECTS = "rejects"
    """Rows rejected (unusable) or duplicates of another row."""
    SKIPPED_FAILED = "skipped-failed"
    """Contacts that failed for good in an earlier run and were not sent again."""
    NONE = "none"
    """Nothing: a run that went through its input exits 0."""


class StopReason(enum.StrEnum):
    """Why a run stopped before its input was done."""

    FATAL = "fatal"
    BREAKER = "breaker"
    MAX_CALLS = "max_calls"
    BUDGET = "budget"
    INTERRUPTED = "interrupted"
    INPUT_ERROR = "input_error"
    LEDGER = "ledger"
    CREDITS = "credits"

    @property
    def exit_code(self) -> ExitCode:
        """The exit code of a run that stopped for this reason."""
        return _STOP_EXIT[self]


_STOP_EXIT = {
    StopReason.FATAL: ExitCode.FATAL,
    StopReason.BREAKER: ExitCode.BREAKER,
    StopReason.MAX_CALLS: ExitCode.MAX_CALLS,
    StopReason.BUDGET: ExitCode.MAX_CALLS,
    StopReason.INTERRUPTED: ExitCode.INTERRUPTED,
    StopReason.INPUT_ERROR: ExitCode.USAGE,
    StopReason.LEDGER: ExitCode.FILE_ERROR,
    StopReason.CREDITS: ExitCode.FATAL,
}


class ErrorKind(enum.StrEnum):
    """What went wrong with one call, as recorded in ``OUT.errors.ndjson`` (``error.kind``).

    An HTTP status without a kind of its own is recorded as ``http_<status>`` (see
    :func:`status_kind`).
    """

    # No complete answer: the connection or the transfer failed.
    TIMEOUT = "timeout"
    CONNECT = "connect"
    CONNECTION_RESET = "connection_reset"
    DISCONNECTED = "disconnected"
    TRUNCATED_BODY = "truncated_body"
    TRANSPORT = "transport"
    PROTOCOL = "protocol"
    # An answer that cannot be used.
    RATE_LIMITED = "rate_limited"
    INVALID_JSON = "invalid_json"
    INVALID_BODY = "invalid_body"
    NOT_FOUND = "not_found"
    # An async job (submit and poll): it ended with an error, or its handle is gone.
    AGENT_ERROR = "agent_error"
    EXPIRED = "expired"
    # An async contract error: a paid submit whose job cannot be followed (the run stops on
    # the first; docs/design.md, section "Submit and poll").
    NO_HANDLE = "no_handle"
    HANDLE_REPEATED = "handle_repeated"
    # The run cannot go on.
    UNAUTHORIZED = "unauthorized"
    PAYMENT_REQUIRED = "payment_required"
    FORBIDDEN = "forbidden"
    BAD_ENDPOINT = "bad_endpoint"
    # An answer refused by a local limit (``max_response_bytes``): not retried.
    RESPONSE_TOO_LARGE = "response_too_large"
    # Not the API's doing: this machine refused (out of file descriptors, memory): the call
    # never reached a server.
    LOCAL = "local"
    # Not the API's doing: a bug in octave-bulk cost this contact's attempt.
    INTERNAL = "internal"


NEVER_SENT = frozenset({ErrorKind.CONNECT, ErrorKind.LOCAL})
"""The kinds of an attempt that never reached a server: not charged, and released to the
limiter rather than counted as an answer."""


def status_kind(status: int) -> str:
    """The kind of an HTTP error status: ``rate_limited`` for 429, else ``http_<status>``."""
    return ErrorKind.RATE_LIMITED if status == 429 else f"http_{status}"


class OctaveBulkError(Exception):
    """Base of every error octave-bulk raises on purpose."""


class ConfigError(OctaveBulkError):
    """A setting, option or config-file entry is wrong; nothing was sent."""


class InputError(OctaveBulkError):
    """The input file cannot be read as a whole (not a single bad row: those are rejects).

    Args:
        message: what is wrong, in words for the user.
        path: the input file.
        line: 1-based line where the problem starts, when known.
        field: the column or field concerned, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{field + ': ' if field else ''}{message}")


class StateError(OctaveBulkError):
    """The output or its side files cannot be used: locked by another run, unwritable, corrupt.

    Args:
        message: what is wrong, in words for the user.
        calls_sent: calls the run had sent when it failed (0: found before any call, exit 2;
            more: exit 6, calls may have been paid).
    """

    def __init__(self, message: str, *, calls_sent: int = 0) -> None:
        super().__init__(message)
        self.calls_sent = calls_sent


class ClaimRefused(StateError):
    """A contact could not be claimed: another worker holds or settled it, or this worker
    lost its lease (the shared ledger, docs/scale-out.md): it is not sent."""


@dataclass(frozen=True, slots=True)
class RefusalHints:
    """What a 429 said of the rate limit behind it, beside its ``Retry-After``: the de-facto
    ``X-RateLimit-*`` headers or the IETF ``RateLimit-*`` fields (``http/retry.refusal_hints``).
    Evidence for the limiter, never a setting (docs/design.md, "Pacing").

    Attributes:
        limit: the calls the server announces per window (None: not said).
        remaining: the calls left in the window (0: a rate's quota is spent).
        reset: seconds until the window resets.
        window: the window's length in seconds (an IETF policy's ``w=``).
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None
    window: float | None = None

    @property
    def rate_spent(self) -> bool:
        """The refusal is a rate limit's whose quota is spent (remaining 0), not a cap's."""
        return self.remaining is not None and self.remaining <= 0

    @property
    def announced_rate(self) -> float | None:
        """The limit per window, calls per second: a candidate rate to verify (None: the
        server did not say both)."""
        if self.limit is None or not self.window:
            return None
        return self.limit / self.window


class ApiError(OctaveBulkError):
    """The API answered with an error or could not be reached.

    Args:
        message: a short description; the API key (or any registered secret) a server
            echoed into it is replaced by ``***`` here (:mod:`octave_bulk.redact`), so no
            error of any path (sync, submit, poll) carries it into a file, a log or the
            terminal.
        kind: an :class:`ErrorKind`, or ``http_<status>`` (see :func:`status_kind`).
        status: the HTTP status, or None when no response arrived.
        request_id: our requestId for the contact.
        retry_after: seconds the server asked us to wait, when it said.
        hints: what a 429 said of its rate limit (None: nothing, or not a 429).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        hints: RefusalHints | None = None,
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.message, self.kind, self.status = message, kind, status
        self.request_id, self.retry_after, self.hints = request_id, retry_after, hints


class RetryableApiError(ApiError):
    """Worth another attempt: 408/425/429/5xx, timeouts, resets, truncated or invalid bodies."""

    retryable = True


class TerminalApiError(ApiError):
    """This contact failed for good (other 4xx, ``found: false``); the run goes on."""


class FatalApiError(ApiError):
    """The key, the credits or the endpoint are unusable (401/402/403, a redirect, 404/405):
    the whole run stops, resumably."""
