"""Paying once per person: the requestId follows the person key and the content, not the CRM
record ids or the columns of the CRM view; an output written with the old ids is adopted."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner, Result

from octave_bulk.cli import cli
from octave_bulk.run.engine import run_batch
from tests.helpers import read_lines, side, sim_settings


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def people(n: int, *, title: str = "VP", crm: bool = True, extra: bool = False) -> list[list[str]]:
    rows = []
    for i in range(n):
        row = [f"p{i}@example.com", f"First{i}", "Doe", "Acme", title]
        rows.append(row + ([f"10{i}"] if crm else []) + (["west"] if extra else []))
    return rows


HEADER = ["email", "firstName", "lastName", "companyName", "jobTitle"]


async def night(
    sim: Any, tmp_path: Path, rows: list[list[str]], header: list[str] | None = None
) -> Any:
    """One nightly run of ``rows`` into ``tmp_path/out.ndjson``; its summary."""
    path = tmp_path / "in.csv"
    write_rows(path, header or [*HEADER, "crmContactId"], rows)
    return await run_batch(path, tmp_path / "out.ndjson", sim_settings(sim.url))


def calls(sim: Any) -> int:
    return int(sim.stats()["totals"].get("calls", 0))


async def test_a_crm_view_change_pays_nobody_again(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    assert (await night(sim, tmp_path, people(6)))["counts"]["succeeded"] == 6
    # Tuesday's view: the CRM id column is gone and an unmapped column came in.
    again = await night(sim, tmp_path, people(6, crm=False, extra=True), [*HEADER, "Territory"])
    assert again["counts"]["skipped_done"] == 6 and calls(sim) == 6


async def test_a_real_change_is_paid_again_and_only_it(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    await night(sim, tmp_path, people(5))
    rows = people(5)
    rows[1][4] = rows[3][4] = "CEO"  # two new job titles
    again = await night(sim, tmp_path, rows)
    assert (again["counts"]["succeeded"], again["counts"]["skipped_done"]) == (2, 3)
    assert calls(sim) == 7


async def test_one_person_under_two_crm_records_is_paid_once(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    path, out = tmp_path / "in.csv", tmp_path / "out.ndjson"
    rows = people(3)
    rows.append([*rows[0][:5], "999"])  # p0 again, another Record ID
    rows.append(["P1@Example.com", "Other", "Name", "Acme", "VP", "998"])  # p1, other content
    write_rows(path, [*HEADER, "crmContactId"], rows)
    summary = await run_batch(path, out, sim_settings(sim.url))
    assert summary["counts"]["duplicate"] == 2 and calls(sim) == 3
    rejects = read_lines(side(out, ".rejects.ndjson"))
    assert [(r["line"], r["reason"]) for r in rejects] == [(5, "duplicate"), (6, "duplicate")]
    assert "as line 2" in rejects[0]["message"]  # the same request: only its CRM id differs
    assert "the same person (email) as line 3" in rejects[1]["message"]


def _legacy_id(body: dict[str, Any]) -> str:
    """The id versions before the person key derived: a hash of the whole body."""
    payload = {k: v for k, v in body.items() if k != "requestId"}
    return (
        "ob-" + hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    )


async def test_an_output_with_legacy_ids_is_adopted(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    out = tmp_path / "out.ndjson"
    await night(sim, tmp_path, people(4))
    # Rewrite the output as the last version wrote it: legacy ids, no runId.
    legacy = []
    for line in read_lines(out):
        body = {**line["contact"]}
        body["requestId"] = _legacy_id(body)
        legacy.append({"requestId": body["requestId"], "contact": body, "response": line["response"],
                       "attempts": 1, "latencyMs": 5, "completedAt": line["completedAt"]})  # fmt: skip
    out.write_text("".join(json.dumps(record) + "\n" for record in legacy), encoding="utf-8")
    again = await night(sim, tmp_path, people(5))  # one new person
    assert (again["counts"]["succeeded"], again["counts"]["skipped_done"]) == (1, 4)
    assert calls(sim) == 5


async def test_export_has_one_row_per_person_the_latest(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    out = tmp_path / "out.ndjson"
    await night(sim, tmp_path, people(3))
    rows = people(3)
    rows[2][4] = "CEO"  # p2 was promoted: new emails, paid again
    await night(sim, tmp_path, rows)
    assert len(read_lines(out)) == 4

    def exported(*extra: str) -> list[tuple[str, str]]:
        target = tmp_path / "export.csv"
        result = CliRunner().invoke(cli, ["export", str(out), "-o", str(target), *extra])
        assert result.exit_code == 0, result.output
        with open(target, newline="", encoding="utf-8") as handle:
            return [(row["email"], row["title"]) for row in csv.DictReader(handle)]

    latest = exported()
    assert sorted(latest) == [("p0@example.com", "VP"), ("p1@example.com", "VP"),
                              ("p2@example.com", "CEO")]  # fmt: skip
    assert len(exported("--all-versions")) == 4


def test_a_mass_resend_is_refused_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_test", "--base-url", sim.url, "--rate", "none", "--no-progress"]  # fmt: skip

    def night_cli(rows: list[list[str]], *extra: str, lang: bool = False) -> Result:
        header = [*HEADER, "crmContactId", *(["lang"] if lang else [])]
        write_rows(tmp_path / "in.csv", header, [[*r, "fr"] if lang else r for r in rows])
        return CliRunner().invoke(cli, [*args, *extra], env={"OCTAVE_API_KEY": "k"})

    assert night_cli(people(12)).exit_code == 0
    # The view gained a Language column: every person's content changes.
    refused = night_cli(people(12), lang=True)
    assert refused.exit_code == 2, refused.output
    assert "12 of the 12 people already done" in refused.output
    assert "lang added (12 of 12 sampled)" in refused.output and "--allow-resend" in refused.output
    assert calls(sim) == 12
    dry = night_cli(people(12), "--dry-run", "--show-request", lang=True)
    assert json.loads(dry.output)["resend"]["people_done_resent"] == 12
    # Two changed titles of twelve stay under the guard; --allow-resend lets all through.
    rows = people(12)
    rows[0][4] = rows[1][4] = "CEO"
    assert night_cli(rows).exit_code == 0 and calls(sim) == 14
    assert night_cli(rows, "--allow-resend", lang=True).exit_code == 0
    assert calls(sim) == 26


def test_validate_reports_what_a_run_would_pay_again(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    out = tmp_path / "out.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_test",
            "--base-url", sim.url, "--rate", "none", "--no-progress"]  # fmt: skip
    write_rows(tmp_path / "in.csv", [*HEADER, "crmContactId"], people(4))
    assert CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": "k"}).exit_code == 0
    rows = people(5)
    rows[0][4] = "CEO"
    write_rows(tmp_path / "in.csv", [*HEADER, "crmContactId"], rows)
    check = ["validate", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_test"]
    report = json.loads(CliRunner().invoke(cli, [*check, "--json"]).output)["resend"]
    assert (report["people_done_unchanged"], report["people_done_resent"]) == (3, 1)
    assert report["changed_fields"] == {"jobTitle changed": 1}
    text = CliRunner().invoke(cli, check).output
    assert "3 people done and unchanged, 1 would be paid again (25%): jobTitle changed" in text
    assert calls(sim) == 4


async def test_key_makes_one_field_the_person(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    rows = people(4)
    for row in rows:
        row[5] = "acct-1" if row[0] < "p2" else "acct-2"  # two accounts, two people each
    header = [*HEADER, "crmAccountId"]
    write_rows(tmp_path / "in.csv", header, rows)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, key="crmAccountId"))
    assert summary["counts"]["duplicate"] == 2 and calls(sim) == 2  # one request per account
    rejects = read_lines(side(out, ".rejects.ndjson"))
    assert "the same person (crmAccountId) as line 2" in rejects[0]["message"]


def test_an_unknown_key_field_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "in.csv", "-o", "out.ndjson", "--key", "Email"])
    assert result.exit_code == 2 and "unknown key field 'Email'" in result.output
