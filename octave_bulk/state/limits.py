"""Remembered limits: what the server sustained, kept next to the output for the next run.

``OUT.limits.json`` maps a key (the base URL and the agent) to the rate and the in-flight
window at which the last run settled, when it met a limit at all, and the length of the rate
window it learnt (``period``: a per-minute quota's 60 s, so that the next run does not read the
quota's exhaustion as a slower rate; files written before it have none, and read the same). The next run on the same
output hands them to its limiter factory, which decides where to start
(``limits/factory.py``: the default clamps them by ``--rate`` / ``--concurrency`` when they
are set - a ceiling never turns the memory off - and verifies them like any other setting: a
remembered rate that meets no 429 is probed up, a remembered window is a suspected cap;
docs/design.md, "Pacing"). :meth:`RememberedLimits.keep` stores what a run's limiter reports
at its end. Unreadable or foreign content is ignored (a fresh search), never an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.limits.base import LimitsReport
from octave_bulk.state.files import write_json_atomic
from octave_bulk.utc import utc_iso

__all__ = ["RememberedLimits", "limits_key", "to_remember"]


def limits_key(base_url: str, agent: str) -> str:
    """The key limits are remembered under: one per API and agent."""
    return f"{base_url.rstrip('/')} {agent}"


def to_remember(found: LimitsReport) -> tuple[float | None, int | None, float | None]:
    """What a limiter's report leaves for the next run (the one rule, for this file and the
    shared ledger's ``ob_limit``): (rate, window, period), None each where nothing held - a
    limit met in this run, or one remembered that still held (its setting now)."""
    rate = found.settled_rate
    if rate is None and found.start_rate is not None:
        rate = found.held_rate
    rate = None if rate is None else round(rate, 3)
    window = found.window if found.concurrency_limited_at else None
    if window is None and found.start_window is not None:
        window = found.window
    period = found.period if rate is not None else None  # a window's, with its rate
    return rate, window, period


class RememberedLimits:
    """The limits file of one output."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data = orjson.loads(self.path.read_bytes())
            if isinstance(data, dict):
                return data
        return {}

    def get(self, key: str) -> tuple[float | None, int | None]:
        """The remembered (rate, window) for a key; None for what is not known."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None, None
        rate, window = entry.get("rate"), entry.get("window")
        rate = float(rate) if isinstance(rate, int | float) and rate > 0 else None
        window = window if isinstance(window, int) and window > 0 else None
        return rate, window

    def period(self, key: str) -> float | None:
        """The rate window's length remembered for a key, seconds (None: none known)."""
        entry = self._read().get(key)
        period = entry.get("period") if isinstance(entry, dict) else None
        return float(period) if isinstance(period, int | float) and period > 0 else None

    def put(
        self, key: str, rate: float | None, window: int | None, period: float | None = None
    ) -> None:
        """Remember what held (None: no such limit met); other keys are kept."""
        data = self._read()
        entry: dict[str, Any] = {"rate": rate, "window": window, "saved_at": utc_iso(ms=False)}
        if period is not None:
            entry["period"] = round(period, 3)
        data[key] = entry
        write_json_atomic(self.path, data)

    def keep(self, key: str, found: LimitsReport) -> dict[str, Any]:
        """Store the limits a run settled at, for the next run: a limit met in this run, or
        one remembered that still held (its setting now). Returns the summary's ``limits``,
        with the flags that would start there."""
        rate, window, period = to_remember(found)
        if rate is not None or window is not None:
            self.put(key, rate, window, period)
        flags = []
        if rate is not None:
            flags.append(f"--rate {rate:g}/s")
        if window is not None:
            flags.append(f"--concurrency {window}")
        return {
            **found.summary(),
            "started_from_memory": bool(found.start_rate or found.start_window),
            "suggested_flags": " ".join(flags) or None,
        }
