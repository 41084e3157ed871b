"""What a user reads (issue 28): the report's axes, legends and size, the week view drawn in a
real browser, SQL over results and history, and the wording of runs, logs and errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.report.charts import charts
from octave_bulk.report.data import ReportData, gather
from octave_bulk.report.page import render
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency, parse_rate_limit
from octave_bulk.simulator.config import RetryAfterMix
from tests.conftest import TEST_KEY
from tests.helpers import side, sim_settings, write_contacts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPORT_LIMIT = 1_500_000
"""Bytes a report page may take (issue 28's target; the full Plotly bundle alone was 4.8 MB)."""


def _run(out: Path, csv: Path, url: str, **overrides: Any) -> Any:
    settings = sim_settings(url, **overrides)
    return anyio.run(lambda: run_batch(csv, out, settings))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _chromium(page: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def _ran(url: str, folder: Path, contacts: int, name: str = "out.ndjson") -> Path:
    """An output after one run over ``contacts`` people."""
    csv, out = folder / "in.csv", folder / name
    write_contacts(csv, contacts)
    _run(out, csv, url)
    return out


def _figures(data: ReportData) -> dict[str, dict[str, Any]]:
    return {title: figure.to_plotly_json() for title, figure in charts(data)}


# --- the report's charts ---------------------------------------------------------------------


def test_report_axes_ticks_and_legends_read_plainly(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("fast"), faults={"500": 0.05})
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 60)
    _run(out, csv, sim.url, concurrency=6)
    figures = _figures(gather(out))

    latency = figures["Latency of successful calls"]
    axis = latency["layout"]["xaxis"]
    assert axis["type"] == "log" and axis["title"]["text"] == "latency, ms"
    # Plain ticks at 1-2-5 steps, labelled as the numbers they are (not "6 7 8 9 1000 2 3").
    assert axis["ticktext"] == [
        f"{v:,.0f}" if v >= 1 else f"{v:g}" for v in axis["tickvals"]
    ] and all(
        re.fullmatch(r"[125](0*|,000)*|0\.[125]", t.replace(",", "")) for t in axis["ticktext"]
    )
    lines = [t for t in latency["data"] if t["name"].startswith("p")]
    assert [t["name"].split()[0] for t in lines] == ["p99", "p95", "p50"]
    widths = [t["line"]["width"] for t in lines]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 3  # each one shows

    for title, figure in figures.items():
        legend = figure["layout"]["legend"]
        assert legend["y"] >= 1 and legend["yanchor"] == "bottom", title  # above the plot
        assert figure["layout"]["xaxis"]["automargin"] is True, title
        assert all(trace.get("showlegend", True) for trace in figure["data"]), title

    in_flight = figures["Throughput and calls in flight"]["layout"]["yaxis2"]
    assert in_flight["tickmode"] == "linear" and in_flight["tick0"] == 0
    assert isinstance(in_flight["dtick"], int)  # ticks 0, 1, 2 ... never 7.99 / 15.98
    window = figures["Rate and window the limiter let through"]["layout"]["yaxis2"]
    assert isinstance(window["dtick"], int)
    credits = figures["Credits and paid calls per run of this output"]["layout"]["xaxis"]
    assert credits["automargin"] is True and credits["type"] == "category"


def _night(hours: float) -> ReportData:
    """A long night's run as the report reads it: a sample a second, 50,000 latencies."""
    start, seconds = 1_780_000_000.0, int(hours * 3600)
    run = {
        "run_id": "r1", "started_at": start, "finished_at": start + seconds,
        "updated_at": start + seconds, "read": 50_000, "succeeded": 49_000, "failed": 1_000,
        "rejected": 12, "skipped_done": 0, "paid_calls": 50_500, "credits": 49_000.0,
        "exit_code": 1, "stop_reason": None, "limits": {"suggested_flags": "--rate 2/s"},
    }  # fmt: skip
    series = [
        {"at": start + s, "calls": 2 * s, "succeeded": 2 * s - s // 50, "failed": s // 50,
         "rate_limited": s // 30, "retried": s // 40, "timeouts": 0, "in_flight": 17 + s % 5,
         "retrying": s % 3, "rate": 2.0 + (s % 7) / 10, "window": 24, "paused": 0,
         "p50_ms": 3000.0 + s % 97, "p95_ms": 9000.0 + s % 89, "p99_ms": 12000.0 + s % 83,
         "credits": float(s)}
        for s in range(1, seconds + 1)
    ]  # fmt: skip
    return ReportData(
        output=Path("night.ndjson"),
        run=run,
        runs=[run],
        series=series,
        latencies_ms=[1000.0 + (n * 7919) % 40_000 for n in range(50_000)],
        attempts=Counter(success=49_000, http_500=1_500, rate_limited=4_000),
        retries=1_500,
        failures=Counter(http_500=1_000),
    )


def test_a_long_nights_report_is_under_one_and_a_half_megabytes() -> None:
    page = render(_night(hours=8)).encode("utf-8")
    assert len(page) <= REPORT_LIMIT, len(page)
    # Still whole and offline: the charts' script is embedded, nothing fetched.
    assert not re.search(rb"<(script|link|img)[^>]+(src|href)=", page)
    assert b"plotly.js (basic - minified)" in page
    assert page.count(b'class="plotly-graph-div chart"') == 7


# --- the week view ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_week_view_links_each_run_and_draws_in_chromium(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("fast"), forced={"c-00031": "not_found"})
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    run_ids = []
    for night in range(3):  # each night's export adds 15 people
        write_contacts(csv, 15 * (night + 1))
        run_ids.append(_run(out, csv, sim.url, concurrency=4)["run_id"])

    week = _invoke("report", str(out), "--since", "7d")
    assert week.exit_code == 0, week.output
    page = tmp_path / "out.week.html"
    assert f"report: {page} (3 runs, each linked to its page)" in week.output
    text = page.read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)">([0-9a-f]+)</a>', text)
    assert sorted(run for _, run in links) == sorted(run_ids)
    for href, run_id in links:
        linked = (tmp_path / href).read_text(encoding="utf-8")  # written beside it
        assert f"run {run_id}" in linked and len(linked.encode()) <= REPORT_LIMIT
    assert len(text.encode()) <= REPORT_LIMIT
    for title in ("Throughput per run", "Credits and paid calls per run",
                  "Failures, rejects and 429s per run", "Limits found per run"):  # fmt: skip
        assert title in text

    drawn = _chromium(page)
    assert not re.findall(r"CONSOLE[^\n]*", drawn.stderr)  # no console message, no error
    assert 'data-charts-drawn="4"' in drawn.stdout
    assert '<pre id="report-errors"></pre>' in drawn.stdout

    latest = _invoke("report", str(out), "--runs", "2", "-o", str(tmp_path / "two.html"))
    assert latest.exit_code == 0, latest.output
    two = (tmp_path / "two.html").read_text(encoding="utf-8")
    assert run_ids[0] not in two and run_ids[1] in two and run_ids[2] in two


