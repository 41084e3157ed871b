"""Log events: one line each, readable text or one JSON object, never a secret or a body.

Events go through the ``octave_bulk`` logger with their fields attached; they carry counts,
never the API key and never request or response bodies. Every formatted line is scrubbed of
the key (:mod:`octave_bulk.redact`): an error message echoed by a server cannot carry it in.

Numbers are rounded as they are written (:func:`rounded`: ``retry_after_s=0.33``, not
``0.331911563873291``). Events that come in bursts (:data:`PER_SECOND`: ``rate_limited``) are
written once per second with their ``count`` and the last one's fields: the line for a second
is written (timed at the first of them) when the next such event falls in a later second, when
another event is logged after that second, before the run's ``stop``, or at exit - so a night
of 429s is a line a second, not one line per 429.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import ConfigError
from octave_bulk.redact import scrub
from octave_bulk.state.files import open_private
from octave_bulk.utc import utc_iso

__all__ = [
    "PER_SECOND",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "flush_events",
    "log_event",
    "logger",
    "rounded",
    "start_text",
]

logger = logging.getLogger("octave_bulk")


PER_SECOND = frozenset({"rate_limited"})
"""Events written at most once a second, with their count (see the module docstring)."""


class _Burst:
    """The events of :data:`PER_SECOND` of the current second, not written yet."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[float, int, int, dict[str, Any]]] = {}
        """event -> (the time of its first in this second, level, count, the last's fields)."""

    def add(self, event: str, level: int, fields: dict[str, Any]) -> None:
        now = time.time()
        with self.lock:
            held = self.pending.get(event)
            if held is not None and int(held[0]) != int(now):
                self.write(event)
                held = None
            if held is None:
                self.pending[event] = (now, level, 1, fields)
            else:
                self.pending[event] = (held[0], max(level, held[1]), held[2] + 1, fields)

    def write(self, event: str) -> None:
        """Write an event's line, timed at the first of its second (the lock held)."""
        first, level, count, fields = self.pending.pop(event)
        fields = {"count": count, **fields}
        record = logger.makeRecord(
            logger.name, level, "", 0, event, (), None, extra={"event_fields": fields}
        )
        record.created = first
        if logger.isEnabledFor(level):
            logger.handle(record)

    def flush(self, *, ended_seconds_only: bool) -> None:
        """Write the pending lines (those of seconds already over, or all of them)."""
        now = int(time.time())
        with self.lock:
            for event, held in list(self.pending.items()):
                if not ended_seconds_only or int(held[0]) < now:
                    self.write(event)


_burst = _Burst()

_FINAL = frozenset({"stop"})
"""Events after which a run logs nothing more: every pending line is written before them."""


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event (``start``, ``heartbeat``, ``stop``, ...)."""
    if event in PER_SECOND:
        _burst.add(event, level, fields)
        return
    _burst.flush(ended_seconds_only=event not in _FINAL)  # earlier lines first
    logger.log(level, event, extra={"event_fields": fields})


def flush_events() -> None:
    """Write the events of :data:`PER_SECOND` not written yet (also done at exit)."""
    _burst.flush(ended_seconds_only=False)


atexit.register(flush_events)


def rounded(value: Any) -> Any:
    """A field as written: floats to 2 decimals (2 significant digits below 1), dicts and
    lists item by item, anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 2) if abs(value) >= 1 else float(f"{value:.2g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": utc_iso(record.created, ms=False),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **rounded(getattr(record, "event_fields", {})),
        }
        return scrub(orjson.dumps(payload, default=str).decode())


class TextFormatter(logging.Formatter):
    """``HH:MM:SS event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = rounded(getattr(record, "event_fields", {}))
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        if record.getMessage() == "start":
            return f"{clock} {start_text(fields)}"
        parts = [clock, record.getMessage()]
        for key, value in fields.items():
            if value is None:
                continue  # not known: said by its absence, never as "None"
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
