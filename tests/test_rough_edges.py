"""Rough edges a new user hit: each test reproduces one and checks what the user now sees."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli.main import cli
from octave_bulk.simulator import parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import Run, write_contacts

ROOT = Path(__file__).parent.parent


def test_doctor_checks_every_path_the_config_names(make_sim: Any, tmp_path: Path) -> None:
    """The nightly example names a log folder a fresh machine lacks: doctor says so, exit 2."""
    sim = make_sim(api_key=TEST_KEY)
    example = (ROOT / "configs" / "nightly.example.toml").read_text(encoding="utf-8")
    missing = tmp_path / "no-such-folder"
    config = tmp_path / "nightly.toml"
    config.write_text(
        example.replace("/var/log/octave-bulk", str(missing)).replace(
            "/var/lib/node_exporter/textfile_collector", str(tmp_path)
        ),
        encoding="utf-8",
    )
    runner = CliRunner()
    env = {"OCTAVE_API_KEY": TEST_KEY}
    args = ["doctor", "--config", str(config), "--base-url", sim.url, "--agent", "ca_test"]
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert f"log_file {missing / 'nightly.log'}: its folder {missing} does not exist" in (
        result.output
    )
    assert "config: ok" not in result.output and "metrics_textfile" not in result.output
    assert not missing.exists()  # doctor creates nothing
    missing.mkdir()
    result = runner.invoke(cli, args, env=env)
    assert "config: ok" in result.output, result.output


def test_connection_refused_names_the_cause_under_the_exit_line(tmp_path: Path) -> None:
    """Nothing listens at --base-url: the breaker's exit line is followed by the cause."""
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "out.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_test"]
    args += ["--base-url", url, "--no-progress", "--allow-overdraft"]  # no credits check
    env = {"OCTAVE_API_KEY": TEST_KEY}  # breaker_threshold 100: the 10 that never connected
    env |= {"OCTAVE_BACKOFF_INITIAL": "0.01", "OCTAVE_BACKOFF_MAX": "0.05"}
    env |= {"OCTAVE_CHECK_AGENT": "false"}  # no lookup either: the calls find no server
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output  # nothing reached a server: nothing sent
    lines = result.output.splitlines()
    headline = next(n for n, line in enumerate(lines) if line.startswith("exit 2 (breaker)"))
    assert lines[headline + 1].startswith(
        f"  why: 10 calls in a row failed (connect refused to {url}"
    )


def test_a_wrong_endpoint_stops_at_once_and_says_to_check_the_url(
    make_sim: Any, tmp_path: Path
) -> None:
    """A 404 from the run endpoint: exit 3 within seconds, pointing at --base-url, not the key."""
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 200)
    out = tmp_path / "out.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_test"]
    args += ["--base-url", sim.url + "/wrong", "--no-progress", "--concurrency", "8"]
    env = {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_CHECK_AGENT": "false"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 3, result.output
    assert "check --base-url and --agent" in result.output
    assert "fix the key" not in result.output
    summary = json.loads(out.with_name("out.summary.json").read_text(encoding="utf-8"))
    assert summary["wall_seconds"] < 5


@pytest.mark.parametrize(
    ("flags", "key", "message"),
    [
        (
            ["--agent", "ca_test"],
            "",
            "api_key (from OCTAVE_API_KEY): the key is empty (OCTAVE_API_KEY= is set to nothing)",
        ),
        (["--agent", "xyz"], TEST_KEY, "'xyz' is not an agent id (they look like ca_abc123)"),
        (["--agent", " ca_abc"], TEST_KEY, "' ca_abc' contains a space"),
        (["--agent", "ae_123"], TEST_KEY, "is an experiment id, not an agent id: use --experiment"),
        (
            ["--agent", "ca_REPLACE_ME"],
            TEST_KEY,
            "'ca_REPLACE_ME' is a placeholder from an example",
        ),
        (["--experiment", "ca_1"], TEST_KEY, "is an agent id, not an experiment id: use --agent"),
    ],
)
def test_an_empty_key_or_a_malformed_id_exits_2_before_any_call(
    make_sim: Any, tmp_path: Path, flags: list[str], key: str, message: str
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), *flags, "--base-url", sim.url]
    result = CliRunner().invoke(cli, [*args, "--no-progress"], env={"OCTAVE_API_KEY": key})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sim.stats()["by_status"] == {}  # not even the agent lookup
    assert not out.exists()


