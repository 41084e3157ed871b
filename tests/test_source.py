"""The lazy reader against the files real users feed it, bad ones included, and a fuzz test."""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octave_bulk.errors import ConfigError, InputError
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact, Reject
from octave_bulk.input.sniff import SAMPLE_BYTES
from octave_bulk.input.source import RawRecord, RecordSource

HEADER = "email,First Name,Company\n"


def write(tmp_path: Path, data: bytes | str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def read(path: Path | str, **kwargs: Any) -> tuple[RecordSource, list[RawRecord | Reject]]:
    with RecordSource(path, **kwargs) as source:
        return source, list(source)


def lines_of(items: list[RawRecord | Reject]) -> list[tuple[int, str]]:
    return [(i.line, i.reason if isinstance(i, Reject) else "ok") for i in items]


# -- encodings -------------------------------------------------------------------------------


def test_utf8_bom_is_stripped_from_the_first_header(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + "email,Name\na@acme.com,Zoë\n".encode())
    source, items = read(path)
    assert source.encoding == "utf-8-sig" and source.encoding_note is None
    assert source.headers == ("email", "Name")
    assert items == [RawRecord(2, {"email": "a@acme.com", "Name": "Zoë"})]


def test_cp1252_semicolon_file_falls_back_and_says_so(tmp_path: Path) -> None:
    text = '"Email";"Nom";"Société"\r\n"f@socgen.fr";"François";"Société Générale – Paris"\r\n'
    source, items = read(write(tmp_path, text.encode("cp1252")))
    assert source.encoding == "cp1252"
    assert source.encoding_note is not None and "cp1252" in source.encoding_note
    assert source.delimiter == ";"
    assert items == [
        RawRecord(
            2, {"Email": "f@socgen.fr", "Nom": "François", "Société": "Société Générale – Paris"}
        )
    ]


def test_utf16_with_bom_is_read(tmp_path: Path) -> None:
    source, items = read(write(tmp_path, "email\tname\r\na@b.co\tÅsa\r\n".encode("utf-16")))
    assert source.encoding == "utf-16" and source.delimiter == "\t"
    assert items == [RawRecord(2, {"email": "a@b.co", "name": "Åsa"})]


def test_invalid_utf8_after_the_sample_rejects_only_that_record(tmp_path: Path) -> None:
    filler = "".join(f"user{i}@acme.com,Zoë\n" for i in range(SAMPLE_BYTES // 16))
    data = ("email,name\n" + filler).encode() + b"late@acme.com,Ren\xe9e\nlast@acme.com,Ok\n"
    source, items = read(write(tmp_path, data))
    assert source.encoding == "utf-8"
    bad = [i for i in items if isinstance(i, Reject)]
    assert len(bad) == 1 and bad[0].reason == "malformed_record" and bad[0].field == "name"
    assert bad[0].row == {"email": "late@acme.com", "name": "Ren\\xe9e"}
    assert "--encoding cp1252" in bad[0].message
    assert isinstance(items[-1], RawRecord) and items[-1].row["email"] == "last@acme.com"
    assert len(items) == filler.count("\n") + 2


def test_explicit_encoding_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@b.co,Ã©\n".encode())
    source, items = read(path, encoding="latin-1")
    assert source.encoding == "latin-1"
    assert isinstance(items[0], RawRecord) and items[0].row["name"] == "Ã\x83Â©"


LEGACY_EXPORTS = {
    "polish-czech": (
        "email;Imię;Nazwisko;Firma",
        ["Łukasz", "Małgorzata", "Paweł", "Jiří", "Kateřina", "Zdeněk", "Agnieszka", "Michał"],
        ["Wiśniewski", "Dvořák", "Żółkiewska", "Černý", "Dąbrowski", "Růžička", "Kučera"],
        ["Spółka Akcyjna", "Zakłady Łódź", "Česká spořitelna", "Škoda Auto", "Huta Częstochowa"],
    ),
    "russian": (
        "email;Имя;Фамилия;Компания",
        ["Алексей", "Мария", "Дмитрий", "Екатерина", "Сергей", "Ольга", "Юрий", "Наталья"],
        ["Иванов", "Смирнова", "Кузнецов", "Попова", "Соколов", "Лебедева", "Морозов"],
        ["Газпром", "Сбербанк", "Яндекс", "Лукойл", "Ростелеком"],
    ),
    "japanese": (
        "email;名;姓;会社",
        ["太郎", "花子", "健太", "さくら", "翔太", "美咲", "大輔", "陽子"],
        ["佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本"],
        ["株式会社トヨタ", "ソニー株式会社", "任天堂", "楽天グループ", "日立製作所"],
    ),
}


def legacy_export(language: str, rows: int = 30) -> str:
    header, first, last, company = LEGACY_EXPORTS[language]
    lines = [header] + [
        f"user{i}@example.com;{first[i % len(first)]};{last[i % len(last)]};{company[i % len(company)]}"
        for i in range(rows)
    ]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize(
    ("language", "codec", "script"),
    [
        ("polish-czech", "cp1250", "Central European"),
        ("polish-czech", "iso8859-2", "Central European"),
        ("russian", "cp1251", "Cyrillic"),
        ("russian", "koi8-r", "Cyrillic"),
        ("japanese", "cp932", "Japanese Shift-JIS"),
    ],
)
def test_legacy_exports_are_read_in_their_own_codepage(
    tmp_path: Path, language: str, codec: str, script: str
) -> None:
    text = legacy_export(language)
    encoding = "shift_jis" if codec == "cp932" else codec
    source, items = read(write(tmp_path, text.encode(encoding)))
    assert source.encoding == codec
    assert (
        source.encoding_note is not None and f"read as {codec} ({script})" in source.encoding_note
    )
    assert ";".join(source.headers) == text.split("\r\n")[0]
    assert all(isinstance(i, RawRecord) for i in items) and len(items) == 30
    read_back = [";".join(i.row.values()) for i in items if isinstance(i, RawRecord)]
    assert read_back == text.split("\r\n")[1:-1]


def test_short_western_file_stays_cp1252(tmp_path: Path) -> None:
    text = "email,name,company\r\nl@acme.fr,Hélène Lefèvre,Crédit Agricole\r\n"
    source, items = read(write(tmp_path, text.encode("cp1252")))
    assert source.encoding == "cp1252"
    assert source.encoding_note is not None and "read as cp1252" in source.encoding_note
    assert items == [
        RawRecord(2, {"email": "l@acme.fr", "name": "Hélène Lefèvre", "company": "Crédit Agricole"})
    ]


def test_unknown_encoding_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown encoding 'klingon'"):
        RecordSource(write(tmp_path, HEADER), encoding="klingon")


# -- dialect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_sniffed(tmp_path: Path, delimiter: str) -> None:
    rows = [["email", "name", "note"], ["a@b.co", "Ann", "x, y; z | w"], ["c@d.co", "Cy", ""]]
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerows(rows)
    source, items = read(write(tmp_path, buffer.getvalue()))
    assert source.delimiter == delimiter
    assert [i.row for i in items if isinstance(i, RawRecord)] == [
        dict(zip(rows[0], r, strict=True)) for r in rows[1:]
    ]


def test_delimiter_option_overrides_sniffing(tmp_path: Path) -> None:
    source, items = read(write(tmp_path, "email;name\na@b.co;Ann\n"), delimiter=",")
    assert source.headers == ("email;name",)
    assert items == [RawRecord(2, {"email;name": "a@b.co;Ann"})]
    source, _ = read(write(tmp_path, "email\tname\n"), delimiter="tab")
    assert source.delimiter == "\t"


def test_excel_sep_line_declares_the_delimiter(tmp_path: Path) -> None:
    source, items = read(write(tmp_path, "sep=;\nemail;name\na@b.co;Ann\n"))
    assert source.delimiter == ";" and source.header_line == 2
    assert items == [RawRecord(3, {"email": "a@b.co", "name": "Ann"})]


def test_quoted_newlines_keep_line_numbers_right(tmp_path: Path) -> None:
    text = (
        "email,note\r\n"
        'a@b.co,"line one\r\nline two\r\nline three"\r\n'
        "c@d.co,plain\r\n"
        'e@f.co,"x\ry"\r\n'  # a lone CR inside quotes is a line break too
        "g@h.co,last\r\n"
    )
    _, items = read(write(tmp_path, text))
    assert lines_of(items) == [(2, "ok"), (5, "ok"), (6, "ok"), (8, "ok")]
    assert isinstance(items[0], RawRecord)
    assert items[0].row["note"] == "line one\r\nline two\r\nline three"


# -- headers and preambles ---------------------------------------------------------------------


def test_linkedin_notes_preamble_is_skipped(tmp_path: Path) -> None:
    text = (
        "Notes:\n"
        '"When exporting your connection data, you may notice that some of the email addresses are '
        'missing. You will only see email addresses for connections who have allowed it, see https://x."\n'
        "\n"
        "First Name,Last Name,URL,Email Address,Company,Position,Connected On\n"
        "Alex,Chen,https://www.linkedin.com/in/alexchen,,Datadog,VP Engineering,12 Mar 2024\n"
    )
    source, items = read(write(tmp_path, text))
    assert source.header_line == 4
    assert source.headers[:3] == ("First Name", "Last Name", "URL")
    assert lines_of(items) == [(5, "ok")]


def test_skip_lines_skips_exactly_n_lines(tmp_path: Path) -> None:
    text = "Exported by Jane, 2024-05-01, all contacts\nreport v2\nemail,name\na@b.co,Ann\n"
    source, items = read(write(tmp_path, text), skip_lines=2)
    assert source.header_line == 3 and source.headers == ("email", "name")
    assert lines_of(items) == [(4, "ok")]


def test_rows_padded_by_excel_do_not_hide_a_narrow_header(tmp_path: Path) -> None:
    text = "email,name,x\n" + "".join(f"p{n}@acme.io,P{n},1,,,,,\n" for n in range(4))
    source, items = read(write(tmp_path, text))
    assert source.header_line == 1 and source.headers == ("email", "name", "x")
    assert lines_of(items) == [(n, "ok") for n in range(2, 6)]


def test_undecodable_bytes_for_the_codec_are_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@b.co,Ann\n".encode("utf-16") + b"\x00")
    with pytest.raises(InputError, match=r"in\.csv:\d+: cannot decode the input"):
        read(path)


def test_headers_are_trimmed_and_empty_ones_named(tmp_path: Path) -> None:
    source, _ = read(write(tmp_path, "  Email , First Name,,\na@b.co,Ann,,\n"))
    assert source.headers == ("Email", "First Name", "column 3", "column 4")


def test_repeated_headers_are_renamed_not_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "Email,Name,email ,Phone,Phone,Phone_2\na@b.co,Ann,x,1,2,3\n")
    source, records = read(path)
    assert source.headers == ("Email", "Name", "email_2", "Phone", "Phone_3", "Phone_2")
    assert source.copies == {"email_2": "Email", "Phone_3": "Phone"}
    assert records[0].row["Phone_3"] == "2" and records[0].row["email_2"] == "x"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"PK\x03\x04rest-of-a-zip", "Excel workbook"),
        (b"\x00a\x00b\x00c\x00d", "NUL bytes"),
        (b'email,"name\na@b.co,Ann\n', "unterminated quote in the header"),
        (b"email,na\x00me\na@b.co,Ann\n", "header contains a NUL byte"),
    ],
)
def test_whole_file_problems_are_input_errors(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read(write(tmp_path, data))


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: cannot open"):
        read(tmp_path / "nope.csv")


# -- bad rows ------------------------------------------------------------------------------------


def test_blank_rows_are_skipped_and_ragged_rows_rejected(tmp_path: Path) -> None:
    text = (
        HEADER + "\na@b.co,Ann,Acme\n,,\n   \nc@d.co,Cy\ne@f.co,Eve,Acme,extra\ng@h.co,Gus,Acme,,\n"
    )
    _, items = read(write(tmp_path, text))
    assert lines_of(items) == [(3, "ok"), (6, "ok"), (7, "ragged_row"), (8, "ok")]
    fewer, ragged, padded = items[1], items[2], items[3]
    assert isinstance(fewer, RawRecord) and fewer.row == {"email": "c@d.co", "First Name": "Cy"}
    assert isinstance(ragged, Reject) and ragged.row["(extra cells)"] == ["extra"]  # type: ignore[index]
    assert "4 cells but 3 columns" in ragged.message
    assert isinstance(padded, RawRecord) and padded.row["Company"] == "Acme"


def test_oversized_cell_rejects_the_row_and_the_next_is_read(tmp_path: Path) -> None:
    big = "x" * 100_000
    text = HEADER + f"a@b.co,{big},Acme\nc@d.co,Cy,Acme\n"
    _, items = read(write(tmp_path, text))
    assert lines_of(items) == [(2, "field_too_large"), (3, "ok")]
    assert isinstance(items[0], Reject) and items[0].field == "First Name"
    assert "100,000 bytes; the cap is 65,536" in items[0].message


def test_cap_counts_utf8_bytes_and_is_an_option(tmp_path: Path) -> None:
    text = HEADER + "a@b.co,ééééé,Acme\nc@d.co,eeeee,Acme\n"
    _, items = read(write(tmp_path, text), max_field_bytes=8)
    assert lines_of(items) == [(2, "field_too_large"), (3, "ok")]


@pytest.mark.parametrize("quoted", [False, True])
def test_cell_beyond_the_csv_module_limit_is_recovered(tmp_path: Path, quoted: bool) -> None:
    big = "line\n" * 60_000 if quoted else "y" * 300_000  # both past csv's own 131,072 limit
    cell = f'"{big}"' if quoted else big
    text = HEADER + f"a@b.co,{cell},Acme\nc@d.co,Cy,Acme\n"
    _, items = read(write(tmp_path, text))
    next_line = 3 + (big.count("\n") if quoted else 0)
    assert lines_of(items) == [(2, "field_too_large"), (next_line, "ok")]


def test_nul_byte_rejects_its_record(tmp_path: Path) -> None:
    _, items = read(write(tmp_path, HEADER + "a@b.co,A\x00nn,Acme\nc@d.co,Cy,Acme\n"))
    assert lines_of(items) == [(2, "malformed_record"), (3, "ok")]
    assert isinstance(items[0], Reject) and items[0].field == "First Name"
    assert "NUL" in items[0].message


def test_unterminated_quote_at_end_of_file(tmp_path: Path) -> None:
    text = HEADER + 'a@b.co,Ann,Acme\nc@d.co,"Cy,Acme\ne@f.co,Eve,Acme\n'
    _, items = read(write(tmp_path, text))
    assert lines_of(items) == [(2, "ok"), (3, "malformed_record"), (4, "ok")]
    assert isinstance(items[1], Reject) and "unterminated quote" in items[1].message
    assert items[1].row == 'c@d.co,"Cy,Acme\n'


def test_unterminated_quote_mid_file_loses_only_its_row(tmp_path: Path) -> None:
    rows = "".join(f"user{i}@acme.com,User {i},Acme\n" for i in range(10_000))  # > 131,072 chars
    text = HEADER + 'bad@acme.com,"Oops,Acme\n' + rows
    _, items = read(write(tmp_path, text))
    assert lines_of(items)[:2] == [(2, "malformed_record"), (3, "ok")]
    assert len(items) == 10_001 and all(isinstance(i, RawRecord) for i in items[1:])
    assert items[-1].line == 10_002


def test_over_long_line_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("octave_bulk.input.source.MAX_LINE_CHARS", 1000)
    path = write(tmp_path, HEADER + "a@b.co,Ann,Acme\n" + "z" * 5000 + "\n")
    with pytest.raises(InputError, match=r":3: line longer than 1,000 characters"):
        read(path)


# -- NDJSON and stdin ------------------------------------------------------------------------


def test_ndjson_lines_with_a_bad_one(tmp_path: Path) -> None:
    text = (
        '{"email": "a@b.co", "age": 42, "vip": true, "tags": ["x"], "note": null}\n'
        "\n"
        '{"email": "c@d.co", oops}\n'
        "[1, 2]\n"
        '{"email": "e@f.co"}'
    )
    source, items = read(write(tmp_path, text, "contacts.jsonl"))
    assert source.format == "ndjson" and source.headers == ("email", "age", "vip", "tags", "note")
    assert lines_of(items) == [
        (1, "ok"),
        (3, "malformed_record"),
        (4, "malformed_record"),
        (5, "ok"),
    ]
    assert items[0] == RawRecord(
        1, {"email": "a@b.co", "age": "42", "vip": "true", "tags": '["x"]', "note": ""}
    )
    assert isinstance(items[1], Reject) and items[1].row == '{"email": "c@d.co", oops}\n'


def test_json_array_is_explained(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="JSON array, not NDJSON"):
        read(write(tmp_path, '[{"email": "a@b.co"}]', "contacts.json"))


def test_format_is_sniffed_when_the_extension_says_nothing(tmp_path: Path) -> None:
    source, _ = read(write(tmp_path, '{"email": "a@b.co"}\n', "export"))
    assert source.format == "ndjson"
    source, _ = read(write(tmp_path, '{"email": "a@b.co"}\n', "export"), format="csv")
    assert source.format == "csv"


def test_stdin_is_read_as_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"\xef\xbb\xbfemail,name\r\na@b.co,Ann\r\n"
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))
    source, items = read("-")
    assert source.label == "<stdin>" and source.encoding == "utf-8-sig"
    assert items == [RawRecord(2, {"email": "a@b.co", "name": "Ann"})]


