"""The command line: exit codes, messages, the demo and the standalone simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.cli.main import COMMANDS
from tests.conftest import TEST_KEY, load_json
from tests.helpers import write_contacts


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_every_command_has_help(runner: CliRunner) -> None:
    for name in cli.list_commands(click.Context(cli)):
        command = cli.get_command(click.Context(cli), name)
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert command is not None and command.help, name
        # The group lists each command's summary without importing it: they must agree.
        assert command.help.splitlines()[0] == COMMANDS[name][1], name


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["status", "missing.ndjson"]])
def test_light_commands_load_no_http_stack_or_models(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from octave_bulk.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ['octave_bulk.run.engine', 'uvloop', 'aiohttp', 'httpx', 'pydantic']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "fast"], "rate: bad rate 'fast'"),
        (["--concurrency", "0"], "concurrency: must be > 0"),
        (["--agent", "ca_1", "--experiment", "ae_1"], "either an agent or an experiment"),
        (["-o", "out.csv"], "must end in .ndjson"),
    ],
)
def test_bad_settings_exit_2(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    base = [str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1"]
    result = runner.invoke(cli, ["run", *base, *args], env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("error:") and "\n  " in result.output  # message, then next step


def test_missing_key_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    result = runner.invoke(
        cli, ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1"]
    )
    assert result.exit_code == 2 and "no API key" in result.output


def test_run_and_status(runner: CliRunner, tmp_path: Path, make_sim: Any) -> None:
    sim = make_sim(forced={"c-00002": "not_found"})
    write_contacts(tmp_path / "in.csv", 10)
    out = tmp_path / "o.ndjson"
    args = [
        "run",
        str(tmp_path / "in.csv"),
        "-o",
        str(out),
        "--agent",
        "ca_1",
        "--base-url",
        sim.url,
        "--rate",
        "none",
    ]
    result = runner.invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 1, result.output
    assert "succeeded 9" in result.output and "failed 1" in result.output
    status = runner.invoke(cli, ["status", str(out), "--json"])
    info = json.loads(status.output)
    assert (info["succeeded"], info["failed_permanent"], info["credits"]) == (9, 1, 9.0)
    assert info["running"] is None and info["last_run"]["exit_code"] == 1
    text = runner.invoke(cli, ["status", str(out)])
    assert "succeeded: 9" in text.output and "not running" in text.output


def test_dry_run_prints_what_would_be_sent(runner: CliRunner, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 4)
    out = tmp_path / "o.ndjson"
    result = runner.invoke(
        cli,
        ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_1", "--dry-run",
         "--show-request"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["would_send"] == 4 and payload["example_request"]["email"] == "p0@example.com"
    assert not out.exists()


@pytest.mark.slow
def test_demo(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["demo", "--contacts", "40", "--out", str(tmp_path / "demo"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "demo" / "demo-results.ndjson").read_text().splitlines()
    assert len(lines) == 40
    assert "succeeded 40" in result.output


def test_simulate_answers_the_seed_example(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "octave_bulk", "simulate", "--port", "0", "--latency", "fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        body = load_json("seed_example_1.json")
        response = httpx.post(
            f"{url}/api/v2/agents/sequence/run", json=body, headers={"api_key": "x"}
        )
        assert response.status_code == 200
        emails = response.json()["data"]["emails"]
        assert emails and all("Sarah" in e["email"] for e in emails)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_simulate_rejects_bad_options(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["simulate", "--faults", "fire=1"])
    assert result.exit_code == 2 and "unknown fault kind 'fire'" in result.output


def test_validate_counts_and_writes_rejects(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "Email,First Name,Company\n"
        "ann@acme.com,Ann,Acme\n"
        "not-an-email,Bob,Acme\n"
        ",Cy,Acme\n"
        "ann@acme.com,Ann,Acme\n",
        encoding="utf-8",
    )
    result = runner.invoke(cli, ["validate", str(path), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["read"], report["valid"]) == (4, 1)
    assert report["rejected"] == {"invalid_email": 1, "missing_identity": 1, "duplicate": 1}
    rejects = [
        json.loads(line) for line in (tmp_path / "leads.rejects.ndjson").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "invalid_email"),
        (4, "missing_identity"),
        (5, "duplicate"),
    ]
    assert "line 2" in rejects[2]["message"]


def test_validate_shows_the_mapping(runner: CliRunner, tmp_path: Path) -> None:
    exports = Path(__file__).parent / "data" / "exports"
    out = str(tmp_path / "v.ndjson")
    apollo = runner.invoke(cli, ["validate", str(exports / "apollo_export.csv"), "-o", out])
    assert "profile: apollo (detected from the header)" in apollo.output
    assert "Person Linkedin Url     -> linkedInProfile" in apollo.output
    assert apollo.exit_code == 1 and "invalid_linkedin: 1" in apollo.output
    linkedin = runner.invoke(
        cli, ["validate", str(exports / "linkedin_connections.csv"), "-o", out]
    )
    assert linkedin.exit_code == 0 and "profile: linkedin" in linkedin.output


def test_validate_unreadable_or_bad_header_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    missing = runner.invoke(cli, ["validate", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "cannot open" in missing.output
    dup = tmp_path / "dup.csv"
    dup.write_text("Email,email\na@b.co,c@d.co\n")
    result = runner.invoke(cli, ["validate", str(dup)])
    assert result.exit_code == 2 and "duplicate" in result.output.lower()
