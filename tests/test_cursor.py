"""The resume cursor: a resume skips the input's settled prefix unread, and only when safe."""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.run.engine import run_batch
from octave_bulk.state.cursor import Frontier, ResumeCursor
from tests.helpers import read_lines, side, sim_settings

HEADER = ["requestId", "email", "firstName", "lastName", "companyName", "jobTitle"]


def write_messy(path: Path, count: int, extra: list[list[str]] | None = None) -> list[str]:
    """Contacts with multi-line quoted cells, bad emails and a repeated row; returns the ids
    of the contacts that should succeed."""
    good: list[str] = []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for n in range(count):
            rid = f"c-{n:04d}"
            title = 'VP\nSales,\n"EMEA"' if n % 7 == 0 else "VP"
            email = "not-an-email" if n % 11 == 5 else f"p{n}@example.com"
            writer.writerow([rid, email, f"First{n}", "Doe", "Acme", title])
            if n % 11 != 5:
                good.append(rid)
            if n == 12:
                writer.writerow([f"c-{3:04d}", "p3@example.com", "First3", "Doe", "Acme", "VP"])
        for row in extra or []:
            writer.writerow(row)
            good.append(row[0])
    return good


def rejects_of(out: Path) -> list[tuple[int, str]]:
    return sorted((r["line"], r["reason"]) for r in read_lines(side(out, ".rejects.ndjson")))


@pytest.mark.slow
async def test_resume_skips_the_settled_prefix_and_reports_as_a_full_read(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    good = write_messy(path, 80)
    control_out = tmp_path / "control" / "out.ndjson"
    control = await run_batch(path, control_out, sim_settings(sim.url))
    sim.app.reset()

    out = tmp_path / "out.ndjson"
    first = await run_batch(path, out, sim_settings(sim.url, max_calls=40))
    assert first["exit_code"] == 5
    second = await run_batch(path, out, sim_settings(sim.url))

    skipped = second["resume_cursor"]["rows_skipped_unread"]
    assert 30 <= skipped <= 50, second["resume_cursor"]
    assert sorted(line["requestId"] for line in read_lines(out)) == sorted(good)
    assert all(n == 1 for n in sim.stats()["calls"].values())
    assert sim.stats()["totals"]["calls"] == len(good)
    assert rejects_of(out) == rejects_of(control_out)
    for name in ("read", "rejected", "duplicate"):
        assert second["counts"][name] == control["counts"][name], name
    assert second["counts"]["skipped_done"] + second["counts"]["succeeded"] == len(good)
    assert second["rejects_by_reason"] == control["rejects_by_reason"]
    assert second["exit_code"] == control["exit_code"] == 0  # rejects alone: a normal night

    third = await run_batch(path, out, sim_settings(sim.url))
    assert third["resume_cursor"]["rows_skipped_unread"] == control["counts"]["read"]
    assert third["paid_calls"] == 0 and third["exit_code"] == 0
    assert rejects_of(out) == rejects_of(control_out)


async def test_a_rerun_that_only_skips_saves_the_whole_prefix(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    write_messy(path, 40)
    out = tmp_path / "out.ndjson"
    first = await run_batch(path, out, sim_settings(sim.url))
    side(out, ".cursor.json").unlink()
    reread = await run_batch(path, out, sim_settings(sim.url))
    assert reread["resume_cursor"]["rows_skipped_unread"] == 0 and reread["paid_calls"] == 0
    again = await run_batch(path, out, sim_settings(sim.url))
    assert again["resume_cursor"]["rows_skipped_unread"] == first["counts"]["read"]
    assert again["counts"] == reread["counts"]


async def test_cursor_is_ignored_when_the_output_is_gone(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    good = write_messy(path, 40)
    out = tmp_path / "out.ndjson"
    await run_batch(path, out, sim_settings(sim.url))
    out.unlink()
    again = await run_batch(path, out, sim_settings(sim.url))
    assert again["resume_cursor"]["rows_skipped_unread"] == 0
    assert sorted(line["requestId"] for line in read_lines(out)) == sorted(good)


async def test_cursor_is_ignored_when_the_input_or_settings_change(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    write_messy(path, 40)
    out = tmp_path / "out.ndjson"
    await run_batch(path, out, sim_settings(sim.url))

    good = write_messy(path, 40, extra=[["new-1", "new@example.com", "N", "D", "Acme", "VP"]])
    grown = await run_batch(path, out, sim_settings(sim.url))
    assert grown["resume_cursor"] == {"rows_skipped_unread": 0, "note": "input changed"}
    assert grown["paid_calls"] == 1
    assert sorted(line["requestId"] for line in read_lines(out)) == sorted(good)

    other = await run_batch(path, out, sim_settings(sim.url, lang="fr"))
    assert other["resume_cursor"]["note"] == "settings changed"


def test_frontier_stops_before_a_retryable_failure() -> None:
    frontier = Frontier(ResumeCursor(line=10, rejects_bytes=100))
    frontier.add(11, 100, "skipped_done", open_id="a")
    frontier.add(12, 150, "rejected", reason="invalid_email")
    frontier.add(14, 150, "skipped_done", open_id="b")
    frontier.add(15, 150, "skipped_done", open_id="c")
    frontier.add(16, 150, "skipped_done")
    assert frontier.cursor().line == 10  # "a" is still open
    frontier.settle("c")
    frontier.settle("a")
    assert frontier.cursor().line == 12 and frontier.cursor().rejects_bytes == 150
    frontier.block("b")  # failed retryably: a resume must read it again
    frontier.add(17, 150, "skipped_done")
    cursor = frontier.cursor()
    assert cursor.line == 12
    assert cursor.counts == {"read": 2, "skipped_done": 1, "rejected": 1}
    assert cursor.rejects_by_reason == {"invalid_email": 1}


def test_frontier_counts_a_permanent_failure_as_skipped_failed() -> None:
    frontier = Frontier(ResumeCursor())
    frontier.add(2, 0, "skipped_done", open_id="a")
    frontier.settle("a", "skipped_failed")
    assert frontier.cursor().line == 2
    assert frontier.cursor().counts == {"read": 1, "skipped_failed": 1}


async def test_a_named_pipe_input_is_read_whole(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    source = tmp_path / "src.csv"
    good = write_messy(source, 30)
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(source.read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "out.ndjson"
    summary = await run_batch(fifo, out, sim_settings(sim.url))
    writer.join(timeout=5)
    assert summary["resume_cursor"]["note"] == "the input is not a regular file"
    assert sorted(line["requestId"] for line in read_lines(out)) == sorted(good)
    assert not side(out, ".cursor.json").exists()
