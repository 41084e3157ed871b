"""Spending: ``--budget`` across runs that share a ledger, are killed or cannot write it;
the credits check; hostile ``_metadata.usage``; the ledger's file modes; ``export --new``'s
mark (issue 22, items 9, 10, 14, 15, 16)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from octave_bulk.agents.fields import MAX_CREDITS_PER_CALL
from octave_bulk.cli import cli
from octave_bulk.errors import StateError
from octave_bulk.simulator import SimulatorConfig
from octave_bulk.simulator.config import Latency
from octave_bulk.simulator.hostile import HostileConfig, serve_hostile
from octave_bulk.state.history import RunHistory
from tests.conftest import TEST_KEY
from tests.helpers import Run, side, write_contacts

ENV = {"OCTAVE_API_KEY": TEST_KEY}


def _run(url: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Result:
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"), "--agent",
            "ca_1", "--base-url", url, "--rate", "none", "--no-progress", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env=ENV | (env or {}))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """The usual umask 022, under which files are created 0644 unless the code says not."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_ledger_and_its_wal_and_shm_are_private(
    make_sim: Any, tmp_path: Path, wide_umask: None
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert _run(sim.url, tmp_path).exit_code == 0
    ledger = side(tmp_path / "out.ndjson", ".ledger.sqlite")
    wal, shm = (ledger.with_name(ledger.name + suffix) for suffix in ("-wal", "-shm"))
    with sqlite3.connect(ledger) as db:  # a reader's write: SQLite makes the -wal and -shm
        db.execute("CREATE TABLE probe (x)")
        assert wal.exists() and shm.exists()
        assert [_mode(p) for p in (ledger, wal, shm)] == [0o600] * 3


