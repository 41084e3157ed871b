"""Contacts in: CRM exports mapped by ``auto``, derivations, validation, templates, ``validate``."""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from octave_bulk.agents.base import RequestSpec
from octave_bulk.errors import ConfigError, InputError
from octave_bulk.input.normalize import (
    business_domain,
    check_email,
    normalize_email,
    normalize_linkedin,
    website_domain,
)
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact, Reject
from octave_bulk.input.templates import ContentTemplates
from octave_bulk.input.validate import validate_input

EXPORTS = Path(__file__).parent / "data" / "exports"
SPEC = RequestSpec(agent_o_id="ca_test")


def read_all(path: Path | str, **options: Any) -> tuple[ContactReader, list[Contact | Reject]]:
    with ContactReader(path, ReaderOptions(**options)) as reader:
        return reader, list(reader)


def write(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def by_line(items: list[Contact | Reject]) -> dict[int, Contact | Reject]:
    return {item.line: item for item in items}


# -- real export shapes, mapped by auto --------------------------------------------------------


def test_hubspot_export() -> None:
    reader, items = read_all(EXPORTS / "hubspot_contacts.csv")
    assert reader.mapping.profile == "hubspot" and reader.encoding == "utf-8-sig"
    rows = by_line(items)
    assert rows[2] == Contact(
        2,
        {
            "email": "Alex.Chen@datadog.com",
            "firstName": "Alex",
            "lastName": "Chen",
            "jobTitle": "VP Engineering",
            "companyName": "Datadog",
            "crmContactId": "51234001",
            "companyDomain": "datadoghq.com",
        },
    )
    priya = rows[3]
    assert isinstance(priya, Contact)
    assert priya.fields["companyName"] == "Snowflake"  # Associated Company fills in
    assert "companyDomain" not in priya.fields  # gmail.com says nothing about her company
    zoe = rows[5]  # her title holds a quoted line break, so the next record starts on line 7
    assert isinstance(zoe, Contact) and zoe.fields["jobTitle"] == "Director, Customer Success EMEA"
    assert zoe.fields["companyDomain"] == "intercom.com"
    bad = rows[7]
    assert isinstance(bad, Reject) and (bad.reason, bad.field) == ("invalid_email", "email")
    assert bad.row["Record ID"] == "51234005"  # type: ignore[index]
    assert len(items) == 5


def test_salesforce_report_cp1252_semicolons() -> None:
    reader, items = read_all(EXPORTS / "salesforce_report.csv")
    assert (reader.mapping.profile, reader.encoding, reader.delimiter) == (
        "salesforce",
        "cp1252",
        ";",
    )
    assert reader.encoding_note is not None
    rows = by_line(items)
    francois = rows[2]
    assert isinstance(francois, Contact)
    assert francois.fields["firstName"] == "François"
    assert francois.fields["companyName"] == "Société Générale"
    jurgen = rows[3]
    assert isinstance(jurgen, Contact)
    assert jurgen.fields["jobTitle"] == "Leiter IT – Infrastruktur"
    assert jurgen.fields["email"] == "J.Weiss@mueller-soehne.de"  # local part kept
    # 15-character Salesforce ids are case-sensitive: kept exactly.
    assert jurgen.fields["crmContactId"] == "0035g00000aBcDe"
    assert jurgen.fields["crmAccountId"] == "0015g00000xYzAb"
    assert isinstance(rows[5], Reject) and rows[5].reason == "missing_identity"
    assert [i.line for i in items] == [2, 3, 4, 5, 6]


def test_salesforce_data_loader_leads() -> None:
    reader, items = read_all(EXPORTS / "salesforce_leads_api.csv")
    assert reader.mapping.profile == "salesforce"
    first = items[0]
    assert isinstance(first, Contact)
    assert first.fields["crmLeadId"] == "00Q5g00000AbCdEFGH"
    assert first.fields["companyName"] == "Rippling"
    assert first.fields["companyDomain"] == "rippling.com"
    domains = [i.fields.get("companyDomain") for i in items if isinstance(i, Contact)]
    assert domains == ["rippling.com", "gusto.com", None, "brex.com", "ramp.com"]


def test_apollo_export() -> None:
    reader, items = read_all(EXPORTS / "apollo_export.csv")
    assert reader.mapping.profile == "apollo"
    rows = by_line(items)
    rachel = rows[2]
    assert isinstance(rachel, Contact)
    assert rachel.fields["companyName"] == "HubSpot"  # Company Name for Emails, not "HubSpot, Inc."
    assert rachel.fields["linkedInProfile"] == "https://www.linkedin.com/in/rachelgreen"
    assert rachel.fields["crmContactId"] == "64a1f0c2e4b0a1b2c3d4e5f6"
    mark = rows[3]  # no email, but a LinkedIn profile with a query string
    assert isinstance(mark, Contact) and mark.fields["linkedInProfile"] == (
        "https://www.linkedin.com/in/mdo"
    )
    ben = rows[5]
    assert isinstance(ben, Reject) and ben.reason == "invalid_linkedin"
    assert ben.field == "linkedInProfile" and "'Person Linkedin Url'" in ben.message
    sofia = rows[6]
    assert isinstance(sofia, Contact)
    assert sofia.fields["linkedInProfile"] == "https://www.linkedin.com/in/sofia-rossi-12a3b4"


def test_linkedin_connections_with_preamble() -> None:
    reader, items = read_all(EXPORTS / "linkedin_connections.csv")
    assert reader.mapping.profile == "linkedin" and reader.header_line == 4
    assert [i.line for i in items] == [5, 6, 7, 8, 9]
    assert all(isinstance(i, Contact) for i in items)
    first = items[0]
    assert isinstance(first, Contact) and "email" not in first.fields
    assert first.fields["linkedInProfile"] == "https://www.linkedin.com/in/alexchen"


def test_generic_ndjson_maps_keys_seen_late() -> None:
    reader, items = read_all(EXPORTS / "generic_contacts.ndjson")
    assert reader.format == "ndjson" and reader.mapping.profile == "generic"
    rows = by_line(items)
    assert isinstance(rows[2], Contact) and rows[2].fields["firstName"] == "Omar"
    lena = rows[3]
    assert isinstance(lena, Contact)
    assert lena.fields["companyDomain"] == "berg.se"
    assert lena.fields["context_2"] == "Follow up on pricing"
    assert isinstance(rows[5], Reject) and rows[5].reason == "malformed_record"
    late = rows[6]  # "title" and "crm_contact_id" first appear after the header sample
    assert isinstance(late, Contact)
    assert late.fields["jobTitle"] == "Designer" and late.fields["crmContactId"] == "C-42"
    assert reader.rows_read == 5


# -- derivations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        ("https://www.Acme.com/about?x=1", "acme.com"),
        ("acme.com", "acme.com"),
        ("WWW.ACME.CO.UK:8080/path", "acme.co.uk"),
        ("http://user@shop.acme.io/", "shop.acme.io"),
        ("//acme.com", "acme.com"),
        ("münchen.de", "münchen.de"),
        ("N/A", None),
        ("-", None),
        ("localhost", None),
        ("acme .com", None),
    ],
)
def test_website_domain(value: str, domain: str | None) -> None:
    assert website_domain(value) == domain


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("ann@acme.com", "acme.com"),
        ("ann@Mail.Acme.com", "mail.acme.com"),
        ("ann@gmail.com", None),
        ("ann@gmx.de", None),
        ("ann@gmx.at", None),
        ("ann@yahoo.co.uk", None),
        ("ann@hotmail.fr", None),
        ("ann@proton.me", None),
        ("ann@live.acme.com", "live.acme.com"),
    ],
)
def test_business_domain(email: str, domain: str | None) -> None:
    assert business_domain(email) == domain


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("https://www.linkedin.com/in/john-doe-123/", "https://www.linkedin.com/in/john-doe-123"),
        ("http://linkedin.com/in/john?trk=abc#x", "https://www.linkedin.com/in/john"),
        ("linkedin.com/in/x", "https://www.linkedin.com/in/x"),
        ("www.linkedin.com/in/JaneDoe", "https://www.linkedin.com/in/JaneDoe"),
        ("https://uk.linkedin.com/in/jane/details/experience/", "https://www.linkedin.com/in/jane"),
        (
            "https://www.linkedin.com/pub/john-doe/12/345/678/",
            "https://www.linkedin.com/pub/john-doe/12/345/678",
        ),
    ],
)
def test_linkedin_urls_are_normalised(value: str, url: str) -> None:
    assert normalize_linkedin(value) == url


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("https://twitter.com/in/x", "not a LinkedIn URL"),
        ("https://notlinkedin.com/in/x", "not a LinkedIn URL"),
        ("john-doe", "not a LinkedIn URL"),
        ("https://www.linkedin.com/company/acme", "not a LinkedIn profile URL"),
        ("https://www.linkedin.com/in/", "not a LinkedIn profile URL"),
        ("https://www.linkedin.com/sales/lead/ACwAAA,NAME", "Sales Navigator"),
    ],
)
def test_non_profile_urls_are_refused(value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_linkedin(value)


def test_email_is_trimmed_and_its_domain_lowercased() -> None:
    assert normalize_email("  John.Doe@ACME.Com ") == "John.Doe@acme.com"


@pytest.mark.parametrize(
    "email",
    [
        "a@b.co",
        "first.last+tag@sub.example.org",
        "o'brien@acme.ie",
        "zoë@bücher.de",
        "x@xn--bcher-kva.de",
    ],
)
def test_valid_emails(email: str) -> None:
    assert check_email(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "plain",
        "a@b",
        "a..b@acme.com",
        ".a@acme.com",
        "a@-acme.com",
        "a@acme.test",
        "Ann <a@acme.com>",
        "a@acme.com.",
    ],
)
def test_invalid_emails(email: str) -> None:
    assert check_email(email)


