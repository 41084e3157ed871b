"""``export.writer``: the results file becomes a sequencer CSV, in two streaming passes.

Contract:

- :func:`export_results` checks its arguments (preset, body format, limit, that ``out`` is not
  the results file and that the results file exists) before it reads or writes anything.
- First pass: counts the complete lines, notes the lines that are not results and the blank
  results (:mod:`~octave_bulk.export.results`), and finds N, the most steps among the results
  exported. A last line without its newline (torn, or being written) is ignored; blank lines
  are ignored.
- Second pass: reads only the lines the first pass counted (a run may append meanwhile) and
  writes the header (:meth:`~octave_bulk.export.presets.Preset.header`) and one row per
  exportable result: identity cells from the contact fields, each step's subject (trimmed) and
  body (:func:`~octave_bulk.export.text.render_body`), empty cells for the steps a shorter
  sequence lacks, then ``num_steps, request_id, completed_at``. Every cell is escaped
  (:func:`~octave_bulk.export.text.escape_formula`). With a limit, a longer subject/body cell
  is cut to it after escaping, and counted; identity cells are never cut.
- Source: the lines come from a :data:`LineSource`: the results file (:func:`export_results`)
  or the shared ledger's results (:func:`export_lines`); the passes are the same.
- Selection: with ``present``, only the people in that set (``--exclude-missing-from``: the
  people of today's CRM export); with ``after_line`` only the complete lines after the first
  ``after_line`` (``export --new``: the watermark of the last export); with ``run_ids`` only
  the lines those runs wrote. ``ExportReport.lines`` is the complete line count either way: the
  next watermark. Among the selected results, one row per person (the person key of
  :mod:`octave_bulk.identity`): the latest, so that a person whose emails were made again
  after a change is imported once, with the new ones; ``all_versions`` keeps every result.
  The first pass notes each person's last line in an ``IdSet`` (~18 bytes per person).
- No pass holds more than one line, so memory stays flat. The report keeps exact counts but
  lists at most ``ID_LIST_CAP`` requestIds / line numbers of each kind.
- CSV: RFC 4180 through the ``csv`` module (CRLF, minimal quoting), plain UTF-8 without a BOM:
  the file is for sequencer importers, which read UTF-8; Excel needs a BOM to open it directly
  (use its Data > From Text import instead). A file is written to a temporary file of mode 0600
  and renamed over ``out`` when complete; ``out="-"`` writes to stdout.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from octave_bulk.errors import ConfigError, InputError, StateError
from octave_bulk.export.outcome import ID_LIST_CAP, ExportReport, note_capped
from octave_bulk.export.presets import CRM_PRESETS, OTHER_CRM_IDS, PRESETS, Preset, crm_preset
from octave_bulk.export.results import Result, parse_line, read_lines
from octave_bulk.export.text import escape_formula, render_body
from octave_bulk.identity import person_key
from octave_bulk.state.files import atomic_file, results_agent
from octave_bulk.state.idset import IdSet, id_key

__all__ = [
    "ID_LIST_CAP",
    "ExportReport",
    "LineSource",
    "export_lines",
    "export_results",
    "presets_for",
]

LineSource = Callable[[int | None, int], Iterator[bytes]]
"""Where an export reads results lines: ``(count, offset)`` -> the lines from byte ``offset``
(the first ``count`` of them when given). A results file's is :func:`read_lines`."""


