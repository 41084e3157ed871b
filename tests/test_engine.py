"""The engine end to end, in-process, against the simulator over loopback."""

from __future__ import annotations

import itertools
import json
import stat
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.input.source import SAMPLE_BYTES
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_faults, parse_latency, parse_rate_limit
from tests.helpers import read_lines, side, sim_settings, write_contacts


async def test_each_contact_one_line_one_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 120)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    lines = read_lines(out)
    assert sorted(line["requestId"] for line in lines) == rids
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert summary["exit_code"] == 0
    assert summary["counts"]["succeeded"] == 120 and summary["paid_calls"] == 120
    assert summary["credits"] == 120.0
    first = lines[0]
    assert list(first) == [
        "requestId",
        "runId",
        "personKey",
        "contact",
        "response",
        "attempts",
        "latencyMs",
        "completedAt",
    ]
    assert first["contact"]["agentOId"] == "ca_test" and first["attempts"] == 1
    assert {line["runId"] for line in lines} == {summary["run_id"]}
    assert first["response"]["found"] is True and first["response"]["data"]["emails"]
    for path in (
        out,
        side(out, ".errors.ndjson"),
        side(out, ".rejects.ndjson"),
        side(out, ".summary.json"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_max_in_flight_is_capped(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(latency=parse_latency("50ms:0.2"))
    write_contacts(tmp_path / "in.csv", 60)
    await run_batch(
        tmp_path / "in.csv", tmp_path / "o.ndjson", sim_settings(sim.url, concurrency=5)
    )
    assert sim.stats()["max_in_flight"] == 5


async def test_derived_request_ids_are_stable_and_resume_skips(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 30, ids=False)
    out = tmp_path / "out.ndjson"
    await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    again = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert again["counts"]["skipped_done"] == 30 and again["paid_calls"] == 0
    assert len(read_lines(out)) == 30
    assert all(n == 1 for n in sim.stats()["calls"].values())
    # A change that changes the emails (here the output format) makes new ids.
    html = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, output_format="html", allow_resend=True)
    )
    assert html["counts"]["succeeded"] == 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["429", "500", "502", "503", "504", "reset", "truncate", "invalid_json", "hang"]
)
async def test_retryable_faults_end_in_success(make_sim: Any, tmp_path: Path, kind: str) -> None:
    sim = make_sim(seed=3, faults={kind: 0.1}, hang_seconds=30)
    rids = write_contacts(tmp_path / "in.csv", 80)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, timeout=0.5, max_attempts=6, breaker_threshold=1000)
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    calls = sim.stats()["calls"]
    assert max(calls.values()) <= 6
    assert sum(calls.values()) > len(rids)  # the faults did happen and were retried
    assert summary["counts"]["retried"] == sum(calls.values()) - len(rids)
    assert summary["exit_code"] == 0


async def test_all_fault_kinds_together(make_sim: Any, tmp_path: Path) -> None:
    faults = parse_faults(
        "429=0.01,500=0.01,502=0.01,503=0.01,504=0.01,reset=0.01,truncate=0.01,invalid_json=0.01,hang=0.01"
    )
    sim = make_sim(seed=11, faults=faults, hang_seconds=30)
    rids = write_contacts(tmp_path / "in.csv", 200)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, timeout=0.5, max_attempts=6, concurrency=16)
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    assert max(sim.stats()["calls"].values()) <= 6
    assert summary["exit_code"] == 0


async def test_not_found_fails_once_and_is_not_retried(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(seed=5, faults={"not_found": 0.1})
    rids = write_contacts(tmp_path / "in.csv", 100)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    stats = sim.stats()
    missing = {rid for rid in rids if rid not in stats["successes"]}
    assert missing, "the seed should produce some found: false"
    errors = read_lines(side(out, ".errors.ndjson"))
    assert {e["requestId"] for e in errors} == missing
    assert all(e["error"]["kind"] == "not_found" and not e["error"]["retryable"] for e in errors)
    assert all(stats["calls"][rid] == 1 for rid in missing)
    assert len(read_lines(out)) == len(rids) - len(missing)
    assert summary["exit_code"] == 1 and summary["counts"]["failed_permanent"] == len(missing)
    # On resume, permanent failures are skipped unless --retry-failed.
    again = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert again["paid_calls"] == 0 and again["counts"]["skipped_failed"] == len(missing)
    retried = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, retry_failed=True))
    assert retried["paid_calls"] == len(missing)


