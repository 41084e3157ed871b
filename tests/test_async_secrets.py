"""Issue 22, items 1-3: async mode keeps the key out of everything, a callback is a hint
(never a result) accepted only on the output's secret path, and the callback port holds
against idle sockets, compressed and oversized bodies and malformed requests."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from octave_bulk.errors import ApiError
from octave_bulk.http.async_api import read_receipt
from octave_bulk.redact import register_secret
from octave_bulk.simulator import SimulatorConfig, parse_latency
from octave_bulk.simulator.hostile import HostileConfig, serve_hostile
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, side, write_contacts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(tmp_path: Path, **values: float) -> Path:
    config = tmp_path / "async.toml"
    settings = {"poll_interval_min": 0.05, "poll_interval_max": 0.5, **values}
    config.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
    return config


def _async_args(tmp_path: Path, port: int, *extra: str) -> tuple[str, ...]:
    return ("--mode", "async", "--callback-url", f"http://127.0.0.1:{port}/octave",
            "--callback-listen", f"127.0.0.1:{port}", "--config", str(_config(tmp_path)),
            *extra)  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env["OCTAVE_API_KEY"] = TEST_KEY
    return env


# 1. Async mode keeps the key out of every file, log and output.


def test_a_key_echoed_by_async_submits_polls_and_callbacks_is_in_no_file(tmp_path: Path) -> None:
    forced = {
        "c-00000": "echo_400",
        "c-00001": "echo_500",
        "c-00002": "echo_refused",
        "c-00003": "poll_echo_500",
        "c-00004": "poll_echo_failed",
        "c-00005": "poll_echo_done",
        "c-00006": "callback_echo_done",
        "c-00007": "poll_echo_401",
    }
    write_contacts(tmp_path / "in.csv", 10)
    out = tmp_path / "out" / "o.ndjson"
    out.parent.mkdir()
    port = _free_port()
    log = tmp_path / "out" / "run.log"
    config = SimulatorConfig(latency=parse_latency("300ms"))
    with serve_hostile(config, HostileConfig(forced=forced)) as sim:
        args = _async_args(tmp_path, port, "--max-attempts", "1", "--log-file", str(log))
        stopped, first = Run(sim.url, tmp_path / "in.csv", out, *args).finish()
        assert stopped == 3, first  # the 401 of a poll stops the run
        summary = json.loads(side(out, ".summary.json").read_text())
        assert "Invalid API key ***" in summary["fatal_error"]
        del forced["c-00007"]
        code, second = Run(
            sim.url, tmp_path / "in.csv", out, *args, "--log-format", "json"
        ).finish()
        assert code == 1, second  # the refused and failed contacts
        assert sim.front is not None
        assert {k for k, v in sim.front.counts.items() if v} >= set(forced.values())
    report = subprocess.run(
        [sys.executable, "-m", "octave_bulk", "report", str(out)],
        env=_env(), capture_output=True, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    page = side(out, ".report.html")
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    messages = {
        e["requestId"]: e["error"]["message"] for e in read_lines(side(out, ".errors.ndjson"))
    }
    assert "error for key ***" in messages["c-00000"] and "refused for ***" in messages["c-00002"]
    assert "failed for key ***" in messages["c-00004"]
    results = {r["requestId"]: r for r in read_lines(out)}
    assert results["c-00005"]["response"]["data"]["note"] == "***"
    assert "c-00006" in results
    everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    everything += report.stdout + report.stderr
    assert TEST_KEY.encode() not in everything


def test_a_key_cut_by_a_message_limit_is_masked_too() -> None:
    register_secret(TEST_KEY)
    padding = "x" * (500 - len("submit answered status 'failed': ") - 20)
    refusal = httpx.Response(200, json={"status": "failed", "message": padding + TEST_KEY})
    with pytest.raises(ApiError) as caught:
        read_receipt(refusal, "c-1")
    assert caught.value.message.endswith("x***") and TEST_KEY[:20] not in str(caught.value)


# 2. A callback is a hint to poll, accepted only on the output's secret path.


def test_each_callback_brings_one_poll_of_its_job_whose_answer_is_the_result(
    tmp_path: Path,
) -> None:
    # Regular polls would come only after 120 s, past job_timeout: the first results come
    # from polls the callbacks brought (hints that came before their job was added included),
    # and once three jobs are done their typical time brings the others' polls forward.
    write_contacts(tmp_path / "in.csv", 30)
    out = tmp_path / "out.ndjson"
    port = _free_port()
    config = tmp_path / "slow.toml"
    config.write_text("poll_interval_min = 120\npoll_interval_max = 120\njob_timeout = 60\n")
    with serve_hostile(SimulatorConfig(latency=parse_latency("300ms"))) as sim:
        code, log = Run(
            sim.url, tmp_path / "in.csv", out, "--mode", "async", "--config", str(config),
            "--callback-url", f"http://127.0.0.1:{port}/octave",
            "--callback-listen", f"127.0.0.1:{port}",
        ).finish(timeout=90)  # fmt: skip
        seen = sim.app.stats()["totals"]
    assert code == 0, log
    assert len(read_lines(out)) == 30
    # A poll per callback (a job polled just before its callback came is polled again).
    assert seen["callbacks_sent"] == 30 and 30 <= seen["status_polls"] <= 60
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["async_jobs"]["callbacks"] == {"received": 30, "refused": 0}


def test_a_forged_callback_is_never_recorded_and_other_paths_get_404(tmp_path: Path) -> None:
    forced = {"c-00000": "callback_forged_done", "c-00001": "callback_forged_failed"}
    rids = write_contacts(tmp_path / "in.csv", 12)
    out = tmp_path / "out.ndjson"
    port = _free_port()
    config = SimulatorConfig(latency=parse_latency("2s"))
    with serve_hostile(config, HostileConfig(forced=forced)) as sim:
        run = Run(sim.url, tmp_path / "in.csv", out, *_async_args(tmp_path, port))
        jobs = side(out, ".jobs.ndjson")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(read_lines(jobs)) < 12:
            time.sleep(0.05)
        handles = [job["handle"] for job in read_lines(jobs)]
        assert len(handles) == 12
        # Whoever reaches the port and knows live handles, but not the output's token.
        forged = [
            {"requestId": handles[2], "status": "succeeded", "_metadata": {"usage": -500},
             "result": {"found": True, "data": {"emails": [{"subject": "x", "email": "x"}]}}},
            {"requestId": handles[3], "status": "failed", "error": "forged"},
        ]  # fmt: skip
        paths = ["/octave", "/octave/", "/", "/octave/" + handles[4], "/octave/not-the-token"]
        answers = [
            httpx.post(f"http://127.0.0.1:{port}{path}", json=body).status_code
            for path in paths
            for body in forged
        ]
        code, log = run.finish()
        assert sim.front is not None
        front = sim.front.asynchronous
        seen = sim.app.stats()["totals"]
    assert answers == [404] * len(answers)
    # The front knew the secret path (as Octave does) and forged through it: accepted as
    # hints, each brought a poll, and the poll's answer was recorded.
    assert front.callback_answers == {200: 2} and sim.front.counts["callback_forged_done"] == 1
    assert code == 0, log
    results = read_lines(out)
    assert sorted(r["requestId"] for r in results) == rids
    assert not read_lines(side(out, ".errors.ndjson"))
    assert not any("forged" in json.dumps(r["response"]) for r in results)
    summary = json.loads(side(out, ".summary.json").read_text())
    assert summary["credits"] == 12 and seen["async_submits"] == 12  # nobody pays twice
    assert summary["async_jobs"]["callbacks"]["refused"] == len(answers)
    # The token is in the URL Octave was given, and in no log line or other file.
    token = side(out, ".callback-token").read_text().strip()
    assert stat.S_IMODE(side(out, ".callback-token").stat().st_mode) == 0o600
    assert all(url == f"http://127.0.0.1:{port}/octave/{token}" for url in front.callback_urls)
    assert log.count("callback_refused") == 1 and token not in log
    others = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "out.callback-token"]
    assert not any(token.encode() in p.read_bytes() for p in others)
