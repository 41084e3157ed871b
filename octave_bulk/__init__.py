"""octave-bulk: run Octave's Sequence Agent over thousands of contacts, fast and crash-safe.

The library API is :func:`run_batch` with :class:`Settings`; the models of the API and the
error tree are re-exported for callers that handle results or errors.
"""

from __future__ import annotations

from octave_bulk.agents.sequence import OutputFormat, SequenceRequest, SequenceResponse
from octave_bulk.errors import (
    ApiError,
    ConfigError,
    FatalApiError,
    InputError,
    OctaveBulkError,
    RetryableApiError,
    StateError,
    TerminalApiError,
)
from octave_bulk.run.engine import EXIT_CODES, run_batch
from octave_bulk.settings import Settings

__all__ = [
    "EXIT_CODES",
    "ApiError",
    "ConfigError",
    "FatalApiError",
    "InputError",
    "OctaveBulkError",
    "OutputFormat",
    "RetryableApiError",
    "SequenceRequest",
    "SequenceResponse",
    "Settings",
    "StateError",
    "TerminalApiError",
    "run_batch",
]
