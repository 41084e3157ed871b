"""The run history (``OUT.ledger.sqlite``): a row per run, ``history``, ``--budget`` across
runs, and what a broken or newer ledger does."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from octave_bulk.cli import cli
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, write_contacts


def run(url: str, tmp_path: Path, *extra: str) -> Result:
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_1", "--base-url", url, "--rate", "none", "--no-progress", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})


def history(tmp_path: Path, *extra: str) -> Result:
    args = ["history", str(tmp_path / "out.ndjson"), *extra]
    return CliRunner().invoke(cli, args)


def test_every_run_is_a_row_with_its_counts(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00001": "not_found"})
    write_contacts(tmp_path / "in.csv", 4)
    assert run(sim.url, tmp_path).exit_code == 1
    write_contacts(tmp_path / "in.csv", 6)
    # c-00001 skipped as failed for good: reported, but tonight's own contacts all succeeded
    assert run(sim.url, tmp_path).exit_code == 0
    listed = history(tmp_path, "--json")
    assert listed.exit_code == 0, listed.output
    second, first = json.loads(listed.output)
    assert (first["paid_calls"], first["succeeded"], first["failed"]) == (4, 3, 1)
    assert (second["paid_calls"], second["succeeded"], second["skipped_done"]) == (2, 2, 3)
    assert (first["exit_code"], second["exit_code"]) == (1, 0)
    assert first["finished_at"] and first["settings"]["api_key"] != TEST_KEY
    assert TEST_KEY not in listed.output
    lines = read_lines(tmp_path / "out.ndjson")
    assert {line["runId"] for line in lines} == {first["run_id"], second["run_id"]}
    table = history(tmp_path)
    assert table.exit_code == 0 and first["run_id"] in table.output
    assert table.output.index(first["run_id"]) < table.output.index(second["run_id"])


def test_a_budget_holds_across_runs(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 6)
    assert run(sim.url, tmp_path, "--budget", "10/day").exit_code == 0
    write_contacts(tmp_path / "in.csv", 10, start=6)
    stopped = run(sim.url, tmp_path, "--budget", "10/day")
    assert stopped.exit_code == 5
    assert "budget 10/day is spent" in stopped.output
    assert sim.stats()["totals"]["calls"] == 10  # 6, then the 4 the budget had left
    again = run(sim.url, tmp_path, "--budget", "10/day")
    assert again.exit_code == 5 and sim.stats()["totals"]["calls"] == 10
    assert run(sim.url, tmp_path, "--budget", "20/day").exit_code == 0
    assert sim.stats()["totals"]["calls"] == 16


def test_a_bad_budget_is_refused_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    result = run(sim.url, tmp_path, "--budget", "5000/fortnight")
    assert result.exit_code == 2
    assert "budget" in result.output and "hour, day or week" in result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


def test_a_broken_ledger_stops_the_run_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    ledger = side(tmp_path / "out.ndjson", ".ledger.sqlite")
    ledger.write_bytes(b"not a database" * 100)
    result = run(sim.url, tmp_path)
    assert result.exit_code == 2
    assert "ledger" in result.output and str(ledger) in result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


def test_a_ledger_from_a_newer_version_is_not_touched(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    ledger = side(tmp_path / "out.ndjson", ".ledger.sqlite")
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA user_version = 99")
    result = run(sim.url, tmp_path)
    assert result.exit_code == 2 and "newer octave-bulk" in result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


def test_history_without_a_run_says_so(tmp_path: Path) -> None:
    result = history(tmp_path)
    assert result.exit_code == 2 and "no run history yet" in result.output


def test_export_new_writes_each_night_once(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert run(sim.url, tmp_path).exit_code == 0
    out = tmp_path / "out.ndjson"

    def export(csv_name: str, *extra: str) -> list[str]:
        args = ["export", str(out), "-o", str(tmp_path / csv_name), *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        with open(tmp_path / csv_name, newline="", encoding="utf-8") as handle:
            return [row["request_id"] for row in csv.DictReader(handle)]

    assert export("monday.csv", "--new") == ["c-00000", "c-00001", "c-00002"]
    assert export("again.csv", "--new") == []  # nothing new since
    write_contacts(tmp_path / "in.csv", 5)  # two more people on Tuesday
    assert run(sim.url, tmp_path).exit_code == 0
    assert export("tuesday.csv", "--new") == ["c-00003", "c-00004"]
    assert export("tuesday-lemlist.csv", "--new", "--preset", "lemlist") == [
        f"c-{n:05d}"
        for n in range(5)  # a preset's first --new: everything
    ]
    (monday, tuesday) = reversed(json.loads(history(tmp_path, "--json").output))
    assert export("by-run.csv", "--run", tuesday["run_id"]) == ["c-00003", "c-00004"]
    assert export("by-run-1.csv", "--run", monday["run_id"]) == ["c-00000", "c-00001", "c-00002"]
    assert len(export("all.csv")) == 5
    assert len(export("since.csv", "--since", "2000-01-01")) == 5
    assert export("future.csv", "--since", "2999-01-01") == []


def test_status_says_how_much_of_the_input_is_done(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 5)
    assert run(sim.url, tmp_path, "--max-calls", "3").exit_code == 5
    status = CliRunner().invoke(cli, ["status", str(tmp_path / "out.ndjson"), "--json"])
    progress = json.loads(status.output)["input_progress"]
    assert (progress["requests"], progress["done"], progress["remaining"]) == (5, 3, 2)
    text = CliRunner().invoke(cli, ["status", str(tmp_path / "out.ndjson")]).output
    assert "3 of 5 done, 2 remaining" in text


def test_a_shared_ledger_keeps_one_budget_for_two_outputs(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    ledger = tmp_path / "shared.sqlite"
    write_contacts(tmp_path / "in.csv", 6)

    def run_to(name: str) -> Result:
        args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / name), "--agent", "ca_1",
                "--base-url", sim.url, "--rate", "none", "--no-progress", "--ledger", str(ledger),
                "--budget", "10/day"]  # fmt: skip
        return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})

    assert run_to("a.ndjson").exit_code == 0
    assert run_to("b.ndjson").exit_code == 5  # the other pipeline spent 6 of the 10
    assert sim.stats()["totals"]["calls"] == 10
    listed = CliRunner().invoke(cli, ["history", str(tmp_path / "b.ndjson"), "--ledger",
                                      str(ledger), "--json"])  # fmt: skip
    (only,) = json.loads(listed.output)
    assert only["paid_calls"] == 4 and only["stop_reason"] == "budget"
    assert not side(tmp_path / "a.ndjson", ".ledger.sqlite").exists()


def test_processes_opening_a_new_shared_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Two runs starting together on a new shared ledger: the second waits for the first's
    migration and must not apply it again ("table runs already exists")."""
    import threading

    from octave_bulk.state.history import RunHistory

    for attempt in range(20):
        path = tmp_path / f"shared-{attempt}.sqlite"
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def open_it(
            path: Path = path, errors: list[BaseException] = errors, start: Any = start
        ) -> None:
            start.wait()
            try:
                with RunHistory.open(path) as history:
                    history.runs()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
