"""``export.presets``: each sequencer's column layout and cell length limit.

Contract: a CSV's header is the preset's identity columns, then ``step1_subject, step1_body,
... stepN_subject, stepN_body`` for the N steps exported, then ``num_steps, request_id,
completed_at`` (the same trailing names in every preset). Presets (identity column <- contact
field sent):

- ``generic``: ``email, first_name, last_name, company_name, title, linkedin_url,
  company_domain, crm_contact_id, crm_lead_id, crm_account_id, lang``; no length limit.
- ``instantly`` / ``smartlead``: ``email, first_name, last_name, company_name, title,
  linkedin_url, company_domain``; 30,000 characters per subject/body cell.
- ``lemlist`` (its own camelCase variable names): ``email, firstName, lastName, companyName,
  jobTitle, linkedinUrl, companyDomain``; 30,000 characters per subject/body cell.

These three send by email: a result without an email (a LinkedIn-only contact) is left out of
their CSV and counted (``ExportReport.skipped_no_email``).

Each agent but the Sequence Agent has a preset of its own name: the input's identity columns
(a person's as ``generic``; for company agents ``input_company_domain, input_company_name,
crm_account_id``) and its CRM ids, then the agent's own columns (``Agent.export_rows``: e.g.
firmographics, score and one column per qualifying question; the prospector one row per person
found), then ``request_id, completed_at``. ``hubspot`` and ``salesforce`` (:func:`crm_preset`)
write an agent's results for the CRM's import tool: the record id first, the agent's columns
under the CRM's property names, and one row per CRM record of the person or company.

30,000 is Outreach's documented custom-field limit, the smallest one documented for a sequencer
(HubSpot allows 65,536; Instantly, Smartlead and lemlist publish none), and far above a real
email. It applies to the generated cells (subjects and bodies) only: identity cells come from
the CRM, and a cut email address would be worse than a rejected import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CRM_PRESETS", "PRESETS", "Preset", "crm_preset"]

_SEQUENCER_MAX_CHARS = 30_000

_TRAILING = ("num_steps", "request_id", "completed_at")  # every preset's last columns


@dataclass(frozen=True)
class Preset:
    """A sequencer's column layout.

    Attributes:
        name: the preset's name (``--preset``).
        columns: ``(output column, contact field)`` pairs, in output order.
        max_field_chars: default cell length limit, or None for no limit.
        agent: for an agent's preset, its kind: the agent's export columns
            (``Agent.export_rows``) replace the steps, and ``num_steps`` is left out.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    max_field_chars: int | None
    agent: str | None = None
    rename: tuple[tuple[str, str], ...] = ()
    """Agent columns under other names (a CRM's property names); the rest get ``prefix``."""
    prefix: str = ""
    needs_email: bool = False
    """A sequencer that sends by email: a result without one (LinkedIn only) is left out."""

    @property
    def fields(self) -> list[str]:
        """The contact fields of the identity columns, in output order."""
        return [name for _, name in self.columns]

    def header(self, steps: int, agent_columns: tuple[str, ...] = ()) -> list[str]:
        """The CSV header for ``steps`` step column pairs (or an agent's columns)."""
        identity = [column for column, _ in self.columns]
        if self.agent is not None:
            names, own = dict(self.rename), list[str]()
            for column in agent_columns:
                name = base = names.get(column) or self.custom(column)
                number = 1
                while name in own:  # two columns cut to one Salesforce name: number them
                    name = f"{base.removesuffix('__c')[:34].rstrip('_')}_{number:02d}__c"
                    number += 1
                own.append(name)
            return [*identity, *own, *_TRAILING[1:]]
        parts = ("subject", "body")
        step_columns = [f"step{n}_{part}" for n in range(1, steps + 1) for part in parts]
        return [*identity, *step_columns, *_TRAILING]

    def custom(self, column: str) -> str:
        """An agent column the CRM has no property for: ``prefix`` + the column (Salesforce:
        an API name: letters, digits and single ``_``, at most 40 characters with ``__c``)."""
        if self.prefix != "Octave_":
            return self.prefix + column
        return re.sub(r"[\W_]+", "_", self.prefix + column)[:37].strip("_") + "__c"

    def limit(self, max_field_chars: int | None) -> int | None:
        """The cell length limit: ``None`` takes the preset's default, ``0`` means no limit."""
        return self.max_field_chars if max_field_chars is None else (max_field_chars or None)


