"""``export.outcome``: what an export wrote and what it left out (:class:`ExportReport`), with
its warnings for stderr.

Contract: the report keeps exact counts but lists at most :data:`ID_LIST_CAP` requestIds or
line numbers of each kind (:func:`note_capped` adds one within the cap);
:meth:`ExportReport.warnings` says each problem in one sentence, listing the first ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ID_LIST_CAP", "ExportReport", "note_capped"]

ID_LIST_CAP = 1000
"""At most this many requestIds / line numbers are listed per kind in an ``ExportReport``."""


@dataclass
class ExportReport:
    """What an export wrote and what it left out.

    Attributes:
        out: where the CSV went (``"-"`` for stdout).
        preset: the preset used.
        body_format: ``"text"`` or ``"html"``.
        max_field_chars: the cell length limit applied (None: no limit).
        lines: complete lines in the results file.
        bytes: the bytes those lines take.
        rows: rows written (header excluded).
        steps: N, the number of step column pairs.
        skipped_blank: requestIds of results left out for an empty subject or body (or no step).
        skipped_blank_count: how many results were left out for that reason.
        skipped_bad_lines: 1-based line numbers that are not results.
        skipped_bad_count: how many such lines.
        skipped_no_email: requestIds of results left out of an email sequencer's CSV for
            having no email (LinkedIn-only contacts).
        skipped_no_email_count: how many results were left out for that reason.
        truncated_cells: subject/body cells cut to ``max_field_chars``.
        truncated_rows: rows with at least one cut cell.
        truncated_ids: requestIds of those rows.
        torn_tail: a last line without its newline was ignored.
        superseded: older results of people with a later one, left out (not a problem).
        agent_columns: an agent preset's own columns, in the order first met.
    """

    out: str
    preset: str
    body_format: str
    max_field_chars: int | None
    lines: int = 0
    bytes: int = 0
    rows: int = 0
    steps: int = 0
    skipped_blank: list[str] = field(default_factory=list)
    skipped_blank_count: int = 0
    skipped_bad_lines: list[int] = field(default_factory=list)
    skipped_bad_count: int = 0
    skipped_no_email: list[str] = field(default_factory=list)
    skipped_no_email_count: int = 0
    truncated_cells: int = 0
    truncated_rows: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    torn_tail: bool = False
    superseded: int = 0
    agent_columns: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """One sentence per problem, for stderr (empty when there is nothing to say)."""
        notes = []
        if self.skipped_blank_count:
            notes.append(
                f"{self.skipped_blank_count} result(s) left out: a step has an empty subject or "
                f"body{_listing(self.skipped_blank, self.skipped_blank_count, 'requestIds')}"
            )
        if self.skipped_no_email_count:
            notes.append(
                f"{self.skipped_no_email_count} result(s) left out: no email (LinkedIn only), "
                f"which the {self.preset} preset cannot send to"
                f"{_listing(self.skipped_no_email, self.skipped_no_email_count, 'requestIds')}"
            )
        if self.skipped_bad_count:
            lines = [str(n) for n in self.skipped_bad_lines]
            notes.append(
                f"{self.skipped_bad_count} line(s) skipped: not a result line"
                f"{_listing(lines, self.skipped_bad_count, 'lines')}"
            )
        if self.truncated_cells:
            notes.append(
                f"{self.truncated_cells} cell(s) in {self.truncated_rows} row(s) cut to "
                f"{self.max_field_chars} characters (--max-field-chars)"
                f"{_listing(self.truncated_ids, self.truncated_rows, 'requestIds')}"
            )
        if self.torn_tail:
            notes.append("ignored an incomplete last line (a run may still be writing the file)")
        return notes


def _listing(items: list[str], total: int, what: str) -> str:
    shown = ", ".join(items[:10])
    more = f", ... ({total - 10} more)" if total > 10 else ""
    return f" ({what}: {shown}{more})"


def note_capped(items: list[Any], item: Any) -> None:
    """Append ``item`` to a report's list unless it holds :data:`ID_LIST_CAP` already."""
    if len(items) < ID_LIST_CAP:
        items.append(item)
