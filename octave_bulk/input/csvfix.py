"""Recovery: the line feed the reader parses from, and what it does with a broken record.

Contract: :class:`LineFeed` gives physical lines, numbered, and keeps the lines of the current
record so that a broken one can be given back and read again. Every other function turns one
broken record into exactly one :class:`Reject` and leaves the feed where the next record starts,
so the read goes on.

* A quoted cell that never closes (:func:`unterminated` tells from the record's lines, with
  the ``csv`` module's non-strict quoting): the record on which it opens is a
  ``malformed_record`` reject and the lines after that first line are given back to the feed,
  to be read again as records (they hold no closing quote, so they were independent rows):
  :func:`reject_unterminated`.
* A record that outgrew the feed's size limit (:class:`RecordOverflow`): :func:`recover`
  follows an open quote up to 1 MiB ahead; if it closes there the whole record is one
  ``field_too_large`` reject, if not the quote is unterminated as above. Without an open quote
  the record is ``field_too_large``.
* More non-empty cells than the header (:func:`ragged_row`): a ``ragged_row`` reject that keeps
  the extra cells, with a hint when the record spans lines (an unbalanced quote).
* A NUL byte or undecodable bytes in a cell (:func:`bad_text`): ``malformed_record``; a cell
  over the cap in UTF-8 bytes (:func:`check_cells`): ``field_too_large``, with long values
  clipped in the reject (:func:`clipped`).

Rejects show raw text with undecodable bytes as ``\\xNN`` (:func:`excerpt`).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from octave_bulk.errors import InputError
from octave_bulk.input.records import Reject

__all__ = [
    "UNDECODABLE",
    "LineFeed",
    "RecordOverflow",
    "bad_text",
    "check_cells",
    "clipped",
    "excerpt",
    "ragged_row",
    "recover",
    "reject_unterminated",
    "unterminated",
]

UNDECODABLE = re.compile("[\udc80-\udcff]")
"""Bytes the codec could not decode, as ``surrogateescape`` leaves them in the text."""
_LOOKAHEAD_CHARS = 1 << 20  # how far an over-long quoted cell is followed to find its end


class RecordOverflow(Exception):
    """The current CSV record grew beyond any sane size (a quote that never closes)."""


class LineFeed:
    """Physical lines, numbered, with push-back and per-record bookkeeping for CSV.

    Args:
        stream: the decoded input (``newline=""``).
        label: the input as shown in messages.
        record_limit: the characters one record may span before :class:`RecordOverflow`.
        max_line_chars: a longer physical line stops the read (:class:`InputError`).
    """

    def __init__(self, stream: TextIO, label: str, record_limit: int, max_line_chars: int) -> None:
        self._readline, self._label, self._record_limit = stream.readline, label, record_limit
        self._max_line = max_line_chars
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
                line = self._readline(self._max_line)
            except UnicodeError as exc:  # bytes the chosen codec cannot take at all (UTF-16)
                msg = f"cannot decode the input ({exc}); try --encoding"
                raise InputError(msg, path=self._label, line=self.lineno + 1) from None
            if not line:
                return None
            if len(line) >= self._max_line and line[-1] not in "\r\n":
                msg = f"line longer than {self._max_line:,} characters: this is not a CSV or NDJSON file"
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

    def __iter__(self) -> LineFeed:
        return self

    def __next__(self) -> str:
        line = self.raw()
        if line is None:
            self.hit_eof = True
            raise StopIteration
        self.buf.append(line)
        self.size += len(line)
        if self.size > self._record_limit:
            raise RecordOverflow
        if "\x00" in line:
            self.nul = True
        if not line.isascii() and UNDECODABLE.search(line):
            self.undecodable = True
        return line


def _printable(text: str) -> str:
    """Text safe for JSON output: undecodable bytes shown as ``\\xNN``."""
    if text.isascii() or not UNDECODABLE.search(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def excerpt(lines: Sequence[str], limit: int = 2000) -> str:
    """The start of a record's raw text, printable."""
    return _printable("".join(lines)[:limit])


