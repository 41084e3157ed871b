"""Contacts in: read, map, derive, validate. The one entry point the engine uses.

Contract: :class:`ContactReader` (a context manager over :class:`~octave_bulk.input.source.RecordSource`)
yields, lazily and in input order, exactly one :class:`Contact` or :class:`Reject` for every
non-blank input record; ``rows_read`` counts them. Everything that can be known before the
first row (unreadable file, bad header, bad options, an override or a template placeholder that
names no column, no column that feeds ``email`` or ``linkedInProfile``) is raised by
``__enter__`` as :class:`InputError` or :class:`ConfigError`. :func:`validate_input` is the
``validate`` command: the same reading plus the request model and duplicate detection, with
rejects written to a file and zero API calls.

Per row, after mapping: a row needs ``email`` or ``linkedInProfile`` (``missing_identity``);
no value may be longer than :data:`FIELD_MAX_CHARS` (``field_too_long``); line breaks in
names, title and company become spaces, in other identity fields they are ``invalid_field``; the email is trimmed, its domain lowercased (the local part
kept) and checked by ``email_validator`` without DNS (``invalid_email``); a LinkedIn URL becomes
``https://www.linkedin.com/in/<slug>`` (``invalid_linkedin`` when it is not a LinkedIn profile
URL); ``companyDomain`` is the bare host of the website column (a value that is no host name,
like ``N/A``, is ignored) or else the domain of a business email (free-mail domains skipped).
CRM ids are kept exactly as written, only trimmed.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import orjson
from email_validator import EmailNotValidError, validate_email

from octave_bulk.agents.base import RequestSpec
from octave_bulk.agents.fields import MAX_STEPS
from octave_bulk.build import BuiltRequest, RequestBuilder
from octave_bulk.errors import ConfigError, InputError
from octave_bulk.input.mapping import (
    PROFILES,
    ResolvedMapping,
    column_field,
    column_key,
    resolve_mapping,
)
from octave_bulk.input.records import CONTENT_FIELDS, IDENTITY_FIELDS, Contact, Reject
from octave_bulk.input.source import RawRecord, RecordSource

__all__ = [
    "FIELD_MAX_CHARS",
    "FREE_MAIL_DOMAINS",
    "ContactReader",
    "ContentTemplates",
    "ReaderOptions",
    "ValidationReport",
    "business_domain",
    "check_email",
    "normalize_email",
    "normalize_linkedin",
    "validate_input",
    "website_domain",
]

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

FREE_MAIL_DOMAINS = frozenset(
    (
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "ymail.com",
        "rocketmail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "protonmail.ch",
        "pm.me",
        "gmx.com",
        "gmx.net",
        "gmx.de",
        "web.de",
        "mail.com",
        "mail.ru",
        "inbox.ru",
        "list.ru",
        "bk.ru",
        "yandex.com",
        "yandex.ru",
        "zoho.com",
        "zohomail.com",
        "fastmail.com",
        "hey.com",
        "tutanota.com",
        "tuta.io",
        "qq.com",
        "163.com",
        "126.com",
        "sina.com",
        "naver.com",
        "daum.net",
        "seznam.cz",
        "t-online.de",
        "freenet.de",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "laposte.net",
        "sfr.fr",
        "libero.it",
        "virgilio.it",
        "btinternet.com",
        "comcast.net",
        "verizon.net",
        "att.net",
        "sbcglobal.net",
        "cox.net",
        "earthlink.net",
        "rediffmail.com",
    )
)
"""Mailbox providers whose domain says nothing about the contact's company."""
_FREE_MAIL_FAMILIES = frozenset({"gmx", "yahoo", "hotmail", "outlook", "live", "yandex", "aol"})
_SECOND_LEVEL = frozenset({"co", "com", "net", "org"})