def test_week_view_names_what_is_missing(live_sim: Any, tmp_path: Path) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 3)
    _run(out, csv, live_sim.url)
    bad = _invoke("report", str(out), "--since", "a week")
    assert bad.exit_code == 2 and "not a span" in bad.output
    both = _invoke("report", str(out), "--since", "7d", "--run", "x")
    assert both.exit_code == 2 and "--run shows one run" in both.output
    one = _invoke("report", str(out), "--runs", "5")
    assert one.exit_code == 0 and "(1 run, each linked to its page)" in one.output


# --- SQL over results and history ------------------------------------------------------------


def test_query_answers_who_got_sequences_this_week_in_one_line(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("fast"), forced={"c-00002": "not_found"})
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 5)
    run_id = _run(out, csv, sim.url)["run_id"]
    ledger = out.with_name("out.ledger.sqlite")
    before = ledger.read_bytes()

    sql = ("SELECT email, record ->> '$.response.data.emails[0].subject' AS subject, run_id "
           "FROM results JOIN runs USING (run_id) "
           "WHERE started_at > unixepoch('now', '-7 days') ORDER BY email")  # fmt: skip
    table = _invoke("query", str(out), sql)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["email", "subject", "run_id"]
    assert [line.split()[0] for line in lines[2:]] == [
        f"p{n}@example.com" for n in (0, 1, 3, 4)
    ]  # the one not found is in errors, not results
    assert all(line.rstrip().endswith(run_id) for line in lines[2:])

    as_json = _invoke("query", str(out), "SELECT kind, request_id FROM errors", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [{"kind": "not_found", "request_id": "c-00002"}]

    for write in ("DELETE FROM runs", "CREATE TABLE x (a)", "DELETE FROM results"):
        refused = _invoke("query", str(out), write)
        assert refused.exit_code == 2
        assert "query only reads" in refused.stderr
    assert ledger.read_bytes() == before  # nothing written, not even a view

    several = _invoke("query", str(out), "SELECT 1; SELECT 2")
    assert several.exit_code == 2 and "one statement at a time" in several.stderr
    typo = _invoke("query", str(out), "SELEC 1")
    assert typo.exit_code == 2 and 'error: SQL: near "SELEC": syntax error' in typo.stderr
    assert "nothing was sent" not in typo.stderr + several.stderr
    missing = _invoke("query", str(tmp_path / "none.ndjson"), "SELECT 1")
    assert missing.exit_code == 2 and "none.ledger.sqlite: no ledger" in missing.stderr


# --- wording ---------------------------------------------------------------------------------


def _cli_run(url: str, csv: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "octave_bulk", "run", str(csv), "-o", str(out), "--agent",
           "ca_1", "--base-url", url, "--rate", "none", "--no-progress", *extra]  # fmt: skip
    env = {"OCTAVE_API_KEY": TEST_KEY, "PATH": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=100)


def test_one_contact_is_one_contact_and_rows_all_read_are_not_unread(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(forced={"c-00001": "500"})
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 3)
    with open(csv, "a", encoding="utf-8") as handle:
        handle.write(",p0@example.com,First0,Doe,Acme,VP\n")  # a duplicate of contact 0
    # The third call spends --max-calls while contact 1 is still to retry: every row was read.
    stopped = _cli_run(sim.url, csv, out, "--max-calls", "3", "--concurrency", "1")
    assert stopped.returncode == 5, stopped.stderr
    assert re.search(r"remaining 1 contact\n", stopped.stderr)
    assert "rejected 1 (1 duplicate)" in stopped.stderr
    assert "not read yet" not in stopped.stderr and "1 contacts" not in stopped.stderr
    assert json.loads(side(out, ".summary.json").read_text())["input_read_whole"] is True
    exported = _invoke("export", str(out), "-o", str(tmp_path / "one.csv"))
    assert exported.exit_code == 0, exported.output
    assert re.search(r"exported 1 contact with up to \d+ steps? to ", exported.stderr)


def test_doctor_says_the_cost_is_unknown_rather_than_none(live_sim: Any) -> None:
    result = CliRunner().invoke(
        cli,
        ["doctor", "--agent", "ca_1", "--base-url", live_sim.url],
        env={"OCTAVE_API_KEY": TEST_KEY},
    )
    assert result.exit_code == 0, result.output
    assert "cost per run not given by the API: ok" in result.output
    assert "None" not in result.output


def test_a_chained_run_does_not_call_the_chains_columns_unmapped(
    live_sim: Any, tmp_path: Path
) -> None:
    first = _ran(live_sim.url, tmp_path, 2, "first.ndjson")
    chained = _cli_run(live_sim.url, first, tmp_path / "second.ndjson")
    assert chained.returncode == 0, chained.stderr
    assert re.search(r"@response +-> - +the earlier step's answer", chained.stderr)
    assert re.search(r"@personKey +-> - +the earlier result's person key", chained.stderr)
    assert "not a name this profile knows" not in chained.stderr
    summary = json.loads((tmp_path / "second.summary.json").read_text())
    assert summary["input"]["mapping"]["unmapped"] == []  # no CRM column was left out


def test_errors_of_commands_that_send_nothing_end_without_a_runs_trailer(
    live_sim: Any, tmp_path: Path
) -> None:
    out = _ran(live_sim.url, tmp_path, 2)
    wrong = _invoke("export", str(out), "--preset", "qualify-person", "-o", str(tmp_path / "x"))
    assert wrong.exit_code == 2
    assert "--preset qualify-person does not fit them" in wrong.stderr
    assert wrong.stderr.endswith("fix it and run the command again.\n")
    missing = _invoke("export", str(tmp_path / "none.ndjson"), "-o", str(tmp_path / "y"))
    assert missing.exit_code == 2
    for result in (wrong, missing):
        assert (
            "nothing was sent" not in result.stderr
            and "nothing already written" not in result.stderr
        )
    # A run's error still says it: there, something could have been paid.
    run = _cli_run(live_sim.url, tmp_path / "absent.csv", tmp_path / "z.ndjson")
    assert run.returncode == 2 and "nothing was sent" in run.stderr


def test_log_numbers_are_rounded_and_429s_are_a_line_a_second(
    make_sim: Any, tmp_path: Path
) -> None:
    # HTTP dates: the wait read from one is a fraction of a second with many decimals.
    sim = make_sim(rate_limit=parse_rate_limit("10/s:2"), retry_after_mix=RetryAfterMix(0, 1, 0))
    csv, out, log = tmp_path / "in.csv", tmp_path / "out.ndjson", tmp_path / "run.log"
    write_contacts(csv, 40)
    result = _cli_run(sim.url, csv, out, "--concurrency", "8", "--log-format", "json",
                      "--log-file", str(log))  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    limited = [e for e in events if e["event"] == "rate_limited"]
    refused = json.loads(side(out, ".summary.json").read_text())["counts"]["rate_limited_429"]
    assert refused >= 2 and limited
    assert sum(e["count"] for e in limited) == refused  # every 429 counted, once
    seconds = [e["time"] for e in limited]
    assert len(seconds) == len(set(seconds))  # at most one line a second
    assert [e["event"] for e in events][-1] == "stop"  # the last second's line came before

    def plain(value: float) -> bool:  # 2 decimals, or 2 significant digits below 1
        return value == round(value, 2) or value == float(f"{value:.2g}")

    floats = [v for e in events for v in e.values() if isinstance(v, float)]
    assert floats and all(plain(v) for v in floats)  # 0.33, 0.049: no 0.331911563873291
    waits = [e["retry_after_s"] for e in limited if e["retry_after_s"] is not None]
    assert waits and all(plain(wait) for wait in waits)


def test_plan_counts_one_contact_as_one(live_sim: Any, tmp_path: Path) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 3)
    _run(out, csv, live_sim.url)
    write_contacts(csv, 4)  # the night after: one new person
    planned = CliRunner().invoke(
        cli,
        ["plan", str(csv), "-o", str(out), "--agent", "ca_test", "--base-url", live_sim.url],
        env={"OCTAVE_API_KEY": TEST_KEY},
    )
    assert planned.exit_code == 0, planned.output
    assert "to send: 1 contact\n" in planned.output
    assert "time: under 1 s (" in planned.output  # not "about under 1 s"


