"""``export``: the results file becomes a CSV that a sequencer imports, one row per success.

Columns: the preset's identity columns, then ``step1_subject, step1_body, ... stepN_subject,
stepN_body`` where N is the longest sequence exported, then ``num_steps, request_id,
completed_at`` (the same trailing names in every preset). A row with fewer steps leaves the
missing steps' cells empty.

Presets (identity column <- contact field sent):

- ``generic``: ``email, first_name, last_name, company_name, title, linkedin_url,
  company_domain, crm_contact_id, crm_lead_id, crm_account_id, lang``; no length limit.
- ``instantly`` / ``smartlead``: ``email, first_name, last_name, company_name, title,
  linkedin_url, company_domain``; 30,000 characters per subject/body cell.
- ``lemlist`` (its own camelCase variable names): ``email, firstName, lastName, companyName,
  jobTitle, linkedinUrl, companyDomain``; 30,000 characters per subject/body cell.

Decisions:

- Body: a step's ``email`` field, the full text of the step (greeting ... signature), as the
  agent wrote it. It counts as HTML when it holds HTML tags and the request did not ask for
  ``text`` or ``markdown``. ``body_format="text"`` strips HTML (``<p>``, ``<br>``, ``<div>``,
  ``<li>`` become line breaks, a link becomes ``text (url)``, entities are unescaped);
  ``"html"`` keeps HTML as received and turns plain text into ``<p>`` paragraphs (split on
  blank lines, ``<br>`` for single line breaks, ``< > &`` escaped). Markdown is kept as is.
- Blank variables break sends in every sequencer, so a result in which any step has a subject
  or body that is empty or whitespace (after HTML is stripped) is left out and reported, never
  exported blank; so are results with no steps.
- Formula injection (OWASP): every cell that starts with ``= + - @``, tab or CR gets a leading
  ``'``, in every column, subjects and bodies included.
- ``max_field_chars``: ``None`` takes the preset's default, ``0`` means no limit. 30,000 is
  Outreach's documented custom-field limit, the smallest one documented for a sequencer
  (HubSpot allows 65,536; Instantly, Smartlead and lemlist publish none), and far above a real
  email. The limit applies to the generated cells (subjects and bodies): identity cells come from
  the CRM, and a cut email address would be worse than a rejected import. A longer cell is cut to
  the limit (after escaping) and reported with the count of cells and rows and the requestIds:
  never silently.
- CSV: RFC 4180 through the ``csv`` module (CRLF, minimal quoting), plain UTF-8 without a BOM:
  the file is for sequencer importers, which read UTF-8; Excel needs a BOM to open it directly
  (use its Data > From Text import instead).
  A file is written to a temporary file of mode 0600 and renamed over ``out`` when complete;
  ``out="-"`` writes to stdout.
- Streaming, flat memory: a first pass over the results counts the steps (N), a second writes
  the rows; no pass holds more than one line. The report keeps exact counts but lists at most
  ``ID_LIST_CAP`` requestIds / line numbers of each kind.
- The results file is only read, so an export can run while a run appends to it: a last line
  without its newline (torn, or being written) is ignored, and the second pass reads only the
  lines the first pass saw. A line that is not a result (bad JSON, missing fields) is skipped
  and its line number reported. Blank lines are ignored.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from octave_bulk.errors import ConfigError, InputError, StateError

__all__ = [
    "ID_LIST_CAP",
    "PRESETS",
    "ExportReport",
    "Preset",
    "escape_formula",
    "export_results",
    "html_to_text",
    "text_to_html",
]

ID_LIST_CAP = 1000
"""At most this many requestIds / line numbers are listed per kind in an ``ExportReport``."""

_SEQUENCER_MAX_CHARS = 30_000
_TRAILING = ("num_steps", "request_id", "completed_at")


@dataclass(frozen=True)
class Preset:
    """A sequencer's column layout.

    Attributes:
        name: the preset's name (``--preset``).
        columns: ``(output column, contact field)`` pairs, in output order.
        max_field_chars: default cell length limit, or None for no limit.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    max_field_chars: int | None


