"""Every error octave-bulk raises on purpose, in one tree.

::

    OctaveBulkError
    ├── ConfigError          bad settings, options or config file         (exit 2)
    ├── InputError           unreadable input file or bad header           (exit 2)
    ├── StateError           output files that cannot be used or locked    (exit 2)
    └── ApiError             the API refused or failed (carries status, request_id)
        ├── RetryableApiError    408/425/429/5xx, transport errors, bad bodies
        └── TerminalApiError     other 4xx for one contact, or not_found
            └── FatalApiError    401/403/402: stop the whole run          (exit 3)

Misuse of the library (wrong argument types) stays ``ValueError`` / ``TypeError``.
Exit codes are mapped in ``cli.py`` only.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ApiError",
    "ConfigError",
    "FatalApiError",
    "InputError",
    "OctaveBulkError",
    "RetryableApiError",
    "StateError",
    "TerminalApiError",
]


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
    """The output or its side files cannot be used: locked by another run, unwritable, corrupt."""


class ApiError(OctaveBulkError):
    """The API answered with an error or could not be reached.

    Args:
        message: a short description (never contains the API key).
        kind: a stable code: ``http_500``, ``timeout``, ``connect``, ``invalid_body``, ...
        status: the HTTP status, or None when no response arrived.
        request_id: our requestId for the contact.
        retry_after: seconds the server asked us to wait, when it said.
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
    ) -> None:
        super().__init__(message)
        self.message, self.kind, self.status = message, kind, status
        self.request_id, self.retry_after = request_id, retry_after


class RetryableApiError(ApiError):
    """Worth another attempt: 408/425/429/5xx, timeouts, resets, truncated or invalid bodies."""

    retryable = True


class TerminalApiError(ApiError):
    """This contact failed for good (other 4xx, ``found: false``); the run goes on."""


class FatalApiError(TerminalApiError):
    """The key or account is unusable (401/403/402): the whole run stops, resumably."""
