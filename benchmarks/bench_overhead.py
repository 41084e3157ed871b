"""Engine overhead at `instant` latency: the whole `octave-bulk run` process against plain loops.

20,000 contacts, concurrency 64, the simulator in its own process on CPU 0 and every client on
CPU 1. The engine's figure is the whole process - start, read CSV, validate, send, check,
write, fsync, summary - against (a) a plain httpx loop over the same transport and (b) a bare
aiohttp loop, both sending the same request bodies. Target: engine >= 0.85 x (a).

    python benchmarks/bench_overhead.py [--contacts 20000] [--concurrency 64] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import StealMeter, pinned, report, simulator

HERE = Path(__file__).parent
sys.path.append(str(HERE.parent))  # after PYTHONPATH: a snapshot there is what gets measured

from tests.helpers import write_contacts  # noqa: E402


def request_bodies(csv_path: Path, out: Path) -> None:
    """The exact bodies the engine sends for these contacts, via its own request builder."""
    from octave_bulk.build import build_request, request_spec
    from octave_bulk.input.records import Contact
    from octave_bulk.intake import open_contacts
    from octave_bulk.settings import Settings

    settings = Settings.load(agent_oid="ca_bench")
    spec = request_spec(settings)
    with open_contacts(csv_path, settings) as reader, open(out, "w") as handle:
        for record in reader:
            if isinstance(record, Contact):
                built = build_request(record, spec)
                handle.write(json.dumps(built.wire) + "\n")  # type: ignore[union-attr]


def child_cpu(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_engine(url: str, csv_path: Path, out_dir: Path, concurrency: int) -> tuple[float, float]:
    out = out_dir / "out.ndjson"
    for stale in out_dir.glob("out.*"):
        stale.unlink()
    cmd = pinned(
        [sys.executable, "-m", "octave_bulk", "run", str(csv_path), "-o", str(out), "--agent", "ca_bench",
         "--base-url", url, "--rate", "none", "--concurrency", str(concurrency), "--no-progress"],
        1,
    )  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, env={**os.environ, "OCTAVE_API_KEY": "bench"}, capture_output=True
    )
    return time.perf_counter() - start, child_cpu(before)


def run_plain(kind: str, url: str, bodies: Path, concurrency: int) -> tuple[float, float, float]:
    cmd = pinned(
        [sys.executable, str(HERE / "_plain_clients.py"), kind, url, str(bodies), str(concurrency)],
        1,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    inner = json.loads(result.stdout)
    return time.perf_counter() - start, inner["wall"], child_cpu(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per client; the best is kept")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    n = 500 if args.smoke else args.contacts
    repeat = 1 if args.smoke else args.repeat
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "instant", cpu=0) as sim:
        work = Path(tmp)
        write_contacts(work / "in.csv", n)
        request_bodies(work / "in.csv", work / "bodies.ndjson")
        results: dict[str, dict[str, float]] = {}
        for _ in range(repeat):
            for kind in ("engine", "httpx-post", "httpx-transport", "aiohttp"):
                sim.reset()
                with StealMeter() as steal:
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
                    "steal": steal.fraction,
                }
                if kind not in results or row["per_s"] > results[kind]["per_s"]:
                    results[kind] = row
    engine = results["engine"]["per_s"]
    rows = [
        {
            "client": kind,
            "contacts": n,
            "per_s_whole_process": r["per_s"],
            "per_s_send_loop_only": r["loop_per_s"],
            "cpu_s_per_1k": r["cpu_s_per_1k"],
            "engine_ratio": engine / r["per_s"],
            "steal": r["steal"],
        }
        for kind, r in results.items()
    ]
    a, a2, b = (results[k]["per_s"] for k in ("httpx-post", "httpx-transport", "aiohttp"))
    extra = {
        "engine_per_s": engine,
        "ratio_to_httpx_post_loop": engine / a,
        "ratio_to_httpx_transport_loop": engine / a2,
        "ratio_to_aiohttp_loop": engine / b,
        "target": ">= 0.85 x plain httpx loop (a)",
    }
    report("overhead", rows, extra, smoke=args.smoke)
    print(
        f"\nengine {engine:,.0f} contacts/s (whole process); vs plain httpx loop (client.post): "
        f"{engine / a:.2f} (target >= 0.85); vs httpx transport-direct loop: {engine / a2:.2f}; "
        f"vs bare aiohttp: {engine / b:.2f}"
    )


if __name__ == "__main__":
    main()
