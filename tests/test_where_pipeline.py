"""Issue 22, items 11-13, 17, 18: ``--where`` refuses what is not one comparison and never
crashes a run on a result; a pipeline checks every step before its first call;
``--callback-listen`` needs ``--mode async``; every request (paid or not) has a deadline;
error messages say things once; the refusal-patience stop comes at patience; CSV cells that a
spreadsheet would read as a formula are escaped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.export import export_results
from octave_bulk.http.retry import status_error, transport_error
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator.hostile import HostileConfig, serve_hostile
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, sim_settings, write_contacts
from tests.test_export import read_csv, result_line, write_results


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env["OCTAVE_API_KEY"] = TEST_KEY
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``octave-bulk ARGS`` in a subprocess (its own signals, its own exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "octave_bulk", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def paid(sim: Any) -> int:
    """The run calls the simulator counted (each one paid)."""
    return int(sim.stats()["totals"].get("calls", 0))


async def scored_results(url: str, folder: Path, people: int) -> Path:
    """A qualify-person run's results file (each response has ``data.score``)."""
    write_contacts(folder / "in.csv", people)
    out = folder / "scored.ndjson"
    settings = sim_settings(url, agent_type="qualify-person", check_agent=False)
    summary = await run_batch(folder / "in.csv", out, settings)
    assert summary["counts"]["succeeded"] == people
    return out


# 11. A --where that is not one comparison is refused before anything is sent.


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "score = 99",
            "where: 'score = 99' is an assignment, not a comparison: did you mean 'score == 99'?",
        ),
        (
            "x = 1; False",
            "where: 'x = 1; False' is an assignment, not a comparison: "
            "did you mean ==? (e.g. 'score == 9', not 'score = 9')",
        ),
        (
            "(score := 9) >= 7",
            "where: '(score := 9) >= 7' holds an assignment (:=), not a comparison: "
            "did you mean ==? (e.g. 'score == 9', not 'score = 9')",
        ),
        (
            "score += 1",
            "where: 'score += 1' is an assignment, not a comparison: "
            "did you mean ==? (e.g. 'score == 9', not 'score = 9')",
        ),
        (
            "score >= 7; score < 3",
            "where: 'score >= 7; score < 3' holds 2 expressions (; or a line break): "
            "give one, joined with and / or",
        ),
    ],
)
async def test_a_where_that_assigns_or_holds_statements_is_exit_2_nothing_sent(
    make_sim: Any, tmp_path: Path, expression: str, message: str
) -> None:
    sim = make_sim()
    results = await scored_results(sim.url, tmp_path, 3)
    before = paid(sim)
    done = run_cli(
        "run", str(results), "-o", str(tmp_path / "next.ndjson"), "--agent", "ca_next",
        "--base-url", sim.url, "--no-progress", "--where", expression,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert paid(sim) == before  # nothing sent
    assert not (tmp_path / "next.ndjson").exists()


def test_a_where_nested_beyond_the_parser_is_exit_2(tmp_path: Path) -> None:
    where = "-" * 100_000 + "1"  # the parser's RecursionError / MemoryError
    out = str(tmp_path / "y.ndjson")
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "x.ndjson"), "-o", out, "--agent", "ca_x", "--where", where],
        env={"OCTAVE_API_KEY": TEST_KEY},
    )
    assert result.exit_code == 2
    assert "is nested too deeply to read" in result.output


# 12. A --where that fails on one result leaves that row out; the run goes on.


