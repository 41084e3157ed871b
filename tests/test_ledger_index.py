"""The ledger's index of an output (contacts, calls, coverage, snapshot): written with each
group commit, caught up from the files after a crash, rebuilt from them, and never a reason to
pay twice or to lose a result."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, write_contacts


def run(url: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Result:
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_1", "--base-url", url, "--rate", "none", "--no-progress",
            "--max-attempts", "2", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY, **(env or {})})


def ledger(tmp_path: Path, command: str) -> Result:
    return CliRunner().invoke(cli, ["ledger", command, str(tmp_path / "out.ndjson")])


def query(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(side(tmp_path / "out.ndjson", ".ledger.sqlite")) as db:
        return db.execute(sql).fetchall()


def calls(sim: Any) -> int:
    return int(sim.stats()["totals"].get("calls", 0))


def test_every_person_and_every_call_is_in_the_ledger(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "not_found", "c-00002": "503"})
    write_contacts(tmp_path / "in.csv", 5)
    assert run(sim.url, tmp_path).exit_code == 1
    states = dict(query(tmp_path, "SELECT state, COUNT(*) FROM contacts GROUP BY state"))
    assert states == {"ok": 3, "permanent": 1, "retryable": 1}
    rows = query(tmp_path, "SELECT request_id, attempt, status, outcome, sent_at <= answered_at "
                           "FROM calls ORDER BY request_id, attempt")  # fmt: skip
    assert len(rows) == calls(sim) == 6  # c-00002 was tried twice
    assert ("c-00002", 1, 503, "http_503", 1) in rows and ("c-00002", 2, 503, "http_503", 1) in rows
    assert ("c-00000", 1, 200, "success", 1) in rows
    (run_id,) = {line["runId"] for line in read_lines(tmp_path / "out.ndjson")}
    assert query(tmp_path, "SELECT DISTINCT run_id FROM calls") == [(run_id,)]
    offsets = query(tmp_path, "SELECT success_offset FROM contacts WHERE state = 'ok'")
    raw = (tmp_path / "out.ndjson").read_bytes()
    assert sorted(raw[offset : offset + 14] for (offset,) in offsets) == [b'{"requestId":"'] * 3
    checked = ledger(tmp_path, "check")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["agree"] is True


def test_lines_past_the_index_are_caught_up_without_paying_again(
    make_sim: Any, tmp_path: Path
) -> None:
    """A kill between a group's fsync and its rows: the files hold lines the ledger lacks."""
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 4)
    assert run(sim.url, tmp_path).exit_code == 0
    db = side(tmp_path / "out.ndjson", ".ledger.sqlite")
    shutil.copy(db, tmp_path / "monday.sqlite")
    write_contacts(tmp_path / "in.csv", 8)
    assert run(sim.url, tmp_path).exit_code == 0
    assert calls(sim) == 8
    shutil.copy(tmp_path / "monday.sqlite", db)  # the ledger as it was before the 4 new lines
    assert ledger(tmp_path, "check").exit_code == 1
    assert run(sim.url, tmp_path).exit_code == 0
    assert calls(sim) == 8  # nothing paid again: the tail of the files was read
    checked = json.loads(ledger(tmp_path, "check").output)
    assert checked["agree"] and checked["people_in_ledger"] == 8


def test_a_results_file_cut_short_is_indexed_again_and_the_rest_resent(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 6)
    assert run(sim.url, tmp_path).exit_code == 0
    out = tmp_path / "out.ndjson"
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]))  # restored from an older backup, say
    assert run(sim.url, tmp_path).exit_code == 0
    assert calls(sim) == 10  # the files are the truth: the 4 missing are paid again
    checked = json.loads(ledger(tmp_path, "check").output)
    assert checked["agree"] and checked["people_in_ledger"] == 6


