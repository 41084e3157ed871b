"""Unattended nights: what a scheduler sees. Tonight's exit reflects tonight's work
(``--fail-on``), and the rule that produced a code is said in the summary, the end-of-run
lines, the report and the metrics."""

from __future__ import annotations

import csv
import json
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_latency
from octave_bulk.state.limits import RememberedLimits, limits_key
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, webhook, write_contacts


def night(url: str, tmp_path: Path, *extra: str) -> Result:
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_1", "--base-url", url, "--rate", "none", "--no-progress", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})


def summary(tmp_path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tmp_path / "out.summary.json").read_text())
    return loaded


def test_an_old_permanent_failure_does_not_fail_every_later_night(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(forced={"c-00001": "not_found"})
    write_contacts(tmp_path / "in.csv", 4)
    first = night(sim.url, tmp_path)
    assert first.exit_code == 1, first.output
    assert summary(tmp_path)["exit_rule"] == {
        "fail_on": ["failed"],
        "reason": "--fail-on failed: 1 failed in this run",
    }
    assert "why: --fail-on failed: 1 failed in this run" in first.output
    write_contacts(tmp_path / "in.csv", 6)  # the next night: two new people, both succeed
    for _ in range(2):
        later = night(sim.url, tmp_path)
        assert later.exit_code == 0, later.output
        rule = summary(tmp_path)["exit_rule"]
        assert rule["fail_on"] == ["failed"]
        assert "1 contact failed for good in an earlier run" in rule["reason"]
        assert "was not sent again: --retry-failed sends it" in rule["reason"]
        assert "1 contact failed for good in an earlier run" in later.output
    assert sim.stats()["calls"]["c-00001"] == 1  # reported, never paid again


def test_fail_on_chooses_what_fails_a_night(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "not_found"})
    write_contacts(tmp_path / "in.csv", 3)
    assert night(sim.url, tmp_path, "--fail-on", "none").exit_code == 0
    assert summary(tmp_path)["exit_rule"]["fail_on"] == ["none"]
    strict = night(sim.url, tmp_path, "--fail-on", "skipped-failed")
    assert strict.exit_code == 1, strict.output
    assert summary(tmp_path)["exit_rule"]["reason"] == (
        "--fail-on skipped-failed: 1 failed for good in an earlier run"
    )
    with open(tmp_path / "in.csv", "a", encoding="utf-8") as handle:
        handle.write("c-09999,not-an-email,Ann,Lee,Acme,VP\n")  # a reject
    assert night(sim.url, tmp_path).exit_code == 0  # default: rejects are counted, not failed
    both = night(sim.url, tmp_path, "--fail-on", "rejects,failed")
    assert both.exit_code == 1, both.output
    assert summary(tmp_path)["exit_rule"] == {
        "fail_on": ["failed", "rejects"],
        "reason": "--fail-on failed,rejects: 1 rejected or duplicate row",
    }


