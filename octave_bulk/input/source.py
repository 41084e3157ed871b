"""The lazy input reader: CSV or NDJSON, from a file or ``-`` (stdin), one record at a time.

Contract:

* :class:`RecordSource` is a context manager. ``__enter__`` opens the input, decides the
  encoding, the format and the CSV delimiter, and reads the header; every whole-file problem
  (missing file, binary file, no header, duplicate column names) raises :class:`InputError`
  there, before any record is yielded. Bad options raise :class:`ConfigError`.
* Iterating yields, for every non-blank record, exactly one :class:`RawRecord` (header ->
  cell text) or one :class:`Reject` (``malformed_record``, ``field_too_large``,
  ``ragged_row``), each with the 1-based line on which the record *starts*. Blank records
  (no cell with any non-space text) are skipped and not counted.
* Memory is flat: lines are decoded incrementally and only the current record is held.

Encoding: an explicit ``encoding`` wins. Otherwise a byte-order mark decides (UTF-8 ->
``utf-8-sig``, UTF-16/32); otherwise the first :data:`SAMPLE_BYTES` are checked: valid UTF-8 ->
``utf-8``, else ``cp1252`` (reported in ``encoding_note``). Bytes that do not decode later in
the file never stop the read and never vanish: the record holding them becomes a
``malformed_record`` reject that shows them as ``\\xNN`` escapes.

CSV: the delimiter is sniffed among ``, ; TAB |`` from the first lines (or given; an Excel
``sep=;`` first line is honoured). Quoted cells may span lines. A preamble before the header
(LinkedIn's ``Notes:`` paragraph) is skipped automatically: the header is the first record
with at least two filled cells and at least half as many cells as most records; ``skip_lines``
skips exactly N lines instead. A cell over ``max_field_bytes`` (UTF-8 bytes) rejects its record
and the next record is still read. A quoted cell that never closes rejects the record on which
it opens, and the lines after it are read again as records (they hold no closing quote, so
they were independent rows). More cells than headers is a ``ragged_row`` (extra *empty*
cells, as Excel pads rows, are dropped); fewer cells leave the missing values out.

NDJSON: every non-blank line is one JSON object; ``null`` is an empty value, other non-string
values become their JSON text (``true``, ``42``, ``{"a":1}``).
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TextIO

import orjson

from octave_bulk.errors import ConfigError, InputError
from octave_bulk.input.mapping import column_key
from octave_bulk.input.records import Reject

__all__ = [
    "CSV_EXTENSIONS",
    "DELIMITERS",
    "MAX_LINE_CHARS",
    "NDJSON_EXTENSIONS",
    "SAMPLE_BYTES",
    "RawRecord",
    "RecordSource",
]

SAMPLE_BYTES = 1 << 20
"""The encoding is decided from this many bytes at the start of the input."""
DELIMITERS = ",;\t|"
"""The only delimiters the sniffer considers, in order of preference on a tie."""
MAX_LINE_CHARS = 16 << 20
"""A physical line longer than this stops the read (InputError): no real export has one."""
CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".tab", ".txt"})
"""Extensions read as CSV by ``format="auto"``."""
NDJSON_EXTENSIONS = frozenset({".ndjson", ".jsonl", ".json"})
"""Extensions read as NDJSON by ``format="auto"`` (other names: sniffed from the content)."""

_SNIFF_CHARS = 64 * 1024  # the dialect and header are decided from this much text...
_SNIFF_LINES = 200  # ...or this many lines, whichever comes first
_LOOKAHEAD_CHARS = 1 << 20  # how far an over-long quoted cell is followed to find its end
_SURROGATES = re.compile("[\udc80-\udcff]")
_MAGIC = {
    b"PK\x03\x04": "a zip archive or an Excel workbook (.xlsx); export it as CSV",
    b"\xd0\xcf\x11\xe0": "an Excel 97-2003 workbook (.xls); export it as CSV",
    b"\x1f\x8b": "gzip-compressed; decompress it first",
}
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One parsed input record, before mapping.

    Attributes:
        line: 1-based line where the record starts.
        row: header (as written in the file, trimmed) -> cell text, untrimmed.
    """

    line: int
    row: dict[str, str]


class _Overflow(Exception):
    """The current CSV record grew beyond any sane size (a quote that never closes)."""


