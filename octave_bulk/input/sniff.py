"""Sniffing an input from its first bytes and lines: encoding, format, CSV delimiter, header.

Contract: pure decisions on a sample the caller has read (no I/O of their own). Whole-file
problems found in the sample raise :class:`InputError` naming the input's ``label``.

* Encoding (:func:`detect_encoding`, on the first :data:`SAMPLE_BYTES`): a byte-order mark
  decides (UTF-8 -> ``utf-8-sig``, UTF-16/32); a zip, Excel or gzip signature, or a sample that
  is over a quarter NUL bytes, is not text; valid UTF-8 -> ``utf-8``. Otherwise the file is a
  legacy export, with a note saying so: ``charset-normalizer`` proposes the scripts the sample
  may be in (Latin, Cyrillic, Japanese), and the codec under which more of the sample's
  non-ASCII words read as words of their script wins: ``cp1250`` or ``iso8859-2`` (Polish,
  Czech, Slovak, Croatian...), ``cp1251`` or ``koi8-r`` (Cyrillic), ``cp932`` (Shift-JIS).
  ``cp1252`` wins every tie, so short Western text, and any sample charset-normalizer is unsure
  of, reads as ``cp1252``. Hungarian with only ``ő``/``ű`` is one such tie.
* Format (:func:`detect_format`): by extension (:data:`CSV_EXTENSIONS`,
  :data:`NDJSON_EXTENSIONS`), else NDJSON when the first non-blank character is ``{``.
* CSV dialect and header (:func:`sniff_csv`, on :func:`read_sample`'s lines): an Excel
  ``sep=;`` first line declares the delimiter; otherwise it is sniffed among
  :data:`DELIMITERS`. A preamble before the header (LinkedIn's ``Notes:`` paragraph) is
  skipped: the header is the first record with at least two filled cells and at least half as
  many cells as most records. :func:`check_headers` names empty columns and renames a repeated
  name's later copies ``<name>_2``, ``<name>_3``...; :func:`sample_rows` parses the sampled rows
  after the header (what profile detection and the repeated-column check look at).
* NDJSON keys (:func:`ndjson_headers`): the keys of the objects in the sample, in order.
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import orjson

from octave_bulk.errors import InputError
from octave_bulk.input.chain import results_row
from octave_bulk.input.mapping import column_key

__all__ = [
    "CSV_EXTENSIONS",
    "DELIMITERS",
    "NDJSON_EXTENSIONS",
    "SAMPLE_BYTES",
    "check_headers",
    "detect_encoding",
    "detect_format",
    "find_header",
    "ndjson_headers",
    "parse_sample",
    "read_sample",
    "sample_is_whole",
    "sample_rows",
    "sniff_csv",
    "sniff_delimiter",
]

SAMPLE_BYTES = 1 << 20
"""The encoding is decided from this many bytes at the start of the input."""
DELIMITERS = ",;\t|"
"""The only delimiters the sniffer considers, in order of preference on a tie."""
CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".tab", ".txt"})
"""Extensions read as CSV by ``format="auto"``."""
NDJSON_EXTENSIONS = frozenset({".ndjson", ".jsonl", ".json"})
"""Extensions read as NDJSON by ``format="auto"`` (other names: sniffed from the content)."""

_SNIFF_CHARS = 64 * 1024  # the dialect and header are decided from this much text...
_SNIFF_LINES = 200  # ...or this many lines, whichever comes first
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
_LEGACY = {  # codec -> its script, as the encoding note names it
    "cp1252": "Western European",
    "cp1250": "Central European",
    "iso8859-2": "Central European",
    "cp1251": "Cyrillic",
    "koi8-r": "Cyrillic",
    "cp932": "Japanese Shift-JIS",
}
_CENTRAL = ("cp1250", "iso8859-2")
_PROPOSALS = {  # what charset-normalizer may propose -> the codecs that then compete with cp1252
    "cp1252": _CENTRAL,
    "latin_1": _CENTRAL,
    "cp1250": _CENTRAL,
    "iso8859_2": _CENTRAL,
    "cp1251": ("cp1251",),
    "koi8_r": ("koi8-r",),
    "shift_jis": ("cp932",),
    "cp932": ("cp932",),
}
_LETTERS = {  # the accented letters of the languages each script is read as, one set a language
    "Western European": (
        "àâæçéèêëîïôœùûüÿ",  # French
        "äöüß",  # German
        "áéíñóúü",  # Spanish
        "àáâãçéêíóôõú",  # Portuguese
        "àèéìíîòóùú",  # Italian
        "åæøéó",  # Danish, Norwegian
        "åäöõšžü",  # Swedish, Finnish, Estonian
        "áæéíðóöúýþ",  # Icelandic
    ),
    "Central European": (
        "ąćęłńóśźż",  # Polish
        "áčďéěíňóřšťúůýž",  # Czech
        "áäčďéíĺľňóôŕšťúýž",  # Slovak
        "áéíóöőúüű",  # Hungarian
        "ăâîşţ",  # Romanian
        "čćđšž",  # Croatian, Slovene, Bosnian
        "äöüß",  # German
    ),
}
_LETTER_SETS = {script: [frozenset(s) for s in sets] for script, sets in _LETTERS.items()}
_WORD = re.compile(rb"[^\x00-\x2f\x3a-\x3f]+")  # no byte below 0x40 is in a Shift-JIS character
_WORDS_WEIGHED = 4000  # non-ASCII words of the sample the legacy codec is chosen on


# -- encoding and format -----------------------------------------------------------------------


def detect_encoding(sample: bytes, *, complete: bool, label: str) -> tuple[str, str | None]:
    """The codec for an input starting with ``sample``, and a note when it is a fallback.

    Args:
        sample: the first :data:`SAMPLE_BYTES` of the input (all of it when ``complete``).
        complete: whether ``sample`` is the whole input (a multi-byte character may not be cut).
        label: the input as shown in messages.

    Raises:
        InputError: the input is not a text file.
    """
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name, None
    for magic, what in _MAGIC.items():
        if sample.startswith(magic):
            raise InputError(f"this is not a text file: it looks like {what}", path=label)
    if sample.count(b"\x00") > len(sample) // 4 > 0:
        msg = "too many NUL bytes for a text file (UTF-16 without a byte-order mark? pass --encoding utf-16)"
        raise InputError(msg, path=label)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)
    except UnicodeDecodeError as exc:
        codec = _legacy_codec(sample)
        byte = sample[exc.start]
        note = f"not UTF-8 (byte 0x{byte:02x} at offset {exc.start}); read as {codec} ({_LEGACY[codec]})"
        return codec, note
    return "utf-8", None


def _legacy_codec(sample: bytes) -> str:
    """The codec of a sample that is not UTF-8: see the module docstring."""
    from charset_normalizer import from_bytes  # only non-UTF-8 input pays for the import

    rivals = ["cp1252"]
    for match in from_bytes(sample, cp_isolation=list(_PROPOSALS)):
        for codec in _PROPOSALS.get(match.encoding, ()):
            if codec not in rivals:
                rivals.append(codec)
    if len(rivals) == 1:
        return "cp1252"
    non_ascii = (w[0] for w in _WORD.finditer(sample) if not w[0].isascii())
    words = list(itertools.islice(non_ascii, _WORDS_WEIGHED))
    scores = {codec: sum(_reads_as_word(w, codec) for w in words) for codec in rivals}
    return max(rivals, key=scores.__getitem__)  # the first best: cp1252 on a tie


def _reads_as_word(word: bytes, codec: str) -> bool:
    """Whether ``word`` decodes under ``codec`` to a word of that codec's script."""
    try:
        text = word.decode(codec)
    except UnicodeDecodeError:
        return False
    if len(text) < 2 or not text.isalpha():
        return False
    script = _LEGACY[codec]
    if script == "Cyrillic":
        return all("\u0400" <= c <= "\u04ff" for c in text)
    if script.startswith("Japanese"):
        return all(
            "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" or c == "\u3005" for c in text
        )
    accented = {c for c in text.lower() if not c.isascii()}
    return any(accented <= letters for letters in _LETTER_SETS[script])


