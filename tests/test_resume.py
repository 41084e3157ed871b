"""Crash safety over real processes: kill -9 at random moments, SIGINT, secrets in output.

The long form (more kills, more contacts) runs with OCTAVE_BULK_SOAK=1; CI runs the short form.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.simulator import parse_faults, parse_latency
from octave_bulk.state.inflight import InflightSlots
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, write_contacts

SOAK = os.environ.get("OCTAVE_BULK_SOAK") == "1"


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_pays_at_most_in_flight(
    make_sim: Any, tmp_path: Path
) -> None:
    kills, contacts, concurrency = (20, 2000, 16) if SOAK else (6, 400, 8)
    faults = parse_faults("500=0.03,reset=0.02,truncate=0.02")
    sim = make_sim(seed=21, latency=parse_latency("30ms:0.5"), faults=faults)
    rids = write_contacts(tmp_path / "in.csv", contacts)
    out = tmp_path / "out.ndjson"
    rng = random.Random(4)
    in_flight_at_kills = 0
    for _ in range(kills):
        run = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", str(concurrency))
        time.sleep(rng.uniform(0.6, 1.6))
        run.kill()
        done = {line["requestId"] for line in _complete_lines(out)}
        unknown = [
            rid for rid in InflightSlots.leftovers(side(out, ".inflight")) if rid not in done
        ]
        assert len(unknown) <= concurrency
        in_flight_at_kills += len(unknown)
        print(f"kill: {len(done)} done, {len(unknown)} in flight")
    code, err = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", str(concurrency)).finish()
    assert code == 0, err
    lines = read_lines(out)  # also asserts that no line is torn
    assert sorted(line["requestId"] for line in lines) == rids  # one line each, none lost
    successes = sim.stats()["successes"]
    extra_paid = sum(n - 1 for n in successes.values())
    print(f"kills={kills} in_flight_at_kills={in_flight_at_kills} extra_paid={extra_paid}")
    assert extra_paid <= in_flight_at_kills <= kills * concurrency
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["exit_code"] == 0
    # Each start caught the ledger up with what the kill left unindexed.
    checked = subprocess.run(
        [sys.executable, "-m", "octave_bulk", "ledger", "check", str(out)],
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_kill_9_after_a_cursor_save_resumes_from_it_without_loss(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(seed=5, latency=parse_latency("30ms:0.5"), faults=parse_faults("500=0.05"))
    rids = write_contacts(tmp_path / "in.csv", 500)
    out = tmp_path / "out.ndjson"
    run = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "8", "--rate", "50/s")
    _wait_for(side(out, ".cursor.json").exists, timeout=30)  # saved every 5 s
    time.sleep(0.5)
    run.kill()
    saved = json.loads(side(out, ".cursor.json").read_text())
    assert saved["line"] > 1
    done = {line["requestId"] for line in _complete_lines(out)}
    in_flight = len(set(InflightSlots.leftovers(side(out, ".inflight"))) - done)
    code, err = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "8").finish()
    assert code == 0, err
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["resume_cursor"]["rows_skipped_unread"] == saved["counts"]["read"] > 0
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    extra_paid = sum(n - 1 for n in sim.stats()["successes"].values())
    assert extra_paid <= in_flight <= 8


def _complete_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_drains_writes_summary_and_resumes_without_duplicates(
    make_sim: Any, tmp_path: Path, signum: signal.Signals
) -> None:
    sim = make_sim(latency=parse_latency("300ms:0.1"))
    rids = write_contacts(tmp_path / "in.csv", 80)
    out = tmp_path / "out.ndjson"
    run = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "4")
    _wait_for_lines(out, 4)
    run.signal(signum)  # SIGHUP: a closed SSH session drains like SIGINT
    code, err = run.finish(timeout=20)
    assert code == 130, err
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["exit_code"] == 130 and summary["stop_reason"] == "interrupted"
    assert InflightSlots.leftovers(side(out, ".inflight")) == []  # every call drained
    assert 0 < len(read_lines(out)) < len(rids)
    code, err = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "4").finish()
    assert code == 0, err
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    assert set(Counter(sim.stats()["successes"].values())) == {1}  # nobody paid twice


@pytest.mark.slow
def test_second_signal_stops_at_once_and_resume_still_holds(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("3s:0"))
    rids = write_contacts(tmp_path / "in.csv", 12)
    out = tmp_path / "out.ndjson"
    run = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "4")
    _wait_for(lambda: sim.stats()["in_flight"] == 4)
    run.signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.perf_counter()
    run.signal(signal.SIGINT)
    code, err = run.finish(timeout=20)
    assert code == 130, err
    assert time.perf_counter() - started < 2.5
    assert len(InflightSlots.leftovers(side(out, ".inflight"))) == 4
    sim.app.config = sim.app.config.__class__(latency=parse_latency("10ms:0"))
    code, err = Run(sim.url, tmp_path / "in.csv", out).finish()
    assert code == 0, err
    assert "outcome_unknown=4" in err
    assert sorted(line["requestId"] for line in read_lines(out)) == rids


@pytest.mark.slow
def test_the_key_never_appears_in_files_or_output(make_sim: Any, tmp_path: Path) -> None:
    faults = parse_faults("500=0.1,502=0.1,not_found=0.1,invalid_json=0.1")
    sim = make_sim(seed=2, faults=faults, forced={"c-00001": "400"})
    write_contacts(tmp_path / "in.csv", 40)
    out = tmp_path / "out.ndjson"
    variants = (
        [],
        ["--log-format", "json"],
        ["--log-file", str(tmp_path / "no" / "dir" / "x.log")],
    )
    outputs = [
        Run(sim.url, tmp_path / "in.csv", out, "--max-attempts", "2", *extra).finish()[1].encode()
        for extra in variants
    ]
    assert b"cannot open the log file" in outputs[2]  # refused before any call, no traceback
    crash = subprocess.run(  # a bug whose message holds the key: the traceback is redacted
        [sys.executable, "-c", _CRASH, "run", str(tmp_path / "in.csv"), "-o", str(out),
         "--agent", "ca_1", "--base-url", sim.url],
        capture_output=True, env={**os.environ, "OCTAVE_API_KEY": TEST_KEY},
    )  # fmt: skip
    assert crash.returncode == 70 and b"Traceback" in crash.stderr
    assert b"RuntimeError: a bug near ***" in crash.stderr
    outputs.append(crash.stdout + crash.stderr)
    status = subprocess.run(
        [sys.executable, "-m", "octave_bulk", "status", str(out), "--json"],
        capture_output=True, check=True, env={**os.environ, "OCTAVE_API_KEY": TEST_KEY},
    )  # fmt: skip
    outputs.append(status.stdout + status.stderr)
    secret = TEST_KEY.encode()
    for blob in outputs:
        assert secret not in blob
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["settings"]["api_key"] == "…" + TEST_KEY[-4:]


_CRASH = """\
import os, sys
import octave_bulk.run.engine as engine
async def run_batch(*args, **kwargs):
    raise RuntimeError("a bug near " + os.environ["OCTAVE_API_KEY"])
engine.run_batch = run_batch
from octave_bulk.cli.main import main
main(sys.argv[1:])
"""


def _wait_for_lines(path: Path, count: int, timeout: float = 20) -> None:
    _wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") >= count, timeout)


def _wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_sigint_during_a_long_429_pause_stops_at_once(make_sim: Any, tmp_path: Path) -> None:
    from octave_bulk.simulator import RetryAfterMix, parse_rate_limit

    mix = RetryAfterMix(seconds=1, date=0, absent=0)
    sim = make_sim(rate_limit=parse_rate_limit("1/min:1"), retry_after_mix=mix)
    write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    run = Run(sim.url, tmp_path / "in.csv", out, "--concurrency", "1")
    _wait_for(lambda: sim.stats()["totals"].get("rate_limited", 0) >= 1)  # paused for 60 s
    started = time.perf_counter()
    run.signal(signal.SIGINT)
    code, log = run.finish(timeout=30)
    assert code == 130, log
    assert time.perf_counter() - started < 5
