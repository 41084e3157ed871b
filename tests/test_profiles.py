"""CRM column profiles: detection by fingerprint, the mapping each gives, overrides, rendering."""

from __future__ import annotations

import pytest

from octave_bulk.errors import ConfigError
from octave_bulk.input.mapping import detect_profile, resolve_mapping

HUBSPOT = [
    "Record ID", "First Name", "Last Name", "Email", "Phone Number", "Job Title",
    "Associated Company", "Company Name", "Website URL", "Contact owner", "Lifecycle Stage",
]  # fmt: skip
SALESFORCE_LABELS = ["Contact ID", "First Name", "Last Name", "Title", "Account Name", "Email",
                     "Account ID", "Website"]  # fmt: skip
SALESFORCE_LEAD_LABELS = [
    "Lead ID",
    "First Name",
    "Last Name",
    "Title",
    "Company / Account",
    "Email",
]
SALESFORCE_CONTACT_API = [
    "Id",
    "FirstName",
    "LastName",
    "Email",
    "Title",
    "AccountId",
    "Account.Name",
]
SALESFORCE_LEAD_API = ["Id", "FirstName", "LastName", "Email", "Title", "Company", "Website"]
APOLLO = [
    "First Name", "Last Name", "Title", "Company", "Company Name for Emails", "Email",
    "Email Status", "Person Linkedin Url", "Website", "Company Linkedin Url", "Apollo Contact Id",
    "Apollo Account Id",
]  # fmt: skip
LINKEDIN = [
    "First Name",
    "Last Name",
    "URL",
    "Email Address",
    "Company",
    "Position",
    "Connected On",
]


def fields(
    headers: list[str], profile: str = "auto", overrides: tuple[str, ...] = ()
) -> dict[str, str]:
    """column -> field, for the columns that map."""
    return dict(resolve_mapping(headers, profile, overrides).columns)


@pytest.mark.parametrize(
    ("headers", "profile"),
    [
        (HUBSPOT, "hubspot"),
        (SALESFORCE_LABELS, "salesforce"),
        (SALESFORCE_LEAD_LABELS, "salesforce"),
        (SALESFORCE_CONTACT_API, "salesforce"),
        (SALESFORCE_LEAD_API, "salesforce"),
        (APOLLO, "apollo"),
        (LINKEDIN, "linkedin"),
        (["email", "first_name", "company"], "generic"),
        (["Id", "first name", "email"], "generic"),  # API fingerprint needs the exact API names
    ],
)
def test_auto_detects_the_profile(headers: list[str], profile: str) -> None:
    assert detect_profile(headers)[0] == profile
    mapping = resolve_mapping(headers)
    assert mapping.profile == profile and mapping.detected


def test_hubspot_mapping() -> None:
    assert fields(HUBSPOT) == {
        "Record ID": "crmContactId",
        "First Name": "firstName",
        "Last Name": "lastName",
        "Email": "email",
        "Job Title": "jobTitle",
        "Associated Company": "companyName",
        "Company Name": "companyName",
        "Website URL": "companyDomain",
    }
    columns = resolve_mapping(HUBSPOT).columns
    # Company Name outranks Associated Company although it comes later in the file.
    assert [c for c, f in columns if f == "companyName"] == ["Company Name", "Associated Company"]


def test_salesforce_labels_and_api_names() -> None:
    assert fields(SALESFORCE_LABELS) == {
        "Contact ID": "crmContactId",
        "First Name": "firstName",
        "Last Name": "lastName",
        "Title": "jobTitle",
        "Account Name": "companyName",
        "Email": "email",
        "Account ID": "crmAccountId",
        "Website": "companyDomain",
    }
    assert fields(SALESFORCE_LEAD_LABELS)["Lead ID"] == "crmLeadId"
    assert fields(SALESFORCE_LEAD_LABELS)["Company / Account"] == "companyName"
    contact = fields(SALESFORCE_CONTACT_API)
    assert contact["Id"] == "crmContactId" and contact["AccountId"] == "crmAccountId"
    assert contact["Account.Name"] == "companyName" and contact["FirstName"] == "firstName"
    lead = fields(SALESFORCE_LEAD_API)
    assert lead["Id"] == "crmLeadId" and lead["Company"] == "companyName"
    assert lead["Website"] == "companyDomain"