_STEP_KEYS = ("all", *(str(n) for n in range(1, MAX_STEPS + 1)))
_ONE_LINE = frozenset(IDENTITY_FIELDS)
_PROSE = frozenset({"firstName", "lastName", "jobTitle", "companyName"})  # line breaks -> space
_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_PLAIN_EMAIL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@([a-z0-9-]+(?:\.[a-z0-9-]+)+)\Z")
_DOMAIN_CACHE_MAX = 100_000
_domain_verdicts: dict[str, bool] = {}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
_URL_END = re.compile(r"[/?#\\\s]")
_URL = re.compile(r"(?i)^(?:https?://)?([^/?#\s]+)([^?#]*)")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class ReaderOptions:
    """How to read, map and enrich one input (the ``run``/``validate`` input options).

    Attributes:
        format: ``auto`` (by extension, else by content), ``csv`` or ``ndjson``.
        encoding: a codec name that overrides detection.
        delimiter: a CSV delimiter that overrides sniffing (``tab`` is accepted).
        skip_lines: lines to skip before the header; None detects a preamble.
        profile: one of ``profiles.PROFILES``.
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


# -- derivations ---------------------------------------------------------------------------


def normalize_email(value: str) -> str:
    """Trimmed, with the domain lowercased and the local part kept as written."""
    local, at, domain = value.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else value.strip()


def _domain_is_valid(domain: str) -> bool:
    verdict = _domain_verdicts.get(domain)
    if verdict is None:
        try:
            validate_email("x@" + domain, check_deliverability=False)
            verdict = True
        except EmailNotValidError:
            verdict = False
        if len(_domain_verdicts) >= _DOMAIN_CACHE_MAX:
            _domain_verdicts.clear()
        _domain_verdicts[domain] = verdict
    return verdict


def check_email(email: str) -> str | None:
    """Why ``email`` (already normalized) is not a valid address, or None when it is.

    ``email_validator`` decides, without DNS. Plain ASCII addresses (dot-atom local part,
    lowercase domain without IDNA labels) take a fast path that asks it once per domain: the
    local part then passes its rules by construction.
    """
    match = _PLAIN_EMAIL.match(email) if len(email) <= 254 else None
    if match and "xn--" not in match[1] and _domain_is_valid(match[1]):
        return None
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def website_domain(value: str) -> str | None:
    """The bare host of a website value (scheme, ``www.``, port, path stripped), or None."""
    host = _SCHEME.sub("", value.strip().lower()).lstrip("/")
    host = _URL_END.split(host, maxsplit=1)[0].rpartition("@")[2].partition(":")[0]
    host = host.rstrip(".").removeprefix("www.")
    labels = host.split(".")
    if len(labels) < 2 or not all(label.replace("-", "").isalnum() for label in labels):
        return None
    return host


def business_domain(email: str) -> str | None:
    """The domain of ``email`` unless it is a free-mail provider's (then None)."""
    domain = email.rpartition("@")[2].lower()
    if domain in FREE_MAIL_DOMAINS:
        return None
    family, _, rest = domain.partition(".")
    parts = rest.split(".")
    if family in _FREE_MAIL_FAMILIES and (
        len(parts) == 1 or (len(parts) == 2 and parts[0] in _SECOND_LEVEL)
    ):
        return None
    return website_domain(domain)


def normalize_linkedin(value: str) -> str:
    """``https://www.linkedin.com/in/<slug>`` (or ``/pub/...``) from any form of profile URL.

    Raises:
        ValueError: the value is not a LinkedIn profile URL (the message says why).
    """
    match = _URL.match(value.strip())
    host = match[1].lower().rpartition("@")[2].partition(":")[0] if match else ""
    if not match or not (host == "linkedin.com" or host.endswith(".linkedin.com")):
        raise ValueError(f"{value.strip()[:100]!r} is not a LinkedIn URL")
    parts = [p for p in match[2].split("/") if p]
    kind = parts[0].lower() if parts else ""
    if kind == "in" and len(parts) >= 2:
        return "https://www.linkedin.com/in/" + parts[1]
    if kind == "pub" and len(parts) >= 2:
        return "https://www.linkedin.com/pub/" + "/".join(parts[1:])
    if kind in ("sales", "talent", "recruiter"):
        raise ValueError(
            "a Sales Navigator or Recruiter URL; use the public profile (linkedin.com/in/…)"
        )
    raise ValueError(f"{value.strip()[:100]!r} is not a LinkedIn profile URL (linkedin.com/in/…)")


# -- templates -----------------------------------------------------------------------------