async def test_400_fails_that_contact_only(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(forced={"c-00007": "400"})
    rids = write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "out.ndjson"
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert sorted(line["requestId"] for line in read_lines(out)) == [
        r for r in rids if r != "c-00007"
    ]
    [error] = read_lines(side(out, ".errors.ndjson"))
    assert error["requestId"] == "c-00007"
    assert error["error"] == {
        "kind": "http_400",
        "status": 400,
        "message": "HTTP 400: Invalid request body",
        "retryable": False,
    }
    assert sim.stats()["calls"]["c-00007"] == 1
    assert summary["exit_code"] == 1


@pytest.mark.parametrize(("kind", "exit_code"), [("401", 3), ("402", 3), ("403", 3)])
async def test_auth_and_credit_errors_stop_the_run_fast(
    make_sim: Any, tmp_path: Path, kind: str, exit_code: int
) -> None:
    sim = make_sim(latency=parse_latency("100ms:0"), forced={"c-00003": kind})
    rids = write_contacts(tmp_path / "in.csv", 300)
    out = tmp_path / "out.ndjson"
    started = time.perf_counter()
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, concurrency=4))
    assert time.perf_counter() - started < 3
    assert summary["exit_code"] == exit_code and summary["stop_reason"] == "fatal"
    assert summary["fatal_error"].startswith(f"HTTP {kind}")
    assert read_lines(side(out, ".errors.ndjson")) == []  # the contact is not blamed
    done = {line["requestId"] for line in read_lines(out)}
    assert done == set(sim.stats()["successes"])  # nothing that was paid for is lost
    assert len(done) < len(rids)


async def test_wrong_key_then_right_key_resumes(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(api_key="the-right-key")
    rids = write_contacts(tmp_path / "in.csv", 50)
    out = tmp_path / "out.ndjson"
    wrong = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, api_key="wrong"))
    assert wrong["exit_code"] == 3 and read_lines(out) == []
    right = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, api_key="the-right-key")
    )
    assert right["exit_code"] == 0
    assert sorted(line["requestId"] for line in read_lines(out)) == rids


async def test_breaker_stops_a_failing_api_resumably(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(faults={"500": 1.0})
    write_contacts(tmp_path / "in.csv", 200)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(sim.url, breaker_threshold=10, max_attempts=3, concurrency=4)
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    assert summary["exit_code"] == 4 and summary["stop_reason"] == "breaker"
    assert summary["paid_calls"] < 40
    errors = read_lines(side(out, ".errors.ndjson"))
    assert errors and all(e["error"]["retryable"] for e in errors)


async def test_max_calls_stops_with_exit_5_and_resumes(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 50)
    out = tmp_path / "out.ndjson"
    first = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, max_calls=20))
    assert first["exit_code"] == 5 and first["paid_calls"] == 20
    assert sim.stats()["totals"]["calls"] == 20
    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert second["exit_code"] == 0 and second["paid_calls"] == 30
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    assert all(n == 1 for n in sim.stats()["calls"].values())


async def test_limit_and_dry_run(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 50)
    out = tmp_path / "out.ndjson"
    dry = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, dry_run=True, limit=10))
    assert dry["would_send"] == 10 and dry["example_request"]["agentOId"] == "ca_test"
    assert not out.exists() and sim.stats()["totals"] == {}
    limited = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, limit=10))
    assert limited["counts"]["succeeded"] == 10 and len(read_lines(out)) == 10


