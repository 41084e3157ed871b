"""``export``: results file -> sequencer CSV, through real runs and hand-written lines."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.errors import ConfigError, InputError, StateError
from octave_bulk.export import PRESETS, export_results, html_to_text, text_to_html
from octave_bulk.run.engine import run_batch
from tests.helpers import read_lines, sim_settings, write_contacts

TRAILING = ["num_steps", "request_id", "completed_at"]
IDENTITY = {
    "generic": [
        "email", "first_name", "last_name", "company_name", "title", "linkedin_url",
        "company_domain", "crm_contact_id", "crm_lead_id", "crm_account_id", "other_crm_ids", "lang",
    ],
    "instantly": [
        "email", "first_name", "last_name", "company_name", "title", "linkedin_url",
        "company_domain",
    ],
    "lemlist": [
        "email", "firstName", "lastName", "companyName", "jobTitle", "linkedinUrl",
        "companyDomain",
    ],
}  # fmt: skip
IDENTITY["smartlead"] = IDENTITY["instantly"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def step_columns(n: int) -> list[str]:
    return [f"step{i}_{part}" for i in range(1, n + 1) for part in ("subject", "body")]


def result_line(
    rid: str,
    steps: list[tuple[Any, Any]],
    *,
    output_format: str | None = None,
    **contact: Any,
) -> str:
    """One results line as the engine writes it; ``steps`` are (subject, email text) pairs."""
    fields = {"email": f"{rid}@example.com", "firstName": "Ada", **contact, "requestId": rid}
    if output_format:
        fields["outputFormat"] = output_format
    emails = [{"email": body, "subject": subject, "sections": {}} for subject, body in steps]
    record = {
        "requestId": rid,
        "contact": fields,
        "response": {"_metadata": {"usage": 1.0}, "found": True, "data": {"emails": emails}},
        "attempts": 1,
        "latencyMs": 12.5,
        "completedAt": "2025-01-02T03:04:05.000Z",
    }
    return json.dumps(record) + "\n"


def write_results(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


async def real_run(make_sim: Any, tmp_path: Path, count: int, **settings: Any) -> Path:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", count)
    out = tmp_path / "results.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **settings))
    assert summary["counts"]["succeeded"] == count
    return out


async def test_real_run_through_every_preset(make_sim: Any, tmp_path: Path) -> None:
    results = await real_run(make_sim, tmp_path, 40)
    lines = {line["requestId"]: line for line in read_lines(results)}
    longest = max(len(line["response"]["data"]["emails"]) for line in lines.values())
    assert longest > 1
    for name in (name for name, preset in PRESETS.items() if preset.agent is None):
        out = tmp_path / f"{name}.csv"
        report = export_results(results, out, preset=name)
        header, rows = read_csv(out)
        assert header == IDENTITY[name] + step_columns(longest) + TRAILING
        assert report.rows == len(rows) == 40 and report.steps == longest
        assert report.warnings() == []
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        for row in rows:
            line = lines[row["request_id"]]
            emails = line["response"]["data"]["emails"]
            assert row["email"] == line["contact"]["email"]
            assert row["num_steps"] == str(len(emails))
            assert row["completed_at"] == line["completedAt"]
            for n, email in enumerate(emails, 1):
                assert row[f"step{n}_subject"] == email["subject"]
                assert row[f"step{n}_body"] == email["email"]
            for n in range(len(emails) + 1, longest + 1):
                assert row[f"step{n}_subject"] == row[f"step{n}_body"] == ""
        first = "first_name" if name != "lemlist" else "firstName"
        assert {row[first] for row in rows} == {f"First{n}" for n in range(40)}


async def test_html_run_exports_text_and_html(make_sim: Any, tmp_path: Path) -> None:
    results = await real_run(make_sim, tmp_path, 10, output_format="html")
    lines = {line["requestId"]: line for line in read_lines(results)}
    export_results(results, tmp_path / "text.csv", body_format="text")
    export_results(results, tmp_path / "html.csv", body_format="html")
    _, text_rows = read_csv(tmp_path / "text.csv")
    _, html_rows = read_csv(tmp_path / "html.csv")
    for text_row, html_row in zip(text_rows, html_rows, strict=True):
        emails = lines[text_row["request_id"]]["response"]["data"]["emails"]
        for n, email in enumerate(emails, 1):
            # The simulator's text format is its sections joined by blank lines.
            assert text_row[f"step{n}_body"] == "\n\n".join(email["sections"].values())
            assert "<" not in text_row[f"step{n}_body"]
            assert html_row[f"step{n}_body"] == email["email"]


async def test_text_run_exports_html_paragraphs(make_sim: Any, tmp_path: Path) -> None:
    results = await real_run(make_sim, tmp_path, 5)
    lines = {line["requestId"]: line for line in read_lines(results)}
    export_results(results, tmp_path / "html.csv", body_format="html")
    for row in read_csv(tmp_path / "html.csv")[1]:
        email = lines[row["request_id"]]["response"]["data"]["emails"][0]
        expected = "".join(
            "<p>" + html.escape(s, quote=False).replace("\n", "<br>") + "</p>"
            for s in email["sections"].values()
        )
        assert row["step1_body"] == expected


def test_formula_looking_cells_are_escaped(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line(
                "r1",
                [("=1+1", "-- see below"), ("@mention", "+44 20 7946 0000")],
                firstName='=HYPERLINK("http://evil.example","click")',
                lastName="-2+3",
                companyName="\tAcme",
                jobTitle="\rVP",
                companyDomain="acme.com",
            )
        ],
    )
    export_results(results, tmp_path / "o.csv")
    row = read_csv(tmp_path / "o.csv")[1][0]
    assert row["first_name"] == """'=HYPERLINK("http://evil.example","click")"""
    assert row["last_name"] == "'-2+3"
    assert row["company_name"] == "'\tAcme"
    assert row["title"] == "'\rVP"
    assert row["company_domain"] == "acme.com"
    assert row["step1_subject"] == "'=1+1" and row["step1_body"] == "'-- see below"
    assert row["step2_subject"] == "'@mention" and row["step2_body"] == "'+44 20 7946 0000"


