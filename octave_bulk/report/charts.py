"""The report's charts: Plotly figures made from a :class:`ReportData`.

Contract: :func:`charts` returns (title, figure) pairs in page order - throughput and calls in
flight; 429s, retries and pauses; the rate and window the limiter let through; the latency
distribution with p50/p95/p99 and the latency of each second; attempts and failures by kind;
credits per run across the output's history; rejects by reason. A chart whose data the run did
not record (no series, no calls) is left out; :func:`week_charts` gives the week view's charts
(one bar or point per run: throughput, credits and paid calls, failures, rejects and 429s, the
rate and window found); :func:`percentiles` gives the latency figures the
page prints too. Series longer than :data:`MAX_POINTS` samples are averaged over consecutive
samples, so that a night's run stays a light page; values are rounded and times are given as
epoch milliseconds on date axes, for the same reason.

Axes: counts of calls in flight (and the window) get integer ticks; the latency histogram's log
axis is ticked at 1-2-5 steps, labelled in plain milliseconds; legends stand above the plot and
margins grow to fit rotated labels; lines that may coincide (p95 and p99) are drawn widest first,
so each stays visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from octave_bulk.report.data import ReportData, WeekData
from octave_bulk.utc import utc_iso

__all__ = [
    "MAX_POINTS",
    "charts",
    "count_ticks",
    "log_ticks",
    "percentiles",
    "run_label",
    "run_seconds",
    "week_charts",
]

MAX_POINTS = 600
"""Points per series line at most (longer runs are averaged over consecutive seconds)."""

_COUNTERS = ("calls", "succeeded", "failed", "rate_limited", "retried", "timeouts")
_LAYOUT: dict[str, Any] = {
    "height": 340,
    "margin": {"l": 60, "r": 60, "t": 40, "b": 40},
    # Above the plot: below it, a legend runs into the x axis's title and tick labels.
    "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
    "xaxis": {"automargin": True},
    "yaxis": {"automargin": True},
    "template": "plotly_white",
}
_PERCENTILE_LINES = {"p99": (6, "solid"), "p95": (4, "dash"), "p50": (2, "dot")}
"""Width and dash of each percentile's line, drawn in this order (widest first)."""


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


def _times(rows: list[dict[str, Any]]) -> list[int]:
    """Epoch milliseconds (a date axis reads them as UTC; shorter than ISO text)."""
    return [round(row["at"] * 1000) for row in rows]


def _values(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    return [None if row[key] is None else round(row[key], 3) for row in rows]


def count_ticks(highest: float) -> dict[str, Any]:
    """An axis of counts (calls in flight, a window): integer ticks from 0, about 5 of them."""
    top = max(1, math.ceil(highest))
    step = 1
    while top / step > 6:
        step = next(s * 10**e for e in range(10) for s in (1, 2, 5) if s * 10**e > step)
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "range": [0, top * 1.05]}