# -- fuzz ------------------------------------------------------------------------------------------

PIECES = st.sampled_from(
    [*'ab é@.,;\t|"\n\r\x00', '""', "Zoë", "x@y.co", "https://linkedin.com/in/x"]
)
CELLS = st.lists(PIECES, max_size=5).map("".join)


def physical_line(text: str, offset: int) -> int:
    return len(re.findall(r"\r\n|\r|\n", text[:offset])) + 1


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str, list[int]]:
    """A CSV written by the csv module: header with an email column, rows of random cells."""
    delimiter = draw(st.sampled_from(",;\t|"))
    width = draw(st.integers(1, 4))
    headers = ["email", *(f"col{i}" for i in range(1, width))]
    rows = draw(st.lists(st.lists(CELLS, max_size=width + 2), max_size=12))
    buffer = io.StringIO()
    # "\r\n" makes the writer quote every cell holding a CR or an LF (with "\n" a bare CR would
    # be written unquoted: a real line break, and a different file from the rows drawn).
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(headers)
    starts: list[int] = []
    for row in rows:
        offset = buffer.tell()
        writer.writerow(row)
        if "".join(row).strip():
            starts.append(offset)
    text = buffer.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]))
    return text.encode(encoding), delimiter, [physical_line(text, o) for o in starts]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sample=csv_files(), cap=st.sampled_from([12, 64 * 1024]))