def test_steps_columns_follow_the_longest_exported_sequence(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("one", [("s1", "b1")]),
            result_line("three", [("s1", "b1"), ("s2", "b2"), ("s3", "b3")]),
            result_line("two", [("s1", "b1"), ("s2", "b2")]),
            # The only 4-step result is blank, so it does not widen the file.
            result_line("four", [("s1", "b1"), ("s2", "b2"), ("s3", " "), ("s4", "b4")]),
        ],
    )
    report = export_results(results, tmp_path / "o.csv", preset="instantly")
    header, rows = read_csv(tmp_path / "o.csv")
    assert report.steps == 3 and header == IDENTITY["instantly"] + step_columns(3) + TRAILING
    assert [(r["request_id"], r["num_steps"]) for r in rows] == [
        ("one", "1"),
        ("three", "3"),
        ("two", "2"),
    ]
    assert rows[0]["step2_subject"] == rows[0]["step3_body"] == ""
    assert rows[1]["step3_body"] == "b3"


def test_blank_subject_or_body_is_left_out_and_reported(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("ok", [("Hello", "Body")]),
            result_line("empty-subject", [("Hello", "Body"), ("", "Body 2")]),
            result_line("space-body", [("Hello", " \n\t ")]),
            result_line("null-body", [("Hello", None)]),
            result_line("html-blank", [("Hello", "<p>&nbsp;</p><p> <br> </p>")]),
            result_line("no-steps", []),
        ],
    )
    report = export_results(results, tmp_path / "o.csv", body_format="html")
    _, rows = read_csv(tmp_path / "o.csv")
    assert [r["request_id"] for r in rows] == ["ok"]
    blank = ["empty-subject", "space-body", "null-body", "html-blank", "no-steps"]
    assert report.skipped_blank == blank and report.skipped_blank_count == 5
    assert report.rows == 1
    assert "5 result(s) left out" in report.warnings()[0]
    assert "empty-subject" in report.warnings()[0]


