"""Prometheus textfile metrics (node_exporter's textfile collector), replaced atomically.

Written at the end of every run. ``octave_bulk_last_success_timestamp_seconds`` is carried
over from the previous file when this run did not succeed, so an alert on "time since the last
success" keeps working across failed nights.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from octave_bulk.state.files import write_atomic

__all__ = ["write_metrics"]

_LAST_SUCCESS = re.compile(
    rb"^octave_bulk_last_success_timestamp_seconds\{[^}]*\} (\S+)$", re.MULTILINE
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(path: Path, summary: dict[str, Any], *, output: str) -> None:
    """Write the run's metrics for ``output`` (the results file, used as a label)."""
    now = time.time()
    last_success: float | None = now if summary.get("exit_code") == 0 else None
    if last_success is None and path.exists():
        match = _LAST_SUCCESS.search(path.read_bytes())
        last_success = float(match.group(1)) if match else None
    label = f'output="{_escape(output)}"'
    lines = [
        "# HELP octave_bulk_last_run_timestamp_seconds When the last run ended.",
        "# TYPE octave_bulk_last_run_timestamp_seconds gauge",
        f"octave_bulk_last_run_timestamp_seconds{{{label}}} {now:.3f}",
        "# HELP octave_bulk_last_success_timestamp_seconds When a run last ended with exit code 0.",
        "# TYPE octave_bulk_last_success_timestamp_seconds gauge",
    ]
    if last_success is not None:
        lines.append(f"octave_bulk_last_success_timestamp_seconds{{{label}}} {last_success:.3f}")
    lines += [
        "# HELP octave_bulk_last_exit_code Exit code of the last run.",
        "# TYPE octave_bulk_last_exit_code gauge",
        f"octave_bulk_last_exit_code{{{label}}} {summary.get('exit_code', -1)}",
        "# HELP octave_bulk_run_duration_seconds Wall time of the last run.",
        "# TYPE octave_bulk_run_duration_seconds gauge",
        f"octave_bulk_run_duration_seconds{{{label}}} {summary.get('wall_seconds', 0)}",
        "# HELP octave_bulk_contacts Contacts of the last run by outcome.",
        "# TYPE octave_bulk_contacts gauge",
    ]
    for status, count in summary.get("counts", {}).items():
        lines.append(f'octave_bulk_contacts{{{label},status="{_escape(status)}"}} {count}')
    lines += [
        "# HELP octave_bulk_api_calls Calls of the last run by HTTP status (or error kind).",
        "# TYPE octave_bulk_api_calls gauge",
    ]
    for code, count in sorted(summary.get("calls_by_status", {}).items()):
        lines.append(f'octave_bulk_api_calls{{{label},code="{_escape(code)}"}} {count}')
    lines += [
        "# HELP octave_bulk_credits_used Credits used by the last run (sum of _metadata.usage).",
        "# TYPE octave_bulk_credits_used gauge",
        f"octave_bulk_credits_used{{{label}}} {summary.get('credits', 0)}",
    ]
    # 0644: node_exporter runs as its own user, and these numbers are not secret.
    write_atomic(path, ("\n".join(lines) + "\n").encode(), mode=0o644)