def test_validate_leaves_a_running_outputs_rejects_alone(tmp_path: Path) -> None:
    """validate -o OUT while a run holds OUT's lock: exit 2 naming the holder, rejects intact."""
    from octave_bulk.state.lock import RunLock
    from octave_bulk.state.paths import OutputPaths

    write_contacts(tmp_path / "in.csv", 3)
    with (tmp_path / "in.csv").open("a", encoding="utf-8") as handle:
        handle.write("c-9,not-an-email,,,,\n")
    paths = OutputPaths.for_output(tmp_path / "out.ndjson")
    paths.rejects.write_text('{"line": 7, "reason": "from the run"}\n', encoding="utf-8")
    running = RunLock(paths.lock)
    running.acquire()  # what a run in progress holds
    try:
        args = ["validate", str(tmp_path / "in.csv"), "-o", str(paths.results)]
        result = CliRunner().invoke(cli, args)
    finally:
        running.release()
    assert result.exit_code == 2, result.output
    assert f'a run is using this output ({{"pid": {os.getpid()}' in result.output
    assert paths.rejects.read_text(encoding="utf-8") == '{"line": 7, "reason": "from the run"}\n'
    again = CliRunner().invoke(cli, args)  # once the run is over, validate writes its rejects
    assert again.exit_code == 1 and "from the run" not in paths.rejects.read_text("utf-8")


SALESFORCE_REPORT = """\
"Contact Owner","First Name","Last Name","Title","Account Name","Email","Mailing City"
"Jane Owner","Dana","Kim","Head of Finance","Rippling","dana.kim@rippling.com","San Francisco"
"Jane Owner","Omar","Haddad","Controller","Gusto","omar@gusto.com","Denver"
"Jane Owner","Lena","Berg","CFO","Berg AB","lena@berg.se","Stockholm"
""
"Grand Totals (3 records)"
""
"Confidential Information - Do Not Distribute"
"Copyright (c) 2000-2024 salesforce.com, inc. All rights reserved."
"Generated By:  Jane Owner  12/1/2024 9:15 AM"
"Acme Inc."
"""


