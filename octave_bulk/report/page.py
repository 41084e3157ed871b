"""The report's page: one self-contained HTML file, readable offline.

Contract: :func:`render` turns a :class:`ReportData` into the page's HTML: how the run ended
(exit code, stop reason and its detail), its counts, throughput and latency, the charts
(``report/charts.py``), the failures by kind and the rejects by reason with examples, and the
output's runs. Plotly's JavaScript is embedded once - its *basic* partial bundle
(``plotly-basic.min.js``, scatter and bar traces: all the report draws, 1.2 MB against the full
bundle's 4.8 MB; docs/design.md, "The report") - so no CDN, no network, nothing loaded from
anywhere. A script error while drawing
is shown at the top of the page (``#report-errors``), not lost. Text from the input and the
errors file is HTML-escaped. :func:`write_report` writes the page atomically.
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import plotly.io

from octave_bulk.errors import ErrorKind
from octave_bulk.report.charts import charts, percentiles, run_seconds, week_charts
from octave_bulk.report.data import ReportData, WeekData
from octave_bulk.state.files import write_atomic
from octave_bulk.utc import utc_iso

__all__ = ["PLOTLY_BUNDLE", "plotly_js", "render", "render_week", "write_report", "write_week"]

PLOTLY_BUNDLE = "plotly-basic.min.js"
"""Plotly's basic partial bundle, shipped beside this module (npm ``plotly.js-basic-dist-min``
at the plotly.js version the ``plotly`` package ships; docs/design.md says how to update it)."""

_STOPS = {
    "fatal": "the key, the credits or the endpoint were refused",
    "breaker": "the API kept failing (the breaker tripped)",
    "max_calls": "--max-calls was reached",
    "budget": "the --budget was spent",
    "interrupted": "stopped by a signal (Ctrl-C, SIGTERM)",
    "input_error": "the input could not be read on",
    "ledger": "the ledger could not be written",
    "credits": "the credits remaining were spent",
    "killed": (
        "killed before its end (kill -9, a crash, a power cut); its counts were taken from the "
        "ledger and the files by the next run"
    ),
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
th { background: #f4f4f4; }
.chart { min-height: 340px; }
#report-errors { color: #b00; white-space: pre-wrap; }
.ok { color: #080; } .stopped { color: #b00; }
"""

# Errors while drawing go onto the page (and so into any browser's DOM), not only the console.
_CATCH_ERRORS = """
window.reportErrors = [];
window.addEventListener("error", function (event) {
  window.reportErrors.push(String(event.message));
  var box = document.getElementById("report-errors");
  if (box) { box.textContent = window.reportErrors.join("\\n"); }
});
"""

_COUNT_CHARTS = """
document.body.setAttribute("data-charts-drawn",
  String(document.querySelectorAll(".chart .main-svg").length > 0 ?
    document.querySelectorAll(".chart.js-plotly-plot").length : 0));
if (window.reportErrors.length) {
  document.getElementById("report-errors").textContent = window.reportErrors.join("\\n");
}
"""


@cache
def plotly_js() -> str:
    """The JavaScript every page embeds (read once per process)."""
    return resources.files("octave_bulk.report").joinpath(PLOTLY_BUNDLE).read_text("utf-8")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ending(data: ReportData) -> str:
    """How the run ended, in words."""
    run, summary = data.run, data.summary or {}
    if run["finished_at"] is None:
        return (
            f'<p class="stopped">No end recorded: the run is still going, or was killed '
            f"(last update {_e(utc_iso(run['updated_at'], ms=False))}). Run the same command "
            "to resume.</p>"
        )
    reason = run["stop_reason"]
    words = _STOPS.get(reason, reason) if reason else "went through its whole input"
    css = "stopped" if reason else "ok"
    ended = "Killed" if reason == "killed" else f"Exit {run['exit_code']}"
    lines = [f'<p class="{css}"><b>{_e(ended)}</b>: {_e(words)}.</p>']
    rule = summary.get("exit_rule") or {}
    if rule.get("reason") and not reason:
        lines.append(f"<p>exit rule: {_e(rule['reason'])}</p>")
    lines += [
        f"<p>{_e(name.replace('_', ' '))}: {_e(summary[name])}</p>"
        for name in ("fatal_error", "stop_detail", "input_error")
        if summary.get(name)
    ]
    return "".join(lines)


def _overview(data: ReportData) -> str:
    run = data.run
    end = run["finished_at"] or run["updated_at"]
    seconds = max(end - run["started_at"], 1e-3)
    latency = percentiles(data.latencies_ms)
    rows: list[tuple[Any, ...]] = [
        ("output", data.output),
        ("run", run["run_id"]),
        ("started (UTC)", utc_iso(run["started_at"], ms=False)),
        ("ended (UTC)", utc_iso(run["finished_at"], ms=False) if run["finished_at"] else "-"),
        ("wall time", f"{seconds:,.1f} s"),
        ("rows read", run["read"]),
        ("succeeded", run["succeeded"]),
        ("failed", run["failed"]),
        ("rejected (incl. duplicates)", run["rejected"]),
        ("already done (skipped)", run["skipped_done"]),
        ("paid calls", run["paid_calls"]),
        ("credits", run["credits"]),
        ("throughput", f"{run['succeeded'] / seconds:,.2f} successes/s"),
        ("retries", data.retries),
        ("429s", data.attempts.get(ErrorKind.RATE_LIMITED) or _last(data, "rate_limited")),
    ]
    rows += [(f"latency {name}", f"{value:,.0f} ms") for name, value in latency.items()]
    limits = run.get("limits") or {}
    if limits.get("suggested_flags"):
        rows.append(("limits found", limits["suggested_flags"]))
    return _table(("", ""), rows)


