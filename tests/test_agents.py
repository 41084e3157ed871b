"""Every agent in bulk: a CRM export becomes that agent's requests, the simulator answers, each
answer is judged by the agent's own success rule, the agent's export preset flattens it, and a
run killed with -9 resumes with nothing lost and nothing paid twice beyond what was in flight."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_latency
from octave_bulk.state.inflight import InflightSlots
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, wait_for_lines

PERSON_AGENTS = ("enrich-person", "qualify-person", "content", "call-prep")
COMPANY_AGENTS = ("enrich-company", "qualify-company", "prospector")
EXPECTED_COLUMNS = {
    "enrich-person": {"person.title", "company.industry"},
    "enrich-company": {"industry", "employee_count", "funding_total", "matched_product"},
    "qualify-person": {"score", "rationale", "q:product:Do they run outbound campaigns?"},
    "qualify-company": {"score", "rationale", "product_score"},
    "content": {"content", "json_content"},
    "call-prep": {"person_brief", "discovery_questions", "call_script"},
    "prospector": {"first_name", "last_name", "title", "email", "linkedin_url"},
}


def hubspot_contacts(path: Path, count: int) -> None:
    """A HubSpot contacts export, with our own requestIds (r-N) to force answers by."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["requestId", "Record ID", "First Name", "Last Name", "Email",
                         "Company Name", "Job Title", "Lifecycle Stage"])  # fmt: skip
        for n in range(count):
            writer.writerow([f"r-{n}", 5000 + n, f"First{n}", "Doe", f"p{n}@acme{n}.com",
                             f"Acme {n}", "VP Sales", "lead"])  # fmt: skip