def export_results(
    results: Path,
    out: Path | str,
    *,
    preset: str = "generic",
    body_format: Literal["text", "html"] = "text",
    max_field_chars: int | None = None,
    after_line: int = 0,
    after_byte: int = 0,
    run_ids: frozenset[str] | None = None,
    all_versions: bool = False,
    present: IdSet | None = None,
    other_crm_ids: Mapping[int, str] | None = None,
) -> ExportReport:
    """Write the successes of a results file as a sequencer CSV (see the package docstring).

    Args:
        results: ``OUT.ndjson`` of a run (only read; a run may still be appending to it).
        out: the CSV to write, or ``"-"`` for stdout.
        preset: a key of ``PRESETS``.
        body_format: ``"text"`` or ``"html"`` for the step bodies.
        max_field_chars: cell length limit; None takes the preset's default, 0 means none.
        after_line: export only the complete lines after this many (a watermark).
        after_byte: where those lines end, when known: the file is read from there (a mark
            that no longer ends a line, in a file replaced since, is ignored).
        run_ids: export only the lines of these runs.
        all_versions: every result of a person, not only the latest.
        present: export only the people whose person key (``id_key``) is in this set (the
            people of today's CRM export: ``--exclude-missing-from``).
        other_crm_ids: person (``id_key``) -> the CRM ids of their other records (from the
            ledger), for the ``other_crm_ids`` column.

    Returns:
        The report: rows written, N, results left out, cells cut, lines skipped.

    Raises:
        ConfigError: unknown preset or body format, negative limit, ``out`` is ``results``.
        InputError: the results file is missing or unreadable.
        StateError: the CSV cannot be written.
    """
    kind = results_agent(Path(results))
    layout = _layout(preset, kind, str(results), body_format, max_field_chars)
    results = Path(results)
    if not results.is_file():
        what = "is not a file" if results.exists() else "not found"
        raise InputError(f"results file {what}", path=results)
    if str(out) != "-" and Path(out).resolve() == results.resolve():
        raise ConfigError(f"{out}: the export would overwrite the results file")
    if after_byte and not _ends_line(results, after_byte):
        after_byte = 0
    source = functools.partial(read_lines, results)
    selection = (after_line, after_byte, run_ids, all_versions, present, other_crm_ids)
    return _export(source, out, layout, preset, body_format, max_field_chars, *selection)


def export_lines(
    lines: LineSource,
    out: Path | str,
    *,
    kind: str,
    label: str,
    preset: str = "generic",
    body_format: Literal["text", "html"] = "text",
    max_field_chars: int | None = None,
    run_ids: frozenset[str] | None = None,
    all_versions: bool = False,
    present: IdSet | None = None,
) -> ExportReport:
    """:func:`export_results` from another source of results lines (the shared ledger's
    results, ``state/pg/read.py``): ``lines(count, 0)`` must yield the same complete lines,
    in the same order, each time it is called; ``kind`` is their agent and ``label`` names
    them in errors. The arguments and the report are :func:`export_results`'."""
    layout = _layout(preset, kind, label, body_format, max_field_chars)
    selection = (0, 0, run_ids, all_versions, present, None)
    return _export(lines, out, layout, preset, body_format, max_field_chars, *selection)


def _layout(
    preset: str, kind: str | None, label: str, body_format: str, max_field_chars: int | None
) -> Preset:
    """The preset's layout for results of agent ``kind``; the arguments checked."""
    if preset in PRESETS or preset in CRM_PRESETS:
        _fitting(kind, label, preset)
    layout = PRESETS.get(preset)
    if preset in CRM_PRESETS:
        layout = _crm_layout(kind, preset)
    if layout is None:
        names = ", ".join([*PRESETS, *CRM_PRESETS])
        raise ConfigError(f"unknown preset {preset!r}; choose one of {names}")
    if body_format not in ("text", "html"):
        raise ConfigError(f"unknown body format {body_format!r}; choose text or html")
    if max_field_chars is not None and max_field_chars < 0:
        raise ConfigError("--max-field-chars must be 0 (no limit) or more")
    return layout