_SNAKE = (
    ("email", "email"),
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("company_name", "companyName"),
    ("title", "jobTitle"),
    ("linkedin_url", "linkedInProfile"),
    ("company_domain", "companyDomain"),
)

OTHER_CRM_IDS = "otherCrmIds"
"""The field the export adds to a contact: the CRM ids of the person's other records, from the
ledger (``;``-separated)."""

PRESETS: dict[str, Preset] = {
    "generic": Preset(
        "generic",
        (
            *_SNAKE,
            ("crm_contact_id", "crmContactId"),
            ("crm_lead_id", "crmLeadId"),
            ("crm_account_id", "crmAccountId"),
            ("other_crm_ids", OTHER_CRM_IDS),
            ("lang", "lang"),
        ),
        None,
    ),
    "instantly": Preset("instantly", _SNAKE, _SEQUENCER_MAX_CHARS, needs_email=True),
    "smartlead": Preset("smartlead", _SNAKE, _SEQUENCER_MAX_CHARS, needs_email=True),
    "lemlist": Preset(
        "lemlist",
        (
            ("email", "email"),
            ("firstName", "firstName"),
            ("lastName", "lastName"),
            ("companyName", "companyName"),
            ("jobTitle", "jobTitle"),
            ("linkedinUrl", "linkedInProfile"),
            ("companyDomain", "companyDomain"),
        ),
        _SEQUENCER_MAX_CHARS,
        needs_email=True,
    ),
}
"""The presets by name."""

_CRM_IDS = (
    ("crm_contact_id", "crmContactId"),
    ("crm_lead_id", "crmLeadId"),
    ("crm_account_id", "crmAccountId"),
    ("other_crm_ids", OTHER_CRM_IDS),
)
_COMPANY = (
    ("input_company_domain", "companyDomain"),
    ("input_company_name", "companyName"),
    ("crm_account_id", "crmAccountId"),
    ("other_crm_ids", OTHER_CRM_IDS),
)
for _kind in ("enrich-person", "qualify-person", "content", "call-prep"):
    PRESETS[_kind] = Preset(_kind, (*_SNAKE, *_CRM_IDS), None, _kind)
for _kind in ("enrich-company", "qualify-company", "prospector"):
    PRESETS[_kind] = Preset(_kind, _COMPANY, None, _kind)

CRM_PRESETS = ("hubspot", "salesforce")
"""Presets for a CRM's import tool: the record id and the agent's columns under the CRM's
property names; the agent is the one the results file names (``agentType``)."""

_HUBSPOT = (
    ("company_name", "Name"), ("company_domain", "Company Domain Name"),
    ("website", "Website URL"), ("description", "Description"), ("industry", "Industry"),
    ("employee_count", "Number of Employees"), ("founded", "Year Founded"),
    ("city", "City"), ("region", "State/Region"), ("country_code", "Country/Region"),
    ("funding_total", "Total Money Raised"), ("score", "Octave Score"),
    ("rationale", "Octave Rationale"),
)  # fmt: skip
_SALESFORCE = (
    ("company_name", "Name"), ("website", "Website"), ("description", "Description"),
    ("industry", "Industry"), ("employee_count", "NumberOfEmployees"),
    ("city", "BillingCity"), ("region", "BillingState"), ("country_code", "BillingCountry"),
    ("score", "Octave_Score__c"), ("rationale", "Octave_Rationale__c"),
    ("first_name", "FirstName"), ("last_name", "LastName"), ("title", "Title"),
    ("email", "Email"),
)  # fmt: skip
_CRM_IDENTITY = {
    ("hubspot", "person"): (("Record ID", "crmContactId"), ("Email", "email")),
    ("hubspot", "company"): (("Record ID", "crmAccountId"),),
    ("salesforce", "person"): (("Id", "crmContactId"), ("Email", "email")),
    ("salesforce", "company"): (("Id", "crmAccountId"),),
}


def crm_preset(crm: str, kind: str, subject: str) -> Preset:
    """The ``hubspot`` or ``salesforce`` layout for an agent's results: the CRM record id
    (and email, for people) first, then the agent's columns under the CRM's property names
    (custom ones, like the score, under names to create in the CRM: ``Octave Score``,
    ``Octave_Score__c``; the others prefixed ``Octave ``/``Octave_``)."""
    rename = _HUBSPOT if crm == "hubspot" else _SALESFORCE
    prefix = "Octave " if crm == "hubspot" else "Octave_"
    return Preset(crm, _CRM_IDENTITY[crm, subject], None, kind, rename, prefix)
