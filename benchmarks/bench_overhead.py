"""Engine overhead at `instant` latency: the whole `octave-bulk run` process against plain loops.

20,000 contacts, concurrency 64, the simulator in its own process on CPU 0 and every client on
CPU 1. The engine's figure is the whole process - start, read CSV, validate, send, check,
write, fsync, summary - against (a) a plain httpx loop over the same transport and (b) a bare
aiohttp loop, both sending the same request bodies. Targets: engine >= 0.85 x (a) and >= 0.5 x
(b).

Other agents (``--other-agents``, default qualify-person and enrich-company): the engine
running that agent over the same number of contacts (companies for a company agent) vs a bare
aiohttp loop sending its exact bodies to its endpoint; its ratio over the Sequence Agent's
ratio should be 1 +- 5 % (the registry adds nothing per contact).

Start-up, in fresh processes pinned to CPU 1 (median of 5 each):

* ``octave-bulk --version``: spawn to exit. Target <= 0.3 s.
* ``run`` start-up to first request: from just before the spawn to the simulator's first
  received run call (its ``first_call_unix``; both clocks are this machine's ``time.time()``),
  on the same input with ``--limit 64``. Target <= 0.5 s. The same figure is also recorded
  for every engine and loop row of the throughput runs (``first_call_s``).

Time series (``series``, kept for ``octave-bulk report``): the engine with the per-second
recorder on and off (``OCTAVE_SERIES=false``), alternated, best of each: their throughput
ratio; and the recorder's own CPU per sampled second (a sample, and a fifth of a write to a
real ledger, with thousands of latencies added between samples) as a share of that second.
Target: <= 1 % either way.

Ratio only (``--ratio-only``): the engine and the bare aiohttp loop alone, alternated
``--repeat`` times, the best of each kept (results/overhead_ratio.json). With ``--baseline
DIR`` (DIR holding another snapshot of the package, e.g. ``git archive 7d39119 octave_bulk |
tar -x -C DIR``) that snapshot's engine is measured in the same alternation
(``PYTHONPATH=DIR``): before and after, under the same load. Each row also carries the
engine's CPU seconds per 1k contacts, steadier than the wall on a loaded machine.

Instructions (``--instructions``, needs valgrind): the CPU work itself, which the load of other
processes does not change (wall and CPU seconds do, on a shared VM): each client's whole
process run under ``valgrind --tool=cachegrind --cache-sim=no`` at 200 and 2,200 contacts;
the difference / 2,000 is its instructions per contact, the 200-contact run less 200 of them
its fixed cost (start-up and finish). The engine, ``--baseline`` if given, and the bare aiohttp
loop; their ratio at ``--contacts`` is what the engine would reach against the loop were both
bound by their CPU alone (results/overhead_instructions.json).

    python benchmarks/bench_overhead.py [--contacts 20000] [--concurrency 64] [--smoke]
    python benchmarks/bench_overhead.py --instructions --contacts 12000 --baseline /tmp/base
    python benchmarks/bench_overhead.py --ratio-only --contacts 12000 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Noise, Simulator, pinned, report, simulator

HERE = Path(__file__).parent
sys.path.append(str(HERE.parent))  # after PYTHONPATH: a snapshot there is what gets measured

from tests.helpers import write_contacts  # noqa: E402


def request_bodies(csv_path: Path, out: Path, agent_type: str = "sequence") -> str:
    """The exact bodies the engine sends for these contacts, via its own request builder;
    returns the agent's endpoint."""
    from octave_bulk.agents import get_agent
    from octave_bulk.input.intake import open_contacts
    from octave_bulk.input.records import Contact
    from octave_bulk.run.build import build_request, request_spec
    from octave_bulk.settings.model import Settings

    settings = Settings.load(agent_oid="ca_bench", agent_type=agent_type)
    spec, agent = request_spec(settings), get_agent(agent_type)
    with open_contacts(csv_path, settings) as reader, open(out, "w") as handle:
        for record in reader:
            if isinstance(record, Contact):
                built = build_request(record, spec, agent)
                line = {"rid": built.request_id, "body": built.wire}  # type: ignore[union-attr]
                handle.write(json.dumps(line) + "\n")
    return agent.path