_SNAKE = (
    ("email", "email"),
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("company_name", "companyName"),
    ("title", "jobTitle"),
    ("linkedin_url", "linkedInProfile"),
    ("company_domain", "companyDomain"),
)

PRESETS: dict[str, Preset] = {
    "generic": Preset(
        "generic",
        (
            *_SNAKE,
            ("crm_contact_id", "crmContactId"),
            ("crm_lead_id", "crmLeadId"),
            ("crm_account_id", "crmAccountId"),
            ("lang", "lang"),
        ),
        None,
    ),
    "instantly": Preset("instantly", _SNAKE, _SEQUENCER_MAX_CHARS),
    "smartlead": Preset("smartlead", _SNAKE, _SEQUENCER_MAX_CHARS),
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
    ),
}
"""The presets by name."""


@dataclass
class ExportReport:
    """What an export wrote and what it left out.

    Attributes:
        out: where the CSV went (``"-"`` for stdout).
        preset: the preset used.
        body_format: ``"text"`` or ``"html"``.
        max_field_chars: the cell length limit applied (None: no limit).
        lines: complete lines read from the results file.
        rows: rows written (header excluded).
        steps: N, the number of step column pairs.
        skipped_blank: requestIds of results left out for an empty subject or body (or no step).
        skipped_blank_count: how many results were left out for that reason.
        skipped_bad_lines: 1-based line numbers that are not results.
        skipped_bad_count: how many such lines.
        truncated_cells: subject/body cells cut to ``max_field_chars``.
        truncated_rows: rows with at least one cut cell.
        truncated_ids: requestIds of those rows.
        torn_tail: a last line without its newline was ignored.
    """

    out: str
    preset: str
    body_format: str
    max_field_chars: int | None
    lines: int = 0
    rows: int = 0
    steps: int = 0
    skipped_blank: list[str] = field(default_factory=list)
    skipped_blank_count: int = 0
    skipped_bad_lines: list[int] = field(default_factory=list)
    skipped_bad_count: int = 0
    truncated_cells: int = 0
    truncated_rows: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    torn_tail: bool = False

    def warnings(self) -> list[str]:
        """One sentence per problem, for stderr (empty when there is nothing to say)."""
        notes = []
        if self.skipped_blank_count:
            notes.append(
                f"{self.skipped_blank_count} result(s) left out: a step has an empty subject or "
                f"body{_listing(self.skipped_blank, self.skipped_blank_count, 'requestIds')}"
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


def _note(items: list[Any], item: Any) -> None:
    if len(items) < ID_LIST_CAP:
        items.append(item)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(cell: str) -> str:
    """Prefix ``'`` to a cell that a spreadsheet would run as a formula (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


# --- bodies ------------------------------------------------------------------------------

_HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|a|b|i|u|em|strong|ul|ol|li|h[1-6]|table)\b[^>]*>", re.I
)
_LINK = re.compile(r"<a\b[^>]*?\bhref\s*=\s*(\"[^\"]*\"|'[^']*')[^>]*>(.*?)</a\s*>", re.I | re.S)
_BREAK = re.compile(r"<br\s*/?>", re.I)
_BLOCK_END = re.compile(r"</(?:p|div|h[1-6]|ul|ol|table|tr)\s*>", re.I)
_BLOCK_START = re.compile(r"<(?:p|div|h[1-6]|ul|ol|table|tr)\b[^>]*>", re.I)
_ITEM = re.compile(r"<li\b[^>]*>", re.I)
_ANY_TAG = re.compile(r"<[^>]*>")
_LINE_EDGES = re.compile(r"[ \t]*\n[ \t]*")
_MANY_BREAKS = re.compile(r"\n{3,}")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")


def _is_html(body: str, requested: object) -> bool:
    return requested not in ("text", "markdown") and _HTML_TAG.search(body) is not None


def _link(match: re.Match[str]) -> str:
    """``<a href=URL>label</a>`` -> ``label (URL)``, or the label alone when it shows the URL."""
    url, label = match.group(1)[1:-1].strip(), match.group(2)
    shown = html.unescape(_ANY_TAG.sub("", label)).strip()
    target = html.unescape(url).removeprefix("mailto:")
    if not target or shown == target:
        return label
    return f"{label} ({url})" if shown else url


def html_to_text(body: str) -> str:
    """Plain text of an HTML body: blocks and ``<br>`` become line breaks, entities unescaped."""
    text = _LINK.sub(_link, " ".join(body.split()))  # HTML whitespace collapses
    text = _BREAK.sub("\n", text)
    text = _ITEM.sub("\n- ", text)
    text = _BLOCK_END.sub("\n\n", text)
    text = _BLOCK_START.sub("\n\n", text)
    text = html.unescape(_ANY_TAG.sub("", text))
    text = _LINE_EDGES.sub("\n", text.replace("\xa0", " "))
    return _MANY_BREAKS.sub("\n\n", text).strip()


def text_to_html(body: str) -> str:
    """HTML of a plain-text body: ``<p>`` per blank-line-separated paragraph, ``<br>`` within."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return ""
    paragraphs = _PARAGRAPHS.split(html.escape(text, quote=False))
    return "".join(f"<p>{p.strip().replace(chr(10), '<br>')}</p>" for p in paragraphs)


# --- reading -----------------------------------------------------------------------------


@dataclass
class _Result:
    request_id: str
    contact: dict[str, Any]
    completed_at: str
    steps: list[tuple[str, str, bool]]  # (subject, body, body is HTML)


def _parse(line: bytes) -> _Result | None:
    """A results line, or None when it is not one."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    rid, contact, response = record.get("requestId"), record.get("contact"), record.get("response")
    if not (isinstance(rid, str) and rid and isinstance(contact, dict)):
        return None
    data = response.get("data") if isinstance(response, dict) else None
    emails = data.get("emails") if isinstance(data, dict) else None
    if not isinstance(emails, list) or not all(isinstance(e, dict) for e in emails):
        return None
    requested = contact.get("outputFormat")
    steps = []
    for email in emails:
        subject, body = email.get("subject"), email.get("email")
        subject = subject if isinstance(subject, str) else ""
        body = body if isinstance(body, str) else ""
        steps.append((subject, body, _is_html(body, requested)))
    done = record.get("completedAt")
    return _Result(rid, contact, done if isinstance(done, str) else "", steps)


def _has_text(body: str, is_html: bool) -> bool:
    """Whether a body shows any text (for HTML: once tags are gone and entities decoded)."""
    if is_html:
        body = _ANY_TAG.sub("", body)
        if "&" in body:
            body = html.unescape(body)
    return not body.isspace() and body != ""


def _is_blank(result: _Result) -> bool:
    """No step, or a step whose subject or body is empty or whitespace."""
    if not result.steps:
        return True
    for subject, body, is_html in result.steps:
        if subject.isspace() or not subject or not _has_text(body, is_html):
            return True
    return False


def _lines(path: Path, count: int | None = None) -> Iterator[bytes]:
    """The lines of the results file (the first ``count`` only, when given)."""
    try:
        handle = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read the results file: {exc.strerror}", path=path) from None
    with handle:
        try:
            yield from (handle if count is None else islice(handle, count))
        except OSError as exc:
            raise InputError(f"cannot read the results file: {exc.strerror}", path=path) from None


# --- writing -----------------------------------------------------------------------------


@contextlib.contextmanager
def _open_out(out: Path | str) -> Iterator[IO[str]]:
    """A text stream for the CSV: stdout for ``-``, else a 0600 temp file renamed on success."""
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"{path}: cannot write the export: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StateError(f"{path}: cannot write the export: {exc.strerror}") from None
        raise


def export_results(
    results: Path,
    out: Path | str,
    *,
    preset: str = "generic",
    body_format: Literal["text", "html"] = "text",
    max_field_chars: int | None = None,
) -> ExportReport:
    """Write the successes of a results file as a sequencer CSV (see the module docstring).

    Args:
        results: ``OUT.ndjson`` of a run (only read; a run may still be appending to it).
        out: the CSV to write, or ``"-"`` for stdout.
        preset: a key of ``PRESETS``.
        body_format: ``"text"`` or ``"html"`` for the step bodies.
        max_field_chars: cell length limit; None takes the preset's default, 0 means none.

    Returns:
        The report: rows written, N, results left out, cells cut, lines skipped.

    Raises:
        ConfigError: unknown preset or body format, negative limit, ``out`` is ``results``.
        InputError: the results file is missing or unreadable.
        StateError: the CSV cannot be written.
    """
    layout = PRESETS.get(preset)
    if layout is None:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if body_format not in ("text", "html"):
        raise ConfigError(f"unknown body format {body_format!r}; choose text or html")
    if max_field_chars is not None and max_field_chars < 0:
        raise ConfigError("--max-field-chars must be 0 (no limit) or more")
    limit = layout.max_field_chars if max_field_chars is None else (max_field_chars or None)
    results = Path(results)
    if not results.is_file():
        what = "is not a file" if results.exists() else "not found"
        raise InputError(f"results file {what}", path=results)
    if str(out) != "-" and Path(out).resolve() == results.resolve():
        raise ConfigError(f"{out}: the export would overwrite the results file")
    report = ExportReport(str(out), preset, body_format, limit)
    complete = _first_pass(results, report)
    with _open_out(out) as stream:
        _second_pass(results, complete, stream, layout, report)
    return report


def _first_pass(results: Path, report: ExportReport) -> int:
    """Count complete lines, note bad lines and blank results, and find N."""
    complete = 0
    for line in _lines(results):
        if not line.endswith(b"\n"):
            report.torn_tail = True
            break
        complete += 1
        if not line.strip():
            continue
        result = _parse(line)
        if result is None:
            report.skipped_bad_count += 1
            _note(report.skipped_bad_lines, complete)
        elif _is_blank(result):
            report.skipped_blank_count += 1
            _note(report.skipped_blank, result.request_id)
        else:
            report.steps = max(report.steps, len(result.steps))
    report.lines = complete
    return complete


def _second_pass(
    results: Path, complete: int, stream: IO[str], layout: Preset, report: ExportReport
) -> None:
    """Write the header and one row per exportable result among the first ``complete`` lines."""
    writer = csv.writer(stream)
    steps_header = [
        f"step{n}_{part}" for n in range(1, report.steps + 1) for part in ("subject", "body")
    ]
    writer.writerow([*(column for column, _ in layout.columns), *steps_header, *_TRAILING])
    fields = [name for _, name in layout.columns]
    padding = [""] * (2 * report.steps)
    as_html = report.body_format == "html"
    limit = report.max_field_chars
    for line in _lines(results, complete):
        if not line.strip():
            continue
        result = _parse(line)
        if result is None or _is_blank(result):
            continue
        contact = result.contact
        values = ("" if (value := contact.get(name)) is None else str(value) for name in fields)
        identity = [escape_formula(cell) for cell in values]
        texts: list[str] = []
        for subject, body, is_html in result.steps:
            if as_html:
                body = body.strip() if is_html else text_to_html(body)
            else:
                body = html_to_text(body) if is_html else body.replace("\r\n", "\n").strip()
            texts += (escape_formula(subject.strip()), escape_formula(body))
        if limit is not None:
            cut = sum(1 for text in texts if len(text) > limit)
            if cut:
                texts = [text[:limit] for text in texts]
                report.truncated_cells += cut
                report.truncated_rows += 1
                _note(report.truncated_ids, result.request_id)
        tail = (str(len(result.steps)), result.request_id, result.completed_at)
        writer.writerow([*identity, *texts, *padding[len(texts) :], *map(escape_formula, tail)])
        report.rows += 1