def _export(
    lines: LineSource,
    out: Path | str,
    layout: Preset,
    preset: str,
    body_format: str,
    max_field_chars: int | None,
    after_line: int,
    after_byte: int,
    run_ids: frozenset[str] | None,
    all_versions: bool,
    present: IdSet | None,
    other_crm_ids: Mapping[int, str] | None,
) -> ExportReport:
    """The two passes over ``lines`` (see the module docstring)."""
    report = ExportReport(str(out), preset, body_format, layout.limit(max_field_chars))
    latest = None if all_versions else IdSet(1024, with_values=True)
    rows_of = None
    if layout.agent is not None:
        from octave_bulk.agents import get_agent

        rows_of = get_agent(layout.agent).export_rows
    wanted = _Selection(after_line, run_ids, latest, present, after_byte, rows_of)
    complete = _first_pass(lines, report, wanted)
    with _open_out(out) as stream:
        _second_pass(lines, complete, stream, layout, report, wanted, other_crm_ids or {})
    return report


def presets_for(kind: str) -> list[str]:
    """The presets that fit an agent's results: sequencers for sequences, else the agent's own
    and the CRMs'."""
    if kind == "sequence":
        return [name for name, layout in PRESETS.items() if layout.agent is None]
    return [kind, *CRM_PRESETS]


def _fitting(kind: str | None, label: str, preset: str) -> None:
    """Refuse (exit 2) a preset that does not fit the results' agent: it would write 0 rows."""
    if kind is None or preset in presets_for(kind):
        return
    if kind == "sequence" and preset in CRM_PRESETS:
        return  # _crm_layout says where sequences go
    fits = ", ".join(presets_for(kind))
    raise ConfigError(
        f"{label}: holds {kind} results; --preset {preset} does not fit them (choose one of {fits})"
    )


def _crm_layout(kind: str | None, crm: str) -> Preset:
    """A CRM preset for the results' agent (a file's: its first line's ``agentType``)."""
    from octave_bulk.agents import get_agent

    kind = kind or "sequence"
    if kind == "sequence":
        raise ConfigError(
            f"--preset {crm} writes an agent's fields back to the CRM; sequences go to a "
            "sequencer: use generic, instantly, smartlead or lemlist"
        )
    return crm_preset(crm, kind, get_agent(kind).subject)