def test_a_ledger_left_world_readable_is_made_private(
    make_sim: Any, tmp_path: Path, wide_umask: None
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    ledger = side(tmp_path / "out.ndjson", ".ledger.sqlite")
    wal, shm = (ledger.with_name(ledger.name + suffix) for suffix in ("-wal", "-shm"))
    with sqlite3.connect(ledger) as held:  # an older version's ledger, open elsewhere: 0644
        held.execute("PRAGMA journal_mode = WAL")
        held.execute("CREATE TABLE probe (x)")
        assert [_mode(p) for p in (ledger, wal, shm)] == [0o644] * 3
        assert _run(sim.url, tmp_path).exit_code == 0
        assert [_mode(p) for p in (ledger, wal, shm)] == [0o600] * 3


def test_hostile_usage_is_clamped_and_counted(tmp_path: Path) -> None:
    """Six answers carry ``_metadata.usage`` 1e308, -1000, 30 digits, NaN, "5" and 1e400: the
    credits stay finite and >= 0 in the summary, the history and the metrics."""
    rids = write_contacts(tmp_path / "in.csv", 10)
    hostile = HostileConfig(forced=dict.fromkeys(rids[:6], "bad_usage"))
    metrics = tmp_path / "octave.prom"
    with serve_hostile(SimulatorConfig(usage_per_run=1.0), hostile) as sim:
        result = _run(sim.url, tmp_path, "--metrics-textfile", str(metrics))
        assert sim.front is not None and sim.front.counts["bad_usage"] == 6
    assert result.exit_code == 0, result.output
    # 4 answers of 1 credit; 1e308, 30 digits and 1e400 count as the most a call can cost.
    expected = 4 + 3 * MAX_CREDITS_PER_CALL
    summary = json.loads(side(tmp_path / "out.ndjson", ".summary.json").read_text())
    assert (summary["credits"], summary["usage_anomalies"]) == (expected, 6)
    listed = CliRunner().invoke(cli, ["history", str(tmp_path / "out.ndjson"), "--json"])
    assert json.loads(listed.output)[0]["credits"] == expected
    gauge = f'octave_bulk_credits_used{{output="{tmp_path / "out.ndjson"}"}} {expected}'
    assert gauge in metrics.read_text().splitlines()
    assert result.output.count("usage_anomaly") == 6


def _calls(sim: Any) -> int:
    return int(sim.stats()["totals"].get("calls", 0))


def test_two_runs_sharing_a_ledger_never_exceed_the_budget_together(
    make_sim: Any, tmp_path: Path
) -> None:
    """Started together, each with 100 contacts: before, each took the whole budget."""
    sim = make_sim(latency=Latency(0.5, 0.0))
    ledger = tmp_path / "shared.sqlite"
    runs = []
    for name in ("a", "b"):
        write_contacts(tmp_path / f"{name}.csv", 100, start=0 if name == "a" else 100)
        runs.append(Run(sim.url, tmp_path / f"{name}.csv", tmp_path / f"{name}.ndjson",
                        "--ledger", str(ledger), "--budget", "60/day", "--concurrency", "8"))  # fmt: skip
    ended = [run.finish(timeout=120) for run in runs]
    assert [code for code, _ in ended] == [5, 5], ended
    assert _calls(sim) == 60


def test_a_run_killed_early_counts_against_the_budget(make_sim: Any, tmp_path: Path) -> None:
    """Killed before its first history update (5 s), a run's calls counted 0 before."""
    sim = make_sim(latency=Latency(1.0, 0.0))
    write_contacts(tmp_path / "in.csv", 100)
    out = tmp_path / "out.ndjson"
    first = Run(sim.url, tmp_path / "in.csv", out, "--budget", "20/day", "--concurrency", "8")
    deadline = time.monotonic() + 60
    while _calls(sim) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.kill()
    assert _calls(sim) >= 4
    rerun = _run(sim.url, tmp_path, "--budget", "20/day", "--concurrency", "8")
    assert rerun.exit_code == 5, rerun.output
    assert _calls(sim) <= 20


def test_a_failed_final_history_write_is_exit_6_and_the_budget_still_holds(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim()
    update = RunHistory.update

    def failing_at_the_end(self: RunHistory, run_id: str, **fields: Any) -> None:
        if "finished_at" in fields:
            raise StateError(f"{self.path}: cannot write the ledger (disk I/O error)")
        update(self, run_id, **fields)

    write_contacts(tmp_path / "in.csv", 6)
    with monkeypatch.context() as patched:
        patched.setattr(RunHistory, "update", failing_at_the_end)
        failed = _run(sim.url, tmp_path, "--budget", "10/day")
    assert failed.exit_code == 6, failed.output
    summary = json.loads(side(tmp_path / "out.ndjson", ".summary.json").read_text())
    assert summary["exit_code"] == 6 and "history row" in summary["file_error"]
    assert "disk I/O error" in failed.output
    write_contacts(tmp_path / "in.csv", 10, start=6)
    assert _run(sim.url, tmp_path, "--budget", "10/day").exit_code == 5
    assert _calls(sim) == 10  # 6, then the 4 the budget had left


def _export(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["export", str(tmp_path / "out.ndjson"), *args])


def _exported(tmp_path: Path, name: str) -> list[str]:
    result = _export(tmp_path, "-o", str(tmp_path / name), "--new")
    assert result.exit_code == 0, result.output
    with open(tmp_path / name, newline="", encoding="utf-8") as handle:
        return [row["request_id"] for row in csv.DictReader(handle)]


def test_export_new_to_stdout_is_refused_and_moves_no_mark(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert _run(sim.url, tmp_path).exit_code == 0
    refused = _export(tmp_path, "-o", "-", "--new")
    assert refused.exit_code == 2
    assert "--new cannot write to stdout" in refused.output and "-o new.csv" in refused.output
    assert "c-00000" not in refused.output
    assert _exported(tmp_path, "new.csv") == ["c-00000", "c-00001", "c-00002"]


def test_export_undo_mark_moves_the_mark_back_one_export(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    assert _run(sim.url, tmp_path).exit_code == 0
    assert _exported(tmp_path, "monday.csv") == ["c-00000", "c-00001", "c-00002"]
    write_contacts(tmp_path / "in.csv", 5)
    assert _run(sim.url, tmp_path).exit_code == 0
    assert _exported(tmp_path, "tuesday.csv") == ["c-00003", "c-00004"]
    undone = _export(tmp_path, "--undo-mark")
    assert undone.exit_code == 0, undone.output
    assert "back at 3 results lines (it was at 5)" in undone.output
    assert _exported(tmp_path, "tuesday-again.csv") == ["c-00003", "c-00004"]
    assert _export(tmp_path, "--undo-mark").exit_code == 0  # back to Monday's mark again
    twice = _export(tmp_path, "--undo-mark")
    assert twice.exit_code == 2 and "undone already" in twice.output
    assert _exported(tmp_path, "tuesday-third.csv") == ["c-00003", "c-00004"]
    other = _export(tmp_path, "--undo-mark", "--preset", "lemlist")
    assert other.exit_code == 2 and "no export --new mark of preset lemlist" in other.output


def _stdin_contacts(tmp_path: Path, count: int) -> str:
    write_contacts(tmp_path / "stdin.csv", count)
    return (tmp_path / "stdin.csv").read_text(encoding="utf-8")


def _stdin_run(url: str, tmp_path: Path, text: str, *extra: str) -> Result:
    args = ["run", "-", "-o", str(tmp_path / "out.ndjson"), "--agent", "ca_1", "--base-url",
            url, "--rate", "none", "--no-progress", "--concurrency", "4", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env=ENV, input=text)


def test_credits_are_checked_without_the_agent_lookup(make_sim: Any, tmp_path: Path) -> None:
    """``check_agent = false`` skips the agent lookup only: 50 contacts on 5 credits."""
    sim = make_sim(agents={"ca_1": "EMAIL"}, usage_per_run=1.0, credits_max=5)
    write_contacts(tmp_path / "in.csv", 50)
    result = _run(sim.url, tmp_path, env={"OCTAVE_CHECK_AGENT": "false"})
    assert result.exit_code == 3, result.output
    assert "50 credits, but 5 remain" in result.output
    assert _calls(sim) == 0


def test_stdin_is_checked_against_its_limit(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(agents={"ca_1": "EMAIL"}, usage_per_run=1.0, credits_max=5)
    refused = _stdin_run(sim.url, tmp_path, _stdin_contacts(tmp_path, 50), "--limit", "20")
    assert refused.exit_code == 3, refused.output
    assert "up to 20 contacts" in refused.output and "but 5 remain" in refused.output
    assert _calls(sim) == 0


def test_stdin_without_a_limit_warns_and_stops_once_the_credits_are_spent(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(agents={"ca_1": "EMAIL"}, usage_per_run=1.0, credits_max=5)
    result = _stdin_run(sim.url, tmp_path, _stdin_contacts(tmp_path, 50))
    assert result.exit_code == 3, result.output
    assert "credits_not_checked" in result.output and "the input is stdin" in result.output
    assert "warning: credits not checked before the run" in result.output
    summary = json.loads(side(tmp_path / "out.ndjson", ".summary.json").read_text())
    assert "stdin" in summary["credits_not_checked"] and summary["stop_reason"] == "credits"
    assert _calls(sim) == 5 and sim.stats()["credits_used"] == 5


def test_a_budget_the_ledger_cannot_hold_stops_before_any_call(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim()

    def locked(self: RunHistory, *args: Any) -> tuple[int, int]:
        raise StateError(f"{self.path}: cannot write the ledger (database is locked)")

    monkeypatch.setattr(RunHistory, "hold_calls", locked)
    write_contacts(tmp_path / "in.csv", 5)
    result = _run(sim.url, tmp_path, "--budget", "10/day")
    assert result.exit_code == 2, result.output
    assert "cannot be held in the ledger" in result.output and "database is locked" in result.output
    assert _calls(sim) == 0
