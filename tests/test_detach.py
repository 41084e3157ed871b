"""Async for operators (issue 24, part 7): ``run --mode async --detach`` submits, records
every handle and exits 0 without polling; ``octave-bulk collect OUT`` polls them and writes
their results (never a submit, resumable after a kill -9); a hung job is given up on at a
bound derived from the job times seen; heartbeats name the jobs awaited; ``plan --mode async``
counts them apart and models the submit rate."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from octave_bulk.errors import ConfigError
from octave_bulk.observe.log import TextFormatter
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, sim_settings, write_contacts

FAST_POLLS = {"mode": "async", "poll_interval_min": 0.05, "poll_interval_max": 0.3}


def totals(sim: Any) -> Counter[str]:
    return Counter(sim.stats()["totals"])


def awaited(out: Path) -> list[dict[str, Any]]:
    """The jobs file's submit lines without a settled line."""
    lines = read_lines(side(out, ".jobs.ndjson"))
    settled = {(x["handle"], x["requestId"]) for x in lines if "settled" in x}
    return [x for x in lines if "settled" not in x and (x["handle"], x["requestId"]) not in settled]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no OCTAVE_ setting but the test key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    return env | {"OCTAVE_API_KEY": TEST_KEY} | extra


def octave_bulk(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "octave_bulk", *args],
        env=cli_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def detached_run(sim: Any, tmp_path: Path, count: int) -> tuple[list[str], Path, str]:
    """``run --mode async --detach`` of ``count`` contacts in a subprocess: their requestIds,
    the output and the run's log (it exited 0)."""
    rids = write_contacts(tmp_path / "first.csv", count)
    out = tmp_path / "out.ndjson"
    code, log = Run(sim.url, tmp_path / "first.csv", out, "--mode", "async", "--detach").finish()
    assert code == 0, log
    return rids, out, log


