"""The ``validate`` command's library function: read, map and check an input, no API call.

Contract: :func:`validate_input` reads the input exactly as ``run`` would (a
:class:`~octave_bulk.input.reader.ContactReader`) and admits every record as ``run`` does (the
run's classifier, ``run/admission.py``, with no output: the request model and the duplicate
check make ``invalid_field`` and ``duplicate`` rejects; rows ``--where`` leaves out are counted
apart), writes every reject as one JSON line to the rejects file (mode 0600), counts the notes
of valid rows (a value left out: ``records.NOTE_REASONS``), and returns a
:class:`ValidationReport`. Whole-file problems raise :class:`InputError` or
:class:`ConfigError` before any row is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octave_bulk.agents.base import Agent, RequestSpec
from octave_bulk.input.mapping import ResolvedMapping
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact, Reject
from octave_bulk.run.admission import Admission
from octave_bulk.run.build import RequestBuilder
from octave_bulk.run.summary import RunStats
from octave_bulk.state.files import NdjsonAppender

__all__ = ["ValidationReport", "validate_input"]


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What ``validate`` found (zero API calls).

    Attributes:
        path: the input as shown in messages.
        format, encoding, encoding_note, delimiter, header_line: how it was read.
        mapping: the resolved column mapping.
        read: records read (blank ones not counted).
        valid: records that would be sent (first of their requestId).
        rejected: reject count by reason (``duplicate`` included).
        filtered_out: rows ``--where`` leaves out (an earlier run's results): not rejects.
        rejects_path: where the rejects were written, if anywhere.
        footer_rows: a report's footer lines, dropped (not rows, not rejects).
        notes: valid rows sent with a value left out, by note (``records.NOTE_REASONS``).
        note_examples: the first message of each note, with its line.
    """

    path: str
    format: str
    encoding: str
    encoding_note: str | None
    delimiter: str | None
    header_line: int | None
    mapping: ResolvedMapping
    read: int
    valid: int
    rejected: dict[str, int]
    rejects_path: Path | None
    footer_rows: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    note_examples: dict[str, str] = field(default_factory=dict)
    filtered_out: int = 0

    @property
    def duplicates(self) -> int:
        """Rows that repeat an earlier row's request."""
        return self.rejected.get("duplicate", 0)

    @property
    def rejected_total(self) -> int:
        """All rejects, duplicates included (``read == valid + rejected_total +
        filtered_out``)."""
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--log-format json`` or a summary)."""
        return {
            "path": self.path,
            "format": self.format,
            "encoding": self.encoding,
            "encodingNote": self.encoding_note,
            "delimiter": self.delimiter,
            "headerLine": self.header_line,
            "mapping": self.mapping.to_dict(),
            "read": self.read,
            "valid": self.valid,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "filteredOut": self.filtered_out,
            "rejectsPath": None if self.rejects_path is None else str(self.rejects_path),
            "footerRows": self.footer_rows,
            "notes": dict(self.notes),
        }

    def render_notes(self) -> list[str]:
        """One line per note: how many valid rows had a value left out, and the first case."""
        return [
            f"  note {code}: {count} (sent without it), e.g. {self.note_examples[code]}"
            for code, count in sorted(self.notes.items())
        ]


def validate_input(
    path: str | Path,
    options: ReaderOptions,
    spec: RequestSpec,
    rejects_path: Path | None,
    agent: Agent | None = None,
) -> ValidationReport:
    """Read, map and validate ``path`` exactly as ``run`` would, without any API call.

    Each contact also goes through the request model (``invalid_field`` rejects) and is
    checked for an earlier row with the same requestId (the first wins; later ones are
    ``duplicate`` rejects naming the first row's line). Every reject is written as one JSON
    line (``Reject.to_record()``) to ``rejects_path`` (created or truncated, mode 0600) once
    the header has been read.

    Raises:
        InputError: the input cannot be read or its header is unusable.
        ConfigError: bad options, overrides or templates.
    """
    stats = RunStats()
    examples: dict[str, str] = {}

    def noted(records: Iterable[Contact | Reject]) -> Iterator[Contact | Reject]:
        for record in records:
            if isinstance(record, Contact):
                for code, message in record.notes:
                    examples.setdefault(code, f"line {record.line}: {message}")
            yield record

    admission = Admission(None, stats, builder=RequestBuilder(spec, agent=agent), follow=False)
    with ContactReader(path, options) as reader:
        out = NdjsonAppender(rejects_path, keep=0) if rejects_path is not None else None
        try:
            admission.admit_all(noted(reader), out)
        finally:
            if out is not None:
                out.close()
    return ValidationReport(
        path=reader.label,
        format=reader.format,
        encoding=reader.encoding,
        encoding_note=reader.encoding_note,
        delimiter=reader.delimiter,
        header_line=reader.header_line,
        mapping=reader.mapping,
        read=reader.rows_read,
        valid=stats.queued,
        rejected=dict(stats.rejects_by_reason),
        rejects_path=rejects_path,
        footer_rows=reader.footer_rows,
        notes=dict(stats.notes_by_code),
        note_examples=examples,
        filtered_out=stats.filtered_out,
    )