def clipped(row: Mapping[str, str]) -> dict[str, str]:
    """The row with values over 200 characters cut (for a ``field_too_large`` reject)."""
    return {k: v if len(v) <= 200 else v[:200] + "…" for k, v in row.items()}


def _span(start: int, end: int) -> str:
    return f"line {start}" if end <= start else f"lines {start}-{end}"


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


def unterminated(lines: Iterable[str], delimiter: str) -> bool:
    """Whether a quoted cell is still open at the end of ``lines`` (one record's lines)."""
    quoted = False
    for text in lines:
        quoted = _ends_quoted(text, delimiter, quoted)
    return quoted


def _unterminated_message(start: int) -> str:
    return f"unterminated quote: the quoted cell opened on line {start} never closes; the lines after it are read again as rows"


def reject_unterminated(feed: LineFeed, start: int) -> Reject:
    """The record starting on ``start`` ended the input inside a quote: its first line is the
    reject, the lines after it go back to the feed."""
    feed.rewind(start, feed.buf[1:])
    msg = _unterminated_message(start)
    return Reject(start, "malformed_record", None, msg, excerpt(feed.buf[:1]))


def recover(feed: LineFeed, start: int, delimiter: str, cap: int) -> Reject:
    """After a record overflowed: find where it ends, or re-read the lines after its first."""
    consumed = list(feed.buf)
    shown = excerpt(consumed, 500)
    if unterminated(consumed, delimiter):
        ahead: list[str] = []
        size = 0
        while size <= _LOOKAHEAD_CHARS:
            text = feed.raw()
            if text is None:
                break
            ahead.append(text)
            size += len(text)
            if not _ends_quoted(text, delimiter, True):
                msg = f"a quoted cell in {_span(start, feed.lineno)} is larger than the {cap:,} byte cap"
                return Reject(start, "field_too_large", None, msg, shown)
        feed.rewind(start, consumed[1:] + ahead)
        msg = _unterminated_message(start)
        return Reject(start, "malformed_record", None, msg, excerpt(consumed[:1], 500))
    msg = f"a cell in {_span(start, feed.lineno)} is larger than the {cap:,} byte cap"
    return Reject(start, "field_too_large", None, msg, shown)


def ragged_row(start: int, end: int, headers: Sequence[str], cells: list[str]) -> Reject:
    """The record on lines ``start``-``end`` has non-empty cells past the last column."""
    width = len(headers)
    row: dict[str, object] = dict(zip(headers, map(_printable, cells), strict=False))
    row["(extra cells)"] = [_printable(c) for c in cells[width:]]
    where = _span(start, end)
    hint = " (an unbalanced quote?)" if where != f"line {start}" else ""
    msg = f"{len(cells)} cells but {width} columns in the header ({where}){hint}"
    return Reject(start, "ragged_row", None, msg, row)


def bad_text(start: int, end: int, row: dict[str, str], encoding: str) -> Reject:
    """The record on lines ``start``-``end`` holds a NUL byte or bytes not valid in ``encoding``."""
    clean = {k: _printable(v) for k, v in row.items()}
    for column, value in row.items():
        if "\x00" in value:
            msg = f"NUL byte in column {column!r} ({_span(start, end)})"
            return Reject(start, "malformed_record", column, msg, clean)
    bad = next((k for k, v in row.items() if UNDECODABLE.search(v)), None)
    msg = f"bytes that are not valid {encoding} in column {bad!r}"
    if encoding == "utf-8":
        msg += (
            " (the start of the file is UTF-8; pass --encoding cp1252 if the file is Windows text)"
        )
    return Reject(start, "malformed_record", bad, msg, clean)


def check_cells(start: int, row: dict[str, str], cap: int) -> Reject | None:
    """A ``field_too_large`` reject when a cell is over ``cap`` UTF-8 bytes, else None."""
    for column, value in row.items():
        size = len(value.encode("utf-8", "surrogateescape"))
        if size > cap:
            msg = f"cell in column {column!r} is {size:,} bytes; the cap is {cap:,}"
            return Reject(start, "field_too_large", column, msg, clipped(row))
    return None
