"""``export.results``: reading a run's results file, line by line, for the export.

Contract:

- :func:`read_lines` yields the file's lines as bytes (the first ``count`` only, when given),
  with a 1 MiB buffer, never more than one line held; the file is only read, never repaired,
  so an export can run while a run appends to it. It raises ``InputError`` when the file
  cannot be opened or read.
- :func:`parse_line` turns one line into a :class:`Result`, or None when the line is not a
  result: not JSON, not an object, no non-empty string ``requestId``, no object ``contact``, or
  a ``response`` that does not validate as the Sequence Agent's response
  (:class:`~octave_bulk.agents.sequence.SequenceResponse`) as far as the export reads it:
  ``data.emails``, a list of objects whose ``subject`` and ``email`` are strings or null. Only
  those fields are validated: validating the whole response (product, playbook, persona,
  annotations) makes an export about 40 % slower (``benchmarks/bench_export.py``). A step's
  null or missing subject or body reads as ``""`` (so its result is blank), a missing
  ``completedAt`` as ``""``.
- :meth:`Result.blank`: no step, or a step whose subject is empty or whitespace or whose body
  shows no text (:func:`~octave_bulk.export.text.shows_text`); such a result is never exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from pydantic import ConfigDict, ValidationError

from octave_bulk.agents.envelope import ResponseModel
from octave_bulk.errors import InputError
from octave_bulk.export.text import is_html, shows_text
from octave_bulk.identity import read_person_hash

__all__ = ["Result", "parse_line", "read_lines"]


class _Step(ResponseModel):
    """The fields of a step (:class:`~octave_bulk.agents.sequence.Email`) the export reads."""

    model_config = ConfigDict(extra="ignore")
    subject: str | None = None
    email: str | None = None


class _Data(ResponseModel):
    model_config = ConfigDict(extra="ignore")
    emails: list[_Step]


class _Response(ResponseModel):
    """:class:`~octave_bulk.agents.sequence.SequenceResponse` as far as the export reads it:
    ``data.emails[].subject/email``, required up to ``emails``; the rest is not validated."""

    model_config = ConfigDict(extra="ignore")
    data: _Data


@dataclass
class Result:
    """One result line, as the export needs it.

    Attributes:
        request_id: the line's ``requestId``.
        contact: the contact fields sent.
        completed_at: ``completedAt``, or ``""``.
        steps: ``(subject, body, body is HTML)`` per email, in order.
        run_id: ``runId``, the run that wrote the line, or ``""`` (older lines have none).
        person: the line's ``personKey`` as an int (the run's person key), None when absent.
    """

    request_id: str
    contact: dict[str, Any]
    completed_at: str
    steps: list[tuple[str, str, bool]]
    run_id: str = ""
    person: int | None = None
    rows: list[dict[str, str]] | None = None
    """An agent's export rows (for an agent's preset), instead of steps."""

    def blank(self) -> bool:
        """No step, or a step whose subject is empty or whitespace or whose body shows no
        text; for an agent's result, no export row."""
        if self.rows is not None:
            return not self.rows
        if not self.steps:
            return True
        for subject, body, html_body in self.steps:
            if subject.isspace() or not subject or not shows_text(body, html_body):
                return True
        return False


def parse_line(
    line: bytes, rows_of: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None
) -> Result | None:
    """A results line, or None when it is not one. With ``rows_of`` (an agent's
    ``export_rows``), the response gives the result's rows instead of steps."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    rid, contact = record.get("requestId"), record.get("contact")
    if not (isinstance(rid, str) and rid and isinstance(contact, dict)):
        return None
    steps, rows = [], None
    if rows_of is not None:
        payload = record.get("response")
        if not isinstance(payload, dict):
            return None
        rows = rows_of(payload)
    else:
        try:
            response = _Response.model_validate(record.get("response"))
        except ValidationError:
            return None
        requested = contact.get("outputFormat")
        for email in response.data.emails:
            subject, body = email.subject or "", email.email or ""
            steps.append((subject, body, is_html(body, requested)))
    done, run_id, person = record.get("completedAt"), record.get("runId"), record.get("personKey")
    return Result(
        rid,
        contact,
        done if isinstance(done, str) else "",
        steps,
        run_id if isinstance(run_id, str) else "",
        read_person_hash(person),
        rows,
    )


def read_lines(path: Path, count: int | None = None, offset: int = 0) -> Iterator[bytes]:
    """The lines of the results file from byte ``offset`` (``count`` of them, when given)."""
    try:
        handle = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read the results file: {exc.strerror}", path=path) from None
    with handle:
        try:
            handle.seek(offset)
            yield from (handle if count is None else islice(handle, count))
        except OSError as exc:
            raise InputError(f"cannot read the results file: {exc.strerror}", path=path) from None