def detect_format(path: str, sample: bytes, encoding: str) -> Literal["csv", "ndjson"]:
    """CSV or NDJSON, by the extension of ``path`` (``-`` has none), else by the content."""
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix in CSV_EXTENSIONS:
        return "csv"
    if suffix in NDJSON_EXTENSIONS:
        return "ndjson"
    head = sample[:4096].decode(encoding, "ignore").lstrip("\ufeff \t\r\n")
    return "ndjson" if head.startswith("{") else "csv"


# -- the sample --------------------------------------------------------------------------------


def read_sample(next_line: Callable[[], str | None]) -> list[str]:
    """The lines the dialect and header are decided from (``next_line`` returns None at the end)."""
    lines: list[str] = []
    size = 0
    while len(lines) < _SNIFF_LINES and size < _SNIFF_CHARS:
        line = next_line()
        if line is None:
            break
        lines.append(line)
        size += len(line)
    return lines


def parse_sample(sample: list[str], delimiter: str) -> list[tuple[int, list[str]]]:
    """The records of a list of lines, each with its offset (1-based) in the list."""
    stream = io.StringIO("".join(sample), newline="")
    consumed = 0

    def counted() -> Iterator[str]:
        nonlocal consumed
        for line in stream:
            consumed += 1
            yield line

    reader = csv.reader(counted(), delimiter=delimiter, quotechar='"', strict=False)
    records = []
    while True:
        start = consumed + 1
        try:
            records.append((start, next(reader)))
        except StopIteration:
            return records
        except csv.Error:
            continue


