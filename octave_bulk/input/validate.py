"""The ``validate`` command's library function: read, map and check an input, no API call.

Contract: :func:`validate_input` reads the input exactly as ``run`` would (a
:class:`~octave_bulk.input.reader.ContactReader`), puts every contact through the request model
and the duplicate check (``invalid_field`` and ``duplicate`` rejects), writes every reject as one
JSON line to the rejects file (mode 0600), counts the notes of valid rows (a value left out:
``records.NOTE_REASONS``), and returns a :class:`ValidationReport`. Whole-file
problems raise :class:`InputError` or :class:`ConfigError` before any row is read.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from octave_bulk.agents.base import Agent, RequestSpec
from octave_bulk.input.mapping import ResolvedMapping
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact
from octave_bulk.run.build import BuiltRequest, RequestBuilder

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

    @property
    def duplicates(self) -> int:
        """Rows that repeat an earlier row's request."""
        return self.rejected.get("duplicate", 0)

    @property
    def rejected_total(self) -> int:
        """All rejects, duplicates included (``read == valid + rejected_total``)."""
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


def _open_private(path: Path) -> BinaryIO:
    """``path`` truncated for writing, mode 0600 even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:  # pragma: no cover - a filesystem without modes
        pass
    return os.fdopen(fd, "wb", buffering=1 << 16)


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
    counts: collections.Counter[str] = collections.Counter()
    notes: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    builder = RequestBuilder(spec, agent=agent)
    valid = 0
    with ContactReader(path, options) as reader:
        out = _open_private(rejects_path) if rejects_path is not None else None
        try:
            for item in reader:
                if isinstance(item, Contact):
                    for code, message in item.notes:
                        notes[code] += 1
                        examples.setdefault(code, f"line {item.line}: {message}")
                    built = builder.build(item)
                    if isinstance(built, BuiltRequest):
                        valid += 1
                        continue
                    item = built
                counts[item.reason] += 1
                if out is not None:
                    out.write(orjson.dumps(item.to_record()) + b"\n")
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
        valid=valid,
        rejected=dict(counts),
        rejects_path=rejects_path,
        footer_rows=reader.footer_rows,
        notes=dict(notes),
        note_examples=examples,
    )
