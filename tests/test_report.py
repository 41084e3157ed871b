"""The run report: recorded while the run goes, drawn offline in a real browser."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.observe.series import read_series
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency, parse_rate_limit
from octave_bulk.state.history import RunHistory
from tests.conftest import TEST_KEY
from tests.helpers import side, sim_settings, write_contacts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _bad_rows(path: Path) -> None:
    """Append a row without any identity and a second row for contact 0 (a duplicate)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(",,NoEmail,Doe,Acme,VP\n")
        handle.write(",p0@example.com,First0,Doe,Acme,VP\n")


def _run(out: Path, csv: Path, url: str, **overrides: Any) -> Any:
    settings = sim_settings(url, **overrides)
    return anyio.run(lambda: run_batch(csv, out, settings))


def _report(out: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["report", str(out), *args])


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=10000", *args, page.as_uri()]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_draws_every_chart_offline_in_chromium(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(
        latency=parse_latency("fast"),
        rate_limit=parse_rate_limit("60/s:5"),
        faults={"500": 0.03},
        forced={"c-00003": "not_found"},
    )
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 150)
    _bad_rows(csv)
    summary = _run(out, csv, sim.url, concurrency=16)
    assert summary.exit_code == 1  # one contact not found
    page = tmp_path / "report.html"
    result = _report(out, "-o", str(page))
    assert result.exit_code == 0, result.output
    assert str(page) in result.output
    text = page.read_text(encoding="utf-8")
    # Self-contained: no script, style or image is fetched from anywhere.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)
    assert "Exit 1" in text and "not_found" in text
    assert "duplicate" in text  # the rejects, by reason
    charts = text.count('class="plotly-graph-div chart"')
    assert charts >= 7  # throughput, 429s, limits, latency x2, kinds, credits, rejects

    drawn = _chromium(page, "--dump-dom")
    assert not re.findall(r"CONSOLE[^\n]*", drawn.stderr)  # no console message, no error
    dom = drawn.stdout
    assert f'data-charts-drawn="{charts}"' in dom
    assert dom.count('class="main-svg"') >= 2 * charts  # Plotly draws two SVG layers per chart
    assert '<pre id="report-errors"></pre>' in dom

    shot = tmp_path / "report.png"  # never into the tracked tree
    _chromium(page, "--window-size=1200,4200", f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # drawn, not a blank page


@pytest.mark.slow
def test_series_follows_the_run_to_its_totals(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("fast"), faults={"500": 0.05, "429": 0.05})
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 200)  # >= 2.5 s at 4 in flight and ~50 ms a call: several samples
    summary = _run(out, csv, sim.url, concurrency=4)
    with RunHistory.open(side(out, ".ledger.sqlite"), readonly=True) as history:
        series = read_series(history, summary["run_id"])
    assert len(series) >= 2
    last, counts = series[-1], summary["counts"]
    assert (last["calls"], last["succeeded"]) == (summary.paid_calls, counts["succeeded"])
    assert (last["rate_limited"], last["retried"]) == (
        counts["rate_limited_429"],
        counts["retried"],
    )
    assert last["rate_limited"] > 0 and last["in_flight"] == 0
    assert all(0 <= sample["in_flight"] <= 4 for sample in series)
    steps = [b["at"] - a["at"] for a, b in zip(series, series[1:-1], strict=False)]
    assert all(0.5 < step < 3 for step in steps)  # once a second (the last: at the end)
    counters = ("calls", "succeeded", "rate_limited", "retried")
    assert all(a[c] <= b[c] for a, b in zip(series, series[1:], strict=False) for c in counters)


@pytest.mark.slow
def test_killed_run_keeps_its_series_and_reports_no_end(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("0.2s:0"))
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 2000)
    cmd = [sys.executable, "-m", "octave_bulk", "run", str(csv), "-o", str(out), "--agent", "ca_1",
           "--base-url", sim.url, "--concurrency", "4", "--rate", "none", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(cmd, env={"OCTAVE_API_KEY": TEST_KEY, "PATH": ""})
    try:
        deadline = time.monotonic() + 60
        while not _series_rows(side(out, ".ledger.sqlite")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    page = tmp_path / "killed.html"
    result = _report(out, "-o", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "No end recorded" in text
    assert "Throughput and calls in flight" in text


def _series_rows(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        with sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM series").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_report_without_series_says_so(live_sim: Any, tmp_path: Path) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 5)
    _run(out, csv, live_sim.url, series=False)
    result = _report(out)
    assert result.exit_code == 0, result.output
    text = side(out, ".report.html").read_text(encoding="utf-8")
    assert "No time series was recorded" in text
    assert "Throughput and calls in flight" not in text
    assert "Credits and paid calls per run" in text


def test_report_names_what_is_missing(live_sim: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    missing = _report(out)
    assert missing.exit_code == 2
    assert "out.ledger.sqlite" in missing.output
    csv = tmp_path / "in.csv"
    write_contacts(csv, 3)
    summary = _run(out, csv, live_sim.url)
    unknown = _report(out, "--run", "nope")
    assert unknown.exit_code == 2
    assert "no run nope" in unknown.output and summary["run_id"] in unknown.output


def test_end_of_run_lines_give_throughput_remaining_and_the_report(
    live_sim: Any, tmp_path: Path
) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 10)
    args = ["run", str(csv), "-o", str(out), "--agent", "ca_1", "--base-url", live_sim.url,
            "--rate", "none", "--no-progress"]  # fmt: skip
    stopped = CliRunner().invoke(cli, [*args, "--max-calls", "4", "--concurrency", "1"],
                                 env={"OCTAVE_API_KEY": TEST_KEY})  # fmt: skip
    assert stopped.exit_code == 5
    assert "remaining" in stopped.stderr and "input rows not read yet" in stopped.stderr
    limited = CliRunner().invoke(cli, [*args, "--limit", "6"], env={"OCTAVE_API_KEY": TEST_KEY})
    assert limited.exit_code == 0
    assert "remaining 0 contacts and the input rows past --limit" in limited.stderr
    done = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert done.exit_code == 0
    assert re.search(r"throughput [\d.,]+/s, remaining 0 contacts\n", done.stderr)
    assert f"report: octave-bulk report {out}" in done.stderr
