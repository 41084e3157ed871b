"""Column mapping: which source column feeds which canonical contact field, and why.

Contract: :func:`resolve_mapping` turns a header (repeated names already renamed by
:func:`~octave_bulk.input.sniff.check_headers`), a profile name (``auto`` picks one by the
header's fingerprint and the sample's record ids: :mod:`octave_bulk.input.profiles`) and
``"Source Column=field"`` overrides into a :class:`ResolvedMapping` that says, for every column,
the canonical field it feeds (``records.CANONICAL_FIELDS``) or that it is unmapped, and why,
and that renders itself for printing. Bad profile names and overrides raise
:class:`ConfigError` naming them.

Per-row content columns ``context``, ``context_1`` ... ``instructions_N`` map in every
profile. When several columns feed one field, the first non-empty one in priority order wins
(``ResolvedMapping.columns`` is in that order); a renamed copy (``Email_2``) feeds what its
first column feeds, right after it. An override ``Column=field`` takes the field from every
other column; ``Column=`` (empty field) leaves the column unmapped. Either copy of a repeated
name can be overridden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from octave_bulk.errors import ConfigError
from octave_bulk.input.chain import PERSON_KEY, RESPONSE_KEY
from octave_bulk.input.profiles import (
    GENERIC_RANK,
    PROFILES,
    column_field,
    detect_profile,
    header_key,
    salesforce_object,
)
from octave_bulk.input.records import CANONICAL_FIELDS, IDENTITY_FIELDS

__all__ = [
    "PROFILES",
    "ResolvedMapping",
    "column_field",
    "column_key",
    "column_letter",
    "detect_profile",
    "header_key",
    "resolve_mapping",
]

_CHAINED = {
    RESPONSE_KEY: "the earlier step's answer (for --where and context_from), not sent as a field",
    PERSON_KEY: "the earlier result's person key (the chain's join key), not sent as a field",
}
"""The columns a results file read as input carries (``input/chain.py``), and what they are:
never "unmapped" (they are not fields of a CRM export left out)."""

MUST_AGREE = frozenset(
    {"email", "linkedInProfile", "crmContactId", "crmLeadId", "crmAccountId", "companyDomain"}
)
"""Fields that say who a row is (and which CRM record a write-back reaches): two columns of one
name that feed one of them with different values make the row ambiguous."""


def column_key(name: str) -> str:
    """How columns are told apart and named by users: casefolded, whitespace removed."""
    return "".join(name.split()).casefold()


def column_letter(index: int) -> str:
    """The spreadsheet letter of the 0-based column ``index``: 0 -> ``A``, 26 -> ``AA``."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


_FIELD_ORDER = {name: i for i, name in enumerate(CANONICAL_FIELDS)}
_FIELDS_BY_KEY = {name.casefold(): name for name in CANONICAL_FIELDS}


