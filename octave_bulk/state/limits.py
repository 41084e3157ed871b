"""Remembered limits: what the server sustained, kept next to the output for the next run.

``OUT.limits.json`` maps a key (the base URL and the agent) to the rate and the in-flight
window at which the last run settled, when it met a limit at all. The next run on the same
output starts there (:func:`start_limits`: clamped by ``--rate`` / ``--concurrency`` when
they are set, from a flag, the environment or a config file - a ceiling never turns the memory
off), and verifies it like any other setting: a remembered rate that meets no 429 is probed up, a remembered window is a
suspected cap (docs/design.md, "Pacing"). A memory never makes a run slower than none would.
Unreadable or foreign content is ignored (a fresh search), never an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.state.files import write_json_atomic
from octave_bulk.utc import utc_iso

__all__ = ["RememberedLimits", "limits_key", "start_limits"]


def limits_key(base_url: str, agent: str) -> str:
    """The key limits are remembered under: one per API and agent."""
    return f"{base_url.rstrip('/')} {agent}"


def start_limits(
    rate_ceiling: float | None,
    window_ceiling: int | None,
    remembered: tuple[float | None, int | None],
) -> tuple[float | None, int | None]:
    """Where a run starts (the one rule, for the run and its forecast): the remembered rate
    and window, each clamped by its ceiling when one is set; None where nothing is remembered
    (the run starts at the ceiling, or searches)."""
    rate, window = remembered
    if rate is not None and rate_ceiling is not None:
        rate = min(rate, rate_ceiling)
    if window is not None and window_ceiling is not None:
        window = min(window, window_ceiling)
    return rate, window


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

    def put(self, key: str, rate: float | None, window: int | None) -> None:
        """Remember what held (None: no such limit met); other keys are kept."""
        data = self._read()
        data[key] = {"rate": rate, "window": window, "saved_at": utc_iso(ms=False)}
        write_json_atomic(self.path, data)