async def test_duplicate_rows_are_sent_once(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    write_contacts(path, 5, ids=False)
    rows = path.read_text().splitlines()
    path.write_text("\n".join([*rows, rows[2], rows[4]]) + "\n")
    out = tmp_path / "out.ndjson"
    summary = await run_batch(path, out, sim_settings(sim.url))
    # Rejects alone are a normal night: counted and reported, exit 0.
    assert summary["counts"]["duplicate"] == 2 and summary["exit_code"] == 0
    assert sum(sim.stats()["calls"].values()) == 5
    rejects = read_lines(side(out, ".rejects.ndjson"))
    assert [(r["line"], r["reason"]) for r in rejects] == [(7, "duplicate"), (8, "duplicate")]
    strict = await run_batch(path, out, sim_settings(sim.url, fail_on_rejects=True))
    assert strict["counts"]["duplicate"] == 2 and strict["exit_code"] == 1
    assert sum(sim.stats()["calls"].values()) == 5  # nothing paid again


async def test_rate_ceiling_paces_smoothly(make_sim: Any, tmp_path: Path) -> None:
    rate, count, burst = 10.0, 20, 2  # the ceiling lets out max(2, rate / 100) calls at once
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", count)
    settings = sim_settings(sim.url, rate=f"{rate:g}/s")
    await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    arrivals = sim.stats()["arrivals"]  # when the server saw each call, in order
    assert len(arrivals) == count
    interval = 1 / rate
    # No burst + 1 calls within a tenth of the interval: beyond the burst, calls are spaced.
    for first, last in zip(arrivals, arrivals[burst:], strict=False):
        assert last - first >= 0.1 * interval, arrivals
    # A token bucket: no stretch of the run holds more calls than the burst plus the rate
    # allows (within one call of timing noise on a loaded machine).
    for i, start in enumerate(arrivals):
        for j in range(i + 1, count):
            assert j - i + 1 <= burst + rate * (arrivals[j] - start) + 1.0, arrivals
    # Smooth, at the ceiling: the typical gap is the interval, and the run is not slower.
    gaps = [b - a for a, b in itertools.pairwise(arrivals[burst - 1 :])]
    assert 0.8 * interval <= statistics.median(gaps) <= 1.2 * interval, gaps
    assert arrivals[-1] - arrivals[0] <= 1.5 * (count - burst) * interval


@pytest.mark.slow
async def test_429_storm_adapts(make_sim: Any, tmp_path: Path) -> None:
    mix = {"seconds": 0.0, "date": 0.0, "absent": 1.0}
    from octave_bulk.simulator import RetryAfterMix

    sim = make_sim(rate_limit=parse_rate_limit("40/s:2"), retry_after_mix=RetryAfterMix(**mix))
    rids = write_contacts(tmp_path / "in.csv", 240)
    out = tmp_path / "out.ndjson"
    settings = sim_settings(
        sim.url, rate="200/s", concurrency=16, max_attempts=20, backoff_initial=0.2
    )
    summary = await run_batch(tmp_path / "in.csv", out, settings)
    assert summary["exit_code"] == 0
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    limited = summary["counts"]["rate_limited_429"]
    assert 0 < limited < 0.2 * summary["paid_calls"]


async def test_resume_repairs_a_torn_line_and_reports_unknown(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "out.ndjson"
    await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, limit=10))
    lines = out.read_bytes().splitlines(keepends=True)
    # Simulate a kill: the last line torn in half, and two calls left "in flight".
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    torn_id = json.loads(lines[-1])["requestId"]
    slot = side(out, ".inflight")
    slot.write_bytes((torn_id + "\n").encode().ljust(256, b"\0") + b"c-00019\n".ljust(256, b"\0"))
    summary = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert summary["repaired_bytes"] > 0
    assert summary["counts"]["outcome_unknown"] == 2
    assert sorted(line["requestId"] for line in read_lines(out)) == rids
    assert Counter(sim.stats()["calls"].values()) == Counter({1: 19, 2: 1})


async def test_missing_key_or_target_is_a_config_error(tmp_path: Path) -> None:
    from octave_bulk.settings.model import Settings

    write_contacts(tmp_path / "in.csv", 1)
    with pytest.raises(ConfigError, match="no API key"):
        await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", Settings.load(agent_oid="ca_1"))
    with pytest.raises(ConfigError, match="no target"):
        await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", Settings.load(api_key="k"))
    assert not (tmp_path / "o.ndjson").exists()