def test_fuzz_structure_every_record_ends_once(
    tmp_path: Path, sample: tuple[bytes, str, list[int]], cap: int
) -> None:
    data, delimiter, starts = sample
    path = write(tmp_path, data)
    options = ReaderOptions(delimiter=delimiter, skip_lines=0, max_field_bytes=cap)
    with ContactReader(path, options) as reader:
        items = list(reader)
        assert reader.rows_read == len(items)
    assert all(isinstance(i, Contact | Reject) for i in items)
    assert [i.line for i in items] == starts


CSV_ISH = st.lists(PIECES | st.sampled_from(["\n", "\r\n", ",", '"'] * 3), max_size=60)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=600) | CSV_ISH.map(lambda parts: "".join(parts).encode()),
    prefix=st.sampled_from([b"", b"email,name,note\n", b'{"email": "a@b.co"}\n']),
    name=st.sampled_from(["in.csv", "in.ndjson", "in"]),
)
def test_fuzz_random_bytes_never_crash(
    tmp_path: Path, body: bytes, prefix: bytes, name: str
) -> None:
    path = write(tmp_path, prefix + body, name)
    try:
        with ContactReader(path, ReaderOptions(max_field_bytes=40)) as reader:
            items = list(reader)
    except InputError:
        return
    assert reader.rows_read == len(items)
    for item in items:
        assert item.line >= 1
        if isinstance(item, Reject):
            assert item.reason and item.message