# -- CSV dialect and header ----------------------------------------------------------------------


def sniff_csv(
    sample: list[str], first: int, delimiter: str | None, detect_header: bool
) -> tuple[str, int, int]:
    """The delimiter, the line the data starts after, and the header line, for a CSV sample.

    Args:
        sample: the lines read after line ``first``.
        first: the line before the sample (lines skipped before it).
        delimiter: the delimiter given by the user, if any.
        detect_header: look for the header past a preamble (else the first line is the header).

    Returns:
        ``(delimiter, start, header_line)``: ``start`` is ``first + 1`` after an Excel ``sep=``
        line (not data), else ``first``; records before ``header_line`` are a preamble.
    """
    if delimiter is None and sample and sample[0].lower().startswith("sep="):
        declared = sample[0][4:].rstrip("\r\n")
        if len(declared) == 1:  # Excel's "sep=;" line
            delimiter, first, sample = declared, first + 1, sample[1:]
    if delimiter is None:
        delimiter = sniff_delimiter(sample)
    header_line = first + 1
    if detect_header:
        found = find_header(parse_sample(sample, delimiter), first)
        header_line = found if found is not None else header_line
    return delimiter, first, header_line


def sniff_delimiter(sample: list[str]) -> str:
    """The candidate giving the most records of one width (above 1); ``,`` when none does."""
    best, best_score = ",", 0
    for delimiter in DELIMITERS:
        records = parse_sample(sample, delimiter)
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


def find_header(records: list[tuple[int, list[str]]], offset: int) -> int | None:
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


def check_headers(cells: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Trimmed names (empty ones named ``column N``), each repeated one renamed, and the renames.

    A name repeated (by case and spacing: ``Company Name`` / ``Company name``) keeps its first
    column; each later copy is renamed ``<name>_2``, ``<name>_3``... (past any name the header
    already has), so that every column stays addressable, by ``--map`` too. Returns the names
    and ``copy -> the first column's name``; whether copies conflict is the mapping's to say.
    """
    names = [
        c.strip().lstrip("\ufeff").strip() or f"column {i}" for i, c in enumerate(cells, start=1)
    ]
    taken = {column_key(name) for name in names}
    first: dict[str, int] = {}
    copies: dict[str, str] = {}
    for i, name in enumerate(names):
        if first.setdefault(column_key(name), i) == i:
            continue
        original = names[first[column_key(name)]]
        n = 2
        while column_key(f"{name}_{n}") in taken:
            n += 1
        names[i] = f"{name}_{n}"
        taken.add(column_key(names[i]))
        copies[names[i]] = original
    return tuple(names), copies


def sample_is_whole(sample: list[str]) -> bool:
    """Whether :func:`read_sample` stopped at the end of the input, not at its limits."""
    return len(sample) < _SNIFF_LINES and sum(map(len, sample)) < _SNIFF_CHARS


def sample_rows(
    sample: list[str], delimiter: str, headers: tuple[str, ...], *, whole: bool
) -> list[dict[str, str]]:
    """The rows of the sampled lines after the header, as ``header -> cell`` (the last record,
    which the sample may cut, left out unless the sample is ``whole``)."""
    records = parse_sample(sample, delimiter)
    if not whole:
        records = records[:-1]
    return [
        dict(zip(headers, cells, strict=False)) for _, cells in records if "".join(cells).strip()
    ]


# -- NDJSON ------------------------------------------------------------------------------------


def ndjson_headers(sample: list[str], label: str) -> tuple[str, ...]:
    """The keys of the JSON objects in the sample lines, in first-seen order.

    Raises:
        InputError: the sample is empty, a JSON array, or holds no JSON object.
    """
    keys: dict[str, None] = {}
    seen_text = False
    for text in sample:
        if not text.strip():
            continue
        if not seen_text and text.lstrip("\ufeff \t").startswith("["):
            msg = "a JSON array, not NDJSON (one object per line); convert it with jq -c '.[]'"
            raise InputError(msg, path=label)
        seen_text = True
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            value = results_row(value) or value  # an earlier run's results: its contacts
            keys.update(dict.fromkeys(k.strip() for k in value))
    if not seen_text:
        raise InputError("the file is empty", path=label)
    if not keys:
        msg = f"no JSON object in the first {len(sample)} lines: is this NDJSON?"
        raise InputError(msg, path=label)
    return tuple(keys)