def test_detach_submits_every_contact_and_collect_writes_every_result(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("200ms:0.1"))
    rids, out, log = detached_run(sim, tmp_path, 40)
    # Every contact submitted once, every handle durable, no result polled for.
    assert totals(sim)["async_submits"] == 40
    assert sorted(x["requestId"] for x in awaited(out)) == rids
    assert not read_lines(out)
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["async_jobs"]["awaiting_result"] == 40
    assert summary["exit_rule"]["reason"] == (
        f"detached: 40 jobs awaited, collect with octave-bulk collect {out}"
    )
    assert f"octave-bulk collect {out}" in log
    # status names the awaited jobs and the command that collects them.
    status = octave_bulk("status", str(out), cwd=tmp_path)
    assert "result not in yet: 40" in status.stdout, status.stdout
    assert f"`octave-bulk collect {out}` polls them" in status.stdout
    assert "0 of 40 done, 40 awaited (async), 0 remaining" in status.stdout
    # collect: no input, no flag but the key; it polls and writes every result.
    collected = octave_bulk("collect", str(out), "--no-progress", cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    assert totals(sim)["async_submits"] == 40  # nothing submitted again
    assert not awaited(out)
    again = json.loads(side(out, ".summary.json").read_text())
    assert again["async_jobs"]["carried_from_earlier_runs"] == 40
    assert again["counts"]["succeeded"] == 40 and again["paid_calls"] == 0
    # Then the nightly run has nothing left to send.
    night = Run(sim.url, tmp_path / "first.csv", out, "--mode", "async")
    assert night.finish()[0] == 0
    assert totals(sim)["async_submits"] == 40


def test_detach_without_async_mode_is_a_usage_error(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    done = octave_bulk(
        "run", "in.csv", "-o", "out.ndjson", "--agent", "ca_test", "--detach", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "detach" in done.stderr and "--mode async" in done.stderr
    assert not (tmp_path / "out.ndjson").exists()


async def test_collect_of_an_output_without_jobs_is_a_usage_error(tmp_path: Path) -> None:
    from octave_bulk.run.collect import collect_jobs

    with pytest.raises(ConfigError, match="no async jobs recorded"):
        await collect_jobs(tmp_path / "out.ndjson", sim_settings("http://127.0.0.1:9"))


@pytest.mark.slow
def test_a_kill_9_during_collect_loses_nothing_and_submits_nothing(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("1500ms:0.3"))
    rids, out, _ = detached_run(sim, tmp_path, 150)
    assert totals(sim)["async_submits"] == 150
    env = cli_env()
    config = tmp_path / "polls.toml"
    config.write_text("poll_interval_min = 0.05\npoll_interval_max = 0.3\n")
    command = [sys.executable, "-m", "octave_bulk", "collect", str(out), "--no-progress"]
    with open(tmp_path / "collect-1.log", "wb") as log:
        killed = subprocess.Popen([*command, "--config", str(config)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_lines(out)) < 20:
            time.sleep(0.05)
        killed.kill()
        killed.wait()
    written = len(read_lines(out))
    assert 0 < written < 150  # killed in the middle
    finished = subprocess.run([*command, "--config", str(config)], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    results = read_lines(out)
    assert sorted(r["requestId"] for r in results) == rids  # nothing lost, nothing twice
    assert totals(sim)["async_submits"] == 150  # never submitted again
    assert not awaited(out)


async def test_a_hung_job_is_given_up_on_at_the_derived_bound(
    make_sim: Any, tmp_path: Path
) -> None:
    # One job never finishes; the others take ~50 ms. The bound is 3 x the slowest of the
    # latest jobs, at least the floor (0.5 s here): far below the hour it used to be.
    rids = write_contacts(tmp_path / "in.csv", 12)
    sim = make_sim(latency=parse_latency("50ms:0.1"), forced={rids[3]: "hang"})
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, job_timeout_floor=0.5, **FAST_POLLS)
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    assert summary["async_jobs"]["given_up_after_job_timeout"] == 1
    assert summary["counts"]["succeeded"] == 11
    assert summary["exit_code"] == 1
    assert "1 async job still pending at job_timeout" in summary["exit_rule"]["reason"]
    assert [x["requestId"] for x in awaited(out)] == [rids[3]]  # left for the next run


async def test_heartbeats_name_the_jobs_awaited_and_when_they_are_given_up_on(
    make_sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rids = write_contacts(tmp_path / "in.csv", 6)
    sim = make_sim(latency=parse_latency("50ms"), forced={rids[0]: "hang"})
    out = tmp_path / "out.ndjson"
    settings = sim_settings(
        sim.url, job_timeout=1.5, heartbeat_interval=0.2, log_format="json", **FAST_POLLS
    )
    with caplog.at_level(logging.INFO, logger="octave_bulk"):
        await run_batch(tmp_path / "in.csv", out, settings)
    text = TextFormatter()
    beats = [text.format(r) for r in caplog.records if r.getMessage() == "heartbeat"]
    # The submits are over at once (in flight 0); the beats say what the run waits for.
    waiting = [b for b in beats if "jobs_awaited=1" in b]
    assert waiting, beats
    assert all(re.search(r"give_up_at=20\d\d-\d\d-\d\dT", b) for b in waiting), waiting


def test_plan_async_counts_awaited_jobs_apart_and_times_the_submits(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("200ms"))
    _, out, _ = detached_run(sim, tmp_path, 40)
    write_contacts(tmp_path / "in.csv", 60)  # the same 40 people, and 20 new ones
    shown = octave_bulk(
        "plan", "in.csv", "-o", str(out), "--agent", "ca_test", "--base-url", sim.url,
        "--mode", "async", "--rate", "10/s", "--concurrency", "8", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    # The 40 awaited are polled, never paid again: not "to send".
    assert plan["awaiting"] == 40 and plan["to_send"] == 20
    # 20 submits at 10/s (loopback submits take milliseconds: the rate paces them), then
    # one job: 30-60 s, as this output has no async result yet. Not waves of calls (90 s+).
    assert plan["seconds"] == pytest.approx([2.0 + 30.0, 2.0 + 60.0])
    assert "submits" in plan["time_basis"]
    assert totals(sim)["async_submits"] == 40  # planning sends nothing


def test_the_progress_line_names_the_jobs_awaited(make_sim: Any, tmp_path: Path) -> None:
    import pty
    import select

    sim = make_sim(latency=parse_latency("1500ms"))
    write_contacts(tmp_path / "in.csv", 6)
    env = cli_env(COLUMNS="250", LINES="50", TERM="xterm")
    terminal, its_end = pty.openpty()  # the bar is drawn on a terminal only
    command = [
        sys.executable, "-m", "octave_bulk", "run", "in.csv", "-o", "out.ndjson",
        "--agent", "ca_test", "--base-url", sim.url, "--mode", "async", "--progress",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdin=its_end, stdout=its_end, stderr=its_end
    )
    os.close(its_end)
    seen = b""
    while True:
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the process closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(terminal)
    assert process.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert re.search(r"6 jobs awaited; the oldest given up on at \d\d:\d\d:\d\d UTC", text), text[
        -2000:
    ]


async def test_a_collect_later_than_job_timeout_still_polls_every_job(
    make_sim: Any, tmp_path: Path
) -> None:
    # A collect the morning after: every job is older than the bound, and done. Each is
    # polled (and written), not given up on unseen.
    sim = make_sim(latency=parse_latency("20ms"))
    rids = write_contacts(tmp_path / "in.csv", 10)
    out = tmp_path / "out.ndjson"
    submit = sim_settings(sim.url, detach=True, **FAST_POLLS)
    detached = await run_batch(tmp_path / "in.csv", out, submit)
    assert detached["exit_code"] == 0 and len(awaited(out)) == 10
    oldest = min(x["submittedAt"] for x in awaited(out))
    await anyio.sleep(max(0.0, oldest + 1.2 - time.time()))  # older than the bound below
    from octave_bulk.run.collect import collect_jobs

    collected = await collect_jobs(out, sim_settings(sim.url, job_timeout=1.0, **FAST_POLLS))
    assert collected["async_jobs"]["given_up_after_job_timeout"] == 0
    assert collected["exit_code"] == 0
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    assert totals(sim)["async_submits"] == 10


def test_a_pipeline_step_cannot_detach(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text(
        'input = "in.csv"\noutput_dir = "out"\n[[steps]]\nname = "q"\nagent = "ca_1"\n'
        'mode = "async"\ndetach = true\n'
    )
    done = octave_bulk("pipeline", str(file), cwd=tmp_path)
    assert done.returncode == 2
    assert "steps[1] (q): detach leaves the results to a later `collect`" in done.stderr
