"""One classification pass: validate, plan, --dry-run and run admit the input alike; the input
is read at most twice before the first call; ``plan --list`` names whom the run pays; rows
``--where`` leaves out are counted apart; the person key is the one files on disk hold."""

from __future__ import annotations

import builtins
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result

from octave_bulk.cli import cli
from octave_bulk.run.engine import run_batch
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, sim_settings

pytestmark = pytest.mark.anyio

HEADER = ["requestId", "email", "firstName", "lastName", "companyName", "jobTitle"]


def person(n: int, title: str = "VP", rid: str = "") -> list[str]:
    return [rid, f"p{n}@example.com", f"First{n}", "Doe", "Acme", title]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


FIRST_NIGHT = [person(n) for n in range(8)] + [
    person(90, rid="gone-1"),  # not found: failed for good
    person(91, rid="flaky-1"),  # a server error every attempt: failed, retryable
]

SECOND_NIGHT = [
    person(6, title="CEO"),  # p6 edited, but p6's paid record is below: a duplicate of it
    *(person(n) for n in range(4)),  # done, unchanged
    person(4, title="CTO"),  # edited: paid again
    person(5),
    person(5),  # the same row twice: one duplicate
    person(6),  # the paid record: already done
    ["", "not-an-email", "Bad", "Row", "Acme", "VP"],  # rejected
    ["", "", "No", "Identity", "Acme", "VP"],  # rejected
    person(20),  # new
    person(21),  # new
    person(90, rid="gone-1"),  # failed for good before: skipped
    person(91, rid="flaky-1"),  # failed before: sent again
]


