"""Helpers for engine tests: contact files, settings for a simulator, reading outputs."""

from __future__ import annotations

import contextlib
import csv
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from octave_bulk.settings.model import Settings
from tests.conftest import TEST_KEY


class Run:
    """``octave-bulk run`` in a subprocess; its stdout and stderr go to files."""

    count = 0

    def __init__(
        self, url: str, input_path: Path, out: Path, *extra: str, key: str = TEST_KEY
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
        env["OCTAVE_API_KEY"] = key
        cmd = [
            sys.executable, "-m", "octave_bulk", "run", str(input_path), "-o", str(out),
            "--agent", "ca_test", "--base-url", url, "--rate", "none", "--no-progress",
            "--timeout", "5", *extra,
        ]  # fmt: skip
        Run.count += 1
        self.log = out.parent / f"run-{Run.count}.log"
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.log.read_text(errors="replace")


def wait_for_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    """Wait until ``path`` holds at least ``count`` complete lines (a run under way: a kill
    then lands mid-run however slowly the machine started it), or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)


def write_contacts(path: Path, count: int, *, start: int = 0, ids: bool = True) -> list[str]:
    """A canonical-column CSV; returns the requestIds (explicit ones when ``ids``)."""
    rids = [f"c-{n:05d}" for n in range(start, start + count)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["requestId", "email", "firstName", "lastName", "companyName", "jobTitle"])
        for n, rid in zip(range(start, start + count), rids, strict=True):
            writer.writerow(
                [rid if ids else "", f"p{n}@example.com", f"First{n}", "Doe", "Acme", "VP"]
            )
    return rids


def sim_settings(url: str, **overrides: Any) -> Settings:
    """Settings for a run against a simulator: fast retries, no progress bar."""
    base: dict[str, Any] = {
        "base_url": url,
        "api_key": TEST_KEY,
        "agent_oid": "ca_test",
        "rate": "none",
        "concurrency": 8,
        "timeout": 5.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.2,
        "progress": False,
        "fsync_interval": 0.05,
    }
    return Settings.load(**(base | overrides))


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path.name} ends with a torn line"
    return [json.loads(line) for line in raw.splitlines()]


def side(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)


def start_run(
    url: str, contacts: Path, out: Path, ledger: str | None, *extra: str
) -> subprocess.Popen[str]:
    """``octave-bulk run`` in a process against the simulator at ``url``, its ledger (when
    given) from ``OCTAVE_LEDGER``; calls time out after 2 s and a drain lasts 1 s (a shared
    ledger's lease is then 5 s). Its output goes to ``OUT.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_DRAIN_TIMEOUT": "1"}
    if ledger is not None:
        env["OCTAVE_LEDGER"] = ledger
    cmd = [
        sys.executable, "-m", "octave_bulk", "run", str(contacts), "-o", str(out),
        "--agent", "ca_test", "--base-url", url, "--no-progress", "--timeout", "2", *extra,
    ]  # fmt: skip
    with open(out.with_suffix(".log"), "w") as log:  # the process keeps its own copy
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


class _Hook(http.server.BaseHTTPRequestHandler):
    """A webhook that keeps the JSON documents it is sent (``server.posts``)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.server.posts.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def webhook() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A webhook on loopback for the block: its port, and the documents posted to it."""
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    posts: list[dict[str, Any]] = []
    hook.posts = posts  # type: ignore[attr-defined]
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        yield hook.server_address[1], posts
    finally:
        hook.shutdown()
        hook.server_close()


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[str]:
    """``octave-bulk simulate ARGS`` in a process of its own, as the benchmarks run it; yields
    its URL. In the test's process it shares the engine's interpreter lock: on a loaded
    machine its limiter then sees arrivals bunched by its own scheduling."""
    cmd = [sys.executable, "-m", "octave_bulk", "simulate", "--port", "0", "--seed", "1", *args]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as served:
        try:
            assert served.stdout is not None
            yield served.stdout.readline().rsplit(" ", 1)[-1].strip()
        finally:
            served.kill()