async def test_unwritable_output_is_a_state_error(make_sim: Any, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "out.ndjson"
    side(out, ".errors.ndjson").mkdir()  # cannot be opened as a file: found before any call
    with pytest.raises(StateError, match="errors.ndjson: is a folder, not a file"):
        await run_batch(tmp_path / "in.csv", out, sim_settings(make_sim().url))


async def test_non_ascii_request_ids_are_sent(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    path.write_text("requestId,email\nréf-1,a@acme.io\n参照-2,b@acme.io\n", encoding="utf-8")
    out = tmp_path / "out.ndjson"
    summary = await run_batch(path, out, sim_settings(sim.url))
    assert summary["exit_code"] == 0
    assert sorted(line["requestId"] for line in read_lines(out)) == ["réf-1", "参照-2"]


async def test_wrong_endpoint_stops_the_run(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 30)
    out = tmp_path / "out.ndjson"
    wrong = sim_settings(sim.url + "/wrong", concurrency=2)
    with pytest.raises(ConfigError, match=r"--base-url is wrong \(HTTP 404\)"):
        await run_batch(tmp_path / "in.csv", out, wrong)  # the agent lookup: nothing paid
    assert sim.stats()["totals"].get("calls", 0) == 0
    # Without the lookup, the first answers stop the run.
    unchecked = sim_settings(sim.url + "/wrong", concurrency=2, check_agent=False)
    summary = await run_batch(tmp_path / "in.csv", out, unchecked)
    assert summary["exit_code"] == 3 and summary["paid_calls"] <= 2
    assert "HTTP 404" in summary["fatal_error"]
    assert read_lines(side(out, ".errors.ndjson")) == []  # no contact is blamed for it


async def test_input_broken_mid_file_stops_with_exit_2_and_keeps_what_was_done(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    before = [f"p{n}@acme.io" for n in range(300)]
    # Lines of spaces are blank records (skipped, never sent): cheap bytes that put the break
    # past the reader's sample, so it is met mid-run whatever the reader checks up front.
    padding = (" " * 16_384 + "\n") * (SAMPLE_BYTES // (2 * 16_384) + 1)
    head = ("email,name\n" + "".join(f"{e},P\n" for e in before) + padding).encode("utf-16")
    assert len(head) > SAMPLE_BYTES
    after = "".join(f"q{n}@acme.io,Q\n" for n in range(100)).encode("utf-16-le")
    path.write_bytes(head + b"\x00\xdc" + after)  # a lone low surrogate: UTF-16 cannot decode it
    out = tmp_path / "out.ndjson"
    summary = await run_batch(path, out, sim_settings(sim.url))
    # Calls were sent before the input broke: 6, not 2 ("nothing sent").
    assert summary["exit_code"] == 6 and summary["stop_reason"] == "input_error"
    assert "cannot decode" in summary["input_error"]
    done = read_lines(out)
    assert 0 < len(done) == summary["counts"]["succeeded"]
    # Every call made is kept, and nothing past the break was sent.
    assert sim.stats()["totals"]["calls"] == len(done)
    assert {line["contact"]["email"] for line in done} <= set(before)


async def test_dry_run_writes_nothing_even_to_a_torn_output(make_sim: Any, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 5)
    out = tmp_path / "out.ndjson"
    out.write_bytes(b'{"requestId":"c-00000","contact":{}}\n{"requestId":"c-000')
    before = out.read_bytes()
    dry = await run_batch(tmp_path / "in.csv", out, sim_settings(make_sim().url, dry_run=True))
    assert out.read_bytes() == before
    assert dry["would_send"] == 4 and dry["counts"]["skipped_done"] == 1


async def test_unknown_outcomes_are_remembered_until_resolved(
    make_sim: Any, tmp_path: Path
) -> None:
    from octave_bulk.state.inflight import InflightSlots

    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "out.ndjson"
    slots = side(out, ".inflight")
    slots.write_bytes(b"c-00019\n".ljust(256, b"\0"))
    first = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, limit=5))
    assert first["counts"]["outcome_unknown"] == 1
    assert InflightSlots.leftovers(slots) == ["c-00019"]  # not re-sent yet: still unknown
    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert second["counts"]["outcome_unknown"] == 1 and second["exit_code"] == 0
    assert InflightSlots.leftovers(slots) == []


async def test_a_stop_wakes_workers_waiting_out_a_long_pause(make_sim: Any, tmp_path: Path) -> None:
    from octave_bulk.simulator import RetryAfterMix

    sim = make_sim(rate_limit=parse_rate_limit("1/min:1"), retry_after_mix=RetryAfterMix(1, 0, 0))
    write_contacts(tmp_path / "in.csv", 10)
    out = tmp_path / "out.ndjson"
    started = time.perf_counter()
    # Two calls: the first succeeds, the second gets "Retry-After: 60" and the pool pauses;
    # --max-calls 2 then stops the run, which must not sit out the minute.
    summary = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, max_calls=2, concurrency=1)
    )
    assert time.perf_counter() - started < 5
    assert summary["exit_code"] == 5 and summary["counts"]["succeeded"] == 1