def test_apollo_mapping_prefers_the_name_for_emails() -> None:
    mapping = resolve_mapping(APOLLO)
    assert dict(mapping.columns) == {
        "First Name": "firstName",
        "Last Name": "lastName",
        "Title": "jobTitle",
        "Company": "companyName",
        "Company Name for Emails": "companyName",
        "Email": "email",
        "Person Linkedin Url": "linkedInProfile",
        "Website": "companyDomain",
        "Apollo Contact Id": "crmContactId",
        "Apollo Account Id": "crmAccountId",
    }
    assert [c for c, f in mapping.columns if f == "companyName"][0] == "Company Name for Emails"
    assert "Company Linkedin Url" in mapping.unmapped and "Email Status" in mapping.unmapped


def test_linkedin_connections_mapping() -> None:
    mapping = resolve_mapping(LINKEDIN)
    assert dict(mapping.columns) == {
        "First Name": "firstName",
        "Last Name": "lastName",
        "URL": "linkedInProfile",
        "Email Address": "email",
        "Company": "companyName",
        "Position": "jobTitle",
    }
    assert mapping.unmapped == ("Connected On",)


@pytest.mark.parametrize(
    ("column", "field"),
    [
        ("first_name", "firstName"),
        ("First Name", "firstName"),
        ("firstname", "firstName"),
        ("FIRSTNAME", "firstName"),
        ("linkedin_url", "linkedInProfile"),
        ("LinkedIn Profile URL", "linkedInProfile"),
        ("company_domain", "companyDomain"),
        ("domain", "companyDomain"),
        ("website", "companyDomain"),
        ("E-mail", "email"),
        ("job title", "jobTitle"),
        ("crm_contact_id", "crmContactId"),
        ("request_id", "requestId"),
        ("Context", "context"),
        ("context_3", "context_3"),
        ("Instructions 2", "instructions_2"),
    ],
)
def test_generic_names_match_loosely(column: str, field: str) -> None:
    assert fields([column, "other"], "generic") == {column: field}


def test_generic_names_apply_under_a_crm_profile() -> None:
    # HubSpot has no LinkedIn property by default; a custom "LinkedIn URL" column still maps.
    assert fields([*HUBSPOT, "LinkedIn URL", "context"])["LinkedIn URL"] == "linkedInProfile"
    assert fields([*HUBSPOT, "context"])["context"] == "context"


def test_forced_profile_ignores_the_fingerprint() -> None:
    mapping = resolve_mapping(LINKEDIN, "generic")
    assert mapping.profile == "generic" and not mapping.detected
    assert "URL" in mapping.unmapped  # a bare "URL" is only a LinkedIn profile in Connections.csv


def test_overrides_win_and_take_the_field_from_other_columns() -> None:
    headers = ["Email", "Personal Email", "Website", "Full Name"]
    mapping = resolve_mapping(headers, "generic", ("personal  email=email", "Website="))
    assert mapping.columns == (("Personal Email", "email"),)
    assert mapping.unmapped == ("Email", "Website", "Full Name")
    assert mapping.overridden == ("Personal Email", "Website")
    assert fields(["A=B", "x"], "generic", ("A=B=EMAIL",)) == {"A=B": "email"}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("Email=mail", r"--map 'Email=mail': unknown field 'mail'"),
        ("Nope=email", r"--map 'Nope=email': no column 'Nope' in the header \('Email', 'Name'\)"),
        ("email", "expected 'Source Column=field'"),
        ("=email", "expected 'Source Column=field'"),
    ],
)
def test_bad_overrides_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_mapping(["Email", "Name"], "auto", (override,))


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nosuchcrm'"):
        resolve_mapping(["Email"], "nosuchcrm")


def test_render_and_dict_show_everything() -> None:
    mapping = resolve_mapping(HUBSPOT, overrides=("Phone Number=",))
    text = mapping.render()
    lines = text.splitlines()
    assert lines[0] == "profile: hubspot (detected from the header), by 'Record ID'"
    assert "  Record ID          -> crmContactId     hubspot name" in lines
    assert (
        "  Associated Company -> companyName      hubspot name; used when 'Company Name' is empty"
        in lines
    )
    assert "  Phone Number       -> -                left out by --map" in lines
    assert "  Lifecycle Stage    -> -                not a name this profile knows" in lines
    data = mapping.to_dict()
    assert data["profile"] == "hubspot" and data["overridden"] == ["Phone Number"]
    assert {"column": "Email", "field": "email"} in data["columns"]
    assert resolve_mapping(["a", "b"]).render().splitlines()[-1] == (
        "  (no column maps to a contact field)"
    )
    assert not resolve_mapping(["a", "b"]).has_identity and mapping.has_identity