def _ends_line(path: Path, offset: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(offset - 1)
        return handle.read(1) == b"\n"


@dataclass(frozen=True)
class _Selection:
    after_line: int
    run_ids: frozenset[str] | None
    latest: IdSet | None  # person key -> the line of the person's latest result
    present: IdSet | None  # the people still in the CRM export
    after_byte: int = 0  # where line ``after_line`` ends (0: read from the start)
    rows_of: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None  # an agent's rows

    @property
    def first_line(self) -> int:
        """The 1-based number of the first line read."""
        return self.after_line + 1 if self.after_byte else 1

    def skips(self, number: int, result: Result) -> bool:
        """Whether the result on 1-based line ``number`` is left out (first pass)."""
        return (
            number <= self.after_line
            or (self.run_ids is not None and result.run_id not in self.run_ids)
            or (self.present is not None and _person(result) not in self.present)
        )

    def note(self, number: int, result: Result) -> None:
        """First pass: ``number`` is the latest line of the result's person so far."""
        if self.latest is not None:
            self.latest.put(_person(result), number)

    def superseded(self, number: int, result: Result) -> bool:
        """Second pass: a later line holds a result for the same person."""
        return self.latest is not None and self.latest.get(_person(result)) != number


def _person(result: Result) -> int:
    if result.person is not None:  # the key the run used (its --person-key, if any)
        return result.person
    return id_key(person_key(result.contact) or result.request_id)


def _first_pass(lines: LineSource, report: ExportReport, wanted: _Selection) -> int:
    """Count complete lines, note bad lines and blank results, and find N."""
    complete, size = wanted.first_line - 1, wanted.after_byte
    columns: dict[str, None] = {}  # an agent's columns, in the order first met
    for line in lines(None, size):
        if not line.endswith(b"\n"):
            report.torn_tail = True
            break
        complete += 1
        size += len(line)
        if not line.strip() or complete <= wanted.after_line:
            continue
        result = parse_line(line, wanted.rows_of)
        if result is not None and wanted.skips(complete, result):
            continue
        if result is None:
            report.skipped_bad_count += 1
            note_capped(report.skipped_bad_lines, complete)
        elif result.blank():
            report.skipped_blank_count += 1
            note_capped(report.skipped_blank, result.request_id)
        else:
            report.steps = max(report.steps, len(result.steps))
            for row in result.rows or ():
                columns.update(dict.fromkeys(row))
            wanted.note(complete, result)
    report.lines, report.bytes = complete, size
    report.agent_columns = list(columns)
    return complete


def _second_pass(
    source: LineSource,
    complete: int,
    stream: IO[str],
    layout: Preset,
    report: ExportReport,
    wanted: _Selection,
    other_crm_ids: Mapping[int, str],
) -> None:
    """Write the header and one row per exportable result among the first ``complete`` lines."""
    writer = csv.writer(stream)
    writer.writerow(layout.header(report.steps, tuple(report.agent_columns)))
    fields = layout.fields
    padding = [""] * (2 * report.steps)
    to_html = report.body_format == "html"
    limit = report.max_field_chars
    first = wanted.first_line
    lines = source(complete - first + 1, wanted.after_byte)
    for number, line in enumerate(lines, first):
        if not line.strip() or number <= wanted.after_line:
            continue
        result = parse_line(line, wanted.rows_of)
        if result is None or result.blank() or wanted.skips(number, result):
            continue
        if wanted.superseded(number, result):
            report.superseded += 1
            continue
        contact = result.contact
        if layout.needs_email and not str(contact.get("email") or "").strip():
            report.skipped_no_email_count += 1
            note_capped(report.skipped_no_email, result.request_id)
            continue
        if other_crm_ids and (others := other_crm_ids.get(_person(result))):
            contact = {**contact, OTHER_CRM_IDS: others}
        values = ("" if (value := contact.get(name)) is None else str(value) for name in fields)
        identity = [escape_formula(cell) for cell in values]
        if result.rows is not None:  # an agent's preset: its rows instead of steps
            ends = [escape_formula(result.request_id), escape_formula(result.completed_at)]
            records = [identity]
            if layout.prefix and contact.get(OTHER_CRM_IDS):  # a CRM preset: every record
                records += [
                    [escape_formula(other), *identity[1:]]
                    for other in str(contact[OTHER_CRM_IDS]).split(";")
                ]
            for row in result.rows:
                cells = [escape_formula(row.get(name, "")) for name in report.agent_columns]
                for record in records:
                    writer.writerow([*record, *cells, *ends])
                    report.rows += 1
            continue
        texts: list[str] = []
        for subject, body, html_body in result.steps:
            texts += (
                escape_formula(subject.strip()),
                escape_formula(render_body(body, html_body, to_html=to_html)),
            )
        if limit is not None:
            cut = sum(1 for text in texts if len(text) > limit)
            if cut:
                texts = [text[:limit] for text in texts]
                report.truncated_cells += cut
                report.truncated_rows += 1
                note_capped(report.truncated_ids, result.request_id)
        tail = (str(len(result.steps)), result.request_id, result.completed_at)
        writer.writerow([*identity, *texts, *padding[len(texts) :], *map(escape_formula, tail)])
        report.rows += 1


@contextlib.contextmanager
def _open_out(out: Path | str) -> Iterator[IO[str]]:
    """A text stream for the CSV: stdout for ``-``, else ``atomic_file`` (a 0600 temp file
    renamed over ``out`` on success, removed on error); an OSError becomes a StateError."""
    if str(out) == "-":
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a replaced stdout without bytes underneath
            yield sys.stdout
            sys.stdout.flush()
            return
        stream = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
        try:
            yield stream
            stream.flush()
        finally:
            stream.detach()
        return
    path = Path(out)
    try:
        with (
            atomic_file(path) as fd,
            open(fd, "w", encoding="utf-8", newline="", buffering=1 << 20, closefd=False) as stream,
        ):
            yield stream
    except OSError as exc:
        raise StateError(f"{path}: cannot write the export: {exc.strerror}") from None