def test_bad_lines_and_a_torn_tail_are_skipped(tmp_path: Path) -> None:
    good = [result_line(f"g{n}", [("S", "B")]) for n in range(3)]
    torn = result_line("torn", [("S", "B")])[:-40]
    results = write_results(
        tmp_path / "r.ndjson",
        [
            good[0],
            "not json\n",
            "\n",
            "[1, 2]\n",
            good[1],
            '{"requestId": "x", "contact": {}}\n',
            good[2],
            torn,
        ],
    )
    size = results.stat().st_size
    report = export_results(results, tmp_path / "o.csv")
    assert [r["request_id"] for r in read_csv(tmp_path / "o.csv")[1]] == ["g0", "g1", "g2"]
    assert report.skipped_bad_lines == [2, 4, 6] and report.skipped_bad_count == 3
    assert report.torn_tail and report.lines == 7
    assert results.stat().st_size == size  # only read, never repaired: a run may own it
    assert any("incomplete last line" in note for note in report.warnings())


def test_long_cells_are_cut_with_a_warning(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("short", [("S", "x" * 10)]),
            result_line("long", [("S" * 30, "y" * 50), ("S", "-" + "z" * 40)]),
        ],
    )
    report = export_results(results, tmp_path / "o.csv", max_field_chars=20)
    rows = {r["request_id"]: r for r in read_csv(tmp_path / "o.csv")[1]}
    assert rows["short"]["step1_body"] == "x" * 10
    long = rows["long"]
    assert long["step1_subject"] == "S" * 20 and long["step1_body"] == "y" * 20
    assert long["step2_body"] == "'-" + "z" * 18  # escaped first, then cut to the limit
    assert report.truncated_cells == 3 and report.truncated_rows == 1
    assert report.truncated_ids == ["long"]
    assert "3 cell(s) in 1 row(s) cut to 20 characters" in report.warnings()[0]