def hubspot_companies(path: Path, count: int) -> None:
    """A HubSpot companies export (its Record ID is the account), the last row a second
    record of company 0 (same domain, written as a website)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["requestId", "Record ID", "Company name", "Company Domain Name",
                         "Industry", "Number of Employees"])  # fmt: skip
        for n in range(count):
            writer.writerow([f"r-{n}", 7000 + n, f"Acme {n}", f"acme{n}.com", "Software", 50])
        writer.writerow(["r-dup", 7999, "Acme Zero Again", "https://www.acme0.com/", "", ""])


def run(url: str, tmp_path: Path, kind: str, *extra: str) -> Result:
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent-type", kind, "--agent", "ca_1", "--base-url", url, "--rate", "none",
            "--no-progress", "--max-attempts", "2", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})


@pytest.mark.slow
@pytest.mark.parametrize("kind", PERSON_AGENTS + COMPANY_AGENTS)
def test_an_agent_runs_judges_its_answers_and_exports_them(
    kind: str, make_sim: Any, tmp_path: Path
) -> None:
    company = kind in COMPANY_AGENTS
    (hubspot_companies if company else hubspot_contacts)(tmp_path / "in.csv", 6)
    sim = make_sim(forced={"r-1": "not_found", "r-2": "empty"})
    result = run(sim.url, tmp_path, kind)
    assert result.exit_code == 1, result.output  # two contacts failed, for good
    assert sim.stats()["totals"]["calls"] == 6  # r-1, r-2 not retried; no 400 from the model
    lines = read_lines(tmp_path / "out.ndjson")
    assert sorted(line["requestId"] for line in lines) == ["r-0", "r-3", "r-4", "r-5"]
    for line in lines:
        assert "requestId" not in line["contact"]  # documented for the sequence agent only
        crm = "crmAccountId" if company else "crmContactId"
        assert line["contact"][crm] == str((7000 if company else 5000) + int(line["requestId"][2:]))
    errors = {
        line["requestId"]: line["error"]
        for line in read_lines(side(tmp_path / "out.ndjson", ".errors.ndjson"))
    }
    assert errors["r-1"]["kind"] == errors["r-2"]["kind"] == "not_found"
    assert not errors["r-1"]["retryable"] and "nothing produced" in errors["r-2"]["message"]
    if company:  # the second record of acme0.com is the same company: rejected, kept for write-back
        rejects = read_lines(side(tmp_path / "out.ndjson", ".rejects.ndjson"))
        assert [(r["reason"], r["line"]) for r in rejects] == [("duplicate", 8)]
        assert "same company (domain) as line 2" in rejects[0]["message"]
    exported = CliRunner().invoke(
        cli,
        ["export", str(tmp_path / "out.ndjson"), "-o", str(tmp_path / "x.csv"), "--preset", kind],
    )
    assert exported.exit_code == 0, exported.output
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert EXPECTED_COLUMNS[kind] <= set(rows[0])
    assert {row["request_id"] for row in rows} == {"r-0", "r-3", "r-4", "r-5"}
    if kind == "prospector":
        assert len(rows) == 4 * 5  # five people found per company (the agent's default)
        assert all(row["email"].endswith(row["input_company_domain"]) for row in rows)
    else:
        assert len(rows) == 4
    if company:
        by_id = {row["request_id"]: row for row in rows}
        assert by_id["r-0"]["other_crm_ids"] == "7999"


def test_each_agent_pays_its_own_requests(make_sim: Any, tmp_path: Path) -> None:
    """The same people through two agents: different requestIds and person keys, and an
    output belongs to one agent, so one agent's done-set never skips the other's work."""
    hubspot_contacts(tmp_path / "in.csv", 3)
    csv_path = tmp_path / "in.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line.split(",", 1)[1] for line in rows) + "\n")  # no ids
    sim = make_sim()
    assert run(sim.url, tmp_path, "qualify-person").exit_code == 0
    mixed = run(sim.url, tmp_path, "enrich-person")
    assert mixed.exit_code == 2 and "holds qualify-person results" in mixed.output
    enrich = run(sim.url, tmp_path, "enrich-person", "-o", str(tmp_path / "enrich.ndjson"))
    assert enrich.exit_code == 0, enrich.output
    assert run(sim.url, tmp_path, "qualify-person").exit_code == 0  # all done: nothing sent
    assert sim.stats()["totals"]["calls"] == 6
    lines = read_lines(tmp_path / "out.ndjson") + read_lines(tmp_path / "enrich.ndjson")
    assert (
        len({line["requestId"] for line in lines})
        == len({line["personKey"] for line in lines})
        == 6
    )


def test_bad_prospector_settings_are_refused_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    hubspot_companies(tmp_path / "in.csv", 2)
    sim = make_sim()
    bad = run(sim.url, tmp_path, "prospector", "--search-context", "[1, 2]")
    assert bad.exit_code == 2 and "search_context" in bad.output and "JSON object" in bad.output
    too_many = run(sim.url, tmp_path, "prospector", "--prospect-limit", "5000")
    assert too_many.exit_code == 2 and "prospect_limit" in too_many.output
    assert sim.stats()["totals"].get("calls", 0) == 0
    ok = run(sim.url, tmp_path, "prospector", "--prospect-limit", "3", "--no-prospect-minimal",
             "--search-context", '{"fuzzyTitles": ["VP Sales"]}')  # fmt: skip
    assert ok.exit_code == 0, ok.output
    line = read_lines(tmp_path / "out.ndjson")[0]
    assert len(line["response"]["data"]["people"]) == 3
    sent = line["contact"]  # the body as sent (plus the CRM id kept for write-back)
    assert (sent["limit"], sent["minimal"]) == (3, False)
    assert sent["searchContext"] == {"fuzzyTitles": ["VP Sales"]}


def test_a_file_without_company_columns_is_refused_for_a_company_agent(
    make_sim: Any, tmp_path: Path
) -> None:
    (tmp_path / "in.csv").write_text("Email,First Name\nada@acme.com,Ada\n")
    sim = make_sim()
    result = run(sim.url, tmp_path, "enrich-company")
    assert result.exit_code == 2
    assert "no column maps to companyDomain, companyName or crmAccountId" in result.output
    assert "in.csv:1" in result.output  # the file and the header's line
    assert sim.stats()["totals"].get("calls", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", PERSON_AGENTS + COMPANY_AGENTS)
def test_an_agent_run_killed_with_9_resumes_losing_nothing(
    kind: str, make_sim: Any, tmp_path: Path
) -> None:
    company = kind in COMPANY_AGENTS
    (hubspot_companies if company else hubspot_contacts)(tmp_path / "in.csv", 300)
    sim = make_sim(seed=2, latency=parse_latency("30ms:0.5"))
    out = tmp_path / "out.ndjson"
    killed = Run(sim.url, tmp_path / "in.csv", out, "--agent-type", kind, "--concurrency", "8")
    wait_for_lines(out, 5)  # under way, however slowly it started
    killed.kill()
    done = {line["requestId"] for line in _complete(out)}
    in_flight = set(InflightSlots.leftovers(side(out, ".inflight"))) - done
    assert 0 < len(done) < 300, "the kill must land mid-run"
    code, log = Run(sim.url, tmp_path / "in.csv", out, "--agent-type", kind).finish()
    assert code == 0, log
    ids = [line["requestId"] for line in read_lines(out)]
    assert sorted(ids) == sorted(f"r-{n}" for n in range(300))  # each once, none lost
    extra = sum(n - 1 for n in sim.stats()["successes"].values())
    assert extra <= len(in_flight)


def _complete(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


def test_doctor_checks_that_the_agent_exists_and_is_of_the_type_given(make_sim: Any) -> None:
    sim = make_sim(agents={"ca_seq": "EMAIL", "ca_score": "QUALIFY_PERSON"})

    def doctor(*args: str) -> Result:
        return CliRunner().invoke(
            cli, ["doctor", "--base-url", sim.url, *args], env={"OCTAVE_API_KEY": TEST_KEY}
        )

    good = doctor("--agent", "ca_score", "--agent-type", "qualify-person")
    assert good.exit_code == 0, good.output
    assert "qualify-person agents (QUALIFY_PERSON) in this workspace: 1" in good.output
    assert "ca_score" in good.output and "ok" in good.output
    wrong_type = doctor("--agent", "ca_score")  # run as a sequence agent by default
    assert wrong_type.exit_code == 2
    assert "ca_score is a QUALIFY_PERSON agent" in wrong_type.output
    assert "--agent-type qualify-person" in wrong_type.output
    typo = doctor("--agent", "ca_scroe", "--agent-type", "qualify-person")
    assert typo.exit_code == 2 and "ca_scroe does not exist" in typo.output
    listing = doctor()
    assert (
        listing.exit_code == 0 and "sequence agents (EMAIL) in this workspace: 1" in listing.output
    )
    assert sim.stats()["totals"].get("calls", 0) == 0  # nothing paid


def test_crm_presets_write_back_under_the_crms_names_to_every_record(
    make_sim: Any, tmp_path: Path
) -> None:
    hubspot_companies(tmp_path / "in.csv", 3)
    sim = make_sim()
    assert run(sim.url, tmp_path, "enrich-company").exit_code == 0
    out = str(tmp_path / "out.ndjson")

    def export(preset: str) -> tuple[list[str], list[dict[str, str]]]:
        result = CliRunner().invoke(
            cli, ["export", out, "-o", str(tmp_path / "x.csv"), "--preset", preset]
        )
        assert result.exit_code == 0, result.output
        with open(tmp_path / "x.csv", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    header, rows = export("hubspot")
    assert header[:3] == ["Record ID", "Name", "Company Domain Name"]
    assert {"Industry", "Number of Employees", "Total Money Raised"} <= set(header)
    # acme0.com's two CRM records (7000, and 7999 rejected as the same company) both get it.
    assert sorted(row["Record ID"] for row in rows) == ["7000", "7001", "7002", "7999"]
    header, rows = export("salesforce")
    assert header[:2] == ["Id", "Name"] and "NumberOfEmployees" in header
    custom = [name for name in header if name.endswith("__c")]
    assert custom and len(set(header)) == len(header)  # unique API names
    assert all(name.isidentifier() and len(name) <= 40 for name in custom)
    assert all("__" not in name.removesuffix("__c") for name in custom)
    sequence_out = tmp_path / "seq"
    sequence_out.mkdir()
    (sequence_out / "in.csv").write_text("email\nada@acme.com\n")
    assert run(sim.url, sequence_out, "sequence").exit_code == 0
    refused = CliRunner().invoke(
        cli, ["export", str(sequence_out / "out.ndjson"), "-o", "-", "--preset", "hubspot"]
    )
    assert refused.exit_code == 2 and "sequences go to a sequencer" in refused.output


def test_a_run_looks_the_agent_up_before_paying(make_sim: Any, tmp_path: Path) -> None:
    hubspot_contacts(tmp_path / "in.csv", 3)
    sim = make_sim(agents={"ca_score": "QUALIFY_PERSON"})
    args = ["--agent", "ca_score"]
    wrong = run(sim.url, tmp_path, "sequence", *args)
    assert wrong.exit_code == 2
    assert "ca_score is a QUALIFY_PERSON agent" in wrong.output
    assert "--agent-type qualify-person" in wrong.output
    typo = run(sim.url, tmp_path, "qualify-person", "--agent", "ca_scroe")
    assert typo.exit_code == 2 and "ca_scroe does not exist" in typo.output
    assert sim.stats()["totals"].get("calls", 0) == 0  # nothing paid
    assert not (tmp_path / "out.ndjson").exists() or read_lines(tmp_path / "out.ndjson") == []
    right = run(sim.url, tmp_path, "qualify-person", *args)
    assert right.exit_code == 0, right.output
    command = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "seq.ndjson"),
               "--agent", "ca_score", "--base-url", sim.url, "--rate", "none", "--no-progress"]  # fmt: skip
    env = {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_CHECK_AGENT": "false"}  # the lookup turned off
    unchecked = CliRunner().invoke(cli, command, env=env)
    assert unchecked.exit_code == 0 and sim.stats()["totals"]["calls"] == 6


def test_chaining_reads_each_persons_latest_result(make_sim: Any, tmp_path: Path) -> None:
    """A person qualified twice (the title changed in between): the next agent gets the
    latest result only; the older line is a `superseded` reject, never a second request."""
    sim = make_sim()
    people = tmp_path / "in.csv"
    people.write_text("email,jobTitle\nada@acme.com,VP Sales\ngrace@globex.io,CTO\n")
    assert run(sim.url, tmp_path, "qualify-person").exit_code == 0
    people.write_text("email,jobTitle\nada@acme.com,Chief Revenue Officer\n")
    assert run(sim.url, tmp_path, "qualify-person").exit_code == 0
    chained = CliRunner().invoke(
        cli,
        [
            "run",
            str(tmp_path / "out.ndjson"),
            "-o",
            str(tmp_path / "next.ndjson"),
            "--agent",
            "ca_2",
            "--base-url",
            sim.url,
            "--rate",
            "none",
            "--no-progress",
        ],  # fmt: skip
        env={"OCTAVE_API_KEY": TEST_KEY},
    )
    assert chained.exit_code == 0, chained.output
    sent = {
        line["contact"]["email"]: line["contact"] for line in read_lines(tmp_path / "next.ndjson")
    }
    assert sorted(sent) == ["ada@acme.com", "grace@globex.io"]
    assert sent["ada@acme.com"]["jobTitle"] == "Chief Revenue Officer"
    rejects = read_lines(side(tmp_path / "next.ndjson", ".rejects.ndjson"))
    assert [(r["reason"], r["line"]) for r in rejects] == [("superseded", 1)]
