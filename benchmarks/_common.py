"""Helpers shared by the benchmark scripts: a simulator subprocess, CPU and steal accounting,
and the result table/JSON every script prints and writes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results"
RUN_PATH = "/api/v2/agents/sequence/run"


def pinned(cmd: list[str], cpu: int) -> list[str]:
    """Pin a command to one CPU (as perf-notes did) when taskset exists and there are 2+ CPUs."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


@dataclass
class Simulator:
    url: str
    process: subprocess.Popen[str]

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stats(self, detail: bool = False) -> dict[str, Any]:
        import httpx

        query = "" if detail else "?detail=0"
        return httpx.get(f"{self.url}/__simulator/stats{query}", timeout=60).json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.url}/__simulator/reset", timeout=10)


@contextlib.contextmanager
def simulator(*args: str, cpu: int = 0) -> Iterator[Simulator]:
    """Run ``octave-bulk simulate --port 0 ARGS`` in a subprocess pinned to ``cpu``."""
    cmd = pinned([sys.executable, "-m", "octave_bulk", "simulate", "--port", "0", *args], cpu)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield Simulator(url=line.rsplit(" ", 1)[1].strip(), process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def steal_ticks() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat, to flag runs disturbed by the hypervisor."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0, 1
    values = [int(v) for v in fields]
    return (values[7] if len(values) > 7 else 0), sum(values)


class StealMeter:
    """Fraction of CPU time stolen by the hypervisor between start and stop."""

    def __enter__(self) -> StealMeter:
        self._start = steal_ticks()
        self.fraction = 0.0
        return self

    def __exit__(self, *_exc: object) -> None:
        steal, total = steal_ticks()
        self.fraction = (steal - self._start[0]) / max(1, total - self._start[1])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def report(
    name: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    *,
    smoke: bool = False,
) -> None:
    """Print rows as a table and write them with the machine to results/NAME.json
    (results/smoke/NAME.json for smoke runs, which are not kept)."""
    if rows:
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
        print(" | ".join(k.ljust(widths[k]) for k in keys))
        print("-+-".join("-" * widths[k] for k in keys))
        for row in rows:
            print(" | ".join(_fmt(row.get(k)).ljust(widths[k]) for k in keys))
    folder = RESULTS / "smoke" if smoke else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {folder / (name + '.json')}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)