LOCAL = st.text(alphabet="abcXYZ09.+-_'\"!é ", min_size=1, max_size=12)
DOMAIN = st.lists(st.text(alphabet="abz09-é", min_size=1, max_size=8), min_size=1, max_size=3).map(
    ".".join
)


@settings(max_examples=300, deadline=None)
@given(local=LOCAL, domain=DOMAIN, tld=st.sampled_from(["com", "io", "test", "c0m", "x"]))
def test_fast_email_check_agrees_with_email_validator(local: str, domain: str, tld: str) -> None:
    email = normalize_email(f"{local}@{domain}.{tld}")
    try:
        validate_email(email, check_deliverability=False)
        expected = True
    except EmailNotValidError:
        expected = False
    assert (check_email(email) is None) == expected


# -- validation rejects --------------------------------------------------------------------------


def test_each_validation_failure_is_a_reject_with_line_field_and_row(tmp_path: Path) -> None:
    long_name = "N" * 300
    text = (
        "Email,First Name,LinkedIn,CRM Contact ID\n"
        "ann@acme.com,Ann,,0035g00000AbCdE\n"
        ",Nobody,,\n"
        "bad@@acme.com,Bad,,\n"
        ",Li,https://example.com/in/li,\n"
        f"long@acme.com,{long_name},,\n"
        'id@acme.com,Id,,"003\n5"\n'
        "  Trim@Acme.COM  ,Trim,linkedin.com/in/trim/,\n"
    )
    _, items = read_all(write(tmp_path, text))
    got = [(i.line, i.reason, i.field) if isinstance(i, Reject) else (i.line, "ok") for i in items]
    assert got == [
        (2, "ok"),
        (3, "missing_identity", None),
        (4, "invalid_email", "email"),
        (5, "invalid_linkedin", "linkedInProfile"),
        (6, "field_too_long", "firstName"),
        (7, "invalid_field", "crmContactId"),
        (9, "ok"),
    ]
    bad_email = items[2]
    assert isinstance(bad_email, Reject)
    assert bad_email.message.startswith("email (column 'Email'): 'bad@@acme.com'")
    assert bad_email.row == {
        "Email": "bad@@acme.com",
        "First Name": "Bad",
        "LinkedIn": "",
        "CRM Contact ID": "",
    }
    too_long = items[4]
    assert isinstance(too_long, Reject) and "300 characters; at most 255" in too_long.message
    assert items[0] == Contact(
        2,
        {
            "email": "ann@acme.com",
            "firstName": "Ann",
            "crmContactId": "0035g00000AbCdE",
            "companyDomain": "acme.com",
        },
    )
    last = items[-1]
    assert isinstance(last, Contact)
    assert last.fields["email"] == "Trim@acme.com"
    assert last.fields["linkedInProfile"] == "https://www.linkedin.com/in/trim"