def test_fail_on_from_the_environment_and_a_bad_value(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "not_found"})
    write_contacts(tmp_path / "in.csv", 3)
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_1", "--base-url", sim.url, "--no-progress"]  # fmt: skip
    env = {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_FAIL_ON": "none"}
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    bad = night(sim.url, tmp_path, "--fail-on", "faild")
    assert bad.exit_code == 2
    assert "fail_on" in bad.output and "'faild' is not one of" in bad.output
    mixed = night(sim.url, tmp_path, "--fail-on", "none,failed")
    assert mixed.exit_code == 2 and "'none' cannot be combined" in mixed.output


def test_the_metrics_and_the_report_name_the_rule(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "not_found"})
    write_contacts(tmp_path / "in.csv", 3)
    prom = tmp_path / "octave.prom"
    assert night(sim.url, tmp_path, "--metrics-textfile", str(prom)).exit_code == 1
    exit_codes = [
        s
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
        if s.name == "octave_bulk_last_exit_code"
    ]
    assert [(s.labels["fail_on"], s.value) for s in exit_codes] == [("failed", 1.0)]
    report = CliRunner().invoke(cli, ["report", str(tmp_path / "out.ndjson")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "out.report.html").read_text(encoding="utf-8")
    assert "exit rule: --fail-on failed: 1 failed in this run" in page


def test_an_output_belongs_to_one_agent(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    qualify = night(sim.url, tmp_path, "--agent-type", "qualify-person")
    assert qualify.exit_code == 0, qualify.output
    paid = sim.stats()["totals"]["calls"]
    for extra in ((), ("--dry-run",)):
        sequence = night(sim.url, tmp_path, *extra)  # the Sequence Agent, into the same output
        assert sequence.exit_code == 2, sequence.output
        assert "holds qualify-person results; a sequence run needs an output of its own" in (
            sequence.output
        )
        assert f"-o {tmp_path / 'out-sequence.ndjson'}" in sequence.output
    assert sim.stats()["totals"]["calls"] == paid  # nothing sent
    own = night(sim.url, tmp_path, "-o", str(tmp_path / "out-sequence.ndjson"))
    assert own.exit_code == 0, own.output


def test_an_export_preset_must_fit_the_results_agent(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert night(sim.url, tmp_path, "--agent-type", "qualify-person").exit_code == 0
    results = str(tmp_path / "out.ndjson")
    wrong = CliRunner().invoke(cli, ["export", results, "-o", "-", "--preset", "instantly"])
    assert wrong.exit_code == 2, wrong.output
    assert "holds qualify-person results; --preset instantly does not fit them" in wrong.output
    assert "choose one of qualify-person, hubspot, salesforce" in wrong.output
    fits = CliRunner().invoke(cli, ["export", results, "-o", "-", "--preset", "qualify-person"])
    assert fits.exit_code == 0 and fits.output.count("\n") >= 4, fits.output


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("preflight", ["checks", "no checks"])
def test_a_server_nobody_answers_is_nothing_sent(tmp_path: Path, preflight: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    write_contacts(tmp_path / "in.csv", 12)
    extra = () if preflight == "checks" else ("--allow-overdraft",)
    env = {"OCTAVE_API_KEY": TEST_KEY}
    if preflight == "no checks":
        env["OCTAVE_CHECK_AGENT"] = "false"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"), "--agent",
            "ca_1", "--base-url", url, "--no-progress", "--max-attempts", "2", *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert f"to {url}: is --base-url right and the server up?" in result.output
    if preflight == "no checks":  # the calls found it: the counts agree that none was sent
        counts = summary(tmp_path)["counts"]
        assert summary(tmp_path)["paid_calls"] == 0
        assert counts["stopped_after_sending"] == 0
        assert counts["queued"] == counts["not_sent"] + counts["failed"]
    else:  # the checks found it: no run started, no output written
        assert not (tmp_path / "out.ndjson").exists()


def _chained(url: str, scored: Path, out: Path, where: str) -> Result:
    """A Sequence Agent run over an earlier run's results, filtered by ``where``."""
    args = ["run", str(scored), "-o", str(out), "--agent", "ca_1", "--base-url", url,
            "--no-progress", "--where", where]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})


def _scored(url: str, folder: Path, people: int) -> Path:
    """A qualify-person run's results (each response has ``data.score``, 1 to 10)."""
    write_contacts(folder / "in.csv", people)
    out = folder / "scored.ndjson"
    done = night(url, folder, "--agent-type", "qualify-person", "-o", str(out))
    assert done.exit_code == 0, done.output
    return out


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("scor >= 7", "no result in the input has a field 'scor' (did you mean 'score'?"),
        ("score >= seven", "no result in the input has a field 'seven' (fields of its first"),
    ],
)
def test_a_where_naming_no_field_of_the_results_is_refused_before_any_call(
    make_sim: Any, tmp_path: Path, where: str, said: str
) -> None:
    sim = make_sim()
    scored = _scored(sim.url, tmp_path, 5)
    paid = sim.stats()["totals"]["calls"]
    result = _chained(sim.url, scored, tmp_path / "seq.ndjson", where)
    assert result.exit_code == 2, result.output
    assert said in result.output and "nothing was sent" in result.output
    assert sim.stats()["totals"]["calls"] == paid