def company_csv(path: Path, count: int) -> None:
    """Companies, each its own domain (a company agent's input)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        handle.write("companyDomain,companyName,crmAccountId\n")
        for n in range(count):
            handle.write(f"co{n}.com,Co {n},{700000 + n}\n")


def child_cpu(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


VERSION_TARGET = 0.3  # s, `octave-bulk --version`
STARTUP_TARGET = 0.5  # s, `run` spawn to the first request received
AIOHTTP_TARGET = 0.5  # engine / bare aiohttp loop
SERIES_TARGET = 0.01  # the time series' overhead, a share of throughput and of each second's CPU


def engine_run_cmd(url: str, csv_path: Path, out: Path, concurrency: int, *extra: str) -> list[str]:
    return pinned(
        [sys.executable, "-m", "octave_bulk", "run", str(csv_path), "-o", str(out), "--agent", "ca_bench",
         "--base-url", url, "--rate", "none", "--concurrency", str(concurrency), "--no-progress",
         *extra],
        1,
    )  # fmt: skip


def clear_out(out_dir: Path) -> Path:
    for stale in out_dir.glob("out.*"):
        stale.unlink()
    return out_dir / "out.ndjson"


def run_engine(
    url: str,
    csv_path: Path,
    out_dir: Path,
    concurrency: int,
    agent_type: str = "sequence",
    *,
    series: bool = True,
    code: Path | None = None,
) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole engine run; ``code``: a snapshot's directory, put
    first on PYTHONPATH (None: the installed package)."""
    cmd = engine_run_cmd(url, csv_path, clear_out(out_dir), concurrency, "--agent-type", agent_type)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "OCTAVE_API_KEY": "bench", "OCTAVE_SERIES": str(series).lower()}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    # Run from the work folder: ``python -m`` puts the current folder first on sys.path, and a
    # checkout there would be measured instead of the snapshot (or the installed package).
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=out_dir)
    return time.perf_counter() - start, child_cpu(before)


