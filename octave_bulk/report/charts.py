"""The report's charts: Plotly figures made from a :class:`ReportData`.

Contract: :func:`charts` returns (title, figure) pairs in page order - throughput and calls in
flight; 429s, retries and pauses; the rate and window the limiter let through; the latency
distribution with p50/p95/p99 and the latency of each second; attempts and failures by kind;
credits per run across the output's history; rejects by reason. A chart whose data the run did
not record (no series, no calls) is left out; :func:`percentiles` gives the latency figures the
page prints too. Series longer than :data:`MAX_POINTS` samples are averaged over consecutive
samples, so that a night's run stays a light page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from octave_bulk.report.data import ReportData
from octave_bulk.utc import utc_iso

__all__ = ["MAX_POINTS", "charts", "percentiles"]

MAX_POINTS = 2000
"""Points per series line at most (longer runs are averaged over consecutive seconds)."""

_COUNTERS = ("calls", "succeeded", "failed", "rate_limited", "retried", "timeouts")
_LAYOUT: dict[str, Any] = {
    "height": 340,
    "margin": {"l": 60, "r": 60, "t": 30, "b": 40},
    "legend": {"orientation": "h", "y": -0.18},
    "template": "plotly_white",
}


def percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of the latencies, ms (empty without any)."""
    if not latencies_ms:
        return {}
    ordered = sorted(latencies_ms)
    last = len(ordered) - 1
    return {
        f"p{q}": ordered[min(last, math.ceil(q / 100 * len(ordered)) - 1)] for q in (50, 95, 99)
    }


