"""The forecast before paying: `plan`, `run --dry-run`, and the credits guard of `run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from octave_bulk.cli import cli
from tests.conftest import TEST_KEY
from tests.helpers import write_contacts

ENV = {"OCTAVE_API_KEY": TEST_KEY}


def _calls(sim: Any) -> int:
    return int(sim.stats()["totals"].get("calls", 0))


def _args(command: str, csv: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [command, str(csv), "-o", str(out), "--agent", "ca_1", "--base-url", url,
            "--rate", "none", *extra]  # fmt: skip


def _workspace(make_sim: Any, credits: float) -> Any:
    """A simulator whose workspace has agent ca_1 (2 credits a run) and ``credits`` left."""
    return make_sim(agents={"ca_1": "EMAIL"}, usage_per_run=2.0, credits_max=credits)


def test_plan_counts_costs_and_refuses_an_overdraft(make_sim: Any, tmp_path: Path) -> None:
    sim = _workspace(make_sim, credits=100)
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 60)
    with open(csv, "a", encoding="utf-8") as handle:
        handle.write(",,NoEmail,Doe,Acme,VP\n")  # rejected: no identity
        handle.write(",p0@example.com,First0,Doe,Acme,VP\n")  # a duplicate of contact 0
    runner = CliRunner()
    planned = runner.invoke(cli, _args("plan", csv, out, sim.url), env=ENV)
    assert planned.exit_code == 3, planned.output
    assert "rows read 62: rejected 1, duplicates 1" in planned.output
    assert "to send: 60 contacts" in planned.output
    assert "60 x 2 = 120 of 100 remaining: MORE THAN REMAINS" in planned.output
    assert "30-60 s a call" in planned.output  # no history yet: the settings' range
    assert _calls(sim) == 0

    refused = runner.invoke(cli, _args("run", csv, out, sim.url, "--no-progress"), env=ENV)
    assert refused.exit_code == 3, refused.output
    assert "120 credits, but 100 remain" in refused.output and "--allow-overdraft" in refused.output
    assert _calls(sim) == 0 and not out.exists()

    # 20 contacts fit (40 credits): no refusal, and the plan then counts them as done.
    limited = runner.invoke(cli, _args("run", csv, out, sim.url, "--limit", "20"), env=ENV)
    assert limited.exit_code == 0, limited.output
    assert _calls(sim) == 20
    again = runner.invoke(cli, _args("plan", csv, out, sim.url, "--allow-overdraft"), env=ENV)
    assert again.exit_code == 0, again.output
    assert "already done 20" in again.output and "to send: 40 contacts" in again.output
    assert "40 x 2 = 80 of 60 remaining" in again.output
    assert "latency of the output's last 20 calls" in again.output
    assert _calls(sim) == 20


def test_allow_overdraft_runs_anyway(make_sim: Any, tmp_path: Path) -> None:
    sim = _workspace(make_sim, credits=10)
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    write_contacts(csv, 8)
    args = _args("run", csv, out, sim.url, "--no-progress", "--max-calls", "3")
    assert CliRunner().invoke(cli, args, env=ENV).exit_code == 5  # 3 x 2 <= 10: no refusal
    args = _args("run", csv, out, sim.url, "--no-progress", "--allow-overdraft")
    result = CliRunner().invoke(cli, args, env=ENV)
    assert _calls(sim) > 3, result.output


def test_dry_run_prints_the_plan_and_the_request_on_demand(live_sim: Any, tmp_path: Path) -> None:
    csv, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    csv.write_text(
        "email,firstName,lastName,companyName,jobTitle\n"
        "zoe@example.com,Zoë,Müller,Société Générale,CEO\n",
        encoding="utf-8",
    )
    plan = CliRunner().invoke(cli, _args("run", csv, out, live_sim.url, "--dry-run"), env=ENV)
    assert plan.exit_code == 0, plan.output
    assert "to send: 1 contact\n" in plan.output and "credits:" in plan.output
    shown = CliRunner().invoke(
        cli, _args("run", csv, out, live_sim.url, "--dry-run", "--show-request"), env=ENV
    )
    assert shown.exit_code == 0, shown.output
    assert "Zoë" in shown.output and "Société Générale" in shown.output  # not \\u-escaped
    assert json.loads(shown.output)["would_send"] == 1
    assert _calls(live_sim) == 0 and not out.exists()


def test_plan_without_a_key_leaves_the_credits_unknown(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    write_contacts(csv, 3)
    result = CliRunner().invoke(
        cli, ["plan", str(csv), "-o", str(tmp_path / "o.ndjson"), "--agent", "ca_1"]
    )
    assert result.exit_code == 0, result.output
    assert "credits: unknown: no API key" in result.output
    assert "to send: 3 contacts" in result.output
    assert "30 s to 60 s" in result.output  # 3 calls in flight at once: one call's time