def version_seconds(runs: int = 5) -> list[float]:
    """Wall seconds of ``octave-bulk --version`` (the console script when installed next to
    this Python, else ``python -m octave_bulk``), fresh processes."""
    script = Path(sys.executable).parent / "octave-bulk"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "octave_bulk"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(pinned([*base, "--version"], 1), check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def startup_seconds(
    sim: Simulator, csv_path: Path, out_dir: Path, concurrency: int, runs: int = 5
) -> list[float]:
    """Seconds from spawning ``octave-bulk run`` to the simulator's first received call."""
    times = []
    for _ in range(runs):
        sim.reset()
        cmd = engine_run_cmd(sim.url, csv_path, clear_out(out_dir), concurrency, "--limit", "64")
        start = time.time()
        subprocess.run(
            cmd, check=True, env={**os.environ, "OCTAVE_API_KEY": "bench"}, capture_output=True
        )
        times.append(first_call_s(sim, start))
    return times


def first_call_s(sim: Simulator, start: float) -> float:
    """Seconds from ``start`` (a ``time.time()``) to the simulator's first run call."""
    first = sim.stats()["first_call_unix"]
    return float("nan") if first is None else first - start


def run_plain(
    kind: str, url: str, bodies: Path, concurrency: int, path: str = "/api/v2/agents/sequence/run"
) -> tuple[float, float, float]:
    cmd = pinned(
        [sys.executable, str(HERE / "_plain_clients.py"), kind, url, str(bodies),
         str(concurrency), path],
        1,
    )  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    inner = json.loads(result.stdout)
    return time.perf_counter() - start, inner["wall"], child_cpu(before)


def other_agent(
    sim: Simulator, work: Path, kind: str, n: int, concurrency: int, repeat: int
) -> dict[str, float]:
    """The engine running ``kind`` vs a bare aiohttp loop sending its exact bodies."""
    from octave_bulk.agents import COMPANY_AGENTS

    csv_path = work / f"{kind}.csv"
    if kind in COMPANY_AGENTS:
        company_csv(csv_path, n)
    else:
        write_contacts(csv_path, n)
    path = request_bodies(csv_path, work / f"{kind}.ndjson", kind)
    best: dict[str, float] = {}
    for _ in range(repeat):
        for client in ("engine", "aiohttp"):
            sim.reset()
            if client == "engine":
                wall, _cpu = run_engine(sim.url, csv_path, work, concurrency, kind)
            else:
                wall, _loop, _cpu = run_plain(
                    client, sim.url, work / f"{kind}.ndjson", concurrency, path
                )
            served = sim.stats()["totals"].get("successes", 0)
            assert served == n, f"{kind} {client}: simulator served {served} of {n}"
            best[client] = max(best.get(client, 0.0), n / wall)
    return {
        "per_s_whole_process": best["engine"],
        "aiohttp_per_s": best["aiohttp"],
        "engine_ratio": best["engine"] / best["aiohttp"],
    }


def series_overhead(
    sim: Simulator, csv_path: Path, work: Path, n: int, concurrency: int, repeat: int
) -> dict[str, float]:
    """The engine's throughput with the time series recorded and without, alternated."""
    best = {True: 0.0, False: 0.0}
    for _ in range(repeat):
        for series in (False, True):
            sim.reset()
            wall, _cpu = run_engine(sim.url, csv_path, work, concurrency, series=series)
            best[series] = max(best[series], n / wall)
    return {
        "with_per_s": best[True],
        "without_per_s": best[False],
        "ratio": best[True] / best[False],
    }


def recorder_cpu_share(work: Path, seconds: int = 500, per_second: int = 4000) -> float:
    """CPU the series recorder takes per sampled second (sample + a fifth of a write to a
    real ledger), as a share of that second; ``per_second`` latencies are added between
    samples (their cost is the worker's, not counted)."""
    import random

    from octave_bulk.limits.adaptive import AdaptiveLimiter
    from octave_bulk.observe.series import SeriesRecorder
    from octave_bulk.run.summary import RunStats
    from octave_bulk.state.history import RunHistory

    stats, spent = RunStats(), 0.0
    with RunHistory.open(work / "series-bench.ledger.sqlite") as history:
        recorder = SeriesRecorder("bench", stats, AdaptiveLimiter(None, 64), history)
        for second in range(seconds):
            for _ in range(per_second):
                stats.latency.add(random.lognormvariate(4, 0.5))
            stats.calls += per_second
            started = time.process_time()
            recorder.sample()
            if second % recorder.write_every == recorder.write_every - 1:
                recorder.write()
            spent += time.process_time() - started
    return spent / seconds / recorder.interval


def ratio_only(
    sim: Simulator,
    work: Path,
    n: int,
    concurrency: int,
    repeat: int,
    baseline: Path | None,
    *,
    smoke: bool,
) -> None:
    """The engine (and a baseline snapshot's) against the bare aiohttp loop, alternated."""
    kinds = ["engine", *(["engine-baseline"] if baseline else []), "aiohttp"]
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):
        for kind in kinds:
            sim.reset()
            with Noise() as noise:
                if kind == "aiohttp":
                    wall, _loop, cpu = run_plain(kind, sim.url, work / "bodies.ndjson", concurrency)
                else:
                    code = baseline if kind == "engine-baseline" else None
                    wall, cpu = run_engine(sim.url, work / "in.csv", work, concurrency, code=code)
            served = sim.stats()["totals"].get("successes", 0)
            assert served == n, f"{kind}: simulator served {served} of {n}"
            row = {"per_s": n / wall, "cpu_s_per_1k": cpu / n * 1000, "others_cores": noise.others}
            print(f"{kind:16} {row['per_s']:8,.0f}/s  cpu {row['cpu_s_per_1k']:.3f} s/1k  "
                  f"others {noise.others:.2f} cores", flush=True)  # fmt: skip
            if kind not in best or row["per_s"] > best[kind]["per_s"]:
                best[kind] = row
    bare = best["aiohttp"]["per_s"]
    rows = [
        {"client": kind, "contacts": n, **r, "engine_over_aiohttp": r["per_s"] / bare}
        for kind, r in best.items()
    ]
    extra = {
        "repeat": repeat,
        "baseline": str(baseline) if baseline else None,
        "target": f"engine / aiohttp >= {AIOHTTP_TARGET}",
    }
    report("overhead_ratio", rows, extra, smoke=smoke)


