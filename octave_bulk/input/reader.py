"""Contacts in: read, map, derive, validate. The one entry point the engine uses.

Contract: :class:`ContactReader` (a context manager over :class:`~octave_bulk.input.source.RecordSource`)
yields, lazily and in input order, exactly one :class:`Contact` or :class:`Reject` for every
non-blank input record; ``rows_read`` counts them. Everything that can be known before the
first row (unreadable file, bad header, bad options, an override or a template placeholder that
names no column, no column that feeds ``email`` or ``linkedInProfile``) is raised by
``__enter__`` as :class:`InputError` or :class:`ConfigError`.

A repeated column name's copies (``<name>_2``...: :mod:`octave_bulk.input.sniff`) feed what the
first column feeds, when it is empty; copies that hold different values for an identity field
(``mapping.MUST_AGREE``) stop
``__enter__`` (InputError) when seen in the source's sample rows, and make a later row an
``ambiguous_column`` reject.

Per row, after mapping: a row needs ``email`` or ``linkedInProfile`` (``missing_identity``);
no value may be longer than :data:`FIELD_MAX_CHARS` (``field_too_long``); line breaks in
names, title and company become spaces, in other identity fields they are ``invalid_field``; the
email is normalised and checked (``invalid_email``), a LinkedIn URL normalised
(``invalid_linkedin``) and ``companyDomain`` derived from the website column or a business email,
by the rules of :mod:`octave_bulk.input.normalize`. An invalid email beside a valid LinkedIn URL
is left out (note ``email_dropped``: the URL identifies the person); a ``lang`` that names a
language becomes its ISO 639-1 code, one that names none is left out (note ``lang_dropped``).
Notes ride on the :class:`Contact`. CRM ids are kept exactly as written, only trimmed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import orjson

from octave_bulk.errors import ConfigError, InputError
from octave_bulk.identity import read_person_hash
from octave_bulk.input.chain import (
    PERSON_KEY,
    RESPONSE_KEY,
    ContextSources,
    ResultFilter,
    context_from,
    latest_lines,
)
from octave_bulk.input.mapping import (
    PROFILES,
    ResolvedMapping,
    column_field,
    resolve_mapping,
)
from octave_bulk.input.normalize import (
    business_domain,
    check_email,
    language_code,
    normalize_email,
    normalize_linkedin,
    website_domain,
)
from octave_bulk.input.records import CONTENT_FIELDS, IDENTITY_FIELDS, Contact, Reject
from octave_bulk.input.source import RawRecord, RecordSource
from octave_bulk.input.templates import ContentTemplates
from octave_bulk.state.idset import IdSet

__all__ = ["FIELD_MAX_CHARS", "ContactReader", "ReaderOptions"]

FIELD_MAX_CHARS: dict[str, int] = {
    "email": 320,  # RFC 3696; email_validator then holds addresses to 254 octets
    "firstName": 255,
    "lastName": 255,
    "jobTitle": 255,
    "companyName": 255,
    "companyDomain": 253,  # the DNS limit
    "linkedInProfile": 500,
    "crmContactId": 255,
    "crmLeadId": 255,
    "crmAccountId": 255,
    "lang": 35,  # a BCP 47 tag
    "requestId": 255,
    **dict.fromkeys(CONTENT_FIELDS, 100_000),
}
"""Longest value accepted per canonical field, in characters."""

_ONE_LINE = frozenset(IDENTITY_FIELDS)
_PROSE = frozenset({"firstName", "lastName", "jobTitle", "companyName"})  # line breaks -> space
_BREAKS = re.compile(r"\s*[\r\n]+\s*")


@dataclass(frozen=True)
class ReaderOptions:
    """How to read, map and enrich one input (the ``run``/``validate`` input options).

    Attributes:
        format: ``auto`` (by extension, else by content), ``csv`` or ``ndjson``.
        encoding: a codec name that overrides detection.
        delimiter: a CSV delimiter that overrides sniffing (``tab`` is accepted).
        skip_lines: lines to skip before the header; None detects a preamble.
        profile: one of ``mapping.PROFILES``.
        overrides: ``"Source Column=field"`` items (``--map``).
        max_field_bytes: the cap on one cell; a bigger cell rejects its row.
        context_templates: step key (``all``, ``1``...) -> template with ``{Column}`` placeholders.
        instruction_templates: the same for runtime instructions.
    """

    format: Literal["auto", "csv", "ndjson"] = "auto"
    encoding: str | None = None
    delimiter: str | None = None
    skip_lines: int | None = None
    profile: str = "auto"
    overrides: tuple[str, ...] = ()
    max_field_bytes: int = 64 * 1024
    context_templates: dict[str, str] = field(default_factory=dict)
    instruction_templates: dict[str, str] = field(default_factory=dict)
    where: str | None = None
    """Chaining: keep only the earlier results this expression holds for (``--where``)."""
    context_from: tuple[str, ...] = ()
    """Chaining: paths of the earlier response carried into the context (``--context-from``)."""
    subject: Literal["person", "company"] = "person"
    """What a row must name: a person (email or LinkedIn profile) or a company (domain, name
    or account id) for the company agents."""


_COMPANY_IDENTITY = ("companyDomain", "companyName", "crmAccountId")


class ContactReader:
    """Reads one input as :class:`Contact` and :class:`Reject` records (see the module docstring).

    Args:
        path: the input file, or ``"-"`` for standard input.
        options: how to read and map it.

    Attributes (after ``__enter__``):
        mapping: the resolved column mapping (printable with ``mapping.render()``).
        label, format, encoding, encoding_note, delimiter, header_line: as read by the source.
        rows_read: the records seen so far (contacts plus rejects).

    Raises:
        ConfigError: bad options, overrides or templates (at construction or ``__enter__``).
        InputError: the input cannot be opened or its header is unusable (at ``__enter__``).
    """

    def __init__(self, path: str | Path, options: ReaderOptions | None = None) -> None:
        opts = options or ReaderOptions()
        if opts.profile not in PROFILES:
            raise ConfigError(f"unknown profile {opts.profile!r}: use one of {', '.join(PROFILES)}")
        self._options = opts
        self._filter = ResultFilter(opts.where) if opts.where else None
        self._sources: ContextSources | None = None  # read at __enter__
        self._latest: IdSet | None = None  # a results input: each person's latest line
        self._path = Path(path) if str(path) != "-" else None
        self._templates = ContentTemplates(opts.context_templates, opts.instruction_templates)
        self._source = RecordSource(
            path,
            format=opts.format,
            encoding=opts.encoding,
            delimiter=opts.delimiter,
            skip_lines=opts.skip_lines,
            max_field_bytes=opts.max_field_bytes,
        )
        self.mapping = ResolvedMapping(
            profile=opts.profile, detected=False, columns=(), unmapped=()
        )
        self.label = self._source.label
        self.format: str = "csv"
        self.encoding: str = "utf-8"
        self.encoding_note: str | None = None
        self.delimiter: str | None = None
        self.header_line: int | None = None
        self.rows_read = 0
        self._pairs: list[tuple[str, str]] = []
        self._known: set[str] = set()
        self._groups: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __enter__(self) -> ContactReader:
        source = self._source.__enter__()
        try:
            headers = source.headers
            self.mapping = resolve_mapping(
                headers,
                self._options.profile,
                self._options.overrides,
                copies=source.copies,
                sample=source.sample,
            )
            if self._options.subject == "company":
                self.mapping = self.mapping.for_companies()
                if not self.mapping.has_company_identity:
                    shown = ", ".join(repr(h) for h in headers[:30])
                    msg = (
                        "no column maps to companyDomain, companyName or crmAccountId (profile "
                        f"{self.mapping.profile}; columns: {shown}); name one with "
                        "--map 'Column=companyDomain'"
                    )
                    raise InputError(msg, path=source.label, line=source.header_line)
            elif not self.mapping.has_identity:
                shown = ", ".join(repr(h) for h in headers[:30])
                msg = (
                    f"no column maps to email or linkedInProfile (profile {self.mapping.profile}; "
                    f"columns: {shown}); name one with --map 'Column=email'"
                )
                raise InputError(msg, path=source.label, line=source.header_line)
            self._groups = self.mapping.copy_groups()
            self._check_copies(source.sample, source.label, source.header_line)
            self._templates.check(headers)
            self._sources = ContextSources(self._options.context_from) or None
            if RESPONSE_KEY in headers and self._path is not None:  # an earlier run's results
                names = self._filter.names if self._filter is not None else frozenset()
                self._latest, present = latest_lines(self._path, names)
                if self._filter is not None:
                    self._filter.check_names(present, _result_fields(source.sample), source.label)
            own = [p for p in self._options.context_from if ":" not in p]
            if (self._options.where or own) and RESPONSE_KEY not in headers:
                msg = (
                    "--where and --context-from PATH read an earlier run's results: give its "
                    "OUT.ndjson as the input (or --context-from FILE.ndjson:PATH)"
                )
                raise InputError(msg, path=source.label)
        except BaseException:
            source.close()
            raise
        self.format, self.encoding, self.encoding_note = (
            source.format,
            source.encoding,
            source.encoding_note,
        )
        self.delimiter, self.header_line = source.delimiter, source.header_line
        self._pairs = list(self.mapping.columns)
        self._known = set(headers)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._source.close()

    @property
    def where_warning(self) -> str | None:
        """Said when ``--where`` left out every row whose result had its fields."""
        return self._filter.all_left_out() if self._filter is not None else None

    @property
    def footer_rows(self) -> int:
        """A report's footer lines dropped so far (``Grand Totals (...)``, ``Copyright``...)."""
        return self._source.footer.rows

    def estimated_rows(self) -> int | None:
        """Input records, roughly (lines less the header), from the head read at open: for
        the progress bar's total when nothing counted them; None for stdin or a pipe."""
        lines = self._source.estimated_lines()
        return None if lines is None else max(0, lines - 1)

    @property
    def lines_read(self) -> int:
        """Physical input lines consumed so far (the line the last record ended on)."""
        return self._source.lines_read

    def skip_to(self, line: int, rows: int) -> bool:
        """Skip the ``rows`` records that end by ``line`` without reading them (a resume's
        settled prefix, CSV only); False if the input ended first."""
        if self.format != "csv":
            raise ValueError("only CSV input can be skipped unparsed")
        self.rows_read += rows
        return self._source.skip_to(line)

    def __iter__(self) -> Iterator[Contact | Reject]:
        ndjson = self.format == "ndjson"
        for item in self._source:
            self.rows_read += 1
            if isinstance(item, Reject):
                yield item
                continue
            if ndjson and not self._known.issuperset(item.row):
                self._learn(item.row)
            yield self._contact(item)

    def _disagree(self, row: Mapping[str, str]) -> tuple[str, tuple[str, ...]] | None:
        """The first repeated-name group whose filled copies hold different values on ``row``."""
        for target, columns in self._groups:
            values = {v.strip().casefold() for c in columns if (v := row.get(c, "")).strip()}
            if len(values) > 1:
                return target, columns
        return None

    def _resolution(self, target: str, columns: tuple[str, ...]) -> str:
        """Why a repeated name is ambiguous, and the ``--map`` items that resolve it."""
        named = " and ".join(self.mapping.where(c) for c in columns)
        rest = " ".join(f"--map '{c}='" for c in columns[1:])
        return (
            f"{named} are duplicate column names feeding {target} with different values; "
            f"keep the first with {rest}, or pick one with --map '{columns[-1]}={target}'"
        )

    def _check_copies(self, sample: list[dict[str, str]], label: str, line: int | None) -> None:
        """Refuse the input when a repeated name's copies disagree in its first rows."""
        for row in sample:
            found = self._disagree(row)
            if found is not None:
                msg = self._resolution(*found) + " (seen in the first rows)"
                raise InputError(msg, path=label, line=line)

    def _learn(self, row: Mapping[str, str]) -> None:
        """Map NDJSON keys first seen after the sample, by the same profile."""
        claimed = {f for c, f in self._pairs if c in self.mapping.overridden}
        for key in row:
            if key not in self._known:
                self._known.add(key)
                hit = column_field(self.mapping.profile, key, (), self.mapping.kind)
                if hit is not None and hit[0] not in claimed:
                    self._pairs.append((key, hit[0]))

    def _contact(self, record: RawRecord) -> Contact | Reject:
        row = record.row
        response = None
        if RESPONSE_KEY in row:  # an earlier run's result (chaining)
            person = read_person_hash(row.get(PERSON_KEY))
            if self._latest is not None and person is not None:
                latest = self._latest.get(person)
                if latest is not None and latest != record.line:
                    message = f"a later result of this person is on line {latest}"
                    return Reject(record.line, "superseded", None, message, {})
            response = orjson.loads(row[RESPONSE_KEY])
            verdict = self._filter.verdict(response, row) if self._filter is not None else None
            if verdict is not None:  # a row left out is kept in its record
                kept = row if verdict[0] == "filtered_out" else {}
                return Reject(record.line, verdict[0], None, verdict[1], kept)
        if self._groups and (found := self._disagree(row)) is not None:
            return Reject(record.line, "ambiguous_column", found[0], self._resolution(*found), row)
        fields: dict[str, str] = {}
        for column, name in self._pairs:
            if name not in fields:
                value = row.get(column)
                if value and (value := value.strip()):
                    fields[name] = value
        if self._templates:
            for target, text in self._templates.fill(row).items():
                have = fields.get(target)
                fields[target] = f"{have}\n\n{text}" if have else text
        if response is not None and self._options.context_from:
            carried = context_from(self._options.context_from, response)
            if carried:
                have = fields.get("context")
                fields["context"] = f"{have}\n\n{carried}" if have else carried
        contact = self._validate(record.line, fields, row)
        if self._sources is not None and isinstance(contact, Contact):
            joined = self._sources.context(contact.fields)  # after the domain is normalised
            if joined:
                have = contact.fields.get("context")
                contact.fields["context"] = f"{have}\n\n{joined}" if have else joined
        return contact

    def _column(self, name: str, row: Mapping[str, str]) -> str:
        """The source column that supplied ``name`` (for messages)."""
        for column, target in self._pairs:
            if target == name and row.get(column, "").strip():
                return column
        return "template" if name in CONTENT_FIELDS else name

    def _validate(self, line: int, fields: dict[str, str], row: dict[str, str]) -> Contact | Reject:
        def reject(reason: str, name: str | None, problem: str) -> Reject:
            where = f" (column {self._column(name, row)!r})" if name else ""
            return Reject(line, reason, name, f"{name or 'row'}{where}: {problem}", row)

        email, profile = fields.get("email"), fields.get("linkedInProfile")
        if self._options.subject == "company":
            if not any(fields.get(name) for name in _COMPANY_IDENTITY):
                return reject(
                    "missing_identity", None, "no company domain, company name or account id"
                )
        elif not email and not profile:
            return reject("missing_identity", None, "neither an email nor a LinkedIn profile")
        notes: list[tuple[str, str]] = []
        lang = fields.get("lang")
        if lang and (code := language_code(lang[:100])) != lang:
            if code is None or len(code) > FIELD_MAX_CHARS["lang"]:
                del fields["lang"]
                column = self._column("lang", row)
                notes.append(("lang_dropped", f"lang (column {column!r}): {lang[:40]!r} left out"))
            else:
                fields["lang"] = code
        website = fields.pop("companyDomain", None)
        domain = website_domain(website) if website else None
        if domain:
            fields["companyDomain"] = domain
        for name, value in fields.items():
            if len(value) > FIELD_MAX_CHARS[name]:
                limit = FIELD_MAX_CHARS[name]
                return reject(
                    "field_too_long", name, f"{len(value):,} characters; at most {limit:,}"
                )
            if name in _ONE_LINE and ("\n" in value or "\r" in value):
                if name not in _PROSE:
                    return reject("invalid_field", name, "contains a line break")
                fields[name] = _BREAKS.sub(" ", value)
        if email:
            email = fields["email"] = normalize_email(email)
            problem = check_email(email)
            if problem and profile and _is_linkedin(profile):
                column = self._column("email", row)
                message = f"email (column {column!r}): {email[:100]!r} left out ({problem}); "
                notes.append(("email_dropped", message + "the LinkedIn URL identifies the person"))
                del fields["email"]
            elif problem:
                return reject("invalid_email", "email", f"{email[:100]!r}: {problem}")
            elif not domain:
                domain = business_domain(email)
                if domain:
                    fields["companyDomain"] = domain
        if profile:
            try:
                fields["linkedInProfile"] = normalize_linkedin(profile)
            except ValueError as exc:
                return reject("invalid_linkedin", "linkedInProfile", str(exc))
        return Contact(line, fields, tuple(notes))


def _is_linkedin(value: str) -> bool:
    """Whether ``value`` is a LinkedIn profile URL (:func:`normalize_linkedin` takes it)."""
    try:
        normalize_linkedin(value)
    except ValueError:
        return False
    return True


def _result_fields(sample: list[dict[str, str]]) -> set[str]:
    """The fields of the sample's earlier results (the response's keys and its ``data``'s),
    for a ``--where``'s did-you-mean."""
    fields: set[str] = set()
    for row in sample:
        try:
            response = orjson.loads(row.get(RESPONSE_KEY) or "{}")
        except orjson.JSONDecodeError:
            continue
        if isinstance(response, dict):
            data = response.get("data")
            fields.update(response)
            fields.update(data if isinstance(data, dict) else ())
    return fields
