"""What a user reads (issue 28): help in sections with examples, renamed flags and their old
names, OCTAVE_CONFIG, did-you-mean, status --ledger, export to a pipe, the generated reference,
and a README that fits and states no count the code does not."""

from __future__ import annotations

import csv
import io
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
from tests.helpers import read_lines, side, write_contacts

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"
SECTIONS = ("Target:", "Input:", "Pacing:", "Safety:", "Output:", "Async:", "Agent options:")


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def _options_listed(text: str) -> list[str]:
    """The option lines of a help text (each starts with two spaces and a dash)."""
    return [line for line in text.splitlines() if re.match(r"^  -", line)]


def test_run_help_lists_at_most_30_options_in_sections_with_two_examples() -> None:
    text = _help("run")
    assert len(_options_listed(text)) <= 30, _options_listed(text)
    positions = [text.index(title) for title in SECTIONS]
    assert positions == sorted(positions)  # every section, in this order
    examples = re.findall(r"^  octave-bulk run .+$", text, re.MULTILINE)
    assert len(examples) == 2 and text.index(examples[0]) < text.index("Target:")
    assert text.count("OCTAVE_CONFIG") == 2  # the rule, and --config's own line
    assert "Env OCTAVE_" not in text  # the environment rule is said once, not on each line
    for expert in ("--call-deadline", "--max-response-bytes", "--async-body", "--callback-url",
                   "--poll-rate", "--metrics-textfile", "--log-file", "--adaptive",
                   "--prospect-limit", "--show-request", "--key ", "--format "):  # fmt: skip
        assert expert not in text, expert
    assert "docs/reference.md" in text  # where the hidden ones are listed


@pytest.mark.parametrize(
    ("command", "absent"),
    [
        ("plan", ("--progress", "--log-format", "--callback-url", "--metrics-textfile",
                  "--detach", "--fail-on")),
        ("probe", ("--callback-url", "--metrics-textfile", "--detach", "--fail-on")),
    ],
)  # fmt: skip
def test_plan_and_probe_list_only_what_affects_them(command: str, absent: tuple[str, ...]) -> None:
    text = _help(command)
    assert "Target:" in text and "--agent " in text and "--rate" in text
    for flag in absent:
        assert flag not in text, flag


def test_old_flag_names_still_work_and_give_the_same_run(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 4)
    env = {"OCTAVE_API_KEY": TEST_KEY}
    common = ["--agent", "ca_1", "--base-url", sim.url, "--rate", "none", "--no-progress"]
    outputs = []
    for key_flag, format_flag in (("--person-key", "--input-format"), ("--key", "--format")):
        out = tmp_path / f"{key_flag.strip('-')}.ndjson"
        args = ["run", str(tmp_path / "in.csv"), "-o", str(out), key_flag, "crmContactId",
                format_flag, "csv", *common]  # fmt: skip
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        renamed = "note: --key is now --person-key; the old name goes in a later release"
        assert (renamed in result.output) == (key_flag == "--key")
        outputs.append(out)
    new, old = (read_lines(out) for out in outputs)
    assert [r["requestId"] for r in new] == [r["requestId"] for r in old] and len(new) == 4
    assert {r["personKey"] for r in new} == {r["personKey"] for r in old}
    refused = CliRunner().invoke(cli, ["run", "in.csv", "-o", "o.ndjson", "--person-key", "Email"])
    assert refused.exit_code == 2 and "unknown key field 'Email'" in refused.output


def test_octave_config_names_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "nightly.toml"
    config.write_text('rate = "fast"\n', encoding="utf-8")
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1"]
    result = CliRunner().invoke(cli, args, env={"OCTAVE_CONFIG": str(config)})
    assert result.exit_code == 2, result.output
    assert "bad rate 'fast'" in result.output and "nightly.toml" in result.output
    flag = CliRunner().invoke(cli, [*args, "--config", str(tmp_path / "missing.toml")],
                              env={"OCTAVE_CONFIG": str(config)})  # fmt: skip
    assert "bad rate" not in flag.output  # --config wins over OCTAVE_CONFIG


