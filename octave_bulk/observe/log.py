"""Log events: one line each, readable text or one JSON object, never a secret or a body.

Events go through the ``octave_bulk`` logger with their fields attached; they carry counts,
never the API key and never request or response bodies. Every formatted line is scrubbed of
the key (:mod:`octave_bulk.redact`): an error message echoed by a server cannot carry it in.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import ConfigError
from octave_bulk.redact import scrub
from octave_bulk.state.files import open_private
from octave_bulk.utc import utc_iso

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_event",
    "logger",
    "start_text",
]

logger = logging.getLogger("octave_bulk")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event (``start``, ``heartbeat``, ``stop``, ...)."""
    logger.log(level, event, extra={"event_fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": utc_iso(record.created, ms=False),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **getattr(record, "event_fields", {}),
        }
        return scrub(orjson.dumps(payload, default=str).decode())


class TextFormatter(logging.Formatter):
    """``HH:MM:SS event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "event_fields", {})
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        if record.getMessage() == "start":
            return f"{clock} {start_text(fields)}"
        parts = [clock, record.getMessage()]
        for key, value in fields.items():
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items() if v)
            parts.append(
                f"{key}={value}" if not isinstance(value, str) or " " not in value else value
            )
        return scrub(" ".join(str(p) for p in parts))


_RESUME_NOTES = (
    ("already_done", "already done"),
    ("outcome_unknown", "in flight when the last run died (sent again)"),
    ("jobs_awaited", "async jobs awaited"),
    ("skipped_unread", "settled rows skipped unread"),
    ("repaired_bytes", "bytes of a torn last line cut off"),
)


def start_text(fields: dict[str, Any]) -> str:
    """The ``start`` event for a person: what is read, where it goes, what a resume found,
    then the column mapping (only what is not zero)."""
    how = ", ".join(str(fields[k]) for k in ("input_format", "encoding") if fields.get(k))
    lines = [
        f"start: {fields.get('input')}{f' ({how})' if how else ''} -> {fields.get('output')}"
        f" (run {fields.get('run_id')})"
    ]
    resume = [f"{fields[k]:,} {text}" for k, text in _RESUME_NOTES if fields.get(k)]
    if resume:
        lines.append("  resuming: " + ", ".join(resume))
    if fields.get("mapping"):
        lines.append("  " + str(fields["mapping"]).replace("\n", "\n  "))
    return "\n".join(lines)


def configure_logging(log_format: str = "text", log_file: str | None = None) -> None:
    """Send ``octave_bulk`` events to stderr (and a file), as text or JSON lines."""
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in logger.handlers:
        handler.close()  # a log file of an earlier configuration (tests, library use)
    logger.handlers.clear()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:  # created 0600 like every other file of a run; FileHandler appends to it
            os.close(open_private(Path(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        except OSError as exc:
            raise ConfigError(f"{log_file}: cannot open the log file: {exc.strerror}") from None
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