@pytest.mark.anyio
async def test_a_where_naming_a_missing_key_leaves_the_row_out_and_the_run_goes_on(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    results = await scored_results(sim.url, tmp_path, 6)
    lines = results.read_bytes().splitlines(keepends=True)
    # Two results lack data.score: ``data['score']`` raises KeyError on them.
    damaged = []
    for number, raw in enumerate(lines):
        line = json.loads(raw)
        if number in (1, 4):
            del line["response"]["data"]["score"]
        damaged.append(json.dumps(line).encode() + b"\n")
    results.write_bytes(b"".join(damaged))
    scores = [json.loads(raw)["response"]["data"].get("score") for raw in damaged]
    passing = sum(1 for score in scores if score is not None and score >= 5)
    out = tmp_path / "next.ndjson"
    before = paid(sim)
    args = (
        "run", str(results), "-o", str(out), "--agent", "ca_next", "--base-url", sim.url,
        "--no-progress", "--where", "data['score'] >= 5",
    )  # fmt: skip
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert paid(sim) - before == passing
    rejects = read_lines(tmp_path / "next.rejects.ndjson")
    failed = [r for r in rejects if r["reason"] == "where_failed"]
    assert sorted(r["line"] for r in failed) == [2, 5]
    assert failed[0]["message"] == (
        "--where \"data['score'] >= 5\" cannot be evaluated on this result (KeyError: 'score')"
    )
    assert sum(1 for r in rejects if r["reason"] == "filtered_out") == 4 - passing
    summary = json.loads((tmp_path / "next.summary.json").read_text())
    assert summary["rejects_by_reason"]["where_failed"] == 2
    # A rerun is not stuck: nothing new to send, exit 0.
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert paid(sim) - before == passing


# 13. A pipeline checks every step before its first step sends anything.

TWO_STEPS = """
input = "{input}"
output_dir = "{out}"

[settings]
base_url = "{url}"
rate = "none"
backoff_initial = 0.01
progress = false
check_agent = false

[[steps]]
name = "qualify"
agent_type = "qualify-person"
agent = "ca_qualify"

[[steps]]
name = "sequence"
agent = "ca_sequence"
{step2}
"""


def run_pipeline_file(sim: Any, tmp_path: Path, step2: str) -> Any:
    write_contacts(tmp_path / "in.csv", 4)
    file = tmp_path / "p.toml"
    out = tmp_path / "out"
    file.write_text(TWO_STEPS.format(input=tmp_path / "in.csv", out=out, url=sim.url, step2=step2))
    return CliRunner().invoke(cli, ["pipeline", str(file)], env={"OCTAVE_API_KEY": TEST_KEY})


@pytest.mark.parametrize(
    ("step2", "message"),
    [
        (
            'where = "score = 7"',
            "steps[2] (sequence): invalid settings:\n  where: 'score = 7' is an assignment, "
            "not a comparison: did you mean 'score == 7'?",
        ),
        (
            'input = "input"\ncontext_from = ["enrch.data.company"]',
            "steps[2] (sequence).context_from: 'enrch.data.company': names no earlier step "
            "'enrch' (steps before this one: qualify); STEP.PATH joins an earlier step's results",
        ),
        (
            'context_from = ["qualfy.data.score"]',
            "steps[2] (sequence).context_from: 'qualfy.data.score': names no earlier step "
            "'qualfy' (did you mean 'qualify'? steps before this one: qualify); STEP.PATH joins "
            "an earlier step's results",
        ),
        (
            'input = "input"\ncontext_from = ["sequence.data"]',
            "steps[2] (sequence).context_from: 'sequence.data': step 'sequence' does not run "
            "before this one (steps before it: qualify)",
        ),
        (
            'callback_listen = "127.0.0.1:8799"',
            "steps[2] (sequence): invalid settings:\n  settings: callback_listen receives async "
            "jobs' callbacks: add --mode async",
        ),
    ],
)
def test_a_later_steps_bad_setting_is_exit_2_before_the_first_step_pays(
    make_sim: Any, tmp_path: Path, step2: str, message: str
) -> None:
    sim = make_sim()
    result = run_pipeline_file(sim, tmp_path, step2)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert paid(sim) == 0
    assert not (tmp_path / "out" / "qualify.ndjson").exists()


def test_a_later_steps_unusable_files_are_exit_2_before_the_first_step_pays(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    (tmp_path / "out" / "sequence.ndjson").mkdir(parents=True)  # a folder where a file goes
    result = run_pipeline_file(sim, tmp_path, "")
    assert result.exit_code == 2, result.output
    assert f"step sequence: {tmp_path / 'out' / 'sequence.ndjson'}: is a folder" in result.output
    (tmp_path / "out" / "sequence.ndjson").rmdir()
    (tmp_path / "not-a-folder").write_text("")
    ledger = tmp_path / "not-a-folder" / "ledger.sqlite"
    result = run_pipeline_file(sim, tmp_path, f'ledger = "{ledger}"')
    assert result.exit_code == 2, result.output
    assert "step sequence: " in result.output and "is not a folder" in result.output
    assert paid(sim) == 0
    assert not (tmp_path / "out" / "qualify.ndjson").exists()


def test_callback_listen_without_async_mode_is_refused(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_x",
         "--base-url", "http://127.0.0.1:9", "--callback-listen", "127.0.0.1:8799"],
        env={"OCTAVE_API_KEY": TEST_KEY},
    )  # fmt: skip
    assert result.exit_code == 2
    assert (
        "callback_listen receives async jobs' callbacks: add --mode async "
        '(mode = "async"), or drop it'
    ) in result.output
    assert not (tmp_path / "o.ndjson").exists()


# 17. Every request has a deadline: the checks before the first call, doctor's, polls.


def test_a_dribbling_agent_lookup_and_credits_check_cannot_hold_a_run(tmp_path: Path) -> None:
    # The checks' answers come one byte every 0.2 s (a minute and more each); the paid
    # endpoint answers normally. --timeout 3 bounds each check as a whole: the run goes on.
    hostile = HostileConfig(dribble_gets=("/agents/get", "/api-key/validate"))
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    with serve_hostile(hostile=hostile) as sim:
        done = run_cli(
            "run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_test",
            "--base-url", sim.url, "--no-progress", "--rate", "none", "--timeout", "3",
            timeout=100,  # uncut, each check would take until call_deadline (300 s)
        )  # fmt: skip
        assert sim.front is not None
        dribbled = sim.front.counts["dribble_get"]
        paid_calls = paid(sim)
    assert done.returncode == 0, done.stderr
    assert dribbled >= 2  # the agent lookup and the credits check were both tried
    assert paid_calls == 3  # each contact once: the checks cost nothing
    assert "agent_not_checked" in done.stderr
    assert "TimeoutError: no complete answer within 3 s" in done.stderr
    assert "credits_not_checked" in done.stderr


def test_doctor_against_a_dribbling_server_stops_at_the_deadline(tmp_path: Path) -> None:
    hostile = HostileConfig(dribble_gets=("/api-key/validate",))
    with serve_hostile(hostile=hostile) as sim:
        env = cli_env() | {"OCTAVE_CALL_DEADLINE": "2"}
        done = subprocess.run(
            [sys.executable, "-m", "octave_bulk", "doctor", "--base-url", sim.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        paid_calls = paid(sim)
    assert done.returncode == 1, done.stderr
    assert (
        "API: cannot check the key and agents (TimeoutError: no complete answer within 2 s)"
    ) in done.stderr
    assert paid_calls == 0


# 18. Messages say things once; the refusal-patience stop comes at the patience; CSV cells a
# spreadsheet would read as formulas are escaped.


@pytest.mark.anyio
async def test_refusals_with_long_retry_after_stop_at_the_patience_not_one_wait_later(
    tmp_path: Path,
) -> None:
    # Every call: 429 with Retry-After 8 s, under the patience (8.5 s), so no stop at once.
    # Waiting out each Retry-After, the 429 that decides came at 16 s (~2x the patience);
    # the wait is now cut where the patience ends, and the call sent then decides.
    write_contacts(tmp_path / "in.csv", 1)
    hostile = HostileConfig(streak_429=(3600.0, 3600.0), retry_after_429="8")
    with serve_hostile(hostile=hostile) as sim:
        settings = sim_settings(
            sim.url, refusal_patience=8.5, concurrency=1, backoff_max=20.0, check_agent=False
        )
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert summary["exit_code"] == 4 and summary["stop_reason"] == "breaker"
    detail = summary["stop_detail"]
    match = re.fullmatch(
        r"the API refused every call for ([0-9.]+) s \(3 429s, none accepted; "
        r"refusal_patience 8\.5 s\): quota exhausted\?",
        detail,
    )
    assert match is not None, detail
    assert 8.5 <= float(match.group(1)) < 8.5 + 4, detail  # waiting out the third: 16+


def test_a_timeout_without_words_is_named_once() -> None:
    error = transport_error(TimeoutError(), "r1")
    assert error.message == "TimeoutError (no complete answer in time)"
    assert error.kind == "timeout"
    error = transport_error(TimeoutError("no complete answer within 3 s"), None)
    assert error.message == "TimeoutError: no complete answer within 3 s"


def test_a_status_error_message_names_the_status_once() -> None:
    request = httpx.Request("POST", "http://api.test/x")
    envelope = {"_metadata": {"success": False}}
    said = httpx.Response(422, json={**envelope, "message": "HTTP 422: bad field"}, request=request)
    assert status_error(said, "r1").message == "HTTP 422: bad field"
    plain = httpx.Response(422, json={**envelope, "message": "bad field"}, request=request)
    assert status_error(plain, "r1").message == "HTTP 422: bad field"


@pytest.mark.anyio
async def test_the_report_names_a_failures_status_once(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00000": "400", "c-00001": "400"})
    write_contacts(tmp_path / "in.csv", 2)
    out = tmp_path / "o.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, check_agent=False))
    assert summary["counts"]["failed"] == 2
    error = read_lines(tmp_path / "o.errors.ndjson")[0]["error"]
    assert error["message"] == "HTTP 400: Invalid request body"
    page = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", str(out), "-o", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "HTTP 400: Invalid request body" in text
    assert "HTTP 400: HTTP 400" not in text


def test_fullwidth_and_space_led_formulas_are_escaped_in_csv_cells(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line(
                "r1",
                [("\uff1d1+1", "\uff20SUM(A1)"), ("\uff0b1", "\uff0d1")],
                firstName='  =HYPERLINK("http://evil.example","x")',
                lastName="\u3000@SUM(A1)",
                companyName=" +1",
                jobTitle="\n-2",
                companyDomain="a=b.com",
            )
        ],
    )
    export_results(results, tmp_path / "o.csv")
    row = read_csv(tmp_path / "o.csv")[1][0]
    assert row["first_name"] == '\'  =HYPERLINK("http://evil.example","x")'
    assert row["last_name"] == "'\u3000@SUM(A1)"
    assert row["company_name"] == "' +1"
    assert row["title"] == "'\n-2"
    assert row["company_domain"] == "a=b.com"
    assert row["step1_subject"] == "'\uff1d1+1" and row["step1_body"] == "'\uff20SUM(A1)"
    assert row["step2_subject"] == "'\uff0b1" and row["step2_body"] == "'\uff0d1"
