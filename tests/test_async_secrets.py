"""Issue 22, items 1-3: async mode keeps the key out of everything, a callback is a hint
(never a result) accepted only on the output's secret path, and the callback port holds
against idle sockets, compressed and oversized bodies and malformed requests."""

from __future__ import annotations

import contextlib
import gzip
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
from tests.ports import free_port


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
    port = free_port()
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
    port = free_port()
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
    port = free_port()
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


# 3. The callback port holds: idle sockets, compressed or oversized bodies, malformed requests.


class _Listening:
    """An async run with a callback receiver, in a subprocess whose open files are limited
    to ``files``; its stdout and stderr go to files of their own."""

    def __init__(self, url: str, tmp_path: Path, contacts: int, files: int, *extra: str) -> None:
        write_contacts(tmp_path / "in.csv", contacts)
        self.out, self.port = tmp_path / "out.ndjson", free_port()
        self.stdout, self.stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        command = [
            sys.executable, "-m", "octave_bulk", "run", str(tmp_path / "in.csv"),
            "-o", str(self.out), "--agent", "ca_test", "--base-url", url, "--rate", "none",
            "--no-progress", "--concurrency", "8", *_async_args(tmp_path, self.port), *extra,
        ]  # fmt: skip
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                ["sh", "-c", f'ulimit -n {files} && exec "$@"', "sh", *command],
                env=_env(), stdout=out, stderr=err, cwd=tmp_path,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not side(self.out, ".jobs.ndjson").exists():  # listening, and submitting
            assert time.monotonic() < deadline and self.process.poll() is None, self.log()
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}/octave/"
        token = side(self.out, ".callback-token")
        self.hint_url = self.base + (token.read_text().strip() if token.exists() else "")

    def finish(self) -> int:
        return self.process.wait(timeout=90)

    def log(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def test_idle_half_sent_requests_do_not_stop_the_run(tmp_path: Path) -> None:
    # 100 connections that never finish their headers, against a run that may open 112
    # files (what it asks for): each held one of them, until the run's own files and calls
    # failed with "Too many open files".
    with serve_hostile(SimulatorConfig(latency=parse_latency("1500ms"))) as sim:
        run = _Listening(sim.url, tmp_path, 40, 112)
        idle = []
        for _ in range(100):
            knock = socket.socket()
            knock.setblocking(False)
            knock.connect_ex(("127.0.0.1", run.port))
            idle.append(knock)
        time.sleep(0.5)
        for knock in idle:
            try:
                knock.send(b"POST /octave/x HTTP/1.1\r\nHost: x\r\nContent-Len")
            except OSError:
                pass  # still in the listen backlog, or closed: as good as idle
        try:
            code = run.finish()
        finally:
            for knock in idle:
                knock.close()
    assert code == 0, run.log()
    assert len(read_lines(run.out)) == 40
    assert "Too many open files" not in run.log()
    summary = json.loads(side(run.out, ".summary.json").read_text())
    assert summary["counts"]["retried"] == 0  # no call failed for want of a descriptor


def test_compressed_and_oversized_bodies_are_refused_unread(tmp_path: Path) -> None:
    bomb = gzip.compress(b'{"requestId": "' + b" " * (32 << 20) + b'"}')  # ~32 KB -> 32 MB
    with serve_hostile(SimulatorConfig(latency=parse_latency("5s"))) as sim:
        run = _Listening(sim.url, tmp_path, 5, 1024)
        gzipped = {"content-encoding": "gzip", "content-type": "application/json"}
        bombs = [httpx.post(run.hint_url, content=bomb, headers=gzipped) for _ in range(20)]
        large = httpx.post(run.hint_url, content=b'{"pad": "' + b"x" * (1 << 20) + b'"}')
        hint = httpx.post(run.hint_url, json={"requestId": "not-a-live-handle"})
        code = run.finish()
    assert [answer.status_code for answer in bombs] == [415] * 20
    assert large.status_code == 413 and hint.status_code == 200
    assert code == 0, run.log()
    summary = json.loads(side(run.out, ".summary.json").read_text())
    assert summary["async_jobs"]["callbacks"]["refused"] == 21


def test_a_malformed_request_leaves_no_traceback_in_a_json_log(tmp_path: Path) -> None:
    with serve_hostile(SimulatorConfig(latency=parse_latency("5s"))) as sim:
        run = _Listening(sim.url, tmp_path, 5, 1024, "--log-format", "json")
        path = run.hint_url.partition(str(run.port))[2].encode()
        malformed = [
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST " + path + b' HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"req',
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        ]
        for request in malformed:
            with socket.create_connection(("127.0.0.1", run.port), timeout=5) as knock:
                knock.sendall(request)
                knock.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    knock.recv(4096)
        code = run.finish()
    assert code == 0, run.log()
    lines = run.stderr.read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines
    refused = [json.loads(line) for line in lines if "callback_refused" in line]
    assert len(refused) == 1  # the first refusal, one line; the others are counted
    summary = json.loads(side(run.out, ".summary.json").read_text())
    assert summary["async_jobs"]["callbacks"]["refused"] >= len(malformed) - 1