def test_a_salesforce_report_with_contact_owner_and_a_footer(make_sim: Any, tmp_path: Path) -> None:
    """Detected as Salesforce (not HubSpot); its footer lines are dropped, not rejected."""
    report = tmp_path / "report.csv"
    report.write_text(SALESFORCE_REPORT, encoding="utf-8")
    out = tmp_path / "out.ndjson"
    checked = CliRunner().invoke(cli, ["validate", str(report), "-o", str(out), "--json"])
    assert checked.exit_code == 0, checked.output
    found = json.loads(checked.output)
    assert found["mapping"]["profile"] == "salesforce"
    assert (found["read"], found["valid"], found["rejected"]) == (3, 3, {})
    assert found["footerRows"] == 5
    sim = make_sim()
    args = ["run", str(report), "-o", str(out), "--agent", "ca_test", "--base-url", sim.url]
    result = CliRunner().invoke(cli, [*args, "--no-progress"], env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_name("out.summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["succeeded"] == 3 and summary["counts"]["rejected"] == 0
    assert summary["input"]["footer_rows"] == 5
    assert out.with_name("out.rejects.ndjson").read_text(encoding="utf-8") == ""


def test_a_one_cell_line_before_any_footer_marker_is_still_a_reject(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    lines = SALESFORCE_REPORT.splitlines()
    report.write_text("\n".join([*lines[:2], '"Acme Inc."', *lines[2:]]) + "\n", "utf-8")
    checked = CliRunner().invoke(cli, ["validate", str(report), "--json"])
    found = json.loads(checked.output)
    assert found["rejected"] == {"missing_identity": 1} and found["footerRows"] == 5


@pytest.mark.parametrize("preset", ["instantly", "smartlead", "lemlist"])
def test_email_sequencer_presets_leave_out_linkedin_only_results_and_say_so(
    tmp_path: Path, preset: str
) -> None:
    from tests.test_export import read_csv, result_line, write_results

    linkedin = "https://www.linkedin.com/in/ada"
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("with-email", [("Hello", "Body")]),
            result_line("linkedin-only", [("Hi", "Body")], email="", linkedInProfile=linkedin),
        ],
    )
    args = ["export", str(results), "-o", str(tmp_path / "o.csv"), "--preset", preset]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    _, rows = read_csv(tmp_path / "o.csv")
    assert [row["request_id"] for row in rows] == ["with-email"]
    assert "1 result(s) left out: no email (LinkedIn only)" in result.output
    assert "linkedin-only" in result.output
    generic = CliRunner().invoke(cli, [*args[:-1], "generic"])  # keeps LinkedIn-only contacts
    assert generic.exit_code == 0 and len(read_csv(tmp_path / "o.csv")[1]) == 2


def _run(url: str, input_path: Path, out: Path, *extra: str) -> Any:
    args = ["run", str(input_path), "-o", str(out), "--agent", "ca_test", "--base-url", url]
    return CliRunner().invoke(
        cli, [*args, "--no-progress", *extra], env={"OCTAVE_API_KEY": TEST_KEY}
    )


def test_the_end_of_run_lines_count_as_validate_and_status_do(
    make_sim: Any, tmp_path: Path
) -> None:
    """Rejects include duplicates everywhere; latency over 1 s in seconds; no lock or in-flight
    file is left after a clean finish."""
    sim = make_sim(latency=parse_latency("1.2s:0"))
    rows = tmp_path / "in.csv"
    write_contacts(rows, 4)
    with rows.open("a", encoding="utf-8") as handle:
        handle.write("c-00001,p1@example.com,First1,Doe,Acme,VP\n")  # a duplicate
        handle.write("c-00009,not-an-email,Ann,Doe,Acme,VP\n")  # invalid
    out = tmp_path / "out.ndjson"
    result = _run(sim.url, rows, out)
    assert result.exit_code == 0, result.output
    assert "rejected 2 (1 duplicate)" in result.output
    assert "latency p50 1.2" in result.output and " s\n" in result.output
    assert " ms" not in result.output.split("latency p50", 1)[1].splitlines()[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.")) == [
        "out.cursor.json", "out.cursor.keys", "out.errors.ndjson", "out.ledger.sqlite", "out.ndjson",
        "out.rejects.ndjson", "out.summary.json",
    ]  # fmt: skip
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert "  rejected: 2\n" in status.output
    checked = CliRunner().invoke(cli, ["validate", str(rows), "-o", str(tmp_path / "v.ndjson")])
    assert "rejected 2" in checked.output


def test_a_header_only_file_prints_no_none(live_sim: Any, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 0)
    result = _run(live_sim.url, tmp_path / "in.csv", tmp_path / "out.ndjson")
    assert result.exit_code == 0, result.output
    assert "None" not in result.output and "latency p50 -" in result.output
    start = result.output.splitlines()[0]  # short, and only what is not zero
    assert start.endswith(
        f"start: {tmp_path / 'in.csv'} (csv, utf-8) -> {tmp_path / 'out.ndjson'}"
        f" (run {start.rsplit(' ', 1)[1]}"
    )


def test_a_run_refused_before_its_start_leaves_no_lock_file(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    result = _run(sim.url + "/wrong", tmp_path / "in.csv", tmp_path / "out.ndjson")
    assert result.exit_code == 2 and "--base-url is wrong" in result.output
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.inflight"))


def test_status_of_an_output_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(tmp_path / "nonexistent.ndjson")])
    assert result.exit_code == 2
    assert "nonexistent.ndjson: no such output" in result.output


def test_the_demo_output_folder_is_ignored_by_git() -> None:
    from octave_bulk.cli.tools import demo

    [out_dir] = [p.default for p in demo.params if p.name == "out_dir"]
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert f"/{out_dir}/" in ignored


