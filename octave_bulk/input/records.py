"""The records that flow between pipeline stages: input contacts and rejected rows.

A reader yields, for every input record, exactly one of :class:`Contact` (valid, canonical
field names) or :class:`Reject` (with the line it starts on, a reason code and the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from octave_bulk.agents.fields import MAX_STEPS

__all__ = [
    "CANONICAL_FIELDS",
    "CONTENT_FIELDS",
    "IDENTITY_FIELDS",
    "NOTE_REASONS",
    "REJECT_REASONS",
    "Contact",
    "Reject",
]

IDENTITY_FIELDS: tuple[str, ...] = (
    "email",
    "firstName",
    "lastName",
    "jobTitle",
    "companyName",
    "companyDomain",
    "linkedInProfile",
    "crmContactId",
    "crmLeadId",
    "crmAccountId",
    "lang",
    "requestId",
)
"""Contact fields sent as-is in the request body (``docs/design.md``, section "Contact fields")."""

CONTENT_FIELDS: tuple[str, ...] = (
    "context",
    *(f"context_{n}" for n in range(1, MAX_STEPS + 1)),
    "instructions",
    *(f"instructions_{n}" for n in range(1, MAX_STEPS + 1)),
)
"""Per-row content: ``context`` / ``instructions`` go to the ``all`` key, ``_N`` to step N."""

CANONICAL_FIELDS: tuple[str, ...] = IDENTITY_FIELDS + CONTENT_FIELDS

REJECT_REASONS: dict[str, str] = {
    "missing_identity": "the row has neither an email nor a LinkedIn profile",
    "invalid_email": "the email address is not valid",
    "invalid_linkedin": "the LinkedIn profile is not a LinkedIn URL",
    "field_too_long": "a field is longer than the API accepts",
    "field_too_large": "a cell is larger than the reader's field-size cap",
    "invalid_field": "a field fails the request model",
    "malformed_record": "the record cannot be parsed (NUL byte, unterminated quote, bad JSON)",
    "ragged_row": "the row has more cells than the header",
    "ambiguous_column": "two columns of the same name feed one field with different values",
    "duplicate": "the same request as an earlier row",
    "filtered_out": "an earlier run's result that --where leaves out",
    "where_failed": "an earlier run's result --where cannot be evaluated on (a missing key, a wrong type)",
    "superseded": "an earlier run's result replaced by a later one for the same person",
}
"""Every reason code a reject can carry, with its meaning."""

NOTE_REASONS: dict[str, str] = {
    "email_dropped": "an invalid email beside a valid LinkedIn URL: the URL identifies the person",
    "lang_dropped": "a Language value with no ISO 639-1 code: the row is sent without lang",
}
"""Every note a valid contact can carry: a value left out, the row still sent."""


@dataclass(frozen=True, slots=True)
class Contact:
    """One valid input record, by canonical field name (empty values left out).

    Attributes:
        line: 1-based line of the input where the record starts.
        fields: canonical field -> value, see ``CANONICAL_FIELDS``.
        notes: ``(code from NOTE_REASONS, message)`` for each value left out of the row.
    """

    line: int
    fields: dict[str, str]
    notes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """An input record that will never become a request.

    Attributes:
        line: 1-based line where the record starts.
        reason: a code from ``REJECT_REASONS``.
        field: the canonical field (or source column) at fault, when there is one.
        message: a sentence for the user.
        row: the record as read (source column -> value), or its raw text when unparseable.
    """

    line: int
    reason: str
    field: str | None
    message: str
    row: dict[str, Any] | str

    def to_record(self) -> dict[str, Any]:
        """The ``OUT.rejects.ndjson`` line (``docs/design.md``, section "Files")."""
        return {
            "line": self.line,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "row": self.row,
        }
