"""Submit and poll (``--mode async``) against the simulator's async API: each contact is
submitted once, its handle is durable before it is polled, a kill -9 costs no paid call (the
next run polls the handles it left), callbacks and polls feed one completion path, and the
contract's conflicts (body shape, status words, expired handles) are settings."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.errors import ConfigError
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, sim_settings, write_contacts
from tests.ports import free_port

FAST_POLLS = {"mode": "async", "poll_interval_min": 0.05, "poll_interval_max": 0.5}


def totals(sim: Any) -> Counter[str]:
    return Counter(sim.stats()["totals"])


async def test_each_contact_is_submitted_once_and_every_result_written(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("300ms:0.2"), faults={"500": 0.1, "not_found": 0.05})
    rids = write_contacts(tmp_path / "in.csv", 120)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    results, errors = read_lines(out), read_lines(side(out, ".errors.ndjson"))
    # One submit per contact, each paid once; a job that failed server-side is not re-paid
    # within the run (the next run submits it again, as a retryable failure).
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert totals(sim)["async_submits"] == 120
    assert sorted(r["requestId"] for r in results + errors) == rids
    kinds = Counter(e["error"]["kind"] for e in errors)
    assert set(kinds) <= {"agent_error", "not_found"} and kinds["agent_error"] > 0
    assert all(e["error"]["retryable"] == (e["error"]["kind"] == "agent_error") for e in errors)
    assert all(r["asyncHandle"].startswith("asyncReqID_") for r in results)
    assert all(r["response"]["found"] is True and r["response"]["data"]["emails"] for r in results)
    assert summary["exit_code"] == 1
    jobs = summary["async_jobs"]
    assert jobs["submitted"] == 120 and jobs["awaiting_result"] == 0
    assert jobs["polls"] >= 120  # at least one poll per job; each result came from one
    assert summary["counts"]["succeeded"] == len(results)
    # Each handle was recorded, then settled once its outcome was durable.
    handles = read_lines(side(out, ".jobs.ndjson"))
    assert Counter("settled" in h for h in handles) == {False: 120, True: 120}
    # So the next run carries no job over, and submits only the retryable failures again.
    again = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    assert again["async_jobs"]["carried_from_earlier_runs"] == 0
    assert again["async_jobs"]["submitted"] == kinds["agent_error"]


@pytest.mark.slow
def test_a_kill_9_loses_no_paid_call_the_next_run_polls_its_handles(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("1500ms:0.1"))
    rids = write_contacts(tmp_path / "in.csv", 200)
    out = tmp_path / "out.ndjson"
    args = ("--mode", "async", "--concurrency", "8", "--rate", "100/s")
    env_polls = ("--config", str(_poll_config(tmp_path)))
    killed = Run(sim.url, tmp_path / "in.csv", out, *args, *env_polls)
    jobs = side(out, ".jobs.ndjson")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_lines(jobs)) < 60:
        time.sleep(0.05)
    killed.kill()
    submitted_at_kill = totals(sim)["async_submits"]
    done_at_kill = len(_lines(out))
    assert 60 <= submitted_at_kill < 200 and done_at_kill < submitted_at_kill
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert json.loads(status.output)["async_awaiting"] >= 60 - done_at_kill

    code, log = Run(sim.url, tmp_path / "in.csv", out, *args, *env_polls).finish(timeout=90)
    assert code == 0, log
    assert "async: submitted" in log and "awaiting 0" in log
    results = read_lines(out)
    assert Counter(r["requestId"] for r in results) == Counter(rids)  # nothing lost, none twice
    # Every handle recorded before the kill was polled, not submitted again: the extra paid
    # calls are at most the submits whose answer the kill cut off (reported as in flight).
    extra = totals(sim)["async_submits"] - 200
    summary = _summary(out)
    assert extra <= summary["counts"]["outcome_unknown"] <= 8
    assert summary["async_jobs"]["carried_from_earlier_runs"] >= 60 - done_at_kill - 8


@pytest.mark.slow
def test_callbacks_and_polls_feed_one_completion_path(make_sim: Any, tmp_path: Path) -> None:
    port = free_port()
    sim = make_sim(latency=parse_latency("200ms"))
    rids = write_contacts(tmp_path / "in.csv", 60)
    out = tmp_path / "out.ndjson"
    code, log = Run(
        sim.url, tmp_path / "in.csv", out, "--mode", "async",
        "--callback-url", f"http://127.0.0.1:{port}/octave",
        "--callback-listen", f"127.0.0.1:{port}",
    ).finish(timeout=60)  # fmt: skip
    assert code == 0, log
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    seen = totals(sim)
    assert seen["callbacks_sent"] == 60
    # A callback is a hint, never the result: each brings one poll of its job (before the
    # first regular poll, 2 s after the submit), so about one poll per job; no result was
    # written twice (test_async_secrets.py shows the polls come from the callbacks).
    assert 60 <= seen["status_polls"] < 90
    assert sum(r["response"]["_metadata"]["usage"] for r in read_lines(out)) == 60


async def test_a_callback_port_in_use_stops_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = sim_settings(sim.url, mode="async", callback_listen=listen)
        with pytest.raises(ConfigError, match="callback_listen .* cannot listen"):
            await run_batch(tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    assert totals(sim)["calls"] == 0


async def test_the_body_shape_is_a_setting(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(async_body="nested")
    write_contacts(tmp_path / "in.csv", 10)
    flat = await run_batch(
        tmp_path / "in.csv", tmp_path / "flat.ndjson", sim_settings(sim.url, **FAST_POLLS)
    )
    assert flat["exit_code"] == 1 and flat["counts"]["failed_permanent"] == 10
    refusal = read_lines(tmp_path / "flat.errors.ndjson")[0]["error"]
    assert refusal["status"] == 400 and "nested" in refusal["message"]
    nested = await run_batch(
        tmp_path / "in.csv",
        tmp_path / "nested.ndjson",
        sim_settings(sim.url, async_body="nested", **FAST_POLLS),
    )
    assert nested["exit_code"] == 0 and nested["counts"]["succeeded"] == 10


async def test_a_status_field_is_read_when_the_server_sends_one(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(async_status_field=True, latency=parse_latency("100ms"), faults={"503": 0.2})
    rids = write_contacts(tmp_path / "in.csv", 40)
    out = tmp_path / "out.ndjson"
    await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **FAST_POLLS))
    errors = read_lines(side(out, ".errors.ndjson"))
    assert sorted(r["requestId"] for r in read_lines(out) + errors) == rids
    assert errors and all(e["error"]["kind"] == "agent_error" for e in errors)


@pytest.mark.slow
async def test_an_expired_handle_is_reported_and_resubmitted_only_when_asked(
    make_sim: Any, tmp_path: Path
) -> None:
    # Results are kept 0.05 s; the first poll comes 1 s after the submit: every handle is gone
    # (expired at the third 404 in a row: expire_after 0 lifts the minimum age).
    sim = make_sim(async_retention=0.05, latency=parse_latency("10ms"))
    write_contacts(tmp_path / "in.csv", 6)
    slow = {**FAST_POLLS, "poll_interval_min": 1.0, "expire_after": 0.0}
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **slow))
    errors = read_lines(side(out, ".errors.ndjson"))
    assert summary["exit_code"] == 1 and len(errors) == 6
    assert {e["error"]["kind"] for e in errors} == {"expired"}
    assert not any(e["error"]["retryable"] for e in errors)
    assert "--resubmit-expired" in errors[0]["error"]["message"]
    again = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **slow))
    assert again["counts"]["skipped_failed"] == 6 and totals(sim)["async_submits"] == 6

    other = tmp_path / "other.ndjson"
    await run_batch(
        tmp_path / "in.csv", other, sim_settings(sim.url, resubmit_expired=True, **slow)
    )
    assert all(e["error"]["retryable"] for e in read_lines(side(other, ".errors.ndjson")))
    keeps = make_sim(latency=parse_latency("10ms"))  # a server that keeps results
    then = await run_batch(tmp_path / "in.csv", other, sim_settings(keeps.url, **FAST_POLLS))
    assert then["counts"]["succeeded"] == 6 and totals(keeps)["async_submits"] == 6


@pytest.mark.slow
async def test_a_job_pending_past_job_timeout_is_left_for_the_next_run(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("3s"))
    rids = write_contacts(tmp_path / "in.csv", 8)
    out = tmp_path / "out.ndjson"
    impatient = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, job_timeout=0.5, **FAST_POLLS)
    )
    assert impatient["exit_code"] == 1 and not read_lines(out)
    assert impatient["async_jobs"]["given_up_after_job_timeout"] == 8
    # Even a sync run polls them: switching modes never pays a submitted contact again.
    sync = {k: v for k, v in FAST_POLLS.items() if k != "mode"}
    patient = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, **sync))
    assert patient["exit_code"] == 0
    assert patient["async_jobs"]["carried_from_earlier_runs"] == 8
    assert sorted(r["requestId"] for r in read_lines(out)) == rids
    assert totals(sim)["async_submits"] == totals(sim)["calls"] == 8  # polled, never re-paid


async def test_a_result_over_max_response_bytes_fails_its_contact(
    make_sim: Any, tmp_path: Path
) -> None:
    # A pending status answer is ~250 bytes, a sequence result ~2 KB.
    sim = make_sim(latency=parse_latency("100ms"))
    write_contacts(tmp_path / "in.csv", 4)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, max_response_bytes=800, **FAST_POLLS)
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    errors = read_lines(side(out, ".errors.ndjson"))
    assert summary["exit_code"] == 1 and not read_lines(out)
    assert [e["error"]["kind"] for e in errors] == ["response_too_large"] * 4
    assert not any(e["error"]["retryable"] for e in errors)
    assert summary["async_jobs"]["awaiting_result"] == 0  # settled, not polled until timeout


def test_doctor_async_checks_the_status_endpoint_without_paying(make_sim: Any) -> None:
    sim = make_sim()
    result = CliRunner().invoke(
        cli, ["doctor", "--base-url", sim.url, "--async"], env={"OCTAVE_API_KEY": TEST_KEY}
    )
    assert result.exit_code == 0, result.output
    assert "async status endpoint" in result.output and "404" in result.output
    assert totals(sim)["calls"] == 0 and totals(sim)["async_submits"] == 0


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def _summary(out: Path) -> dict[str, Any]:
    return dict(json.loads(side(out, ".summary.json").read_text()))


def _poll_config(tmp_path: Path) -> Path:
    config = tmp_path / "polls.toml"
    config.write_text("poll_interval_min = 0.1\npoll_interval_max = 0.5\n")
    return config