def test_text_logs_leave_unknown_values_out_rather_than_print_none(
    make_sim: Any, tmp_path: Path
) -> None:
    # 429s without Retry-After: the wait asked for is unknown.
    sim = make_sim(rate_limit=parse_rate_limit("10/s:2"), retry_after_mix=RetryAfterMix(0, 0, 1))
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 30)
    result = _cli_run(sim.url, csv, out, "--concurrency", "8")
    assert result.returncode == 0, result.stderr
    assert re.search(r"rate_limited count=\d+ pool_pause_s=", result.stderr), result.stderr
    assert "None" not in result.stderr


def test_the_embedded_bundle_is_plotlys_own_major_version() -> None:
    import plotly.offline

    from octave_bulk.report.page import plotly_js

    header = re.search(r"plotly\.js \(basic - minified\) v(\d+)\.", plotly_js()[:300])
    assert header is not None
    # The figures are built by the plotly package: its plotly.js and ours share a major version.
    assert header[1] == plotly.offline.get_plotlyjs_version().split(".")[0]


def test_the_exit_rule_counts_one_row_as_one(live_sim: Any, tmp_path: Path) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 2)
    with open(csv, "a", encoding="utf-8") as handle:
        handle.write(",p1@example.com,First1,Doe,Acme,VP\n")  # a duplicate of contact 1
    result = _cli_run(live_sim.url, csv, out, "--fail-on", "rejects")
    assert result.returncode == 1, result.stderr
    assert "why: --fail-on rejects: 1 rejected or duplicate row\n" in result.stderr
