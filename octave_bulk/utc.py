"""UTC timestamps as ISO 8601 strings: the one formatter every file and log line uses."""

from __future__ import annotations

import time

__all__ = ["utc_iso"]

_cached: tuple[int, str] = (-1, "")  # (second, its formatted date and time): one atomic swap


def utc_iso(timestamp: float | None = None, *, ms: bool = True) -> str:
    """``2026-11-30T15:47:36.123Z`` (``ms=False``: ``2026-11-30T15:47:36Z``) for a Unix time,
    now by default. The date part is formatted once per second: this runs once per result."""
    global _cached
    now = time.time() if timestamp is None else timestamp
    second = int(now)
    cached_second, prefix = _cached
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _cached = (second, prefix)
    if not ms:
        return prefix + "Z"
    return f"{prefix}.{int((now - second) * 1000):03d}Z"