def _printable(text: str) -> str:
    """Text safe for JSON output: undecodable bytes shown as ``\\xNN``."""
    if text.isascii() or not _SURROGATES.search(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _excerpt(lines: list[str], limit: int = 2000) -> str:
    return _printable("".join(lines)[:limit])


def _ends_quoted(line: str, delimiter: str, quoted: bool) -> bool:
    """Whether ``csv`` (non-strict, ``"`` quotes) is inside a quoted cell after ``line``."""
    i, n, field_start = 0, len(line), not quoted
    while i < n:
        if quoted:
            j = line.find('"', i)
            if j < 0:
                return True
            if j + 1 < n and line[j + 1] == '"':
                i = j + 2
                continue
            quoted, field_start, i = False, False, j + 1
        elif field_start and line[i] == '"':
            quoted, i = True, i + 1
        else:
            j = line.find(delimiter, i)
            if j < 0:
                return False
            field_start, i = True, j + 1
    return quoted


class _Prefixed(io.RawIOBase):
    """A binary stream that replays ``prefix`` (the sniffed bytes), then reads on."""

    def __init__(self, prefix: bytes, rest: BinaryIO, owned: bool) -> None:
        super().__init__()
        self._prefix, self._pos, self._rest, self._owned = prefix, 0, rest, owned

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._owned and not self.closed:
            self._rest.close()
        super().close()

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._pos < len(self._prefix):
            size = min(len(buffer), len(self._prefix) - self._pos)
            buffer[:size] = self._prefix[self._pos : self._pos + size]
            self._pos += size
            return size
        return self._rest.readinto(buffer)  # type: ignore[attr-defined, no-any-return]


class _Lines:
    """Physical lines, numbered, with push-back and per-record bookkeeping for CSV."""

    def __init__(self, stream: TextIO, label: str, record_limit: int) -> None:
        self._readline, self._label, self._record_limit = stream.readline, label, record_limit
        self.pending: collections.deque[str] = collections.deque()
        self.lineno = 0
        self.buf: list[str] = []
        self.size = 0
        self.nul = self.undecodable = self.hit_eof = False

    def raw(self) -> str | None:
        """The next line, or None at the end; counts it."""
        if self.pending:
            line = self.pending.popleft()
        else:
            try:
                line = self._readline(MAX_LINE_CHARS)
            except UnicodeError as exc:  # bytes the chosen codec cannot take at all (UTF-16)
                msg = f"cannot decode the input ({exc}); try --encoding"
                raise InputError(msg, path=self._label, line=self.lineno + 1) from None
            if not line:
                return None
            if len(line) >= MAX_LINE_CHARS and line[-1] not in "\r\n":
                msg = f"line longer than {MAX_LINE_CHARS:,} characters: this is not a CSV or NDJSON file"
                raise InputError(msg, path=self._label, line=self.lineno + 1)
        self.lineno += 1
        return line

    def begin(self) -> int:
        """Start a new record; returns the line it starts on."""
        self.buf.clear()
        self.size = 0
        self.nul = self.undecodable = self.hit_eof = False
        return self.lineno + 1

    def rewind(self, lineno: int, lines: list[str]) -> None:
        """Read ``lines`` again, as lines ``lineno + 1`` onwards."""
        self.pending.extendleft(reversed(lines))
        self.lineno = lineno

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.raw()
        if line is None:
            self.hit_eof = True
            raise StopIteration
        self.buf.append(line)
        self.size += len(line)
        if self.size > self._record_limit:
            raise _Overflow
        if "\x00" in line:
            self.nul = True
        if not line.isascii() and _SURROGATES.search(line):
            self.undecodable = True
        return line


class RecordSource:
    """Reads one CSV or NDJSON input lazily; see the module docstring for the contract.

    Args:
        path: the input file, or ``"-"`` for standard input (read as bytes).
        format: ``"csv"``, ``"ndjson"`` or ``"auto"`` (by extension, else by content).
        encoding: a codec name that overrides detection.
        delimiter: one character (or ``tab``/``\\t``) that overrides sniffing.
        skip_lines: skip exactly this many lines before the header (no preamble detection).
        max_field_bytes: the cap on one cell, in UTF-8 bytes.

    Attributes (set by ``__enter__``):
        label: the path as shown in messages (``<stdin>`` for ``-``).
        format: ``"csv"`` or ``"ndjson"``.
        encoding: the codec used; ``encoding_note`` says why when it is a fallback.
        delimiter: the CSV delimiter (None for NDJSON).
        header_line: the line of the CSV header (None for NDJSON).
        headers: the column names (for NDJSON, the keys seen in the first lines).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: Literal["auto", "csv", "ndjson"] = "auto",
        encoding: str | None = None,
        delimiter: str | None = None,
        skip_lines: int | None = None,
        max_field_bytes: int = 64 * 1024,
    ) -> None:
        if format not in ("auto", "csv", "ndjson"):
            raise ConfigError(f"unknown input format {format!r}: use auto, csv or ndjson")
        if skip_lines is not None and skip_lines < 0:
            raise ConfigError(f"skip_lines must be 0 or more, not {skip_lines}")
        if max_field_bytes < 1:
            raise ConfigError(f"max_field_bytes must be positive, not {max_field_bytes}")
        if encoding is not None:
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ConfigError(f"unknown encoding {encoding!r}") from None
        if delimiter is not None:
            delimiter = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
            if len(delimiter) != 1 or delimiter in '"\r\n':
                raise ConfigError(f"the delimiter must be one character, not {delimiter!r}")
        self._path, self._requested = str(path), format
        self._encoding, self._skip, self._cap = encoding, skip_lines, max_field_bytes
        self.label = "<stdin>" if self._path == "-" else self._path
        self.format: Literal["csv", "ndjson"] = "csv"
        self.encoding: str = encoding or "utf-8"
        self.encoding_note: str | None = None
        self.delimiter: str | None = delimiter
        self.header_line: int | None = None
        self.headers: tuple[str, ...] = ()
        self._text: io.TextIOWrapper | None = None
        self._lines: _Lines | None = None
        self._reader: Iterator[list[str]] | None = None

    # -- opening -----------------------------------------------------------------------------

    def __enter__(self) -> RecordSource:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the input (standard input itself is left open)."""
        if self._text is not None:
            if self._path == "-":
                self._text.detach()
            else:
                self._text.close()
            self._text = None

    def _open(self) -> None:
        binary, owned = self._binary()
        try:
            sample = _read_up_to(binary, SAMPLE_BYTES, self.label)
            self.encoding, self.encoding_note = self._choose_encoding(
                sample, complete=len(sample) < SAMPLE_BYTES
            )
        except BaseException:
            if owned:
                binary.close()
            raise
        stream = io.BufferedReader(_Prefixed(sample, binary, owned), 1 << 16)
        self._text = io.TextIOWrapper(
            stream, encoding=self.encoding, errors="surrogateescape", newline=""
        )
        self.format = self._choose_format(sample)
        self._lines = _Lines(self._text, self.label, max(32 * self._cap, 8 << 20))
        for _ in range(self._skip or 0):
            if self._lines.raw() is None:
                break
        if self.format == "csv":
            self._open_csv()
        else:
            self._open_ndjson()

    def _binary(self) -> tuple[BinaryIO, bool]:
        """The input as bytes, and whether closing it is ours to do."""
        if self._path == "-":
            buffer = getattr(sys.stdin, "buffer", None)
            if buffer is None:
                raise InputError("there is no standard input to read", path=self.label)
            return buffer, False
        try:
            return open(self._path, "rb", buffering=0), True
        except OSError as exc:
            raise InputError(f"cannot open: {exc.strerror or exc}", path=self.label) from None

    def _choose_encoding(self, sample: bytes, complete: bool) -> tuple[str, str | None]:
        if self._encoding:
            return self._encoding, None
        for bom, name in _BOMS:
            if sample.startswith(bom):
                return name, None
        for magic, what in _MAGIC.items():
            if sample.startswith(magic):
                raise InputError(f"this is not a text file: it looks like {what}", path=self.label)
        if sample.count(b"\x00") > len(sample) // 4 > 0:
            msg = "too many NUL bytes for a text file (UTF-16 without a byte-order mark? pass --encoding utf-16)"
            raise InputError(msg, path=self.label)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)
        except UnicodeDecodeError as exc:
            byte = sample[exc.start]
            note = f"not UTF-8 (byte 0x{byte:02x} at offset {exc.start}); read as cp1252"
            return "cp1252", note
        return "utf-8", None

    def _choose_format(self, sample: bytes) -> Literal["csv", "ndjson"]:
        if self._requested != "auto":
            return self._requested
        suffix = Path(self._path).suffix.lower() if self._path != "-" else ""
        if suffix in CSV_EXTENSIONS:
            return "csv"
        if suffix in NDJSON_EXTENSIONS:
            return "ndjson"
        head = sample[:4096].decode(self.encoding, "ignore").lstrip("\ufeff \t\r\n")
        return "ndjson" if head.startswith("{") else "csv"

    @property
    def _source_lines(self) -> _Lines:
        if self._lines is None:
            raise RuntimeError("RecordSource must be entered (with ...) before use")
        return self._lines

    def _read_sample(self) -> list[str]:
        lines: list[str] = []
        size = 0
        while len(lines) < _SNIFF_LINES and size < _SNIFF_CHARS:
            line = self._source_lines.raw()
            if line is None:
                break
            lines.append(line)
            size += len(line)
        return lines

    def _open_csv(self) -> None:
        lines = self._source_lines
        first = lines.lineno
        sample = self._read_sample()
        if self.delimiter is None and sample and sample[0].lower().startswith("sep="):
            declared = sample[0][4:].rstrip("\r\n")
            if len(declared) == 1:  # Excel's "sep=;" line
                self.delimiter, first, sample = declared, first + 1, sample[1:]
        lines.rewind(first, sample)
        if self.delimiter is None:
            self.delimiter = _sniff_delimiter(sample)
        header_line = first + 1
        if self._skip is None:
            found = _find_header(_parse(sample, self.delimiter), first)
            header_line = found if found is not None else header_line
        if self._cap > csv.field_size_limit():
            csv.field_size_limit(self._cap)  # process-wide; only ever raised, never lowered
        self._reader = csv.reader(lines, delimiter=self.delimiter, quotechar='"', strict=False)
        while True:
            start = lines.begin()
            try:
                cells = next(self._reader)
            except StopIteration:
                raise InputError("no header row: the file is empty", path=self.label) from None
            except (csv.Error, _Overflow):
                raise InputError(
                    "the header row cannot be parsed", path=self.label, line=start
                ) from None
            if start >= header_line and "".join(cells).strip():
                break
        self.header_line = start
        if lines.hit_eof and self._unterminated():
            msg = "unterminated quote in the header row: the quoted name never closes"
            raise InputError(msg, path=self.label, line=start)
        if lines.nul or lines.undecodable:
            what = "a NUL byte" if lines.nul else f"bytes that are not {self.encoding}"
            raise InputError(f"the header contains {what}", path=self.label, line=start)
        self.headers = _check_headers(cells, self.label, start)

    def _open_ndjson(self) -> None:
        lines = self._source_lines
        first = lines.lineno
        sample = self._read_sample()
        lines.rewind(first, sample)
        keys: dict[str, None] = {}
        seen_text = False
        for text in sample:
            if not text.strip():
                continue
            if not seen_text and text.lstrip("\ufeff \t").startswith("["):
                msg = "a JSON array, not NDJSON (one object per line); convert it with jq -c '.[]'"
                raise InputError(msg, path=self.label)
            seen_text = True
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                keys.update(dict.fromkeys(k.strip() for k in value))
        if not seen_text:
            raise InputError("the file is empty", path=self.label)
        if not keys:
            msg = f"no JSON object in the first {len(sample)} lines: is this NDJSON?"
            raise InputError(msg, path=self.label)
        self.headers = tuple(keys)

    # -- reading -----------------------------------------------------------------------------

    @property
    def lines_read(self) -> int:
        """Physical lines consumed so far; after a record is yielded, the line it ends on."""
        return self._source_lines.lineno

    def skip_to(self, line: int) -> bool:
        """Skip physical lines, unparsed, up to and including ``line`` (which must end a
        record); False if the input ended first."""
        lines = self._source_lines
        while lines.lineno < line:
            if lines.raw() is None:
                return False
        return True

    def __iter__(self) -> Iterator[RawRecord | Reject]:
        return self._iter_csv() if self.format == "csv" else self._iter_ndjson()

    def _iter_csv(self) -> Iterator[RawRecord | Reject]:
        lines, reader, headers = self._source_lines, self._reader, self.headers
        if reader is None:
            raise RuntimeError("RecordSource must be entered (with ...) before iterating")
        width, cap = len(headers), self._cap
        quick = cap // 4  # a cell of at most cap // 4 characters is at most cap UTF-8 bytes
        while True:
            start = lines.begin()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except (csv.Error, _Overflow):
                yield self._recover(start)
                continue
            if not "".join(cells).strip():
                continue
            if lines.hit_eof and self._unterminated():
                lines.rewind(start, lines.buf[1:])
                msg = f"unterminated quote: the quoted cell opened on line {start} never closes; the lines after it are read again as rows"
                yield Reject(start, "malformed_record", None, msg, _excerpt(lines.buf[:1]))
                continue
            if len(cells) > width:
                extra = cells[width:]
                if "".join(extra).strip():
                    yield self._ragged(start, cells)
                    continue
                del cells[width:]
            row = dict(zip(headers, cells, strict=False))
            if lines.nul or lines.undecodable:
                yield self._bad_text(start, row)
            elif max(map(len, cells)) > quick:
                yield self._check_size(start, row)
            else:
                yield RawRecord(start, row)

    def _span(self, start: int) -> str:
        end = self._source_lines.lineno
        return f"line {start}" if end <= start else f"lines {start}-{end}"

    def _ragged(self, start: int, cells: list[str]) -> Reject:
        width = len(self.headers)
        row: dict[str, object] = dict(zip(self.headers, map(_printable, cells), strict=False))
        row["(extra cells)"] = [_printable(c) for c in cells[width:]]
        hint = " (an unbalanced quote?)" if self._span(start) != f"line {start}" else ""
        msg = f"{len(cells)} cells but {width} columns in the header ({self._span(start)}){hint}"
        return Reject(start, "ragged_row", None, msg, row)

    def _bad_text(self, start: int, row: dict[str, str]) -> Reject:
        clean = {k: _printable(v) for k, v in row.items()}
        for column, value in row.items():
            if "\x00" in value:
                msg = f"NUL byte in column {column!r} ({self._span(start)})"
                return Reject(start, "malformed_record", column, msg, clean)
        bad = next((k for k, v in row.items() if _SURROGATES.search(v)), None)
        msg = f"bytes that are not valid {self.encoding} in column {bad!r}"
        if self.encoding == "utf-8":
            msg += " (the start of the file is UTF-8; pass --encoding cp1252 if the file is Windows text)"
        return Reject(start, "malformed_record", bad, msg, clean)

    def _check_size(self, start: int, row: dict[str, str]) -> RawRecord | Reject:
        for column, value in row.items():
            size = len(value.encode("utf-8", "surrogateescape"))
            if size > self._cap:
                msg = f"cell in column {column!r} is {size:,} bytes; the cap is {self._cap:,}"
                cut = {k: v if len(v) <= 200 else v[:200] + "…" for k, v in row.items()}
                return Reject(start, "field_too_large", column, msg, cut)
        return RawRecord(start, row)

    def _unterminated(self) -> bool:
        quoted, delimiter = False, self.delimiter or ","
        for text in self._source_lines.buf:
            quoted = _ends_quoted(text, delimiter, quoted)
        return quoted

    def _recover(self, start: int) -> Reject:
        """After a cell overflowed: find where its record ends, or re-read after its first line."""
        lines, delimiter = self._source_lines, self.delimiter or ","
        consumed = list(lines.buf)
        excerpt = _excerpt(consumed, 500)
        if self._unterminated():
            ahead: list[str] = []
            size = 0
            while size <= _LOOKAHEAD_CHARS:
                text = lines.raw()
                if text is None:
                    break
                ahead.append(text)
                size += len(text)
                if not _ends_quoted(text, delimiter, True):
                    msg = f"a quoted cell in {self._span(start)} is larger than the {self._cap:,} byte cap"
                    return Reject(start, "field_too_large", None, msg, excerpt)
            lines.rewind(start, consumed[1:] + ahead)
            msg = f"unterminated quote: the quoted cell opened on line {start} never closes; the lines after it are read again as rows"
            return Reject(start, "malformed_record", None, msg, _excerpt(consumed[:1], 500))
        msg = f"a cell in {self._span(start)} is larger than the {self._cap:,} byte cap"
        return Reject(start, "field_too_large", None, msg, excerpt)

    def _iter_ndjson(self) -> Iterator[RawRecord | Reject]:
        lines, cap = self._source_lines, self._cap
        while (text := lines.raw()) is not None:
            if not text.strip():
                continue
            line = lines.lineno
            if not text.isascii() and _SURROGATES.search(text):
                msg = f"bytes that are not valid {self.encoding}"
                yield Reject(line, "malformed_record", None, msg, _excerpt([text]))
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                msg = f"not valid JSON: {exc.msg} (at character {exc.pos + 1})"
                yield Reject(line, "malformed_record", None, msg, _excerpt([text]))
                continue
            if not isinstance(value, dict):
                msg = f"a JSON {type(value).__name__}, not an object"
                yield Reject(line, "malformed_record", None, msg, _excerpt([text]))
                continue
            row = {key.strip(): _as_text(v) for key, v in value.items()}
            yield _check_ndjson_row(line, row, cap)


