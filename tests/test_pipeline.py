"""Pipelines: enrich the companies of a contacts export, qualify the people with what the
enrichment found, write sequences for those who score 7 or more - with faults and a kill -9 in
the middle, each step paying once per eligible row."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_faults, parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import read_lines

PIPELINE = """
input = "{input}"
output_dir = "{out}"

[settings]
base_url = "{url}"
rate = "none"
concurrency = 32
backoff_initial = 0.01
backoff_max = 0.2
progress = false

[[steps]]
name = "enrich"
agent_type = "enrich-company"
agent = "ca_enrich"

[[steps]]
name = "qualify"
agent_type = "qualify-person"
agent = "ca_qualify"
input = "input"
context_from = ["enrich.data.company.description"]

[[steps]]
name = "sequence"
agent = "ca_sequence"
where = "score >= 7"
context_from = ["data.rationale"]
"""


def contacts(path: Path, people: int, companies: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Record ID", "Email", "First Name", "Last Name", "Company Name",
                         "Website URL", "Job Title"])  # fmt: skip
        for n in range(people):
            c = n % companies
            writer.writerow([9000 + n, f"p{n}@co{c}.com", f"P{n}", "Doe", f"Co {c}",
                             f"https://www.co{c}.com", "VP Sales"])  # fmt: skip


@pytest.mark.slow
def test_three_steps_with_faults_and_a_kill_pay_once_per_eligible_row(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(seed=9, latency=parse_latency("20ms:0.5"), faults=parse_faults("500=0.05"))
    contacts(tmp_path / "contacts.csv", 1000, 100)
    out = tmp_path / "out"
    file = tmp_path / "pipeline.toml"
    file.write_text(PIPELINE.format(input=tmp_path / "contacts.csv", out=out, url=sim.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env["OCTAVE_API_KEY"] = TEST_KEY
    cmd = [sys.executable, "-m", "octave_bulk", "pipeline", str(file)]
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    second = out / "qualify.ndjson"
    while not (second.exists() and second.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # in the middle of the second step
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    at_kill = len((out / "qualify.ndjson").read_bytes().splitlines())
    assert 0 < at_kill < 1000, at_kill  # the kill landed in the middle of the second step
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]

    enriched = read_lines(out / "enrich.ndjson")
    qualified = read_lines(out / "qualify.ndjson")
    sequences = read_lines(out / "sequence.ndjson")
    assert len(enriched) == 100  # one per company domain; the other 900 rows are duplicates
    assert len(qualified) == 1000
    eligible = {
        line["contact"]["email"] for line in qualified if line["response"]["data"]["score"] >= 7
    }
    assert 0 < len(eligible) < 1000
    assert {line["contact"]["email"] for line in sequences} == eligible
    # Each step paid once per eligible row: successes per request at most 1, but for the few
    # calls in flight at the kill (at most the concurrency).
    paid_twice = sum(n - 1 for n in sim.stats()["successes"].values())
    assert paid_twice <= 32
    assert sum(Counter(line["requestId"] for line in qualified).values()) == 1000
    # What the enrichment found went into the qualify requests, joined by company domain.
    first = qualified[0]["contact"]
    company = first["companyDomain"]
    description = next(e for e in enriched if e["contact"]["companyDomain"] == company)
    text = description["response"]["data"]["company"]["description"]
    assert f"description: {text}" in json.dumps(first["runtimeContext"])
    # And the rationale into the sequence requests; CRM ids carried along for the write-back.
    assert "rationale: " in sequences[0]["contact"]["runtimeContext"]["all"]
    assert sequences[0]["contact"]["crmContactId"].startswith("9")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0
    assert sum(n - 1 for n in sim.stats()["successes"].values()) == paid_twice  # nothing new


def test_a_wrong_pipeline_file_names_the_step_and_the_key(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text(
        'input = "in.csv"\noutput_dir = "out"\n[[steps]]\nname = "q"\nagent = "ca_1"\n'
        'agent_type = "qualify-person"\n[[steps]]\nname = "s"\nagent = "ca_2"\nwher = "score > 7"\n'
    )
    result = CliRunner().invoke(cli, ["pipeline", str(file)], env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 2
    assert "steps[2]: unknown key 'wher' (did you mean where?)" in result.output
    file.write_text('input = "in.csv"\noutput_dir = "out"\n[[steps]]\nname = "q"\n')
    result = CliRunner().invoke(cli, ["pipeline", str(file)], env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 2 and "steps[1] (q): give agent" in result.output