def test_a_where_that_leaves_out_every_result_warns(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    scored = _scored(sim.url, tmp_path, 5)
    result = _chained(sim.url, scored, tmp_path / "seq.ndjson", "score > 10")
    assert result.exit_code == 0, result.output
    warning = "--where 'score > 10' left out all 5 results that have its fields"
    assert f"warning: {warning}" in result.output
    assert warning in json.loads((tmp_path / "seq.summary.json").read_text())["where_warning"]
    some = _chained(sim.url, scored, tmp_path / "some.ndjson", "score >= 1")
    assert some.exit_code == 0 and "warning: --where" not in some.output


def _wait_for_lines(path: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {count} lines after {timeout} s")


@pytest.mark.slow
def test_a_killed_runs_history_is_corrected_and_agrees_with_status_to_the_credit(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(seed=4, latency=parse_latency("60ms:0.3"))
    write_contacts(tmp_path / "in.csv", 120)
    out = tmp_path / "out.ndjson"
    killed = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "4")
    _wait_for_lines(out, 20)
    killed.kill()
    right_after = CliRunner().invoke(cli, ["status", str(out)])
    assert right_after.exit_code == 0, right_after.output
    assert "no end recorded (still going, or killed" in right_after.output
    again = night(sim.url, tmp_path)
    assert again.exit_code == 0, again.output
    runs = json.loads(CliRunner().invoke(cli, ["history", str(out), "--json"]).output)
    dead = runs[-1]  # newest first
    assert dead["stop_reason"] == "killed" and dead["finished_at"] is not None
    mine = [line for line in read_lines(out) if line["runId"] == dead["run_id"]]
    assert dead["succeeded"] == len(mine) >= 20
    table = CliRunner().invoke(cli, ["history", str(out)]).output
    assert "killed" in table
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert sum(run["credits"] for run in runs) == status["credits"]  # to the credit
    billed = sim.stats()["credits_used"]
    assert 0 <= billed - status["credits"] <= 4  # at most the calls in flight at the kill
    paid = sum(run["paid_calls"] for run in runs)
    assert sim.stats()["totals"]["calls"] <= paid <= sim.stats()["totals"]["calls"] + 4


def _export(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Record ID", "Email", "First Name", "Last Name", "Job Title"])
        writer.writerows(rows)


def test_a_reordered_export_with_duplicates_that_differ_pays_nobody_again(
    make_sim: Any, tmp_path: Path
) -> None:
    rng = random.Random(7)
    rows = [[str(100 + n), f"p{n}@acme.io", f"P{n}", "Doe", "VP Sales"] for n in range(30)]
    # Five people have a second CRM record with another title (the same email).
    rows += [[str(900 + n), f"p{n}@acme.io", f"P{n}", "Doe", "CTO"] for n in range(5)]
    sim = make_sim()
    _export(tmp_path / "in.csv", rows)
    first = night(sim.url, tmp_path)
    assert first.exit_code == 0, first.output
    assert sim.stats()["totals"]["calls"] == 30  # one call per person
    for _ in range(3):  # the same rows, another order: nobody is paid again
        rng.shuffle(rows)
        _export(tmp_path / "in.csv", rows)
        again = night(sim.url, tmp_path)
        assert again.exit_code == 0, again.output
        assert sim.stats()["totals"]["calls"] == 30
        dups = [
            r for r in read_lines(tmp_path / "out.rejects.ndjson") if r["reason"] == "duplicate"
        ]
        assert len(dups) == 5
        for reject in dups:
            assert "the one paid for before, is in this input and is kept" in reject["message"]
            assert "this one differs in jobTitle changed" in reject["message"]
            assert reject["row"]["jobTitle"] == "CTO"  # the record paid for (VP Sales) is kept
    rows = [row for row in rows if row[4] != "VP Sales" or row[1] != "p0@acme.io"]
    _export(tmp_path / "in.csv", rows)  # p0's paid record left the export: the other one is new
    edited = night(sim.url, tmp_path)
    assert edited.exit_code == 0 and sim.stats()["totals"]["calls"] == 31


def test_the_end_of_a_run_is_posted_to_the_notify_urls(make_sim: Any, tmp_path: Path) -> None:
    with webhook() as (port, posts):
        url = f"json://127.0.0.1:{port}/hook-token-9f3k"
        config = tmp_path / "night.toml"
        config.write_text(f'notify = ["{url}"]\nnotify_on = "failure"\n')
        sim = make_sim(forced={"c-00001": "not_found"})
        write_contacts(tmp_path / "in.csv", 3)
        failed = night(sim.url, tmp_path, "--config", str(config))
        assert failed.exit_code == 1, failed.output
        write_contacts(tmp_path / "in.csv", 5)
        assert night(sim.url, tmp_path, "--config", str(config)).exit_code == 0  # no post
        other = ("--config", str(config), "--agent-type", "qualify-person")  # another agent's
        assert night(sim.url, tmp_path, *other).exit_code == 2
    assert [post["title"].split(" (")[0] for post in posts] == [
        "octave-bulk: exit 1",
        "octave-bulk: exit 2",
    ]
    assert "why: --fail-on failed: 1 failed in this run" in posts[0]["message"]
    assert posts[0]["type"] == "failure"
    assert "holds sequence results; a qualify-person run needs" in posts[1]["message"]
    # The URL's token is a secret: in no file the runs wrote, the ledger's settings included.
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p != config and p.is_file())
    assert b"hook-token-9f3k" not in written


def test_notify_urls_apprise_cannot_use_are_refused_before_any_call(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    config = tmp_path / "night.toml"
    config.write_text('notify = ["nosuchservice://token"]\n')
    refused = night(sim.url, tmp_path, "--config", str(config))
    assert (
        refused.exit_code == 2 and "notify: URL 1 of 1 is not one Apprise knows" in refused.output
    )
    assert sim.stats()["totals"].get("calls", 0) == 0


@pytest.mark.parametrize(
    ("written", "starts_at"),
    [('rate = "none"', 3.0), ('rate = "1/s"', 1.0), ('rate = "9/s"', 3.0)],  # memory 3/s
)
def test_remembered_limits_start_the_run_whatever_the_config_file_says(
    make_sim: Any, tmp_path: Path, written: str, starts_at: float
) -> None:
    """A config file that writes the default (rate = "none"), or any ceiling, used to count as
    an explicit rate and turn the memory off for good; now the memory starts the run,
    clamped by the ceiling."""
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 4)
    RememberedLimits(tmp_path / "out.limits.json").put(limits_key(sim.url, "sequence"), 3.0, None)
    config = tmp_path / "night.toml"
    config.write_text(written + "\n")
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"), "--agent",
            "ca_1", "--base-url", sim.url, "--no-progress", "--config", str(config)]  # fmt: skip
    done = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert done.exit_code == 0, done.output
    limits = summary(tmp_path)["limits"]
    assert limits["started_from_memory"] is True
    held = float(limits["suggested_flags"].removeprefix("--rate ").removesuffix("/s"))
    assert starts_at <= held <= starts_at * 1.5  # from memory (or the ceiling), probed up
