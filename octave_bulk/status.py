"""``status``: what a run has done so far, read from its files (safe while a run is going).

Nothing is modified: a torn last line (a run writing right now, or a killed one) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.agents.sequence import credits_of
from octave_bulk.state.checkpoint import InflightSlots, OutputPaths, iter_ndjson, line_request_id

__all__ = ["read_status"]


def _credits(line: bytes) -> float:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return credits_of(orjson.loads(line)["response"]["_metadata"].get("usage"))
    return 0.0


def _lock_holder(paths: OutputPaths) -> str | None:
    """Who holds the run lock, or None when no run is going."""
    if not paths.lock.exists():
        return None
    import fcntl

    fd = os.open(paths.lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return paths.lock.read_text(encoding="utf-8", errors="replace").strip() or "a run"
    finally:
        os.close(fd)
    return None


def read_status(output: str | Path) -> dict[str, Any]:
    """Counts from the results, errors and rejects files plus the last run's summary."""
    paths = OutputPaths.for_output(output)
    done: set[str] = set()
    credits = 0.0
    if paths.results.exists():
        with open(paths.results, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written, or torn by a kill
                rid = line_request_id(line)
                if rid is not None:
                    done.add(rid)
                credits += _credits(line)
    last_error: dict[str, bool] = {}
    for record in iter_ndjson(paths.errors):
        rid = record.get("requestId")
        if isinstance(rid, str) and rid not in done:
            last_error[rid] = bool((record.get("error") or {}).get("retryable"))
    rejects = sum(1 for _ in iter_ndjson(paths.rejects))
    summary = None
    if paths.summary.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    holder = _lock_holder(paths)
    leftovers = [rid for rid in InflightSlots.leftovers(paths.inflight) if rid not in done]
    return {
        "output": str(paths.results),
        "running": holder,
        "succeeded": len(done),
        "failed_retryable": sum(1 for r in last_error.values() if r),
        "failed_permanent": sum(1 for r in last_error.values() if not r),
        "rejected": rejects,
        "credits": credits,
        "in_flight": len(leftovers) if holder else 0,
        "outcome_unknown": 0 if holder else len(leftovers),
        "last_run": summary,
    }