@pytest.mark.parametrize(("typed", "meant"), [("simulator", "simulate"), ("stauts", "status")])
def test_a_mistyped_command_gets_a_did_you_mean(typed: str, meant: str) -> None:
    result = CliRunner().invoke(cli, [typed])
    assert result.exit_code == 2
    assert f"No such command '{typed}'. Did you mean '{meant}'?" in result.output


def _finished_run(make_sim: Any, tmp_path: Path, *extra: str) -> Path:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_1",
            "--base-url", sim.url, "--rate", "none", "--no-progress", *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 0, result.output
    return out


def test_status_reads_a_shared_ledger_given_with_ledger(make_sim: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared.sqlite"
    out = _finished_run(make_sim, tmp_path, "--ledger", str(shared))
    side(out, ".summary.json").unlink()  # the last run is then known from the ledger only
    plain = CliRunner().invoke(cli, ["status", str(out)])
    assert plain.exit_code == 0 and "last run:" not in plain.output
    given = CliRunner().invoke(cli, ["status", str(out), "--ledger", str(shared)])
    assert given.exit_code == 0, given.output
    assert re.search(r"last run: \w+ finished \S+ exit 0", given.output), given.output


def test_export_writes_to_a_pipe_without_o(make_sim: Any, tmp_path: Path) -> None:
    out = _finished_run(make_sim, tmp_path)
    result = CliRunner().invoke(cli, ["export", str(out)])  # stdout is not a terminal here
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3 and all(row["step1_subject"] for row in rows)
    new = CliRunner().invoke(cli, ["export", str(out), "--new"])
    assert new.exit_code == 2 and "Missing option '-o'" in new.output  # a mark needs a file


def test_the_reference_is_generated_and_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "--diff", str(REFERENCE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    long = [n for n, line in enumerate(lines, 1) if len(line) > 200]
    assert not long, f"README lines over 200 characters: {long}"


_COUNTED = r"(\d[\d,]*) (commands|settings|options|flags|presets|profiles|agent types)\b"


def _counts_in_code() -> dict[str, int]:
    from octave_bulk.cli.main import COMMANDS
    from octave_bulk.settings.model import Settings

    run = cli.get_command(click.Context(cli), "run")
    assert run is not None
    options = sum(isinstance(param, click.Option) for param in run.params)
    return {"commands": len(COMMANDS), "settings": len(Settings.model_fields), "options": options}


def test_every_count_the_docs_state_is_the_codes() -> None:
    """A count of commands or settings in the README or docs/ is the code's; the reference's
    counts of run's options are the help's own."""
    actual = _counts_in_code()
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for path in docs:
        text = " ".join(path.read_text(encoding="utf-8").split())
        for number, noun in re.findall(_COUNTED, text):
            assert noun in actual, f"{path.name} states '{number} {noun}', which no test checks"
            assert int(number.replace(",", "")) == actual[noun], f"{path.name}: {number} {noun}"
    reference = REFERENCE.read_text(encoding="utf-8")
    stated = re.search(
        r"`run` takes (\d+) options, (\d+) of them listed by `run --help`", reference
    )
    assert stated is not None
    assert int(stated.group(2)) == len(_options_listed(_help("run")))
    assert int(stated.group(1)) > int(stated.group(2))


_OTHER_PROGRAMS = {
    "--check",
    "--strict",
    "--header",
    "--smoke",
    "--cache-sim",
    "--slow-calls",
    "--baseline",
    "--ratio-only",
    "--instructions",
}
"""Flags the docs name of other programs: cog, mypy, curl, the benchmarks' scripts."""


def test_every_flag_the_docs_name_is_an_option_of_a_command() -> None:
    ctx = click.Context(cli)
    flags = {"--help", "--version"}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        commands = [command, *getattr(command, "commands", {}).values()]
        for each in commands:
            for param in getattr(each, "params", []):
                if isinstance(param, click.Option):
                    flags.update(param.opts + param.secondary_opts)
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", path.read_text(encoding="utf-8")))
        assert not named - flags - _OTHER_PROGRAMS, f"{path.name} names no such flag"