def test_no_identity_column_stops_before_any_row(tmp_path: Path) -> None:
    path = write(tmp_path, "Name,Phone\nAnn,1\n")
    with pytest.raises(InputError, match=r"in\.csv:1: no column maps to email or linkedInProfile"):
        read_all(path)
    _, items = read_all(path, overrides=("Phone=email",))
    assert isinstance(items[0], Reject) and items[0].reason == "invalid_email"


def test_bad_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no column 'Mail'"):
        read_all(write(tmp_path, "Email\na@b.co\n"), overrides=("Mail=email",))


# -- templates -----------------------------------------------------------------------------------


def test_templates_fill_per_row_and_join_the_row_value(tmp_path: Path) -> None:
    text = "Email,Company,Recent News,context\nann@acme.com,Acme,raised a Series B,Met at SaaStr\n"
    _, items = read_all(
        write(tmp_path, text),
        context_templates={
            "all": "{company} {RECENT  news}.",
            "2": "Mention {{news}}: {Recent News}",
        },
        instruction_templates={"1": "Keep it short for {Company}"},
    )
    contact = items[0]
    assert isinstance(contact, Contact)
    assert contact.fields["context"] == "Met at SaaStr\n\nAcme raised a Series B."
    assert contact.fields["context_2"] == "Mention {news}: raised a Series B"
    assert contact.fields["instructions_1"] == "Keep it short for Acme"