@dataclass(frozen=True, slots=True)
class ResolvedMapping:
    """How one input's columns feed the canonical fields.

    Attributes:
        profile: the profile used (never ``auto``).
        detected: True when ``auto`` picked it from the header.
        columns: ``(source column, field)`` pairs, by field then priority.
        unmapped: the columns that feed nothing, in file order.
        overridden: the columns set by ``--map``.
        headers: every column, in file order.
        reasons: ``(column, why)`` in file order: why it feeds its field, or nothing.
        copies: ``(renamed copy, the first column of that name)`` for each repeated name.
        detected_by: the column (or fact) the profile was recognised by.
        kind: the record type of the export when known (``account``, ``contact``, ``lead``).
    """

    profile: str
    detected: bool
    columns: tuple[tuple[str, str], ...]
    unmapped: tuple[str, ...]
    overridden: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    reasons: tuple[tuple[str, str], ...] = ()
    copies: tuple[tuple[str, str], ...] = ()
    detected_by: str = ""
    kind: str = ""

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

    def copy_groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(field, columns)`` for each repeated column name whose copies (two or more)
        feed one identity field (:data:`MUST_AGREE`): the columns whose values must agree on a
        row. Copies of any other field (a company name, a phone) are fallbacks: the first
        filled one is used, as HubSpot's export with associated companies needs (its
        ``Company Name`` is the contact's, ``Company name`` the company record's)."""
        feeds = dict(self.columns)
        groups: dict[tuple[str, str], list[str]] = {}
        for copy, original in self.copies:
            target = feeds.get(copy)
            if target in MUST_AGREE and feeds.get(original) == target:
                groups.setdefault((original, target), [original]).append(copy)
        return tuple((target, tuple(cols)) for (_, target), cols in groups.items())

    def where(self, column: str) -> str:
        """``'Email' (column D)``: a column by its name and spreadsheet letter."""
        if column in self.headers:
            return f"{column!r} (column {column_letter(self.headers.index(column))})"
        return repr(column)

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
        """The mapping for a terminal: the profile, then every column in file order with the
        field it feeds (or ``-``) and why, then the repeated names renamed."""
        how = "detected from the header" if self.detected else "chosen"
        by = f", by {self.detected_by!r}" if self.detected and self.detected_by else ""
        out = [f"profile: {self.profile} ({how}){by}"]
        feeds = dict(self.columns)
        ranked: dict[str, list[str]] = {}
        for column, feeding in self.columns:
            ranked.setdefault(feeding, []).append(column)
        why = dict(self.reasons)
        shown = self.headers or tuple(c for c, _ in self.columns) + self.unmapped
        width = max((len(c) for c, _ in self.columns), default=0)
        for column in shown:
            target = feeds.get(column)
            note = why.get(column, "")
            if target is not None and ranked[target][0] != column:
                note += f"; used when {ranked[target][0]!r} is empty"
            out.append(f"  {column.ljust(width)} -> {target or '-':<16} {note}".rstrip())
        if not self.columns:
            out.append("  (no column maps to a contact field)")
        if self.copies:
            renamed = ", ".join(f"{self.where(c)} is {o!r} again" for c, o in self.copies)
            out.append(f"repeated column names, later copies renamed: {renamed}")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """The mapping as JSON-ready data (for the run summary)."""
        return {
            "profile": self.profile,
            "detected": self.detected,
            "columns": [{"column": c, "field": f} for c, f in self.columns],
            "unmapped": list(self.unmapped),
            "overridden": list(self.overridden),
            "reasons": dict(self.reasons),
            "copies": dict(self.copies),
        }


def resolve_mapping(
    headers: Sequence[str],
    profile: str = "auto",
    overrides: Sequence[str] = (),
    *,
    copies: Mapping[str, str] | None = None,
    sample: Sequence[Mapping[str, str]] = (),
) -> ResolvedMapping:
    """Resolve ``headers`` under ``profile`` and ``overrides`` (see the module docstring).

    Args:
        headers: the column names, repeated names already renamed (``copies``).
        profile: a profile name, or ``auto`` to detect it.
        overrides: ``"Source Column=field"`` items (``--map``).
        copies: renamed copy -> the first column of that name; a copy feeds what that
            column feeds, after it.
        sample: the first rows, for detection by record ids (Salesforce, Zoho).

    Raises:
        ConfigError: unknown profile, an override without ``=``, naming an unknown field or
            a column that is not in the header.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    copies = copies or {}
    name, detected_by = detect_profile(headers, sample) if profile == "auto" else (profile, "")
    kind = salesforce_object(headers, sample) if name == "salesforce" else ""
    forced = _parse_overrides(overrides, headers)
    claimed = {f for f in forced.values() if f}
    ranked: list[tuple[int, int, int, str, str]] = []
    reasons: dict[str, str] = {}
    for index, column in enumerate(headers):
        original = copies.get(column)
        if column in forced:
            target: str | None = forced[column]
            rank = -1
            reasons[column] = "--map" if target else "left out by --map"
        else:
            hit = column_field(name, original or column, headers, kind)
            target, rank = hit if hit is not None else (None, 0)
            if original is not None:
                reasons[column] = f"copy of {original!r}"
            elif column in _CHAINED:  # a results file read as input: not a CRM column
                reasons[column] = _CHAINED[column]
            elif target is None:
                reasons[column] = "not a name this profile knows"
            else:
                reasons[column] = "generic name" if rank >= GENERIC_RANK else f"{name} name"
            if target in claimed:
                target = None
                reasons[column] = "its field is set by --map"
        if target:
            ranked.append((_FIELD_ORDER[target], rank, index, column, target))
    ranked.sort()
    mapped = {column for *_, column, _ in ranked}
    return ResolvedMapping(
        profile=name,
        detected=profile == "auto",
        columns=tuple((column, target) for *_, column, target in ranked),
        unmapped=tuple(h for h in headers if h not in mapped and h not in _CHAINED),
        overridden=tuple(c for c in headers if c in forced),
        headers=tuple(headers),
        reasons=tuple((c, reasons[c]) for c in headers),
        copies=tuple((c, o) for c, o in copies.items() if c in headers),
        detected_by=detected_by,
        kind=kind,
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
