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
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

RESULTS = Path(__file__).parent / "results"
RUN_PATH = "/api/v2/agents/sequence/run"
ENGINE_ENV = {**os.environ, "OCTAVE_API_KEY": "bench"}
MAX_STEAL = 0.05  # runs with more steal than this are repeated
MAX_OTHERS = 0.10  # ... and with other processes using more than this many cores meanwhile


def pinned(cmd: list[str], cpu: int) -> list[str]:
    """Pin a command to one CPU when taskset exists and there are 2+ CPUs."""
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


class Noise:
    """Steal (as StealMeter) plus the CPU that processes outside this benchmark's own process
    tree used meanwhile, in cores (e.g. someone's test run on the same VM): the busy jiffies
    of /proc/stat minus this process, its reaped children and its live descendants."""

    def __enter__(self) -> Noise:
        self.steal = self.others = 0.0
        self._ticks = _busy_ticks()
        self._own = _own_cpu()
        self._live = _descendant_cpu()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        (steal, total, busy), (steal0, total0, busy0) = _busy_ticks(), self._ticks
        self.steal = (steal - steal0) / max(1, total - total0)
        live = _descendant_cpu()
        ours = _own_cpu() - self._own + sum(live[p] - c for p, c in self._live.items() if p in live)
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        wall = max(1e-9, time.monotonic() - self._wall)
        self.others = max(0.0, ((busy - busy0) / hz - ours) / wall)

    @property
    def quiet(self) -> bool:
        return self.steal <= MAX_STEAL and self.others <= MAX_OTHERS


def _busy_ticks() -> tuple[int, int, int]:
    """(steal, total, busy) jiffies; busy = user + nice + system + irq + softirq."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 1, 0
    values += [0] * (8 - len(values))
    return values[7], sum(values), values[0] + values[1] + values[2] + values[5] + values[6]


def _own_cpu() -> float:
    import resource

    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _descendant_cpu() -> dict[int, float]:
    cpu = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            cpu[child.pid] = times.user + times.system
    return cpu


def quietest(measure: Callable[[], tuple[Any, Noise]], attempts: int = 3) -> tuple[Any, Noise]:
    """Run ``measure`` until a run is quiet (steal <= 5 %, others <= 0.1 core), at most
    ``attempts`` times; return the quiet run, else the least disturbed one."""
    best: tuple[Any, Noise] | None = None
    for _ in range(attempts):
        result, noise = measure()
        if best is None or noise.steal + noise.others < best[1].steal + best[1].others:
            best = (result, noise)
        if noise.quiet:
            return result, noise
    assert best is not None
    return best


def engine_cmd(input_path: Path, out: Path, url: str, *flags: str, cpu: int = 1) -> list[str]:
    """``octave-bulk run`` on the simulator at ``url``, pinned to ``cpu`` (add ENGINE_ENV)."""
    cmd = [sys.executable, "-m", "octave_bulk", "run", str(input_path), "-o", str(out),
           "--agent", "ca_bench", "--base-url", url, "--no-progress", *flags]  # fmt: skip
    return pinned(cmd, cpu)


@dataclass
class Child:
    returncode: int
    wall: float  # seconds from spawn to exit, as seen from here
    cpu: float  # user + system seconds of the child
    peak_rss_mib: float  # the child's peak RSS: VmHWM of /proc/PID/status, polled
    stderr: str
    timed_out: bool = False  # stopped with SIGTERM at ``timeout`` (the engine drains and exits)


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    grace: float = 180,
    poll: Callable[[int], None] | None = None,
) -> Child:
    """Run a command to completion and return its own CPU time (``os.wait4``, so the figures are
    this child's alone) and peak RSS. After ``timeout`` s it gets SIGTERM, after ``grace`` more
    SIGKILL. ``poll(pid)`` is called every ~5 ms while it runs.

    Peak RSS is VmHWM from /proc/PID/status, read every ~5 ms (it is the high-water mark of the
    process's current memory map, so the last read before exit is the peak). Not wait4's
    ``ru_maxrss``: Linux carries the parent's high-water mark into a child across fork/vfork and
    exec, so a benchmark process that once held 100 MB would make every child look that big."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        timed_out, peak_kib = False, 0
        status_file = Path(f"/proc/{process.pid}/status")
        while True:
            with contextlib.suppress(OSError, ValueError):
                for line in status_file.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - start
            if elapsed > timeout and not timed_out:
                timed_out = True
                process.terminate()
            elif elapsed > timeout + grace:
                process.kill()
            if poll is not None:
                poll(process.pid)
            time.sleep(0.005)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return Child(
        returncode=process.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=peak_kib / 1024,
        stderr=text[-4000:],
        timed_out=timed_out,
    )


def clear_outputs(out: Path) -> None:
    """Delete OUT.ndjson and its side files."""
    for path in out.parent.glob(out.stem + ".*"):
        path.unlink()


def run_summary(out: Path) -> dict[str, Any]:
    """The OUT.summary.json a run left next to ``out``."""
    from octave_bulk.state.paths import OutputPaths

    return orjson.loads(OutputPaths(out).summary.read_bytes())  # type: ignore[no-any-return]


def write_contacts(path: Path, count: int, *, start: int = 0) -> list[str]:
    """The test suite's canonical contacts CSV (explicit requestIds ``c-00000``...)."""
    # The snapshot's tests when measuring one, else this checkout's (the package itself may be
    # installed in site-packages, without its tests).
    root = package_root()
    if not (root / "tests" / "helpers.py").exists():
        root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.helpers import write_contacts as write

    return write(path, count, start=start)


def pin_self(cpu: int) -> None:
    """Pin this process (when there are 2+ CPUs), e.g. next to the simulator on CPU 0."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def package_root() -> Path:
    """The directory holding the ``octave_bulk`` that runs (the repo, or a snapshot on
    PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("octave_bulk")
    assert spec is not None and spec.origin is not None, "octave_bulk is not importable"
    return Path(spec.origin).resolve().parent.parent


def code_version() -> dict[str, Any]:
    """The commit measured and the package files that differed from it (read-only git); for a
    ``git archive`` snapshot on PYTHONPATH, the commit named in its GIT_COMMIT file."""
    root = package_root()
    if (root / "GIT_COMMIT").exists():
        commit = (root / "GIT_COMMIT").read_text().strip()
        return {"commit": commit, "uncommitted": [], "source": f"git archive at {root}"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "octave_bulk"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return {}
    return {"commit": commit, "uncommitted": [line[3:] for line in status.splitlines()]}


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
    report_table(rows)
    folder = RESULTS / "smoke" if smoke else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "machine": machine(),
        "code": code_version(),
        "rows": rows,
        **(extra or {}),
    }
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {folder / (name + '.json')}")


def report_table(rows: list[dict[str, Any]]) -> None:
    """Print rows as a table (the keys of the first row)."""
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-+-".join("-" * widths[k] for k in keys))
    for row in rows:
        print(" | ".join(_fmt(row.get(k)).ljust(widths[k]) for k in keys))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)