def _per_second(data: ReportData) -> list[dict[str, Any]]:
    """The samples as rates (per second since the previous sample), averaged down to at most
    :data:`MAX_POINTS` points."""
    previous: dict[str, Any] = dict.fromkeys(_COUNTERS, 0) | {"at": data.run["started_at"]}
    rows: list[dict[str, Any]] = []
    for sample in data.series:
        seconds = max(sample["at"] - previous["at"], 1e-3)
        row = {name: (sample[name] - previous[name]) / seconds for name in _COUNTERS}
        row |= {"at": sample["at"], "seconds": seconds}
        row |= {k: sample[k] for k in ("in_flight", "retrying", "rate", "window", "paused")}
        row |= {k: sample[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
        if rows and seconds < 0.9:  # the last sample, at the end: a fraction of a second
            rows[-1] = _mean([rows[-1], row])
        else:
            rows.append(row)
        previous = sample
    size = math.ceil(len(rows) / MAX_POINTS) if rows else 1
    return rows if size == 1 else [_mean(rows[i : i + size]) for i in range(0, len(rows), size)]


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive rows as one: rates weighted by their seconds, the last limits, any pause."""
    seconds = sum(row["seconds"] for row in rows)
    merged = {name: sum(r[name] * r["seconds"] for r in rows) / seconds for name in _COUNTERS}
    merged |= {"at": rows[-1]["at"], "seconds": seconds, "rate": rows[-1]["rate"]}
    merged |= {"window": rows[-1]["window"], "paused": max(r["paused"] for r in rows)}
    for name in ("in_flight", "retrying"):
        merged[name] = sum(r[name] for r in rows) / len(rows)
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        values = [r[name] for r in rows if r[name] is not None]
        merged[name] = max(values) if values else None
    return merged


def _times(rows: list[dict[str, Any]]) -> list[str]:
    return [utc_iso(row["at"]) for row in rows]


def _two_axes(
    rows: list[dict[str, Any]],
    left: dict[str, str],
    right: dict[str, str],
    titles: tuple[str, str],
    line: dict[str, str] | None = None,
) -> go.Figure:
    """Lines over time: ``left`` and ``right`` map a row's key to its trace's name."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    x = _times(rows)
    for axis, traces in ((False, left), (True, right)):
        for key, name in traces.items():
            trace = go.Scatter(x=x, y=[r[key] for r in rows], name=name, line=line)
            figure.add_trace(trace, secondary_y=axis)
        figure.update_yaxes(title_text=titles[axis], rangemode="tozero", secondary_y=axis)
    return figure.update_layout(**_LAYOUT)


def _throughput(rows: list[dict[str, Any]]) -> go.Figure:
    return _two_axes(
        rows,
        {"succeeded": "succeeded / s (as made durable)", "calls": "calls sent / s"},
        {"in_flight": "calls in flight"},
        ("per second", "in flight"),
    )


def _refusals(rows: list[dict[str, Any]]) -> go.Figure:
    x = _times(rows)
    figure = go.Figure()
    figure.add_trace(go.Bar(x=x, y=[r["rate_limited"] for r in rows], name="429s / s"))
    figure.add_trace(go.Scatter(x=x, y=[r["retried"] for r in rows], name="retries / s"))
    figure.add_trace(go.Scatter(x=x, y=[r["failed"] for r in rows], name="contacts failed / s"))
    figure.add_trace(
        go.Scatter(
            x=x,
            y=[r["paused"] for r in rows],
            name="pool paused (1: yes)",
            line={"shape": "hv", "dash": "dot"},
            fill="tozeroy",
        )
    )
    figure.update_yaxes(title_text="per second", rangemode="tozero")
    return figure.update_layout(**_LAYOUT)


def _limits(rows: list[dict[str, Any]]) -> go.Figure:
    return _two_axes(
        rows,
        {"rate": "rate let through (calls/s)"},
        {"window": "window (calls in flight)"},
        ("calls / s", "in flight"),
        line={"shape": "hv"},
    )


def _latency(latencies_ms: Sequence[float]) -> go.Figure:
    """A histogram over log-spaced bins (a long tail stays readable), p50/p95/p99 marked."""
    low, high = max(min(latencies_ms), 0.1), max(max(latencies_ms), 0.2)
    edges = [low * (high / low) ** (i / 40) for i in range(41)]
    counts = [0] * 40
    for value in latencies_ms:
        step = math.log(max(value, low) / low) / math.log(high / low) * 40 if high > low else 0
        counts[min(39, int(step))] += 1
    centers = [math.sqrt(a * b) for a, b in zip(edges, edges[1:], strict=False)]
    figure = go.Figure(
        go.Scatter(
            x=centers, y=counts, name="successful calls", line={"shape": "hvh"}, fill="tozeroy"
        )
    )
    for name, value in percentiles(latencies_ms).items():
        # A trace, not a shape: traces take data coordinates on a log axis too.
        figure.add_trace(
            go.Scatter(
                x=[value, value],
                y=[0, max(counts)],
                name=f"{name} {_ms(value)}",
                mode="lines",
                line={"dash": "dash"},
            )
        )
    figure.update_xaxes(title_text="latency, ms", type="log")
    figure.update_yaxes(title_text="calls")
    return figure.update_layout(**_LAYOUT)


def _latency_over_time(rows: list[dict[str, Any]]) -> go.Figure:
    x = _times(rows)
    figure = go.Figure()
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        y = [r[name] for r in rows]
        figure.add_trace(go.Scatter(x=x, y=y, name=name.replace("_ms", ""), mode="lines+markers"))
    figure.update_yaxes(title_text="latency of the second's successes, ms", rangemode="tozero")
    return figure.update_layout(**_LAYOUT)


def _by_kind(data: ReportData) -> go.Figure:
    failed_attempts = {k: v for k, v in data.attempts.items() if k != "success"}
    kinds = sorted(set(failed_attempts) | set(data.failures))
    figure = go.Figure()
    figure.add_trace(
        go.Bar(x=kinds, y=[failed_attempts.get(k, 0) for k in kinds], name="failed attempts")
    )
    figure.add_trace(
        go.Bar(x=kinds, y=[data.failures.get(k, 0) for k in kinds], name="contacts failed")
    )
    figure.update_yaxes(title_text="count")
    return figure.update_layout(barmode="group", **_LAYOUT)


def _credits(data: ReportData) -> go.Figure:
    runs = data.runs
    labels = [f"{utc_iso(r['started_at'], ms=False)} {r['run_id']}" for r in runs]
    colors = ["#d62728" if r["run_id"] == data.run["run_id"] else "#1f77b4" for r in runs]
    figure = go.Figure(
        go.Bar(x=labels, y=[r["credits"] for r in runs], marker_color=colors, name="credits")
    )
    figure.add_trace(go.Scatter(x=labels, y=[r["paid_calls"] for r in runs], name="paid calls"))
    figure.update_yaxes(title_text="credits, paid calls", rangemode="tozero")
    return figure.update_layout(**_LAYOUT)


def _rejects(data: ReportData) -> go.Figure:
    reasons = sorted(data.rejects, key=lambda reason: data.rejects[reason])
    figure = go.Figure(
        go.Bar(y=reasons, x=[data.rejects[r] for r in reasons], orientation="h", name="rows")
    )
    figure.update_xaxes(title_text="input rows rejected")
    return figure.update_layout(**_LAYOUT)


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def charts(data: ReportData) -> list[tuple[str, go.Figure]]:
    """The page's charts, in order (see the module docstring)."""
    rows = _per_second(data)
    found: list[tuple[str, go.Figure]] = []
    if rows:
        found.append(("Throughput and calls in flight", _throughput(rows)))
        found.append(("429s, retries, failures and pauses", _refusals(rows)))
        found.append(("Rate and window the limiter let through", _limits(rows)))
    if data.latencies_ms:
        found.append(("Latency of successful calls", _latency(data.latencies_ms)))
    if any(row["p50_ms"] is not None for row in rows):
        found.append(("Latency over time", _latency_over_time(rows)))
    if any(kind != "success" for kind in data.attempts) or data.failures:
        found.append(("Failed attempts and failed contacts by kind", _by_kind(data)))
    found.append(("Credits and paid calls per run of this output", _credits(data)))
    if data.rejects:
        found.append(("Input rows rejected, by reason", _rejects(data)))
    return found
