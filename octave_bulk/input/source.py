"""The lazy input reader: CSV or NDJSON bytes, from a file or ``-`` (stdin), become raw records.

Contract:

* :class:`RecordSource` is a context manager. ``__enter__`` opens the input, decides the
  encoding, the format and the CSV delimiter, and reads the header (see
  :mod:`octave_bulk.input.sniff`); every whole-file problem (missing file, binary file, no
  header) raises :class:`InputError` there, before any record is
  yielded. Bad options raise :class:`ConfigError`.
* Iterating yields, for every non-blank record, exactly one :class:`RawRecord` (header ->
  cell text) or one :class:`Reject` (``malformed_record``, ``field_too_large``,
  ``ragged_row``), each with the 1-based line on which the record *starts*. Blank records
  (no cell with any non-space text) are skipped and not counted; so are a CSV report's
  footer lines (:mod:`octave_bulk.input.footer`), counted in ``footer.rows``.
* Memory is flat: lines are decoded incrementally and only the current record is held.

Encoding: an explicit ``encoding`` wins, else it is detected from the first
:data:`~octave_bulk.input.sniff.SAMPLE_BYTES` (``encoding_note`` says why when it is a
fallback). Bytes that do not decode later in the file never stop the read and never vanish:
the record holding them becomes a ``malformed_record`` reject that shows them as ``\\xNN``
escapes. A NUL byte does the same.

CSV: quoted cells may span lines; ``skip_lines`` skips exactly N lines before the header instead
of detecting a preamble. A cell over ``max_field_bytes`` (UTF-8 bytes) rejects its record and
the next record is still read; a quote that never closes and a row with more cells than the
header are handled by :mod:`octave_bulk.input.csvfix` (extra *empty* cells, as Excel pads rows,
are dropped); fewer cells leave the missing values out.

NDJSON: every non-blank line is one JSON object; ``null`` is an empty value, other non-string
values become their JSON text (``true``, ``42``, ``{"a":1}``).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

import orjson

from octave_bulk.errors import ConfigError, InputError
from octave_bulk.input.chain import RESPONSE_KEY, results_row
from octave_bulk.input.csvfix import (
    UNDECODABLE,
    LineFeed,
    RecordOverflow,
    bad_text,
    check_cells,
    clipped,
    excerpt,
    ragged_row,
    recover,
    reject_unterminated,
    unterminated,
)
from octave_bulk.input.footer import FooterFilter
from octave_bulk.input.records import Reject
from octave_bulk.input.sniff import (
    SAMPLE_BYTES,
    check_headers,
    detect_encoding,
    detect_format,
    ndjson_headers,
    read_sample,
    sample_is_whole,
    sample_rows,
    sniff_csv,
)

__all__ = ["MAX_LINE_CHARS", "RawRecord", "RecordSource"]

MAX_LINE_CHARS = 16 << 20
"""A physical line longer than this stops the read (InputError): no real export has one."""

_SAMPLE_ROWS = 100  # rows after the header that profile detection and the copy check look at
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
        headers: the column names (for NDJSON, the keys seen in the first lines); a repeated
            name's later copies renamed ``<name>_2``... (:func:`~octave_bulk.input.sniff.check_headers`).
        copies: each renamed copy -> the name of the first column with its name.
        sample: the first rows after the header (up to 100 lines), parsed, for profile
            detection and the repeated-column check; the iteration reads them again.
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
        self.copies: dict[str, str] = {}
        self.sample: list[dict[str, str]] = []
        self._head = (0, 0)  # bytes and lines read at open (see estimated_lines)
        self.footer = FooterFilter()  # a report's footer lines, dropped and counted
        self._text: io.TextIOWrapper | None = None
        self._lines: LineFeed | None = None
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
            self._head = (len(sample), sample.count(b"\n"))
            if not self._encoding:
                self.encoding, self.encoding_note = detect_encoding(
                    sample, complete=len(sample) < SAMPLE_BYTES, label=self.label
                )
        except BaseException:
            if owned:
                binary.close()
            raise
        stream = io.BufferedReader(_Prefixed(sample, binary, owned), 1 << 16)
        self._text = io.TextIOWrapper(
            stream, encoding=self.encoding, errors="surrogateescape", newline=""
        )
        if self._requested != "auto":
            self.format = self._requested
        else:
            self.format = detect_format(self._path, sample, self.encoding)
        limit = max(32 * self._cap, 8 << 20)
        self._lines = LineFeed(self._text, self.label, limit, MAX_LINE_CHARS)
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

    @property
    def _source_lines(self) -> LineFeed:
        if self._lines is None:
            raise RuntimeError("RecordSource must be entered (with ...) before use")
        return self._lines

    def _open_csv(self) -> None:
        lines = self._source_lines
        first = lines.lineno
        sample = read_sample(lines.raw)
        self.delimiter, start, header_line = sniff_csv(
            sample, first, self.delimiter, detect_header=self._skip is None
        )
        lines.rewind(start, sample[start - first :])
        if self._cap > csv.field_size_limit():
            csv.field_size_limit(self._cap)  # process-wide; only ever raised, never lowered
        self._reader = csv.reader(lines, delimiter=self.delimiter, quotechar='"', strict=False)
        while True:
            start = lines.begin()
            try:
                cells = next(self._reader)
            except StopIteration:
                raise InputError("no header row: the file is empty", path=self.label) from None
            except (csv.Error, RecordOverflow):
                raise InputError(
                    "the header row cannot be parsed", path=self.label, line=start
                ) from None
            if start >= header_line and "".join(cells).strip():
                break
        self.header_line = start
        if lines.hit_eof and unterminated(lines.buf, self.delimiter):
            msg = "unterminated quote in the header row: the quoted name never closes"
            raise InputError(msg, path=self.label, line=start)
        if lines.nul or lines.undecodable:
            what = "a NUL byte" if lines.nul else f"bytes that are not {self.encoding}"
            raise InputError(f"the header contains {what}", path=self.label, line=start)
        self.headers, self.copies = check_headers(cells)
        body = sample[lines.lineno - first :]
        whole = sample_is_whole(sample) and len(body) <= _SAMPLE_ROWS
        self.sample = sample_rows(
            body[:_SAMPLE_ROWS], self.delimiter or ",", self.headers, whole=whole
        )

    def _open_ndjson(self) -> None:
        lines = self._source_lines
        first = lines.lineno
        sample = read_sample(lines.raw)
        lines.rewind(first, sample)
        self.headers = ndjson_headers(sample, self.label)
        for text in sample[:_SAMPLE_ROWS]:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                value = results_row(value) or value
                self.sample.append({str(k).strip(): _as_text(v) for k, v in value.items()})

    # -- reading -----------------------------------------------------------------------------

    def estimated_lines(self) -> int | None:
        """The file's lines, roughly: those of the head read at open (all of a small file)
        scaled to its size, without reading more; None for stdin or a pipe."""
        if self._path == "-" or not os.path.isfile(self._path):
            return None
        size = os.stat(self._path).st_size
        head, lines = self._head
        return round(lines * size / head) if 0 < head < size else lines

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
        width, cap, delimiter = len(headers), self._cap, self.delimiter or ","
        quick = cap // 4  # a cell of at most cap // 4 characters is at most cap UTF-8 bytes
        while True:
            start = lines.begin()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except (csv.Error, RecordOverflow):
                yield recover(lines, start, delimiter, cap)
                continue
            if not "".join(cells).strip():
                continue
            if width > 1 and self.footer.drops(cells):
                continue
            if lines.hit_eof and unterminated(lines.buf, delimiter):
                yield reject_unterminated(lines, start)
                continue
            if len(cells) > width:
                extra = cells[width:]
                if "".join(extra).strip():
                    yield ragged_row(start, lines.lineno, headers, cells)
                    continue
                del cells[width:]
            row = dict(zip(headers, cells, strict=False))
            if lines.nul or lines.undecodable:
                yield bad_text(start, lines.lineno, row, self.encoding)
            elif max(map(len, cells)) > quick:
                yield check_cells(start, row, cap) or RawRecord(start, row)
            else:
                yield RawRecord(start, row)

    def _iter_ndjson(self) -> Iterator[RawRecord | Reject]:
        lines, cap = self._source_lines, self._cap
        while (text := lines.raw()) is not None:
            if not text.strip():
                continue
            line = lines.lineno
            if not text.isascii() and UNDECODABLE.search(text):
                msg = f"bytes that are not valid {self.encoding}"
                yield Reject(line, "malformed_record", None, msg, excerpt([text]))
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                msg = f"not valid JSON: {exc.msg} (at character {exc.pos + 1})"
                yield Reject(line, "malformed_record", None, msg, excerpt([text]))
                continue
            if not isinstance(value, dict):
                msg = f"a JSON {type(value).__name__}, not an object"
                yield Reject(line, "malformed_record", None, msg, excerpt([text]))
                continue
            value = results_row(value) or value  # an earlier run's results: its contacts
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
        if column == RESPONSE_KEY:
            continue  # an earlier run's response: read, never sent
        if "\x00" in value:
            return Reject(line, "malformed_record", column, f"NUL in {column!r}", row)
        if len(value) > cap // 4 and len(value.encode()) > cap:
            msg = f"value of {column!r} is {len(value.encode()):,} bytes; the cap is {cap:,}"
            return Reject(line, "field_too_large", column, msg, clipped(row))
    return RawRecord(line, row)