def _read_up_to(binary: BinaryIO, size: int, label: str) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the input."""
    chunks: list[bytes] = []
    left = size
    try:
        while left > 0:
            chunk = binary.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=label) from None
    return b"".join(chunks)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _check_ndjson_row(line: int, row: dict[str, str], cap: int) -> RawRecord | Reject:
    for column, value in row.items():
        if "\x00" in value:
            return Reject(line, "malformed_record", column, f"NUL in {column!r}", row)
        if len(value) > cap // 4 and len(value.encode()) > cap:
            msg = f"value of {column!r} is {len(value.encode()):,} bytes; the cap is {cap:,}"
            cut = {k: v if len(v) <= 200 else v[:200] + "…" for k, v in row.items()}
            return Reject(line, "field_too_large", column, msg, cut)
    return RawRecord(line, row)


def _parse(sample: list[str], delimiter: str) -> list[tuple[int, list[str]]]:
    """The records of a list of lines, each with its offset (1-based) in the list."""
    counter = _Lines(io.StringIO("".join(sample), newline=""), "<sample>", 1 << 62)
    reader = csv.reader(counter, delimiter=delimiter, quotechar='"', strict=False)
    records = []
    while True:
        start = counter.begin()
        try:
            records.append((start, next(reader)))
        except StopIteration:
            return records
        except (csv.Error, _Overflow):
            continue


def _sniff_delimiter(sample: list[str]) -> str:
    """The candidate giving the most records of one width (above 1); ``,`` when none does."""
    best, best_score = ",", 0
    for delimiter in DELIMITERS:
        records = _parse(sample, delimiter)
        if len(records) > 2:
            records.pop()  # the sample may end inside the last record
        widths = collections.Counter(len(cells) for _, cells in records if len(cells) > 1)
        score = max(widths.values(), default=0)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _width(cells: list[str]) -> int:
    """Cells up to the last non-empty one (Excel pads rows with empty trailing cells)."""
    width = len(cells)
    while width and not cells[width - 1].strip():
        width -= 1
    return width


def _find_header(records: list[tuple[int, list[str]]], offset: int) -> int | None:
    """The line of the first record that looks like a header (skipping a preamble)."""
    filled = [(start, cells) for start, cells in records if "".join(cells).strip()]
    if not filled:
        return None
    widths = collections.Counter(_width(cells) for _, cells in filled if _width(cells) > 1)
    if not widths:
        return offset + filled[0][0]
    modal = max(widths.items(), key=lambda item: (item[1], item[0]))[0]
    for start, cells in filled:
        if sum(1 for c in cells if c.strip()) >= 2 and 2 * _width(cells) >= modal:
            return offset + start
    return offset + filled[0][0]


def _check_headers(cells: list[str], label: str, line: int) -> tuple[str, ...]:
    """Trimmed names (empty ones named ``column N``); duplicates (by case and spacing) stop."""
    names = [
        c.strip().lstrip("\ufeff").strip() or f"column {i}" for i, c in enumerate(cells, start=1)
    ]
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        seen.setdefault(column_key(name), []).append(i)
    dupes = [positions for positions in seen.values() if len(positions) > 1]
    if dupes:
        shown = "; ".join(
            " and ".join(f"{names[i - 1]!r} (column {i})" for i in positions) for positions in dupes
        )
        raise InputError(f"duplicate column names: {shown}", path=label, line=line)
    return tuple(names)
