"""Kill cost: what a kill -9 wastes, and whether resuming ever loses or duplicates a result.

3,000 contacts at `fast` latency (lognormal, median 50 ms), ``--concurrency 16 --rate none``;
the simulator on CPU 0, the engine on CPU 1. The run is killed with SIGKILL 10 times and
resumed with the same command each time, then left to finish. Each kill comes at a seeded
random delay, uniform in 0.05-0.5 s, after the run's first new result line appeared in
OUT.ndjson (a kill during start-up, before any call, would cost nothing and is not measured).

After each kill (and 0.3 s for the simulator to finish the calls it still had):

* ``extra_paid``: calls the simulator completed whose result is not in OUT.ndjson - this kill's
  growth of sum(successes per requestId) - lines in OUT. Each is paid again on resume.
* ``unknown_slots``: ``InflightSlots.leftovers(OUT.inflight)`` minus the ids already in OUT: the
  calls the engine itself knows may have been paid. Every extra-paid id must be among them.

Targets: extra paid <= C per kill (C = 16); at the end every contact has exactly one line
(lost results = 0, duplicate lines = 0), and total extra paid = sum(successes) - N.

    python benchmarks/bench_kill_cost.py [--contacts 3000] [--kills 10] [--seed 1] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import (
    ENGINE_ENV,
    Noise,
    engine_cmd,
    report,
    run_child,
    simulator,
    write_contacts,
)

from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.scan import line_request_id


def lines_by_id(out: Path) -> Counter[str]:
    """Complete lines per requestId (a torn last line is left out, as the resume repairs it)."""
    if not out.exists():
        return Counter()
    ids = (line_request_id(line) for line in out.read_bytes().splitlines(keepends=True))
    return Counter(rid for rid in ids if rid is not None)


def run_until_killed(cmd: list[str], out: Path, delay: float) -> bool:
    """Start a run, SIGKILL it ``delay`` s after its first new line; False if it ended first."""
    before = out.stat().st_size if out.exists() else 0
    process = subprocess.Popen(
        cmd, env=ENGINE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = None
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if first is None and out.exists() and out.stat().st_size > before:
            first = now
        if first is not None and now - first >= delay:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    if process.poll() is None:
        process.kill()
    process.wait()
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="300 contacts, 2 kills")
    args = parser.parse_args()
    n, kills, max_delay = (300, 2, 0.25) if args.smoke else (args.contacts, args.kills, 0.5)
    c = args.concurrency
    rng = random.Random(args.seed)
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--latency", "fast", "--seed", str(args.seed)) as sim,
        Noise() as noise,
    ):
        work = Path(tmp)
        write_contacts(work / "in.csv", n)
        out = work / "out.ndjson"
        inflight = out.with_name("out.inflight")
        cmd = engine_cmd(work / "in.csv", out, sim.url, "--rate", "none", "--concurrency", str(c))
        waste: Counter[str] = Counter()  # per id: successes - lines, after the previous kill
        for kill in range(1, kills + 1):
            delay = rng.uniform(0.05, max_delay)
            if not run_until_killed(cmd, out, delay):
                print(f"kill {kill}: the run finished first", flush=True)
                break
            time.sleep(0.3)  # let the simulator finish (and count) the calls it had
            successes = Counter(sim.stats(detail=True)["successes"])
            lines = lines_by_id(out)
            now = Counter({rid: successes[rid] - lines[rid] for rid in successes})
            new_waste = {rid for rid in now if now[rid] > waste[rid]}
            extra = sum(now.values()) - sum(waste.values())
            unknown = set(InflightSlots.leftovers(inflight)) - set(lines)
            rows.append(
                {
                    "kill": kill,
                    "delay_s": delay,
                    "lines_in_out": sum(lines.values()),
                    "extra_paid": extra,
                    "target": f"<= {c}",
                    "unknown_slots": len(unknown),
                    "extra_not_in_slots": len(new_waste - unknown),
                    "ok": extra <= c and not new_waste - unknown,
                }
            )
            print(f"kill {kill}: extra paid {extra}, unknown slots {len(unknown)}", flush=True)
            waste = now
        final = run_child(cmd, env=ENGINE_ENV, timeout=300)
        assert final.returncode == 0, final.stderr
        successes = Counter(sim.stats(detail=True)["successes"])
        lines = lines_by_id(out)
        errors = out.with_name("out.errors.ndjson")
        error_lines = len(errors.read_bytes().splitlines()) if errors.exists() else 0
    done = len(rows)
    total_extra = sum(successes.values()) - n
    lost = n - len(lines)
    duplicates = sum(lines.values()) - len(lines)
    ok = all(r["ok"] for r in rows) and lost == 0 and duplicates == 0 and done == kills
    extra = {
        "contacts": n,
        "concurrency": c,
        "kills": done,
        "total_extra_paid": total_extra,
        "extra_paid_per_kill": total_extra / max(1, done),
        "max_extra_paid_per_kill": max((r["extra_paid"] for r in rows), default=0),
        "sum_of_per_kill_extra": sum(r["extra_paid"] for r in rows),
        "lost_results": lost,
        "duplicate_lines": duplicates,
        "error_lines": error_lines,
        "ok": ok,
        "steal": noise.steal,
        "others_cores": noise.others,
        "target": f"extra paid <= C = {c} per kill; lost = 0; duplicates = 0",
    }
    report("kill_cost", rows, extra, smoke=args.smoke)
    print(
        f"\n{done} kills: extra paid calls {total_extra} in all, "
        f"{extra['extra_paid_per_kill']:.1f} per kill (max {extra['max_extra_paid_per_kill']}; "
        f"target <= C = {c}); lost results {lost}, duplicate lines {duplicates} (target 0): "
        f"{'met' if ok else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