def instructions(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Instructions of one whole process under cachegrind."""
    grind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    done = subprocess.run([*grind, *cmd], env=env, capture_output=True, text=True, cwd=cwd)
    done.check_returncode()
    refs = [line for line in done.stderr.splitlines() if "I" in line and "refs:" in line]
    return int(refs[-1].split(":")[1].replace(",", "").split()[0])


def instruction_counts(
    sim: Simulator, work: Path, n: int, concurrency: int, baseline: Path | None, *, smoke: bool
) -> None:
    """Instructions per contact and fixed, engine (and baseline) vs the bare aiohttp loop."""
    small, large = (20, 220) if smoke else (200, 2200)
    for size in (small, large):
        write_contacts(work / f"c{size}.csv", size)
        request_bodies(work / f"c{size}.csv", work / f"b{size}.ndjson")
    kinds = ["engine", *(["engine-baseline"] if baseline else []), "aiohttp"]
    rows = []
    for kind in kinds:
        counts = {}
        for size in (small, large):
            sim.reset()
            if kind == "aiohttp":
                cmd = [sys.executable, str(HERE / "_plain_clients.py"), "aiohttp", sim.url,
                       str(work / f"b{size}.ndjson"), str(concurrency)]  # fmt: skip
                counts[size] = instructions(cmd)
            else:
                env = {**os.environ, "OCTAVE_API_KEY": "bench"}
                if kind == "engine-baseline":
                    env["PYTHONPATH"] = os.pathsep.join(
                        filter(None, [str(baseline), env.get("PYTHONPATH")])
                    )
                cmd = engine_run_cmd(sim.url, work / f"c{size}.csv", clear_out(work), concurrency)
                counts[size] = instructions(cmd[cmd.index(sys.executable) :], env, work)
        per = (counts[large] - counts[small]) / (large - small)
        fixed = counts[small] - small * per
        rows.append({"client": kind, "instructions_per_contact": per, "fixed_instructions": fixed,
                     "at_contacts": n, "total_at_contacts": fixed + n * per})  # fmt: skip
    bare = rows[-1]["total_at_contacts"]
    for row in rows:
        row["cpu_bound_ratio"] = bare / row["total_at_contacts"]
    report("overhead_instructions", rows, {"target": f">= {AIOHTTP_TARGET}"}, smoke=smoke)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per client; the best is kept")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--other-agents",
        nargs="*",
        default=["qualify-person", "enrich-company"],
        help="agents measured besides the Sequence Agent: engine vs bare aiohttp loop",
    )
    parser.add_argument(
        "--ratio-only",
        action="store_true",
        help="only the engine against the bare aiohttp loop (results/overhead_ratio.json)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per contact under valgrind (results/overhead_instructions.json)",
    )
    parser.add_argument(
        "--baseline", type=Path, help="a directory holding another octave_bulk to measure too"
    )
    args = parser.parse_args()
    n = 500 if args.smoke else args.contacts
    repeat = 1 if args.smoke else args.repeat
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "instant", cpu=0) as sim:
        work = Path(tmp)
        write_contacts(work / "in.csv", n)
        request_bodies(work / "in.csv", work / "bodies.ndjson")
        if args.instructions:
            instruction_counts(sim, work, n, args.concurrency, args.baseline, smoke=args.smoke)
            return
        if args.ratio_only:
            ratio_only(sim, work, n, args.concurrency, repeat, args.baseline, smoke=args.smoke)
            return
        results: dict[str, dict[str, float]] = {}
        for _ in range(repeat):
            for kind in ("engine", "httpx-post", "httpx-transport", "aiohttp"):
                sim.reset()
                started = time.time()
                with Noise() as noise:
                    if kind == "engine":
                        wall, cpu = run_engine(sim.url, work / "in.csv", work, args.concurrency)
                        loop_wall = wall
                    else:
                        wall, loop_wall, cpu = run_plain(
                            kind, sim.url, work / "bodies.ndjson", args.concurrency
                        )
                served = sim.stats()["totals"].get("successes", 0)
                assert served == n, f"{kind}: simulator served {served} of {n}"
                row = {
                    "per_s": n / wall,
                    "loop_per_s": n / loop_wall,
                    "cpu_s_per_1k": cpu / n * 1000,
                    "steal": noise.steal,
                    "others_cores": noise.others,
                    "first_call_s": first_call_s(sim, started),
                }
                if kind not in results or row["per_s"] > results[kind]["per_s"]:
                    results[kind] = row
        series = series_overhead(sim, work / "in.csv", work, n, args.concurrency, repeat)
        series["recorder_cpu_share"] = recorder_cpu_share(work, 50 if args.smoke else 500)
        agent_ratios = {
            kind: other_agent(sim, work, kind, n, args.concurrency, repeat)
            for kind in args.other_agents
        }
        with Noise() as startup_noise:
            versions = version_seconds()
            startups = startup_seconds(sim, work / "in.csv", work, args.concurrency)
    engine = results["engine"]["per_s"]
    rows = [
        {
            "client": kind,
            "contacts": n,
            "per_s_whole_process": r["per_s"],
            "per_s_send_loop_only": r["loop_per_s"],
            "cpu_s_per_1k": r["cpu_s_per_1k"],
            "engine_ratio": engine / r["per_s"],
            "first_call_s": r["first_call_s"],
            "steal": r["steal"],
            "others_cores": r["others_cores"],
        }
        for kind, r in results.items()
    ]
    a, a2, b = (results[k]["per_s"] for k in ("httpx-post", "httpx-transport", "aiohttp"))
    version, startup = statistics.median(versions), statistics.median(startups)
    sequence_ratio = engine / b
    for kind, measured in agent_ratios.items():
        rows.append({"client": f"engine --agent-type {kind}", "contacts": n, **measured})
    extra = {
        "other_agents": {
            kind: {
                "engine_over_aiohttp": m["engine_ratio"],
                "vs_sequence": m["engine_ratio"] / sequence_ratio,
            }
            for kind, m in agent_ratios.items()
        },  # fmt: skip
        "series": series,
        "engine_per_s": engine,
        "ratio_to_httpx_post_loop": engine / a,
        "ratio_to_httpx_transport_loop": engine / a2,
        "ratio_to_aiohttp_loop": engine / b,
        "version_s": version,
        "version_s_runs": versions,
        "startup_to_first_request_s": startup,
        "startup_to_first_request_s_runs": startups,
        "startup_steal": startup_noise.steal,
        "startup_others_cores": startup_noise.others,
        "target": ">= 0.85 x plain httpx loop (a)",
        "targets": {
            "ratio_to_httpx_post_loop": ">= 0.85",
            "ratio_to_aiohttp_loop": f">= {AIOHTTP_TARGET}",
            "version_s": f"<= {VERSION_TARGET}",
            "startup_to_first_request_s": f"<= {STARTUP_TARGET}",
            "series.ratio": f">= {1 - SERIES_TARGET}",
            "series.recorder_cpu_share": f"<= {SERIES_TARGET}",
        },
    }
    report("overhead", rows, extra, smoke=args.smoke)
    checks = [
        ("engine / plain httpx loop (client.post)", f"{engine / a:.2f}", ">= 0.85", engine / a >= 0.85),
        ("engine / httpx transport-direct loop", f"{engine / a2:.2f}", "-", None),
        ("engine / bare aiohttp loop", f"{engine / b:.2f}", f">= {AIOHTTP_TARGET}", engine / b >= AIOHTTP_TARGET),
        ("octave-bulk --version, s (median of 5)", f"{version:.3f}", f"<= {VERSION_TARGET}", version <= VERSION_TARGET),
        ("run start-up to first request, s (median of 5)", f"{startup:.3f}", f"<= {STARTUP_TARGET}", startup <= STARTUP_TARGET),
        ("time series on / off, throughput", f"{series['ratio']:.3f}", f">= {1 - SERIES_TARGET}", series["ratio"] >= 1 - SERIES_TARGET),
        ("time series recorder, CPU share of each second", f"{series['recorder_cpu_share']:.5f}", f"<= {SERIES_TARGET}", series["recorder_cpu_share"] <= SERIES_TARGET),
    ]  # fmt: skip
    for kind, m in agent_ratios.items():
        share = m["engine_ratio"] / sequence_ratio
        checks.append((f"{kind}: engine / aiohttp loop, vs sequence's", f"{share:.3f}",
                       "0.95-1.05", 0.95 <= share <= 1.05))  # fmt: skip
    print(f"\nengine {engine:,.0f} contacts/s (whole process)\n")
    width = max(len(name) for name, *_ in checks)
    for name, value, target, met in checks:
        verdict = "-" if met is None else ("met" if met else "MISSED")
        print(f"{name.ljust(width)}  {value:>7}  {target:>7}  {verdict}")


if __name__ == "__main__":
    main()
