"""Prometheus textfile metrics (node_exporter's textfile collector), replaced atomically.

Written at the end of every run, in the exposition format of ``prometheus_client`` (which also
parses the previous file). ``octave_bulk_last_success_timestamp_seconds`` is set whenever a
run went through its whole input (exit 0, or 1: some contacts failed after their retries) and
carried over from the previous file when it stopped early (key, breaker, budget, signal), so an
alert on "time since the last success" fires on a night that did not complete. The file is
0644: node_exporter runs as its own user, and these numbers are not secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from octave_bulk.state.files import write_atomic

__all__ = ["write_metrics"]

_LAST_SUCCESS = "octave_bulk_last_success_timestamp_seconds"


def _previous_success(path: Path, output: str) -> float | None:
    """The last success time recorded for ``output`` in an existing file, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == _LAST_SUCCESS and sample.labels.get("output") == output:
                    return float(sample.value)
    except ValueError:  # not a metrics file we can read: start afresh
        return None
    return None


def write_metrics(path: Path, summary: Mapping[str, Any], *, output: str) -> None:
    """Write the run's metrics for ``output`` (the results file, used as a label)."""
    now = time.time()
    completed = summary.get("exit_code") in (0, 1) and not summary.get("stop_reason")
    last_success = now if completed else _previous_success(path, output)
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, ("output", *labels), registry=registry)

    gauge("octave_bulk_last_run_timestamp_seconds", "When the last run ended.").labels(output).set(
        now
    )
    if last_success is not None:
        gauge(_LAST_SUCCESS, "When a run last went through its whole input.").labels(output).set(
            last_success
        )
    fail_on = ",".join((summary.get("exit_rule") or {}).get("fail_on") or ())
    gauge(
        "octave_bulk_last_exit_code", "Exit code of the last run (fail_on: its rule).", ("fail_on",)
    ).labels(output, fail_on).set(summary.get("exit_code", -1))
    gauge("octave_bulk_run_duration_seconds", "Wall time of the last run.").labels(output).set(
        summary.get("wall_seconds", 0)
    )
    contacts = gauge("octave_bulk_contacts", "Contacts of the last run by outcome.", ("status",))
    for status, count in summary.get("counts", {}).items():
        contacts.labels(output, status).set(count)
    calls = gauge(
        "octave_bulk_api_calls",
        "Calls of the last run by HTTP status (or error kind).",
        ("code",),
    )
    for code, count in sorted(summary.get("calls_by_status", {}).items()):
        calls.labels(output, code).set(count)
    gauge(
        "octave_bulk_credits_used", "Credits used by the last run (sum of _metadata.usage)."
    ).labels(output).set(summary.get("credits", 0))
    write_atomic(path, generate_latest(registry), mode=0o644)