def test_template_placeholder_naming_no_column_fails_before_any_row(tmp_path: Path) -> None:
    path = write(tmp_path, "Email,Company\nann@acme.com,Acme\n")
    reader = ContactReader(path, ReaderOptions(context_templates={"all": "About {Industry}"}))
    with pytest.raises(
        ConfigError, match=r"context template 'all': placeholder \{Industry\} names no column"
    ):
        reader.__enter__()
    assert reader.rows_read == 0


@pytest.mark.parametrize(
    ("templates", "match"),
    [
        ({"8": "x"}, "the key must be 'all' or a step number 1-7"),
        ({"all": "x {Company"}, "unmatched '{'"),
        ({"all": "x } y"}, "unmatched '}'"),
        ({"all": "x {} y"}, "empty placeholder"),
    ],
)
def test_bad_templates_are_config_errors(templates: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ContentTemplates(context=templates)


def test_template_that_fills_to_blank_adds_nothing() -> None:
    templates = ContentTemplates(context={"all": "{News}"})
    templates.check(["News"])
    assert templates.fill({"News": "  "}) == {}
    assert templates.fill({}) == {}


# -- validate ----------------------------------------------------------------------------------


def test_validate_counts_rejects_and_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*_args: object) -> None:
        raise AssertionError("validate must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    text = (
        "Email,First Name\n"
        "ann@acme.com,Ann\n"
        "bad-email,Bad\n"
        "\n"
        "ann@ACME.com,Ann\n"  # the same request as line 2 once the domain is lowercased
        "cy@acme.com,Cy\n"
        ",Nobody\n"
    )
    rejects = tmp_path / "out.rejects.ndjson"
    rejects.write_text("stale\n")
    rejects.chmod(0o644)
    report = validate_input(write(tmp_path, text), ReaderOptions(), SPEC, rejects)
    assert (report.read, report.valid, report.duplicates) == (5, 2, 1)
    assert report.rejected == {"invalid_email": 1, "duplicate": 1, "missing_identity": 1}
    assert report.read == report.valid + report.rejected_total
    assert report.mapping.profile == "generic" and report.encoding == "utf-8"
    assert stat.S_IMODE(rejects.stat().st_mode) == 0o600
    records = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["line"], r["reason"], r["field"]) for r in records] == [
        (3, "invalid_email", "email"),
        (5, "duplicate", "requestId"),
        (7, "missing_identity", None),
    ]
    assert "the same request as line 2" in records[1]["message"]
    assert records[0]["row"] == {"Email": "bad-email", "First Name": "Bad"}
    assert report.to_dict()["rejected"]["duplicate"] == 1


def test_validate_runs_the_request_model(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@acme.com\n")
    report = validate_input(path, ReaderOptions(), RequestSpec(), None)  # no agent: every row fails
    assert report.rejected == {"invalid_field": 1} and report.valid == 0


def test_validate_row_request_ids_are_used_for_duplicates(tmp_path: Path) -> None:
    text = "email,requestId\na@acme.com,r-1\nb@acme.com,r-1\nc@acme.com,r-2\n"
    report = validate_input(write(tmp_path, text), ReaderOptions(), SPEC, None)
    assert (report.valid, report.duplicates) == (2, 1)


def test_validate_writes_nothing_when_the_header_is_bad(tmp_path: Path) -> None:
    rejects = tmp_path / "r.ndjson"
    with pytest.raises(InputError, match="duplicate column names feeding email"):
        text = "email,Email\na@acme.com,b@acme.com\n"
        validate_input(write(tmp_path, text), ReaderOptions(), SPEC, rejects)
    assert not rejects.exists()
