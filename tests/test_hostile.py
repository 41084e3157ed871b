"""Issue 11: every break an adversarial review found, each reproduced here (each of these
failed before its fix). The soak test that combines them is in test_soak_hostile.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from octave_bulk.cli import cli
from octave_bulk.errors import ConfigError, ErrorKind, StateError, TerminalApiError
from octave_bulk.http.client import OctaveClient
from octave_bulk.http.retry import transport_error
from octave_bulk.run.engine import run_batch
from octave_bulk.settings.model import Settings
from octave_bulk.simulator.hostile import HostileConfig, serve_hostile
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.paths import OutputPaths
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, sim_settings, write_contacts


def _cli(args: list[str], key: str = TEST_KEY) -> Any:
    return CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": key})


def _run_args(url: str, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(tmp_path / "in.csv"), "-o", str(out), "--agent", "ca_1", "--base-url",
            url, "--rate", "none", "--no-progress", *extra]  # fmt: skip


# 1. Every path the run writes is checked before the first call (exit 2, clear message).


def test_output_under_a_file_is_exit_2_before_any_call(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    (tmp_path / "afile").write_text("x")
    result = _cli(_run_args(sim.url, tmp_path, tmp_path / "afile" / "o.ndjson"))
    assert result.exit_code == 2, result.output
    assert "is not a folder" in result.output and "Traceback" not in result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


def test_unwritable_metrics_is_found_at_the_start(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    metrics = tmp_path / "missing" / "m.prom"
    result = _cli(_run_args(sim.url, tmp_path, out, "--metrics-textfile", str(metrics)))
    assert result.exit_code == 2 and "missing" in result.output, result.output
    assert sim.stats()["totals"].get("calls", 0) == 0  # found before a call, not at the end


def test_a_side_file_that_is_a_folder_is_exit_2(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    side(out, ".summary.json").mkdir()
    result = _cli(_run_args(sim.url, tmp_path, out))
    assert result.exit_code == 2 and "is a folder" in result.output, result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


async def test_a_read_only_folder_is_a_state_error(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    (tmp_path / "ro").mkdir()
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    with pytest.raises(StateError, match="Read-only file system"):
        await run_batch(tmp_path / "in.csv", tmp_path / "ro" / "o.ndjson", sim_settings(sim.url))
    assert sim.stats()["totals"].get("calls", 0) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_exit_2(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        result = _cli(_run_args(sim.url, tmp_path, tmp_path / "ro" / "o.ndjson"))
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert result.exit_code == 2 and "cannot create files" in result.output


def test_validate_into_a_missing_folder(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 3)
    result = _cli(["validate", str(tmp_path / "in.csv"), "-o", str(tmp_path / "new" / "x.ndjson")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "x.rejects.ndjson").exists()
    (tmp_path / "afile").write_text("x")
    bad = _cli(["validate", str(tmp_path / "in.csv"), "-o", str(tmp_path / "afile" / "x.ndjson")])
    assert bad.exit_code == 2 and "is not a folder" in bad.output, bad.output


# 2. The key is scrubbed from everything stored, logged or raised.


def _files_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_an_echoed_key_is_in_no_file_log_or_output(tmp_path: Path) -> None:
    forced = {"c-00000": "echo_500", "c-00001": "echo_not_found", "c-00002": "echo_401"}
    write_contacts(tmp_path / "in.csv", 4)
    with serve_hostile(hostile=HostileConfig(forced=forced)) as sim:
        out = tmp_path / "out" / "o.ndjson"
        log = tmp_path / "run.log"
        args = _run_args(sim.url, tmp_path, out, "--max-attempts", "2", "--log-file", str(log))
        first = _cli(args)
        assert first.exit_code == 3, first.output  # the 401 stops the run
        summary = json.loads(side(out, ".summary.json").read_text())
        assert "Invalid API key ***" in summary["fatal_error"]
        del forced["c-00002"]
        second = _cli([*args, "--log-format", "json"])
        assert sim.front is not None and sim.front.counts["echo_500"] >= 2
    errors = read_lines(side(out, ".errors.ndjson"))
    messages = {e["requestId"]: e["error"]["message"] for e in errors}
    assert "error for key ***" in messages["c-00000"]
    assert "no match for ***" in messages["c-00001"]
    everything = _files_text(tmp_path) + first.output.encode() + second.output.encode()
    assert TEST_KEY.encode() not in everything


# 4. A whole-attempt deadline, apart from the read timeout.


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_dribbling_answer_is_cut_at_the_call_deadline(
    tmp_path: Path, transport: str
) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    hostile = HostileConfig(forced={"c-00000": "dribble"}, dribble_interval=0.05)
    with serve_hostile(hostile=hostile) as sim:
        settings = sim_settings(
            sim.url, timeout=3.0, call_deadline=1.0, max_attempts=1, transport=transport
        )
        started = time.monotonic()
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert time.monotonic() - started < 8  # the body takes > 100 s at this pace
    assert summary["counts"]["succeeded"] == 1
    assert summary["failures_by_kind"] == {"timeout": 1}
    (error,) = read_lines(tmp_path / "o.errors.ndjson")
    assert error["requestId"] == "c-00000" and error["error"]["retryable"]


# 5. Exit codes: "stopped after sending" is not "nothing sent"; summary and process agree.


def test_a_full_disk_mid_run_is_exit_6_not_2(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octave_bulk.state import files

    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 40)
    out = tmp_path / "o.ndjson"
    real = files.NdjsonAppender.write
    written = {"n": 0}

    def write(self: Any, line: bytes) -> None:
        if self.path == out:
            written["n"] += 1
            if written["n"] > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, line)

    monkeypatch.setattr(files.NdjsonAppender, "write", write)
    result = _cli(_run_args(sim.url, tmp_path, out, "--concurrency", "2"))
    assert result.exit_code == 6, result.output
    assert "calls were sent" in result.output and "No space left" in result.output
    assert sim.stats()["totals"]["calls"] >= 6


def test_metrics_failing_at_the_end_exit_and_summary_agree(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octave_bulk.run.finish as finish

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(finish, "write_metrics", broken)
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    result = _cli(_run_args(sim.url, tmp_path, out, "--metrics-textfile", str(tmp_path / "m.prom")))
    summary = json.loads(side(out, ".summary.json").read_text())
    assert result.exit_code == summary["exit_code"] == 6, result.output
    assert "cannot write the metrics" in summary["file_error"]


# 6. An unknown outcome is settled by a permanent failure too.


async def test_outcome_unknown_is_cleared_when_the_retry_fails_for_good(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(forced={"c-00000": "not_found"})
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    slots = InflightSlots(side(out, ".inflight"))
    slots.claim("c-00000")  # a kill -9 with this call on the wire
    slots.close()
    first = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert first["counts"]["outcome_unknown"] == 1 and first["unknown_request_ids"] == ["c-00000"]
    assert first["counts"]["failed_permanent"] == 1
    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert second["counts"]["outcome_unknown"] == 0 and second["unknown_request_ids"] == []


async def test_outcome_unknown_of_a_contact_failed_for_good_is_reported_once(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(forced={"c-00000": "not_found"})
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    slots = InflightSlots(side(out, ".inflight"))
    slots.claim("c-00000")  # on the wire at a kill; then a retry failed for good, and that
    slots.close()  # run was killed before it could clear the slot
    record = {"requestId": "c-00000", "runId": "r0", "contact": {"email": "p0@example.com"},
              "error": {"kind": "not_found", "status": 200, "message": "x", "retryable": False},
              "attempts": 1, "failedAt": "2026-01-01T00:00:00Z"}  # fmt: skip
    side(out, ".errors.ndjson").write_text(json.dumps(record) + "\n")
    first = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert first["counts"]["outcome_unknown"] == 1 and first["counts"]["skipped_failed"] == 1
    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert second["counts"]["outcome_unknown"] == 0
    assert sim.stats()["calls"].get("c-00000", 0) == 0


# 7. A results line cut short but ending in a newline is not done: reported, quarantined.


async def test_a_truncated_line_with_a_newline_is_not_done(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.ndjson"
    await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    lines = out.read_bytes().splitlines(keepends=True)
    cut = json.loads(lines[1])["requestId"]
    lines[1] = lines[1][: len(lines[1]) // 2] + b"\n"
    out.write_bytes(b"".join(lines))
    second = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert second["corrupt_result_lines"] == 1
    assert second["counts"]["succeeded"] == 1 and sim.stats()["calls"][cut] == 2
    quarantined = read_lines(side(out, ".corrupt.ndjson"))
    assert len(quarantined) == 1 and quarantined[0]["line"] == 2
    assert quarantined[0]["raw"].encode() == lines[1].decode().encode()
    third = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url, ledger_index=False))
    assert third["counts"]["succeeded"] == 0 and third["corrupt_result_lines"] == 1
    assert len(read_lines(side(out, ".corrupt.ndjson"))) == 1  # quarantined once


def test_whole_result_accepts_every_line_the_sink_writes() -> None:
    from octave_bulk.state.scan import whole_result
    from octave_bulk.state.sink import Success, success_line

    item = Success("r1", {"email": "a@b.c"}, b'{"found":true,"x":{"requestId":"z"}}', 1.0, 1, 5, 0)
    line = success_line(item, "run1", 7)
    assert whole_result(line)
    assert not whole_result(line[:-20] + b"\n")
    assert not whole_result(b"\0" * 10 + line)
    assert whole_result(line.replace(b'"found"', b'"x":{"requestId":"y"},"found"'))  # parsed


# 9. A cap on the size of an answer, with a kind of its own.


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_huge_answer_fails_its_contact(tmp_path: Path, transport: str) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    hostile = HostileConfig(forced={"c-00000": "huge"}, huge_bytes=3 * 1024 * 1024)
    with serve_hostile(hostile=hostile) as sim:
        settings = sim_settings(sim.url, max_response_bytes=1024 * 1024, transport=transport)
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert summary["failures_by_kind"] == {"response_too_large": 1}
    (error,) = read_lines(tmp_path / "o.errors.ndjson")
    assert error["attempts"] == 1 and not error["error"]["retryable"]
    assert "max_response_bytes" in error["error"]["message"]
    assert (tmp_path / "o.ndjson").stat().st_size < 100_000


async def test_the_cap_holds_for_any_transport() -> None:
    big = b'{"_metadata":{},"found":true,"data":{"emails":[{"subject":"' + b"x" * 5000 + b'"}]}}'
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=big))
    client = OctaveClient(
        transport, base_url="http://x", api_key=SecretStr(TEST_KEY), max_body=1000
    )
    with pytest.raises(TerminalApiError) as caught:
        await client.run(b"{}", "r1")
    assert caught.value.kind == ErrorKind.RESPONSE_TOO_LARGE


# 11. out.jsonl and out.ndjson in one folder share no side file.


async def test_jsonl_and_ndjson_outputs_share_no_side_file(make_sim: Any, tmp_path: Path) -> None:
    jsonl, ndjson = (
        OutputPaths.for_output(tmp_path / "o.jsonl"),
        OutputPaths.for_output(tmp_path / "o.ndjson"),
    )
    assert not set(jsonl.side_files()) & set(ndjson.side_files())
    sim = make_sim(forced={"c-00001": "400"})
    write_contacts(tmp_path / "in.csv", 3)
    first = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", sim_settings(sim.url))
    second = await run_batch(tmp_path / "in.csv", tmp_path / "o.jsonl", sim_settings(sim.url))
    assert first["counts"]["failed_permanent"] == 1
    assert second["counts"]["skipped_failed"] == 0 and second["counts"]["failed_permanent"] == 1
    assert sim.stats()["calls"]["c-00001"] == 2  # the .jsonl run tried it itself
    assert json.loads((tmp_path / "o.summary.json").read_text())["run_id"] == first["run_id"]
    assert json.loads((tmp_path / "o.jsonl.summary.json").read_text())["run_id"] == second["run_id"]


async def test_a_jsonl_output_keeps_its_side_files_from_before(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(forced={"c-00001": "400"})
    write_contacts(tmp_path / "in.csv", 3)
    out = tmp_path / "o.jsonl"
    await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    for new in OutputPaths.for_output(out).side_files():  # as the version before named them
        if new.exists() and not new.name.endswith(".lock"):
            new.rename(tmp_path / ("o" + new.name[len("o.jsonl") :]))
    again = await run_batch(tmp_path / "in.csv", out, sim_settings(sim.url))
    assert again["counts"]["skipped_failed"] == 1 and again["counts"]["skipped_done"] == 2
    assert (tmp_path / "o.jsonl.errors.ndjson").exists()
    assert not (tmp_path / "o.errors.ndjson").exists()


# 12. Stale temp files are removed at the start.


def _a_dead_pid() -> str:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


async def test_stale_temp_files_are_removed(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 2)
    dead = _a_dead_pid()
    stale = [tmp_path / f".o.summary.json.{dead}.tmp", tmp_path / f".o.cursor.json.{dead}.tmp"]
    live = tmp_path / f".o.summary.json.{os.getppid()}.tmp"  # a live process's: kept
    for path in [*stale, live]:
        path.write_text("{")
    await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", sim_settings(sim.url))
    assert not any(path.exists() for path in stale) and live.exists()


# 13. A malformed key is refused before any call.


@pytest.mark.parametrize("bad", ["oct_key\nwith_newline", "oct_kéy_non_ascii", "oct\0key_nul",
                                 "oct key space"])  # fmt: skip
def test_a_malformed_key_is_exit_2_before_any_call(make_sim: Any, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="malformed API key") as caught:
        Settings.load(api_key=bad)
    assert bad not in str(caught.value)
    if "\0" in bad:
        return  # an environment variable cannot hold a NUL
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    result = _cli(_run_args(sim.url, tmp_path, tmp_path / "o.ndjson"), key=bad)
    assert result.exit_code == 2 and "malformed API key" in result.output, result.output
    assert sim.stats()["totals"].get("calls", 0) == 0


# 14 and 17. Abandoned calls are not "not sent"; sent, answered, possibly charged apart.


def test_abandoned_calls_are_counted_apart(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(faults={"hang": 1.0}, hang_seconds=60)
    write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "o.ndjson"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_DRAIN_TIMEOUT": "0.5"}
    process = subprocess.Popen(
        [sys.executable, "-m", "octave_bulk", *_run_args(sim.url, tmp_path, out,
         "--concurrency", "4", "--no-adaptive")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while sim.stats()["in_flight"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    summary = json.loads(side(out, ".summary.json").read_text())
    counts, calls = summary["counts"], summary["calls"]
    assert counts["abandoned_in_flight"] == 4 and calls["abandoned_in_flight"] == 4
    assert counts["not_sent"] == counts["queued"] - 4
    assert calls["sent"] == 4 and calls["answered"] == 0 and summary["paid_calls"] == 4
    assert len(InflightSlots.leftovers(side(out, ".inflight"))) == 4  # outcome unknown next run


def test_contacts_stopped_between_attempts_are_not_counted_unsent(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(faults={"500": 1.0})
    write_contacts(tmp_path / "in.csv", 20)
    out = tmp_path / "o.ndjson"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_BACKOFF_INITIAL": "60", "OCTAVE_BACKOFF_MAX": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "octave_bulk", *_run_args(sim.url, tmp_path, out,
         "--concurrency", "4", "--no-adaptive")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while sim.stats()["totals"].get("calls", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the four are in their backoff now
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    counts = json.loads(side(out, ".summary.json").read_text())["counts"]
    assert counts["stopped_after_sending"] == 4 and counts["abandoned_in_flight"] == 0
    assert counts["not_sent"] == counts["queued"] - 4


async def test_calls_that_never_reached_a_server_are_not_charged(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_contacts(tmp_path / "in.csv", 2)
    settings = sim_settings(  # no check before the run: the calls themselves find no server
        f"http://127.0.0.1:{port}", max_attempts=2, check_agent=False, allow_overdraft=True
    )
    summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert summary["calls"]["attempted"] == 4
    assert summary["calls"]["sent"] == 0 and summary["paid_calls"] == 0
    assert summary["calls"]["possibly_charged"] == 0


# 15. The descriptor limit is checked against the concurrency; local errors are named local.


_LIMITED = """\
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
sys.argv[1:3] = []
from octave_bulk.cli.main import main
main(sys.argv[1:])
"""


def test_too_few_descriptors_for_the_concurrency(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    env = {**os.environ, "OCTAVE_API_KEY": TEST_KEY}
    args = _run_args(sim.url, tmp_path, tmp_path / "o.ndjson", "--concurrency", "2000")
    low = subprocess.run([sys.executable, "-c", _LIMITED, "256", "256", *args],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert low.returncode == 2 and "ulimit -n" in low.stderr, low.stderr
    assert sim.stats()["totals"].get("calls", 0) == 0
    raised = subprocess.run([sys.executable, "-c", _LIMITED, "256", "4096", *args],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert raised.returncode == 0, raised.stderr  # the soft limit was raised


def test_out_of_descriptors_is_a_local_error() -> None:
    cause = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    try:
        try:
            raise cause
        except OSError as exc:
            raise httpx.ConnectError("cannot connect") from exc
    except httpx.ConnectError as exc:
        error = transport_error(exc, "r1")
    assert error.kind == ErrorKind.LOCAL and "local error, not the API" in error.message


# 16. Answers at the edges.


async def test_empty_emails_and_deep_json(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 3)
    forced = {"c-00000": "empty_emails", "c-00001": "deep"}
    with serve_hostile(hostile=HostileConfig(forced=forced)) as sim:
        settings = sim_settings(sim.url, max_attempts=2)
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert summary["counts"]["succeeded"] == 1
    assert summary["failures_by_kind"] == {"not_found": 1, "invalid_json": 1}
    errors = {e["requestId"]: e for e in read_lines(tmp_path / "o.errors.ndjson")}
    assert "without a subject or a body" in errors["c-00000"]["error"]["message"]
    assert not errors["c-00000"]["error"]["retryable"] and errors["c-00001"]["attempts"] == 2


# 8. Duplicate counting is the same after a cursor resume as on a full read.


async def test_duplicates_of_the_skipped_prefix_count_as_on_a_full_read(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    path = tmp_path / "in.csv"
    header = "email,firstName,lastName,companyName,jobTitle,crmContactId\n"
    rows = [f"p{n}@example.com,F{n},Doe,Acme,VP,{n}\n" for n in range(30)]
    # The same people under another CRM record, after the prefix:
    rows += [f"p{n}@example.com,F{n},Doe,Acme,VP,9{n}\n" for n in (0, 3, 7)]
    path.write_text(header + "".join(rows), encoding="utf-8")
    control = await run_batch(path, tmp_path / "c" / "o.ndjson", sim_settings(sim.url))
    assert control["counts"]["duplicate"] == 3
    out = tmp_path / "o.ndjson"
    await run_batch(path, out, sim_settings(sim.url, limit=20))
    resumed = await run_batch(path, out, sim_settings(sim.url))
    assert resumed["resume_cursor"]["rows_skipped_unread"] >= 20
    for name in ("read", "duplicate", "rejected"):
        assert resumed["counts"][name] == control["counts"][name], name
    assert resumed["counts"]["skipped_done"] + resumed["counts"]["succeeded"] == 30
    again = await run_batch(path, out, sim_settings(sim.url))  # and once more, all skipped
    assert again["resume_cursor"]["rows_skipped_unread"] == 33
    assert again["counts"]["duplicate"] == 3 and again["counts"]["skipped_done"] == 30


# 3: a server that refuses every call stops the run in bounded time, whatever its pacing.


async def test_a_429_streak_stops_the_run_resumably(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 50)
    with serve_hostile(hostile=HostileConfig(streak_429=(3600.0, 3600.0))) as sim:
        # The pacing slows to ~0.05 calls/s: 100 refusals in a row would take half an hour.
        settings = sim_settings(sim.url, refusal_patience=4.0, concurrency=4)
        started = time.monotonic()
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", settings)
    assert time.monotonic() - started < 30
    assert summary["exit_code"] == 4 and summary["stop_reason"] == "breaker"
    assert "refused every call for" in summary["stop_detail"]
    assert "quota exhausted" in summary["stop_detail"] and summary["counts"]["succeeded"] == 0


async def test_a_retry_after_beyond_the_patience_stops_at_once(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 50)
    hostile = HostileConfig(streak_429=(3600.0, 3600.0), retry_after_429="86400")
    with serve_hostile(hostile=hostile) as sim:
        started = time.monotonic()
        summary = await run_batch(tmp_path / "in.csv", tmp_path / "o.ndjson", sim_settings(sim.url))
    assert time.monotonic() - started < 15  # not 600 s pauses, one after the other
    assert summary["exit_code"] == 4 and "asks to wait 86400 s" in summary["stop_detail"]