def test_an_unknown_config_key_suggests_the_nearest_and_a_file_that_exists(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("concurency = 3\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["doctor", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown setting 'concurency'; did you mean 'concurrency'?" in result.output
    listed = result.output.split("every setting, with its default: ", 1)[1].split(")")[0]
    assert "# concurrency = 32 " in Path(listed).read_text(encoding="utf-8")


def test_a_bad_environment_value_names_the_variable() -> None:
    env = {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_CONCURRENCY": "lots"}
    result = CliRunner().invoke(cli, ["doctor"], env=env)
    assert result.exit_code == 2
    assert "concurrency (from OCTAVE_CONCURRENCY): Input should be a valid integer" in (
        result.output
    )


def _frames(raw: bytes) -> list[str]:
    """The progress bar's frames as drawn on a terminal, escape codes removed."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace"))
    return [line.strip() for line in re.split(r"[\r\n]", text) if "octave-bulk ━" in line]


@pytest.mark.slow
def test_the_progress_bar_counts_contacts_to_send_and_ends_on_the_final_counts(
    make_sim: Any, tmp_path: Path
) -> None:
    """On a terminal: in flight shown, "waiting for the first answers" instead of 0.0/s, the
    total is the contacts to send (rejects left out), and the last frame is the final count."""
    sim = make_sim(latency=parse_latency("1.5s:0"))
    write_contacts(tmp_path / "in.csv", 6)
    with (tmp_path / "in.csv").open("a", encoding="utf-8") as handle:
        handle.write("c-00008,not-an-email,Ann,Doe,Acme,VP\nc-00009,,Bo,Doe,Acme,VP\n")
    master, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": TEST_KEY, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "octave_bulk", "run", str(tmp_path / "in.csv")]
    cmd += ["-o", str(tmp_path / "out.ndjson"), "--agent", "ca_test", "--base-url", sim.url]
    cmd += ["--rate", "none", "--concurrency", "3", "--progress"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the run ended and closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert process.wait(timeout=30) == 0
    frames = _frames(bytes(drawn))
    assert any("in flight 3" in f and "waiting for the first answers" in f for f in frames)
    assert not any("0.0/s" in f for f in frames)
    assert "6/6 ok 6 failed 0 in flight 0" in frames[-1], frames[-1]


@pytest.mark.slow
def test_a_hung_last_call_is_named_with_its_timeout(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00002": "hang"})
    write_contacts(tmp_path / "in.csv", 4)
    out = tmp_path / "out.ndjson"
    result = _run(sim.url, tmp_path / "in.csv", out, "--timeout", "6", "--max-attempts", "1")
    assert result.exit_code == 1, result.output
    [waiting] = [line for line in result.output.splitlines() if " waiting " in line]
    assert "in_flight=1" in waiting and "timeout_s=6.0" in waiting


@pytest.mark.slow
def test_ctrl_c_says_how_long_the_drain_lasts_and_what_a_second_one_does(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("2s:0"))
    write_contacts(tmp_path / "in.csv", 4)
    run = Run(sim.url, tmp_path / "in.csv", tmp_path / "out.ndjson", "--concurrency", "2")
    deadline = time.monotonic() + 20
    while sim.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.signal(signal.SIGINT)
    code, log = run.finish()
    assert code == 130, log
    assert re.search(r"letting the \d call\(s\) in flight finish, for at most 120 s \(until ", log)
    assert "a second Ctrl-C stops at once and abandons them (they may be paid)" in log


def test_the_readme_says_how_long_the_tests_take_and_names_a_quick_subset() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert re.search(r"`python -m pytest` runs everything, in about \d+ minutes", readme)
    assert not re.search(r"\d+ tests", readme)  # a count the code would have to keep true
    quick = re.search(r'`python -m pytest -m "not (\w+)"` is the quick subset, in about', readme)
    assert quick is not None
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{quick.group(1)}: ' in pyproject  # a registered marker (--strict-markers)
