"""Setting values written as text: a rate (``2/s``, ``90/min``, ``none``) and a budget
(``5000/day``), parsed into numbers; and the API's default address."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_BASE_URL", "parse_budget", "parse_rate"]

DEFAULT_BASE_URL = "https://app.octavehq.com"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")


_PERIODS = {"hour": 3600.0, "h": 3600.0, "day": 86400.0, "d": 86400.0, "week": 604800.0}


def parse_budget(value: str) -> tuple[int, float]:
    """``CALLS/PERIOD`` (``5000/day``; periods hour, day, week) -> (calls, seconds)."""
    calls, _, period = value.strip().partition("/")
    seconds = _PERIODS.get(period.strip().lower())
    if not calls.strip().isdigit() or int(calls) < 1 or seconds is None:
        msg = f"bad budget {value!r}: use CALLS/PERIOD with a period of hour, day or week"
        raise ValueError(msg)
    return int(calls), seconds


def parse_rate(value: str | float | None) -> float | None:
    """``2/s``, ``90/min``, ``3600/h`` or a bare number (per second) -> per second; none -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "off", ""}):
        return None
    if isinstance(value, int | float):
        per_second = float(value)
    else:
        match = _RATE.match(value.lower())
        if not match:
            msg = f"bad rate {value!r}: use e.g. 2/s, 90/min or none"
            raise ValueError(msg)
        unit = (match.group(2) or "s")[0]
        per_second = float(match.group(1)) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if per_second <= 0:
        msg = "rate must be > 0 (or none)"
        raise ValueError(msg)
    return per_second