def log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Tick values at 1-2-5 steps covering [low, high], and their labels in plain numbers
    (``500``, ``1,000``, ``2,000``: not Plotly's ``6 7 8 9 1000 2 3``)."""
    values = [
        step * 10.0**exponent
        for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
        for step in (1, 2, 5)
    ]
    inside = [v for v in values if low / 1.5 <= v <= high * 1.5] or [low, high]
    return inside, [f"{v:,.0f}" if v >= 1 else f"{v:g}" for v in inside]


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
            trace = go.Scatter(x=x, y=_values(rows, key), name=name, line=line)
            figure.add_trace(trace, secondary_y=axis)
        figure.update_yaxes(title_text=titles[axis], rangemode="tozero", secondary_y=axis)
    counts = [r[key] or 0 for r in rows for key in right]
    figure.update_yaxes(secondary_y=True, showgrid=False, **count_ticks(max(counts, default=1)))
    figure.update_xaxes(type="date")
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
    figure.add_trace(go.Bar(x=x, y=_values(rows, "rate_limited"), name="429s / s"))
    figure.add_trace(go.Scatter(x=x, y=_values(rows, "retried"), name="retries / s"))
    figure.add_trace(go.Scatter(x=x, y=_values(rows, "failed"), name="contacts failed / s"))
    figure.add_trace(
        go.Scatter(
            x=x,
            y=_values(rows, "paused"),
            name="pool paused (1: yes)",
            line={"shape": "hv", "dash": "dot"},
            fill="tozeroy",
        )
    )
    figure.update_yaxes(title_text="per second", rangemode="tozero")
    figure.update_xaxes(type="date")
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
    centers = [round(math.sqrt(a * b), 3) for a, b in zip(edges, edges[1:], strict=False)]
    figure = go.Figure(
        go.Scatter(
            x=centers, y=counts, name="successful calls", line={"shape": "hvh"}, fill="tozeroy"
        )
    )
    found = percentiles(latencies_ms)
    for name, (width, dash) in _PERCENTILE_LINES.items():
        # A trace, not a shape: traces take data coordinates on a log axis too.
        value = found[name]
        figure.add_trace(
            go.Scatter(
                x=[value, value],
                y=[0, max(counts)],
                name=f"{name} {_ms(value)}",
                mode="lines",
                line={"dash": dash, "width": width},
            )
        )
    ticks, labels = log_ticks(low, high)
    figure.update_xaxes(title_text="latency, ms", type="log", tickvals=ticks, ticktext=labels)
    figure.update_yaxes(title_text="calls")
    return figure.update_layout(**_LAYOUT)


def _latency_over_time(rows: list[dict[str, Any]]) -> go.Figure:
    x = _times(rows)
    figure = go.Figure()
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        y = _values(rows, name)
        figure.add_trace(go.Scatter(x=x, y=y, name=name.replace("_ms", ""), mode="lines+markers"))
    figure.update_yaxes(title_text="latency of the second's successes, ms", rangemode="tozero")
    figure.update_xaxes(type="date")
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
    highest = max([*failed_attempts.values(), *data.failures.values()], default=1)
    figure.update_yaxes(title_text="count", **count_ticks(highest))
    return figure.update_layout(barmode="group", **_LAYOUT)


def _credits(data: ReportData) -> go.Figure:
    runs = data.runs
    labels = [run_label(r) for r in runs]
    colors = ["#d62728" if r["run_id"] == data.run["run_id"] else "#1f77b4" for r in runs]
    figure = go.Figure(
        go.Bar(x=labels, y=[r["credits"] for r in runs], marker_color=colors, name="credits")
    )
    figure.add_trace(go.Scatter(x=labels, y=[r["paid_calls"] for r in runs], name="paid calls"))
    figure.update_yaxes(title_text="credits, paid calls", rangemode="tozero")
    figure.update_xaxes(type="category", tickangle=-30)
    return figure.update_layout(**_LAYOUT)


def run_label(run: dict[str, Any]) -> str:
    """A run's short name on a chart: its start (UTC, to the minute) and its id."""
    return f"{utc_iso(run['started_at'], ms=False)[5:16].replace('T', ' ')} {run['run_id']}"


def _rejects(data: ReportData) -> go.Figure:
    reasons = sorted(data.rejects, key=lambda reason: data.rejects[reason])
    figure = go.Figure(
        go.Bar(y=reasons, x=[data.rejects[r] for r in reasons], orientation="h", name="rows")
    )
    figure.update_xaxes(title_text="input rows rejected", **count_ticks(max(data.rejects.values())))
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


def run_seconds(run: dict[str, Any]) -> float:
    """A run's wall time so far (to its end, or its last update when it has none)."""
    return float(max((run["finished_at"] or run["updated_at"]) - run["started_at"], 1e-3))


def _per_run(
    runs: list[dict[str, Any]], bars: dict[str, str], title: str, *, counts: bool = False
) -> go.Figure:
    """One bar per run for each of ``bars`` (a run's key -> the trace's name)."""
    labels = [run_label(run) for run in runs]
    figure = go.Figure()
    for key, name in bars.items():
        figure.add_trace(go.Bar(x=labels, y=[run[key] or 0 for run in runs], name=name))
    figure.update_yaxes(title_text=title, rangemode="tozero")
    if counts:
        highest = max((run[key] or 0 for run in runs for key in bars), default=1)
        figure.update_yaxes(**count_ticks(highest))
    figure.update_xaxes(type="category", tickangle=-30)
    return figure.update_layout(barmode="group", **_LAYOUT)


def week_charts(data: WeekData) -> list[tuple[str, go.Figure]]:
    """The week view's charts, in order (see the module docstring)."""
    runs = [
        run
        | {"throughput": round(run["succeeded"] / run_seconds(run), 3)}
        | {"rate": (run.get("limits") or {}).get("rate")}
        | {"window": (run.get("limits") or {}).get("window")}
        for run in data.runs
    ]
    labels = [run_label(run) for run in runs]
    credits = _per_run(runs, {"credits": "credits"}, "credits, paid calls")
    credits.add_trace(go.Scatter(x=labels, y=[r["paid_calls"] for r in runs], name="paid calls"))
    troubles = {"failed": "contacts failed", "rejected": "rows rejected", "rate_limited": "429s"}
    limits = make_subplots(specs=[[{"secondary_y": True}]])
    limits.add_trace(
        go.Scatter(x=labels, y=[r["rate"] for r in runs], name="rate found (calls/s)"),
        secondary_y=False,
    )
    limits.add_trace(
        go.Scatter(x=labels, y=[r["window"] for r in runs], name="window found (in flight)"),
        secondary_y=True,
    )
    limits.update_yaxes(title_text="calls / s", rangemode="tozero", secondary_y=False)
    windows = [r["window"] or 0 for r in runs]
    limits.update_yaxes(title_text="in flight", secondary_y=True, **count_ticks(max(windows)))
    limits.update_xaxes(type="category", tickangle=-30)
    limits.update_layout(**_LAYOUT)
    return [
        ("Throughput per run", _per_run(runs, {"throughput": "successes / s"}, "per second")),
        ("Credits and paid calls per run", credits),
        ("Failures, rejects and 429s per run", _per_run(runs, troubles, "count", counts=True)),
        ("Limits found per run", limits),
    ]
