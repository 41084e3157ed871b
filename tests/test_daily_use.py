"""Daily use: JSON logs, Prometheus metrics, doctor, the lock, and what README.md covers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from tests.conftest import TEST_KEY
from tests.helpers import side, write_contacts

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
REFERENCE = (Path(__file__).parent.parent / "docs" / "reference.md").read_text(encoding="utf-8")


def test_json_logs_are_one_object_per_line(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "429"})
    write_contacts(tmp_path / "in.csv", 20)
    log = tmp_path / "run.log"
    cmd = [
        sys.executable, "-m", "octave_bulk", "run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"),
        "--agent", "ca_1", "--base-url", sim.url, "--rate", "none", "--log-format", "json",
        "--log-file", str(log), "--max-attempts", "2",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={"OCTAVE_API_KEY": TEST_KEY, "PATH": ""}
    )
    assert result.returncode == 1, result.stderr
    for text in (result.stderr, log.read_text()):
        events = [json.loads(line) for line in text.splitlines()]
        names = [e["event"] for e in events]
        assert names[0] == "start" and names[-1] == "stop"
        assert "rate_limited" in names
        run_ids = {e["run_id"] for e in events if "run_id" in e}
        assert len(run_ids) == 1
        stop = events[-1]
        assert stop["exit_code"] == 1 and stop["counts"]["succeeded"] == 19
        assert all(e["level"] in {"info", "warning"} for e in events)
        assert TEST_KEY not in text
        assert "emails" not in text  # no response bodies in logs


def _samples(prom: Path) -> dict[tuple[str, str], float]:
    """(metric, status or code label) -> value, parsed as Prometheus parses the file."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, s.labels.get("status") or s.labels.get("code") or ""): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }


def test_metrics_textfile(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00002": "not_found"})
    write_contacts(tmp_path / "in.csv", 5)
    prom = tmp_path / "octave.prom"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1",
            "--base-url", sim.url, "--rate", "none", "--metrics-textfile", str(prom)]  # fmt: skip
    last_success = re.compile(r"^octave_bulk_last_success_timestamp_seconds\{.*\} (\S+)", re.M)
    stopped = CliRunner().invoke(cli, [*args, "--max-calls", "2"], env={"OCTAVE_API_KEY": TEST_KEY})
    assert stopped.exit_code == 5
    assert not last_success.search(prom.read_text())  # stopped early: not a success
    first = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert first.exit_code == 1  # one contact failed for good: the night still completed
    samples = _samples(prom)
    assert samples[("octave_bulk_contacts", "succeeded")] == 2
    assert samples[("octave_bulk_last_exit_code", "")] == 1
    success = last_success.search(prom.read_text())
    assert success is not None
    write_contacts(tmp_path / "in.csv", 9)
    again = CliRunner().invoke(cli, [*args, "--max-calls", "1"], env={"OCTAVE_API_KEY": TEST_KEY})
    assert again.exit_code == 5
    carried = last_success.search(prom.read_text())
    assert carried is not None and carried.group(1) == success.group(1)
    assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter must be able to read it


def test_doctor_against_the_simulator(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(api_key=TEST_KEY)
    runner = CliRunner()
    good = runner.invoke(cli, ["doctor", "--base-url", sim.url], env={"OCTAVE_API_KEY": TEST_KEY})
    assert good.exit_code == 0, good.output
    assert f"key: …{TEST_KEY[-4:]}" in good.output and "credits: 100000.0 left" in good.output
    assert TEST_KEY not in good.output
    bad = runner.invoke(
        cli, ["doctor", "--base-url", sim.url], env={"OCTAVE_API_KEY": "oct_wrong_key_123"}
    )
    assert bad.exit_code == 3 and "refused" in bad.output
    none = runner.invoke(cli, ["doctor", "--base-url", sim.url])
    assert none.exit_code == 2 and "OCTAVE_API_KEY" in none.output
    down = runner.invoke(
        cli, ["doctor", "--base-url", "http://127.0.0.1:9"], env={"OCTAVE_API_KEY": TEST_KEY}
    )
    assert down.exit_code == 1


def test_second_run_on_the_same_output_exits_2_naming_the_holder(
    make_sim: Any, tmp_path: Path
) -> None:
    from octave_bulk.state.paths import OutputPaths

    write_contacts(tmp_path / "in.csv", 2)
    out = tmp_path / "o.ndjson"
    sim = make_sim()
    # The holder is another process, so the pid in the message can only be the holder's.
    hold = (
        "import sys; from pathlib import Path; from octave_bulk.state.lock import RunLock; "
        "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()"
    )
    lock = OutputPaths.for_output(out).lock
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        args = [
            "run",
            str(tmp_path / "in.csv"),
            "-o",
            str(out),
            "--agent",
            "ca_1",
            "--base-url",
            sim.url,
        ]
        result = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
        assert result.exit_code == 2
        assert "another run is using this output" in result.output
        named = re.search(r'"pid":\s*(\d+)', result.output)
        assert named is not None and int(named.group(1)) == holder.pid, result.output
        status = CliRunner().invoke(cli, ["status", str(out)])
        assert "running (" in status.output
    finally:
        holder.communicate(timeout=30)  # closing its stdin releases the lock
    assert not side(out, ".errors.ndjson").exists()
    assert sim.stats()["totals"] == {}  # nothing was sent


def _walk(group: click.Group) -> list[tuple[str, click.Command]]:
    ctx = click.Context(group)
    return [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]  # type: ignore[misc]


@pytest.mark.parametrize(("name", "command"), _walk(cli))
def test_readme_documents_every_command_and_option(name: str, command: click.Command) -> None:
    """Every command is in the README; every option in the reference (docs/reference.md)."""
    assert f"octave-bulk {name}" in README, f"command {name} is not in README.md"
    for param in command.params:
        if isinstance(param, click.Option):
            for flag in param.opts + param.secondary_opts:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in REFERENCE, f"{name} {flag} is not in docs/reference.md"


def test_the_log_file_is_private_and_a_bad_one_stops_before_any_call(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 2)
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1",
            "--base-url", sim.url, "--rate", "none"]  # fmt: skip
    log = tmp_path / "run.log"
    assert (
        CliRunner()
        .invoke(cli, [*args, "--log-file", str(log)], env={"OCTAVE_API_KEY": TEST_KEY})
        .exit_code
        == 0
    )
    assert log.stat().st_mode & 0o777 == 0o600 and "stop" in log.read_text()
    bad = CliRunner().invoke(cli, [*args, "--log-file", str(tmp_path / "no" / "l.log")],
                             env={"OCTAVE_API_KEY": TEST_KEY})  # fmt: skip
    assert bad.exit_code == 2 and "cannot open the log file" in bad.output