def test_max_field_chars_preset_defaults(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r.ndjson", [result_line("big", [("S", "b" * 31_000)])])
    capped = export_results(results, tmp_path / "i.csv", preset="lemlist")
    assert capped.max_field_chars == 30_000 and capped.truncated_cells == 1
    assert len(read_csv(tmp_path / "i.csv")[1][0]["step1_body"]) == 30_000
    generic = export_results(results, tmp_path / "g.csv")
    assert generic.max_field_chars is None and generic.truncated_cells == 0
    unlimited = export_results(results, tmp_path / "u.csv", preset="smartlead", max_field_chars=0)
    assert unlimited.max_field_chars is None and unlimited.truncated_cells == 0
    assert len(read_csv(tmp_path / "u.csv")[1][0]["step1_body"]) == 31_000


def test_dash_writes_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(
        tmp_path / "r.ndjson", [result_line(f"r{n}", [("Hi", "Line 1\nLine 2")]) for n in range(3)]
    )
    report = export_results(results, "-", preset="lemlist")
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert report.rows == 3 and len(rows) == 4
    assert rows[0][:2] == ["email", "firstName"]
    assert rows[1][-3:] == ["1", "r0", "2025-01-02T03:04:05.000Z"]
    assert rows[1][8] == "Line 1\nLine 2"
    assert not list(tmp_path.glob("*.csv"))


def test_output_replaced_with_mode_0600(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r.ndjson", [result_line("a", [("S", "B")])])
    out = tmp_path / "o.csv"
    out.write_text("old content\n")
    os.chmod(out, 0o644)
    export_results(results, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes().startswith(b"email,first_name,")
    assert out.read_bytes().endswith(b"\r\n")  # RFC 4180 line ends, no BOM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "r.ndjson"]  # no temp left


def test_usage_and_input_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ndjson"
    with pytest.raises(InputError, match="nope.ndjson"):
        export_results(missing, tmp_path / "o.csv")
    results = write_results(tmp_path / "r.ndjson", [result_line("a", [("S", "B")])])
    with pytest.raises(ConfigError, match="unknown preset"):
        export_results(results, tmp_path / "o.csv", preset="outreach")
    with pytest.raises(ConfigError, match="max-field-chars"):
        export_results(results, tmp_path / "o.csv", max_field_chars=-1)
    with pytest.raises(ConfigError, match="overwrite the results"):
        export_results(results, results)
    with pytest.raises(StateError, match="cannot write the export"):
        export_results(results, tmp_path / "no-such-dir" / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_html_and_text_conversions() -> None:
    source = (
        "<p>Hi Ada,</p>\n  <p>Tom &amp; Jerry&#39;s <b>deal</b>:<br/>see "
        '<a href="https://x.example/?a=1&amp;b=2">the demo</a> or '
        '<a href="https://y.example">https://y.example</a></p>'
        "<ul><li>one</li><li>two</li></ul><p>Best,<br>Jo</p>"
    )
    assert html_to_text(source) == (
        "Hi Ada,\n\nTom & Jerry's deal:\nsee the demo (https://x.example/?a=1&b=2) or "
        "https://y.example\n\n- one\n- two\n\nBest,\nJo"
    )
    assert text_to_html("Hi <Ada> & co,\n\n\nLine 1\nLine 2\r\n") == (
        "<p>Hi &lt;Ada&gt; &amp; co,</p><p>Line 1<br>Line 2</p>"
    )
    assert text_to_html("  \n ") == ""


def test_plain_text_with_angle_brackets_is_not_treated_as_html(tmp_path: Path) -> None:
    body = "Use <b> tags?\n\nNo."
    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("t", [("S", body)], output_format="text"),
            result_line("m", [("S", "**Bold** call\n\n_ps_")], output_format="markdown"),
        ],
    )
    export_results(results, tmp_path / "o.csv")
    rows = {r["request_id"]: r for r in read_csv(tmp_path / "o.csv")[1]}
    assert rows["t"]["step1_body"] == body
    assert rows["m"]["step1_body"] == "**Bold** call\n\n_ps_"


def test_a_response_that_does_not_validate_is_a_bad_line(tmp_path: Path) -> None:
    def line(n: int, response: Any) -> str:
        record = {"requestId": f"r{n}", "contact": {"email": "a@example.com"}, "response": response}
        return json.dumps(record) + "\n"

    results = write_results(
        tmp_path / "r.ndjson",
        [
            result_line("ok", [("S", "B")]),
            line(2, {"found": True}),  # no data
            line(3, {"data": {"emails": None}}),
            line(4, {"data": {"emails": [{"subject": 5, "email": "B"}]}}),
            line(5, {"data": {"emails": [{"subject": "S", "email": ["B"]}]}}),
            line(6, "not an object"),
            # Only data.emails[].subject/email are read: the rest may take any shape.
            line(7, {"data": {"emails": [{"subject": "S", "email": "B", "sections": 1}]}}),
        ],
    )
    report = export_results(results, tmp_path / "o.csv")
    assert [r["request_id"] for r in read_csv(tmp_path / "o.csv")[1]] == ["ok", "r7"]
    assert report.skipped_bad_lines == [2, 3, 4, 5, 6] and report.skipped_blank_count == 0


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from octave_bulk.export import writer

    def full_disk(body: str, html_body: bool, *, to_html: bool) -> str:
        raise OSError(28, "No space left on device")

    results = write_results(tmp_path / "r.ndjson", [result_line("a", [("S", "B")])])
    out = tmp_path / "o.csv"
    out.write_text("old content\n")
    monkeypatch.setattr(writer, "render_body", full_disk)
    with pytest.raises(StateError, match="cannot write the export: No space left on device"):
        export_results(results, out)
    assert out.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "r.ndjson"]  # no temp left