async def invoke(*args: str) -> Result:
    """``octave-bulk ARGS`` in-process (in a thread: the command runs its own event loop)."""
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, list(args)))


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``octave-bulk ARGS`` in a subprocess (``run`` handles its signals in its main thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    command = [sys.executable, "-m", "octave_bulk", *args]
    env["OCTAVE_API_KEY"] = TEST_KEY
    return await anyio.run_process(command, env=env, check=False)


async def cli_json(*args: str) -> Any:
    result = await invoke(*args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def sim_flags(url: str) -> list[str]:
    return ["--agent", "ca_test", "--base-url", url, "--rate", "none"]


async def two_nights(make_sim: Any, tmp_path: Path) -> tuple[Any, Path, Path]:
    """Night one on a simulator that fails two people; night two's input, not run yet."""
    first = make_sim(forced={"gone-1": "not_found", "flaky-1": "500"})
    out = tmp_path / "out.ndjson"
    night1 = write_rows(tmp_path / "monday.csv", FIRST_NIGHT)
    summary = await run_batch(night1, out, sim_settings(first.url, max_attempts=2))
    assert summary["counts"]["succeeded"] == 8
    assert summary["counts"]["failed_permanent"] == summary["counts"]["failed_retryable"] == 1
    return make_sim(), out, write_rows(tmp_path / "tuesday.csv", SECOND_NIGHT)


async def test_validate_plan_dry_run_and_run_count_a_messy_night_alike(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, out, night2 = await two_nights(make_sim, tmp_path)
    checked = await cli_json("validate", str(night2), "-o", str(tmp_path / "v.ndjson"), "--json")
    planned = await cli_json("plan", str(night2), "-o", str(out), *sim_flags(sim.url), "--json")
    dry = await run_batch(night2, out, sim_settings(sim.url, dry_run=True))
    ran = await run_batch(night2, out, sim_settings(sim.url))
    counted = ran["counts"]
    expected = {"read": 15, "rejected": 2, "duplicate": 2, "skipped_done": 6, "skipped_failed": 1}
    assert {k: counted[k] for k in expected} == expected
    assert counted["queued"] == 4 and ran["paid_calls"] == 4  # p4, p20, p21, flaky-1
    assert planned["counts"] == expected | {"filtered_out": 0} and planned["to_send"] == 4
    assert {k: dry["counts"][k] for k in expected} == expected and dry["would_send"] == 4
    # validate has no output: everything kept is valid, the rejects and duplicates the same.
    assert checked["read"] == 15 and checked["duplicates"] == 2
    assert checked["valid"] == 4 + 6 + 1
    assert sum(checked["rejected"].values()) - checked["duplicates"] == 2


async def test_plan_list_names_exactly_whom_the_next_run_pays(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, out, night2 = await two_nights(make_sim, tmp_path)
    planned = await cli_json(
        "plan", str(night2), "-o", str(out), *sim_flags(sim.url), "--json", "--list"
    )
    listed = {c["requestId"]: c for c in planned["contacts"]}
    text = await invoke("plan", str(night2), "-o", str(out), *sim_flags(sim.url))
    assert "to be paid" not in text.output  # without --list, no list
    shown = await invoke("plan", str(night2), "-o", str(out), *sim_flags(sim.url), "--list")
    assert "to be paid (4):" in shown.output
    await run_batch(night2, out, sim_settings(sim.url))
    assert set(sim.stats()["calls"]) == set(listed)  # the very requestIds the run paid for
    by_who = {c["who"]: c["reason"] for c in listed.values()}
    assert by_who == {
        "p4@example.com": "jobTitle changed",
        "p20@example.com": "new",
        "p21@example.com": "new",
        "p91@example.com": "failed before",
    }
    lines = {c["who"]: c["line"] for c in listed.values()}
    assert lines["p4@example.com"] == 7 and lines["p91@example.com"] == 16


class FirstCallMark(httpx.AsyncBaseTransport):
    """Marks the first paid call (a POST to an agent) in the run's audit trail."""

    def __init__(self, inner: httpx.AsyncBaseTransport, trail: list[str]) -> None:
        self.inner, self.trail = inner, trail

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "call" not in self.trail:
            self.trail.append("call")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def opens_before_first_call(
    path: Path, out: Path, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> int:
    """How often the run opened ``path`` before its first paid call."""
    trail: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path) and "call" not in trail:
            trail.append("open")
        return real_open(file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", counting_open)
        async with FirstCallMark(httpx.AsyncHTTPTransport(), trail) as transport:
            await run_batch(path, out, sim_settings(sim.url), transport=transport)
    assert "call" in trail
    return trail.index("call")


async def test_the_input_is_read_at_most_twice_before_the_first_call(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every open of the input is counted: one is the resume cursor's identity (the hash of its
    # first 64 KiB, state/cursor.py), the others are passes over it.
    sim = make_sim()
    first = write_rows(tmp_path / "first.csv", [person(n) for n in range(30)])
    # Nothing to plan (no results yet, no credits to count): one pass, to send.
    assert await opens_before_first_call(first, tmp_path / "out.ndjson", sim, monkeypatch) == 2
    # Results to guard, credits to count: once to plan, once to send.
    rows = [person(n, "CTO" if n % 10 == 0 else "VP") for n in range(40)]  # 3 edited, 10 new
    second = write_rows(tmp_path / "second.csv", rows)
    assert await opens_before_first_call(second, tmp_path / "out.ndjson", sim, monkeypatch) == 3


async def test_rows_left_out_by_where_are_counted_apart_with_their_row(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    rows = [person(n) for n in range(6)]
    await run_batch(
        write_rows(tmp_path / "in.csv", rows),
        tmp_path / "scored.ndjson",
        sim_settings(sim.url, agent_type="qualify-person", check_agent=False),
    )
    scored = tmp_path / "scored.ndjson"
    kept = sum(1 for r in read_lines(scored) if r["response"]["data"]["score"] >= 5)
    assert 0 < kept < 6, "the simulator's scores should split the people"
    where = ["--where", "data['score'] >= 5"]
    planned = await cli_json(
        "plan",
        str(scored),
        "-o",
        str(tmp_path / "next.ndjson"),
        *sim_flags(sim.url),
        *where,
        "--json",
    )
    assert planned["to_send"] == kept and planned["counts"]["rejected"] == 0
    assert planned["counts"]["filtered_out"] == 6 - kept
    out = tmp_path / "next.ndjson"
    done = await run_cli(
        "run", str(scored), "-o", str(out), *sim_flags(sim.url), "--no-progress", *where
    )
    printed = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, printed
    assert f"left out by --where {6 - kept}" in printed and "rejected" not in printed
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["counts"]["filtered_out"] == 6 - kept and summary["counts"]["rejected"] == 0
    left = [r for r in read_lines(side(out, ".rejects.ndjson")) if r["reason"] == "filtered_out"]
    assert len(left) == 6 - kept
    assert all(r["row"]["@response"] for r in left)  # the row is kept in its record


async def test_the_person_key_on_disk_is_the_one_earlier_versions_wrote(
    make_sim: Any, tmp_path: Path
) -> None:
    # An agent whose body leaves the CRM ids out, keyed by one (--key crmContactId): the key
    # comes from the recorded contact, as earlier versions wrote it (pinned below).
    sim = make_sim()
    header = ["email", "firstName", "lastName", "companyName", "jobTitle", "crmContactId"]
    row = ["p0@example.com", "First0", "Doe", "Acme", "VP", "100"]
    out, flags = tmp_path / "out.ndjson", {"agent_type": "enrich-person", "key": "crmContactId"}

    def night(name: str, title: str) -> Path:
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, row[:4] + [title] + row[5:]])
        return path

    monday = night("monday.csv", "VP")
    await run_batch(monday, out, sim_settings(sim.url, check_agent=False, **flags))
    (line,) = read_lines(out)
    assert line["personKey"] == "9483ac6f537e7162"  # id_key("enrich-person|crmContactId:100")
    tuesday = night("tuesday.csv", "CTO")
    planned = await cli_json(
        "plan", str(tuesday), "-o", str(out), *sim_flags(sim.url),
        "--agent-type", "enrich-person", "--person-key", "crmContactId", "--json", "--list",
    )  # fmt: skip
    assert [c["reason"] for c in planned["contacts"]] == ["jobTitle changed"]
    again = await run_batch(monday, out, sim_settings(sim.url, check_agent=False, **flags))
    assert again["paid_calls"] == 0 and again["counts"]["skipped_done"] == 1
