"""CRM column profiles: which source column feeds which canonical contact field.

Contract: :func:`resolve_mapping` turns a header and a profile name (``auto`` picks one by the
header's fingerprint) plus ``"Source Column=field"`` overrides into a :class:`ResolvedMapping`
that says, for every column, the canonical field it feeds (``records.CANONICAL_FIELDS``) or
that it is unmapped, and that renders itself for printing. Bad profile names and overrides
raise :class:`ConfigError` naming them.

Matching ignores case, spaces, ``_``, ``-`` and ``.``: ``First Name``, ``first_name``,
``FirstName`` and ``Account.Name`` / ``Account Name`` are the same. Each profile's own names
come first; the generic names (the canonical field names and common aliases) apply to the
columns a profile does not know, so a custom ``LinkedIn URL`` column in a HubSpot export still
maps. Per-row content columns ``context``, ``context_1`` ... ``instructions_N`` map in every
profile. When several columns feed one field, the first non-empty one in priority order wins
(``ResolvedMapping.columns`` is in that order). An override ``Column=field`` takes the field
from every other column; ``Column=`` (empty field) leaves the column unmapped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from octave_bulk.errors import ConfigError
from octave_bulk.input.records import CANONICAL_FIELDS, CONTENT_FIELDS, IDENTITY_FIELDS

__all__ = [
    "PROFILES",
    "ResolvedMapping",
    "column_field",
    "column_key",
    "detect_profile",
    "header_key",
    "resolve_mapping",
]

PROFILES: tuple[str, ...] = ("auto", "hubspot", "salesforce", "apollo", "linkedin", "generic")
"""Profile names accepted by ``--profile``."""

_IGNORED = re.compile(r"[\s_\-.]+")


def header_key(name: str) -> str:
    """The matching key of a column name: casefolded, without spaces, ``_``, ``-`` or ``.``."""
    return _IGNORED.sub("", name.casefold())


def column_key(name: str) -> str:
    """How columns are told apart and named by users: casefolded, whitespace removed."""
    return "".join(name.split()).casefold()


def _table(spec: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, int]]:
    """``field -> names in priority order`` as ``key -> (field, rank)``."""
    return {header_key(n): (f, rank) for f, names in spec.items() for rank, n in enumerate(names)}


_GENERIC = _table(
    {
        "email": (
            "email",
            "email address",
            "e-mail",
            "work email",
            "business email",
            "contact email",
            "primary email",
        ),
        "firstName": ("firstName", "first", "given name"),
        "lastName": ("lastName", "last", "surname", "family name"),
        "jobTitle": ("jobTitle", "title", "position"),
        "companyName": (
            "companyName",
            "company",
            "organization",
            "organisation",
            "account name",
            "employer",
        ),
        "companyDomain": (
            "companyDomain",
            "domain",
            "company domain name",
            "website",
            "company website",
            "website url",
            "company url",
        ),
        "linkedInProfile": (
            "linkedInProfile",
            "linkedin",
            "linkedin url",
            "linkedin profile url",
            "person linkedin url",
            "profile url",
        ),
        "crmContactId": ("crmContactId", "contact id"),
        "crmLeadId": ("crmLeadId", "lead id"),
        "crmAccountId": ("crmAccountId", "account id", "company id"),
        "lang": ("lang", "language"),
        "requestId": ("requestId",),
    }
)
_CONTENT = {header_key(name): (name, 0) for name in CONTENT_FIELDS}

_PROFILE_TABLES: dict[str, dict[str, tuple[str, int]]] = {
    "generic": {},
    "hubspot": _table(
        {
            "crmContactId": ("Record ID", "Contact ID"),
            "firstName": ("First Name",),
            "lastName": ("Last Name",),
            "email": ("Email",),
            "jobTitle": ("Job Title",),
            "companyName": ("Company Name", "Associated Company"),
            "companyDomain": ("Company Domain Name", "Website URL", "Website"),
            "crmAccountId": (
                "Associated Company ID",
                "Associated Company IDs",
                "Primary Associated Company ID",
            ),
            "lang": ("Preferred language",),
        }
    ),
    "salesforce": _table(
        {
            "crmContactId": ("Contact ID",),
            "crmLeadId": ("Lead ID",),
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
}

_FIELD_ORDER = {name: i for i, name in enumerate(CANONICAL_FIELDS)}
_FIELDS_BY_KEY = {name.casefold(): name for name in CANONICAL_FIELDS}
_GENERIC_RANK = 100  # generic names rank after every profile-specific name


_SALESFORCE_REPORT_LABELS = frozenset(
    header_key(label)
    for label in (
        "Account Name", "Account Owner", "Lead Source", "Lead Status", "Mailing Street",
        "Mailing City", "Mailing State/Province", "Mailing Zip/Postal Code", "Mailing Country",
    )
)  # fmt: skip
"""Column labels of Salesforce contact and lead reports that HubSpot exports never carry."""


def detect_profile(headers: Sequence[str]) -> str:
    """The profile whose fingerprint the header carries, else ``generic``.

    Apollo: ``Apollo Contact Id``, ``Apollo Account Id``, ``Company Name for Emails`` or
    ``Person Linkedin Url``. LinkedIn Connections.csv: ``Connected On`` and ``URL``. HubSpot:
    ``Record ID``, ``Lifecycle Stage`` or ``Associated Company``. Salesforce: ``Contact ID``,
    ``Lead ID``, ``Account ID``, ``Company / Account``, a report's labels (``Account Name``,
    ``Mailing City``, ``Lead Source``...: :data:`_SALESFORCE_REPORT_LABELS`), or the API names
    ``Id`` with ``FirstName``/``LastName``/``AccountId``. Else ``Contact Owner`` (which both
    CRMs export) means HubSpot.
    """
    keys = {header_key(h) for h in headers}
    exact = {h.strip() for h in headers}
    if keys & {"apollocontactid", "apolloaccountid", "companynameforemails", "personlinkedinurl"}:
        return "apollo"
    if {"connectedon", "url"} <= keys:
        return "linkedin"
    if keys & {"recordid", "lifecyclestage", "associatedcompany"}:
        return "hubspot"
    if keys & {"contactid", "leadid", "accountid", "company/account"}:
        return "salesforce"
    if keys & _SALESFORCE_REPORT_LABELS:  # before "Contact Owner", which both CRMs export
        return "salesforce"
    if "contactowner" in keys:
        return "hubspot"
    if "Id" in exact and exact & {"FirstName", "LastName", "AccountId"}:
        return "salesforce"
    return "generic"


def column_field(profile: str, column: str, headers: Sequence[str] = ()) -> tuple[str, int] | None:
    """The canonical field a column feeds under ``profile``, with its rank (lower wins).

    Args:
        profile: a concrete profile name (not ``auto``).
        column: the source column name.
        headers: the whole header, used where a name is ambiguous (Salesforce ``Id`` is a
            contact id next to ``AccountId``, a lead id next to ``Company``).
    """
    key = header_key(column)
    if key in _CONTENT:
        return _CONTENT[key]
    if profile == "salesforce" and key == "id":
        keys = {header_key(h) for h in headers}
        lead = "company" in keys and not keys & {"accountid", "accountname"}
        return ("crmLeadId" if lead else "crmContactId", 0)
    hit = _PROFILE_TABLES[profile].get(key)
    if hit is not None:
        return hit
    generic = _GENERIC.get(key)
    return None if generic is None else (generic[0], _GENERIC_RANK + generic[1])


@dataclass(frozen=True, slots=True)
class ResolvedMapping:
    """How one input's columns feed the canonical fields.

    Attributes:
        profile: the profile used (never ``auto``).
        detected: True when ``auto`` picked it from the header.
        columns: ``(source column, field)`` pairs, by field then priority.
        unmapped: the columns that feed nothing, in file order.
        overridden: the columns set by ``--map``.
    """

    profile: str
    detected: bool
    columns: tuple[tuple[str, str], ...]
    unmapped: tuple[str, ...]
    overridden: tuple[str, ...] = ()

    @property
    def fields(self) -> frozenset[str]:
        """The canonical fields at least one column feeds."""
        return frozenset(f for _, f in self.columns)

    @property
    def has_identity(self) -> bool:
        """Whether some column feeds ``email`` or ``linkedInProfile``."""
        return bool(self.fields & {"email", "linkedInProfile"})

    @property
    def has_company_identity(self) -> bool:
        """Whether some column feeds ``companyDomain``, ``companyName`` or ``crmAccountId``."""
        return bool(self.fields & {"companyDomain", "companyName", "crmAccountId"})

    def for_companies(self) -> ResolvedMapping:
        """The mapping of a company or account export: its record id (which the contact
        profiles read as ``crmContactId``/``crmLeadId``) is the ``crmAccountId``, unless a
        column already feeds that."""
        if "crmAccountId" in self.fields:
            return self
        renamed = tuple(
            (column, "crmAccountId" if target in ("crmContactId", "crmLeadId") else target)
            for column, target in self.columns
        )
        return dataclasses.replace(self, columns=renamed)

    def render(self) -> str:
        """The mapping as lines for a terminal: profile, ``column -> field``, unmapped columns."""
        how = "detected from the header" if self.detected else "chosen"
        out = [f"profile: {self.profile} ({how})"]
        width = max((len(c) for c, _ in self.columns), default=0)
        first: dict[str, str] = {}
        for column, target in self.columns:
            note = f"  (when {first[target]!r} is empty)" if target in first else ""
            note += "  [--map]" if column in self.overridden else ""
            first.setdefault(target, column)
            out.append(f"  {column.ljust(width)} -> {target}{note}")
        if not self.columns:
            out.append("  (no column maps to a contact field)")
        out.append("unmapped: " + (", ".join(self.unmapped) if self.unmapped else "(none)"))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """The mapping as JSON-ready data (for the run summary)."""
        return {
            "profile": self.profile,
            "detected": self.detected,
            "columns": [{"column": c, "field": f} for c, f in self.columns],
            "unmapped": list(self.unmapped),
            "overridden": list(self.overridden),
        }


def resolve_mapping(
    headers: Sequence[str], profile: str = "auto", overrides: Sequence[str] = ()
) -> ResolvedMapping:
    """Resolve ``headers`` under ``profile`` and ``overrides`` (see the module docstring).

    Raises:
        ConfigError: unknown profile, an override without ``=``, naming an unknown field or
            a column that is not in the header.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    name = detect_profile(headers) if profile == "auto" else profile
    forced = _parse_overrides(overrides, headers)
    claimed = {f for f in forced.values() if f}
    ranked: list[tuple[int, int, int, str, str]] = []
    for index, column in enumerate(headers):
        if column in forced:
            target: str | None = forced[column]
            rank = -1
        else:
            hit = column_field(name, column, headers)
            target, rank = hit if hit is not None else (None, 0)
            if target in claimed:
                target = None
        if target:
            ranked.append((_FIELD_ORDER[target], rank, index, column, target))
    ranked.sort()
    mapped = {column for *_, column, _ in ranked}
    return ResolvedMapping(
        profile=name,
        detected=profile == "auto",
        columns=tuple((column, target) for *_, column, target in ranked),
        unmapped=tuple(h for h in headers if h not in mapped),
        overridden=tuple(c for c in headers if c in forced),
    )


def _parse_overrides(overrides: Sequence[str], headers: Sequence[str]) -> dict[str, str | None]:
    """``["Source Column=field", ...]`` -> source column (as in the header) -> field or None."""
    by_key: dict[str, str] = {}
    for h in headers:
        by_key.setdefault(column_key(h), h)
    forced: dict[str, str | None] = {}
    for item in overrides:
        column, sep, target = item.rpartition("=")
        column, target = column.strip(), target.strip()
        if not sep or not column:
            raise ConfigError(f"--map {item!r}: expected 'Source Column=field'")
        source = by_key.get(column_key(column))
        if source is None:
            shown = ", ".join(repr(h) for h in headers[:30])
            raise ConfigError(f"--map {item!r}: no column {column!r} in the header ({shown})")
        if target and target.casefold() not in _FIELDS_BY_KEY:
            known = ", ".join(IDENTITY_FIELDS) + ", context[_N], instructions[_N]"
            raise ConfigError(f"--map {item!r}: unknown field {target!r}; fields: {known}")
        forced[source] = _FIELDS_BY_KEY[target.casefold()] if target else None
    return forced
