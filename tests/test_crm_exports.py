"""Real CRM exports as they come (issue 25): repeated column labels, HubSpot's associated-record
ids, Salesforce exports by API names, the older LinkedIn Connections.csv, Pipedrive and Zoho
exports, language names, junk emails beside a LinkedIn URL, and what ``validate`` shows.

Every file here is synthetic, written from the public export formats (docs/crm-exports.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from octave_bulk.agents.base import RequestSpec
from octave_bulk.cli import cli
from octave_bulk.input.mapping import resolve_mapping
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact, Reject
from octave_bulk.input.validate import validate_input
from octave_bulk.run.engine import run_batch
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, sim_settings

SPEC = RequestSpec(agent_o_id="ca_test")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_all(path: Path, **options: Any) -> list[Contact | Reject]:
    with ContactReader(path, ReaderOptions(**options)) as reader:
        return list(reader)


def validate(path: Path, *args: str) -> Result:
    out = str(path.with_suffix(".ndjson"))
    return CliRunner().invoke(cli, ["validate", str(path), "-o", out, *args])


# -- repeated column labels --------------------------------------------------------------------


def test_a_repeated_label_no_column_uses_is_renamed_and_the_file_read(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("Email,First Name,Notes,notes\na@acme.io,Ana,x,y\n")
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert "notes_2" in result.output and "copy of 'Notes'" in result.output
    assert "'notes_2' (column D) is 'Notes' again" in result.output
    assert "read 1, valid 1" in result.output


def test_copies_that_disagree_on_a_used_field_stop_naming_both_and_the_map(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "e.csv", ["Email", "First Name", "Email"], [["a@acme.io", "Ana", "b@acme.io"]]
    )
    result = validate(path)
    assert result.exit_code == 2
    assert "'Email' (column A) and 'Email_2' (column C)" in result.output
    assert "--map 'Email_2='" in result.output and "--map 'Email_2=email'" in result.output
    # Either --map resolves it: keep the first copy, or use the second.
    kept = validate(path, "--map", "Email_2=")
    assert kept.exit_code == 0, kept.output
    [second] = read_all(path, overrides=("Email_2=email",))
    assert isinstance(second, Contact) and second.fields["email"] == "b@acme.io"


def test_copies_that_agree_or_are_empty_give_the_filled_value(tmp_path: Path) -> None:
    header = ["Email", "Company Name", "Phone Number", "Company name", "Phone Number"]
    rows = [
        ["a@acme.io", "Acme", "1", "Acme", "2"],  # the same company name twice; phones unused
        ["b@acme.io", "", "1", "Beta Corp", ""],  # the contact's own is empty: the copy's
        ["c@acme.io", "Gamma", "", "", ""],
    ]
    items = read_all(write_csv(tmp_path / "c.csv", header, rows))
    assert [i.fields["companyName"] for i in items if isinstance(i, Contact)] == [
        "Acme",
        "Beta Corp",
        "Gamma",
    ]


def test_copies_that_disagree_after_the_first_rows_reject_that_row(tmp_path: Path) -> None:
    rows = [[f"p{n}@acme.io", "Ana", f"p{n}@acme.io"] for n in range(150)]
    rows.append(["late@acme.io", "Ana", "other@acme.io"])
    path = write_csv(tmp_path / "late.csv", ["Email", "First Name", "Email"], rows)
    report = validate_input(path, ReaderOptions(), SPEC, tmp_path / "r.ndjson")
    assert (report.valid, report.rejected) == (150, {"ambiguous_column": 1})
    [reject] = read_lines(tmp_path / "r.ndjson")
    assert reject["line"] == 152 and reject["field"] == "email"
    assert "'Email' (column A) and 'Email_2' (column C)" in reject["message"]


def test_copies_of_a_name_that_disagree_use_the_first_filled_one(tmp_path: Path) -> None:
    """HubSpot's contacts with their associated company repeat Company Name (the contact's)
    and Company name (the company record's): they often differ, and neither says who the
    person is, so the contact's own is sent and every row is read."""
    header = ["Email", "Company Name", "Company name"]
    rows = [["a@acme.io", "Acme", "Acme Inc."], ["b@beta.io", "", "Beta Corp"]]
    path = write_csv(tmp_path / "names.csv", header, rows)
    assert validate(path).exit_code == 0
    items = read_all(path)
    assert [i.fields["companyName"] for i in items if isinstance(i, Contact)] == [
        "Acme",
        "Beta Corp",
    ]


def test_map_can_name_either_copy(tmp_path: Path) -> None:
    header = ["Email", "Phone Number", "Phone Number"]
    path = write_csv(tmp_path / "m.csv", header, [["a@acme.io", "555 0100", "Call after 5pm"]])
    [item] = read_all(path, overrides=("Phone Number_2=context",))
    assert isinstance(item, Contact) and item.fields["context"] == "Call after 5pm"


HUBSPOT_FILLER = [f"Custom Property {n}" for n in range(1, 241)]
HUBSPOT_ALL = [
    "Record ID - Contact", "First Name", "Last Name", "Email", "Phone Number", "Job Title",
    "Company Name", "Website URL", "LinkedIn URL", "Create Date", "Last Activity Date",
    "Country/Region", "Lifecycle Stage", "Contact owner", *HUBSPOT_FILLER,
    "Associated Company", "Associated Company IDs", "Billing Contact", "Billing Contact IDs",
    "Billing Contact", "Billing Contact IDs", "Record ID - Company", "Company name",
    "Phone Number", "Create Date", "Last Activity Date", "Country/Region",
]  # fmt: skip


def hubspot_all_properties(path: Path, count: int) -> Path:
    """HubSpot's contacts export with all properties and the associated company: repeated
    association labels and the company's own Phone Number, Create Date... after the contact's."""
    rows = []
    for n in range(count):
        row = [
            str(51000 + n), f"First{n}", f"Last{n}", f"p{n}@acme{n}.com", "+1 555 0100",
            "VP Sales", f"Acme {n}", f"https://www.acme{n}.com", f"https://linkedin.com/in/p{n}",
            "2024-01-02 10:00", "2024-03-04 11:00", "France", "lead", "Jane Owner",
            *[f"v{n}.{k}" if k % 7 == 0 else "" for k in range(len(HUBSPOT_FILLER))],
            f"Acme {n}", str(71000 + n), "Pat Billing", "61001", "Sam Billing", "61002",
            str(71000 + n), f"Acme {n}" if n % 2 else "", "+33 1 00 00 00 00",
            "2020-05-06 09:00", "2024-02-03 12:00", "France",
        ]  # fmt: skip
        if n == 3:
            row[HUBSPOT_ALL.index("Job Title")] = "Head of\nRevOps"  # a multi-line cell
        rows.append(row)
    return write_csv(path, HUBSPOT_ALL, rows)


def test_validate_reads_hubspots_all_properties_export(tmp_path: Path) -> None:
    path = hubspot_all_properties(tmp_path / "hubspot.csv", 25)
    report = validate_input(path, ReaderOptions(), SPEC, None)
    assert (report.read, report.valid, report.rejected) == (25, 25, {})
    feeds = dict(report.mapping.columns)
    assert report.mapping.profile == "hubspot"
    assert feeds["Record ID - Contact"] == "crmContactId"
    assert feeds["Record ID - Company"] == "crmAccountId"
    assert {feeds[c] for c in ("Email", "First Name", "Last Name", "Job Title")} == {
        "email", "firstName", "lastName", "jobTitle"
    }  # fmt: skip
    assert feeds["Company Name"] == feeds["Company name_2"] == "companyName"
    assert feeds["Website URL"] == "companyDomain" and feeds["LinkedIn URL"] == "linkedInProfile"
    with ContactReader(path, ReaderOptions()) as reader:
        first = next(iter(reader))
    assert isinstance(first, Contact) and first.fields["crmContactId"] == "51000"
    assert first.fields["crmAccountId"] == "71000" and first.fields["companyDomain"] == "acme0.com"
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert "'Billing Contact_2' (column" in result.output  # the renamed copies, listed once


# -- profiles -------------------------------------------------------------------------------------


def test_hubspot_associated_record_ids_are_kept() -> None:
    headers = ["Record ID - Contact", "Email", "First Name", "Record ID - Company", "Company name"]
    mapping = resolve_mapping(headers)
    assert mapping.profile == "hubspot"
    assert dict(mapping.columns)["Record ID - Contact"] == "crmContactId"
    assert dict(mapping.columns)["Record ID - Company"] == "crmAccountId"


SF_ACCOUNT = ["Id", "Name", "Website", "Industry", "BillingCity"]
SF_ACCOUNT_ROWS = [
    ["0015g00000AbCdEAAV", "Acme Corp", "https://www.acme.io/", "Software", "Lyon"],
    ["0015g00000AbCdFAAV", "No Website Ltd", "", "Retail", "Leeds"],
]


@pytest.mark.parametrize(
    ("header", "row", "kind", "id_field"),
    [
        (SF_ACCOUNT, SF_ACCOUNT_ROWS[0], "account", "crmAccountId"),
        (["Id", "Name", "Website"], SF_ACCOUNT_ROWS[0][:3], "account", "crmAccountId"),
        (
            ["Id", "FirstName", "LastName", "Email", "AccountId", "Title"],
            ["0035g00000XyZaBAAV", "Ana", "Ruiz", "ana@acme.io", "0015g00000AbCdEAAV", "CTO"],
            "contact",
            "crmContactId",
        ),
        (
            ["Id", "FirstName", "LastName", "Email", "Company", "Title"],
            ["00Q5g00000QrStUAAV", "Bo", "Li", "bo@beta.io", "Beta", "VP"],
            "lead",
            "crmLeadId",
        ),
    ],
)
def test_salesforce_api_name_exports_by_id_prefix(
    tmp_path: Path, header: list[str], row: list[str], kind: str, id_field: str
) -> None:
    path = write_csv(tmp_path / "sf.csv", header, [row])
    with ContactReader(path, ReaderOptions(subject="company")) as reader:
        [item] = list(reader)
    assert reader.mapping.profile == "salesforce" and reader.mapping.kind == kind
    assert isinstance(item, Contact)
    if kind == "account":
        assert item.fields == {
            "crmAccountId": "0015g00000AbCdEAAV",
            "companyName": "Acme Corp",
            "companyDomain": "acme.io",
        }
    else:
        person = read_all(path)[0]
        assert isinstance(person, Contact) and person.fields[id_field] == row[0]


@pytest.mark.parametrize("kind", ["enrich-company", "qualify-company"])
def test_company_agents_send_id_name_and_domain_of_a_salesforce_account_export(
    kind: str, make_sim: Any, tmp_path: Path
) -> None:
    write_csv(tmp_path / "in.csv", SF_ACCOUNT, SF_ACCOUNT_ROWS)
    sim = make_sim()
    out = tmp_path / "out.ndjson"
    args = ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent-type", kind,
            "--agent", "ca_1", "--base-url", sim.url, "--rate", "none", "--no-progress",
            "--max-attempts", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 0, result.output
    assert sim.stats()["totals"]["calls"] == 2
    assert read_lines(side(out, ".rejects.ndjson")) == []
    contacts = [line["contact"] for line in read_lines(out)]
    assert all(c.pop("agentOId") == "ca_1" for c in contacts)
    sent = sorted(contacts, key=lambda c: c["companyName"])
    assert sent == [
        {
            "crmAccountId": "0015g00000AbCdEAAV",
            "companyName": "Acme Corp",
            "companyDomain": "acme.io",
        },
        {"crmAccountId": "0015g00000AbCdFAAV", "companyName": "No Website Ltd"},
    ]


def test_the_older_linkedin_connections_file_is_recognised(tmp_path: Path) -> None:
    header = ["First Name", "Last Name", "Email Address", "Company", "Position", "Connected On"]
    path = write_csv(
        tmp_path / "Connections.csv",
        header,
        [["Ana", "Ruiz", "ana@acme.io", "Acme", "CTO", "12 Mar 2019"]],  # fmt: skip
    )
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert "profile: linkedin (detected from the header), by 'Connected On'" in result.output
    assert "Email Address -> email            linkedin name" in result.output


def test_pipedrive_people_export(tmp_path: Path) -> None:
    header = [
        "Person - ID", "Person - Name", "Person - First name", "Person - Last name",
        "Person - Email - Work", "Person - Email - Home", "Person - Organization",
        "Person - Job title", "Organization - ID", "Organization - Website",
    ]  # fmt: skip
    row = ["17", "Ana Ruiz", "Ana", "Ruiz", "", "ana@home.example", "Acme", "CTO", "9",
           "acme.io"]  # fmt: skip
    [item] = read_all(write_csv(tmp_path / "pd.csv", header, [row]))
    assert isinstance(item, Contact)
    assert item.fields == {
        "crmContactId": "17",
        "firstName": "Ana",
        "lastName": "Ruiz",
        "email": "ana@home.example",  # the work email is empty: the next one
        "companyName": "Acme",
        "jobTitle": "CTO",
        "crmAccountId": "9",
        "companyDomain": "acme.io",
    }
    assert resolve_mapping(header).profile == "pipedrive"


def test_zoho_export_by_its_record_ids(tmp_path: Path) -> None:
    header = ["Record Id", "First Name", "Last Name", "Email", "Title", "Account Name",
              "Contact Owner"]  # fmt: skip
    row = ["zcrm_5725767000000419001", "Ana", "Ruiz", "ana@acme.io", "CTO", "Acme", "Jo"]
    with ContactReader(write_csv(tmp_path / "z.csv", header, [row])) as reader:
        [item] = list(reader)
    assert reader.mapping.profile == "zoho"
    assert isinstance(item, Contact) and item.fields["crmContactId"] == row[0]
    assert item.fields["companyName"] == "Acme" and item.fields["jobTitle"] == "CTO"


# -- values ---------------------------------------------------------------------------------------


def test_language_names_become_codes_and_unknown_ones_are_left_out(tmp_path: Path) -> None:
    langs = ["English", "Spanish", "Deutsch", "français", "en", "pt-BR", "Klingon", "n/a"]
    rows = [[f"p{n}@acme.io", lang] for n, lang in enumerate(langs)]
    path = write_csv(tmp_path / "l.csv", ["Email", "Language"], rows)
    items = read_all(path)
    assert all(isinstance(i, Contact) for i in items)
    assert [i.fields.get("lang") for i in items if isinstance(i, Contact)] == [
        "en", "es", "de", "fr", "en", "pt-BR", None, None
    ]  # fmt: skip
    report = validate_input(path, ReaderOptions(), SPEC, None)
    assert report.valid == 8 and report.notes == {"lang_dropped": 2}
    assert "'Klingon' left out" in report.note_examples["lang_dropped"]


def test_a_junk_email_beside_a_linkedin_url_is_dropped_with_a_note(tmp_path: Path) -> None:
    rows = [
        ["xxx", "https://www.linkedin.com/in/ana-ruiz", "Ana"],
        ["urn:li:member:123456", "linkedin.com/in/bo-li/", "Bo"],
        ["not-an-email", "", "Cy"],  # nothing else identifies Cy: still a reject
    ]
    path = write_csv(tmp_path / "j.csv", ["Email", "LinkedIn URL", "First Name"], rows)
    first, second, third = read_all(path)
    assert isinstance(first, Contact) and "email" not in first.fields
    assert first.fields["linkedInProfile"] == "https://www.linkedin.com/in/ana-ruiz"
    assert isinstance(second, Contact) and "email" not in second.fields
    assert isinstance(third, Reject) and third.reason == "invalid_email"
    result = validate(path)
    assert result.exit_code == 1 and "note email_dropped: 2" in result.output
    assert "the LinkedIn URL identifies the person" in result.output


async def test_a_runs_summary_counts_the_values_left_out(make_sim: Any, tmp_path: Path) -> None:
    rows = [
        ["xxx", "https://www.linkedin.com/in/ana-ruiz", "Ana", "English"],
        ["bo@acme.io", "", "Bo", "Klingon"],
        ["cy@acme.io", "", "Cy", "es"],
    ]
    path = write_csv(tmp_path / "n.csv", ["Email", "LinkedIn URL", "First Name", "Language"], rows)
    sim = make_sim()
    summary = await run_batch(path, tmp_path / "out.ndjson", sim_settings(sim.url))
    assert summary["exit_code"] == 0 and summary["counts"]["succeeded"] == 3
    assert summary["notes_by_code"] == {"email_dropped": 1, "lang_dropped": 1}
    sent = {
        line["contact"]["firstName"]: line["contact"]
        for line in read_lines(tmp_path / "out.ndjson")
    }
    assert sent["Ana"]["lang"] == "en" and "lang" not in sent["Bo"] and sent["Cy"]["lang"] == "es"
