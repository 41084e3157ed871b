"""octave-bulk: run Octave's agents over thousands of contacts, fast and crash-safe.

The library API is :func:`run_batch` with :class:`Settings`, returning a :class:`RunSummary`;
the models of the API and the error tree are re-exported for callers that handle results or
errors. Names are imported on first use, so that ``octave-bulk --version`` or ``status`` do
not load the HTTP stack and the models they never touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from octave_bulk.agents.fields import OutputFormat
    from octave_bulk.agents.sequence import SequenceRequest, SequenceResponse
    from octave_bulk.errors import (
        ApiError,
        ConfigError,
        ErrorKind,
        ExitCode,
        FatalApiError,
        InputError,
        OctaveBulkError,
        RetryableApiError,
        StateError,
        StopReason,
        TerminalApiError,
    )
    from octave_bulk.run.engine import run_batch
    from octave_bulk.run.summary import RunSummary
    from octave_bulk.settings.model import Settings

__all__ = [
    "ApiError",
    "ConfigError",
    "ErrorKind",
    "ExitCode",
    "FatalApiError",
    "InputError",
    "OctaveBulkError",
    "OutputFormat",
    "RetryableApiError",
    "RunSummary",
    "SequenceRequest",
    "SequenceResponse",
    "Settings",
    "StateError",
    "StopReason",
    "TerminalApiError",
    "run_batch",
]

_HOMES = {
    "OutputFormat": "octave_bulk.agents.fields",
    "SequenceRequest": "octave_bulk.agents.sequence",
    "SequenceResponse": "octave_bulk.agents.sequence",
    "RunSummary": "octave_bulk.run.summary",
    "Settings": "octave_bulk.settings.model",
    "run_batch": "octave_bulk.run.engine",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'octave_bulk' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "octave_bulk.errors")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