def test_a_file_replaced_under_the_snapshot_is_read_whole(make_sim: Any, tmp_path: Path) -> None:
    """Same size or longer, other bytes: the snapshot no longer describes the file."""
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert run(sim.url, tmp_path).exit_code == 0
    out = tmp_path / "out.ndjson"
    first = out.read_bytes()
    write_contacts(tmp_path / "in.csv", 3, start=10)
    shutil.move(out, tmp_path / "kept.ndjson")
    assert run(sim.url, tmp_path).exit_code == 0  # people 10-12 into a fresh file
    second = out.read_bytes()
    out.write_bytes(second + first)  # then both results, in one file
    write_contacts(tmp_path / "in.csv", 13)
    assert run(sim.url, tmp_path).exit_code == 0
    assert calls(sim) == 6 + 7  # 3, 3, then only people 3-9: none of the 6 paid again
    assert json.loads(ledger(tmp_path, "check").output)["agree"]


def test_rebuild_recreates_the_index_from_the_files(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00003": "not_found"})
    write_contacts(tmp_path / "in.csv", 5)
    assert run(sim.url, tmp_path).exit_code == 1
    with sqlite3.connect(side(tmp_path / "out.ndjson", ".ledger.sqlite")) as db:
        db.execute("DELETE FROM contacts")
        db.execute("UPDATE outputs SET snapshot = NULL")
    assert ledger(tmp_path, "check").exit_code == 1
    rebuilt = ledger(tmp_path, "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.output)["people"] == {"ok": 4, "permanent": 1}
    assert ledger(tmp_path, "check").exit_code == 0
    assert len(query(tmp_path, "SELECT * FROM runs")) == 1  # the history is kept
    assert run(sim.url, tmp_path).exit_code == 0  # c-00003 failed for good: skipped, reported
    assert calls(sim) == 5


def test_a_ledger_locked_by_another_writer_stops_before_any_call(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert run(sim.url, tmp_path).exit_code == 0
    write_contacts(tmp_path / "in.csv", 6)
    holder = sqlite3.connect(side(tmp_path / "out.ndjson", ".ledger.sqlite"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing, and not letting go
        holder.execute("UPDATE runs SET read = read")
        # Readers are never blocked by a writer.
        assert CliRunner().invoke(cli, ["history", str(tmp_path / "out.ndjson")]).exit_code == 0
        status = CliRunner().invoke(cli, ["status", str(tmp_path / "out.ndjson")])
        assert status.exit_code == 0 and "succeeded: 3" in status.output
        locked = run(sim.url, tmp_path, env={"OCTAVE_LEDGER_TIMEOUT": "0.3"})
    finally:
        holder.rollback()
        holder.close()
    assert locked.exit_code == 2
    assert "ledger" in locked.output and "locked" in locked.output
    assert calls(sim) == 3
    assert len(read_lines(tmp_path / "out.ndjson")) == 3  # nothing lost either
    assert run(sim.url, tmp_path).exit_code == 0 and calls(sim) == 6


def test_two_runs_at_once_share_one_ledger(make_sim: Any, tmp_path: Path) -> None:
    """Two outputs, one ``--ledger`` (one budget for two pipelines), running at the same time:
    one writer at a time, both complete, each output's rows agree with its files."""
    sim = make_sim(latency=parse_latency("20ms:0.3"))
    shared = tmp_path / "shared.ledger.sqlite"
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        write_contacts(folder / "in.csv", 300, start=0 if name == "a" else 1000)
        runs.append(
            Run(
                sim.url,
                folder / "in.csv",
                folder / "out.ndjson",
                "--ledger",
                str(shared),
                "--concurrency",
                "16",
            )  # fmt: skip
        )
    for run_ in runs:
        code, log = run_.finish()
        assert code == 0, log
    assert calls(sim) == 600
    for name in ("a", "b"):
        out = tmp_path / name / "out.ndjson"
        checked = CliRunner().invoke(cli, ["ledger", "check", str(out), "--ledger", str(shared)])
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.output)["people_in_ledger"] == 300
    with sqlite3.connect(shared) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 600
