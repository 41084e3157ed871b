"""The CRM profiles: each export's column names, and how an export is recognised.

Contract: pure tables and decisions on a header (and a few sample rows), no I/O.
:func:`detect_profile` names the profile whose fingerprint a header carries (``generic`` when
none does) and why; :func:`column_field` says which canonical field one column feeds under a
profile, with its rank (lower wins). The header facts each profile relies on, and their public
sources, are in ``docs/crm-exports.md``.

Matching ignores case, spaces, ``_``, ``-`` and ``.`` (:func:`header_key`). Each profile's own
names come first; the generic names apply to the columns a profile does not know.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from octave_bulk.input.records import CONTENT_FIELDS

__all__ = [
    "GENERIC_RANK",
    "PROFILES",
    "column_field",
    "detect_profile",
    "header_key",
    "salesforce_object",
]

PROFILES: tuple[str, ...] = (
    "auto", "hubspot", "salesforce", "apollo", "linkedin", "pipedrive", "zoho", "generic",
)  # fmt: skip
"""Profile names accepted by ``--profile``."""

GENERIC_RANK = 100
"""Generic names rank after every profile-specific name."""

_IGNORED = re.compile(r"[\s_\-.]+")


def header_key(name: str) -> str:
    """The matching key of a column name: casefolded, without spaces, ``_``, ``-`` or ``.``."""
    return _IGNORED.sub("", name.casefold())


def _table(spec: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, int]]:
    """``field -> names in priority order`` as ``key -> (field, rank)``."""
    return {header_key(n): (f, rank) for f, names in spec.items() for rank, n in enumerate(names)}


GENERIC = _table(
    {
        "email": (
            "email", "email address", "e-mail", "work email", "business email", "contact email",
            "primary email",
        ),
        "firstName": ("firstName", "first", "given name"),
        "lastName": ("lastName", "last", "surname", "family name"),
        "jobTitle": ("jobTitle", "title", "position"),
        "companyName": (
            "companyName", "company", "organization", "organisation", "account name", "employer",
        ),
        "companyDomain": (
            "companyDomain", "domain", "company domain name", "website", "company website",
            "website url", "company url",
        ),
        "linkedInProfile": (
            "linkedInProfile", "linkedin", "linkedin url", "linkedin profile url",
            "person linkedin url", "profile url", "linkedin profile",
        ),
        "crmContactId": ("crmContactId", "contact id"),
        "crmLeadId": ("crmLeadId", "lead id"),
        "crmAccountId": ("crmAccountId", "account id", "company id"),
        "lang": ("lang", "language", "preferred language"),
        "requestId": ("requestId",),
    }
)  # fmt: skip
_CONTENT = {header_key(name): (name, 0) for name in CONTENT_FIELDS}

_TABLES: dict[str, dict[str, tuple[str, int]]] = {
    "generic": {},
    "hubspot": _table(
        {
            "crmContactId": ("Record ID", "Record ID - Contact", "Contact ID"),
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "email": ("Email",),
            "jobTitle": ("Job Title",),
            "companyName": ("Company Name", "Associated Company"),
            "companyDomain": ("Company Domain Name", "Website URL", "Website"),
            "crmAccountId": (
                "Record ID - Company",
                "Associated Company ID",
                "Associated Company IDs",
                "Primary Associated Company ID",
                "Associated Company IDs (Primary)",
            ),
            "lang": ("Preferred language",),
        }
    ),  # fmt: skip
    "salesforce": _table(
        {
            "crmContactId": ("Contact ID", "ContactId"),
            "crmLeadId": ("Lead ID", "LeadId"),
            "crmAccountId": ("Account ID", "AccountId"),
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "email": ("Email",),
            "jobTitle": ("Title",),
            "companyName": ("Account Name", "Account.Name", "Company / Account", "Company"),
            "companyDomain": ("Website", "Account.Website", "Account Website"),
        }
    ),
    "apollo": _table(
        {
            "crmContactId": ("Apollo Contact Id",),
            "crmAccountId": ("Apollo Account Id",),
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "email": ("Email",),
            "jobTitle": ("Title",),
            "companyName": ("Company Name for Emails", "Company", "Company Name"),
            "companyDomain": ("Website",),
            "linkedInProfile": ("Person Linkedin Url",),
        }
    ),
    "linkedin": _table(
        {
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "linkedInProfile": ("URL",),
            "email": ("Email Address",),
            "companyName": ("Company",),
            "jobTitle": ("Position",),
        }
    ),
    "pipedrive": _table(
        {
            "crmContactId": ("Person - ID",),
            "crmAccountId": ("Organization - ID",),
            "firstName": ("Person - First name",),
            "lastName": ("Person - Last name",),
            "email": (
                "Person - Email - Work",
                "Person - Email",
                "Person - Email - Other",
                "Person - Email - Home",
            ),
            "jobTitle": ("Person - Job title", "Person - Title"),
            "companyName": ("Person - Organization", "Organization - Name"),
            "companyDomain": ("Organization - Website",),
        }
    ),  # fmt: skip
    "zoho": _table(
        {
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "email": ("Email", "Secondary Email"),
            "jobTitle": ("Title", "Designation"),
            "companyName": ("Account Name", "Company"),
            "companyDomain": ("Website",),
        }
    ),
}

_SALESFORCE_REPORT_LABELS = frozenset(
    header_key(label)
    for label in (
        "Account Name", "Account Owner", "Lead Source", "Lead Status", "Mailing Street",
        "Mailing City", "Mailing State/Province", "Mailing Zip/Postal Code", "Mailing Country",
    )
)  # fmt: skip
"""Column labels of Salesforce contact and lead reports that HubSpot exports never carry."""
_SALESFORCE_ACCOUNT_API = frozenset(
    ("Website", "Industry", "Type", "AccountNumber", "BillingCity", "BillingCountry", "OwnerId",
     "ParentId", "NumberOfEmployees", "AnnualRevenue", "Phone", "Description")
)  # fmt: skip
"""Standard API names of the Salesforce Account object, one of which sits beside ``Id, Name``."""
_SALESFORCE_PREFIXES = {"001": "account", "003": "contact", "00Q": "lead"}
"""The key prefix of a Salesforce record id (15 or 18 characters) -> its object."""
_HUBSPOT_KEYS = frozenset(
    {"recordid", "recordidcontact", "recordidcompany", "lifecyclestage", "associatedcompany"}
)


def _ids(sample: Sequence[Mapping[str, str]], column: str) -> list[str]:
    return [v for row in sample if (v := row.get(column, "").strip())]


def salesforce_object(headers: Sequence[str], sample: Sequence[Mapping[str, str]] = ()) -> str:
    """``account``, ``contact`` or ``lead`` for a Salesforce export by API names, else ``""``.

    The ``Id`` column's key prefixes decide (``001`` Account, ``003`` Contact, ``00Q`` Lead,
    on 15- or 18-character ids); without ids, the standard API names: ``AccountId`` means a
    contact, ``Company`` a lead, ``Name`` beside two Account fields (``Website``, ``Industry``,
    ``BillingCity``...) and no ``FirstName``/``LastName`` an account.
    """
    exact = {h.strip() for h in headers}
    if "Id" not in exact:
        return ""
    kinds = {_SALESFORCE_PREFIXES.get(v[:3]) for v in _ids(sample, "Id") if len(v) in (15, 18)}
    if len(kinds) == 1 and None not in kinds:
        return str(kinds.pop())
    if "AccountId" in exact:
        return "contact"
    if "Company" in exact and exact & {"FirstName", "LastName"}:
        return "lead"
    account_api = len(exact & _SALESFORCE_ACCOUNT_API) >= 2
    if "Name" in exact and account_api and not exact & {"FirstName", "LastName"}:
        return "account"
    if exact & {"FirstName", "LastName"}:
        return "contact"
    return ""


def detect_profile(
    headers: Sequence[str], sample: Sequence[Mapping[str, str]] = ()
) -> tuple[str, str]:
    """The profile whose fingerprint the header (or the sample's ids) carries, and why.

    Apollo: ``Apollo Contact Id``, ``Apollo Account Id``, ``Company Name for Emails`` or
    ``Person Linkedin Url``. LinkedIn Connections.csv: ``Connected On`` (with or without the
    ``URL`` column of the 2020 format). Pipedrive: ``Person - ...`` / ``Organization - ...``
    columns. Zoho: record ids written ``zcrm_...``. HubSpot: ``Record ID`` (also ``Record ID -
    Contact``/``- Company``), ``Lifecycle Stage`` or ``Associated Company``. Salesforce:
    ``Contact ID``, ``Lead ID``, ``Account ID``, ``Company / Account``, a report's labels
    (:data:`_SALESFORCE_REPORT_LABELS`), or an API-name export (:func:`salesforce_object`).
    Else ``Contact Owner`` (which both CRMs export) means HubSpot.
    """
    keys: dict[str, str] = {}
    for h in headers:
        keys.setdefault(header_key(h), h)

    def first(hit: set[str]) -> str:
        return next(h for h in headers if header_key(h) in hit)

    hit = keys.keys() & {"apollocontactid", "apolloaccountid", "companynameforemails",
                         "personlinkedinurl"}  # fmt: skip
    if hit:
        return "apollo", first(hit)
    if "connectedon" in keys:
        return "linkedin", keys["connectedon"]
    prefixed = [h for h in headers if h.strip().startswith(("Person - ", "Organization - "))]
    if len(prefixed) >= 2:
        return "pipedrive", prefixed[0]
    if "recordid" in keys and any(v.startswith("zcrm_") for v in _ids(sample, keys["recordid"])):
        return "zoho", f"{keys['recordid']} (zcrm_ ids)"
    hit = keys.keys() & _HUBSPOT_KEYS
    if hit:
        return "hubspot", first(hit)
    hit = keys.keys() & {"contactid", "leadid", "accountid", "company/account"}
    if hit:
        return "salesforce", first(hit)
    hit = keys.keys() & _SALESFORCE_REPORT_LABELS  # before "Contact Owner", in both CRMs
    if hit:
        return "salesforce", first(hit)
    if "contactowner" in keys:
        return "hubspot", keys["contactowner"]
    kind = salesforce_object(headers, sample)
    if kind:
        return "salesforce", f"Id (a {kind} export by API names)"
    return "generic", ""


def column_field(
    profile: str, column: str, headers: Sequence[str] = (), kind: str = ""
) -> tuple[str, int] | None:
    """The canonical field a column feeds under ``profile``, with its rank (lower wins).

    Args:
        profile: a concrete profile name (not ``auto``).
        column: the source column name.
        headers: the whole header, used where a name is ambiguous.
        kind: the record type of the export (:func:`salesforce_object`; Zoho: ``lead`` when
            the header has ``Lead Owner``): which id ``Id``/``Record Id`` is, and whether
            Salesforce's ``Name`` is an account's name.
    """
    key = header_key(column)
    if key in _CONTENT:
        return _CONTENT[key]
    if profile == "salesforce" and column.strip() in ("Id", "Name"):
        kind = kind or salesforce_object(headers)
        if column.strip() == "Name":
            return ("companyName", 0) if kind == "account" else None
        ids = {"account": "crmAccountId", "lead": "crmLeadId"}
        return (ids.get(kind, "crmContactId"), 0)
    if profile == "zoho" and key == "recordid":
        lead = "leadowner" in {header_key(h) for h in headers}
        return ("crmLeadId" if lead else "crmContactId", 0)
    hit = _TABLES[profile].get(key)
    if hit is not None:
        return hit
    generic = GENERIC.get(key)
    return None if generic is None else (generic[0], GENERIC_RANK + generic[1])
