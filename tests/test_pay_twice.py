"""Nobody pays twice in async mode (issue 22, items 4-8): every test counts the submits the
simulator was paid for and checks that no contact was paid twice and none was lost.

- a handle under another documented name is read; a 2xx receipt without a handle stops the
  run and is never sent again silently;
- a handle the server repeats for two live jobs loses neither contact;
- a damaged jobs file (a bad line, cut short, deleted) pays nobody again: the ledger's submits
  without a result and without a job line are reported, resubmitted only on request;
- a 404 right after the submit (read-after-write lag) does not expire a paid job;
- an output reached through a symlink takes the file's own lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from octave_bulk.errors import StateError
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency
from octave_bulk.state.history import MIGRATIONS, RunHistory
from octave_bulk.state.index import OutputIndex
from tests.helpers import Run, read_lines, side, sim_settings, write_contacts

FAST_POLLS = {"mode": "async", "poll_interval_min": 0.05, "poll_interval_max": 0.5}


def submits(sim: Any) -> Counter[str]:
    """requestId -> paid submits the simulator counted."""
    return Counter(sim.stats()["calls"])


def settled_ids(out: Path) -> Counter[str]:
    """requestId -> lines in the results and errors files."""
    lines = read_lines(out) + read_lines(side(out, ".errors.ndjson"))
    return Counter(line["requestId"] for line in lines)


# -- item 4: the handle's name ------------------------------------------------------------


async def test_a_handle_under_agent_run_oid_is_read_and_each_contact_paid_once(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(async_handle_field="agentRunOId", latency=parse_latency("50ms"))
    rids = write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    assert summary["exit_code"] == 0
    assert submits(sim) == dict.fromkeys(rids, 1)  # was 5 paid submits per contact
    assert sorted(r["requestId"] for r in read_lines(out)) == rids


async def test_a_2xx_submit_without_a_handle_stops_the_run_and_is_never_paid_again(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(async_handle_field="", latency=parse_latency("50ms"))
    rids = write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, concurrency=1, **FAST_POLLS)
    first = await run_batch(tmp_path / "in.csv", out, settings)
    # The contract error stops the run (exit 3) after one paid submit, never retried.
    assert first["exit_code"] == 3 and first["fatal_kind"] == "no_handle"
    assert submits(sim) == {rids[0]: 1}
    (error,) = read_lines(side(out, ".errors.ndjson"))
    assert error["requestId"] == rids[0] and error["error"]["kind"] == "no_handle"
    assert error["error"]["retryable"] is False and "--retry-failed" in error["error"]["message"]
    assert "async_handle_fields" in error["error"]["message"]
    # The next run does not pay for that contact again (it pays the next one, and stops).
    second = await run_batch(tmp_path / "in.csv", out, settings)
    assert second["exit_code"] == 3 and second["counts"]["skipped_failed"] == 1
    assert submits(sim) == {rids[0]: 1, rids[1]: 1}
    assert settled_ids(out) == {rids[0]: 1, rids[1]: 1}


# -- item 8: the output through a symlink -----------------------------------------------------


async def test_an_output_through_a_symlink_takes_the_files_own_lock(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("200ms:0.1"))
    rids = write_contacts(tmp_path / "in.csv", 60)
    (tmp_path / "real").mkdir()
    out = tmp_path / "real" / "out.ndjson"
    link = tmp_path / "link.ndjson"
    link.symlink_to(out)
    running = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "4")
    lock = side(out, ".lock")
    deadline = time.monotonic() + 30
    while not (lock.exists() and out.exists() and out.read_bytes()):  # locked, writing
        assert time.monotonic() < deadline and running.process.poll() is None, "no first run"
        await anyio.sleep(0.02)
    with pytest.raises(StateError, match="another run is using this output"):
        await run_batch(tmp_path / "in.csv", link, sim_settings(sim.url))
    code, log = running.finish(timeout=60)
    assert code == 0, log
    assert submits(sim) == dict.fromkeys(rids, 1)  # was: most contacts paid by both runs
    assert not (tmp_path / "link.lock").exists()
    # The link names the same output: a run through it finds everything done.
    again = await run_batch(tmp_path / "in.csv", link, sim_settings(sim.url))
    assert again["counts"]["skipped_done"] == 60 and submits(sim) == dict.fromkeys(rids, 1)
    assert (tmp_path / "real" / "out.summary.json").exists()
    assert not (tmp_path / "link.summary.json").exists()


# -- item 5: a repeated handle ----------------------------------------------------------------


async def test_a_handle_repeated_for_two_live_jobs_loses_neither_contact(
    make_sim: Any, tmp_path: Path
) -> None:
    # The third submit gets the second's handle while that job still runs.
    sim = make_sim(async_repeat_handle_every=3, latency=parse_latency("300ms"))
    rids = write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, concurrency=1, **FAST_POLLS)
    first = await run_batch(tmp_path / "in.csv", out, settings)
    assert submits(sim) == dict.fromkeys(rids, 1)
    assert settled_ids(out) == dict.fromkeys(rids, 1)  # was: one contact had no line at all
    errors = read_lines(side(out, ".errors.ndjson"))
    assert sorted(e["requestId"] for e in errors) == rids[1:3]
    assert {e["error"]["kind"] for e in errors} == {"handle_repeated"}
    assert errors[0]["asyncHandle"] == errors[1]["asyncHandle"]
    assert not any(e["error"]["retryable"] for e in errors)
    assert sorted(r["requestId"] for r in read_lines(out)) == [rids[0], *rids[3:]]
    assert first["exit_code"] == 1
    # Both jobs were settled in the jobs file: the next run neither polls nor pays them.
    second = await run_batch(tmp_path / "in.csv", out, settings)
    assert second["async_jobs"]["carried_from_earlier_runs"] == 0
    assert second["counts"]["skipped_failed"] == 2 and submits(sim) == dict.fromkeys(rids, 1)


# -- item 6: a damaged jobs file --------------------------------------------------------------


def _damage(jobs: Path, how: str) -> None:
    lines = jobs.read_bytes().splitlines(keepends=True)
    if how == "bad_line":
        lines[2] = lines[2][:40] + b"\n"  # one line cut short, the file still whole
        jobs.write_bytes(b"".join(lines))
    elif how == "cut":
        jobs.write_bytes(b"".join(lines[:4]))
    else:
        jobs.unlink()


@pytest.mark.parametrize(("how", "lost"), [("bad_line", 1), ("cut", 6), ("deleted", 10)])
async def test_a_damaged_jobs_file_pays_nobody_again(
    make_sim: Any, tmp_path: Path, how: str, lost: int
) -> None:
    sim = make_sim(latency=parse_latency("1s"))
    rids = write_contacts(tmp_path / "in.csv", 10)
    out = tmp_path / "out.ndjson"
    # Every job is still pending when the first run stops polling: all ten are awaited.
    first = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, job_timeout=0.2, **FAST_POLLS)
    )
    assert first["async_jobs"]["given_up_after_job_timeout"] == 10
    jobs = side(out, ".jobs.ndjson")
    assert len(read_lines(jobs)) == 10
    _damage(jobs, how)

    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    assert submits(sim) == dict.fromkeys(rids, 1)  # was: the lost ones were paid again
    assert second["exit_code"] == 1
    assert second["async_jobs"]["lost_not_resubmitted"] == lost
    assert second["counts"]["succeeded"] == 10 - lost
    if how == "bad_line":
        (quarantined,) = read_lines(side(out, ".corrupt.ndjson"))
        assert quarantined["file"] == str(jobs) and quarantined["line"] == 3

    # Paying for them again is a choice the user makes.
    third = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, resubmit_expired=True, **FAST_POLLS)
    )
    assert third["exit_code"] == 0 and third["async_jobs"]["submitted"] == lost
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    assert sum(submits(sim).values()) == 10 + lost


# -- item 7: a 404 right after the submit ------------------------------------------------------


async def test_a_404_right_after_the_submit_does_not_expire_a_paid_job(
    make_sim: Any, tmp_path: Path
) -> None:
    # The status store sees a job 1 s after its submit; the first polls come at 0.05 s.
    sim = make_sim(async_status_lag=1.0, latency=parse_latency("100ms"))
    rids = write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    assert summary["exit_code"] == 0  # was: every job expired at its first poll
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    assert submits(sim) == dict.fromkeys(rids, 1)
    assert not read_lines(side(out, ".errors.ndjson"))


def test_submits_recorded_before_the_upgrade_are_not_taken_for_lost(tmp_path: Path) -> None:
    # A ledger of the version before job_settled, holding one async submit of its output.
    ledger, out = tmp_path / "out.ledger.sqlite", tmp_path / "out.ndjson"
    before = next(n for n, step in enumerate(MIGRATIONS) if "job_settled" in step)
    db = sqlite3.connect(ledger)
    for step in MIGRATIONS[:before]:
        db.execute(step)
    db.execute("INSERT INTO outputs (path) VALUES (?)", (str(out.resolve()),))
    db.execute(
        "INSERT INTO calls (output_id, request_id, attempt, outcome) VALUES (1, 'c-old', 1, ?)",
        ("submitted",),
    )
    db.execute(f"PRAGMA user_version = {before}")
    db.commit()
    db.close()
    with RunHistory.open(ledger) as history:
        index = OutputIndex(history, out)
        assert index.unsettled_submits() == []  # nothing tells: taken as settled
        submit = ("c-new", "run", 1, 1.0, 2.0, 200, "submitted", 0.0, 0)
        index.record([], [submit], (0, 0))
        assert index.unsettled_submits() == ["c-new"]
        index.record([(1, "c-new", "ok", "run", 0)], [], (10, 0), ["c-new"])
        assert index.unsettled_submits() == []