class ContentTemplates:
    """Per-row context/instructions from templates whose ``{Column}`` placeholders are filled.

    A template under step key ``all`` adds to ``context`` (or ``instructions``), under ``"2"``
    to ``context_2``; the row's own column value comes first, joined by a blank line.
    ``{{`` and ``}}`` are literal braces. Placeholders match columns ignoring case and spaces.

    Args:
        context: step key -> template for runtimeContext.
        instructions: step key -> template for runtimeInstructions.

    Raises:
        ConfigError: a step key other than ``all`` / ``1``...``7``, or a malformed template.
    """

    def __init__(
        self,
        context: Mapping[str, str] | None = None,
        instructions: Mapping[str, str] | None = None,
    ) -> None:
        self._templates: list[tuple[str, str, list[tuple[bool, str]]]] = []
        for prefix, templates in (("context", context), ("instructions", instructions)):
            for key, template in (templates or {}).items():
                step = str(key).strip().lower()
                where = f"{prefix} template {key!r}"
                if step not in _STEP_KEYS:
                    msg = f"{where}: the key must be 'all' or a step number 1-{MAX_STEPS}"
                    raise ConfigError(msg)
                target = prefix if step == "all" else f"{prefix}_{step}"
                self._templates.append((where, target, _parse_template(template, where)))
        self._compiled: list[tuple[str, list[tuple[bool, str]]]] = []

    def __bool__(self) -> bool:
        return bool(self._templates)

    def check(self, headers: Sequence[str]) -> None:
        """Bind the placeholders to ``headers``; call before reading any row.

        Raises:
            ConfigError: a placeholder names no column (the message names it and the template).
        """
        columns = {column_key(h): h for h in reversed(headers)}
        self._compiled = []
        for where, target, parts in self._templates:
            bound = []
            for is_column, text in parts:
                if is_column:
                    if column_key(text) not in columns:
                        shown = ", ".join(repr(h) for h in headers[:30])
                        msg = f"{where}: placeholder {{{text}}} names no column in the input ({shown})"
                        raise ConfigError(msg)
                    text = columns[column_key(text)]
                bound.append((is_column, text))
            self._compiled.append((target, bound))

    def fill(self, row: Mapping[str, str]) -> dict[str, str]:
        """Content field -> filled text, for one row (templates that fill to blank left out)."""
        out: dict[str, str] = {}
        for target, parts in self._compiled:
            text = "".join(row.get(t, "").strip() if is_col else t for is_col, t in parts)
            if text.strip():
                out[target] = f"{out[target]}\n\n{text}" if target in out else text
        return out


def _parse_template(template: str, where: str) -> list[tuple[bool, str]]:
    """``(is_column, text)`` parts of a template."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        token = match[0]
        if token in ("{", "}"):
            raise ConfigError(
                f"{where}: unmatched {token!r} (write {token * 2} for a literal brace)"
            )
        parts.append((False, template[pos : match.start()]))
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
        elif not match[1].strip():
            raise ConfigError(
                f"{where}: an empty placeholder {{}}; name a column inside the braces"
            )
        else:
            parts.append((True, match[1].strip()))
        pos = match.end()
    parts.append((False, template[pos:]))
    return [p for p in parts if p[0] or p[1]]


# -- the reader ----------------------------------------------------------------------------


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

    def __enter__(self) -> ContactReader:
        source = self._source.__enter__()
        try:
            headers = source.headers
            self.mapping = resolve_mapping(headers, self._options.profile, self._options.overrides)
            if not self.mapping.has_identity:
                shown = ", ".join(repr(h) for h in headers[:30])
                msg = (
                    f"no column maps to email or linkedInProfile (profile {self.mapping.profile}; "
                    f"columns: {shown}); name one with --map 'Column=email'"
                )
                raise InputError(msg, path=source.label, line=source.header_line)
            self._templates.check(headers)
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

    def _learn(self, row: Mapping[str, str]) -> None:
        """Map NDJSON keys first seen after the sample, by the same profile."""
        claimed = {f for c, f in self._pairs if c in self.mapping.overridden}
        for key in row:
            if key not in self._known:
                self._known.add(key)
                hit = column_field(self.mapping.profile, key)
                if hit is not None and hit[0] not in claimed:
                    self._pairs.append((key, hit[0]))

    def _contact(self, record: RawRecord) -> Contact | Reject:
        row = record.row
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
        return self._validate(record.line, fields, row)

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
        if not email and not profile:
            return reject("missing_identity", None, "neither an email nor a LinkedIn profile")
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
            if problem:
                return reject("invalid_email", "email", f"{email[:100]!r}: {problem}")
            if not domain:
                domain = business_domain(email)
                if domain:
                    fields["companyDomain"] = domain
        if profile:
            try:
                fields["linkedInProfile"] = normalize_linkedin(profile)
            except ValueError as exc:
                return reject("invalid_linkedin", "linkedInProfile", str(exc))
        return Contact(line, fields)


# -- validate ------------------------------------------------------------------------------


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
        }


def _open_private(path: Path) -> BinaryIO:
    """``path`` truncated for writing, mode 0600 even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:  # pragma: no cover - a filesystem without modes
        pass
    return os.fdopen(fd, "wb", buffering=1 << 16)


def validate_input(
    path: str | Path, options: ReaderOptions, spec: RequestSpec, rejects_path: Path | None
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
    builder = RequestBuilder(spec)
    valid = 0
    with ContactReader(path, options) as reader:
        out = _open_private(rejects_path) if rejects_path is not None else None
        try:
            for item in reader:
                if isinstance(item, Contact):
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
    )
