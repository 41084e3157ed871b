"""Adapter from settings to the contact reader: the one place the engine opens its input.

(Temporary minimal reader of canonical column names; the full reader replaces it.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from octave_bulk.records import CANONICAL_FIELDS, Contact, Reject
from octave_bulk.settings import Settings

__all__ = ["open_contacts"]


class _MinimalReader:
    mapping_text = "canonical column names"

    def __init__(self, handle: io.TextIOBase, ndjson: bool) -> None:
        self._handle, self._ndjson = handle, ndjson

    def __iter__(self) -> Iterator[Contact | Reject]:
        if self._ndjson:
            for number, line in enumerate(self._handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield Reject(number, "malformed_record", None, "not JSON", line)
                    continue
                yield self._contact(number, {k: str(v) for k, v in row.items() if v is not None})
            return
        reader = csv.DictReader(self._handle)
        start = 2
        for row in reader:
            yield self._contact(start, {k: v for k, v in row.items() if k and v})
            start = reader.line_num + 1

    @staticmethod
    def _contact(line: int, row: dict[str, str]) -> Contact | Reject:
        fields = {k: v.strip() for k, v in row.items() if k in CANONICAL_FIELDS and v.strip()}
        if not (fields.get("email") or fields.get("linkedInProfile")):
            return Reject(line, "missing_identity", "email", "no email or LinkedIn profile", row)
        return Contact(line, fields)


@contextlib.contextmanager
def open_contacts(path: str | Path, settings: Settings) -> Iterator[_MinimalReader]:
    """Open the input and yield an iterable of Contact | Reject, one per record."""
    ndjson = str(path).endswith((".ndjson", ".jsonl")) or settings.input_format == "ndjson"
    if str(path) == "-":
        yield _MinimalReader(
            io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline=""), ndjson
        )
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:
        yield _MinimalReader(handle, ndjson)