def _last(data: ReportData, counter: str) -> int:
    """A counter's last sampled value (0 without samples)."""
    return int(data.series[-1][counter]) if data.series else 0


def _examples(counts: dict[str, int], examples: dict[str, list[Any]], what: str) -> str:
    rows = []
    for key, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        shown = "; ".join(
            e
            if isinstance(e, str)
            else f"line {e['line']}{', ' + str(e['field']) if e['field'] else ''}: {e['message']}"
            for e in examples.get(key, [])
        )
        rows.append((key, count, shown))
    return _table((what, "count", "examples"), rows) if rows else "<p>None.</p>"


def _runs(data: ReportData) -> str:
    rows = [
        (
            utc_iso(r["started_at"], ms=False),
            r["run_id"],
            r["paid_calls"],
            r["succeeded"],
            r["failed"],
            r["credits"],
            "-" if r["finished_at"] is None else r["exit_code"],
            r["stop_reason"] or "",
        )
        for r in reversed(data.runs)
    ]
    header = ("started (UTC)", "run", "paid calls", "ok", "failed", "credits", "exit", "stop")
    return _table(header, rows)


def _charts(found: list[tuple[str, Any]]) -> str:
    """The charts' sections: a title and a div each, drawn by the page's one Plotly script."""
    sections = []
    for number, (title, figure) in enumerate(found):
        div = plotly.io.to_html(
            figure,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"chart-{number}",
            config={"displaylogo": False, "responsive": True},
        )
        sections.append(f"<h2>{_e(title)}</h2>{div}")
    # plotly.io.to_html names its divs "plotly-graph-div"; ours are also "chart"s.
    return "".join(sections).replace('class="plotly-graph-div"', 'class="plotly-graph-div chart"')


def _page(title: str, body: str) -> str:
    """A whole page: Plotly embedded, errors caught onto the page, the charts counted."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{_STYLE}</style>
<script>{_CATCH_ERRORS}</script>
<script>{plotly_js()}</script>
</head><body>
<h1>{_e(title)}</h1>
<pre id="report-errors"></pre>
{body}
<script>{_COUNT_CHARTS}</script>
</body></html>
"""


def render(data: ReportData) -> str:
    """The whole page (see the module docstring)."""
    body = _charts(charts(data))
    if not data.series:
        body = ("<p>No time series was recorded for this run (series = false, "
                "or it ended within its first seconds).</p>") + body  # fmt: skip
    title = f"octave-bulk report: {data.output.name}, run {data.run['run_id']}"
    return _page(
        title,
        f"""{_ending(data)}
{_overview(data)}
{body}
<h2>Contacts failed, by kind: examples</h2>
{_examples(dict(data.failures), dict(data.failure_examples), "kind")}
<h2>Input rows rejected, by reason: examples</h2>
{_examples(dict(data.rejects), dict(data.reject_examples), "reason")}
<h2>Runs of this output</h2>
{_runs(data)}""",
    )


def render_week(data: WeekData, pages: dict[str, str]) -> str:
    """The week view: one row and one bar per run, each run linked to its page (``pages``:
    run id -> the page's address relative to this one)."""
    header = ("started (UTC)", "run", "read", "succeeded", "failed", "rejected", "paid calls",
              "credits", "successes/s", "429s", "limits found", "exit")  # fmt: skip
    rows = []
    for run in reversed(data.runs):
        link = pages.get(run["run_id"])
        name = f'<a href="{_e(link)}">{_e(run["run_id"])}</a>' if link else _e(run["run_id"])
        ended = "-" if run["finished_at"] is None else run["exit_code"]
        counts = [
            run["read"], run["succeeded"], run["failed"], run["rejected"], run["paid_calls"],
            run["credits"], f"{run['succeeded'] / run_seconds(run):,.2f}", run["rate_limited"],
            (run.get("limits") or {}).get("suggested_flags") or "-",
            f"{ended} {run['stop_reason'] or ''}".strip(),
        ]  # fmt: skip
        cells = [_e(utc_iso(run["started_at"], ms=False)), name, *(_e(c) for c in counts)]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    count = len(data.runs)
    title = f"octave-bulk report: {data.output.name}, {count} run{'' if count == 1 else 's'}"
    return _page(title, f"<p>{_e(data.span)}.</p>\n{table}\n{_charts(week_charts(data))}")


def write_report(data: ReportData, path: Path) -> None:
    """Write the page to ``path`` (replaced atomically, 0600 like every file a run writes:
    its examples quote contacts and error messages)."""
    write_atomic(path, render(data).encode("utf-8"))


def write_week(data: WeekData, path: Path, pages: dict[str, str]) -> None:
    """Write the week view to ``path`` (atomically, 0600)."""
    write_atomic(path, render_week(data, pages).encode("utf-8"))
